"""Measurement: how far the bfloat16 score of a trained model is from its float32 score
(``training.precision='bfloat16'`` trains with the first, evaluation and sampling use the
second), by noise level (not a test).

For each time t, on the same test images x₀ (dequantized with fixed noise, scaled) and the
same z: x_t = α(t) x₀ + σ(t) z, and the relative RMS

    e(t) = ‖s_bf16(x_t, t) − s_f32(x_t, t)‖ / ‖s_f32(x_t, t)‖   (over the whole batch),

with s_bf16 the same parameters run through ``models.utils.get_score_fn(...,
precision='bfloat16')``, and beside it the part of e that rounding x_t alone to bfloat16
causes, ‖s_f32(bf16(x_t), t) − s_f32(x_t, t)‖ / ‖s_f32(x_t, t)‖. Also reported: how
many distinct bfloat16 outputs the network gives on ``--grid`` times in [ε, T] whose
float32 labels are all distinct (a network that receives its labels rounded to bfloat16
gives far fewer).

    python bench/precision_accuracy.py --workdir runs/digits_lw_is \
        [--config configs/vp/digits_lw_is.py] [--num 64] [--times 1e-3,1e-2,0.1,0.5,1]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import datasets  # noqa: E402
import sde_lib  # noqa: E402
from bench.snapshot import load_snapshot  # noqa: E402
from models import utils as mutils  # noqa: E402

TIMES = (1e-3, 1e-2, 0.1, 0.5, 1.0)


def eval_images(config: Any, num: int) -> jax.Array:
    """The first ``num`` test examples, dequantized with fixed noise and scaled."""
    spec = datasets.DataSpec.from_config(config)
    batch = next(iter(datasets.get_eval_iterator(config, 'test')))
    levels = jnp.asarray(batch.x[:num])
    if datasets.is_continuous(config):
        return spec.scaler(levels)
    u = jax.random.uniform(jax.random.PRNGKey(7), levels.shape)
    return spec.scaler(spec.dequantize(levels, u))


def _score_fns(sde: sde_lib.SDE, model: Any, params: Any, continuous: bool):
    return {
        p: jax.jit(
            lambda x, t, p=p: mutils.get_score_fn(
                sde, model, {'params': params}, continuous=continuous, precision=p
            )(x, t)
        )
        for p in mutils.PRECISIONS
    }


def _relative(got: jax.Array, ref: jax.Array) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def score_errors(
    sde: sde_lib.SDE,
    model: Any,
    params: Any,
    x0: jax.Array,
    times: Sequence[float] = TIMES,
    continuous: bool = True,
    input_only: bool = False,
) -> Dict[float, float]:
    """{t: e(t)}, the relative RMS of the bfloat16 score against the float32 one at x_t;
    with ``input_only`` that of the float32 score at bf16(x_t) instead."""
    fns = _score_fns(sde, model, params, continuous)
    z = jax.random.normal(jax.random.PRNGKey(11), x0.shape)
    errors = {}
    for t in times:
        tt = jnp.full(x0.shape[:1], t, jnp.float32)
        mean, std = sde.marginal_prob(x0, tt)
        xt = mean + sde_lib.batch_mul(std, z)
        ref = fns['float32'](xt, tt)
        if input_only:
            got = fns['float32'](xt.astype(jnp.bfloat16).astype(jnp.float32), tt)
        else:
            got = fns['bfloat16'](xt, tt)
        errors[float(t)] = _relative(got, ref)
    return errors


def distinct_outputs(
    sde: sde_lib.SDE, model: Any, params: Any, x: jax.Array, grid: int, eps: float
) -> Dict[str, int]:
    """Distinct float32 labels and distinct bfloat16 network outputs over ``grid`` times
    in [ε, T], one image repeated (so only t changes)."""
    t = jnp.linspace(eps, sde.T, grid)
    labels, _ = sde.network_inputs(t, True)
    fn = mutils.get_model_fn(model, {'params': params}, precision='bfloat16')
    out = np.asarray(jax.jit(fn)(jnp.repeat(x[:1], grid, axis=0), labels))
    rows = {out[i].tobytes() for i in range(grid)}
    return {'labels': len(np.unique(np.asarray(labels))), 'outputs': len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--config', default='configs/vp/digits_lw_is.py')
    parser.add_argument('--ckpt', type=int, default=-1)
    parser.add_argument('--num', type=int, default=64)
    parser.add_argument('--times', default=','.join(str(t) for t in TIMES))
    parser.add_argument('--grid', type=int, default=2000)
    args = parser.parse_args()
    snap = load_snapshot(args.config, args.workdir, args.ckpt)
    x0 = eval_images(snap.config, args.num)
    times = [float(t) for t in args.times.split(',')]
    continuous = bool(snap.config.training.continuous)
    args_ = (snap.sde, snap.model, snap.ema_params, x0, times, continuous)
    errors, rounding = score_errors(*args_), score_errors(*args_, input_only=True)
    for t, e in errors.items():
        print(
            f't = {t:g}: relative RMS of the bfloat16 score {e:.2e} '
            f'(x_t rounded to bfloat16 alone: {rounding[t]:.2e})'
        )
    if continuous:
        eps = float(snap.config.training.eps)
        counts = distinct_outputs(snap.sde, snap.model, snap.ema_params, x0, args.grid, eps)
        print(
            f'{args.grid} times in [{eps:g}, {snap.sde.T:g}]: {counts["labels"]} distinct '
            f'float32 labels, {counts["outputs"]} distinct bfloat16 outputs'
        )


if __name__ == '__main__':
    main()
