"""High-order DSM in training: fine-tuning by resume, the scan, devices.

- Fine-tuning is the ordinary resume: a run trained with order 1 and resumed with order 2
  records the change (step, old -> new) in config.json; stopping the fine-tuning half way
  and resuming it gives the same parameters as running it through.
- The lax.scan chunk (GPU / TPU) and the per-step dispatch (CPU) agree for order 3.
- Two devices and one give the same order-3 trajectory (subprocesses, as
  tests/test_distributed.py).
Each compiles high-order train steps (1–2 min on 2 busy cores): all are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from test_distributed import WORKER, _finish, _overrides, _params

import datasets
import losses
import run_lib
import sde_lib
import train_utils
import trainer
from devices import get_mesh, to_global
from train_state import create_train_state
from validation import prepare_config


def _npz_config(tmp_path, **overrides):
    path = str(tmp_path / 'vectors.npz')
    if not os.path.exists(path):
        train_utils.write_vector_npz(path)
    return train_utils.load_config('npz', {'data.path': path, **overrides})


def _changes(workdir):
    with open(os.path.join(workdir, 'config.json')) as f:
        return json.load(f)['training']['objective_changes']


@pytest.mark.slow
def test_fine_tuning_is_a_recorded_resume(tmp_path):
    config = _npz_config(tmp_path, **{'training.n_iters': 10})
    straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
    for workdir in (straight, stopped):
        run_lib.train(config, workdir)
        assert _changes(workdir) == []
    config.training.score_matching_order = 2
    config.training.second_order_weight = 0.5
    config.training.n_iters = 20
    through = run_lib.train(config, straight)
    config.training.n_iters = 15
    run_lib.train(config, stopped)
    config.training.n_iters = 20
    resumed = run_lib.train(config, stopped)
    entry = 'step 10: score_matching_order 1 -> 2, second_order_weight 1.0 -> 0.5'
    assert _changes(straight) == _changes(stopped) == [entry]
    train_utils.assert_trees_close(
        train_utils.flat_params(resumed), train_utils.flat_params(through)
    )
    assert int(resumed.step) == 20


@pytest.mark.extended
@pytest.mark.slow
def test_scan_chunk_equals_per_step_dispatch(tmp_path):
    config = prepare_config(_npz_config(tmp_path))
    mesh = get_mesh()
    model, optimizer, state = create_train_state(config, mesh)
    options = losses.LossOptions(
        likelihood_weighting=True, importance_weighting=True, score_matching_order=3
    )
    step_fn = losses.get_step_fn(sde_lib.get_sde(config), model, optimizer, True, options)
    batch = next(datasets.get_train_iterator(config))
    results = []
    for use_scan in (True, False):
        chunk = trainer.get_train_chunk_fn(step_fn, lambda x: x, mesh, use_scan=use_scan)
        start = jax.tree.map(lambda a: a.copy(), state)  # the chunk donates its input
        sums = jax.jit(trainer.new_log_sums)()
        new_state, sums = chunk(start, sums, to_global(batch, mesh, PartitionSpec(None, 'data')))
        results.append((train_utils.flat_params(new_state), jax.device_get(sums)))
    (scan_state, scan_sums), (loop_state, loop_sums) = results
    assert np.isfinite(scan_sums['loss'])
    np.testing.assert_allclose(scan_sums['loss'], loop_sums['loss'], rtol=1e-5)
    train_utils.assert_trees_close(scan_state, loop_state, rtol=1e-4, atol=1e-6)


@pytest.mark.extended
@pytest.mark.slow
def test_two_devices_match_one_device(tmp_path):
    """Order 3 on 2 devices (a subprocess of tests/distributed_worker.py) and on 1."""
    overrides = {**_overrides(tmp_path), 'training.score_matching_order': 3}
    out = str(tmp_path / 'two.npz')
    cmd = [sys.executable, WORKER, '--kind', 'npz', '--workdir', str(tmp_path / 'work')]
    cmd += ['--out', out, '--overrides', json.dumps(overrides), '--devices', '2']
    proc = subprocess.Popen(
        cmd, env=train_utils.subprocess_env(2), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    config = train_utils.load_config('npz', overrides)
    loop = trainer.Trainer(prepare_config(config), str(tmp_path / 'one'))
    state = loop.run()
    two = _finish(proc, out)
    assert int(two['device_count']) == 2
    one_loss = np.array([h['train/loss'] for h in loop.history if 'train/loss' in h])
    assert len(one_loss) == 10 and np.all(np.isfinite(one_loss))
    np.testing.assert_allclose(two['loss'], one_loss, rtol=2e-5, atol=1e-6)
    one = {f'param/{k}': v for k, v in train_utils.flat_params(state.params).items()}
    train_utils.assert_trees_close(_params(two), one, rtol=1e-4, atol=1e-5)
