"""Data: TFDS images, TFRecords files, scikit-learn digits, photo patches, NPZ files and a toy
mixture, in memory; one registered :class:`DataSource` per value of ``config.data.dataset``.

Each host holds its own contiguous shard of a split as a numpy array: discrete data as
integer levels x̄ ∈ {0, …, K−1} (uint8 ``[N, H, W, C]``), continuous data as float32
vectors ``[N, D]``, and class labels where the source has them (int32 ``[N]``, row for row;
``num_classes``, ``has_labels``). The modules:

- :mod:`datasets.base`: :class:`DataSource` and its registry (:func:`register_source`,
  :func:`dataset_names`, :func:`get_source`), :class:`Shard`, :class:`EvalBatch`, the
  cached host shards (:func:`get_shard`) and what the rest of the code asks about the data
  (:func:`data_shape`, :func:`num_bins`, :func:`num_classes`, :func:`is_continuous`,
  :func:`dataset_info`, :func:`check_config`, :func:`feature_net`, :func:`channel_stats`)
  — each answered by the source of ``config.data.dataset``;
- :mod:`datasets.transforms`: data scalers, levels ↔ [0, 1], :class:`DataSpec`;
- :mod:`datasets.iterators`: resumable training batches, exact-once evaluation passes;
- the sources, registered in this order (the order of the ``data.dataset`` choices):
  :mod:`datasets.tfds` (CIFAR10, SVHN, IMAGENET32, CELEBA, LSUN),
  :mod:`datasets.tfrecords` (CelebAHQ, FFHQ), :mod:`datasets.bundled` (DIGITS, PHOTOS),
  :mod:`datasets.npz` (NPZ) and :mod:`datasets.toy` (TOY); each module's docstring gives
  its recipes.

A new source is a :class:`DataSource` subclass registered with :func:`register_source`
(as a call with an instance, or as a class decorator), from any module imported before the
config is validated: it is then a valid ``config.data.dataset`` whose checks, shapes,
levels, labels, loading, iterators and feature network follow from the source alone.
"""

# The sources register on import, in this order: the order of the data.dataset choices.
# isort: off
from datasets import tfds, tfrecords, bundled, npz, toy

# isort: on
from datasets.base import (
    SHAPE_FIELDS,
    SPLITS,
    DataSource,
    EvalBatch,
    InMemorySource,
    Shard,
    channel_stats,
    check_config,
    data_shape,
    dataset_info,
    dataset_names,
    feature_net,
    get_shard,
    get_source,
    has_labels,
    is_continuous,
    no_labels_message,
    num_bins,
    num_classes,
    register_source,
    shard_bounds,
    split_size,
)
from datasets.base import _load_shard as _load_shard  # its cache_clear(), for tests
from datasets.bundled import (
    DIGITS_NUM_TRAIN,
    DIGITS_SEED,
    PHOTOS_PATCH,
    PHOTOS_SHORT_SIDE,
    PHOTOS_SPLITS,
    PHOTOS_STRIDE,
    photo_patches,
)
from datasets.iterators import (
    get_eval_iterator,
    get_train_iterator,
    host_batch_size,
    num_eval_batches,
    train_batch,
    train_labels,
)
from datasets.tfds import (
    CELEBA_CROP,
    LSUN_CATEGORIES,
    LSUN_SHRINK_SIZE,
    LSUN_VERSION,
    TFDS_SOURCES,
    TfdsSource,
    lsun_resize,
)
from datasets.tfrecords import TFRECORD_DATASETS, write_image_tfrecords
from datasets.toy import TOY_NUM_TEST, TOY_NUM_TRAIN, TOY_SEEDS, toy_distribution
from datasets.transforms import (
    DataSpec,
    get_data_inverse_scaler,
    get_data_scaler,
    to_levels,
    to_unit_interval,
)

__all__ = [
    'CELEBA_CROP',
    'DIGITS_NUM_TRAIN',
    'DIGITS_SEED',
    'LSUN_CATEGORIES',
    'LSUN_SHRINK_SIZE',
    'LSUN_VERSION',
    'PHOTOS_PATCH',
    'PHOTOS_SHORT_SIDE',
    'PHOTOS_SPLITS',
    'PHOTOS_STRIDE',
    'SHAPE_FIELDS',
    'SPLITS',
    'TFDS_SOURCES',
    'TFRECORD_DATASETS',
    'TOY_NUM_TEST',
    'TOY_NUM_TRAIN',
    'TOY_SEEDS',
    'DataSource',
    'DataSpec',
    'EvalBatch',
    'InMemorySource',
    'Shard',
    'TfdsSource',
    'bundled',
    'channel_stats',
    'check_config',
    'data_shape',
    'dataset_info',
    'dataset_names',
    'feature_net',
    'get_data_inverse_scaler',
    'get_data_scaler',
    'get_eval_iterator',
    'get_shard',
    'get_source',
    'get_train_iterator',
    'has_labels',
    'host_batch_size',
    'is_continuous',
    'lsun_resize',
    'no_labels_message',
    'npz',
    'num_bins',
    'num_classes',
    'num_eval_batches',
    'photo_patches',
    'register_source',
    'shard_bounds',
    'split_size',
    'tfds',
    'tfrecords',
    'to_levels',
    'to_unit_interval',
    'toy',
    'toy_distribution',
    'train_batch',
    'train_labels',
    'write_image_tfrecords',
]
