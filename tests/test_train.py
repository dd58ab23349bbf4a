"""End-to-end training (as flax/examples/imagenet/train_test.py): tiny models, few steps.

- DIGITS through the real command line: train, then eval of the snapshot (bits/dim).
- NPZ vectors in process: outputs, exact resume, scatter-plot samples.
- CIFAR-10 through ``tfds.testing.mock_data`` (no download).
- Preemption: SIGKILL at a random point, restart, bitwise the uninterrupted parameters;
  a half-written checkpoint is skipped with a warning.
- A non-finite loss stops training with a message naming the last good checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import checkpointing
import datasets
import losses
import run_lib
import sde_lib
import train_utils
import trainer
from devices import get_mesh, to_global
from errors import UserError
from train_state import create_train_state
from validation import prepare_config


def _npz_config(tmp_path, **overrides):
    path = str(tmp_path / 'vectors.npz')
    if not os.path.exists(path):
        train_utils.write_vector_npz(path, dim=3)
    return train_utils.load_config('npz', {'data.path': path, **overrides})


def _final_params(workdir: str, config) -> dict:
    """Parameters of the newest preemption checkpoint of ``workdir``."""
    _, _, template = create_train_state(prepare_config(config), get_mesh())
    state = checkpointing.restore_latest_preemption(workdir, template)
    return train_utils.flat_params(
        {
            'params': state.params,
            'ema': state.ema_params,
            'opt': state.opt_state,
            'rng': state.rng,
            'step': state.step,
        }
    )


def test_digits_command_line_train_then_eval(tmp_path):
    """Train and evaluate through main.py. The learning rate is so small that the network
    stays at its initialisation, whose last layer (init_scale 0) outputs ≈ 0: the test
    bits/dim must then be the closed form of a zero score (``train_utils.zero_score_bpd``,
    ≈ 11.7 here), which checks the restored checkpoint, the dequantization, the scaler's
    Jacobian, the prior and the bin offset end to end (each off by ≥ 1 bit/dim if wrong)."""
    workdir = str(tmp_path / 'digits')
    overrides = {
        'training.n_iters': 10,
        'training.snapshot_sampling': True,
        'sampling.method': 'pc',
        'eval.begin_ckpt': 1,
        'eval.end_ckpt': 1,
        'eval.batch_size': 200,
        'eval.rtol': 1e-3,
        'eval.atol': 1e-3,
        'eval.enable_loss': False,
        'optim.lr': 1e-12,
    }
    flags = train_utils.cli_flags('digits', overrides) + ['--workdir', workdir]
    result = train_utils.run_main(flags + ['--mode', 'train'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpointing.list_checkpoints(workdir) == [1]
    assert checkpointing.list_preemption_checkpoints(workdir) == [5, 10]
    with open(os.path.join(workdir, 'config.json')) as f:
        assert json.load(f)['training']['n_iters'] == 10
    with open(os.path.join(workdir, 'stdout.txt')) as f:
        log = f.read()
    assert 'step 10/10' in log and 'eval_loss' in log and 'steps/s' in log
    assert os.path.getsize(os.path.join(workdir, 'samples', 'iter_10', 'sample.png')) > 100
    with np.load(os.path.join(workdir, 'samples', 'iter_10', 'sample.npz')) as f:
        assert f['samples'].shape == (16, 8, 8, 1)
    assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))

    result = train_utils.run_main(flags + ['--mode', 'eval'])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = run_lib.read_metrics(workdir)
    assert metrics['1']['num_examples'] == 197
    expected = train_utils.zero_score_bpd(train_utils.load_config('digits', overrides))
    # measured: 11.66259 against 11.66277
    assert metrics['1']['bpd'] == pytest.approx(expected, abs=2e-3), expected


def test_npz_vectors_outputs_and_exact_resume(tmp_path):
    config = _npz_config(tmp_path, **{'training.snapshot_sampling': True})
    loop = trainer.Trainer(prepare_config(config), str(tmp_path / 'straight'))
    straight = loop.run()
    assert int(straight.step) == 20
    logged = [h['train/loss'] for h in loop.history if 'train/loss' in h]
    assert len(logged) == 4 and np.all(np.isfinite(logged))
    assert [h['step'] for h in loop.history if 'eval/loss' in h] == [10, 20]
    assert checkpointing.list_checkpoints(str(tmp_path / 'straight')) == [1, 2]
    png = tmp_path / 'straight' / 'samples' / 'iter_20' / 'sample.png'
    assert png.stat().st_size > 100  # a scatter plot of the first two coordinates

    resumed_dir = str(tmp_path / 'resumed')
    config.training.snapshot_sampling = False
    config.training.n_iters = 10
    run_lib.train(config, resumed_dir)
    config.training.n_iters = 20
    resumed = run_lib.train(config, resumed_dir)
    train_utils.assert_trees_close(
        train_utils.flat_params(resumed), train_utils.flat_params(straight)
    )
    # Training that is already complete returns at once.
    again = trainer.Trainer(prepare_config(config), resumed_dir)
    assert int(again.run().step) == 20 and not again.history


def test_resume_writes_a_snapshot_lost_to_a_kill(tmp_path):
    """A kill between the preemption checkpoint and the snapshot of the same step (the
    former is written first): resuming writes the missing snapshot from the restored
    state, so that --mode eval finds every snapshot (seen with scripts/scoreflow_table.py)."""
    config = train_utils.load_config('toy', {'training.n_iters': 10, 'training.eval_freq': 10})
    workdir = str(tmp_path)
    run_lib.train(config, workdir)
    assert checkpointing.list_checkpoints(workdir) == [1]
    shutil.rmtree(os.path.join(workdir, 'checkpoints', '1'))  # the kill's window
    resumed = trainer.Trainer(prepare_config(config), workdir)
    assert checkpointing.list_checkpoints(workdir) == [1]
    _, _, template = create_train_state(prepare_config(config), get_mesh())
    snapshot = checkpointing.restore_checkpoint(workdir, 1, template)
    train_utils.assert_trees_close(
        train_utils.flat_params(snapshot.params), train_utils.flat_params(resumed.state.params)
    )
    assert int(snapshot.step) == 10


def test_scan_chunk_equals_per_step_dispatch(tmp_path):
    """The lax.scan chunk (GPU / TPU default) and the per-step loop (CPU) agree."""
    config = prepare_config(_npz_config(tmp_path))
    mesh = get_mesh()
    model, optimizer, state = create_train_state(config, mesh)
    step_fn = losses.get_step_fn(
        sde_lib.get_sde(config),
        model,
        optimizer,
        train=True,
        likelihood_weighting=True,
        importance_weighting=True,
    )
    batch = next(datasets.get_train_iterator(config))
    results = []
    for use_scan in (True, False):
        chunk = trainer.get_train_chunk_fn(step_fn, lambda x: x, mesh, use_scan=use_scan)
        start = jax.tree.map(lambda a: a.copy(), state)  # the chunk donates its input
        sums = jax.jit(trainer.new_log_sums)()
        global_batch = to_global(batch, mesh, PartitionSpec(None, 'data'))
        new_state, sums = chunk(start, sums, global_batch)
        results.append((train_utils.flat_params(new_state), jax.device_get(sums)))
    (scan_state, scan_sums), (loop_state, loop_sums) = results
    assert int(scan_sums['count']) == int(loop_sums['count']) == len(batch)
    np.testing.assert_allclose(scan_sums['loss'], loop_sums['loss'], rtol=1e-5)
    train_utils.assert_trees_close(scan_state, loop_state, rtol=1e-5, atol=1e-6)


def test_missing_data_is_reported_before_the_network_is_built(tmp_path, monkeypatch):
    """Training with absent TFDS data stops with the data's UserError before the (slow)
    train-state initialisation, so the error arrives in seconds."""

    def too_early(*args, **kwargs):
        raise AssertionError('the train state was built before the data were checked')

    monkeypatch.setattr(trainer, 'create_train_state', too_early)
    config = train_utils.load_config('cifar10', {'data.data_dir': str(tmp_path)})
    datasets._load_shard.cache_clear()
    with pytest.raises(UserError, match='is not prepared'):
        trainer.Trainer(prepare_config(config), str(tmp_path / 'w'))


def test_cifar10_mock_data(tmp_path):
    """CIFAR-10 through TFDS's mock data. With a learning rate of 1e-12 the network stays
    at its initialisation (output ≈ 0), where the likelihood-weighted, importance-sampled
    DSM loss of ``vp/cifar10_lw_is`` is w · mean(‖σ·0 + z‖²) with w = 1: every logged
    train and eval loss is 1 up to the χ² noise of 16 × 3072 normals (sd 0.007). A
    weighting that lost the importance sampling (w = g²/σ², up to 1e5) fails this."""
    tfds = pytest.importorskip('tensorflow_datasets')
    config = train_utils.load_config(
        'cifar10',
        {
            'training.n_iters': 5,
            'training.eval_freq': 5,
            'training.snapshot_freq': 5,
            'optim.lr': 1e-12,
        },
    )
    with tfds.testing.mock_data(num_examples=32):
        loop = trainer.Trainer(prepare_config(config), str(tmp_path))
        state = loop.run()
    assert int(state.step) == 5
    assert checkpointing.list_checkpoints(str(tmp_path)) == [1]
    values = [h.get('train/loss', h.get('eval/loss')) for h in loop.history]
    assert len(values) == 2 and values == pytest.approx([1.0, 1.0], abs=0.04), values
    assert state.params and jax.tree.leaves(state.params)[0].dtype == np.float32


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            out = proc.communicate(timeout=30)[0] if proc.poll() is not None else ''
            raise AssertionError(f'condition not reached (rc={proc.poll()}):\n{out[-3000:]}')
        time.sleep(0.02)


def test_sigkill_between_checkpoints_then_resume_is_exact(tmp_path):
    overrides = {
        'training.n_iters': 600,
        'training.log_freq': 50,
        'training.eval_freq': 300,
        'training.snapshot_freq': 300,
        'training.snapshot_freq_for_preemption': 50,
        'training.batch_size': 64,
    }
    config = _npz_config(tmp_path, **overrides)
    workdir = str(tmp_path / 'killed')
    flags = train_utils.cli_flags('npz', {**overrides, 'data.path': config.data.path})
    args = [
        sys.executable,
        os.path.join(train_utils.REPO, 'main.py'),
        *flags,
        '--workdir',
        workdir,
        '--mode',
        'train',
    ]
    proc = subprocess.Popen(
        args,
        env=train_utils.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=train_utils.REPO,
    )
    try:
        _wait_for(lambda: checkpointing.list_preemption_checkpoints(workdir), 300, proc)
        delay = float(np.random.default_rng().uniform(0.0, 0.5))
        time.sleep(delay)
        assert proc.poll() is None, 'training finished before it could be killed'
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = checkpointing.list_preemption_checkpoints(workdir)
    assert saved and saved[-1] < 600, (delay, saved)
    # A half-written save (a copy without commit marker, at a step no save uses) must
    # be skipped.
    meta = checkpointing.preemption_dir(workdir)
    partial = os.path.join(meta, str(saved[-1] + 25))
    shutil.copytree(os.path.join(meta, str(saved[-1])), partial)
    os.remove(os.path.join(partial, checkpointing.COMMIT_MARKER))

    result = subprocess.run(
        args,
        env=train_utils.subprocess_env(),
        capture_output=True,
        text=True,
        cwd=train_utils.REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Skipping incomplete checkpoint' in result.stderr
    assert f'steps {saved[-1]} -> 600' in result.stderr

    reference = run_lib.train(config, str(tmp_path / 'straight'))
    expected = train_utils.flat_params(
        {
            'params': reference.params,
            'ema': reference.ema_params,
            'opt': reference.opt_state,
            'rng': reference.rng,
            'step': reference.step,
        }
    )
    train_utils.assert_trees_close(_final_params(workdir, config), expected, atol=1e-6)


def test_non_finite_loss_stops_and_names_last_good_checkpoint(tmp_path):
    path = str(tmp_path / 'nan.npz')
    train_utils.write_vector_npz(path, dim=3)
    with np.load(path) as f:
        train, test = f['train'], f['test']
    train[123, 1] = np.nan
    np.savez(path, train=train, test=test)
    config = train_utils.load_config('npz', {'data.path': path, 'training.n_iters': 60})
    # The first step whose batch holds row 123 (the iterator is a pure function of step).
    resolved = prepare_config(config)
    shard = datasets.get_shard(resolved, 'train')
    bad = next(s for s in range(60) if np.isnan(datasets.train_batch(resolved, shard, s, 16)).any())
    assert bad >= 10, bad  # the data make a checkpoint precede the bad step
    with pytest.raises(UserError, match=f'non-finite at step {bad}') as info:
        run_lib.train(config, str(tmp_path / 'run'))
    saved = checkpointing.list_preemption_checkpoints(str(tmp_path / 'run'))
    assert saved == [s for s in range(5, 5 * (bad // 5) + 1, 5)][-2:]
    if saved:
        assert f'checkpoints-meta/{saved[-1]} (step {saved[-1]})' in str(info.value)
        restored = _final_params(str(tmp_path / 'run'), config)
        assert all(np.all(np.isfinite(v)) for v in restored.values())
    else:
        assert 'no checkpoint was saved yet' in str(info.value)
