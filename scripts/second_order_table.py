"""TOY second-order fine-tuning (issue 30): ODE KL and NFE of each fine-tuned run, paired.

The runs of ``docs/results/toy_second_order/runs/vp_lw_is_seed<s>_<variant>`` each continue
the seed-s run of ``scripts/scoreflow_table.py --dataset toy --sdes vp --objectives lw_is``
(step 10,000, ``docs/results/toy_velocity``) for 1000 steps by the ordinary resume, with

    main.py --config configs/vp/toy_lw_is.py --workdir W --mode train --config.seed=s \\
        --config.training.snapshot_freq=1000 --config.training.snapshot_sampling=False \\
        --config.training.n_iters=11000 [--config.training.score_matching_order=2 \\
        --config.training.second_order_weight=γ₂]
    main.py ... --mode eval --config.eval.begin_ckpt=11 --config.eval.end_ckpt=11 \\
        --config.eval.enable_bpd=True --config.eval.enable_loss=False --config.eval.bound=False

(variant ``o1``: first order; ``o2_g<γ₂>``: second order). Only each run's config and
evaluation are kept. Every variant is paired with the same seed's ``o1`` over the 2000 test
points (same evaluation keys: ``diagnostics.paired_over_images``), and γ₂ = 0.1 over the
seeds (``scoreflow_table.paired``).

    python scripts/second_order_table.py
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'scripts')]

import scoreflow_table  # noqa: E402

import diagnostics  # noqa: E402  (the repository is on sys.path now)

RUNS = os.path.join(REPO, 'docs', 'results', 'toy_second_order', 'runs')
CKPT = 11


def kl_and_nfe(toy: diagnostics.ToyKL, run: str) -> tuple:
    """(ODE KL, its standard error over test points, mean NFE) of one run."""
    workdir = os.path.join(RUNS, run)
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
        metrics = json.load(f)[str(CKPT)]
    kl, se = toy.entry(workdir, 'eval', CKPT, metrics, 'nll')
    return kl, se, metrics['nfe_mean']


def main() -> None:
    toy = diagnostics.ToyKL()
    runs = sorted(os.listdir(RUNS))
    values = {run: kl_and_nfe(toy, run) for run in runs}
    print('| run | ODE KL [nats] | NFE | Δ KL vs o1 (paired) | Δ NFE vs o1 |')
    print('|---|---|---|---|---|')
    for run in runs:
        kl, se, nfe = values[run]
        ref = run.rsplit('_o', 1)[0] + '_o1'
        cells = ['—', '—']
        if run != ref:
            a, b = (os.path.join(RUNS, r, 'eval', f'ckpt_{CKPT}') for r in (ref, run))
            d = [diagnostics.paired_over_images(a, b, key, 'bpd') for key in ('nll', 'nfe')]
            cells = [f'{d[0]["diff"]:+.4f} ± {d[0]["diff_se"]:.4f}']
            cells.append(f'{d[1]["diff"]:+.1f} ± {d[1]["diff_se"]:.1f}')
        print(f'| {run} | {kl:.4f} ± {se:.4f} | {nfe:.1f} | ' + ' | '.join(cells) + ' |')
    seeds = sorted({int(r.split('seed')[1].split('_')[0]) for r in runs})
    for i, name in ((0, 'ODE KL'), (2, 'NFE')):
        pair = [{s: values[f'vp_lw_is_seed{s}_o{o}'][i] for s in seeds} for o in ('2_g0.1', '1')]
        print(f'γ₂ = 0.1 − first order, {name}, over seeds:', scoreflow_table.paired(*pair))


if __name__ == '__main__':
    main()
