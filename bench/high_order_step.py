"""Benchmark: the train step of Lu et al.'s high-order DSM against first order (not a test).

For each setup (the DIGITS quick start's DDPM++ at batch 128, TOY's MLP at batch 512, both
with their configs' λ = g² + importance-sampled t), the jitted train step
(``losses.get_step_fn``: loss, gradient, Adam and EMA) of ``training.score_matching_order``
1, 2 and 3 is compiled once and timed in alternation, ``--rounds`` rounds of ``--iters``
steps each, so that the machine's load changes hit every order alike. Reports the median
seconds per step, the ratio to order 1 (median of the per-round ratios) and the compile
time, and writes them as JSON with ``--out``.

    python bench/high_order_step.py [--setups digits,toy] [--rounds 5] [--iters 5] \
        [--out bench_high_order.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import datasets  # noqa: E402
import losses  # noqa: E402
import sde_lib  # noqa: E402
from configs.vp import digits_lw_is, toy_lw_is  # noqa: E402
from devices import get_mesh  # noqa: E402
from train_state import create_train_state  # noqa: E402
from validation import prepare_config  # noqa: E402

SETUPS = {'digits': digits_lw_is.get_config, 'toy': toy_lw_is.get_config}
ORDERS = (1, 2, 3)


def _steps(name: str) -> tuple[Dict[int, Callable[[], Any]], Dict[int, float]]:
    """One compiled train step per order on one batch of the setup's training data, as a
    function running one step (blocking), and the compile times."""
    config = prepare_config(SETUPS[name]())
    sde = sde_lib.get_sde(config)
    model, optimizer, state = create_train_state(config, get_mesh())
    batch = datasets.get_data_scaler(config)(next(datasets.get_train_iterator(config))[0])
    runs, compile_s = {}, {}
    for order in ORDERS:
        config.training.score_matching_order = order
        options = losses.LossOptions.from_config(config)
        step_fn = losses.get_step_fn(sde, model, optimizer, True, options, 0.999)
        start = time.perf_counter()
        compiled = jax.jit(step_fn).lower(state, batch).compile()
        compile_s[order] = time.perf_counter() - start
        holder = {'state': compiled(state, batch)[0]}  # warm-up

        def run(compiled=compiled, holder=holder):
            holder['state'], metrics = compiled(holder['state'], batch)
            jax.block_until_ready(metrics['loss'])

        runs[order] = run
    return runs, compile_s


def _time(run: Callable[[], Any], iters: int) -> float:
    """Median seconds of ``iters`` calls of ``run``."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, rounds: int, iters: int) -> Dict[str, Any]:
    """Seconds per step of every order, alternated over ``rounds``; ratios to order 1."""
    runs, compile_s = _steps(name)
    per_round: List[Dict[int, float]] = []
    for _ in range(rounds):
        per_round.append({order: _time(runs[order], iters) for order in ORDERS})
    seconds = {o: statistics.median(r[o] for r in per_round) for o in ORDERS}
    ratios = {o: statistics.median(r[o] / r[1] for r in per_round) for o in ORDERS}
    spread = {o: float(np.std([r[o] / r[1] for r in per_round])) for o in ORDERS}
    return {
        'seconds_per_step': seconds,
        'ratio_to_order_1': ratios,
        'ratio_spread_over_rounds': spread,
        'compile_seconds': compile_s,
        'rounds': rounds,
        'iters': iters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--setups', default='digits,toy')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    results = {'device': str(jax.devices()[0]), 'cpu_count': os.cpu_count()}
    for name in args.setups.split(','):
        results[name] = out = bench(name, args.rounds, args.iters)
        for order in ORDERS:
            print(
                f'{name} order {order}: {out["seconds_per_step"][order]:.3f} s/step, '
                f'×{out["ratio_to_order_1"][order]:.2f} of order 1 '
                f'(± {out["ratio_spread_over_rounds"][order]:.2f} over rounds), '
                f'compiled in {out["compile_seconds"][order]:.0f} s',
                flush=True,
            )
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
