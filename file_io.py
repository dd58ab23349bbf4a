"""Atomic file writes and the small file formats of the project: .npz arrays and JSON.

Every writer goes through :func:`atomic_write` (a temporary file in the same folder,
``fsync``, then ``os.replace``), so a reader — a resumed run, another host, a script —
sees either the old file or the complete new one, never a partial write. No pickle:
``.npz`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import logging


def atomic_write(path: str, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` atomically, creating the folder if needed."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    # Hosts may share a work directory: the temporary name is unique per process.
    tmp = f'{path}.tmp-{jax.process_index()}-{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_npz(path: str, **arrays: Any) -> None:
    """Atomically writes ``arrays`` to ``path`` as .npz (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write(path, buf.getvalue())


def load_npz(path: str) -> Optional[Dict[str, np.ndarray]]:
    """The arrays of ``path``, or None if it is missing or unreadable (then recomputed)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        logging.warning('Ignoring unreadable %s (%s); recomputing it.', path, e)
        return None


def write_json(path: str, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON with sorted keys."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def read_json(path: str, default: Any = None) -> Any:
    """The JSON content of ``path``, or ``default`` if the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path, encoding='utf-8') as f:
        return json.load(f)
