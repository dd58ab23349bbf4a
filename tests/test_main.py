"""The command line on bad input: one clear message on stderr, no traceback, exit code 1.

Every case runs ``python main.py`` in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import checkpointing
import configs.base
import main
import run_lib
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
    _fails_cleanly(_toy(tmp_path), 'checkpoints-meta/5 is damaged', 'Delete that folder')


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
    log = (workdir / 'stdout.txt').read_text()
    assert f'Evaluation results go to {workdir / "eval_test_bpd"}.' in log
    assert not (workdir / 'eval_test_bpd').exists()  # a failed start leaves nothing behind


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    """The README's eval command before any training: one line naming the missing
    snapshot, and no empty eval/ (nor ckpt_<n>/) left in the work directory."""
    workdir = tmp_path / 'w'
    args = ['--config', 'configs/vp/digits_lw_is.py', '--workdir', str(workdir), '--mode']
    _fails_cleanly(args + ['eval'], f'{workdir / "checkpoints"} holds no snapshot yet')
    assert sorted(os.listdir(workdir)) == ['stdout.txt']


@pytest.mark.slow
def test_readme_commands_need_no_checkpoint_numbers_after_a_short_training(tmp_path):
    """A training shorter than training.snapshot_freq (DIGITS: 1000) leaves its last step
    as a snapshot (as score_sde does), and the project's configs evaluate and sample the
    newest snapshot: the README's eval and sample commands work without begin/end."""
    workdir = str(tmp_path)
    fast = {  # a tiny network and loose tolerances; no checkpoint numbers
        'training.snapshot_freq': 1000,
        'eval.rtol': 1e-2,
        'eval.atol': 1e-2,
        'sampling.num_samples': 2,
        'sampling.rtol': 1e-2,
        'sampling.atol': 1e-2,
    }
    config = train_utils.load_config('digits', fast)
    assert (config.eval.begin_ckpt, config.eval.end_ckpt) == (-1, -1)
    run_lib.train(config, workdir)
    assert checkpointing.list_checkpoints(workdir) == [0]  # 20 steps: 20 // 1000
    metrics = run_lib.evaluate(config, workdir)
    assert list(metrics) == ['0'] and metrics['0']['step'] == 20
    config.sampling.task = 'unconditional'
    assert run_lib.sample(config, workdir)['num_samples'] == 2


def _start_training(workdir, n_iters=100000):
    args = train_utils.cli_flags('toy', {'training.n_iters': n_iters})
    log = open(os.path.join(os.path.dirname(workdir), 'log.txt'), 'a+')
    process = subprocess.Popen(
        [sys.executable, os.path.join(train_utils.REPO, 'main.py'), *args]
        + ['--workdir', workdir, '--mode', 'train'],
        cwd=train_utils.REPO,
        env=train_utils.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    return process, log


def _interrupt_when_logged(process, log, text, signum, timeout=300):
    """Waits for ``text`` in the new output, sends ``signum``; (exit code, output, seconds
    from the signal to the exit)."""
    start, deadline = log.tell(), time.time() + timeout
    while True:
        log.seek(start)
        if text in log.read():
            break
        assert process.poll() is None and time.time() < deadline, 'no progress'
        time.sleep(0.2)
    sent = time.time()
    process.send_signal(signum)
    code = process.wait(timeout=60)
    log.seek(start)
    return code, log.read(), time.time() - sent


@pytest.mark.slow
def test_one_ctrl_c_or_sigterm_stops_at_once_with_one_line_and_resumes(tmp_path):
    """During training (the main thread busy in jitted steps): one SIGINT ends the run
    within seconds, exit 130, with one line and no traceback; the same command resumes,
    and SIGTERM ends it the same way (exit 143)."""
    workdir = str(tmp_path / 'w')
    process, log = _start_training(workdir)
    code, out, seconds = _interrupt_when_logged(process, log, 'step 10/', signal.SIGINT)
    lines = [ln for ln in out.splitlines() if ln.startswith('Interrupted')]
    assert code == 130 and seconds < 20 and 'Traceback' not in out, out[-3000:]
    assert len(lines) == 1 and lines[0].startswith('Interrupted (SIGINT) at training step ')
    assert lines[0].endswith('; rerun the same command to continue.')
    assert lines[0] in open(os.path.join(workdir, 'stdout.txt')).read()

    process, log = _start_training(workdir)
    code, out, seconds = _interrupt_when_logged(process, log, 'Resuming from', signal.SIGTERM)
    assert code == 143 and seconds < 20 and 'Traceback' not in out, out[-3000:]
    assert 'Interrupted (SIGTERM) at ' in out
    assert checkpointing.list_preemption_checkpoints(workdir)[-1] >= 5


def test_score_flow_names_get_a_hint(capsys):
    """score_flow's README writes --config.eval.dataset; its code reads eval.bpd_dataset."""
    argv = ['main.py', '--config', 'configs/vp/digits_lw_is.py', '--workdir', 'W']
    try:
        with pytest.raises(SystemExit):
            main.parse_flags(argv + ['--mode', 'eval', '--config.eval.dataset=test'])
    finally:
        main.FLAGS.unparse_flags()
    err = capsys.readouterr().err
    assert err.startswith(
        'Error: --config.eval.dataset is not a config field (did you mean '
        '--config.eval.bpd_dataset?)'
    ), err


@pytest.mark.parametrize(
    'text, problem',
    [('def get_config(:\n', 'SyntaxError'), ('"""No get_config."""\n', 'AttributeError')],
)
def test_a_config_file_that_does_not_load_is_named_with_the_fix(
    text, problem, tmp_path, capsys, monkeypatch
):
    """A syntax error or a missing get_config() names the file and what to do."""
    path = tmp_path / 'mine.py'
    path.write_text(text)
    # ml_collections loads config files as module 'config_config' into sys.modules, and
    # into the one there: an earlier test's get_config() would survive.
    monkeypatch.delitem(sys.modules, 'config_config', raising=False)
    argv = ['main.py', '--config', str(path), '--workdir', 'W', '--mode', 'train']
    try:
        with pytest.raises(SystemExit):
            main.parse_flags(argv)
    finally:
        main.FLAGS.unparse_flags()
    err = capsys.readouterr().err
    assert err.startswith(f'Error: --config={path} could not be loaded ({problem}: '), err
    assert 'must define get_config()' in err.splitlines()[0]


def test_no_config_names_the_flag_and_an_example(capsys):
    try:
        with pytest.raises(SystemExit):
            main.parse_flags(['main.py', '--workdir', 'W', '--mode', 'train'])
    finally:
        main.FLAGS.unparse_flags()
    assert capsys.readouterr().err.startswith(
        'Error: no --config given; pass a config file, e.g. --config configs/vp/digits_lw_is.py'
    )


def test_the_defaults_file_of_a_config_is_logged(tmp_path):
    """A config file copied elsewhere imports this repository's configs.default_*: the log
    names the file used, and warns when an edited copy beside the config is not used."""
    import configs.default_digits_configs as used

    modules = {'configs.default_digits_configs': used, 'configs.base': configs.base}
    copy = tmp_path / 'mine' / 'configs'
    (copy / 'vp').mkdir(parents=True)
    (copy / 'default_digits_configs.py').write_text('# edited\n')
    lines = main.config_sources(str(copy / 'vp' / 'digits.py'), modules)
    assert lines[0] == (
        main.logging.INFO,
        f'Config defaults: configs.default_digits_configs.get_default_configs from '
        f'{used.__file__}.',
    )
    assert lines[1][0] == main.logging.WARNING
    assert lines[1][1].startswith(f'{copy / "default_digits_configs.py"} is not used')
    here = main.config_sources(os.path.join(train_utils.REPO, 'configs/vp/x.py'), modules)
    assert len(here) == 1  # the repository's own file: nothing to warn about
