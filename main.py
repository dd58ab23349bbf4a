"""Command line: train, evaluate, train the variational dequantizer or the noise-conditional
classifier, sample (unconditional, class-conditional, inpainting, colorization), import a
checkpoint of the original score_sde / score_flow code.

    python main.py --config configs/vp/digits_lw_is.py --workdir W --mode train
    python main.py --config configs/vp/digits_lw_is.py --workdir W --mode eval \
        [--eval_folder eval] [--config.eval.begin_ckpt=5 ...]
    python main.py --config configs/vp/digits_lw_is.py --workdir W --mode train_deq \
        [--deq_folder flowpp_dequantizer]
    python main.py --config configs/vp/digits_lw_is.py --workdir W --mode train_classifier
    python main.py --config configs/vp/digits_lw_is.py --workdir W --mode sample \
        --config.sampling.task=class_conditional [--sample_folder sample] \
        [--config.eval.end_ckpt=-1]    # the snapshot sampled from; -1: the newest
    python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --workdir W --mode import \
        --original_checkpoint=PATH/checkpoints/checkpoint_26 [--snapshot_number=26]

Every config field can be overridden as ``--config.<section>.<field>=value``. Logs go to
the console and to ``W/stdout.txt``; the resolved config is written to ``W/config.json``
(``W/<eval_folder>/config.json`` for evaluation). A problem the user can fix (bad config,
missing data or checkpoint, unwritable work directory, diverged training) prints one
message without a traceback and exits with status 1; one Ctrl-C (SIGINT) or SIGTERM ends
any mode at once with one line (``interrupts``), exit status 130 / 143.

Multi-host (GPU clusters, TPU pods): start the same command on every host with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=i``, or with
``--multihost`` where JAX finds the cluster itself (TPU pods, SLURM, Open MPI).
"""

from __future__ import annotations

import interrupts

if __name__ == '__main__':  # before the slow imports below: a Ctrl-C there is one line too
    interrupts.install()

import errno
import logging as py_logging
import os
import re
import sys
from typing import List, Optional, Tuple

import jax
from absl import app, flags, logging
from ml_collections import config_flags

import file_io
import progress
import run_lib
import validation
from configs.base import get_base_config
from errors import UserError

FLAGS = flags.FLAGS
MODES = ('train', 'eval', 'train_deq', 'train_classifier', 'sample', 'import')
EVAL_FOLDER, SCORE_FLOW_EVAL_FOLDER = 'eval', 'eval_test_bpd'

config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory: checkpoints, logs, samples, results.')
flags.DEFINE_enum('mode', None, list(MODES), 'Running mode: ' + ', '.join(MODES) + '.')
flags.DEFINE_string(
    'eval_folder',
    None,
    'Folder of W for evaluation results; default as the original code of the config: '
    f'{SCORE_FLOW_EVAL_FOLDER!r} (ScoreFlow) for config files under configs/score_flow/, '
    f'{EVAL_FOLDER!r} (Score SDE) otherwise.',
)
flags.DEFINE_string(
    'classifier_folder', 'classifier', 'Folder of W for the noise-conditional classifier.'
)
flags.DEFINE_string(
    'sample_folder',
    'sample',
    'Folder of W for --mode sample outputs; the score model is snapshot '
    'config.eval.end_ckpt (-1: the newest, the default of DIGITS, PHOTOS and TOY).',
)
flags.DEFINE_string(
    'deq_folder',
    'flowpp_dequantizer',
    'Folder of W for the variational dequantizer (--mode train_deq; read by --mode eval '
    'with --config.eval.dequantizer=True).',
)
flags.DEFINE_string(
    'original_checkpoint',
    None,
    '--mode import: a checkpoint_<n> file of the original score_sde / score_flow code, '
    "written as snapshot W/checkpoints/<n> (score_flow's dequantizer: into --deq_folder).",
)
flags.DEFINE_integer(
    'snapshot_number', -1, '--mode import: the snapshot to write (-1: the n of checkpoint_<n>).'
)
flags.DEFINE_string(
    'coordinator_address',
    None,
    'Multi-host: HOST:PORT of process 0 for jax.distributed.initialize.',
)
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_boolean(
    'multihost', False, 'Multi-host with cluster auto-detection (TPU pods, SLURM, Open MPI).'
)
flags.DEFINE_integer(
    'distributed_timeout', 300, 'Seconds to wait for all processes to join (multi-host).'
)
flags.mark_flags_as_required(['config', 'workdir', 'mode'])


class _NoOrbaxInfo(py_logging.Filter):
    """Keeps orbax's per-save INFO chatter out of the console and stdout.txt."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def _bad_override(argv) -> str:
    """The first ``--config.a.b=...`` of ``argv`` that names no field of the schema."""
    schema = get_base_config()
    for arg in argv:
        if not arg.startswith('--config.'):
            continue
        node = schema
        for name in arg[len('--config.') :].split('=')[0].split('.'):
            if not hasattr(node, 'keys') or name not in node:
                return arg
            node = node[name]
    return ''


def _without_traceback(message: str) -> str:
    """'first line: last line (at file, line n)' of a message that embeds a traceback."""
    if 'Traceback (most recent call last)' not in message:
        return message
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    where = [
        ln
        for ln in lines
        if ln.startswith('File "') and 'site-packages' not in ln and '<frozen' not in ln
    ]
    at = f' ({where[-1]})' if where else ''
    return f'{lines[0]} {lines[-1]}{at}'


_EXAMPLE_CONFIG = 'configs/vp/digits_lw_is.py'


def _config_file_message(argv, message: str) -> str:
    """``message`` of a config file that does not load (a syntax error, no get_config),
    naming the file and the fix."""
    paths = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
    paths += [b for a, b in zip(argv, argv[1:]) if a == '--config']
    return _not_loaded(paths[-1], message) if paths else message


def _not_loaded(path: str, detail: str) -> str:
    return (
        f'--config={path} could not be loaded ({detail}); fix the file (it must '
        f'define get_config()) or pass a config file such as {_EXAMPLE_CONFIG}.'
    )


def parse_flags(argv):
    """absl parsing, with one clear line (no traceback) for bad flags and overrides."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        message = _without_traceback(str(e))
    except Exception as e:  # ml_collections raises plain errors for bad overrides
        message = _config_file_message(argv, f'{type(e).__name__}: {e}')
    bad = _bad_override(argv)
    if 'Flag --config must have a value other than None' in message:
        message = f'no --config given; pass a config file, e.g. --config {_EXAMPLE_CONFIG}'
    elif bad:
        flag = bad.split('=')[0]
        hint = validation.did_you_mean(flag[len('--config.') :])
        hint = f' (did you mean --config.{hint}?)' if hint else ''
        message = (
            f'{flag} is not a config field{hint}; correct its name (every '
            f'field is listed in configs/base.py)'
        )
    print(f'Error: {message}\nPass --helpshort to see the flags.', file=sys.stderr)
    sys.exit(1)


def _load_config():
    """The config of ``--config`` (with overrides); UserError if the file does not load."""
    try:
        config = FLAGS.config
        config.keys()  # a config that failed to load raises on first use
        return config
    except Exception as e:  # ml_collections reports load failures on first access
        path = config_flags.get_config_filename(FLAGS['config'])
        cause = e.__cause__ or e
        detail = str(cause).strip().splitlines()[-1].strip()
        raise UserError(_not_loaded(path, f'{type(cause).__name__}: {detail}')) from None


def _initialize_distributed() -> None:
    """``jax.distributed.initialize`` when asked to; a no-op on a single host."""
    if not (FLAGS.coordinator_address or FLAGS.multihost):
        return
    kwargs = {'initialization_timeout': FLAGS.distributed_timeout}
    if FLAGS.coordinator_address:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise UserError(
                '--coordinator_address needs --num_processes and --process_id '
                '(the same command on every host, process_id 0 … N−1).'
            )
        kwargs.update(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    jax.distributed.initialize(**kwargs)


def _prepare_workdir(workdir: str) -> None:
    """Creates ``workdir`` (a local path or a URL such as gs://bucket/W) and checks it is
    writable, or raises UserError."""
    try:
        file_io.makedirs(workdir)
        probe = os.path.join(workdir, f'.write_test_{os.getpid()}')
        file_io.atomic_write(probe, b'ok')
        file_io.remove(probe)
    except OSError as e:
        raise UserError(
            f'--workdir={workdir} is not a writable directory ({e.strerror or e}); '
            'choose another --workdir.'
        ) from None


_ERRORS = py_logging.getLogger('scoreflow.user_errors')  # to stdout.txt only
_ERRORS.propagate = False
_ERRORS.addHandler(py_logging.NullHandler())  # no console fallback: main prints it


def _log_to_file(path: str) -> None:
    """Appends every log record to ``path`` (``W/stdout.txt``) besides the console."""
    handler = file_io.LogFileHandler(path)
    handler.setFormatter(
        py_logging.Formatter('%(levelname)s %(asctime)s %(filename)s:%(lineno)d] %(message)s')
    )
    root = py_logging.getLogger()
    root.addHandler(handler)
    _ERRORS.addHandler(handler)
    for h in root.handlers + [logging.get_absl_handler()]:
        h.addFilter(_NoOrbaxInfo())
    logging.set_verbosity(logging.INFO)


def run(argv) -> None:
    """Runs ``--mode`` with the parsed flags; UserErrors propagate to ``main``."""
    if len(argv) > 1:
        raise UserError(f'Unexpected arguments {argv[1:]}; flags look like --name=value.')
    _initialize_distributed()
    workdir, mode = FLAGS.workdir, FLAGS.mode
    if jax.process_index() == 0:
        _prepare_workdir(workdir)
        _log_to_file(os.path.join(workdir, 'stdout.txt'))
    logging.info(
        'scoreflow %s: config %s, workdir %s, %d devices on %d hosts.',
        mode,
        config_flags.get_config_filename(FLAGS['config']),
        workdir,
        jax.device_count(),
        jax.process_count(),
    )
    config = _load_config()
    for level, line in config_sources(config_flags.get_config_filename(FLAGS['config'])):
        logging.log(level, '%s', line)
    progress.set_where(f'the start of --mode {mode} (nothing computed yet)')
    if mode == 'train':
        run_lib.train(config, workdir)
    elif mode == 'eval':
        eval_folder = eval_folder_for(
            FLAGS.eval_folder, config_flags.get_config_filename(FLAGS['config'])
        )
        _prepare_subfolder(workdir, eval_folder)
        logging.info('Evaluation results go to %s.', os.path.join(workdir, eval_folder))
        run_lib.evaluate(config, workdir, eval_folder, FLAGS.deq_folder)
    elif mode == 'train_deq':
        _prepare_subfolder(workdir, FLAGS.deq_folder)
        run_lib.train_deq(config, workdir, FLAGS.deq_folder)
    elif mode == 'train_classifier':
        _prepare_subfolder(workdir, FLAGS.classifier_folder)
        run_lib.train_classifier(config, workdir, FLAGS.classifier_folder)
    elif mode == 'import':
        if not FLAGS.original_checkpoint:
            raise UserError(
                '--mode import needs --original_checkpoint=PATH, a checkpoint_<n> file of '
                'score_sde or score_flow.'
            )
        run_lib.import_checkpoint(
            config, workdir, FLAGS.original_checkpoint, FLAGS.snapshot_number, FLAGS.deq_folder
        )
    else:
        _prepare_subfolder(workdir, FLAGS.sample_folder)
        run_lib.sample(config, workdir, FLAGS.sample_folder, FLAGS.classifier_folder)


def config_sources(config_path: str, modules=None) -> List[Tuple[int, str]]:
    """(log level, line) naming the file of every ``configs.default_*_configs`` module the
    config file was built on (``modules``: ``sys.modules`` after loading it), and warning
    about a copy of one beside the config file that Python did not import: a config file
    copied elsewhere imports the defaults of this repository, as the originals' did
    theirs, so an edited copy of a defaults file would silently not count."""
    modules = sys.modules if modules is None else modules
    lines = []
    for name in sorted(modules):
        file = getattr(modules[name], '__file__', None)
        if not (_DEFAULTS.fullmatch(name) and file):
            continue
        lines.append((logging.INFO, f'Config defaults: {name}.get_default_configs from {file}.'))
        copy = _copy_beside(config_path, name.rsplit('.', 1)[1] + '.py')
        if copy and os.path.realpath(copy) != os.path.realpath(file):
            lines.append(
                (
                    logging.WARNING,
                    f'{copy} is not used: the config file imports {name} from {file}. Edit '
                    'that file, or give the copy a module name of its own and import that.',
                )
            )
    return lines


_DEFAULTS = re.compile(r'configs\.default_\w+_configs')


def _copy_beside(config_path: str, filename: str) -> Optional[str]:
    """The nearest ``<folder>/filename`` in a folder above the config file, if any."""
    folder = os.path.dirname(os.path.abspath(str(config_path)))
    while True:
        candidate = os.path.join(folder, filename)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def eval_folder_for(flag: Optional[str], config_path: str) -> str:
    """``--eval_folder`` if given, else the default of the original the config file comes
    from: score_flow's main.py writes to ``eval_test_bpd``, score_sde's to ``eval``."""
    if flag is not None:
        return flag
    parts = os.path.normpath(str(config_path)).split(os.sep)
    return SCORE_FLOW_EVAL_FOLDER if 'score_flow' in parts else EVAL_FOLDER


# Folders this start created: a run that stops with a UserError removes them while empty.
_CREATED: List[str] = []


def _prepare_subfolder(workdir: str, folder: str) -> None:
    if jax.process_index() == 0:
        path = os.path.join(workdir, folder)
        if not file_io.exists(path):
            _CREATED.append(path)
        _prepare_workdir(path)


def _remove_empty_created_folders() -> None:
    """A start that failed leaves nothing behind: the folders it created, if still empty."""
    for path in reversed(_CREATED):
        if not file_io.is_url(path) and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


def _log_interruption(line: str) -> None:
    """The interrupted run's line in ``W/stdout.txt``, flushed (the process ends next)."""
    _ERRORS.warning(line)
    for handler in _ERRORS.handlers:
        handler.flush()


def main(argv) -> None:
    interrupts.install()
    interrupts.describe_position_with(progress.where)
    interrupts.log_with(_log_interruption)
    try:
        try:
            run(argv)
        except OSError as e:  # a full disk outside a checkpoint (which says so itself)
            if e.errno != errno.ENOSPC:
                raise
            raise UserError(
                f'No space left on the disk of {e.filename or FLAGS.workdir} ({e.strerror}); '
                'what was finished is kept: free some space and rerun the same command to '
                'continue.'
            ) from None
    except UserError as e:
        _remove_empty_created_folders()
        _ERRORS.error('Error: %s', e)
        print(f'Error: {e}', file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
