"""Trains a tiny config in its own process and dumps the result, for test_distributed.py.

    python tests/distributed_worker.py --kind npz --workdir W --out result.npz \
        [--overrides '{"data.path": "vectors.npz"}'] [--devices 4] \
        [--coordinator 127.0.0.1:PORT --num_processes 2 --process_id 0]

Writes ``result.npz`` with the final parameters (``param/<path>``), the logged training
losses (``loss``, one per log line), their steps (``steps``), and this process's index
and device count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument('--kind', default='npz')
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--out', required=True)
    parser.add_argument('--overrides', default='{}')
    parser.add_argument('--devices', type=int, default=1)
    parser.add_argument('--coordinator', default=None)
    parser.add_argument('--num_processes', type=int, default=1)
    parser.add_argument('--process_id', type=int, default=0)
    parser.add_argument('--timeout', type=int, default=60)
    return parser.parse_args()


def main() -> None:
    args = _parse()
    # Device count and platform must be fixed before JAX is imported.
    os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={args.devices}'
    os.environ['JAX_PLATFORMS'] = 'cpu'
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax
    import numpy as np

    import train_utils  # puts the repository on sys.path
    import trainer
    from validation import prepare_config

    if args.coordinator:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=args.timeout,
        )
    config = train_utils.load_config(args.kind, json.loads(args.overrides))
    loop = trainer.Trainer(prepare_config(config), args.workdir)
    state = loop.run()
    logged = [h for h in loop.history if 'train/loss' in h]
    params = {f'param/{k}': v for k, v in train_utils.flat_params(state.params).items()}
    np.savez(
        args.out,
        loss=np.array([h['train/loss'] for h in logged]),
        steps=np.array([h['step'] for h in logged]),
        process_index=jax.process_index(),
        device_count=jax.device_count(),
        **params,
    )


if __name__ == '__main__':
    main()
