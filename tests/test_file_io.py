"""The path layer (file_io) on a filesystem that is not local: TensorFlow's in-memory
``ram://``, which behaves as gs:// does through tf.io.gfile and works offline.

Orbax cannot open ``ram://`` (etils knows gs:// and s3://, not ram://), so in the end-to-end
test the two checkpoint folders alone are mapped to a local folder; every other file of the
work directory (config.json, TensorBoard, samples, evaluation results and its per-batch
store, metrics.json, the plot, stdout.txt) is written to ``ram://``.
"""

from __future__ import annotations

import logging as py_logging
import os
import uuid

import numpy as np
import pytest

import checkpointing
import datasets
import file_io
import main
import run_lib
import train_utils
from errors import UserError
from validation import prepare_config

pytestmark = pytest.mark.timeout(300)


def _ram(name: str) -> str:
    return f'ram://{uuid.uuid4().hex}/{name}'


def test_atomic_write_read_list_rename_and_npz_on_ram():
    root = _ram('w')
    file_io.write_json(os.path.join(root, 'a', 'm.json'), {'x': 1})
    file_io.save_npz(os.path.join(root, 'b.npz'), y=np.arange(4))
    assert file_io.read_json(os.path.join(root, 'a', 'm.json')) == {'x': 1}
    assert file_io.read_json(os.path.join(root, 'missing.json'), 'default') == 'default'
    np.testing.assert_array_equal(file_io.load_npz(os.path.join(root, 'b.npz'))['y'], np.arange(4))
    assert sorted(file_io.listdir(root)) == ['a', 'b.npz']  # no temporary files left
    assert file_io.isdir(os.path.join(root, 'a')) and file_io.isfile(os.path.join(root, 'b.npz'))
    with pytest.raises(OSError):
        file_io.rename(os.path.join(root, 'b.npz'), os.path.join(root, 'a', 'm.json'))
    file_io.rename(os.path.join(root, 'b.npz'), os.path.join(root, 'c.npz'))
    assert not file_io.exists(os.path.join(root, 'b.npz'))
    walked = {r: sorted(f) for r, _, f in file_io.walk(root)}
    assert walked[os.path.join(root, 'a')] == ['m.json']
    assert file_io.abspath(root) == root and file_io.abspath('rel') == os.path.abspath('rel')


def test_log_file_on_ram_keeps_earlier_lines():
    path = _ram('stdout.txt')
    for run, lines in enumerate((('one', 'two'), ('three',))):
        handler = file_io.LogFileHandler(path, every_s=3600.0)
        logger = py_logging.getLogger(f'test_file_io_{run}')
        logger.addHandler(handler)
        for line in lines:
            logger.warning(line)
        handler.close()
        logger.removeHandler(handler)
    assert file_io.read_bytes(path).decode() == 'one\ntwo\nthree\n'


def test_unwritable_url_workdir_is_one_user_error():
    with pytest.raises(UserError, match='--workdir=nosuchscheme://b/W is not a writable'):
        main._prepare_workdir('nosuchscheme://b/W')
    main._prepare_workdir(_ram('W'))  # a usable URL passes


def test_train_sample_and_evaluate_in_a_ram_workdir(tmp_path, monkeypatch):
    """TOY through run_lib.train and run_lib.evaluate with workdir=ram://…: the outputs are
    there, with values, and nothing but the checkpoints lands on the local disk."""
    local = tmp_path / 'orbax'
    monkeypatch.setattr(checkpointing, 'SNAPSHOT_DIR', 'unused')
    monkeypatch.setattr(checkpointing, 'snapshot_dir', lambda w: str(local / 'checkpoints'))
    monkeypatch.setattr(checkpointing, 'preemption_dir', lambda w: str(local / 'meta'))
    workdir = _ram('W')
    config = train_utils.load_config(
        'toy',
        {
            'training.n_iters': 10,
            'training.snapshot_sampling': True,
            'eval.begin_ckpt': 1,
            'eval.end_ckpt': 1,
            'eval.enable_bpd': False,
            'eval.enable_loss': True,
            'eval.enable_sampling': False,
            'eval.batch_size': 64,
        },
    )
    state = run_lib.train(config, workdir)
    assert int(state.step) == 10
    assert checkpointing.list_checkpoints(workdir) == [1]
    assert file_io.read_json(os.path.join(workdir, 'config.json'))['training']['n_iters'] == 10
    assert file_io.listdir(os.path.join(workdir, 'tensorboard'))[0].startswith('events.out')
    png = file_io.read_bytes(os.path.join(workdir, 'samples', 'iter_10', 'sample.png'))
    assert png.startswith(b'\x89PNG')

    metrics = run_lib.evaluate(config, workdir, 'eval_test_bpd')
    assert metrics == run_lib.read_metrics(workdir, 'eval_test_bpd')
    assert 0.0 < metrics['1']['loss'] < 1e3 and metrics['1']['step'] == 10
    names = set(file_io.listdir(os.path.join(workdir, 'eval_test_bpd')))
    assert {'config.json', 'metrics.json', 'metrics.png', 'tensorboard', 'ckpt_1'} <= names
    assert sorted(os.listdir(local)) == ['checkpoints', 'meta']
    assert not os.path.exists('ram:')  # no local folder named after the scheme


def test_npz_data_on_ram():
    """data.path may be a URL: validation, the header check and the loader read it."""
    path = _ram('vectors.npz')
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(40, 3)), rng.normal(size=(10, 3))
    file_io.save_npz(path, train=train.astype(np.float32), test=test.astype(np.float32))
    config = prepare_config(train_utils.load_config('npz', {'data.path': path}))
    shard = datasets.get_shard(config, 'test')
    np.testing.assert_array_equal(shard.data, test.astype(np.float32))
    with pytest.raises(UserError, match='data.path'):
        prepare_config(train_utils.load_config('npz', {'data.path': _ram('missing.npz')}))
