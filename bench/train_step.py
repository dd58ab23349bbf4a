"""Benchmark: images/second of one jitted DDPM++ training step (not a test).

One step = forward + backward + Adam update of a VP-SDE denoising score matching loss
with likelihood weighting (``losses.get_step_fn``), on random 32×32×3 images.  Reports:

- images/s (batch / median step time over ``--iters`` steps after a warm-up step),
- forward GFLOPs per image and train-step GFLOPs (XLA's compiled ``cost_analysis``),
- the step's achieved GFLOP/s as a fraction of this CPU's measured f32 matmul rate.
  The matmul rate is re-measured between steps (alternated), and the fraction is the
  median of the per-pair ratios, so it stays meaningful on a shared, loaded machine.

    python bench/train_step.py [--which small,paper] [--iters 10] \
        [--precisions float32,bfloat16]

With several ``--precisions`` (``config.training.precision``: bfloat16 is mixed precision)
each setup is timed in each, and the images/s ratio to the first is printed.

``small``: nf 32, ch_mult (1,2,2), 1 res block, attention at 16, batch 32.
``paper``: vp/cifar10_ddpmpp_continuous's network (61.8M parameters), batch 8.
Timings on a shared machine vary 10–25 %: compare medians of alternated runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

import losses  # noqa: E402
import sde_lib  # noqa: E402
import train_state  # noqa: E402
from models import utils as mutils  # noqa: E402

SETUPS = {
    'small': (dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,)), 32),
    'paper': (dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,)), 8),
}


def make_config(**model: Any) -> ml_collections.ConfigDict:
    """DDPM++ cont. (VP) config with the given network overrides."""
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict({'image_size': 32, 'num_channels': 3, 'centered': True})
    cfg.training = ml_collections.ConfigDict({'continuous': True})
    cfg.model = ml_collections.ConfigDict(
        dict(
            name='ncsnpp',
            resblock_type='biggan',
            fir=False,
            progressive='none',
            progressive_input='none',
            embedding_type='positional',
            skip_rescale=True,
            conditional=True,
            dropout=0.1,
            init_scale=0.0,
            scale_by_sigma=False,
            beta_min=0.1,
            beta_max=20.0,
            num_scales=1000,
        )
    )
    cfg.model.update(model)
    cfg.optim = ml_collections.ConfigDict(
        dict(
            optimizer='Adam',
            lr=2e-4,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            warmup=5000,
            grad_clip=1.0,
        )
    )
    return cfg


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one ``fn()`` call, blocking on its result."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def matmul_probe(n: int = 2048) -> Callable[[], float]:
    """A function measuring this CPU's f32 matmul rate (GFLOP/s) through XLA, 2n³ flops
    per n×n product (median of 3)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    jax.block_until_ready(mm(a))
    return lambda: 2 * n**3 / statistics.median(seconds(lambda: mm(a)) for _ in range(3)) / 1e9


def flops(compiled: Any) -> float:
    """Total flops from XLA's cost analysis of a compiled function (NaN if absent)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', float('nan'))) if cost else float('nan')


class Setup(NamedTuple):
    """One benchmark setup: the network, its train state, the VP λ = g² DSM loss and
    train step (``losses``), and a batch of random images with labels for the forward."""

    model: Any
    variables: Dict[str, Any]
    state: Any
    loss_fn: Callable[..., Any]
    step_fn: Callable[..., Any]
    batch: jax.Array
    labels: jax.Array


def build(which: str, precision: str = 'float32', batch_size: Optional[int] = None) -> Setup:
    """The setup ``which`` of ``SETUPS`` (its batch size unless ``batch_size`` is given)."""
    model_kw, default_batch = SETUPS[which]
    batch_size = batch_size or default_batch
    config = make_config(**model_kw)
    model, variables = mutils.init_model(jax.random.PRNGKey(0), config)
    optimizer = train_state.get_optimizer(config)
    state = train_state.init_train_state(jax.random.PRNGKey(1), variables['params'], optimizer)
    sde = sde_lib.VPSDE()
    options = dict(reduce_mean=True, continuous=True, likelihood_weighting=True)
    loss_fn = losses.get_sde_loss_fn(sde, model, True, **options, precision=precision)
    step_fn = losses.get_step_fn(
        sde, model, optimizer, True, ema_rate=0.9999, **options, precision=precision
    )
    batch = jax.random.uniform(jax.random.PRNGKey(2), (batch_size, 32, 32, 3)) * 2 - 1
    labels = jnp.full((batch_size,), 500.0)
    return Setup(model, variables, state, loss_fn, step_fn, batch, labels)


def bench(which: str, iters: int, probe: Callable[[], float], precision: str) -> Dict[str, float]:
    """Builds, compiles and times one setup; returns its measurements."""
    model, variables, state, _, step_fn, batch, labels = build(which, precision)
    batch_size = len(batch)

    start = time.perf_counter()
    step = jax.jit(step_fn, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    forward = (
        jax.jit(lambda v, x, y: model.apply(v, x, y, train=False))
        .lower(variables, batch, labels)
        .compile()
    )

    holder = {'state': step(state, batch)[0]}  # warm-up step

    def one_step():
        holder['state'], metrics = step(holder['state'], batch)
        return metrics['loss']

    step_gflop = flops(step) / 1e9
    times, rates, fractions = [], [], []
    for _ in range(iters):  # alternate matmul and step
        rates.append(probe())
        times.append(seconds(one_step))
        fractions.append(step_gflop / times[-1] / rates[-1])
    step_s = statistics.median(times)
    return {
        'params': mutils.param_count(variables),
        'batch': batch_size,
        'compile_s': compile_s,
        'step_s': step_s,
        'img_per_s': batch_size / step_s,
        'fwd_gflop_per_img': flops(forward) / batch_size / 1e9,
        'step_gflop': step_gflop,
        'matmul_gflops': statistics.median(rates),
        'fraction': statistics.median(fractions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--which', default='small,paper')
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--precisions', default='float32', help=', '.join(mutils.PRECISIONS))
    args = parser.parse_args()
    probe = matmul_probe()
    print(f'device: {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs', flush=True)
    for which in args.which.split(','):
        first = None
        for precision in args.precisions.split(','):
            r = bench(which, args.iters, probe, precision)
            first = first or r
            report(which, precision, r, r['img_per_s'] / first['img_per_s'])


def report(which: str, precision: str, r: Dict[str, float], ratio: float) -> None:
    print(
        f'{which} {precision}: {r["params"]:,} params, batch {r["batch"]}: '
        f'{r["img_per_s"]:.2f} img/s ({r["step_s"] * 1e3:.0f} ms/step, '
        f'compile {r["compile_s"]:.0f} s); forward {r["fwd_gflop_per_img"]:.2f} '
        f'GFLOP/img, step {r["step_gflop"]:.1f} GFLOP → '
        f'{r["step_gflop"] / r["step_s"]:.0f} GFLOP/s; f32 matmul (2048²) '
        f'{r["matmul_gflops"]:.0f} GFLOP/s; step/matmul rate {r["fraction"]:.0%}; '
        f'{ratio:.2f}x the first precision',
        flush=True,
    )


if __name__ == '__main__':
    main()
