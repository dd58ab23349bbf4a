#!/usr/bin/env bash
# From a fresh clone to a trained model and its test bits/dim, in one command:
#   bash scripts/quickstart.sh
# Creates .venv in the repository root, installs requirements.txt, trains the embedded
# default (scikit-learn digits, VP SDE, likelihood weighting + importance sampling,
# configs/vp/digits_lw_is.py) and evaluates its last snapshot on the test split.
# Extra arguments are passed to both runs, e.g. --config.training.n_iters=1000.
# Run it again and it resumes (training and evaluation skip finished work).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

CONFIG=configs/vp/digits_lw_is.py
WORKDIR=${WORKDIR:-runs/digits_lw_is}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
start=$(date +%s)
.venv/bin/python main.py --config "$CONFIG" --workdir "$WORKDIR" --mode train "$@"
.venv/bin/python main.py --config "$CONFIG" --workdir "$WORKDIR" --mode eval "$@"
.venv/bin/python - "$WORKDIR" "$(( $(date +%s) - start ))" <<'PY'
import json, math, sys
workdir, seconds = sys.argv[1], int(sys.argv[2])
with open(f'{workdir}/eval/metrics.json') as f:
    metrics = json.load(f)
ckpt = max(metrics, key=int)
m = metrics[ckpt]
print(f'\nDIGITS test bits/dim (checkpoint {ckpt}, probability-flow ODE): '
      f'{m["bpd"]:.3f} ± {m["bpd_stderr"]:.3f}   '
      f'(uniform: {math.log2(17):.2f}; train + eval took {seconds // 60} min {seconds % 60} s)')
print(f'Results, checkpoints, samples and logs are in {workdir}/.')
PY
