"""The project's one path layer, atomic writes, and the small file formats: .npz and JSON.

Every file the project reads or writes outside orbax goes through the functions here, so
a work directory (and data or config paths) may be a local path or a URL that TensorFlow's
``tf.io.gfile`` understands: ``gs://bucket/W`` (Google Cloud Storage, as the original code
on TPU pods), ``s3://``, ``hdfs://``, or the in-memory ``ram://`` the tests use. Local
paths use ``os`` directly; URLs use ``tf.io.gfile`` (TensorFlow is imported on the first
URL only: its import takes about 5 s). Orbax reads and writes URLs by itself (etils).

Every writer goes through :func:`atomic_write` (a temporary file in the same folder —
``fsync``-ed locally — then a rename over the target), so a reader — a resumed run,
another host, a script — sees either the old file or the complete new one, never a
partial write. On object stores the rename is a copy, which publishes the whole object at
once. No pickle: ``.npz`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging as py_logging
import os
import sys
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

import jax
import numpy as np
from absl import logging
from tensorboardX import SummaryWriter
from tensorboardX import record_writer as tbx_record_writer


def is_url(path: str) -> bool:
    """True for ``scheme://…`` paths (gs://, s3://, ram://, …), handled by tf.io.gfile."""
    return '://' in str(path)


def _tf():
    """TensorFlow, imported on first use (only URL paths need it)."""
    import tensorflow as tf  # noqa: PLC0415  (5 s import, needed for URLs only)

    return tf


@contextlib.contextmanager
def _url_errors() -> Iterator[None]:
    """tf.io.gfile's errors inside become OSError (strerror = its message), as for local
    paths. Other errors pass unchanged, without importing TensorFlow to check them."""
    try:
        yield
    except Exception as e:
        tf = sys.modules.get('tensorflow')
        if tf is None or not isinstance(e, tf.errors.OpError):
            raise
        raise OSError(errno.EIO, getattr(e, 'message', str(e))) from e


def _on_url(name: str, *args, **kwargs):
    """``tf.io.gfile.<name>(*args)``, failing with OSError."""
    with _url_errors():
        return getattr(_tf().io.gfile, name)(*args, **kwargs)


def abspath(path: str) -> str:
    """The absolute form of a local path; URLs unchanged."""
    return str(path) if is_url(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return _on_url('exists', path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _on_url('isdir', path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return exists(path) and not isdir(path)


def makedirs(path: str) -> None:
    """Creates the folder ``path`` and its parents if missing."""
    if is_url(path):
        _on_url('makedirs', path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> List[str]:
    """The names in folder ``path`` (without a trailing '/' for sub-folders)."""
    if is_url(path):
        return [name.rstrip('/') for name in _on_url('listdir', path)]
    return os.listdir(path)


def remove(path: str) -> None:
    if is_url(path):
        _on_url('remove', path)
    else:
        os.remove(path)


def rename(src: str, dst: str, overwrite: bool = False) -> None:
    """Moves ``src`` to ``dst``; replaces an existing ``dst`` only with ``overwrite``."""
    if is_url(src) or is_url(dst):
        _on_url('rename', src, dst, overwrite=overwrite)
    elif overwrite:
        os.replace(src, dst)
    else:
        if os.path.exists(dst):
            raise FileExistsError(dst)
        os.rename(src, dst)


def open_file(path: str, mode: str = 'rb') -> IO:
    """``open(path, mode)`` for local paths, ``tf.io.gfile.GFile`` for URLs."""
    if is_url(path):
        return _tf().io.gfile.GFile(path, mode)
    return open(path, mode)


def mtime(path: str) -> float:
    """Modification time of ``path`` in seconds since the epoch."""
    if is_url(path):
        return _on_url('stat', path).mtime_nsec / 1e9
    return os.path.getmtime(path)


def walk(path: str) -> Iterator[Tuple[str, List[str], List[str]]]:
    """``os.walk(path)`` for local paths and URLs: (folder, sub-folders, files)."""
    if is_url(path):
        for root, dirs, files in _on_url('walk', path):
            yield root, [d.rstrip('/') for d in dirs], list(files)
    else:
        yield from os.walk(path)


def np_load(path: str) -> Any:
    """``np.load(path, allow_pickle=False)`` of a local path or URL: the array of a .npy,
    an open NpzFile of a .npz (read lazily from local paths, whole from URLs)."""
    if is_url(path):
        return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
    return np.load(path, allow_pickle=False)


def read_bytes(path: str) -> bytes:
    """The content of ``path``; OSError if it cannot be read (URLs too)."""
    with _url_errors(), open_file(path, 'rb') as f:
        return f.read()


def atomic_write(path: str, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` atomically, creating the folder if needed."""
    makedirs(os.path.dirname(path) or '.')
    # Hosts may share a work directory: the temporary name is unique per process.
    tmp = f'{path}.tmp-{jax.process_index()}-{os.getpid()}'
    with _url_errors(), open_file(tmp, 'wb') as f:
        f.write(payload)
        f.flush()
        if not is_url(tmp):
            os.fsync(f.fileno())
    rename(tmp, path, overwrite=True)


class LogFileHandler(py_logging.Handler):
    """A logging handler that appends to ``path``, local or URL.

    Object stores cannot append, so for URLs the file is rewritten whole (its earlier
    content kept) at most every ``every_s`` seconds and on ``flush``/``close``.
    """

    def __init__(self, path: str, every_s: float = 10.0):
        super().__init__()
        self.path, self.every_s = path, every_s
        self._local = None if is_url(path) else open(path, 'a', encoding='utf-8')
        self._text = [read_bytes(path).decode()] if is_url(path) and exists(path) else []
        self._written = 0.0

    def emit(self, record: py_logging.LogRecord) -> None:
        line = self.format(record) + '\n'
        if self._local is not None:
            self._local.write(line)
            self._local.flush()
            return
        self._text.append(line)
        if record.created - self._written >= self.every_s:
            self.flush()
            self._written = record.created

    def flush(self) -> None:
        if self._local is None and self._text:
            atomic_write(self.path, ''.join(self._text).encode())

    def close(self) -> None:
        self.flush()
        if self._local is not None:
            self._local.close()
        super().close()


class _GFileEventFiles:
    """tensorboardX's writer factory for one URL scheme, through tf.io.gfile (its own
    gs:// writer needs google-cloud-storage and re-uploads the whole file every flush)."""

    def open(self, path: str) -> IO:
        return open_file(path, 'wb')

    def directory_check(self, path: str) -> None:
        makedirs(path)


def summary_writer(logdir: str, **kwargs: Any) -> SummaryWriter:
    """A TensorBoard ``SummaryWriter(logdir, **kwargs)`` for ``logdir``, local or URL."""
    if is_url(logdir):
        tbx_record_writer.register_writer_factory(logdir.split('://')[0], _GFileEventFiles())
    return SummaryWriter(logdir, **kwargs)


def save_npz(path: str, **arrays: Any) -> None:
    """Atomically writes ``arrays`` to ``path`` as .npz (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write(path, buf.getvalue())


def load_npz(path: str) -> Optional[Dict[str, np.ndarray]]:
    """The arrays of ``path``, or None if it is missing or unreadable (then recomputed)."""
    if not exists(path):
        return None
    try:
        with np_load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        logging.warning('Ignoring unreadable %s (%s); recomputing it.', path, e)
        return None


def write_json(path: str, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON with sorted keys."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def read_json(path: str, default: Any = None) -> Any:
    """The JSON content of ``path``, or ``default`` if the file does not exist."""
    if not exists(path):
        return default
    return json.loads(read_bytes(path).decode('utf-8'))
