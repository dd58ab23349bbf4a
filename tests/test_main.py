"""The command line on bad input: one clear message on stderr, no traceback, exit code 1.

Every case runs ``python main.py`` in a subprocess, as a user would.
"""

from __future__ import annotations

import os

import pytest

import checkpointing
import train_utils
from devices import get_mesh
from train_state import create_train_state
from validation import prepare_config


def _fails_cleanly(args, *expected: str) -> str:
    """Runs main.py; asserts exit 1, no traceback and every ``expected`` text on stderr."""
    result = train_utils.run_main(args, timeout=240)
    err = result.stderr
    assert result.returncode == 1, err[-3000:]
    assert 'Traceback' not in err and 'Traceback' not in result.stdout, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith('Error: ')]
    assert len(errors) == 1, err[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def _toy(tmp_path, overrides=None, mode='train'):
    return train_utils.cli_flags('toy', overrides) + [
        '--workdir',
        str(tmp_path / 'w'),
        '--mode',
        mode,
    ]


@pytest.mark.parametrize(
    'override, expected',
    [
        ({'training.sde': 'vpsdee'}, ["config.training.sde='vpsdee' is not one of", 'vpsde']),
        ({'training.batch_size': 0}, ['config.training.batch_size=0 must be positive']),
        (
            {'training.log_freq': 7},
            ['config.training.log_freq=7 must be a multiple of training.n_jitted_steps=5'],
        ),
        (
            {'training.importance_weighting': True, 'training.likelihood_weighting': False},
            ['importance_weighting', 'likelihood_weighting=True'],
        ),
    ],
)
def test_config_errors(tmp_path, override, expected):
    message = _fails_cleanly(_toy(tmp_path, override), *expected)
    assert '--config.' in message  # names the flag that fixes it
    with open(tmp_path / 'w' / 'stdout.txt') as f:
        assert message in f.read()  # the log file records it too


def test_unknown_config_field_and_bad_flags(tmp_path):
    _fails_cleanly(
        _toy(tmp_path) + ['--config.training.batch_sise=8'],
        '--config.training.batch_sise is not a config field',
        'configs/base.py',
    )
    _fails_cleanly(
        _toy(tmp_path) + ['--config.training.batch_size=many'], 'config.training.batch_size', 'many'
    )
    _fails_cleanly(
        [
            '--config',
            'configs/vp/no_such_config.py',
            '--workdir',
            str(tmp_path / 'w'),
            '--mode',
            'train',
        ],
        'no_such_config.py could not be loaded',
        'No such file',
    )


def test_missing_data(tmp_path):
    _fails_cleanly(
        _toy(
            tmp_path,
            {'data.dataset': 'NPZ', 'data.dim': 0, 'data.path': str(tmp_path / 'absent.npz')},
        ),
        'config.data.path=',
        'absent.npz',
        'is not an existing file',
    )
    empty = tmp_path / 'tfds'
    empty.mkdir()
    flags = train_utils.cli_flags('cifar10', {'data.data_dir': str(empty)}) + [
        '--workdir',
        str(tmp_path / 'c'),
        '--mode',
        'train',
    ]
    _fails_cleanly(flags, 'cifar10', 'is not prepared', 'tfds build', 'data.download=True')


def test_unwritable_workdir_and_bad_multihost_flags(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    args = train_utils.cli_flags('toy') + ['--mode', 'train']
    _fails_cleanly(
        args + ['--workdir', str(blocker / 'run')],
        f'--workdir={blocker / "run"} is not a writable directory',
    )
    # A URL goes to tf.io.gfile (tests/test_file_io.py); one it cannot open is one line, and
    # never a local folder named after the scheme. (No gs:// here: CI has no network.)
    _fails_cleanly(
        args + ['--workdir', 'nosuchscheme://bucket/W'],
        '--workdir=nosuchscheme://bucket/W is not a writable directory',
    )
    assert not os.path.exists(os.path.join(train_utils.REPO, 'nosuchscheme:'))
    _fails_cleanly(
        args + ['--workdir', str(tmp_path / 'w'), '--coordinator_address=127.0.0.1:1234'],
        '--coordinator_address needs --num_processes and --process_id',
    )


def test_missing_checkpoint_for_eval(tmp_path):
    _fails_cleanly(
        _toy(tmp_path, {'eval.begin_ckpt': 3, 'eval.end_ckpt': 3}, mode='eval'),
        f'{tmp_path / "w" / "checkpoints" / "3"}',
        'begin_ckpt',
    )


def test_eval_with_an_untrained_dequantizer_names_its_folder(tmp_path):
    """``--deq_folder`` reaches the evaluation, which stops before loading a checkpoint."""
    args = train_utils.cli_flags('digits', {'eval.dequantizer': True})
    args += ['--workdir', str(tmp_path / 'w'), '--mode', 'eval', '--deq_folder', 'mine']
    _fails_cleanly(
        args, f'{tmp_path / "w" / "mine"} holds no trained dequantizer', '--deq_folder=mine'
    )


def test_corrupt_and_incompatible_checkpoints(tmp_path):
    config = train_utils.load_config('toy')
    _, _, state = create_train_state(prepare_config(config), get_mesh())
    workdir = str(tmp_path / 'w')
    checkpointing.save_preemption(workdir, state.replace(step=state.step + 5))

    _fails_cleanly(
        _toy(tmp_path, {'model.nf': 16}),
        'checkpoints-meta/5 does not match the model',
        'shape',
        'new --workdir',
    )

    for folder, _, files in os.walk(os.path.join(checkpointing.preemption_dir(workdir), '5')):
        if os.path.basename(folder) == 'd':
            for name in files:
                os.remove(os.path.join(folder, name))
    _fails_cleanly(_toy(tmp_path), 'checkpoints-meta/5 is corrupt', 'delete that folder')


def test_eval_folder_default_follows_the_original_of_the_config():
    """score_flow's main.py defaults --eval_folder to eval_test_bpd, score_sde's to eval."""
    import main

    assert main.eval_folder_for(None, 'configs/score_flow/vp/cifar10_ddpmpp_continuous.py') == (
        'eval_test_bpd'
    )
    assert main.eval_folder_for(None, 'configs/vp/cifar10_ddpmpp_continuous.py') == 'eval'
    assert main.eval_folder_for(None, 'configs/vp/digits_lw_is.py') == 'eval'
    assert main.eval_folder_for('mine', 'configs/score_flow/vp/x.py') == 'mine'


def test_a_score_flow_command_line_runs_unchanged_up_to_the_missing_dequantizer(tmp_path):
    """score_flow's README evaluation command (its config file under configs/score_flow/,
    its flags; its README's ``eval.dataset`` is ``eval.bpd_dataset`` in its code): every
    flag is accepted, the results folder is score_flow's, and the first thing missing — the
    Flow++ dequantizer of ``--mode train_deq`` — is named."""
    workdir = tmp_path / 'vp_cifar10'
    _fails_cleanly(
        [
            '--config',
            'configs/score_flow/vp/cifar10_ddpmpp_continuous.py',
            '--workdir',
            str(workdir),
            '--mode',
            'eval',
            '--config.eval.enable_bpd=True',
            '--config.eval.bpd_dataset=test',
            '--config.eval.bound=True',
            '--config.eval.dequantizer=True',
        ],
        'flowpp_dequantizer holds no trained dequantizer',
        '--mode train_deq',
    )
    assert (workdir / 'eval_test_bpd').is_dir()
