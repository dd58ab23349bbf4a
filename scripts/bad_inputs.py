"""Bad inputs a new user may try, run through ``main.py`` as a user would: writes the table
of docs/bad_inputs.md (input, exit code, first line of the message, seconds to fail,
nothing lost).

    python scripts/bad_inputs.py [--out docs/bad_inputs.md] [--only 3,17]

Every case runs ``python main.py --config configs/vp/digits_lw_is.py --workdir W --mode …``
(the README's DIGITS commands) with one bad input, in a fresh work directory ``W`` that is
prepared first: empty, or a copy of a DIGITS model trained here for 10 steps (snapshot 0),
evaluated once, damaged, … Its files are fingerprinted before and after the run: *nothing
lost* means every file's content is still there (possibly renamed aside) and the log
``stdout.txt`` only grew. Paths in the messages are written as ``W`` (the work directory)
and ``T`` (a scratch folder). The full-disk case needs a small tmpfs (root); elsewhere it
is reported as not run.

``tests/test_bad_inputs.py`` runs the cheap cases again (the config checks in-process, a
few through ``main.py``) and fails when the table is not current.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/vp/digits_lw_is.py'
TABLE = os.path.join(REPO, 'docs', 'bad_inputs.md')
TRAIN_10 = ('--config.training.n_iters=10',)  # the trained model: snapshot 0 at step 10
FAST_EVAL = ('--config.eval.enable_bpd=False',)  # the eval loss only: seconds


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
      text: the input, as the table shows it.
      args: the command line after ``main.py`` ('{W}': the work directory, '{T}': a scratch
        folder); ``--config``, ``--workdir`` and ``--mode`` are added unless given.
      mode: ``--mode``.
      setup: what ``W`` holds first (:data:`SETUPS`).
      in_process: its message comes from ``validation.prepare_config`` (the test checks it
        without a subprocess).
      signal: sent once ``after`` appears in the output (Ctrl-C, SIGTERM).
      config: whether ``--config`` is added.
    """

    text: str
    args: Tuple[str, ...] = ()
    mode: str = 'train'
    setup: str = 'empty'
    in_process: bool = False
    signal: Optional[int] = None
    after: str = ''
    config: bool = True  # --config is added


def _config_case(text: str, *overrides: str) -> Case:
    return Case(text, tuple(overrides), in_process=True)


CASES: Tuple[Case, ...] = (
    # --- the command line -------------------------------------------------------------
    Case('no --config', config=False),
    Case('--config=configs/vp/no_such_config.py', ('--config', 'configs/vp/no_such_config.py')),
    Case('--config of a file with a syntax error', ('--config', '{T}/broken.py')),
    Case('--config of a file without get_config()', ('--config', '{T}/empty.py')),
    Case('--mode=evaluate', mode='evaluate'),
    Case('--eval-folder=x (a flag that does not exist)', ('--eval-folder=x',), mode='eval'),
    Case('an extra word: ... --mode eval now', ('now',), mode='eval'),
    Case("--config.eval.dataset=test (score_flow's README)", ('--config.eval.dataset=test',)),
    Case('--config.training.batch_sise=8 (a typo)', ('--config.training.batch_sise=8',)),
    Case('--config.training.batch_size=many', ('--config.training.batch_size=many',)),
    Case("--config.model.ch_mult='(1, 2' (unbalanced)", ('--config.model.ch_mult=(1, 2',)),
    # --- config values (validation.prepare_config) ---------------------------------------
    _config_case('--config.training.sde=vpsdee', '--config.training.sde=vpsdee'),
    _config_case('--config.training.batch_size=0', '--config.training.batch_size=0'),
    _config_case('--config.eval.batch_size=-8', '--config.eval.batch_size=-8'),
    _config_case('--config.training.log_freq=7', '--config.training.log_freq=7'),
    _config_case(
        '--config.training.likelihood_weighting=False (importance weighting on)',
        '--config.training.likelihood_weighting=False',
    ),
    _config_case(
        '--config.training.sde=subvpsde --config.training.continuous=False',
        '--config.training.sde=subvpsde',
        '--config.training.continuous=False',
    ),
    _config_case('--config.training.objective=ncsn', '--config.training.objective=ncsn'),
    _config_case('--config.model.name=unet', '--config.model.name=unet'),
    _config_case('--config.data.dataset=MNIST', '--config.data.dataset=MNIST'),
    _config_case('--config.data.num_bins=256 (DIGITS has 17 levels)', '--config.data.num_bins=256'),
    _config_case('--config.data.dataset=NPZ without data.path', '--config.data.dataset=NPZ'),
    _config_case('--config.sampling.method=euler', '--config.sampling.method=euler'),
    _config_case('--config.sampling.guided_method=ode2', '--config.sampling.guided_method=ode2'),
    _config_case('--config.sampling.predictor=rk4', '--config.sampling.predictor=rk4'),
    _config_case('--config.sampling.task=superres', '--config.sampling.task=superres'),
    _config_case('--config.eval.bpd_dataset=validation', '--config.eval.bpd_dataset=validation'),
    _config_case('--config.eval.hutchinson_type=gauss', '--config.eval.hutchinson_type=gauss'),
    _config_case('--config.eval.num_repeats=0', '--config.eval.num_repeats=0'),
    _config_case('--config.optim.lr=0', '--config.optim.lr=0'),
    _config_case('--config.optim.amsgrad=True', '--config.optim.amsgrad=True'),
    _config_case('--config.deq.filters=30 (4 attention heads)', '--config.deq.filters=30'),
    _config_case('--config.seed=-1', '--config.seed=-1'),
    Case(
        'CIFAR10 not prepared (--config.data.dataset=CIFAR10 --config.data.data_dir=T/tfds)',
        (
            '--config.data.dataset=CIFAR10',
            '--config.data.data_dir={T}/tfds',
            '--config.data.image_size=32',
            '--config.data.num_channels=3',
            '--config.data.num_bins=256',
        ),
    ),
    # --- the work directory ----------------------------------------------------------------
    Case('--workdir under a file', ('--workdir', '{T}/a_file/W')),
    Case('--workdir=nosuchscheme://bucket/W', ('--workdir', 'nosuchscheme://bucket/W')),
    Case('--coordinator_address without --num_processes', ('--coordinator_address=127.0.0.1:1',)),
    # --- what the work directory holds ------------------------------------------------------
    Case('--mode eval before any training', mode='eval'),
    Case('--mode sample before any training', mode='sample'),
    Case('--mode train_deq before any training', mode='train_deq'),
    Case(
        '--mode eval --config.eval.end_ckpt=9 (only 0 exists)',
        ('--config.eval.end_ckpt=9',),
        mode='eval',
        setup='trained',
    ),
    Case(
        '--mode eval --config.eval.begin_ckpt=3 --config.eval.end_ckpt=2',
        ('--config.eval.begin_ckpt=3', '--config.eval.end_ckpt=2'),
        mode='eval',
        setup='trained',
    ),
    Case(
        '--mode eval --config.eval.dequantizer=True (none trained)',
        ('--config.eval.dequantizer=True',),
        mode='eval',
        setup='trained',
    ),
    Case(
        '--mode eval with another eval.batch_size in an evaluated folder',
        (*FAST_EVAL, '--config.eval.batch_size=128'),
        mode='eval',
        setup='evaluated',
    ),
    Case(
        '--mode eval with eval/metrics.json cut short',
        FAST_EVAL,
        mode='eval',
        setup='truncated_metrics',
    ),
    Case(
        '--mode eval with eval/eval_meta.json cut short',
        FAST_EVAL,
        mode='eval',
        setup='truncated_meta',
    ),
    Case(
        '--mode eval of a snapshot with a truncated data file',
        FAST_EVAL,
        mode='eval',
        setup='damaged',
    ),
    Case(
        '--mode train with another network (--config.model.nf=64) in a trained W',
        ('--config.model.nf=64', *TRAIN_10),
        setup='trained',
    ),
    Case(
        '--mode sample --config.sampling.task=class_conditional (no classifier)',
        ('--config.sampling.task=class_conditional',),
        mode='sample',
        setup='trained',
    ),
    Case(
        "--mode sample --config.sampling.task=class_conditional --config.sampling.classes='(12,)'",
        ('--config.sampling.task=class_conditional', '--config.sampling.classes=(12,)'),
        mode='sample',
        setup='trained',
    ),
    Case(
        '--mode sample --config.sampling.task=inpaint --config.sampling.mask=T/mask.npy (absent)',
        ('--config.sampling.task=inpaint', '--config.sampling.mask={T}/mask.npy'),
        mode='sample',
        setup='trained',
    ),
    Case(
        '--mode sample --config.sampling.task=inpaint --config.sampling.mask=random_pixels:1.5',
        ('--config.sampling.task=inpaint', '--config.sampling.mask=random_pixels:1.5'),
        mode='sample',
        setup='trained',
    ),
    Case(
        '--mode sample --config.sampling.task=colorize (grey digits)',
        ('--config.sampling.task=colorize',),
        mode='sample',
        setup='trained',
    ),
    Case('--mode import without --original_checkpoint', mode='import'),
    Case(
        '--mode import --original_checkpoint=T/not_a_checkpoint (random bytes)',
        ('--original_checkpoint={T}/not_a_checkpoint',),
        mode='import',
    ),
    Case('one Ctrl-C (SIGINT) during training', signal=signal.SIGINT, after='step 100/'),
    Case(
        'SIGTERM during --mode eval (ODE bits/dim)',
        (),
        mode='eval',
        setup='trained',
        signal=signal.SIGTERM,
        after='Evaluating snapshots',
    ),
    Case(
        'a full disk (an 8 MB tmpfs) while writing the first checkpoint',
        TRAIN_10,
        setup='full_disk',
    ),
)


# --------------------------------------------------------------------------- running
def command(case: Case, workdir: str, scratch: str) -> List[str]:
    """The command line of ``case`` (placeholders filled in)."""
    args = [a.replace('{W}', workdir).replace('{T}', scratch) for a in case.args]
    if '--workdir' not in args:
        args = ['--workdir', workdir, *args]
    if '--config' not in args and case.config:
        args = ['--config', CONFIG, *args]
    if '--mode' not in args:
        args += ['--mode', case.mode]
    return [sys.executable, os.path.join(REPO, 'main.py'), *args]


def _env() -> Dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
    env.pop('XLA_FLAGS', None)
    return env


def run(cmd: Sequence[str], case: Case, timeout: float = 900) -> Tuple[int, str, float]:
    """(exit code, stderr, seconds) of ``cmd``; a signal case gets its signal once its
    ``after`` text is printed."""
    start = time.time()
    with tempfile.TemporaryFile('w+') as err:
        process = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err, text=True
        )
        if case.signal is not None:
            while case.after not in _read(err) and process.poll() is None:
                time.sleep(0.2)
            start = time.time()
            process.send_signal(case.signal)
        code = process.wait(timeout=timeout)
        return code, _read(err), time.time() - start


def _read(f) -> str:
    f.seek(0)
    return f.read()


def first_line(stderr: str) -> str:
    """The line a user reads: the first 'Error: …' or 'Interrupted …' line, else the first
    warning, else the last line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    for prefix in ('Error: ', 'Interrupted '):
        for line in lines:
            if line.startswith(prefix):
                return line
    for line in lines:  # a warning of the project's own code
        match = _ABSL_WARNING.match(line)
        if match and os.path.isfile(os.path.join(REPO, match.group(1))):
            return match.group(2)
    return lines[-1] if lines else ''


_ABSL_WARNING = re.compile(r'^W\d{4} [\d:.]+ +\d+ ([\w/]+\.py):\d+\] (.*)$')


def normalise(text: str, workdir: str, scratch: str) -> str:
    """``text`` with the work directory as W, the scratch folder as T, no repository
    prefix and no time stamps."""
    text = text.replace(workdir, 'W').replace(scratch, 'T').replace(REPO + '/', '')
    return _STAMP.sub('<time>', text)


_STAMP = re.compile(r'\d{8}-\d{6}')


# --------------------------------------------------------------------------- setups
def _fingerprint(folder: str) -> Dict[str, str]:
    """relative path → sha1 of every file under ``folder``."""
    out = {}
    for path in glob.glob(os.path.join(folder, '**'), recursive=True):
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


def nothing_lost(before: Dict[str, str], workdir: str, log_before: bytes) -> bool:
    """Every file's content is still under ``workdir``; stdout.txt only grew."""
    after = _fingerprint(workdir) if os.path.isdir(workdir) else {}
    kept = set(after.values())
    for path, digest in before.items():
        if path == 'stdout.txt':
            with open(os.path.join(workdir, path), 'rb') as f:
                if not f.read().startswith(log_before):
                    return False
        elif digest not in kept:
            return False
    return True


def _truncate(path: str) -> None:
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[: len(data) // 2])


class Setups:
    """Prepared work directories, made once and copied for each case."""

    def __init__(self, scratch: str):
        self.scratch = scratch
        self.trained = os.path.join(scratch, 'trained')
        self.evaluated = os.path.join(scratch, 'evaluated')

    def prepare_scratch(self, train: bool = True) -> None:
        """The scratch files; with ``train``, the trained and evaluated models too."""
        os.makedirs(os.path.join(self.scratch, 'tfds'), exist_ok=True)
        with open(os.path.join(self.scratch, 'broken.py'), 'w') as f:
            f.write('def get_config(:\n')
        with open(os.path.join(self.scratch, 'empty.py'), 'w') as f:
            f.write('"""No get_config here."""\n')
        with open(os.path.join(self.scratch, 'a_file'), 'w') as f:
            f.write('not a folder\n')
        with open(os.path.join(self.scratch, 'not_a_checkpoint'), 'wb') as f:
            f.write(os.urandom(4096))
        if not train:
            return
        self._main(self.trained, 'train', TRAIN_10)
        shutil.copytree(self.trained, self.evaluated)
        self._main(self.evaluated, 'eval', FAST_EVAL)

    def _main(self, workdir: str, mode: str, extra: Sequence[str]) -> None:
        cmd = [
            sys.executable,
            os.path.join(REPO, 'main.py'),
            '--config',
            CONFIG,
            '--workdir',
            workdir,
            '--mode',
            mode,
            *extra,
        ]
        subprocess.run(cmd, cwd=REPO, env=_env(), check=True, capture_output=True)

    def make(self, setup: str, workdir: str) -> Optional[str]:
        """Prepares ``workdir``; a reason if this setup cannot be made here."""
        if setup == 'empty':
            return None
        if setup == 'full_disk':
            os.makedirs(workdir)
            mount = ['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', workdir]
            if subprocess.run(mount, capture_output=True).returncode:
                return 'needs a tmpfs mount (root)'
            return None
        source = self.trained if setup in ('trained', 'damaged') else self.evaluated
        shutil.copytree(source, workdir)
        if setup == 'truncated_metrics':
            _truncate(os.path.join(workdir, 'eval', 'metrics.json'))
        elif setup == 'truncated_meta':
            _truncate(os.path.join(workdir, 'eval', 'eval_meta.json'))
        elif setup == 'damaged':
            data = glob.glob(
                os.path.join(workdir, 'checkpoints', '0', '**', 'd', '*'), recursive=True
            )
            _truncate(max(data, key=os.path.getsize))
        return None

    @staticmethod
    def clean(setup: str, workdir: str) -> None:
        if setup == 'full_disk':
            subprocess.run(['umount', workdir], capture_output=True)


# --------------------------------------------------------------------------- the table
HEADER = (
    '| # | input | exit | first line of the message | s | nothing lost |\n'
    '|---|---|---|---|---|---|\n'
)


def _cell(text: str) -> str:
    return text.replace('|', '\\|')


def row(number: int, case: Case, code, message: str, seconds, kept) -> str:
    return f'| {number} | {_cell(case.text)} | {code} | {_cell(message)} | {seconds} | {kept} |\n'


def run_case(number: int, case: Case, setups: Setups, root: str) -> str:
    workdir = os.path.join(root, f'case{number}', 'W')
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    reason = setups.make(case.setup, workdir)
    if reason:
        return row(number, case, '–', f'(not run: {reason})', '–', '–')
    before = _fingerprint(workdir) if os.path.isdir(workdir) else {}
    log = os.path.join(workdir, 'stdout.txt')
    log_before = open(log, 'rb').read() if os.path.exists(log) else b''
    try:
        code, err, seconds = run(command(case, workdir, setups.scratch), case)
        kept = 'yes' if nothing_lost(before, workdir, log_before) else '**no**'
    finally:
        setups.clean(case.setup, workdir)
    message = normalise(first_line(err), workdir, setups.scratch)
    return row(number, case, code, message, f'{seconds:.1f}', kept)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default=TABLE)
    parser.add_argument('--only', default='', help='comma-separated case numbers')
    args = parser.parse_args(argv)
    only = {int(n) for n in args.only.split(',') if n}
    with tempfile.TemporaryDirectory() as root:
        setups = Setups(os.path.join(root, 'T'))
        os.makedirs(setups.scratch)
        chosen = [c for n, c in enumerate(CASES, 1) if not only or n in only]
        setups.prepare_scratch(train=any(c.setup not in ('empty', 'full_disk') for c in chosen))
        rows = []
        for number, case in enumerate(CASES, 1):
            if only and number not in only:
                continue
            rows.append(run_case(number, case, setups, root))
            print(rows[-1], end='', flush=True)
    with open(args.out, 'w', encoding='utf-8') as f:
        f.write(TABLE_INTRO + HEADER + ''.join(rows))


TABLE_INTRO = """# Bad inputs

What a new user may get wrong, run through `main.py` with the README's DIGITS command
(`python main.py --config configs/vp/digits_lw_is.py --workdir W --mode …`) by
`python scripts/bad_inputs.py` (2 CPU cores shared with other jobs, so the seconds are
upper bounds; most of them is Python importing JAX, TensorFlow and the project).
`W` is the work directory, prepared first: empty, or a DIGITS model trained for 10 steps
(snapshot 0), evaluated once, or damaged as the input says. *Nothing lost*: every file
that was in `W` before is still there with the same content (a broken `metrics.json` is
renamed aside, not deleted) and `stdout.txt` only grew. Exit 1 is a problem the user can
fix (one line, no traceback), 130 / 143 a run stopped by SIGINT / SIGTERM (resumable), 0
a problem repaired on the way. `tests/test_bad_inputs.py` checks the cheap rows again.

"""


if __name__ == '__main__':
    main()
