"""Data parallelism: results depend on the global batch only, not on devices or hosts.

- 4 devices (XLA host-platform devices, in a subprocess) vs 1 device: the same loss
  trajectory and final parameters within float32 reduction-order tolerance.
- Two processes joined by ``jax.distributed.initialize`` on 127.0.0.1 train one model
  (each feeding its half of the global batch) and end with identical parameters.
Every subprocess is bounded by a timeout (a process whose peer never starts would hang).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import train_utils
import trainer
from devices import get_mesh
from train_state import create_train_state
from validation import prepare_config

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'distributed_worker.py')
# Two steps per jitted call, a log line per call: a 10-point loss trajectory.
OVERRIDES = {
    'training.n_jitted_steps': 2,
    'training.log_freq': 2,
    'training.eval_freq': 10,
    'training.snapshot_freq': 20,
    'training.snapshot_freq_for_preemption': 10,
    'training.batch_size': 32,
}
TIMEOUT_S = 240


def _overrides(tmp_path) -> dict:
    """OVERRIDES on NPZ vectors written once into ``tmp_path``."""
    path = str(tmp_path / 'vectors.npz')
    if not os.path.exists(path):
        train_utils.write_vector_npz(path)
    return {**OVERRIDES, 'data.path': path}


def _worker(
    tmp_path,
    name: str,
    devices: int = 1,
    coordinator: str | None = None,
    num_processes: int = 1,
    process_id: int = 0,
) -> tuple[subprocess.Popen, str]:
    """Starts a worker training in ``tmp_path/work``; its result goes to ``name.npz``."""
    out = str(tmp_path / f'{name}.npz')
    cmd = [
        sys.executable,
        WORKER,
        '--kind',
        'npz',
        '--workdir',
        str(tmp_path / 'work'),
        '--out',
        out,
        '--overrides',
        json.dumps(_overrides(tmp_path)),
        '--devices',
        str(devices),
    ]
    if coordinator:
        cmd += [
            '--coordinator',
            coordinator,
            '--num_processes',
            str(num_processes),
            '--process_id',
            str(process_id),
            '--timeout',
            '60',
        ]
    proc = subprocess.Popen(
        cmd,
        env=train_utils.subprocess_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, out


def _finish(proc: subprocess.Popen, out: str) -> dict:
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f'worker timed out:\n{log[-3000:]}')
    assert proc.returncode == 0, log[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _params(result: dict) -> dict:
    return {k: v for k, v in result.items() if k.startswith('param/')}


def test_four_devices_match_one_device(tmp_path):
    proc, out = _worker(tmp_path, 'four', devices=4)
    config = train_utils.load_config('npz', _overrides(tmp_path))
    loop = trainer.Trainer(prepare_config(config), str(tmp_path / 'one'))
    state = loop.run()
    four = _finish(proc, out)
    assert int(four['device_count']) == 4
    one_loss = np.array([h['train/loss'] for h in loop.history if 'train/loss' in h])
    assert len(one_loss) == 10 and np.all(np.isfinite(one_loss))
    np.testing.assert_allclose(four['loss'], one_loss, rtol=2e-5, atol=1e-6)
    one = {f'param/{k}': v for k, v in train_utils.flat_params(state.params).items()}
    train_utils.assert_trees_close(_params(four), one, rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_end_with_identical_parameters(tmp_path):
    coordinator = f'127.0.0.1:{_free_port()}'
    # Both share one work directory, as the hosts of a pod share a bucket.
    workers = [
        _worker(
            tmp_path, f'p{i}', devices=1, coordinator=coordinator, num_processes=2, process_id=i
        )
        for i in range(2)
    ]
    results = [_finish(*w) for w in workers]
    assert [int(r['process_index']) for r in results] == [0, 1]
    assert all(int(r['device_count']) == 2 for r in results)
    train_utils.assert_trees_close(_params(results[0]), _params(results[1]))
    np.testing.assert_array_equal(results[0]['loss'], results[1]['loss'])
    assert np.all(np.isfinite(results[0]['loss']))
    # The run trained: parameters moved away from their initialisation.
    config = train_utils.load_config('npz', _overrides(tmp_path))
    _, _, init = create_train_state(prepare_config(config), get_mesh())
    moved = [
        np.max(np.abs(results[0][f'param/{k}'] - v))
        for k, v in train_utils.flat_params(init.params).items()
    ]
    assert max(moved) > 1e-3
