"""Train-state checkpoints with orbax: snapshots for evaluation, preemption saves to resume.

A work directory ``W`` holds two folders, both managed by ``orbax.checkpoint``:

- ``W/checkpoints/<i>``: snapshot ``i`` of the full train state, saved at step
  ``i · snapshot_freq`` (the original code's ``checkpoint_<i>``); all are kept.
  ``--mode eval`` reads these (``config.eval.begin_ckpt .. end_ckpt``).
- ``W/checkpoints-meta/<step>``: the latest preemption saves, numbered by the training
  step itself; the newest two are kept. ``--mode train`` resumes from the newest.

Every save writes the full ``TrainState`` (step, params, ema_params, opt_state, rng) into
``<n>.orbax-checkpoint-tmp-*`` and renames it when complete, after writing
``commit_success.txt`` inside: a step folder without that marker, or a leftover tmp
folder, is an interrupted save; it is skipped with a warning (writers move it aside to
``<n>.incomplete-<time>`` or let orbax delete the tmp folder) and never crashes a run.
Problems the user must act on (missing, corrupt or incompatible checkpoints) raise
:class:`errors.UserError` naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging as logging_std
import os
import re
import shutil
import sys
import time
from typing import Any, Iterable, Iterator, List, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

import file_io
from errors import UserError

SNAPSHOT_DIR = 'checkpoints'
PREEMPTION_DIR = 'checkpoints-meta'
PREEMPTION_KEEP = 2
COMMIT_MARKER = 'commit_success.txt'
_STEP_RE = re.compile(r'^\d+$')
_TMP_RE = re.compile(r'^\d+\.orbax-checkpoint-tmp')


def snapshot_dir(workdir: str) -> str:
    """``W/checkpoints``: snapshots numbered ``step // snapshot_freq``."""
    return os.path.join(file_io.abspath(workdir), SNAPSHOT_DIR)


def preemption_dir(workdir: str) -> str:
    """``W/checkpoints-meta``: preemption saves numbered by step."""
    return os.path.join(file_io.abspath(workdir), PREEMPTION_DIR)


def checkpoint_path(workdir: str, number: int) -> str:
    """The folder of snapshot ``number``."""
    return os.path.join(snapshot_dir(workdir), str(int(number)))


# --- listing ------------------------------------------------------------------------


def _scan(directory: str) -> tuple[List[int], List[str]]:
    """Complete step numbers (sorted) and the names of interrupted saves in ``directory``."""
    if not file_io.isdir(directory):
        return [], []
    complete, partial = [], []
    for name in file_io.listdir(directory):
        path = os.path.join(directory, name)
        if _STEP_RE.match(name) and file_io.isdir(path):
            if file_io.exists(os.path.join(path, COMMIT_MARKER)):
                complete.append(int(name))
            else:
                partial.append(name)
        elif _TMP_RE.match(name):
            partial.append(name)
    return sorted(complete), sorted(partial)


def _complete_steps(directory: str) -> List[int]:
    """Complete step numbers in ``directory``, warning once per call about partial ones."""
    complete, partial = _scan(directory)
    for name in partial:
        logging.warning(
            'Skipping incomplete checkpoint %s (an interrupted save).',
            os.path.join(directory, name),
        )
    return complete


def list_checkpoints(workdir: str) -> List[int]:
    """Numbers of the complete snapshots in ``W/checkpoints``, ascending."""
    return _complete_steps(snapshot_dir(workdir))


def list_preemption_checkpoints(workdir: str) -> List[int]:
    """Steps of the complete preemption checkpoints in ``W/checkpoints-meta``, ascending."""
    return _complete_steps(preemption_dir(workdir))


def wait_for_checkpoint(workdir: str, number: int, timeout_s: float, poll_s: float = 5.0) -> bool:
    """Waits up to ``timeout_s`` seconds for snapshot ``number`` to be complete."""
    deadline = time.monotonic() + max(float(timeout_s), 0.0)
    while True:
        if int(number) in _scan(snapshot_dir(workdir))[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.01)))


# --- managers -------------------------------------------------------------------------


def _set_aside_partial_steps(directory: str) -> None:
    """Renames step folders without a commit marker so orbax neither lists nor reuses them.

    Runs on process 0 only; orbax removes leftover tmp folders itself
    (``cleanup_tmp_directories``).
    """
    if jax.process_index() != 0 or not file_io.isdir(directory):
        return
    for name in _scan(directory)[1]:
        path = os.path.join(directory, name)
        if _STEP_RE.match(name):
            aside = f'{path}.incomplete-{time.strftime("%Y%m%d-%H%M%S")}'
            logging.warning('Moving incomplete checkpoint %s aside to %s.', path, aside)
            file_io.rename(path, aside)
        else:
            logging.warning('Removing interrupted save %s.', path)


def _sync(name: str) -> None:
    """Barrier across processes (no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _manager(directory: str, keep: Optional[int], write: bool) -> Iterator[ocp.CheckpointManager]:
    """A synchronous orbax manager over ``directory``; writers first tidy partial saves."""
    if write:
        _set_aside_partial_steps(directory)
        _sync(f'checkpointing:tidy:{directory}')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=write,
        cleanup_tmp_directories=write,
        enable_async_checkpointing=False,
    )
    mngr = ocp.CheckpointManager(
        directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )
    try:
        yield mngr
    finally:
        mngr.close()


def _writable(directory: str) -> None:
    """Raises UserError if ``directory`` cannot be created or written."""
    try:
        file_io.makedirs(directory)
    except OSError as e:
        raise UserError(
            f'Cannot create checkpoint folder {directory} ({e.strerror}); '
            'choose a writable --workdir.'
        ) from e
    if not file_io.is_url(directory) and not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(
            f'Checkpoint folder {directory} is not writable; '
            'fix its permissions or choose another --workdir.'
        )


def _save(directory: str, number: int, state: Any, keep: Optional[int]) -> str:
    """Saves ``state`` as step ``number`` of ``directory`` (skipped if it exists). A full
    disk is one UserError, with the partial save removed."""
    _writable(directory)
    path = os.path.join(directory, str(int(number)))
    failure = None
    with _manager(directory, keep, write=True) as mngr:
        if int(number) in mngr.all_steps():
            logging.info('Checkpoint %s exists; not overwritten.', path)
            return path
        try:
            with _quiet_no_space_logs():
                mngr.save(int(number), args=ocp.args.StandardSave(state))
                mngr.wait_until_finished()
        except Exception as e:
            if not _no_space(e):
                raise
            failure = e
    if failure is not None:
        _remove_partial_save(directory, number)
        raise UserError(_no_space_message(directory, number)) from None
    logging.info('Saved checkpoint %s.', path)
    return path


_NO_SPACE = ('No space left on device', "os_error_code='28'")


def _no_space(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a full disk (ENOSPC), as OSError or as
    tensorstore's RESOURCE_EXHAUSTED."""
    return any(
        getattr(c, 'errno', None) == errno.ENOSPC or any(t in str(c) for t in _NO_SPACE)
        for c in _chain(e)
    )


class _NoSpaceRecords(logging_std.Filter):
    def filter(self, record: logging_std.LogRecord) -> bool:
        return not any(t in record.getMessage() for t in _NO_SPACE)


@contextlib.contextmanager
def _quiet_no_space_logs() -> Iterator[None]:
    """Keeps orbax's logged tracebacks of a full disk (from its writer threads) out of the
    output while saving: the save then fails with one line instead."""
    logger, record_filter = logging_std.getLogger('absl'), _NoSpaceRecords()
    logger.addFilter(record_filter)
    try:
        yield
    finally:
        logger.removeFilter(record_filter)


def _remove_partial_save(directory: str, number: int) -> None:
    """Removes what an interrupted save of ``number`` wrote (process 0; nothing else)."""
    if jax.process_index() != 0 or not file_io.isdir(directory):
        return
    for name in file_io.listdir(directory):
        is_tmp = name.startswith(f'{int(number)}.orbax-checkpoint-tmp')
        is_uncommitted = name == str(int(number)) and not file_io.exists(
            os.path.join(directory, name, COMMIT_MARKER)
        )
        if is_tmp or is_uncommitted:
            epath.Path(os.path.join(directory, name)).rmtree()


def _no_space_message(directory: str, number: int) -> str:
    free = ''
    if not file_io.is_url(directory):
        free = f' ({shutil.disk_usage(directory).free / 2**20:.1f} MB free now)'
    return (
        f'No space left on the disk of {directory}{free} while writing checkpoint {number}; '
        'nothing older was touched and the partial save was removed. Free some space and '
        'rerun the same command to continue.'
    )


def save_snapshot(workdir: str, number: int, state: Any) -> str:
    """Saves snapshot ``number`` (= step // snapshot_freq) to ``W/checkpoints``; all kept.

    Call on every process; returns the checkpoint folder.
    """
    return _save(snapshot_dir(workdir), number, state, keep=None)


def save_preemption(workdir: str, state: Any, keep: int = PREEMPTION_KEEP) -> str:
    """Saves a preemption checkpoint numbered by ``state.step``; keeps the newest ``keep``."""
    step = int(jax.device_get(state.step))
    return _save(preemption_dir(workdir), step, state, keep=keep)


# --- restoring --------------------------------------------------------------------------


def _restore(directory: str, number: int, template: Any, hint: str, fix: str) -> Any:
    """Restores step ``number`` of ``directory`` into the structure of ``template``.

    The stored tree (names and shapes) is compared with ``template`` first, so that a
    checkpoint of another model gives one clear message instead of orbax's read errors
    (``hint``: what to do then); a damaged one names the file or array that cannot be read
    (``fix``: what to do then).
    """
    path = os.path.join(directory, str(int(number)))
    _silence_abandoned_reads()
    with _manager(directory, None, write=False) as mngr:
        try:
            stored = mngr.item_metadata(int(number))
        except Exception as e:  # orbax raises many kinds on damaged metadata
            raise _corrupt(path, e, fix) from e
        difference = _tree_difference(stored, template)
        if difference:
            raise UserError(
                f'Checkpoint {path} does not match the model and optimizer of '
                f'this config ({difference}). {hint}'
            )
        try:
            return mngr.restore(int(number), args=ocp.args.StandardRestore(template))
        except Exception as e:
            raise _corrupt(path, e, fix) from e


def _tree_difference(stored: Any, template: Any) -> str:
    """The first difference between stored metadata and ``template`` ('' if none)."""
    if stored is None:
        return 'no readable metadata'
    have = ocp.tree.to_flat_dict(stored, sep='.')
    want = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(template, keep_empty_nodes=True), sep='.')

    def order(names):  # parameters first: the most telling difference
        return sorted(names, key=lambda n: (not n.startswith('params.'), n))

    for name in order(set(want) - set(have)):
        return f'{name} is not in the checkpoint'
    for name in order(set(have) - set(want)):
        return f'the checkpoint has {name}, which this config does not'
    for name in order(want):
        shape_have = tuple(getattr(have[name], 'shape', ()) or ())
        shape_want = tuple(getattr(want[name], 'shape', ()) or ())
        if shape_have != shape_want:
            return f'{name} has shape {shape_have} in the checkpoint, {shape_want} here'
    return ''


class _AbandonedReads(logging_std.Filter):
    """Matches asyncio's 'Task exception was never retrieved' for orbax's abandoned reads."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return 'exception was never retrieved' not in str(record.msg)


def _silence_abandoned_reads() -> None:
    """Keeps the reports of reads still in flight when a restore fails out of the output.

    On a damaged checkpoint orbax raises on the first failed read and closes its event
    loop while tensorstore completes the others; they then report 'Event loop is closed'
    (unraisable) and 'Task exception was never retrieved' (asyncio's log), burying the
    one clear message under tracebacks. Other errors still print.
    """
    previous = sys.unraisablehook
    if getattr(previous, 'scoreflow_filter', False):
        return

    def hook(unraisable) -> None:
        if not (
            isinstance(unraisable.exc_value, RuntimeError)
            and 'Event loop is closed' in str(unraisable.exc_value)
        ):
            previous(unraisable)

    hook.scoreflow_filter = True
    sys.unraisablehook = hook
    logging_std.getLogger('asyncio').addFilter(_AbandonedReads())


def _first_line(e: BaseException) -> str:
    """The start of an exception's message, without tensorstore's spec dump."""
    text = ' '.join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    for cut in (' [tensorstore_spec', ' See full TensorStore details'):
        text = text.split(cut)[0]
    return text[:240] or type(e).__name__


_LOCAL_FILE = re.compile(r'local file "([^"]+)"')
_ARRAY = re.compile(r'Error reading "([^"/]+)')
_TAGS = re.compile(r'\s*\[(source locations|tensorstore_spec|os_error_code)=.*?\]')
_JSON_FILES = ('_CHECKPOINT_METADATA', '_METADATA', '_sharding', 'process_0')


def _chain(e: BaseException) -> List[BaseException]:
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _damage(path: str, e: BaseException) -> str:
    """What in checkpoint ``path`` cannot be read: the file, else the array (OCDBT packs
    arrays into data files without names) and why, without tensorstore's spec dump."""
    for cause in reversed(_chain(e)):  # the innermost message names the most
        text = ' '.join(str(cause).split())
        files = _LOCAL_FILE.findall(text)
        if not files:
            continue
        array = _ARRAY.search(text)
        reason = _TAGS.sub('', text.rsplit('": ', 1)[-1])[:200]
        if not files[-1].endswith('/'):
            return f'its file {files[-1]} cannot be read ({reason})'
        stored = f'the stored data of {array.group(1)}' if array else 'its stored data'
        return f'{stored} under {files[-1]} cannot be read ({reason})'
    for bad in _unparsable_json(path):
        return f'its file {bad} is not valid JSON'
    return f'{type(e).__name__}: {_first_line(e)}'


def _unparsable_json(path: str) -> Iterator[str]:
    """The checkpoint's JSON metadata files that do not parse."""
    for folder, _, files in file_io.walk(path):
        for name in files:
            if name in _JSON_FILES:
                file = os.path.join(folder, name)
                try:
                    json.loads(file_io.read_bytes(file))
                except (ValueError, OSError):
                    yield file


def _corrupt(path: str, e: BaseException, fix: str) -> UserError:
    return UserError(f'Checkpoint {path} is damaged: {_damage(path, e)}. {fix}')


def resolve_snapshot(workdir: str, number: int, field: str = 'eval.end_ckpt') -> int:
    """``number``, or for a negative one (−1: "the newest") the newest complete snapshot of
    ``W/checkpoints``; UserError if there is none yet (``field`` names the setting)."""
    if int(number) >= 0:
        return int(number)
    available = list_checkpoints(workdir)
    if not available:
        raise UserError(
            f'{snapshot_dir(workdir)} holds no snapshot yet (config.{field}={int(number)} '
            'asks for the newest); train first with --mode train and the same config and '
            '--workdir, or pass the --workdir of a trained run.'
        )
    return available[-1]


def _missing_message(workdir: str, number: int, timeout_s: float) -> str:
    directory = snapshot_dir(workdir)
    complete, partial = _scan(directory)
    state = 'is an incomplete save' if str(int(number)) in partial else 'does not exist'
    waited = f' after waiting {timeout_s:g} s (eval.ckpt_timeout)' if timeout_s > 0 else ''
    return (
        f'Checkpoint {checkpoint_path(workdir, number)} {state}{waited}; available checkpoints '
        f'in {directory}: {complete or "none"}. Train longer (--mode train), set '
        '--config.eval.begin_ckpt/end_ckpt to available numbers (-1: the newest), or raise '
        '--config.eval.ckpt_timeout to wait for a running training.'
    )


def require_snapshots(workdir: str, numbers: Iterable[int]) -> None:
    """UserError naming the first of ``numbers`` that is not a complete snapshot now."""
    complete = set(_scan(snapshot_dir(workdir))[0])
    for number in numbers:
        if int(number) not in complete:
            raise UserError(_missing_message(workdir, number, 0.0))


def restore_checkpoint(
    workdir: str, number: int, template_state: Any, timeout_s: float = 0.0
) -> Any:
    """Restores snapshot ``number`` of ``W/checkpoints`` in the structure (and shardings)
    of ``template_state``, waiting up to ``timeout_s`` seconds for it to be written (a
    training still running); UserError if it is missing, incomplete, corrupt or
    incompatible.
    """
    directory = snapshot_dir(workdir)
    if timeout_s > 0 and not wait_for_checkpoint(workdir, number, 0.0):
        logging.info('Waiting up to %.0f s for checkpoint %d in %s.', timeout_s, number, directory)
        wait_for_checkpoint(workdir, number, timeout_s)
    if int(number) not in _scan(directory)[0]:
        raise UserError(_missing_message(workdir, number, timeout_s))
    others = [n for n in _scan(directory)[0] if n != int(number)]
    return _restore(
        directory,
        number,
        template_state,
        'Evaluate with the config it was trained with (W/config.json).',
        f'Delete that folder and use another snapshot (--config.eval.end_ckpt=N with N in '
        f'{others}; they are not affected), or retrain.'
        if others
        else 'Delete that folder and retrain (no other snapshot is stored).',
    )


def restore_latest_preemption(workdir: str, template: Any) -> Optional[Any]:
    """The newest complete preemption checkpoint of ``W/checkpoints-meta``, or None."""
    directory = preemption_dir(workdir)
    steps = _complete_steps(directory)
    if not steps:
        return None
    logging.info('Resuming from %s.', os.path.join(directory, str(steps[-1])))
    earlier = f'step {steps[-2]}' if len(steps) > 1 else 'the start'
    return _restore(
        directory,
        steps[-1],
        template,
        'Resume with the config this run started with (W/config.json), '
        'or train in a new --workdir.',
        f'Delete that folder and rerun the same command: training resumes from {earlier}.',
    )
