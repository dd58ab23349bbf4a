"""ScoreFlow's experiment in miniature: {VP, sub-VP} × {baseline, lw, lw_is} × seeds.

Trains and evaluates a grid of leaf configs ``configs/<sde>/<dataset>_<objective>.py``
(σ²-weighting; likelihood weighting λ = g² with t ~ U(ε, T); λ = g² with importance
sampling t ~ p(t) ∝ g²/σ²) over several seeds through ``main.py`` subprocesses, then
writes ``OUT/table.md`` (+ ``OUT/table.json``), the curves ``OUT/bpd_curves.png`` (TOY:
``OUT/kl_curves.png``) and the variance measurement ``OUT/loss_variance.png``.

    python scripts/scoreflow_table.py --out runs/scoreflow_digits            # DIGITS grid
    python scripts/scoreflow_table.py --dataset toy --out runs/scoreflow_toy # TOY, 3 seeds
    python scripts/scoreflow_table.py --out runs/scoreflow_digits --report_only

Each run has its own work directory ``OUT/runs/<sde>_<objective>_seed<k>`` and is run as

    main.py --mode train                 (--config.seed=k, n_iters, snapshot_freq, ...)
    main.py --mode eval --eval_folder eval                 every snapshot 1 … n_iters/snapshot_freq:
                                                           eval loss, ODE bits/dim (+ the bound
                                                           with --curve_bound)
    main.py --mode eval --eval_folder eval_bound           last snapshot: the bound with
                                                           importance-sampled t (without
                                                           --curve_bound)
    main.py --mode eval --eval_folder eval_bound_uniform   last snapshot: the bound, t ~ U(ε, T)
    main.py --mode eval --eval_folder eval_samples         last snapshot (DIGITS): samples and
                                                           FD_digits / KID / classifier score

Resumable: a run whose ``metrics.json`` files have every checkpoint is skipped without
starting a process; an interrupted run (killed training or evaluation) is continued,
since ``main.py`` resumes both. ``OUT/runs/<run>/scoreflow_run.json`` records the command
of a run; a rerun with another budget or other overrides in the same ``--out`` stops with
a message instead of mixing results. A failed run does not stop the grid: the others
continue, the report is written from what exists, and the exit status is 1.
``--jobs N`` trains and evaluates N runs at a time (on 2 CPU cores, 2 jobs gave ≈ 1.3×
the throughput of 1: one process keeps the two cores only partly busy).

A grid can be carried from machine to machine without its checkpoints: a finished run
needs only its ``metrics.json`` files (and ``loss_variance.json``) to count as done and
to enter the report. The DIGITS grid of ``docs/results.md`` is written to
``--out docs/results/digits``, whose checkpoints git ignores; its finished runs are
committed, so a fresh clone continues with the runs not yet done.

Metrics (``metrics.json`` keys, README, Usage): ``bpd`` / ``bpd_stderr`` (probability-flow
ODE, standard error over test images), ``bound_bpd`` / ``bound_stderr`` (ScoreFlow's bound,
``eval.bound_importance_weighting`` True or False), ``loss`` (the run's own training
objective on the test split: its weighting differs between objectives, so it compares
checkpoints of one objective, not objectives), ``fid`` (FD_digits on DIGITS), ``kid``,
``is``. TOY data are continuous: ``nll`` = −log p_model(x) in nats (the model density at
time ε; ``bpd`` is nll / (D ln 2)). The exact data density (``datasets.toy_distribution``)
gives KL(data ‖ model) = E_x[log p_data(x) + nll(x)] over the test points, with a paired
standard error from the per-example results (``ckpt_<n>/bpd_h0.npz``), and the bound's KL
likewise from ``bound_nll`` (``ckpt_<n>/bound_h0.npz``, or ``bpd_h0.npz`` in older runs;
an upper bound on KL up to Monte Carlo noise): ``diagnostics.ToyKL``.

The mechanism (``--variance``): on the last snapshot of the seed-0 run of each SDE trained
with λ = g² (lw and lw_is), measured as soon as the run is finished, the per-example and
per-batch variance of the likelihood-weighted DSM loss ``losses.dsm_loss`` with t ~ U(ε, T)
(weight g²/σ², times T − ε) and with t ~ p(t) ∝ g²/σ² (``importance_normalizer=True``,
weight Z): both are unbiased estimators of the same integral ∫_ε^T g² E‖s_θ(x_t, t) + z/σ‖²
dt (reduced as in training) on the same model and training data, so their variances compare
directly; per t-bin, each estimator's share of the mean (equal for both, a check) and of the
second moment (where the variance comes from). See ``diagnostics.loss_variance``.

Cost, measured on this project's machine: 2 CPU cores shared with other jobs (load
average 4–5 during the measurements, so roughly half the cores'), JAX on the CPU.

* DIGITS training, default model (0.72M parameters, batch 128): 0.36–0.49 s/step
  (2.1–2.7 steps/s over a 300-step run), plus ≈ 35 s of start-up and compilation.
  2000 steps (the default budget, the quick start's) ≈ 12–17 min per run.
* DIGITS evaluation of one snapshot (that of step 300; 197 test images, eval.eps 1e-5):
  the probability-flow ODE (NFE 640) and the bound (1000 times per image) together 802 s,
  the bound alone 356 s, so the ODE ≈ 7.5 min and one bound ≈ 6 min; the eval loss 8 s.
  The 1024 ODE samples of FD_digits were not timed at full size; at ≈ 3× the bound's
  network evaluations expect ≈ 15–20 min.
* The loss-variance measurement: ≈ 30 s per run (4096 draws).

Default DIGITS grid (12 runs; per run: training, ODE bits/dim at 4 snapshots, the bound
with importance-sampled and with uniform t at the last, samples): estimated ≈ 15 + 30 +
12 + 18 ≈ 75 min per run under that load. Measured on 2 otherwise idle cores with
``--jobs 2`` (2026-12-04, the whole grid): 28–32 min per pair of runs (training
9.5–12 min, curves 8–15 min, each bound ≈ 3 min, samples 3–4 min, all with the other
run beside it), so ≈ 3 h for the grid. Cheaper: ``--snapshot_freq 1000`` (2 snapshots),
``--no-uniform_bound``, ``--no-sample_quality``.

TOY (default MLP, 0.72M parameters, batch 512): 29 steps/s, so 10000 steps ≈ 5–6 min
per run; the ODE with the exact 2-D divergence (the TOY configs' ``eval.hutchinson_type``)
on the 2000 test points ≈ 1 min per snapshot, each bound ≈ 0.5–1.5 min. Per run (5
snapshots, two bounds at the last) ≈ 12 min, the grid (18 runs) ≈ 3.5 h under that load
(measured 2026-12-04).

CIFAR-10 on an accelerator (ScoreFlow's Table 2 rows, DDPM++):

    python scripts/scoreflow_table.py --dataset cifar10 --out runs/scoreflow_cifar10 \\
        --seeds 0 --n_iters 1300000 --snapshot_freq 100000 --no-sample_quality

with ``configs/{vp,subvp}/cifar10_{baseline,lw,lw_is}.py`` and their evaluation settings
(bits/dim on the 10000 test images, 5 repeats). The paper trains 1.3M steps at batch 128
per run. Its cost was not measured (no accelerator here): run one short job first, e.g.
``--sdes vp --objectives lw_is --n_iters 5000 --snapshot_freq 5000`` in another --out, and
multiply its training rate by 6 × 1.3M steps, its evaluation time by 6 × 13 snapshots.
FD / FID needs the Inception weights (``--config.eval.inception_path=…``, README); with
them, drop ``--no-sample_quality``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend
from scipy import stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # project imports (diagnostics: the variance, TOY's KL)
    sys.path.insert(0, REPO)

import checkpointing  # noqa: E402  (the repository is on sys.path now)
import diagnostics  # noqa: E402

SDES = ('vp', 'subvp')
OBJECTIVES = ('baseline', 'lw', 'lw_is')  # ScoreFlow's grid (the default)
# i-DODE's velocity parameterization (--objectives only): with ScoreFlow's IS of t and
# with its own density (configs/<sde>/<dataset>_vel_*.py, presets.set_velocity); each is
# compared with ScoreFlow's λ = g² + IS, the second also with the first.
VELOCITY_OBJECTIVES = ('vel_is', 'vel_idode')
ALL_OBJECTIVES = OBJECTIVES + VELOCITY_OBJECTIVES
OBJECTIVE_NAMES = {
    'baseline': 'σ² weighting (baseline)',
    'lw': 'λ = g², t ~ U',
    'lw_is': 'λ = g², IS t',
    'vel_is': 'velocity, λ = g², IS t',
    'vel_idode': 'velocity, λ = g², IS log(1+SNR)',
}
# The cell each objective is compared with (same SDE, same seeds), besides the baseline.
REFERENCES = {'vel_is': ('lw_is',), 'vel_idode': ('lw_is', 'vel_is')}
SDE_NAMES = {'vp': 'VP', 'subvp': 'sub-VP'}


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
    n_iters: int
    snapshot_freq: int
    seeds: Tuple[int, ...]
    sample_quality: bool  # FD_digits etc. (image data with a feature network)


DEFAULTS = {
    'digits': DatasetDefaults(n_iters=2000, snapshot_freq=500, seeds=(0, 1), sample_quality=True),
    'toy': DatasetDefaults(
        n_iters=10000, snapshot_freq=2000, seeds=(0, 1, 2), sample_quality=False
    ),
    'cifar10': DatasetDefaults(
        n_iters=1300000, snapshot_freq=50000, seeds=(0,), sample_quality=True
    ),
    'imagenet32': DatasetDefaults(
        n_iters=1300000, snapshot_freq=50000, seeds=(0,), sample_quality=True
    ),
}

CURVES, BOUND, BOUND_UNIFORM, SAMPLES = 'eval', 'eval_bound', 'eval_bound_uniform', 'eval_samples'
RUN_FILE = 'scoreflow_run.json'
VARIANCE_FILE = 'loss_variance.json'
GRADIENT_FILE = 'gradient_variance.json'  # {ckpt: diagnostics.measure_run_gradients(...)}
TIMES_FILE = 'scoreflow_times.json'  # wall seconds per phase
METRICS_FILE = 'metrics.json'


# --------------------------------------------------------------------------- the grid
@dataclasses.dataclass(frozen=True)
class Phase:
    """One ``main.py`` invocation of a run and how to tell it is done."""

    name: str
    mode: str  # 'train' or 'eval'
    eval_folder: Optional[str]
    overrides: Tuple[str, ...]  # --config.a.b=v
    ckpts: Tuple[int, ...]  # the snapshots its metrics.json must hold (eval)
    keys: Tuple[str, ...]  # the keys each of those entries must hold


@dataclasses.dataclass(frozen=True)
class Run:
    dataset: str
    sde: str
    objective: str
    seed: int
    workdir: str
    config: str  # the leaf config file, relative to the repository
    overrides: Tuple[str, ...]  # --config.a.b=v, common to every phase
    phases: Tuple[Phase, ...]

    @property
    def name(self) -> str:
        return run_name(self.sde, self.objective, self.seed)

    def command(self, phase: Phase, python: str = sys.executable) -> List[str]:
        cmd = [python, os.path.join(REPO, 'main.py'), '--config', self.config]
        cmd += ['--workdir', self.workdir, '--mode', phase.mode]
        if phase.eval_folder:
            cmd += ['--eval_folder', phase.eval_folder]
        return cmd + list(self.overrides) + list(phase.overrides)

    def record(self) -> Dict[str, Any]:
        """What a rerun must agree with (written to ``scoreflow_run.json``)."""
        return {'config': self.config, 'overrides': list(self.overrides)}


def run_name(sde: str, objective: str, seed: int) -> str:
    return f'{sde}_{objective}_seed{seed}'


def config_path(dataset: str, sde: str, objective: str) -> str:
    return os.path.join('configs', sde, f'{dataset}_{objective}.py')


def build_grid(args: argparse.Namespace, extra: Sequence[str]) -> List[Run]:
    """The runs of the grid, with their phases."""
    if args.n_iters % args.snapshot_freq:
        raise SystemExit(
            f'--n_iters={args.n_iters} must be a multiple of --snapshot_freq='
            f'{args.snapshot_freq} (snapshot i is saved at step i·snapshot_freq).'
        )
    last = args.n_iters // args.snapshot_freq
    first = 1 if args.curves else last
    ckpts = tuple(range(first, last + 1))
    budget = (
        f'--config.training.n_iters={args.n_iters}',
        f'--config.training.snapshot_freq={args.snapshot_freq}',
        '--config.training.snapshot_sampling=False',
    )
    off = ('--config.eval.enable_sampling=False',)
    curve_keys = ('step', 'loss', 'bpd', 'bpd_stderr', 'nll')
    curve_keys += ('bound_bpd', 'bound_stderr') if args.curve_bound else ()
    phases = [
        Phase('train', 'train', None, (), (), ()),
        Phase(
            'curves',
            'eval',
            CURVES,
            (
                f'--config.eval.begin_ckpt={first}',
                f'--config.eval.end_ckpt={last}',
                '--config.eval.enable_loss=True',
                '--config.eval.enable_bpd=True',
                f'--config.eval.bound={args.curve_bound}',
                '--config.eval.bound_importance_weighting=True',
            )
            + off,
            ckpts,
            curve_keys,
        ),
    ]
    final = (f'--config.eval.begin_ckpt={last}', f'--config.eval.end_ckpt={last}')
    bound_only = ('--config.eval.enable_loss=False', '--config.eval.enable_bpd=False')
    bound_only += ('--config.eval.bound=True',)
    if not args.curve_bound:  # the bound with importance-sampled t at the last snapshot
        phases.append(
            Phase(
                'bound',
                'eval',
                BOUND,
                final + bound_only + ('--config.eval.bound_importance_weighting=True',) + off,
                (last,),
                ('bound_bpd', 'bound_stderr'),
            )
        )
    if args.uniform_bound:
        phases.append(
            Phase(
                'bound_uniform',
                'eval',
                BOUND_UNIFORM,
                final + bound_only + ('--config.eval.bound_importance_weighting=False',) + off,
                (last,),
                ('bound_bpd', 'bound_stderr'),
            )
        )
    if args.sample_quality:
        phases.append(
            Phase(
                'samples',
                'eval',
                SAMPLES,
                final
                + (
                    '--config.eval.enable_loss=False',
                    '--config.eval.enable_bpd=False',
                    '--config.eval.bound=False',
                    '--config.eval.enable_sampling=True',
                ),
                (last,),
                ('num_samples',),
            )
        )
    runs = []
    for sde in args.sdes:
        for objective in args.objectives:
            path = config_path(args.dataset, sde, objective)
            if not os.path.exists(os.path.join(REPO, path)):
                raise SystemExit(f'{path} does not exist: no {sde} / {objective} leaf config.')
            for seed in args.seeds:
                runs.append(
                    Run(
                        dataset=args.dataset,
                        sde=sde,
                        objective=objective,
                        seed=seed,
                        workdir=os.path.join(args.out, 'runs', run_name(sde, objective, seed)),
                        config=path,
                        overrides=(f'--config.seed={seed}',) + budget + tuple(extra),
                        phases=tuple(phases),
                    )
                )
    return runs


def read_metrics(workdir: str, folder: str) -> Dict[str, Any]:
    path = os.path.join(workdir, folder, METRICS_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def phase_done(run: Run, phase: Phase) -> bool:
    """An eval phase is done when its metrics.json has every key at every checkpoint; the
    training phase when the curves phase is (it evaluates the last snapshot)."""
    if phase.mode == 'train':
        curves = [p for p in run.phases if p.name == 'curves']
        return bool(curves) and phase_done(run, curves[0])
    metrics = read_metrics(run.workdir, phase.eval_folder)
    return all(
        all(metrics.get(str(c), {}).get(k) is not None for k in phase.keys) for c in phase.ckpts
    )


def run_done(run: Run) -> bool:
    return all(phase_done(run, p) for p in run.phases)


Launcher = Callable[[List[str], str], int]  # (command, log path) -> return code


def launch(command: List[str], log_path: str) -> int:
    """Runs ``command`` from the repository root (JAX_PLATFORMS and the rest of the
    environment inherited), appending its output to ``log_path``; returns its exit
    status."""
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    with open(log_path, 'a') as log:
        log.write(f'\n$ {shlex.join(command)}\n')
        log.flush()
        return subprocess.call(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def check_record(run: Run) -> None:
    """Creates the run's work directory and ``scoreflow_run.json``, or checks that an
    existing one was made by the same command (same config file and overrides)."""
    os.makedirs(run.workdir, exist_ok=True)
    path = os.path.join(run.workdir, RUN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != run.record():
            raise SystemExit(
                f'{run.workdir} was started with another command ({path}: {old}); now '
                f'{run.record()}. Use another --out, or the same flags as before.'
            )
        return
    with open(path + '.tmp', 'w') as f:
        json.dump(run.record(), f, indent=2)
    os.replace(path + '.tmp', path)


def execute(
    runs: Sequence[Run],
    launcher: Launcher = launch,
    log=print,
    jobs: int = 1,
    after_run: Optional[Callable[[Run], None]] = None,
) -> List[str]:
    """Trains and evaluates every run not yet done, ``jobs`` runs at a time (each in its
    own ``main.py`` processes); calls ``after_run(run)`` on every run that is done (at once
    for one done before, after its last phase otherwise). Returns the failed runs' names,
    in grid order."""
    for run in runs:
        check_record(run)
    lock = threading.Lock()  # one after_run at a time (it may use JAX in this process)

    def one(i: int, run: Run) -> bool:
        ok = _execute_run(run, f'[{i + 1}/{len(runs)}] {run.name}', launcher, log)
        if ok and after_run is not None:
            with lock:
                after_run(run)
        return ok

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(one, range(len(runs)), runs))
    return [run.name for run, ok in zip(runs, done) if not ok]


def _execute_run(run: Run, tag: str, launcher: Launcher, log) -> bool:
    """The phases of one run not yet done, in order; False when one fails."""
    if run_done(run):
        log(f'{tag}: done, skipped.')
        return True
    for phase in run.phases:
        if phase_done(run, phase):
            continue
        log(f'{tag}: {phase.name} …')
        start = time.time()
        code = launcher(run.command(phase), os.path.join(run.workdir, 'scoreflow_log.txt'))
        add_time(run, phase.name, time.time() - start)
        if code != 0:
            log(
                f'  {tag}: {phase.name} failed (exit status {code}); see '
                f'{run.workdir}/scoreflow_log.txt. Rerun the same command to continue.'
            )
            return False
        log(f'  {tag}: {phase.name} took {time.time() - start:.0f} s.')
    return True


def add_time(run: Run, phase: str, seconds: float) -> None:
    """Adds a phase's wall time to ``W/scoreflow_times.json`` (summed over invocations: an
    interrupted phase counts its lost part too)."""
    path = os.path.join(run.workdir, TIMES_FILE)
    times = _read_json(path) or {}
    times[phase] = times.get(phase, 0.0) + seconds
    with open(path + '.tmp', 'w') as f:
        json.dump(times, f, indent=2)
    os.replace(path + '.tmp', path)


# --------------------------------------------------------------------------- statistics
def mean_and_stderr(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard error over seeds (nan when fewer than two)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


def _fmt(mean: float, se: float = math.nan, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return '—'
    if se is None or not np.isfinite(se):
        return f'{mean:.{digits}f}'
    return f'{mean:.{digits}f} ± {se:.{digits}f}'


# --------------------------------------------------------------------------- mechanism
def variance_runs(runs: Sequence[Run]) -> List[Run]:
    """The runs measured: each SDE's lw and lw_is runs of the smallest seed."""
    seed = min((r.seed for r in runs), default=0)
    return [r for r in runs if r.seed == seed and r.objective in ('lw', 'lw_is')]


def measure_variance(run: Run, num_draws: int, log=print) -> None:
    """The loss-variance measurement of one run (``VARIANCE_FILE``), unless it is there."""
    path = os.path.join(run.workdir, VARIANCE_FILE)
    last = max(run.phases[1].ckpts)
    old = _read_json(path)
    if old and old.get('ckpt') == last and old.get('num_draws') == num_draws:
        return
    if last not in checkpointing.list_checkpoints(run.workdir):
        log(f'{run.name}: snapshot {last} is not in {run.workdir}, no variance measurement.')
        return
    log(f'{run.name}: loss variance on snapshot {last} ({num_draws} draws) …')
    result = diagnostics.measure_run_variance(run.workdir, last, num_draws)
    with open(path + '.tmp', 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(path + '.tmp', path)


def measure_gradients(run: Run, num_batches: int, log=print) -> None:
    """The gradient measurement (``diagnostics.measure_run_gradients``) of every snapshot
    of ``run`` still on disk and not yet in its ``GRADIENT_FILE`` (saved after each)."""
    path = os.path.join(run.workdir, GRADIENT_FILE)
    results = _read_json(path) or {}
    for ckpt in checkpointing.list_checkpoints(run.workdir):
        old = results.get(str(ckpt))
        if old and old.get('num_batches') == num_batches:
            continue
        log(f'{run.name}: gradient variance on snapshot {ckpt} ({num_batches} batches) …')
        results[str(ckpt)] = diagnostics.measure_run_gradients(run.workdir, ckpt, num_batches)
        with open(path + '.tmp', 'w') as f:
            json.dump(results, f, indent=2)
        os.replace(path + '.tmp', path)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- report
def collect(runs: Sequence[Run]) -> Dict[str, Any]:
    """Every run's numbers at its last checkpoint and its curves, from its metrics.json."""
    toy = diagnostics.ToyKL() if runs and runs[0].dataset == 'toy' else None
    return {'runs': [collect_run(run, toy) for run in runs]}


def collect_run(run: Run, toy: Optional[diagnostics.ToyKL]) -> Dict[str, Any]:
    """One run's row: its phases' metrics at the last checkpoint, its curve, TOY's KLs (with
    ``toy``), the variance measurement and the wall times."""
    last = max(run.phases[1].ckpts)
    curves = read_metrics(run.workdir, CURVES)
    final = curves.get(str(last), {})
    bound_folder = BOUND if any(p.name == 'bound' for p in run.phases) else CURVES
    bound = read_metrics(run.workdir, bound_folder).get(str(last), {})
    uniform = read_metrics(run.workdir, BOUND_UNIFORM).get(str(last), {})
    samples = read_metrics(run.workdir, SAMPLES).get(str(last), {})
    digits = run.dataset == 'digits'
    row: Dict[str, Any] = {
        'run': run.name,
        'sde': run.sde,
        'objective': run.objective,
        'seed': run.seed,
        'ckpt': last,
        'done': run_done(run),
        'step': final.get('step'),
        'bpd': final.get('bpd'),
        'bpd_stderr': final.get('bpd_stderr'),
        'bound_bpd': bound.get('bound_bpd'),
        'bound_stderr': bound.get('bound_stderr'),
        'loss': final.get('loss'),
        'bound_uniform_bpd': uniform.get('bound_bpd'),
        'bound_uniform_stderr': uniform.get('bound_stderr'),
        'fd_digits' if digits else 'fid': samples.get('fid'),
        'kid': samples.get('kid'),
        'classifier_score' if digits else 'is': samples.get('is'),
        'curve': curve_points(run, curves, toy),
    }
    if toy is not None and final.get('bpd') is not None:  # KL, ODE and bounds
        sources = [
            ('kl', CURVES, final, 'nll'),
            ('bound_kl', bound_folder, bound, 'bound_nll'),
            ('bound_uniform_kl', BOUND_UNIFORM, uniform, 'bound_nll'),
        ]
        for name, folder, metrics, which in sources:
            row[name], row[f'{name}_stderr'] = toy.entry(run.workdir, folder, last, metrics, which)
    row['variance'] = _read_json(os.path.join(run.workdir, VARIANCE_FILE))
    row['gradients'] = _read_json(os.path.join(run.workdir, GRADIENT_FILE))
    row['seconds'] = _read_json(os.path.join(run.workdir, TIMES_FILE))
    return row


def curve_points(
    run: Run, curves: Dict[str, Any], toy: Optional[diagnostics.ToyKL]
) -> List[Dict[str, Any]]:
    """The curves phase's bits/dim (and bound, TOY's KL with ``toy``) at every snapshot."""
    points = []
    for c in sorted(curves, key=int):
        m = curves[c]
        point = {'ckpt': int(c), 'step': m.get('step'), 'bpd': m.get('bpd')}
        point['bound_bpd'] = m.get('bound_bpd')
        if toy is not None and m.get('bpd') is not None:
            point['kl'], point['kl_stderr'] = toy.entry(run.workdir, CURVES, int(c), m, 'nll')
        points.append(point)
    return points


def columns(dataset: str) -> List[Tuple[str, str, Optional[str]]]:
    """(header, value key, within-run standard error key) of the summary table."""
    if dataset == 'toy':
        return [
            ('KL(data‖model), ODE [nats]', 'kl', 'kl_stderr'),
            ('KL via bound, IS t [nats]', 'bound_kl', 'bound_kl_stderr'),
            ('KL via bound, uniform t [nats]', 'bound_uniform_kl', 'bound_uniform_kl_stderr'),
            ('eval loss (own objective)', 'loss', None),
        ]
    cols = [
        ('ODE bits/dim', 'bpd', 'bpd_stderr'),
        ('bound, IS t [bits/dim]', 'bound_bpd', 'bound_stderr'),
        ('bound, uniform t [bits/dim]', 'bound_uniform_bpd', 'bound_uniform_stderr'),
        ('eval loss (own objective)', 'loss', None),
    ]
    if dataset == 'digits':
        cols.append(('FD_digits', 'fd_digits', None))
    else:
        cols.append(('FID', 'fid', None))
    return cols


def summarize(collected: Dict[str, Any], runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """Rows SDE × objective: mean ± standard error over seeds of each column, the mean
    within-run standard error, the number of seeds with a value."""
    dataset = runs[0].dataset if runs else 'digits'
    rows = []
    order = []
    for r in runs:
        if (r.sde, r.objective) not in order:
            order.append((r.sde, r.objective))
    for sde, objective in order:
        mine = [x for x in collected['runs'] if x['sde'] == sde and x['objective'] == objective]
        row: Dict[str, Any] = {'sde': sde, 'objective': objective}
        done = [x for x in mine if x['done']]
        row['num_seeds'] = len(done)
        row['num_seeds_planned'] = len(mine)
        for _, key, se_key in columns(dataset):
            mean, se = mean_and_stderr([x.get(key) for x in done])
            row[key] = {'mean': mean, 'stderr_over_seeds': se}
            if se_key:
                within = [x.get(se_key) for x in done if x.get(se_key) is not None]
                row[key]['mean_within_run_stderr'] = float(np.mean(within)) if within else math.nan
        rows.append(row)
    return rows


def paired(a: Dict[int, float], b: Dict[int, float]) -> Dict[str, Any]:
    """Paired statistics of a − b over the seeds both have (finite values).

    With d_s = a_s − b_s for n seeds: mean d̄, standard error s_d/√n (ddof 1) on
    df = n − 1 degrees of freedom, the two-sided 95 % interval d̄ ± t_{0.975, df} · se,
    t = d̄ / se and its two-sided p-value from Student's t (scipy), and the sign count
    (seeds with d < 0, d > 0). Pairing removes what a seed shares across the two runs
    (initialisation, data order, evaluation keys): its se is that of the difference, not
    √(se_a² + se_b²). Fewer than two seeds: no se, interval or p (nan).
    """
    seeds = sorted(s for s in set(a) & set(b) if _finite(a[s]) and _finite(b[s]))
    d = np.asarray([a[s] - b[s] for s in seeds], np.float64)
    out: Dict[str, Any] = {'seeds': seeds, 'n': len(d), 'df': max(len(d) - 1, 0)}
    out['negative'], out['positive'] = int(np.sum(d < 0)), int(np.sum(d > 0))
    out['mean'] = float(d.mean()) if len(d) else math.nan
    out['stderr'] = out['t'] = out['p'] = math.nan
    out['ci95'] = [math.nan, math.nan]
    if len(d) >= 2:
        se = float(d.std(ddof=1) / math.sqrt(len(d)))
        half = float(stats.t.ppf(0.975, len(d) - 1)) * se
        out.update(stderr=se, ci95=[out['mean'] - half, out['mean'] + half])
        if se > 0:
            out['t'] = out['mean'] / se
            out['p'] = float(2 * stats.t.sf(abs(out['t']), len(d) - 1))
    return out


def _finite(value: Any) -> bool:
    return value is not None and bool(np.isfinite(value))


def paired_keys(dataset: str) -> List[str]:
    """The columns compared between runs: the likelihoods (ODE, bounds; TOY: KLs) and
    the sample quality."""
    return [key for _, key, se_key in columns(dataset) if se_key or key in ('fd_digits', 'fid')]


def comparisons(runs: Sequence[Run]) -> List[Tuple[Tuple[str, str], Tuple[str, str]]]:
    """The paired comparisons ((sde, objective), (sde, objective)) of a grid: every
    objective against its SDE's σ² baseline and its :data:`REFERENCES`, and sub-VP
    against VP for each objective."""
    cells = list(dict.fromkeys((r.sde, r.objective) for r in runs))
    out = [
        ((sde, objective), (sde, ref))
        for sde, objective in cells
        for ref in (OBJECTIVES[0],) + REFERENCES.get(objective, ())
        if objective != OBJECTIVES[0] and (sde, ref) in cells
    ]
    out += [
        (('subvp', objective), ('vp', objective))
        for sde, objective in cells
        if sde == 'subvp' and ('vp', objective) in cells
    ]
    return out


def differences(collected: Dict[str, Any], runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """Paired differences (:func:`paired`) per comparison (:func:`comparisons`) and column,
    over the seeds both cells have finished. Negative mean: lower KL, bits/dim or FD than
    the reference cell."""
    dataset = runs[0].dataset if runs else 'digits'
    by_cell: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for x in collected['runs']:
        if x['done']:
            by_cell.setdefault((x['sde'], x['objective']), []).append(x)
    out = []
    for cell, ref in comparisons(runs):
        entry: Dict[str, Any] = {
            'sde': cell[0],
            'objective': cell[1],
            'reference_sde': ref[0],
            'reference_objective': ref[1],
        }
        for key in paired_keys(dataset):
            a = {x['seed']: x.get(key) for x in by_cell.get(cell, [])}
            b = {x['seed']: x.get(key) for x in by_cell.get(ref, [])}
            entry[key] = paired(a, b)
        out.append(entry)
    return out


def _cell_name(sde: str, objective: str) -> str:
    return f'{SDE_NAMES[sde]} {OBJECTIVE_NAMES[objective]}'


def _fmt_paired(v: Dict[str, Any], digits: int = 3) -> str:
    """``mean [lo, hi] (df, p; signs −/+)`` of a :func:`paired` entry."""
    if v['n'] == 0:
        return '—'
    if v['n'] == 1:
        return f'{v["mean"]:+.{digits}f} (1 seed)'
    lo, hi = v['ci95']
    p = f'p {v["p"]:.2g}' if _finite(v['p']) else 'p —'
    return (
        f'{v["mean"]:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] '
        f'(df {v["df"]}, {p}; {v["negative"]}−/{v["positive"]}+)'
    )


def differences_markdown(diffs: Sequence[Dict[str, Any]], dataset: str) -> List[str]:
    keys = paired_keys(dataset)
    headers = {key: header for header, key, _ in columns(dataset)}
    lines = [
        '',
        '## Paired differences',
        '',
        'Δ = run − reference run of the same seed (a seed shares initialisation, data order '
        'and evaluation keys across objectives and SDEs), then over seeds: mean Δ, its '
        "two-sided 95 % interval from Student's t with df = seeds − 1, the p-value of Δ = 0 "
        'and the sign count (seeds with Δ < 0 / Δ > 0). Negative: lower than the reference.',
        '',
        '| comparison | ' + ' | '.join(f'Δ {headers[k]}' for k in keys) + ' |',
        '|' + '---|' * (1 + len(keys)),
    ]
    for d in diffs:
        name = (
            f'{_cell_name(d["sde"], d["objective"])} − '
            f'{_cell_name(d["reference_sde"], d["reference_objective"])}'
        )
        lines.append('| ' + ' | '.join([name] + [_fmt_paired(d[k]) for k in keys]) + ' |')
    return lines


def _nan_to_none(obj):
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_report(args: argparse.Namespace, runs: Sequence[Run], command: str) -> Dict[str, Any]:
    """``OUT/table.md``, ``OUT/table.json`` and the PNG plots from the runs' files."""
    collected = collect(runs)
    rows = summarize(collected, runs)
    os.makedirs(args.out, exist_ok=True)
    plots = []
    name = 'kl_curves.png' if args.dataset == 'toy' else 'bpd_curves.png'
    if plot_curves(collected, runs, os.path.join(args.out, name), args.dataset):
        plots.append(name)
    if plot_variance(collected, os.path.join(args.out, 'loss_variance.png')):
        plots.append('loss_variance.png')
    text = markdown(args, runs, collected, rows, command, plots)
    with open(os.path.join(args.out, 'table.md.tmp'), 'w') as f:
        f.write(text)
    os.replace(os.path.join(args.out, 'table.md.tmp'), os.path.join(args.out, 'table.md'))
    diffs = differences(collected, runs)
    report = _nan_to_none({'summary': rows, 'differences': diffs, **collected, 'plots': plots})
    with open(os.path.join(args.out, 'table.json.tmp'), 'w') as f:
        json.dump(report, f, indent=2)
    os.replace(os.path.join(args.out, 'table.json.tmp'), os.path.join(args.out, 'table.json'))
    return report


def markdown(args, runs, collected, rows, command, plots) -> str:
    dataset = args.dataset
    cols = columns(dataset)
    last = max(runs[0].phases[1].ckpts) if runs else 0
    lines = [
        f'# ScoreFlow objectives in miniature: {dataset.upper()}',
        '',
        f'Command: `{command}`',
        '',
        f'Budget: {args.n_iters} training steps per run, snapshots every '
        f'{args.snapshot_freq} steps; values at the last snapshot ({last}). '
        'Each cell: mean ± standard error over seeds (the seeds of finished runs; one '
        'seed: no error). In brackets: the mean within-run standard error over test '
        'examples (the evaluation noise of one run).',
        '',
        '| SDE | objective | seeds | ' + ' | '.join(c[0] for c in cols) + ' |',
        '|' + '---|' * (3 + len(cols)),
    ]
    for row in rows:
        cells = [SDE_NAMES[row['sde']], OBJECTIVE_NAMES[row['objective']]]
        cells.append(f'{row["num_seeds"]}/{row["num_seeds_planned"]}')
        for _, key, se_key in cols:
            v = row[key]
            cell = _fmt(v['mean'], v['stderr_over_seeds'])
            if se_key and np.isfinite(v.get('mean_within_run_stderr', math.nan)):
                cell += f' [{v["mean_within_run_stderr"]:.3f}]'
            cells.append(cell)
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += [
        '',
        "The eval loss is each run's own training objective on the test split; the "
        'objectives weight t differently, so it compares checkpoints, not objectives.',
    ]
    if dataset == 'toy':
        lines.append(
            'KL(data‖model) = E_test[log p_data(x) + nll(x)] in nats, with the exact '
            "mixture density and the model's ODE (or bound) nll at time ε; its standard "
            'error is paired over test points.'
        )
    lines += differences_markdown(differences(collected, runs), dataset)
    lines += ['', '## Runs', '']
    keys = [c[1] for c in cols]
    lines.append('| run | done | step | ' + ' | '.join(keys) + ' | wall time [min] |')
    lines.append('|' + '---|' * (4 + len(keys)))
    for r in collected['runs']:
        cells = [r['run'], 'yes' if r['done'] else 'no', str(r['step'])]
        for _, key, se_key in cols:
            cells.append(_fmt(r.get(key), r.get(se_key) if se_key else math.nan, 4))
        seconds = r.get('seconds') or {}
        cells.append(', '.join(f'{k} {v / 60:.1f}' for k, v in seconds.items()) if seconds else '—')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += variance_markdown(collected)
    lines += gradient_markdown(collected)
    if plots:
        lines += ['', '## Plots', '']
        lines += [f'![{p}]({p})' for p in plots]
    return '\n'.join(lines) + '\n'


def variance_markdown(collected: Dict[str, Any]) -> List[str]:
    measured = [r for r in collected['runs'] if r.get('variance')]
    if not measured:
        return []
    lines = [
        '',
        '## The mechanism: variance of the likelihood-weighted loss',
        '',
        'Per-example values L of `losses.dsm_loss` with λ = g² on the last snapshot (EMA '
        'parameters) and training data: t ~ U(ε, T) with weight (T − ε) g²/σ², and t ~ '
        'p(t) ∝ g²/σ² with weight Z; both estimate the same integral ∫ g² E‖s + z/σ‖² dt. '
        'Per-batch variance = per-example variance / batch size, ± its standard error. '
        'With a small ε the uniform estimator is heavy-tailed (rare small t carry huge '
        'weights): its sample variance understates the true one; the column "reweighted" '
        'computes it from the importance-sampled draws (E_U[L_U²] = E_p[r L_IS²], r = '
        '(T − ε) g²/(σ² Z)), which sample small t densely.',
        '',
        '| model (trained with) | draws | mean, uniform t | mean, IS t | var/batch, uniform t '
        '| var/batch, uniform t (reweighted) | var/batch, IS t | ratio uniform / IS '
        '(sample; reweighted) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in measured:
        v = r['variance']
        u, i, b = v['uniform'], v['importance'], v['batch_size']
        lines.append(
            f'| {SDE_NAMES[r["sde"]]} {OBJECTIVE_NAMES[r["objective"]]} (step {v["step"]}) '
            f'| {v["num_draws"]} | {_fmt(u["mean"], u["mean_stderr"], 4)} '
            f'| {_fmt(i["mean"], i["mean_stderr"], 4)} '
            f'| {u["batch_var"]:.4g} ± {u["var_stderr"] / b:.2g} '
            f'| {u["var_from_importance_draws"] / b:.4g} '
            f'± {u["var_from_importance_draws_stderr"] / b:.2g} '
            f'| {i["batch_var"]:.4g} ± {i["var_stderr"] / b:.2g} '
            f'| {v["ratio"]:.3g}; {v["ratio_from_importance_draws"]:.3g} |'
        )
    for r in measured:
        v = r['variance']
        edges = v['bin_edges']
        lines += [
            '',
            f"Per t-bin (log-spaced on [ε, T]) for {r['run']}: the bin's part of the mean "
            '(the same for both estimators up to noise) and of the second moment E[L²] '
            '(where the variance comes from); n = draws in the bin.',
            '',
            '| t-bin | n, uniform | n, IS | E[L·1], uniform | E[L·1], IS | E[L²·1], uniform '
            '| E[L²·1], IS |',
            '|---|---|---|---|---|---|---|',
        ]
        u, i = v['uniform'], v['importance']
        for k in range(len(edges) - 1):
            lines.append(
                f'| [{edges[k]:.2g}, {edges[k + 1]:.2g}) | {u["bin_count"][k]} '
                f'| {i["bin_count"][k]} | {u["bin_mean"][k]:.4g} | {i["bin_mean"][k]:.4g} '
                f'| {u["bin_second_moment"][k]:.4g} | {i["bin_second_moment"][k]:.4g} |'
            )
    return lines


def gradient_markdown(collected: Dict[str, Any]) -> List[str]:
    """The gradient measurement of the runs that have one, snapshot by snapshot."""
    measured = [r for r in collected['runs'] if r.get('gradients')]
    if not measured:
        return []
    lines = [
        '',
        '## The mechanism where it acts: gradient variance and clipping',
        '',
        'On each snapshot of a run (its training parameters, dropout on), the gradient of '
        'one training batch with each weighting of t, on the same batches: the total '
        'variance tr Cov(g) of the λ = g² gradient with t ~ U and with importance-sampled '
        't at a common scale (both estimate ∇ ∫ g² E‖s + z/σ‖² dt), their ratio, and, at '
        "each objective's own training scale, the median gradient norm and the fraction of "
        'batches whose norm exceeds the clipping threshold (there clipping fires).',
        '',
        '| run | step | batches | tr Cov, λ = g² t ~ U | tr Cov, λ = g² IS t | ratio '
        '| median ‖g‖ (σ²; U; IS) | clipped (σ²; U; IS) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in measured:
        for ckpt in sorted(r['gradients'], key=int):
            g = r['gradients'][ckpt]
            u, i, b = g['likelihood'], g['importance'], g['sigma2']
            lines.append(
                f'| {r["run"]} | {g["step"]} | {g["num_batches"]} '
                f'| {u["trace_var"]:.3g} ± {u["trace_var_stderr"]:.2g} '
                f'| {i["trace_var"]:.3g} ± {i["trace_var_stderr"]:.2g} '
                f'| {u["trace_var"] / i["trace_var"]:.3g} '
                f'| {b["norm_median"]:.3g}; {u["norm_median"]:.3g}; {i["norm_median"]:.3g} '
                f'| {b["clip_fraction"]:.0%}; {u["clip_fraction"]:.0%}; '
                f'{i["clip_fraction"]:.0%} |'
            )
    return lines


def plot_curves(collected, runs, path: str, dataset: str) -> bool:
    """bits/dim (TOY: KL) vs training step: one panel per SDE, one colour per objective,
    thin lines per seed and the mean over seeds with a ± standard error band."""
    key = 'kl' if dataset == 'toy' else 'bpd'
    sdes = [s for s in SDES if any(r.sde == s for r in runs)]
    if not any(p.get(key) is not None for r in collected['runs'] for p in r['curve']):
        return False
    fig = Figure(figsize=(5.5 * len(sdes), 4))
    axes = fig.subplots(1, len(sdes), squeeze=False)
    colors = {
        'baseline': 'tab:gray',
        'lw': 'tab:blue',
        'lw_is': 'tab:red',
        'vel_is': 'tab:orange',
        'vel_idode': 'tab:green',
    }
    for ax, sde in zip(axes[0], sdes):
        for objective in ALL_OBJECTIVES:
            mine = [r for r in collected['runs'] if r['sde'] == sde and r['objective'] == objective]
            series = {}
            for r in mine:
                pts = [(p['step'], p[key]) for p in r['curve'] if p.get(key) is not None]
                if not pts:
                    continue
                s, v = zip(*pts)
                ax.plot(s, v, color=colors[objective], alpha=0.3, lw=0.8)
                for a, b in pts:
                    series.setdefault(a, []).append(b)
            if not series:
                continue
            steps = sorted(series)
            stats = [mean_and_stderr(series[s]) for s in steps]
            m = np.array([x[0] for x in stats])
            se = np.nan_to_num(np.array([x[1] for x in stats]))
            ax.plot(
                steps,
                m,
                'o-',
                color=colors[objective],
                label=f'{OBJECTIVE_NAMES[objective]} (n = {len(series[steps[-1]])} seeds)',
            )
            ax.fill_between(steps, m - se, m + se, color=colors[objective], alpha=0.2)
        ax.set_title(f'{dataset.upper()}, {SDE_NAMES[sde]} SDE')
        ax.set_xlabel('training step')
        ax.set_ylabel('KL(data‖model) [nats]' if key == 'kl' else 'test bits/dim (ODE)')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an SDE with no finished run has none
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def plot_variance(collected, path: str) -> bool:
    """Per t-bin (log-spaced) of both estimators, one column per measured model: the
    second moment E[L² 1{t ∈ bin}] (top, log scale: where the variance comes from) and
    the mean E[L 1{t ∈ bin}] (bottom: the same integrand for both, up to noise)."""
    measured = [r for r in collected['runs'] if r.get('variance')]
    if not measured:
        return False
    fig = Figure(figsize=(4.5 * len(measured), 6.5))
    axes = fig.subplots(2, len(measured), squeeze=False, sharex='col')
    for col, r in enumerate(measured):
        v = r['variance']
        edges = np.asarray(v['bin_edges'])
        b = v['batch_size']
        labels = {
            'uniform': f'uniform t: var/batch {v["uniform"]["batch_var"]:.3g} (reweighted '
            f'{v["uniform"]["var_from_importance_draws"] / b:.3g})',
            'importance': f'importance t: var/batch {v["importance"]["batch_var"]:.3g}',
        }
        for name, color in (('uniform', 'tab:blue'), ('importance', 'tab:red')):
            sm = np.asarray(v[name]['bin_second_moment'], np.float64)
            mean = np.asarray(v[name]['bin_mean'], np.float64)
            empty = np.asarray(v[name]['bin_count']) == 0
            axes[0, col].stairs(np.where(empty, np.nan, sm), edges, color=color, label=labels[name])
            axes[1, col].stairs(np.where(empty, np.nan, mean), edges, color=color, label=name)
        top, bottom = axes[0, col], axes[1, col]
        top.set_yscale('log')
        top.set_ylabel('E[L² · 1{t in bin}]')
        top.set_title(
            f'{SDE_NAMES[r["sde"]]}, model trained {r["objective"]} (step {v["step"]})', fontsize=9
        )
        top.legend(fontsize=7)
        bottom.set_ylabel('E[L · 1{t in bin}]')
        bottom.set_xlabel('t (bins log-spaced on [ε, T])')
        bottom.set_xscale('log')
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='Any --config.a.b=value is passed to every main.py run '
        '(e.g. --config.training.batch_size=64).',
    )
    parser.add_argument('--out', required=True, help='output folder: runs/, table.md, PNGs')
    parser.add_argument('--dataset', default='digits', choices=sorted(DEFAULTS))
    parser.add_argument('--sdes', default=','.join(SDES), help='comma-separated: vp,subvp')
    parser.add_argument(
        '--objectives',
        default=','.join(OBJECTIVES),
        help='comma-separated: baseline,lw,lw_is (default), and vel_is,vel_idode (i-DODE)',
    )
    parser.add_argument(
        '--seeds', default=None, help='comma-separated seeds (default: digits 0,1; toy 0,1,2)'
    )
    parser.add_argument(
        '--n_iters',
        type=int,
        default=None,
        help='training steps per run (default: digits 2000, toy 10000)',
    )
    parser.add_argument(
        '--snapshot_freq',
        type=int,
        default=None,
        help='steps between evaluated snapshots (default: digits 500, toy 2000)',
    )
    parser.add_argument(
        '--curves',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='eval loss and ODE bits/dim at every snapshot (--no-curves: at the last one '
        'only; runs with curves count as done too)',
    )
    parser.add_argument(
        '--curve_bound',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='the bound (importance-sampled t) at every snapshot, besides the ODE bits/dim '
        '(default: at the last snapshot only, folder eval_bound)',
    )
    parser.add_argument(
        '--uniform_bound',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='the bound with t ~ U(ε, T) at the last snapshot',
    )
    parser.add_argument(
        '--sample_quality',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='samples and FD_digits / FID at the last snapshot (default: on for images)',
    )
    parser.add_argument(
        '--variance',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='measure the loss variance, uniform vs importance-sampled t',
    )
    parser.add_argument(
        '--variance_draws', type=int, default=4096, help='examples per variance estimate'
    )
    parser.add_argument(
        '--gradient_seeds',
        default='',
        help='comma-separated seeds whose runs get the gradient measurement on every '
        'snapshot (gradient_variance.json; default: none)',
    )
    parser.add_argument(
        '--gradient_batches', type=int, default=128, help='batches per gradient measurement'
    )
    parser.add_argument(
        '--measure_only',
        action='store_true',
        help='train nothing: the variance and gradient measurements of finished runs whose '
        'snapshots are on disk, then the report',
    )
    parser.add_argument(
        '--jobs',
        type=int,
        default=1,
        help='runs trained and evaluated at the same time (2 on 2 CPU cores: ≈ 1.3× the '
        'throughput of 1)',
    )
    parser.add_argument(
        '--report_only', action='store_true', help='only rebuild table and plots from OUT/runs'
    )
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith('--config.')]
    if bad:
        parser.error(f'unrecognized arguments: {" ".join(bad)}')
    if args.jobs < 1:
        parser.error(f'--jobs {args.jobs}: give at least 1 (runs trained at the same time).')
    d = DEFAULTS[args.dataset]
    args.sdes = _names(args.sdes, SDES, '--sdes', parser)
    args.objectives = _names(args.objectives, ALL_OBJECTIVES, '--objectives', parser)
    args.seeds = (
        tuple(int(s) for s in args.seeds.split(',') if s.strip()) if args.seeds else d.seeds
    )
    args.gradient_seeds = tuple(int(s) for s in args.gradient_seeds.split(',') if s.strip())
    args.n_iters = d.n_iters if args.n_iters is None else args.n_iters
    args.snapshot_freq = d.snapshot_freq if args.snapshot_freq is None else args.snapshot_freq
    if args.sample_quality is None:
        args.sample_quality = d.sample_quality
    if args.dataset == 'toy' and args.sample_quality:
        parser.error('--sample_quality applies to images; TOY has KL(data‖model) instead.')
    args.out = os.path.abspath(args.out)
    return args, extra


def _names(text: str, allowed: Sequence[str], flag: str, parser) -> Tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(',') if s.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        parser.error(f'{flag}: {unknown or "empty"}; choose among {", ".join(allowed)}')
    return names


def main(argv: Sequence[str], launcher: Launcher = launch, log=print) -> int:
    args, extra = parse_args(argv)
    runs = build_grid(args, extra)
    shown = [a for a in argv if a not in ('--report_only', '--measure_only')]  # made the runs
    command = shlex.join(['python', 'scripts/scoreflow_table.py', *shown])
    failed: List[str] = []
    measured = variance_runs(runs) if args.variance else []

    def after_run(run: Run) -> None:  # while its checkpoints are certainly there
        if run in measured:
            measure_variance(run, args.variance_draws, log)
        if run.seed in args.gradient_seeds:
            measure_gradients(run, args.gradient_batches, log)

    if args.measure_only:
        for run in runs:
            if run_done(run):
                after_run(run)
    elif not args.report_only:
        start = time.time()
        failed = execute(runs, launcher, log, args.jobs, after_run)
        log(f'Grid finished in {time.time() - start:.0f} s.')
    write_report(args, runs, command)
    log(f'Wrote {os.path.join(args.out, "table.md")}.')
    if failed:
        log(f'Failed runs (rerun the command to continue them): {", ".join(failed)}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
