"""Benchmark: samples/s and sample quality against NFE for the PC and ODE samplers of a
trained DIGITS model (not a test).

Every sampler of the grid draws ``--num`` samples from the same snapshot (in batches of
``--batch``, one compile per sampler first); reported: NFE per sample, wall time, samples/s
and FD_digits (Fréchet distance in the features of the digits classifier, against the
training digits, as ``--mode eval`` computes it), plus FD_digits of ``--num`` training and
test digits for scale (FD of a finite sample is biased upwards).

PC samplers take N = ``model.num_scales`` steps (1 score evaluation each, 2 with the
Langevin corrector); the ODE sampler is adaptive (Dopri5, in t or σ̃ = σ/α).

    python bench/sampling_speed.py --workdir runs/digits_lw_is \
        [--config configs/vp/digits_lw_is.py] [--num 512]
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
from snapshot import load_snapshot  # noqa: E402

import datasets  # noqa: E402
import digits_classifier  # noqa: E402, F401  (registers the feature network 'digits_mlp')
import evaluation  # noqa: E402
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


def draw(snap, fields: Dict[str, Any], num_scales: int, num: int, batch: int):
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
        x, nfe = jax.block_until_ready(sampler(jax.random.PRNGKey(i), score_fn))
        out.append(np.asarray(x))
        nfes.append(int(nfe))
    seconds = time.perf_counter() - start
    return np.clip(np.concatenate(out)[:num], 0.0, 1.0), float(np.mean(nfes)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default='runs/digits_lw_is')
    parser.add_argument('--config', default='configs/vp/digits_lw_is.py')
    parser.add_argument('--ckpt', type=int, default=-1, help='snapshot (-1: the newest)')
    parser.add_argument('--num', type=int, default=512)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--only', default='', help='comma-separated names of the grid')
    args = parser.parse_args()
    snap = load_snapshot(args.config, args.workdir, args.ckpt)

    def fd(images: np.ndarray) -> float:
        return evaluation.sample_quality(images, args.workdir, snap.config)['fid']

    for split in ('train', 'test'):
        levels = datasets.get_shard(snap.config, split, process_index=0, process_count=1).data[
            : args.num
        ]
        images = datasets.to_unit_interval(levels, int(snap.config.data.num_bins))
        print(f'{len(levels)} {split} digits: FD_digits {fd(images):.2f}', flush=True)
    print(f'{"sampler":>12} {"NFE":>7} {"seconds":>8} {"samples/s":>10} {"FD_digits":>10}')
    wanted = set(filter(None, args.only.split(',')))
    for name, fields, num_scales in GRID:
        if wanted and name not in wanted:
            continue
        x, nfe, seconds = draw(snap, fields, num_scales, args.num, args.batch)
        print(
            f'{name:>12} {nfe:7.0f} {seconds:8.1f} {args.num / seconds:10.2f} {fd(x):10.2f}',
            flush=True,
        )


if __name__ == '__main__':
    main()
