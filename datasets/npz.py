"""``NPZ``: your own data, the ``.npz`` file ``config.data.path``.

Arrays ``train`` and ``test``: integer images ``[N, H, W, C]`` with ``data.num_bins``
levels, or float vectors ``[N, D]``; optional labels ``train_labels`` and
``test_labels`` (both or neither: 1-D integers ≥ 0, one per example; ``1 + max``
classes). Shapes, dtype and labels are read from the file (its headers first, so the
checks cost no data read); a file changed on disk (its mtime) is read again.
"""

from __future__ import annotations

import types
import zipfile
from typing import Any, Dict, Optional, Tuple

import ml_collections
import numpy as np

import file_io
from datasets.base import SPLITS, InMemorySource, register_source
from errors import UserError, config_error


@register_source
class NpzData(InMemorySource):
    """The arrays of ``data.path``: images with ``data.num_bins`` levels, or vectors."""

    name = 'NPZ'
    labels_from = 'integer arrays train_labels and test_labels'
    fields = ('path', 'num_bins')

    def shape(self, config: ml_collections.ConfigDict) -> Tuple[int, ...]:
        return tuple(int(s) for s in _npz_header(config.data.path, 'train')[0][1:])

    def is_continuous(self, config: ml_collections.ConfigDict) -> bool:
        return np.issubdtype(_npz_header(config.data.path, 'train')[1], np.floating)

    def classes(self, config: ml_collections.ConfigDict) -> Optional[int]:
        """1 + the largest of ``train_labels`` and ``test_labels``; None without them."""
        labels = [_npz_labels(config.data.path, split) for split in SPLITS]
        if labels[0] is None:
            return None
        return 1 + max((int(y.max()) for y in labels if y.size), default=-1)

    def check(self, config: ml_collections.ConfigDict) -> None:
        data = config.data
        if not data.path:
            raise config_error(
                'data.path',
                data.path,
                "is empty but data.dataset='NPZ' reads its 'train' "
                "and 'test' arrays from it; set --config.data.path=/path/to/file.npz",
            )
        if not file_io.isfile(data.path):
            raise config_error('data.path', data.path, 'is not an existing file')
        if not 2 <= data.num_bins <= 65536:
            raise config_error('data.num_bins', data.num_bins, 'must be between 2 and 65536')

    def info(self, config: ml_collections.ConfigDict) -> Dict[str, Any]:
        return {'source': file_io.abspath(config.data.path)}

    def cache_key(self, data: ml_collections.ConfigDict) -> tuple:
        return (file_io.mtime(data.path) if data.path else None,)

    def load_split(
        self, data: types.SimpleNamespace, split: str
    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        return _load_npz(data.path, split, data.num_bins), _npz_labels(data.path, split)


def _npz_header(path: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of array ``name`` of an .npz file, read from its header only."""
    try:
        with (
            file_io.open_file(path, 'rb') as raw,
            zipfile.ZipFile(raw) as archive,
            archive.open(f'{name}.npy') as f,
        ):
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
    except FileNotFoundError:
        raise UserError(
            f'config.data.path={path!r} does not exist; set --config.data.path to an .npz file'
        ) from None
    except (KeyError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(
            f'config.data.path={path!r} is not an .npz file with a {name!r} '
            f'array ({e}); write it with np.savez(path, train=..., test=...)'
        ) from None
    return shape, dtype


def _npz_labels(path: str, split: str) -> np.ndarray | None:
    """int32 array ``<split>_labels`` of the file, checked; None when the file has neither
    ``train_labels`` nor ``test_labels``."""
    num_examples = _npz_header(path, split)[0][0]
    with file_io.np_load(path) as archive:
        present = [f'{s}_labels' for s in SPLITS if f'{s}_labels' in archive.files]
        if not present:
            return None
        name = f'{split}_labels'
        if name not in present:
            raise UserError(
                f'{path}: has {present[0]!r} but no {name!r}; '
                f'write both with np.savez(path, ..., train_labels=..., test_labels=...)'
            )
        labels = archive[name]
    _check_labels(labels, num_examples, path, name)
    return labels.astype(np.int32)


def _check_labels(labels: np.ndarray, num_examples: int, path: str, name: str) -> None:
    """Labels are 1-D integers in [0, 2³¹), one per example of the split."""
    valid = (
        labels.shape == (num_examples,)
        and np.issubdtype(labels.dtype, np.integer)
        and (not labels.size or (labels.min() >= 0 and labels.max() < 2**31))
    )
    if not valid:
        numeric = labels.size and np.issubdtype(labels.dtype, np.number)
        span = f', values [{labels.min()}, {labels.max()}]' if numeric else ''
        raise UserError(
            f'{path}: {name!r} has shape {labels.shape} and dtype {labels.dtype}{span}; '
            f'write class labels as 1-D integers ≥ 0, one per example ({num_examples},)'
        )


def _load_npz(path: str, split: str, bins: int) -> np.ndarray:
    _npz_header(path, split)  # clear errors for missing files and arrays
    with file_io.np_load(path) as archive:
        array = archive[split]
    if array.ndim == 2 and np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if array.ndim == 4 and np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() >= bins):
            raise UserError(
                f'{path}: {split!r} levels span [{array.min()}, {array.max()}] '
                f'but config.data.num_bins={bins}; set --config.data.num_bins '
                f'to the number of levels (values must be 0 … num_bins − 1)'
            )
        return array.astype(np.uint8 if bins <= 256 else np.uint16)
    raise UserError(
        f'{path}: {split!r} has shape {array.shape} and dtype {array.dtype}; '
        f'NPZ data are integer images [N, H, W, C] or float vectors [N, D]'
    )
