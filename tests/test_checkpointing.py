"""checkpointing: full-state round trips, retention, interrupted saves, clear errors."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import checkpointing
import train_state
from errors import UserError


def _state(seed: int = 0, width: int = 4) -> train_state.TrainState:
    """A small but complete TrainState (Adam with clipping, like training uses)."""
    rng = jax.random.PRNGKey(seed)
    params = {
        'dense': {
            'kernel': jax.random.normal(rng, (3, width)),
            'bias': jnp.arange(width, dtype=jnp.float32),
        }
    }
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    )
    state = train_state.init_train_state(jax.random.PRNGKey(seed + 1), params, optimizer)
    # One real update so that the moments and counts are not trivial.
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    return state.replace(
        step=jnp.asarray(7 + seed, jnp.int32),
        params=optax.apply_updates(params, updates),
        opt_state=opt_state,
    )


def _assert_same(a, b) -> None:
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def test_snapshot_round_trip_is_exact(tmp_path):
    state = _state()
    path = checkpointing.save_snapshot(str(tmp_path), 3, state)
    assert path == os.path.join(str(tmp_path), 'checkpoints', '3')
    assert checkpointing.list_checkpoints(str(tmp_path)) == [3]
    restored = checkpointing.restore_checkpoint(str(tmp_path), 3, _state(seed=5))
    _assert_same(restored, state)


def test_preemption_keeps_newest_two_and_resumes_latest(tmp_path):
    workdir = str(tmp_path)
    assert checkpointing.restore_latest_preemption(workdir, _state()) is None
    for step in (10, 20, 30):
        checkpointing.save_preemption(workdir, _state().replace(step=jnp.asarray(step)))
    assert sorted(os.listdir(checkpointing.preemption_dir(workdir))) == ['20', '30']
    restored = checkpointing.restore_latest_preemption(workdir, _state())
    assert int(restored.step) == 30
    _assert_same(restored.params, _state().params)


def test_interrupted_saves_are_skipped_with_a_warning(tmp_path, caplog):
    workdir = str(tmp_path)
    meta = checkpointing.preemption_dir(workdir)
    checkpointing.save_preemption(workdir, _state().replace(step=jnp.asarray(10)))
    # A killed save leaves orbax's tmp folder; a copied partial save lacks the marker.
    os.makedirs(os.path.join(meta, '20.orbax-checkpoint-tmp-1234', 'default'))
    shutil.copytree(os.path.join(meta, '10'), os.path.join(meta, '30'))
    os.remove(os.path.join(meta, '30', checkpointing.COMMIT_MARKER))
    with caplog.at_level(logging.WARNING):
        restored = checkpointing.restore_latest_preemption(workdir, _state())
    assert int(restored.step) == 10
    assert 'incomplete checkpoint' in caplog.text and '/30' in caplog.text
    # The next save tidies them away and succeeds even at the same step number.
    checkpointing.save_preemption(workdir, _state().replace(step=jnp.asarray(30)))
    names = sorted(os.listdir(meta))
    assert '30' in names and not any('orbax-checkpoint-tmp' in n for n in names)
    assert any(n.startswith('30.incomplete-') for n in names)
    assert int(checkpointing.restore_latest_preemption(workdir, _state()).step) == 30


def test_missing_checkpoint_names_path_and_available(tmp_path):
    checkpointing.save_snapshot(str(tmp_path), 1, _state())
    with pytest.raises(UserError, match=r'checkpoints/4 does not exist.*\[1\]'):
        checkpointing.restore_checkpoint(str(tmp_path), 4, _state())
    with pytest.raises(UserError, match='none'):
        checkpointing.restore_checkpoint(str(tmp_path / 'empty'), 1, _state())


def test_incompatible_checkpoint_names_the_parameter(tmp_path):
    checkpointing.save_snapshot(str(tmp_path), 1, _state())
    expected = r'params\.dense\.bias has shape \(4,\) in the checkpoint, \(6,\) here'
    with pytest.raises(UserError, match=expected):
        checkpointing.restore_checkpoint(str(tmp_path), 1, _state(width=6))


def test_corrupt_checkpoint_gives_user_error(tmp_path):
    checkpointing.save_snapshot(str(tmp_path), 2, _state())
    root = checkpointing.checkpoint_path(str(tmp_path), 2)
    removed = 0
    for folder, _, files in os.walk(root):
        if os.path.basename(folder) == 'd':
            for name in files:
                os.remove(os.path.join(folder, name))
                removed += 1
    assert removed
    with pytest.raises(UserError, match=r'checkpoints/2 is damaged.*Delete that folder'):
        checkpointing.restore_checkpoint(str(tmp_path), 2, _state())


def _truncate(path: str) -> None:
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[: len(data) // 2])


def test_a_damaged_file_is_named_without_tensorstore_details(tmp_path):
    """A truncated data file (OCDBT packs the arrays into unnamed files) names the array
    and the folder it is stored under, a truncated metadata file names itself; neither
    message carries tensorstore's spec dump, and the fix names the intact snapshots."""
    workdir, wide = str(tmp_path), _state(width=400)  # arrays beyond OCDBT's inline size
    checkpointing.save_snapshot(workdir, 1, wide)
    checkpointing.save_snapshot(workdir, 2, wide)
    root = checkpointing.checkpoint_path(workdir, 2)
    data = [os.path.join(f, n) for f, _, names in os.walk(root) for n in names if '/d' in f]
    _truncate(max(data, key=os.path.getsize))
    with pytest.raises(UserError) as error:
        checkpointing.restore_checkpoint(workdir, 2, wide)
    message = str(error.value)
    assert 'TensorStore' not in message and '{' not in message, message
    assert f'{root} is damaged: the stored data of ' in message
    assert 'cannot be read (Requested byte range' in message
    assert '--config.eval.end_ckpt=N with N in [1]' in message
    checkpointing.restore_checkpoint(workdir, 1, wide)  # the other snapshot is intact

    shutil.rmtree(root)
    checkpointing.save_snapshot(workdir, 2, wide)
    _truncate(os.path.join(root, 'default', '_METADATA'))
    with pytest.raises(UserError, match=r'its file .*/2/default/_METADATA is not valid JSON'):
        checkpointing.restore_checkpoint(workdir, 2, wide)


def test_a_full_disk_is_one_line_and_leaves_no_partial_save(tmp_path, monkeypatch, caplog):
    """ENOSPC while orbax writes checkpoint 2 (simulated in its metadata writer, after the
    arrays were written to the temporary folder): one UserError, the temporary folder
    removed, orbax's tracebacks kept out of the log, and snapshot 1 untouched."""
    from orbax.checkpoint._src.path import async_path

    workdir = str(tmp_path)
    checkpointing.save_snapshot(workdir, 1, _state())

    async def full_disk(path, text, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(async_path, 'write_text', full_disk)
    with caplog.at_level(logging.INFO), pytest.raises(UserError) as error:
        checkpointing.save_snapshot(workdir, 2, _state(seed=1))
    message = str(error.value)
    assert message.startswith(
        f'No space left on the disk of {checkpointing.snapshot_dir(workdir)} ('
    ), message
    assert 'while writing checkpoint 2; nothing older was touched' in message
    assert os.listdir(checkpointing.snapshot_dir(workdir)) == ['1']
    assert not [r for r in caplog.records if 'No space left' in r.getMessage()]
    monkeypatch.undo()
    _assert_same(checkpointing.restore_checkpoint(workdir, 1, _state()), _state())


def test_wait_for_checkpoint(tmp_path):
    workdir = str(tmp_path)
    assert not checkpointing.wait_for_checkpoint(workdir, 1, timeout_s=0.2, poll_s=0.05)
    saver = threading.Timer(0.3, checkpointing.save_snapshot, (workdir, 1, _state()))
    saver.start()
    try:
        assert checkpointing.wait_for_checkpoint(workdir, 1, timeout_s=60, poll_s=0.05)
    finally:
        saver.join()


def test_unwritable_workdir_gives_user_error(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    with pytest.raises(UserError, match='writable --workdir'):
        checkpointing.save_snapshot(str(blocker / 'run'), 1, _state())
