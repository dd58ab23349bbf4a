"""Benchmark: samples/s and sample quality against NFE for the samplers of a trained DIGITS
model: PC, the adaptive probability-flow ODE and the fast solvers (DPM-Solver, DPM-Solver++,
DDIM, EDM's Heun) at several NFE (not a test).

Every sampler of the grid draws ``--num`` samples from the same snapshot (in batches of
``--batch``, one compile per sampler first); reported: NFE per sample, wall time, samples/s
and FD_digits (Fréchet distance in the features of the digits classifier, against the
training digits, as ``--mode eval`` computes it), plus FD_digits of ``--num`` training and
test digits for scale (FD of a finite sample is biased upwards).

PC samplers take N = ``model.num_scales`` steps (1 score evaluation each, 2 with the
Langevin corrector); the ODE sampler is adaptive (Dopri5, in t or σ̃ = σ/α); the fast
solvers run at each NFE of ``--nfes`` (Heun: EDM's 2N − 1, the largest odd NFE ≤ the
target).  ``--grid`` picks the rows ('pc_ode': the original grid; 'fast': EM N = 1000, the
ODE at 1e-3 and the fast solvers; 'all'); ``--out`` writes the rows as JSON and ``--plot``
draws FD_digits against NFE from them (``--replot``: redraw an earlier ``--out``);
``--bootstrap B`` adds the standard deviation of FD_digits over B resamples of the samples,
``--seed`` draws other samples.

``--task class_conditional`` measures class-conditional sampling instead (the noise-
conditional classifier of ``--mode train_classifier`` must be trained in the workdir):
``--per-class`` samples of each class, drawn from ∇log p_t(x) + s·∇log p_t(y | x)
(``--classifier-scale`` s; 1 is the exact conditional) by each sampler of the grid, and
judged as ``--mode sample --config.sampling.task=class_conditional`` judges them
(``sample_runner.judge``: the independent digits classifier on the quantized samples);
reported: the in-class accuracy and its binomial standard error. NFE counts score-model
evaluations (each also evaluates the classifier's gradient once). The adaptive ODE rows
are skipped unless named by ``--only`` (one solve per example; stiff with the classifier).

    python bench/sampling_speed.py --workdir runs/digits_lw_is \
        [--config configs/vp/digits_lw_is.py] [--num 512] [--grid fast --nfes 5,10,15,20,50] \
        [--out fast.json --plot docs/images/sampling_fd_nfe.png]
    python bench/sampling_speed.py --workdir W --task class_conditional --grid fast \
        --per-class 20 --batch 200 [--out cc.json --plot cc.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from snapshot import load_snapshot  # noqa: E402

import classifier as classifier_lib  # noqa: E402
import datasets  # noqa: E402
import digits_classifier  # noqa: E402, F401  (registers the feature network 'digits_mlp')
import evaluation  # noqa: E402
import file_io  # noqa: E402
import pictures  # noqa: E402
import sample_runner  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from models import utils as mutils  # noqa: E402

# (name, config.sampling fields, model.num_scales)
GRID: List[tuple] = [
    ('EM N=100', dict(method='pc', predictor='euler_maruyama', corrector='none'), 100),
    ('EM N=300', dict(method='pc', predictor='euler_maruyama', corrector='none'), 300),
    ('EM N=1000', dict(method='pc', predictor='euler_maruyama', corrector='none'), 1000),
    ('RD+LD N=150', dict(method='pc', predictor='reverse_diffusion', corrector='langevin'), 150),
    ('RD+LD N=500', dict(method='pc', predictor='reverse_diffusion', corrector='langevin'), 500),
    ('ODE t 1e-3', dict(method='ode', rtol=1e-3, atol=1e-3, ode_time='t'), 1000),
    ('ODE t 1e-5', dict(method='ode', rtol=1e-5, atol=1e-5, ode_time='t'), 1000),
    ('ODE σ̃ 1e-3', dict(method='ode', rtol=1e-3, atol=1e-3, ode_time='sigma'), 1000),
    ('ODE σ̃ 1e-5', dict(method='ode', rtol=1e-5, atol=1e-5, ode_time='sigma'), 1000),
]


# The fast solvers (name, config.sampling fields); ``steps`` is set per NFE (:func:`steps_for`).
FAST: List[tuple] = [
    ('DPM-Solver-1', dict(method='dpm_solver', order=1, solver_type='singlestep')),
    ('DPM-Solver-2S', dict(method='dpm_solver', order=2, solver_type='singlestep')),
    ('DPM-Solver-3S', dict(method='dpm_solver', order=3, solver_type='singlestep')),
    ('DPM-Solver-2M', dict(method='dpm_solver', order=2, solver_type='multistep')),
    ('DPM-Solver-3M', dict(method='dpm_solver', order=3, solver_type='multistep')),
    ('DPM-Solver++2M', dict(method='dpm_solver', order=2, solver_type='multistep')),
    ('DPM-Solver++3M', dict(method='dpm_solver', order=3, solver_type='multistep')),
    ('DDIM', dict(method='ddim', skip_type='time_uniform', eta=0.0)),
    ('Heun', dict(method='heun', rho=7.0, denoise_to_zero=True)),
    ('DDIM eta=1', dict(method='ddim', skip_type='time_uniform', eta=1.0)),
]
BASELINES = ['EM N=1000', 'ODE t 1e-3']


def steps_for(fields: Dict[str, Any], nfe: int) -> int:
    """``sampling.steps`` for about ``nfe`` evaluations: NFE itself, Heun (N − 1)/2 with
    the final denoising (EDM's 2N − 1 evaluations)."""
    return (nfe - 1) // 2 if fields['method'] == 'heun' else nfe


def grid(which: str, nfes: List[int]) -> List[tuple]:
    """Rows (name, family, config.sampling fields, model.num_scales) of ``--grid``."""
    rows = [(name, name, fields, n) for name, fields, n in GRID]
    if which == 'pc_ode':
        return rows
    fast = []
    for family, fields in FAST:
        algorithm = 'dpmsolver++' if '++' in family else 'dpmsolver'
        for nfe in nfes:
            f = dict(fields, steps=steps_for(fields, nfe), algorithm=algorithm)
            fast.append((f'{family} NFE={nfe}', family, f, 1000))
    if which == 'fast':
        rows = [r for r in rows if r[0] in BASELINES]
    return rows + fast


def plot(results: List[Dict[str, Any]], reference: Dict[str, float], path: str) -> None:
    """FD_digits against NFE (log axis): one line per fast-solver family (± the bootstrap
    sd where measured), the baselines as points, EM N = 1000's FD as a dashed level and the
    training digits' FD as the floor."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    families = list(dict.fromkeys(r['family'] for r in results))
    for i, family in enumerate(families):
        rows = sorted((r for r in results if r['family'] == family), key=lambda r: r['nfe'])
        style = ('o', '-' if i < 10 else '--') if len(rows) > 1 else ('s', 'none')
        ax.errorbar(
            [r['nfe'] for r in rows],
            [r['fd'] for r in rows],
            yerr=[r.get('fd_sd', 0.0) for r in rows],
            marker=style[0],
            ls=style[1],
            label=family,
            ms=4,
            capsize=2,
        )
    target = [r['fd'] for r in results if r['name'] == 'EM N=1000']
    if target:
        ax.axhline(target[0], color='black', ls='--', lw=0.8, label='EM N=1000 level')
    if 'train' in reference:
        ax.axhline(reference['train'], color='grey', ls=':', label='training digits')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('NFE (score evaluations per sample)')
    ax.set_ylabel('FD_digits')
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which='both', alpha=0.3)
    pictures.save_figure(fig, path, dpi=110)


def fd_spread(images: np.ndarray, workdir: str, config, draws: int, seed: int = 0) -> float:
    """Bootstrap standard deviation of FD_digits: its spread over ``draws`` resamples (with
    replacement) of the images, against the same reference statistics."""
    net = evaluation.get_feature_net(workdir, config)
    ref = evaluation.reference_stats(net, config.data.dataset, workdir, config)
    levels = evaluation.quantize(
        images, int(config.data.num_bins), bool(config.data.uniform_dequantization)
    )
    features = np.asarray(net(levels)[0], np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        mu, sigma = evaluation.feature_stats(
            features[rng.integers(0, len(features), len(features))]
        )
        values.append(evaluation.frechet_distance(mu, sigma, ref.mu, ref.sigma))
    return float(np.std(values, ddof=1))


def draw(snap, fields: Dict[str, Any], num_scales: int, num: int, batch: int, seed: int = 0):
    """(samples in [0, 1], NFE per sample, seconds after the compiling first batch)."""
    config = snap.config.copy_and_resolve_references()
    config.sampling.update(fields)
    config.model.num_scales = num_scales
    sde = sde_lib.get_sde(config)
    shape = (batch,) + datasets.data_shape(config)
    sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config))
    score_fn = mutils.get_score_fn(
        sde, snap.model, {'params': snap.ema_params}, continuous=config.training.continuous
    )
    jax.block_until_ready(sampler(jax.random.PRNGKey(99), score_fn))  # compile
    out, nfes, start = [], [], time.perf_counter()
    for i in range(-(-num // batch)):
        key = jax.random.fold_in(jax.random.PRNGKey(i), seed) if seed else jax.random.PRNGKey(i)
        x, nfe = jax.block_until_ready(sampler(key, score_fn))
        out.append(np.asarray(x))
        nfes.append(int(nfe))
    seconds = time.perf_counter() - start
    return np.clip(np.concatenate(out)[:num], 0.0, 1.0), float(np.mean(nfes)), seconds


def conditional_runner(config, workdir: str, ckpt: int, per_class: int, batch: int, scale: float):
    """The ``--mode sample`` runner of the class-conditional task (score model, classifier)."""
    config = config.copy_and_resolve_references()
    config.sampling.task = 'class_conditional'
    config.sampling.num_samples = per_class
    config.sampling.classifier_scale = scale
    config.eval.batch_size = batch
    config.eval.end_ckpt = ckpt
    return sample_runner.SampleRunner(config, workdir)


def draw_conditional(runner, fields: Dict[str, Any], num_scales: int, seed: int = 0):
    """Class-conditional samples of ``runner`` (its labels, its batch) by the sampler of
    ``fields``: (samples in [0, 1], labels, NFE per sample, seconds after compiling)."""
    config = runner.config.copy_and_resolve_references()
    config.sampling.update(fields)
    config.model.num_scales = num_scales
    sde = sde_lib.get_sde(config)
    cond = runner.conditions()
    batch = runner._host_batch()
    shape = (batch,) + runner.data.shape
    sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config))
    model = runner.classifier[0]
    scale = float(config.sampling.classifier_scale)

    @jax.jit
    def run(v, cv, rng, y):
        score = mutils.get_score_fn(
            sde, runner.model, v, train=False, continuous=bool(config.training.continuous)
        )
        grad = classifier_lib.get_logp_grad_fn(sde, model, cv)
        return sampler(rng, sampling.conditional_score_fn(score, grad, y, scale))

    cv = runner.classifier[1]
    rounds = -(-len(cond['labels']) // batch)
    jax.block_until_ready(
        run(runner.variables, cv, jax.random.PRNGKey(99), runner._round_input(cond, 0))
    )
    out, nfes, start = [], [], time.perf_counter()
    for r in range(rounds):
        key = jax.random.fold_in(jax.random.PRNGKey(r), seed) if seed else jax.random.PRNGKey(r)
        x, nfe = jax.block_until_ready(run(runner.variables, cv, key, runner._round_input(cond, r)))
        out.append(np.asarray(x))
        nfes.append(int(nfe))
    seconds = time.perf_counter() - start
    x = np.clip(np.concatenate(out)[: len(cond['labels'])], 0.0, 1.0)
    return x, cond['labels'], float(np.mean(nfes)), seconds


def in_class_accuracy(runner, x: np.ndarray, labels: np.ndarray, predict) -> Dict[str, Any]:
    """The judge's in-class accuracy of samples ``x`` (quantized as ``--mode sample``
    pictures them), its binomial standard error and the per-class accuracies."""
    shown = runner._shown({'samples': x, 'levels': runner.data.quantize(x)})
    metrics = sample_runner.class_metrics(predict(shown), labels)
    p, n = metrics['accuracy'], len(labels)
    return dict(metrics, accuracy_se=float(np.sqrt(p * (1.0 - p) / n)), num=n)


def main_conditional(args, snap) -> None:
    """``--task class_conditional``: in-class accuracy against NFE (module docstring)."""
    runner = conditional_runner(
        snap.config, args.workdir, args.ckpt, args.per_class, args.batch, args.classifier_scale
    )
    predict, description = sample_runner.judge(runner)
    if predict is None:
        raise SystemExit(f'no judge: {description}')
    print(f'judge: {description}; classifier step {runner.classifier[2]}', flush=True)
    print(f'{"sampler":>24} {"NFE":>7} {"seconds":>8} {"samples/s":>10} {"accuracy":>14}')
    wanted = set(filter(None, args.only.split(',')))
    rows = []
    for name, family, fields, num_scales in grid(args.grid, [int(n) for n in args.nfes.split(',')]):
        if (wanted and name not in wanted) or (not wanted and fields['method'] == 'ode'):
            continue
        x, labels, nfe, seconds = draw_conditional(runner, fields, num_scales, args.seed)
        row = dict(name=name, family=family, fields=fields, nfe=nfe, seconds=seconds)
        row.update(seed=args.seed, samples_per_s=len(labels) / seconds)
        row.update(in_class_accuracy(runner, x, labels, predict))
        row['classifier_scale'] = args.classifier_scale
        rows.append(row)
        print(
            f'{name:>24} {nfe:7.0f} {seconds:8.1f} {row["samples_per_s"]:10.2f} '
            f'{row["accuracy"]:7.3f} ± {row["accuracy_se"]:.3f}',
            flush=True,
        )
        if args.out:
            file_io.write_json(args.out, {'judge': description, 'rows': rows})
    if args.plot:
        plot_accuracy(rows, args.plot)


def plot_accuracy(results: List[Dict[str, Any]], path: str) -> None:
    """In-class accuracy against NFE (log axis), ± its binomial standard error: one line
    per fast-solver family, EM N = 1000 as a dashed level with its ± 1 SE band."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    families = list(dict.fromkeys(r['family'] for r in results))
    for i, family in enumerate(families):
        rows = sorted((r for r in results if r['family'] == family), key=lambda r: r['nfe'])
        if family == 'EM N=1000':
            a, se = rows[0]['accuracy'], rows[0]['accuracy_se']
            ax.axhline(a, color='black', ls='--', lw=0.8, label='EM N=1000 (± SE)')
            ax.axhspan(a - se, a + se, color='black', alpha=0.1)
            continue
        style = ('o', '-' if i < 10 else '--') if len(rows) > 1 else ('s', 'none')
        ax.errorbar(
            [r['nfe'] for r in rows],
            [r['accuracy'] for r in rows],
            yerr=[r['accuracy_se'] for r in rows],
            marker=style[0],
            ls=style[1],
            label=family,
            ms=4,
            capsize=2,
        )
    ax.axhline(0.1, color='grey', ls=':', label='chance')
    ax.set_xscale('log')
    ax.set_xlabel('NFE (score evaluations per sample)')
    ax.set_ylabel('in-class accuracy (digits judge)')
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which='both', alpha=0.3)
    pictures.save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default='runs/digits_lw_is')
    parser.add_argument('--config', default='configs/vp/digits_lw_is.py')
    parser.add_argument('--ckpt', type=int, default=-1, help='snapshot (-1: the newest)')
    parser.add_argument('--num', type=int, default=512)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--only', default='', help='comma-separated names of the grid')
    parser.add_argument('--grid', default='pc_ode', choices=('pc_ode', 'fast', 'all'))
    parser.add_argument('--nfes', default='5,10,15,20,50', help='NFE of the fast solvers')
    parser.add_argument('--out', default='', help='JSON file of the rows')
    parser.add_argument('--plot', default='', help='PNG of FD_digits against NFE')
    parser.add_argument('--replot', action='store_true', help='only redraw --plot from --out')
    parser.add_argument('--seed', type=int, default=0, help='other draws (0: the default)')
    parser.add_argument('--bootstrap', type=int, default=0, help='resamples for FD ± sd')
    parser.add_argument(
        '--task', default='unconditional', choices=('unconditional', 'class_conditional')
    )
    parser.add_argument(
        '--per-class', type=int, default=20, help='class_conditional: samples per class'
    )
    parser.add_argument(
        '--classifier-scale', type=float, default=1.0, help='1: the exact conditional'
    )
    args = parser.parse_args()
    if args.replot:
        saved = file_io.read_json(args.out)
        if args.task == 'class_conditional':
            plot_accuracy(saved['rows'], args.plot)
        else:
            plot(saved['rows'], saved['reference'], args.plot)
        return
    snap = load_snapshot(args.config, args.workdir, args.ckpt)
    if args.task == 'class_conditional':
        main_conditional(args, snap)
        return

    def fd(images: np.ndarray) -> float:
        return evaluation.sample_quality(images, args.workdir, snap.config)['fid']

    reference = {}
    for split in ('train', 'test'):
        levels = datasets.get_shard(snap.config, split, process_index=0, process_count=1).data[
            : args.num
        ]
        images = datasets.to_unit_interval(levels, int(snap.config.data.num_bins))
        reference[split] = fd(images)
        print(f'{len(levels)} {split} digits: FD_digits {reference[split]:.2f}', flush=True)
    print(f'{"sampler":>24} {"NFE":>7} {"seconds":>8} {"samples/s":>10} {"FD_digits":>10}')
    wanted = set(filter(None, args.only.split(',')))
    rows = []
    for name, family, fields, num_scales in grid(args.grid, [int(n) for n in args.nfes.split(',')]):
        if wanted and name not in wanted:
            continue
        x, nfe, seconds = draw(snap, fields, num_scales, args.num, args.batch, args.seed)
        row = dict(name=name, family=family, fields=fields, nfe=nfe, seconds=seconds)
        row['seed'] = args.seed
        row.update(samples_per_s=args.num / seconds, fd=fd(x), num=args.num)
        if args.bootstrap:
            row['fd_sd'] = fd_spread(x, args.workdir, snap.config, args.bootstrap)
        rows.append(row)
        spread = f' ± {row["fd_sd"]:.2f}' if args.bootstrap else ''
        print(
            f'{name:>24} {nfe:7.0f} {seconds:8.1f} {row["samples_per_s"]:10.2f} '
            f'{row["fd"]:10.2f}{spread}',
            flush=True,
        )
        if args.out:
            file_io.write_json(args.out, {'reference': reference, 'rows': rows})
    if args.plot:
        plot(rows, reference, args.plot)


if __name__ == '__main__':
    main()
