"""scripts/scoreflow_table.py: the grid of main.py runs on tiny budgets (a killed run is
continued, finished runs are skipped without a process, the table holds the runs'
metrics.json numbers, the plots are PNGs). The measurements it calls are tested in
test_diagnostics.py."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from scipy import stats

import file_io
from train_utils import REPO, TINY, load_config, toy_log_p_data
from validation import prepare_config

_spec = importlib.util.spec_from_file_location(
    'scoreflow_table', os.path.join(REPO, 'scripts', 'scoreflow_table.py')
)
sft = importlib.util.module_from_spec(_spec)
sys.modules['scoreflow_table'] = sft  # dataclasses look their module up there
_spec.loader.exec_module(sft)

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The script sets the schedule (n_iters, snapshot_freq, snapshot_sampling) itself. TOY:
# the cheapest main.py runs (a small MLP); a loose ODE tolerance keeps the untrained
# models' likelihoods quick (at the default 1e-5 an untrained network needs ~850 NFE).
_SET_BY_SCRIPT = ('training.n_iters', 'training.snapshot_freq', 'training.snapshot_sampling')
TINY_TOY = [f'--config.{k}={v}' for k, v in TINY['toy'].items() if k not in _SET_BY_SCRIPT] + [
    '--config.training.eval_freq=1000',  # no eval-loss compile during training
    '--config.training.snapshot_freq_for_preemption=20',  # fewer saves
    '--config.eval.rtol=1e-3',
    '--config.eval.atol=1e-3',
]


def _argv(out, *more):
    return [
        '--out',
        str(out),
        '--dataset',
        'toy',
        '--sdes',
        'vp',
        '--objectives',
        'lw,lw_is',
        '--seeds',
        '0',
        '--n_iters',
        '40',
        '--snapshot_freq',
        '20',
        '--no-uniform_bound',
        '--curve_bound',  # in the curves' process: no process for the bound alone
        '--variance_draws',
        '256',
        *more,
        *TINY_TOY,
    ]


def _env():
    return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)


def _killing_launcher(victim: str, killed: list):
    """Runs main.py, but SIGKILLs the training of run ``victim`` once it has written its
    first preemption checkpoint."""

    def launcher(command, log_path):
        workdir = command[command.index('--workdir') + 1]
        if os.path.basename(workdir) != victim or command[command.index('--mode') + 1] != 'train':
            return sft.launch(command, log_path)
        meta = os.path.join(workdir, 'checkpoints-meta')
        with open(log_path, 'a') as log:
            proc = subprocess.Popen(
                command, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT
            )
            while proc.poll() is None:
                if os.path.isdir(meta) and any(n.isdigit() for n in os.listdir(meta)):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.01)
            code = proc.wait()
        killed.append(code)
        return code

    return launcher


def _recording_launcher(calls: list):
    def launcher(command, log_path):
        calls.append(command)
        return sft.launch(command, log_path)

    return launcher


def _no_launcher(command, log_path):
    raise AssertionError(f'no process expected, got {command}')


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
    """Three invocations on one --out: the first with vp_lw's training killed, the second
    continues it, the third has nothing left to do."""
    out = tmp_path_factory.mktemp('scoreflow')
    # The runs' processes share compiled programs (the same ODE for both objectives, the
    # same training step on resuming) through JAX's persistent cache.
    saved = os.environ.get('JAX_COMPILATION_CACHE_DIR')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = str(tmp_path_factory.mktemp('jax_cache'))
    try:
        return _run_grid(out)
    finally:
        if saved is None:
            del os.environ['JAX_COMPILATION_CACHE_DIR']
        else:
            os.environ['JAX_COMPILATION_CACHE_DIR'] = saved


def _run_grid(out):
    logs: list = []
    killed: list = []
    first = sft.main(_argv(out), _killing_launcher('vp_lw_seed0', killed), logs.append)
    finished = os.path.join(out, 'runs', 'vp_lw_is_seed0', 'eval', 'metrics.json')
    mtime = os.path.getmtime(finished)
    second_calls: list = []
    # (the variance measurement, in this process, is done once: in the first invocation)
    second = sft.main(_argv(out, '--no-variance'), _recording_launcher(second_calls), logs.append)
    third_calls: list = []
    third = sft.main(_argv(out, '--no-variance'), _recording_launcher(third_calls), logs.append)
    return {
        'out': out,
        'codes': (first, second, third),
        'killed': killed,
        'mtime': mtime,
        'finished': finished,
        'second_calls': second_calls,
        'third_calls': third_calls,
        'logs': logs,
    }


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_run_is_continued(grid):
    assert grid['killed'] == [-signal.SIGKILL]  # really killed mid-training
    assert grid['codes'][0] == 1 and grid['codes'][1] == 0  # the failure, then the rest
    workdirs = [c[c.index('--workdir') + 1] for c in grid['second_calls']]
    assert {os.path.basename(w) for w in workdirs} == {'vp_lw_seed0'}
    modes = [c[c.index('--mode') + 1] for c in grid['second_calls']]
    assert modes == ['train', 'eval']
    with open(os.path.join(grid['out'], 'runs', 'vp_lw_seed0', 'stdout.txt')) as f:
        log = f.read()
    resumed = [line for line in log.splitlines() if 'steps ' in line and '-> 40' in line]
    assert len(resumed) == 2 and 'steps 0 -> 40' not in resumed[1], resumed


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_rerun_skips_finished_runs(grid):
    assert grid['third_calls'] == [] and grid['codes'][2] == 0
    assert os.path.getmtime(grid['finished']) == grid['mtime']
    assert any('vp_lw_is_seed0: done, skipped.' in line for line in grid['logs'])
    # --report_only starts no process either
    assert sft.main(_argv(grid['out'], '--report_only'), _no_launcher, lambda s: None) == 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_table_holds_the_runs_metrics(grid):
    out = grid['out']
    with open(os.path.join(out, 'table.json')) as f:
        table = json.load(f)
    assert [(r['sde'], r['objective']) for r in table['summary']] == [
        ('vp', 'lw'),
        ('vp', 'lw_is'),
    ]
    text = open(os.path.join(out, 'table.md')).read()
    for row, objective in zip(table['summary'], ('lw', 'lw_is')):
        with open(os.path.join(out, 'runs', f'vp_{objective}_seed0', 'eval', 'metrics.json')) as f:
            metrics = json.load(f)
        assert sorted(metrics, key=int) == ['1', '2']  # both snapshots: a curve
        final = metrics['2']
        assert row['num_seeds'] == 1
        run = next(r for r in table['runs'] if r['objective'] == objective)
        assert row['loss']['mean'] == final['loss']
        assert row['loss']['stderr_over_seeds'] is None  # one seed
        assert [p['bpd'] for p in run['curve']] == [metrics['1']['bpd'], final['bpd']]
        # KL = E_test[log p_data + nll]: nll in nats is bpd · D ln 2 for vector data.
        log_p = toy_log_p_data()
        for key, kl in (('bpd', 'kl'), ('bound_bpd', 'bound_kl')):
            expected = final[key] * 2 * math.log(2) + float(log_p.mean())
            assert math.isclose(row[kl]['mean'], expected, abs_tol=1e-5)  # float32 log p
            assert row[kl]['mean'] == run[kl]
        assert run['kl_stderr'] > 0 and row['kl']['mean_within_run_stderr'] == run['kl_stderr']
        assert math.isclose(final['nll'], final['bpd'] * 2 * math.log(2), rel_tol=1e-6)
        cell = f'| VP | {sft.OBJECTIVE_NAMES[objective]} | 1/1 | {run["kl"]:.3f} ['
        assert cell in text
    assert '## The mechanism' in text


@pytest.mark.timeout(60)
def test_paired_statistics_match_an_independent_computation():
    """Mean, standard error, t, p and the 95 % interval of per-seed differences agree with
    scipy's paired t-test (ttest_rel) and its confidence interval, computed here apart."""
    rs = np.random.RandomState(3)
    a = {s: 1.9 + 0.01 * rs.randn() for s in range(8)}
    b = {s: a[s] + 0.02 + 0.005 * rs.randn() for s in range(8)}
    b[8] = 2.0  # a seed only one side has is left out
    out = sft.paired(a, b)
    d = np.array([a[s] - b[s] for s in range(8)])
    ref = stats.ttest_rel([a[s] for s in range(8)], [b[s] for s in range(8)])
    ci = ref.confidence_interval(0.95)
    assert (out['n'], out['df'], out['seeds']) == (8, 7, list(range(8)))
    assert out['mean'] == pytest.approx(d.mean(), rel=1e-12)
    assert out['t'] == pytest.approx(ref.statistic, rel=1e-9)
    assert out['p'] == pytest.approx(ref.pvalue, rel=1e-9)
    assert out['ci95'] == pytest.approx([ci.low, ci.high], rel=1e-9)
    assert (out['negative'], out['positive']) == (int(np.sum(d < 0)), int(np.sum(d > 0)))
    one = sft.paired({0: 1.0}, {0: 1.5, 1: 2.0})
    assert one['n'] == 1 and one['mean'] == -0.5 and math.isnan(one['p'])
    assert sft.paired({0: None}, {0: 1.0})['n'] == 0


@pytest.mark.timeout(60)
def test_paired_differences_of_a_grid(tmp_path):
    """Every objective against its SDE's baseline and sub-VP against VP, paired by seed,
    over the seeds both cells finished; the markdown shows interval, df, p and signs."""
    args, extra = sft.parse_args(['--out', str(tmp_path), '--dataset', 'toy', '--seeds', '0,1,2'])
    runs = sft.build_grid(args, extra)
    kl = {('vp', 'baseline'): 0.05, ('vp', 'lw'): 0.04, ('vp', 'lw_is'): 0.03}
    kl.update({('subvp', 'baseline'): 0.06, ('subvp', 'lw'): 0.05, ('subvp', 'lw_is'): 0.02})
    collected = {
        'runs': [
            {
                'sde': r.sde,
                'objective': r.objective,
                'seed': r.seed,
                'done': not (r.sde == 'subvp' and r.objective == 'lw' and r.seed == 2),
                'kl': kl[r.sde, r.objective] + 0.001 * r.seed**2 * (r.objective == 'lw'),
                'bound_kl': None,
            }
            for r in runs
        ]
    }
    diffs = sft.differences(collected, runs)
    names = [
        (d['sde'], d['objective'], d['reference_sde'], d['reference_objective']) for d in diffs
    ]
    assert names == [
        ('vp', 'lw', 'vp', 'baseline'),
        ('vp', 'lw_is', 'vp', 'baseline'),
        ('subvp', 'lw', 'subvp', 'baseline'),
        ('subvp', 'lw_is', 'subvp', 'baseline'),
        ('subvp', 'baseline', 'vp', 'baseline'),
        ('subvp', 'lw', 'vp', 'lw'),
        ('subvp', 'lw_is', 'vp', 'lw_is'),
    ]
    vp_lw = diffs[0]['kl']
    d = np.array([-0.01, -0.009, -0.006])
    assert vp_lw['n'] == 3 and vp_lw['mean'] == pytest.approx(d.mean())
    assert vp_lw['stderr'] == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    assert diffs[2]['kl']['n'] == 2  # sub-VP lw seed 2 is not finished
    assert diffs[1]['kl']['stderr'] == pytest.approx(0.0, abs=1e-12)  # constant Δ
    assert diffs[0]['bound_kl']['n'] == 0
    text = '\n'.join(sft.differences_markdown(diffs, 'toy'))
    lo, hi = vp_lw['ci95']
    cell = f'{vp_lw["mean"]:+.3f} [{lo:+.3f}, {hi:+.3f}] (df 2, p {vp_lw["p"]:.2g}; 3−/0+)'
    assert f'| VP λ = g², t ~ U − VP σ² weighting (baseline) | {cell} |' in text
    # a grid without the baseline compares only SDEs
    args, extra = sft.parse_args(['--out', str(tmp_path), '--objectives', 'lw'])
    assert sft.comparisons(sft.build_grid(args, extra)) == [(('subvp', 'lw'), ('vp', 'lw'))]
    # i-DODE's velocity objectives: against ScoreFlow's λ = g² + IS, the second also the first
    argv = ['--out', str(tmp_path), '--sdes', 'vp', '--objectives', 'lw_is,vel_is,vel_idode']
    args, extra = sft.parse_args(argv)
    assert sft.comparisons(sft.build_grid(args, extra)) == [
        (('vp', 'vel_is'), ('vp', 'lw_is')),
        (('vp', 'vel_idode'), ('vp', 'lw_is')),
        (('vp', 'vel_idode'), ('vp', 'vel_is')),
    ]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_plots_are_png(grid):
    for name in ('kl_curves.png', 'loss_variance.png'):
        path = os.path.join(grid['out'], name)
        with open(path, 'rb') as f:
            assert f.read(8) == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()


@pytest.mark.timeout(60)
def test_grid_phases_and_flags(tmp_path):
    args, extra = sft.parse_args(
        ['--out', str(tmp_path), '--n_iters', '2000', '--config.training.batch_size=64']
    )
    runs = sft.build_grid(args, extra)
    assert [r.name for r in runs][:3] == ['vp_baseline_seed0', 'vp_baseline_seed1', 'vp_lw_seed0']
    assert len(runs) == 12 and {r.config for r in runs} == {
        f'configs/{s}/digits_{o}.py' for s in sft.SDES for o in sft.OBJECTIVES
    }
    run = runs[0]
    names = ['train', 'curves', 'bound', 'bound_uniform', 'samples']
    assert [p.name for p in run.phases] == names
    assert run.phases[1].ckpts == (1, 2, 3, 4)
    assert '--config.training.batch_size=64' in run.command(run.phases[0])
    assert '--config.eval.bound=False' in run.command(run.phases[1])
    bound = run.command(run.phases[2])
    assert '--config.eval.bound_importance_weighting=True' in bound and 'eval_bound' in bound
    uniform = run.command(run.phases[3])
    assert '--config.eval.bound_importance_weighting=False' in uniform
    assert '--config.eval.begin_ckpt=4' in uniform and 'eval_bound_uniform' in uniform
    toy, _ = sft.parse_args(['--out', str(tmp_path), '--dataset', 'toy'])
    assert toy.seeds == (0, 1, 2) and not toy.sample_quality
    with pytest.raises(SystemExit):
        sft.parse_args(['--out', str(tmp_path), '--bogus=1'])
    with pytest.raises(SystemExit):
        sft.parse_args(['--out', str(tmp_path), '--jobs', '0'])


@pytest.mark.timeout(60)
def test_jobs_run_concurrently(tmp_path):
    """--jobs 2: two runs' processes at once (each run's first launch waits for the
    other's), each run's phases in order, a failure stops only its own run, after_run sees
    the finished runs (in the order they finish)."""
    args, extra = sft.parse_args(
        _argv(tmp_path, '--objectives', 'baseline,lw,lw_is', '--jobs', '2')
    )
    runs = sft.build_grid(args, extra)
    barrier = threading.Barrier(2, timeout=20)
    calls, finished, lock = [], [], threading.Lock()

    def launcher(command, log_path):
        workdir = command[command.index('--workdir') + 1]
        name, mode = os.path.basename(workdir), command[command.index('--mode') + 1]
        with lock:
            calls.append((name, mode))
        if mode == 'train' and name != 'vp_lw_is_seed0':
            barrier.wait()  # raises BrokenBarrierError unless both runs are in flight
        if name == 'vp_lw_seed0':
            return 3
        if mode == 'eval':
            folder = command[command.index('--eval_folder') + 1]
            os.makedirs(os.path.join(workdir, folder), exist_ok=True)
            entry = {k: 1.0 for k in runs[0].phases[1].keys}
            with open(os.path.join(workdir, folder, sft.METRICS_FILE), 'w') as f:
                json.dump({'1': entry, '2': entry}, f)
        return 0

    failed = sft.execute(runs, launcher, lambda s: None, args.jobs, finished.append)
    assert failed == ['vp_lw_seed0']
    assert sorted(r.name for r in finished) == ['vp_baseline_seed0', 'vp_lw_is_seed0']
    for name in ('vp_baseline_seed0', 'vp_lw_is_seed0'):
        assert [m for n, m in calls if n == name] == ['train', 'eval']
    assert [m for n, m in calls if n == 'vp_lw_seed0'] == ['train']
    # a second pass finds the finished runs done and retries the failed one only
    calls.clear()
    barrier = threading.Barrier(1)
    assert sft.execute(runs, launcher, lambda s: None, 2) == ['vp_lw_seed0']
    assert calls == [('vp_lw_seed0', 'train')]


@pytest.mark.timeout(60)
def test_variance_skips_a_run_without_its_snapshot(tmp_path):
    """A finished run carried over without checkpoints keeps its results; the variance
    measurement says why it is not made instead of failing."""
    args, extra = sft.parse_args(_argv(tmp_path))
    run = sft.variance_runs(sft.build_grid(args, extra))[0]
    os.makedirs(run.workdir)
    logs = []
    sft.measure_variance(run, 256, logs.append)
    assert logs == [f'{run.name}: snapshot 2 is not in {run.workdir}, no variance measurement.']
    assert not os.path.exists(os.path.join(run.workdir, sft.VARIANCE_FILE))


@pytest.mark.timeout(120)
def test_toy_kl_of_each_phase(tmp_path):
    """The report's KLs come from each phase's own folder and nll: the ODE's from the
    curves (``eval``), the bounds' from ``eval_bound`` (its own ``bound_h0.npz``, mean
    from the file) and ``eval_bound_uniform`` (an older run's ``bpd_h0.npz``, mean from
    metrics.json's ``bound_nll``)."""
    args, extra = sft.parse_args(_argv(tmp_path, '--uniform_bound', '--no-curve_bound'))
    run = sft.build_grid(args, extra)[0]
    os.makedirs(run.workdir)
    config = prepare_config(load_config('toy'))
    with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    log_p = toy_log_p_data()
    index, ones = np.arange(len(log_p)), np.ones(len(log_p), np.float32)
    files = {
        sft.CURVES: ({'bpd': 1.0, 'nll': 2.0}, 'bpd_h0.npz', {'nll': 2.0 * ones}),
        sft.BOUND: ({'bound_bpd': 1.1}, 'bound_h0.npz', {'bound_nll': 2.25 * ones}),
        sft.BOUND_UNIFORM: ({'bound_nll': 2.5}, 'bpd_h0.npz', {'bound_nll': 9.0 * ones}),
    }
    for folder, (metrics, name, arrays) in files.items():
        entries = {str(c): metrics for c in (1, 2)}
        file_io.write_json(os.path.join(run.workdir, folder, sft.METRICS_FILE), entries)
        file_io.save_npz(os.path.join(run.workdir, folder, 'ckpt_2', name), index=index, **arrays)
    row = sft.collect([run])['runs'][0]
    for key, nll in (('kl', 2.0), ('bound_kl', 2.25), ('bound_uniform_kl', 2.5)):
        assert math.isclose(row[key], nll + log_p.mean(), abs_tol=1e-5), key
        stderr = np.std(log_p, ddof=1) / len(log_p) ** 0.5  # paired: nll is constant
        assert math.isclose(row[f'{key}_stderr'], stderr, rel_tol=1e-4)  # float32 log p
    assert row['curve'][1]['kl'] == row['kl'] and math.isnan(row['curve'][0]['kl_stderr'])


@pytest.mark.timeout(60)
def test_gradient_measurement_in_the_report():
    """Each measured snapshot is a row: both traces with their errors, their ratio, the
    median norms and the clipped fractions at each objective's own scale."""

    def stats_(trace, median, clipped):
        return {
            'trace_var': trace,
            'trace_var_stderr': 0.1 * trace,
            'norm_median': median,
            'clip_fraction': clipped,
        }

    g = {
        'step': 500,
        'num_batches': 128,
        'sigma2': stats_(1.0, 0.3, 0.0),
        'likelihood': stats_(50.0, 2.5, 0.75),
        'importance': stats_(2.0, 0.9, 0.125),
    }
    collected = {'runs': [{'run': 'vp_lw_is_seed2', 'gradients': {'1': g}}, {'run': 'x'}]}
    text = '\n'.join(sft.gradient_markdown(collected))
    row = '| vp_lw_is_seed2 | 500 | 128 | 50 ± 5 | 2 ± 0.2 | 25 | 0.3; 2.5; 0.9 | 0%; 75%; 12% |'
    assert row in text
    assert sft.gradient_markdown({'runs': [{'run': 'x'}]}) == []
    args, _ = sft.parse_args(['--out', 'o', '--gradient_seeds', '2,3', '--measure_only'])
    assert args.gradient_seeds == (2, 3) and args.measure_only
