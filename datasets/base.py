"""The data-source registry, host shards, and what the rest of the code asks about the data.

A :class:`DataSource` is one value of ``config.data.dataset``: it declares its name, its
number of levels K (fixed, or ``data.num_bins``, or continuous vectors), the shape of an
example, its class count, its config checks, its ``dataset_info`` entries, the feature
network that judges its samples, and how to load one host's :class:`Shard` of a split.
:func:`register_source` makes it valid everywhere: config validation (its choices and
checks), shapes, bins, labels, loading, iterators and sample-quality metrics all ask the
registered source, never its name.

Shards are loaded once per (source, split, the ``config.data`` fields the data depend on,
host) and cached; their arrays are read-only.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import types
from typing import Any, Dict, NamedTuple, Optional, Tuple, Type, Union

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from errors import UserError, config_error

SPLITS = ('train', 'test')
# config.data fields every source's shards depend on: the shape check of each load.
SHAPE_FIELDS = ('image_size', 'num_channels', 'dim')


@dataclasses.dataclass(frozen=True)
class Shard:
    """This host's contiguous part ``[start, start + len(data))`` of one split.

    Attributes:
      data: uint8 levels ``[n, H, W, C]`` or float32 vectors ``[n, D]`` (read-only).
      num_examples: size of the whole split, over all hosts.
      start: global index of ``data[0]`` in the split.
      labels: int32 class labels ``[n]`` of the rows of ``data`` (read-only); None when the
        dataset has no labels.
    """

    data: np.ndarray
    num_examples: int
    start: int
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.data)


class EvalBatch(NamedTuple):
    """One evaluation batch; padding rows are zeros with mask False, index and label −1."""

    x: np.ndarray  # [B, ...] uint8 levels or float32 vectors
    mask: np.ndarray  # [B] bool, True for real examples
    index: np.ndarray  # [B] int32 global example index in the split
    labels: np.ndarray  # [B] int32 class label; −1 for padding and data without labels


# --- sources --------------------------------------------------------------------------


class DataSource(abc.ABC):
    """One value of ``config.data.dataset``; subclass it and :func:`register_source` it.

    Class (or instance) attributes:
      name: the value of ``config.data.dataset``.
      num_levels: K of data whose levels are fixed (validation then requires
        ``data.num_bins = K``); None: ``data.num_bins`` levels, or continuous vectors.
      num_classes: the fixed number of classes; None for data without labels (sources
        whose count depends on the data override :meth:`classes`).
      labels_from: where the class labels come from, for messages ('' = no labels).
      feature_net: the name of the ``evaluation`` feature network that judges samples
        (FID / KID / IS): 'inception', 'digits_mlp', …; None: none.
      channel_stats: the per-channel (mean, standard deviation) of the training images in
        [0, 1] when they are fixed constants (CIFAR-10: score_sde's); None: computed from
        the training split (:func:`channel_stats`).
      fields: the ``config.data`` fields, besides ``SHAPE_FIELDS``, that the loaded data
        depend on (the shard cache key; :meth:`load` reads them).

    :meth:`load` receives those fields as attributes of ``data`` (``data.image_size``…)
    and returns the host's shard: uint8 levels ``[n, H, W, C]`` (< K) or float32 vectors
    ``[n, D]``, with int32 labels ``[n]`` or None.
    """

    name: str = ''
    num_levels: Optional[int] = None
    num_classes: Optional[int] = None
    labels_from: str = ''
    feature_net: Optional[str] = 'inception'
    channel_stats: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
    fields: Tuple[str, ...] = ()

    # --- what the config implies (no data read unless said) ------------------------------
    def shape(self, config: ml_collections.ConfigDict) -> Tuple[int, ...]:
        """Shape of one example: ``(image_size, image_size, num_channels)`` by default."""
        data = config.data
        return (int(data.image_size), int(data.image_size), int(data.num_channels))

    def is_continuous(self, config: ml_collections.ConfigDict) -> bool:
        """True for vector data, False (the default) for discrete images."""
        return False

    def classes(self, config: ml_collections.ConfigDict) -> Optional[int]:
        """Number of classes of the labels; None without labels (default: ``num_classes``)."""
        return self.num_classes

    def info(self, config: ml_collections.ConfigDict) -> Dict[str, Any]:
        """Where the data come from, for :func:`dataset_info` (no data are read)."""
        return {}

    def check(self, config: ml_collections.ConfigDict) -> None:
        """:class:`UserError` (one line: the field, the problem, the fix) for a config
        this source cannot serve; cheap, run by config validation. The default checks a
        fixed number of levels; subclasses add their fields and call ``super().check``."""
        if self.num_levels is not None and config.data.num_bins != self.num_levels:
            raise config_error(
                'data.num_bins',
                config.data.num_bins,
                f'does not match {self.name}, which has {self.num_levels} levels; '
                f'set it to {self.num_levels}',
            )

    # --- loading -------------------------------------------------------------------------
    def stored_split(self, split: str) -> str:
        """The split whose data serve ``split`` (a source with one set of data for both
        returns 'train', so the data are read and held once)."""
        return split

    def cache_key(self, data: ml_collections.ConfigDict) -> tuple:
        """What else, besides the fields, invalidates loaded shards (e.g. a file's mtime)."""
        return ()

    @abc.abstractmethod
    def load(
        self, data: types.SimpleNamespace, split: str, process_index: int, process_count: int
    ) -> Shard:
        """Host ``process_index``'s contiguous shard of ``split`` (:func:`shard_bounds`)."""


class InMemorySource(DataSource):
    """A source whose whole split fits in memory: :meth:`load_split` reads it, every host
    keeps its slice."""

    @abc.abstractmethod
    def load_split(
        self, data: types.SimpleNamespace, split: str
    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The whole ``split`` and its int32 labels (or None)."""

    def load(
        self, data: types.SimpleNamespace, split: str, process_index: int, process_count: int
    ) -> Shard:
        array, labels = self.load_split(data, split)
        start, stop = shard_bounds(len(array), process_index, process_count)
        part = None if labels is None else labels[start:stop]
        return Shard(array[start:stop], len(array), start, part)


_SOURCES: Dict[str, DataSource] = {}


def register_source(source: Union[DataSource, Type[DataSource]]):
    """Makes ``source`` the data of ``config.data.dataset = source.name``.

    Call it with an instance (``register_source(MySource())``), or use it as the decorator
    of a :class:`DataSource` subclass whose constructor takes no arguments (the class is
    instantiated once). Returns its argument. ValueError for an empty or taken name.
    """
    instance = source() if isinstance(source, type) else source
    if not instance.name:
        raise ValueError(f'{type(instance).__name__} has no name')
    if instance.name in _SOURCES:
        raise ValueError(f'A data source named {instance.name!r} is already registered.')
    _SOURCES[instance.name] = instance
    return source


def dataset_names() -> Tuple[str, ...]:
    """Every registered value of ``config.data.dataset``, in registration order."""
    return tuple(_SOURCES)


def get_source(config: Union[ml_collections.ConfigDict, str]) -> DataSource:
    """The source of ``config.data.dataset`` (or of a name); UserError if unknown."""
    name = config if isinstance(config, str) else config.data.dataset
    if name not in _SOURCES:
        raise UserError(
            f'config.data.dataset={name!r} is not one of '
            f'{", ".join(dataset_names())}; fix --config.data.dataset'
        )
    return _SOURCES[name]


# --- what the rest of the code needs to know about the data ----------------------------


def check_config(config: ml_collections.ConfigDict) -> None:
    """The source's config check (:meth:`DataSource.check`); for config validation."""
    get_source(config).check(config)


def is_continuous(config: ml_collections.ConfigDict) -> bool:
    """True for vector data (TOY, float NPZ arrays), False for discrete images."""
    return get_source(config).is_continuous(config)


def num_bins(config: ml_collections.ConfigDict) -> int | None:
    """Number of levels K of discrete data (``data.num_bins``); None for continuous data."""
    return None if is_continuous(config) else int(config.data.num_bins)


def data_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Shape of one example: ``(H, W, C)`` for images, ``(D,)`` for vectors."""
    return tuple(int(s) for s in get_source(config).shape(config))


def num_classes(config: ml_collections.ConfigDict) -> int | None:
    """Number of classes of the labels (the source's; e.g. TOY: the mixture's components,
    NPZ: 1 + the largest label of the file); None for data without labels."""
    return get_source(config).classes(config)


def has_labels(config: ml_collections.ConfigDict) -> bool:
    """True when the data come with class labels (:func:`num_classes` is not None)."""
    return num_classes(config) is not None


def feature_net(config: ml_collections.ConfigDict) -> str | None:
    """The name of the feature network that judges samples of the data (None: none)."""
    return get_source(config).feature_net


def dataset_info(config: ml_collections.ConfigDict) -> dict:
    """Where the data come from, for logs and result files (no data are read)."""
    info = {
        'dataset': config.data.dataset,
        'shape': list(data_shape(config)),
        'num_bins': num_bins(config),
    }
    return {**info, **get_source(config).info(config)}


def no_labels_message(config: ml_collections.ConfigDict) -> str:
    """The error of asking for the labels of data without them: which data have labels."""
    labelled = ', '.join(f'{s.name} ({s.labels_from})' for s in _SOURCES.values() if s.labels_from)
    return (
        f'config.data.dataset={config.data.dataset!r} has no class labels; labels come '
        f'with {labelled}'
    )


def channel_stats(config: ml_collections.ConfigDict) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean μ_c and standard deviation s_c ([C] each) of the training images
    in [0, 1] (levels x̄/(K − 1)): the source's ``channel_stats``, else over every image of
    the training split, s_c² = E[x²] − μ_c² over all examples and positions (the hosts'
    sums added, so every host has the same values)."""
    fixed = get_source(config).channel_stats
    if fixed is not None:
        return np.asarray(fixed[0], np.float64), np.asarray(fixed[1], np.float64)
    levels = get_shard(config, 'train').data
    axes = tuple(range(levels.ndim - 1))
    sums = np.stack(
        [
            np.full(levels.shape[-1], np.prod([levels.shape[a] for a in axes]), np.float64),
            levels.sum(axis=axes, dtype=np.float64),
            np.square(levels, dtype=np.float64).sum(axis=axes),
        ]
    )
    if jax.process_count() > 1:
        sums = np.asarray(multihost_utils.process_allgather(sums)).sum(axis=0)
    count, total, squares = sums
    scale = float(num_bins(config) - 1)
    mean = total / count / scale
    return mean, np.sqrt(np.maximum(squares / count / scale**2 - mean**2, 0.0))


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples of ``split`` ('train' or 'test') over all hosts."""
    return get_shard(config, split).num_examples


# --- host shards ----------------------------------------------------------------------


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of host ``process_index``'s contiguous shard; sizes differ by ≤ 1."""
    return (
        num_examples * process_index // process_count,
        num_examples * (process_index + 1) // process_count,
    )


def get_shard(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Shard:
    """This host's shard of ``split`` ('train' or 'test'), loaded once and cached."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    process_index, process_count = hosts(process_index, process_count)
    source = get_source(config)
    fields = tuple((f, config.data[f]) for f in SHAPE_FIELDS + tuple(source.fields))
    key = (source, source.stored_split(split), fields, source.cache_key(config.data))
    return _load_shard(key, process_index, process_count)


def hosts(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), JAX's where not given."""
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    return process_index, process_count


@functools.lru_cache(maxsize=8)
def _load_shard(key: tuple, process_index: int, process_count: int) -> Shard:
    source, split, fields, _ = key
    data = types.SimpleNamespace(**dict(fields))
    shard = source.load(data, split, process_index, process_count)
    check_shape(shard.data, source.name, data.image_size, data.num_channels, data.dim)
    shard.data.flags.writeable = False
    if shard.labels is not None:
        assert shard.labels.shape == (len(shard.data),) and shard.labels.dtype == np.int32
        shard.labels.flags.writeable = False
    return shard


def check_shape(
    array: np.ndarray, dataset: str, image_size: int, num_channels: int, dim: int
) -> None:
    """The data must agree with data.image_size / num_channels (images) or data.dim."""
    if array.ndim == 2:
        if array.shape[1] != dim:
            raise UserError(
                f'{dataset} vectors have dimension {array.shape[1]} but '
                f'config.data.dim={dim}; set --config.data.dim={array.shape[1]}'
            )
        return
    height, width, channels = array.shape[1:]
    if height != image_size or width != image_size:
        raise UserError(
            f'{dataset} images are {height}×{width} but config.data.image_size='
            f'{image_size}; set --config.data.image_size={height}'
            + ('' if height == width else ' (only square images are supported)')
        )
    if channels != num_channels:
        raise UserError(
            f'{dataset} images have {channels} channels but '
            f'config.data.num_channels={num_channels}; '
            f'set --config.data.num_channels={channels}'
        )
