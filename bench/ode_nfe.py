"""Benchmark: NFE and time of the likelihood ODE against its accuracy, per solver and per
integration variable (not a test).

For each solver (``ode_solver.SOLVERS``), each integration variable
(``sde_lib.ODE_TIMES``: t as in the original code, log σ̃ or σ̃ with σ̃ = σ/α) and each
tolerance rtol = atol, computes the bits/dim of the same images with the same Hutchinson
probes and reports the mean NFE per image, the wall time per batch and the largest and
mean |Δ bits/dim| against a reference solve (Dopri5 in t at rtol = atol = 1e-9, float64).
The last table gives, per solver and variable, the loosest tolerance of the grid with
max |Δ bpd| ≤ ``--target`` and its NFE.

Models:
- ``digits``: a trained snapshot (``--workdir``, ``--config``; e.g. the quick start's
  ``runs/digits_lw_is`` with ``configs/vp/digits_lw_is.py``) on the first ``--batch``
  DIGITS test images, uniformly dequantized with fixed noise;
- ``small``: the untrained small DDPM++ of ``bench/likelihood_speed.py`` on random
  32×32×3 images (``--init_scale``; 0 as in the paper makes its output ≈ 0).

On 2 CPU cores the reference takes ≈ 6 min and the whole default grid over an hour
(Dopri8 most of it; ``--methods dopri5,bosh3`` for a quicker one).

    python bench/ode_nfe.py --model digits --workdir runs/digits_lw_is
    python bench/ode_nfe.py --model small --batch 4 --tols 1e-3,1e-5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from likelihood_speed import small_score_fn  # noqa: E402  (bench/ is on sys.path)
from snapshot import load_snapshot  # noqa: E402

import datasets  # noqa: E402
import likelihood  # noqa: E402
import ode_solver  # noqa: E402
import sde_lib  # noqa: E402
from models import utils as mutils  # noqa: E402

REFERENCE = ('dopri5', 't', 1e-9)


def digits_problem(args) -> Tuple[sde_lib.SDE, Callable, jax.Array, int, int, float]:
    """(sde, score_fn_of(dtype), scaled images, dim, num_bins, scale) of a trained
    snapshot; the score function computes in ``dtype`` (float64 for the reference)."""
    snap = load_snapshot(args.config, args.workdir, args.ckpt)
    spec = datasets.DataSpec.from_config(snap.config)
    batch = next(iter(datasets.get_eval_iterator(snap.config, 'test')))
    levels = batch.x[: args.batch]
    u = jax.random.uniform(jax.random.PRNGKey(7), levels.shape)
    x = spec.scaler(spec.dequantize(jnp.asarray(levels), u))

    def score_fn_of(dtype):
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), snap.ema_params)
        return mutils.get_score_fn(
            snap.sde,
            snap.model,
            {'params': params},
            train=False,
            continuous=snap.config.training.continuous,
        )

    return snap.sde, score_fn_of, x, spec.dim, spec.num_bins, spec.scale


def small_problem(args) -> Tuple[sde_lib.SDE, Callable, jax.Array, int, int, float]:
    """The same for the untrained small DDPM++ (float32 parameters) on random images."""
    sde, score_fn = small_score_fn(args.init_scale)
    x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, 32, 32, 3)) * 2 - 1
    return sde, lambda dtype: score_fn, x, int(np.prod(x.shape[1:])), 256, 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', choices=('digits', 'small'), default='digits')
    parser.add_argument('--workdir', default='runs/digits_lw_is')
    parser.add_argument('--config', default='configs/vp/digits_lw_is.py')
    parser.add_argument('--ckpt', type=int, default=-1, help='snapshot (-1: the newest)')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--init_scale', type=float, default=0.0)
    parser.add_argument('--methods', default='dopri5,tsit5,bosh3,dopri8')
    parser.add_argument('--times', default=','.join(sde_lib.ODE_TIMES))
    parser.add_argument('--tols', default='1e-3,1e-4,1e-5')
    parser.add_argument('--target', type=float, default=1e-3, help='max |Δ bpd| wanted')
    parser.add_argument('--eps', type=float, default=1e-5)
    args = parser.parse_args()
    jax.config.update('jax_enable_x64', True)

    problem = digits_problem if args.model == 'digits' else small_problem
    sde, score_fn_of, x, dim, bins, scale = problem(args)

    keys = likelihood.per_example_keys(jax.random.PRNGKey(2), x.shape[0])

    def run(method: str, ode_time: str, tol: float, dtype) -> Dict[str, Any]:
        fn = likelihood.get_nll_fn(
            sde,
            score_fn_of(dtype),
            rtol=tol,
            atol=tol,
            eps=args.eps,
            method=method,
            ode_time=ode_time,
        )
        xs = jnp.asarray(x, dtype)
        jax.block_until_ready(fn(keys, xs))  # compile
        start = time.perf_counter()
        nll, _, nfe = jax.block_until_ready(fn(keys, xs))
        seconds = time.perf_counter() - start
        bpd = np.asarray(likelihood.bpd(nll, dim, bins, scale), np.float64)
        return {'bpd': bpd, 'nfe': float(np.mean(nfe)), 's': seconds}

    ref = run(*REFERENCE, jnp.float64)
    print(
        f'reference {REFERENCE}: bpd {ref["bpd"].mean():.5f}, NFE {ref["nfe"]:.0f}, '
        f'{x.shape[0]} images'
    )
    print(
        f'{"solver":>7} {"time var":>9} {"tol":>6} {"NFE":>6} {"s/batch":>8} '
        f'{"max|Δbpd|":>10} {"mean|Δbpd|":>11}'
    )
    best = {}
    for method in args.methods.split(','):
        assert method in ode_solver.SOLVERS, method
        for ode_time in args.times.split(','):
            for tol in sorted((float(t) for t in args.tols.split(',')), reverse=True):
                r = run(method, ode_time, tol, jnp.float32)
                err = np.abs(r['bpd'] - ref['bpd'])
                print(
                    f'{method:>7} {ode_time:>9} {tol:6.0e} {r["nfe"]:6.1f} {r["s"]:8.2f} '
                    f'{err.max():10.2e} {err.mean():11.2e}',
                    flush=True,
                )
                if err.max() <= args.target and (method, ode_time) not in best:
                    best[(method, ode_time)] = (tol, r['nfe'], r['s'])
    print(f'\nloosest tolerance with max |Δbpd| ≤ {args.target:g}:')
    for (method, ode_time), (tol, nfe, s) in sorted(best.items(), key=lambda kv: kv[1][1]):
        print(f'{method:>7} {ode_time:>9}: tol {tol:.0e}, NFE {nfe:.1f}, {s:.2f} s/batch')


if __name__ == '__main__':
    main()
