"""Benchmark: exact likelihood on device (diffrax) vs SciPy RK45 on the host (not a test).

Times ``likelihood.get_nll_fn`` for a small DDPM++ (VP, continuous) score network on a
batch of random 32×32×3 images, with the two solvers of the same probability-flow ODE:

- ``dopri5``: the whole solve is one jitted XLA computation, vmapped per example (each
  example takes its own adaptive steps);
- ``scipy_rk45``: ``scipy.integrate.solve_ivp(RK45)`` over the flattened batch, one
  jitted value-and-divergence call per evaluation (the original score_flow loop).

Both use rtol = atol = 1e-5, ε = 1e-5, the same Rademacher probes and the same fused
value + divergence.  Reported: median wall time over ``--runs`` alternated calls after a
compiling warm-up, NFE, and the largest bits/dim difference between the two.

    python bench/likelihood_speed.py [--batch 8] [--runs 3] [--init_scale 0]

``small`` network: nf 32, ch_mult (1,2,2), 1 res block, attention at 16; its divergence
is taken in forward mode (one jvp per evaluation, no custom_vjp layer in the models).
With the paper's ``init_scale=0`` an untrained DDPM++ outputs ≈ 0.
Timings on a shared machine vary 10–25 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import likelihood  # noqa: E402
import sde_lib  # noqa: E402
from configs import presets  # noqa: E402
from configs.default_cifar10_configs import get_default_configs  # noqa: E402
from models import utils as mutils  # noqa: E402

SMALL = dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,))


def small_score_fn(init_scale: float, seed: int = 0) -> Tuple[Callable, Any]:
    """Score function of a randomly initialised small DDPM++ (VP SDE) and its config."""
    config = get_default_configs()
    config.training.sde = 'vpsde'
    config.training.continuous = True
    config.data.centered = True
    presets.ddpmpp_style(config)
    config.model.update(SMALL)
    config.model.init_scale = init_scale
    sde = sde_lib.get_sde(config)
    model, variables = mutils.init_model(jax.random.PRNGKey(seed), config)
    score_fn = mutils.get_score_fn(sde, model, variables, train=False, continuous=True)
    print(
        f'small DDPM++: {mutils.param_count(variables) / 1e6:.2f}M parameters, '
        f'init_scale={init_scale}'
    )
    return sde, score_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--init_scale', type=float, default=0.0)
    parser.add_argument('--rtol', type=float, default=1e-5, help='rtol = atol')
    args = parser.parse_args()

    sde, score_fn = small_score_fn(args.init_scale)
    x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, 32, 32, 3)) * 2 - 1
    keys = likelihood.per_example_keys(jax.random.PRNGKey(2), args.batch)
    dim = int(np.prod(x.shape[1:]))
    reverse = likelihood._has_custom_vjp(lambda y: score_fn(y, jnp.full((1,), 0.5)), x[:1])
    print('divergence by', 'reverse mode (vjp)' if reverse else 'forward mode (jvp)')
    methods = ('dopri5', 'scipy_rk45')
    fns = {
        m: likelihood.get_nll_fn(sde, score_fn, rtol=args.rtol, atol=args.rtol, eps=1e-5, method=m)
        for m in methods
    }
    outputs, times = {}, {m: [] for m in methods}
    for m in methods:  # warm-up: compiles
        start = time.perf_counter()
        outputs[m] = jax.block_until_ready(fns[m](keys, x))
        print(
            f'{m:>10}: first call (compile + run) {time.perf_counter() - start:6.1f} s, '
            f'NFE {np.asarray(outputs[m][2]).tolist()}',
            flush=True,
        )
    for _ in range(args.runs):  # alternated, so machine load affects both alike
        for m in methods:
            start = time.perf_counter()
            outputs[m] = jax.block_until_ready(fns[m](keys, x))
            times[m].append(time.perf_counter() - start)
    for m in methods:
        nll, _, nfe = (np.asarray(a) for a in outputs[m])
        print(
            f'{m:>10}: {statistics.median(times[m]):7.2f} s median of {args.runs} '
            f'{[round(t, 2) for t in times[m]]}, NFE mean {nfe.mean():.1f} max {nfe.max()}, '
            f'bpd {likelihood.bpd(nll, dim, scale=2.0).mean():.4f}'
        )
    speedup = statistics.median(times['scipy_rk45']) / statistics.median(times['dopri5'])
    diff = np.abs(np.asarray(outputs['dopri5'][0]) - np.asarray(outputs['scipy_rk45'][0]))
    print(
        f'speed-up device / host: {speedup:.2f}x; max |delta bpd| between solvers '
        f'{diff.max() / (dim * np.log(2)):.2e}'
    )


if __name__ == '__main__':
    main()
