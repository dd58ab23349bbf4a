"""Data: TFDS images, TFRecords files, scikit-learn digits, photo patches, NPZ files and a toy
mixture, in memory.

Each host holds its own contiguous shard of a split as a numpy array: discrete data as
integer levels x̄ ∈ {0, …, K−1} (uint8 ``[N, H, W, C]``), continuous data as float32
vectors ``[N, D]``, and class labels where the source has them (int32 ``[N]``, row for row;
``num_classes``, ``has_labels``). Iterators turn shards into batches:

- ``get_train_iterator``: a pure function of (seed, step, host), so training resumes
  exactly, data order included, from any step. Per host and epoch a fixed permutation
  ``np.random.default_rng([seed, host, epoch])``; the batch of a step is a slice of it.
  Images map to [0, 1] as x̄/(K−1) (the original code) or, with
  ``data.uniform_dequantization``, as (x̄ + u)/K with u ~ U[0, 1)^D; random horizontal
  flips with ``data.random_flip``; vectors are returned unchanged. ``with_labels=True``
  adds the labels of the same rows (``train_labels``).
- ``get_eval_iterator``: every example of a split exactly once per pass, in a fixed order,
  the last batch padded, with a mask, each example's global index (so evaluators can draw
  per-example noise from ``fold_in(key, index)``, independent of batching and hosts) and
  its label (−1 for padding and for data without labels).

Sources (``config.data.dataset``):

- ``CIFAR10``: TFDS ``cifar10`` 3.0.2, train 50000 / test 10000; 10 classes.
- ``SVHN``: TFDS ``svhn_cropped`` 3.1.0, train 73257 / test 26032; 10 classes.
- ``IMAGENET32``: TFDS ``downsampled_imagenet/32x32`` 2.0.0, train 1281149 / validation
  49999: the "old" ImageNet 32×32 of van den Oord et al. (2016) used by the flow
  literature and ScoreFlow. Its download link is dead; prepare it from a local copy. It is
  not ``imagenet_resized/32x32`` (Chrabaszcz et al., 2017), whose bits/dim differ.
- ``CELEBA``: TFDS ``celeb_a`` 2.1.0, train / validation, centre crop 140 × 140 (offsets
  ⌊(218 − 140)/2⌋, ⌊(178 − 140)/2⌋) resized (bilinear, antialiased) to ``data.image_size``,
  as Score SDE, then rounded to uint8 (the original keeps the resized floats).
- ``LSUN``: TFDS ``lsun/<data.category>`` 3.1.0 (a scene category of ``LSUN_CATEGORIES``;
  Score SDE's files use ``bedroom`` and ``church_outdoor``), train / validation (bedroom
  3033042 / 300, church_outdoor 126227 / 300), resized as Score SDE (:func:`lsun_resize`):
  at 128 px the shorter side shrunk to 128 (bilinear) and the centre cropped; at other
  sizes the central square cropped and resized (bicubic; at 256 px the crop alone).
- ``CelebAHQ``, ``FFHQ`` (Score SDE's names): the TFRecords file(s)
  ``data.tfrecords_path`` (a path or glob pattern, local or ``gs://``) of progressive
  GAN's / StyleGAN's dataset tools, one example per image with features ``'shape'``
  (int64 [C, H, W]) and ``'data'`` (its raw uint8 bytes, C, H, W order);
  :func:`write_image_tfrecords` writes the format. Not resized, as in Score SDE: the file
  must hold ``data.image_size`` images (one file per resolution, ``…-r08.tfrecords`` =
  256 px). Train and test are both every record, as in the original (CelebA-HQ 30000
  images, FFHQ 70000).
- CelebA, ImageNet32, LSUN, CelebA-HQ and FFHQ have no labels.
- ``DIGITS``: ``sklearn.datasets.load_digits`` (1797 8×8 images, levels 0–16, K = 17);
  train = the first 1600 of ``np.random.default_rng(0).permutation(1797)``, test = the
  other 197; labels ``load_digits().target`` (10 classes).
- ``PHOTOS``: 16×16 RGB patches (K = 256) of seven photographs that install with the
  requirements: scikit-learn's ``load_sample_images()`` (china, flower) and scikit-image's
  ``skimage.data`` (astronaut, coffee, chelsea, rocket, ``stereo_motorcycle()[0]``). Each
  photo is resized with PIL (LANCZOS) so that its shorter side is 128 px (the longer one
  rounded to the nearest pixel), then cut into 16×16 patches on a stride-8 grid, row-major,
  photos in the order of ``PHOTOS_SPLITS``. Split by photograph: train = china, flower,
  astronaut, chelsea, motorcycle (1590 patches), test = coffee, rocket (690). No labels.
- ``NPZ``: ``config.data.path``, arrays ``train`` and ``test``: integer images
  ``[N, H, W, C]`` with ``data.num_bins`` levels, or float vectors ``[N, D]``; optional
  labels ``train_labels`` and ``test_labels`` (both or neither: 1-D integers ≥ 0, one per
  example; ``1 + max`` classes).
- ``TOY``: ``toy_distribution(config)``, 8 Gaussians on a circle in ``data.dim``
  dimensions; 20000 train / 2000 test samples drawn once with fixed keys; the label of a
  sample is its mixture component (8 classes).

TFDS data must be prepared beforehand (``tfds build cifar10 --data_dir DIR`` on a machine
with network) or downloaded on first use with ``--config.data.download=True``; missing
data fails at once with a message saying so. With a local ``data.data_dir`` the missing
``<name>/<version>/dataset_info.json`` is seen before TFDS is imported (about 1 ms; through
TFDS 4.9.10, whose GCS look-ups are off, it took 0.3 s plus 4 s to import TensorFlow,
measured with an empty ``data_dir`` on 2 CPU cores). A missing TFRecords file fails as
fast (after the TensorFlow import), naming the path and how to make the file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import zipfile
from typing import Callable, Iterator, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

import file_io
import mixture
from errors import UserError

DIGITS_SEED = 0
DIGITS_NUM_TRAIN = 1600
TOY_NUM_TRAIN = 20000
TOY_NUM_TEST = 2000
TOY_SEEDS = {'train': 0, 'test': 1}
SPLITS = ('train', 'test')
# Images per batch when reading TFDS / TFRecords data: 4096, or fewer to keep a batch
# under 256 MB (1365 at 256 px, 85 at 1024 px).
_READ_BATCH = 4096
_READ_BATCH_BYTES = 2**28
PHOTOS_SHORT_SIDE = 128
PHOTOS_PATCH = 16
PHOTOS_STRIDE = 8
# Photographs by split (the split is by photograph: no scene is in both).
PHOTOS_SPLITS = {
    'train': ('china', 'flower', 'astronaut', 'chelsea', 'motorcycle'),
    'test': ('coffee', 'rocket'),
}


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A TFDS dataset: builder name and version, and the splits we call train / test."""

    name: str
    version: str
    train_split: str
    test_split: str

    @property
    def versioned_name(self) -> str:
        return f'{self.name}:{self.version}'


TFDS_SOURCES = {
    'CIFAR10': TfdsSource('cifar10', '3.0.2', 'train', 'test'),
    'SVHN': TfdsSource('svhn_cropped', '3.1.0', 'train', 'test'),
    'IMAGENET32': TfdsSource('downsampled_imagenet/32x32', '2.0.0', 'train', 'validation'),
    'CELEBA': TfdsSource('celeb_a', '2.1.0', 'train', 'validation'),
}
CELEBA_CROP = 140
# LSUN: TFDS ``lsun/<data.category>``; its scene categories, the ones with the validation
# split that Score SDE evaluates on (TFDS's object categories have a train split only).
LSUN_VERSION = '3.1.0'
LSUN_CATEGORIES = (
    'bedroom',
    'bridge',
    'church_outdoor',
    'classroom',
    'conference_room',
    'dining_room',
    'kitchen',
    'living_room',
    'restaurant',
    'tower',
)
# Score SDE resizes LSUN to 128 px by shrinking the shorter side and cropping its centre;
# to any other size by cropping the central square and resizing it (bicubic).
LSUN_SHRINK_SIZE = 128
# Score SDE's CelebA-HQ and FFHQ: TFRecords files (config.data.tfrecords_path) as written
# by the dataset tools of progressive GAN / StyleGAN (one file per resolution).
TFRECORD_DATASETS = ('CelebAHQ', 'FFHQ')
# Every value of config.data.dataset with its number of levels K: the one list of dataset
# names (validation reads it). TFDS images, TFRecords and PHOTOS have 256 levels, DIGITS 17.
# None: NPZ images have data.num_bins levels; TOY is continuous.
DATASET_NUM_BINS = {
    **{name: 256 for name in TFDS_SOURCES},
    'LSUN': 256,
    **{name: 256 for name in TFRECORD_DATASETS},
    'DIGITS': 17,
    'PHOTOS': 256,
    'NPZ': None,
    'TOY': None,
}
# Datasets with a fixed number of classes (TOY: its mixture's components; NPZ: its labels).
DATASET_NUM_CLASSES = {'CIFAR10': 10, 'SVHN': 10, 'DIGITS': 10}


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


# --- what the rest of the code needs to know about the data ----------------------------


def is_continuous(config: ml_collections.ConfigDict) -> bool:
    """True for vector data (TOY, float NPZ arrays), False for discrete images."""
    if config.data.dataset == 'TOY':
        return True
    if config.data.dataset == 'NPZ':
        return np.issubdtype(_npz_header(config.data.path, 'train')[1], np.floating)
    return False


def num_bins(config: ml_collections.ConfigDict) -> int | None:
    """Number of levels K of discrete data (``data.num_bins``); None for continuous data."""
    return None if is_continuous(config) else int(config.data.num_bins)


def data_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Shape of one example: ``(H, W, C)`` for images, ``(D,)`` for vectors."""
    data = config.data
    if data.dataset == 'TOY':
        return (int(data.dim),)
    if data.dataset == 'NPZ':
        return tuple(int(s) for s in _npz_header(data.path, 'train')[0][1:])
    return (int(data.image_size), int(data.image_size), int(data.num_channels))


def dataset_info(config: ml_collections.ConfigDict) -> dict:
    """Where the data come from, for logs and result files (no data are read)."""
    dataset = config.data.dataset
    info = {'dataset': dataset, 'shape': list(data_shape(config)), 'num_bins': num_bins(config)}
    source = tfds_source(dataset, config.data.category)
    if source is not None:
        info.update(
            tfds_name=source.name,
            tfds_version=source.version,
            splits={'train': source.train_split, 'test': source.test_split},
        )
    elif dataset in TFRECORD_DATASETS:
        info.update(
            source=config.data.tfrecords_path,
            record_format="features 'shape' (int64 [C, H, W]) and 'data' (raw uint8 bytes)",
            splits={'train': 'every record', 'test': 'every record (as Score SDE)'},
        )
    elif dataset == 'DIGITS':
        info.update(
            source='sklearn.datasets.load_digits',
            split_seed=DIGITS_SEED,
            num_train=DIGITS_NUM_TRAIN,
        )
    elif dataset == 'PHOTOS':
        info.update(
            source='sklearn.datasets.load_sample_images (china, flower), skimage.data '
            '(astronaut, coffee, chelsea, rocket, stereo_motorcycle()[0] as motorcycle)',
            recipe=f'PIL LANCZOS resize to shorter side {PHOTOS_SHORT_SIDE}, '
            f'{PHOTOS_PATCH}x{PHOTOS_PATCH} patches on a stride-{PHOTOS_STRIDE} grid',
            photos={split: list(names) for split, names in PHOTOS_SPLITS.items()},
        )
    elif dataset == 'NPZ':
        info.update(source=file_io.abspath(config.data.path))
    else:
        info.update(
            source='datasets.toy_distribution',
            seeds=TOY_SEEDS,
            num_train=TOY_NUM_TRAIN,
            num_test=TOY_NUM_TEST,
        )
    return info


def num_classes(config: ml_collections.ConfigDict) -> int | None:
    """Number of classes of the labels (``DATASET_NUM_CLASSES``; TOY: the mixture's
    components; NPZ: 1 + the largest of ``train_labels`` and ``test_labels``, read from the
    file); None for data without labels."""
    dataset = config.data.dataset
    if dataset == 'TOY':
        return len(toy_distribution(config).weights)
    if dataset == 'NPZ':
        labels = [_npz_labels(config.data.path, split) for split in SPLITS]
        if labels[0] is None:
            return None
        return 1 + max((int(y.max()) for y in labels if y.size), default=-1)
    return DATASET_NUM_CLASSES.get(dataset)


def has_labels(config: ml_collections.ConfigDict) -> bool:
    """True when the data come with class labels (:func:`num_classes` is not None)."""
    return num_classes(config) is not None


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples of ``split`` ('train' or 'test') over all hosts."""
    return get_shard(config, split).num_examples


# --- scaling and dequantization -------------------------------------------------------


def get_data_scaler(config: ml_collections.ConfigDict) -> Callable:
    """x ∈ [0, 1] → 2x − 1 if ``data.centered`` (images only), else the identity."""
    if config.data.centered and not is_continuous(config):
        return lambda x: x * 2.0 - 1.0
    return lambda x: x


def get_data_inverse_scaler(config: ml_collections.ConfigDict) -> Callable:
    """The inverse of ``get_data_scaler``: y → (y + 1)/2 if centered, else the identity."""
    if config.data.centered and not is_continuous(config):
        return lambda y: (y + 1.0) / 2.0
    return lambda y: y


def to_unit_interval(
    levels: np.ndarray, num_levels: int, u: np.ndarray | None = None
) -> np.ndarray:
    """Discrete levels x̄ ∈ {0, …, K−1} to [0, 1], float32.

    Without ``u``: x̄/(K − 1) (the grid the original code trains on). With ``u`` ∈ [0, 1)
    of the same shape: the uniformly dequantized x = (x̄ + u)/K, whose density p(x) bounds
    the discrete likelihood, −log P(x̄) ≤ E_u[−log p(x)] + D log K (docs/MATH.md). Works on
    numpy and JAX arrays alike.
    """
    if u is None:
        return levels.astype(np.float32) / np.float32(num_levels - 1)
    return (levels.astype(np.float32) + u) / np.float32(num_levels)


def to_levels(x: np.ndarray, num_levels: int, dequantized: bool) -> np.ndarray:
    """Samples x in [0, 1] back to levels x̄ ∈ {0, …, K−1} (int32), inverting the training
    map: x = x̄/(K−1) gives x̄ = round(x (K−1)); the dequantized x = (x̄ + u)/K gives
    x̄ = ⌊x K⌋. Values outside [0, 1] are clipped to the nearest level."""
    x = np.asarray(x, np.float32)
    levels = np.floor(x * num_levels) if dequantized else np.round(x * (num_levels - 1))
    return np.clip(levels, 0, num_levels - 1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """How a batch of raw data (levels x̄ or vectors) becomes model input, and back.

    Attributes:
      shape: shape of one example ((H, W, C) or (D,)).
      num_bins: K for discrete data x̄ ∈ {0,…,K−1}; None for continuous vectors.
      scaler: the model's data scaler, affine y = a·x + b (jnp-traceable).
      train_dequantized: the training data were (x̄ + u)/K (else x̄/(K−1)).
    """

    shape: Tuple[int, ...]
    num_bins: Optional[int]
    scaler: Callable = lambda x: x
    train_dequantized: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> DataSpec:
        return cls(
            shape=data_shape(config),
            num_bins=num_bins(config),
            scaler=get_data_scaler(config),
            train_dequantized=bool(config.data.uniform_dequantization),
        )

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def scale(self) -> float:
        """a of the affine scaler y = a·x + b, measured from the scaler itself."""
        with jax.ensure_compile_time_eval():
            y0, y1, yh = (float(self.scaler(jnp.asarray(v, jnp.float32))) for v in (0.0, 1.0, 0.5))
        if not math.isclose(yh, 0.5 * (y0 + y1), rel_tol=1e-6, abs_tol=1e-6) or y1 <= y0:
            raise ValueError('bits/dim needs an increasing affine data scaler')
        return y1 - y0

    def uniform_noise(self, keys: jax.Array) -> jax.Array:
        """u ~ U[0,1)^D per example, [B, *shape], one key per example."""
        return jax.vmap(lambda k: jax.random.uniform(k, self.shape))(keys)

    def dequantize(self, x: jax.Array, u: jax.Array) -> jax.Array:
        """x = (x̄ + u) / K (continuous data are returned unchanged)."""
        if self.num_bins is None:
            return x.astype(jnp.float32)
        return to_unit_interval(x, self.num_bins, u)

    def train_input(self, x: jax.Array, keys: jax.Array) -> jax.Array:
        """Model input as in training: scaler((x̄ + u)/K) or scaler(x̄/(K−1))."""
        if self.num_bins is None:
            return self.scaler(x.astype(jnp.float32))
        u = self.uniform_noise(keys) if self.train_dequantized else None
        return self.scaler(to_unit_interval(x, self.num_bins, u))

    def quantize(self, x01: np.ndarray) -> np.ndarray:
        """Samples in [0, 1] → levels x̄ (uint8 / uint16, :func:`to_levels`); continuous
        vectors stay float32."""
        if self.num_bins is None:
            return np.asarray(x01, np.float32)
        dtype = np.uint8 if self.num_bins <= 256 else np.uint16
        return to_levels(x01, self.num_bins, self.train_dequantized).astype(dtype)

    def levels_to_unit(self, levels: np.ndarray) -> np.ndarray:
        """x̄/(K−1) ∈ [0, 1] (the grid of the feature networks' reference images)."""
        return to_unit_interval(np.asarray(levels), self.num_bins)


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
    process_index, process_count = _hosts(process_index, process_count)
    data = config.data
    mtime = file_io.mtime(data.path) if data.dataset == 'NPZ' and data.path else None
    key = (
        data.dataset,
        # TFRecords data have one split, read and held once for both names
        'train' if data.dataset in TFRECORD_DATASETS else split,
        data.path,
        mtime,
        data.data_dir,
        data.download,
        data.image_size,
        data.num_channels,
        data.num_bins,
        data.dim,
        data.category,
        data.tfrecords_path,
    )
    return _load_shard(key, process_index, process_count)


def _hosts(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None:
        process_index = jax.process_index()
    if process_count is None:
        process_count = jax.process_count()
    return process_index, process_count


@functools.lru_cache(maxsize=8)
def _load_shard(key: tuple, process_index: int, process_count: int) -> Shard:
    dataset, split, path, _, data_dir, download, image_size, num_channels, bins, dim = key[:10]
    category, tfrecords_path = key[10:]
    source = tfds_source(dataset, category)
    if source is not None:
        shard = _load_tfds(
            source, split, data_dir, download, image_size, process_index, process_count
        )
    elif dataset in TFRECORD_DATASETS:
        shard = _load_tfrecords(
            dataset, tfrecords_path, image_size, num_channels, process_index, process_count
        )
    else:
        array, labels = _load_in_memory(dataset, split, path, bins, dim)
        start, stop = shard_bounds(len(array), process_index, process_count)
        part = None if labels is None else labels[start:stop]
        shard = Shard(array[start:stop], len(array), start, part)
    _check_shape(shard.data, dataset, image_size, num_channels, dim)
    shard.data.flags.writeable = False
    if shard.labels is not None:
        assert shard.labels.shape == (len(shard.data),) and shard.labels.dtype == np.int32
        shard.labels.flags.writeable = False
    return shard


def _load_in_memory(
    dataset: str, split: str, path: str, bins: int, dim: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole split of a non-TFDS source and its int32 labels (or None)."""
    if dataset == 'DIGITS':
        return _load_digits(split)
    if dataset == 'PHOTOS':
        return _load_photos(split), None
    if dataset == 'NPZ':
        return _load_npz(path, split, bins), _npz_labels(path, split)
    if dataset == 'TOY':
        return _load_toy(split, dim)
    raise UserError(
        f'config.data.dataset={dataset!r} is not one of '
        f'{", ".join(DATASET_NUM_BINS)}; fix --config.data.dataset'
    )


def _check_shape(
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


# --- in-memory sources ----------------------------------------------------------------


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[n, 8, 8, 1]`` (levels 0–16) and their digits int32 ``[n]``."""
    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], 0..16
    order = np.random.default_rng(DIGITS_SEED).permutation(len(images))
    part = order[:DIGITS_NUM_TRAIN] if split == 'train' else order[DIGITS_NUM_TRAIN:]
    return images[part], digits.target[part].astype(np.int32)


def _photo(name: str) -> np.ndarray:
    """One bundled colour photograph, uint8 ``[H, W, 3]`` (no network needed)."""
    if name in ('china', 'flower'):
        bunch = load_sample_images()
        names = [os.path.basename(f) for f in bunch.filenames]
        return bunch.images[names.index(f'{name}.jpg')]
    from skimage import data as photos  # deferred: scikit-image is slow to import

    return photos.stereo_motorcycle()[0] if name == 'motorcycle' else getattr(photos, name)()


def photo_patches(image: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 16, 16, 3]``: ``image`` resized (PIL LANCZOS) to a shorter side of
    ``PHOTOS_SHORT_SIDE`` px, cut on a stride-``PHOTOS_STRIDE`` grid, row-major."""
    height, width = image.shape[:2]
    scale = PHOTOS_SHORT_SIDE / min(height, width)
    size = (round(width * scale), round(height * scale))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    shape = (PHOTOS_PATCH, PHOTOS_PATCH, 3)
    windows = np.lib.stride_tricks.sliding_window_view(resized, shape)  # [h', w', 1, *shape]
    return np.ascontiguousarray(windows[::PHOTOS_STRIDE, ::PHOTOS_STRIDE, 0].reshape(-1, *shape))


def _load_photos(split: str) -> np.ndarray:
    """The PHOTOS patches of ``split``: its photographs' patches, in ``PHOTOS_SPLITS`` order."""
    return np.concatenate([photo_patches(_photo(name)) for name in PHOTOS_SPLITS[split]])


def toy_distribution(config: ml_collections.ConfigDict) -> mixture.GaussianMixture:
    """The TOY data density: ``mixture.ring_mixture(dim=data.dim)``, exact log p and score."""
    return mixture.ring_mixture(dim=int(config.data.dim))


def _load_toy(split: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples float32 ``[n, dim]`` of the ring mixture and their components int32 ``[n]``."""
    n = TOY_NUM_TRAIN if split == 'train' else TOY_NUM_TEST
    key = jax.random.PRNGKey(TOY_SEEDS[split])
    with jax.default_device(jax.devices('cpu')[0]):
        x, k = mixture.ring_mixture(dim=dim).sample_with_components(key, n)
        return np.asarray(x, np.float32), np.asarray(k, np.int32)


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


# --- TFDS -----------------------------------------------------------------------------


def tfds_source(dataset: str, category: str = '') -> TfdsSource | None:
    """The TFDS dataset behind ``config.data.dataset`` (LSUN: ``lsun/<category>``, its
    train and validation splits, as Score SDE); None for data from other sources."""
    if dataset == 'LSUN':
        return TfdsSource(f'lsun/{category}', LSUN_VERSION, 'train', 'validation')
    return TFDS_SOURCES.get(dataset)


def _load_tfds(
    source: TfdsSource,
    split: str,
    data_dir: str,
    download: bool,
    image_size: int,
    process_index: int,
    process_count: int,
) -> Shard:
    """Read this host's slice ``split[start:stop]`` of a prepared TFDS dataset."""
    if not download and data_dir and '://' not in data_dir:
        # A prepared dataset has its dataset_info.json: without it, fail before TFDS (and
        # the seconds of importing TensorFlow) with the same message.
        version_dir = os.path.join(os.path.expanduser(data_dir), source.name, source.version)
        if not os.path.isfile(os.path.join(version_dir, 'dataset_info.json')):
            raise UserError(_not_prepared_message(source, version_dir, data_dir))
    import tensorflow_datasets as tfds  # deferred: TensorFlow costs seconds to import

    try:
        builder = tfds.builder(source.versioned_name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:  # unregistered and not prepared
        raise UserError(
            _not_prepared_message(source, data_dir or 'the TFDS default', data_dir)
        ) from e
    if download:
        builder.download_and_prepare()
    tfds_split = source.train_split if split == 'train' else source.test_split
    info = builder.info.splits.get(tfds_split) if builder.info.splits else None
    total = info.num_examples if info is not None else None
    start, stop = 0, total
    if process_count > 1:
        if total is None:
            raise UserError(
                f'TFDS {source.versioned_name} does not record the size of its '
                f'{tfds_split!r} split, needed to shard it over hosts'
            )
        start, stop = shard_bounds(total, process_index, process_count)
        tfds_split = f'{tfds_split}[{start}:{stop}]'
    try:
        ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
    except AssertionError as e:  # TFDS's "could not find data" when not prepared
        raise UserError(_not_prepared_message(source, builder.data_dir, data_dir)) from e
    with_labels = 'label' in builder.info.features.keys()
    count = None if total is None else stop - start
    preprocess = _tfds_preprocess(source, image_size)
    batch = _read_batch(image_size, 3)
    images, labels = _read_tfds(ds, preprocess, with_labels, count, batch)
    return Shard(images, total if total is not None else len(images), start, labels)


def _read_batch(image_size: int, num_channels: int) -> int:
    """Images per read batch: ``_READ_BATCH``, at most ``_READ_BATCH_BYTES`` of uint8."""
    return max(1, min(_READ_BATCH, _READ_BATCH_BYTES // max(1, image_size**2 * num_channels)))


def _read_tfds(
    ds, preprocess: Callable, with_labels: bool, count: int | None, batch: int = _READ_BATCH
) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed images (``_collect``) and, ``with_labels``, int32 labels of the
    examples' ``'label'`` feature, read in the same pass."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def example_map(example):
        label = tf.cast(example['label'], tf.int32) if with_labels else tf.constant(-1)
        return preprocess(example['image']), label

    ds = ds.map(example_map, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    label_batches = []
    images = _collect(_images_keeping_labels(tfds.as_numpy(ds), label_batches), count)
    labels = np.concatenate([np.zeros(0, np.int32), *label_batches]) if with_labels else None
    return images, labels


def _images_keeping_labels(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], labels: list
) -> Iterator[np.ndarray]:
    """The image of each (image, label) batch; the labels are appended to ``labels``."""
    for images, batch_labels in batches:
        labels.append(batch_labels.astype(np.int32))
        yield images


def _collect(batches: Iterator[np.ndarray], count: int | None) -> np.ndarray:
    """Concatenate batches; into one preallocated array when the count is known (ImageNet32
    is 3.9 GB: no second copy)."""
    if count is None:
        batches = list(batches)
        return np.concatenate(batches) if batches else np.zeros((0, 0, 0, 0), np.uint8)
    out, filled = None, 0
    for batch in batches:
        if out is None:
            out = np.empty((count,) + batch.shape[1:], batch.dtype)
        out[filled : filled + len(batch)] = batch
        filled += len(batch)
    if filled != count:
        raise UserError(
            f'the prepared TFDS data hold {filled} examples where their metadata '
            f'promise {count}; prepare the dataset again'
        )
    return out


def _not_prepared_message(source: TfdsSource, where: str, data_dir: str) -> str:
    dir_flag = f' --data_dir {data_dir}' if data_dir else ''
    # TFDS's LSUN builder reads the downloaded LMDB archives through tensorflow-io
    lsun = (
        " in an environment with tensorflow-io, which LSUN's builder reads its LMDB "
        'archives with (README, Datasets)'
        if source.name[:5] == 'lsun/'
        else ''
    )
    return (
        f'TFDS dataset {source.versioned_name} is not prepared (looked in {where}). '
        f'Prepare it on a machine with network access: `tfds build '
        f'{source.versioned_name}{dir_flag}`{lsun} (then copy the data directory here and '
        f'set --config.data.data_dir), or pass --config.data.download=True to let TFDS '
        f'download and prepare it now.'
    )


def _tfds_preprocess(source: TfdsSource, image_size: int) -> Callable:
    """uint8 image → uint8 image of ``image_size`` (CelebA: centre crop 140 first; LSUN:
    :func:`lsun_resize`)."""
    import tensorflow as tf

    def resize(image):
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    def preprocess(image):
        if source.name == 'celeb_a':
            image = tf.image.resize_with_crop_or_pad(image, CELEBA_CROP, CELEBA_CROP)
            return resize(image)
        if source.name[:5] == 'lsun/':
            return lsun_resize(image, image_size)
        if image.shape[0] == image_size and image.shape[1] == image_size:
            return image
        return resize(image)

    return preprocess


def lsun_resize(image, image_size: int):
    """An LSUN image (uint8 ``[H, W, C]``, any size) → uint8 ``[image_size, image_size, C]``,
    as Score SDE.

    At ``LSUN_SHRINK_SIZE`` (128) px: resize (bilinear, antialiased) so that the shorter
    side is 128 and the other round(side · 128 / shorter side), half to even; then crop
    the centre, offsets ⌊(side − 128)/2⌋; round to uint8. Other sizes: crop the central
    square of the shorter side's length, offsets ⌊(side − shorter)/2⌋, resize it (bicubic,
    antialiased) and truncate to uint8 as the original's cast does, after clipping to
    [0, 255] (the original casts bicubic overshoots, e.g. −2, without clipping, so they wrap
    around to bright values). The TFDS images' shorter side is 256, so at 256 px the crop
    is all there is (the resize is exact).
    """
    import tensorflow as tf

    height, width = tf.shape(image)[0], tf.shape(image)[1]
    if image_size == LSUN_SHRINK_SIZE:
        hw = tf.cast(tf.stack([height, width]), tf.float64)
        size = tf.cast(tf.round(hw * (image_size / tf.reduce_min(hw))), tf.int32)
        image = tf.image.resize(image, size, antialias=True)
        top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image[top : top + image_size, left : left + image_size]
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    else:
        side = tf.minimum(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
        image = tf.image.resize(image, (image_size, image_size), method='bicubic', antialias=True)
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    return tf.ensure_shape(image, (image_size, image_size, image.shape[-1]))


# --- TFRecords (CelebA-HQ, FFHQ) ------------------------------------------------------


def _load_tfrecords(
    dataset: str,
    path: str,
    image_size: int,
    num_channels: int,
    process_index: int,
    process_count: int,
) -> Shard:
    """This host's contiguous slice of the images of the TFRecords file(s) ``path`` (a
    file name or a glob pattern; local or ``gs://``). Score SDE reads every record for
    training and for evaluation alike: the shard serves both splits."""
    import tensorflow as tf

    files = _tfrecord_files(dataset, path)
    records = tf.data.TFRecordDataset(files)
    try:
        total = int(records.reduce(np.int64(0), lambda n, _: n + 1))
        first = next(iter(records.take(1)), None)
        shape = None if first is None else tuple(_decode_record(first).shape)
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(_bad_records_message(dataset, path, e)) from None
    if shape is None:
        raise UserError(
            f'config.data.tfrecords_path={path!r} holds no records; ' + _prepare(dataset)
        )
    if shape != (image_size, image_size, num_channels):
        raise UserError(_tfrecords_shape_message(path, shape, image_size, num_channels))
    start, stop = shard_bounds(total, process_index, process_count)
    ds = records.skip(start).take(stop - start)
    ds = ds.map(_decode_record, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(_read_batch(image_size, num_channels))
    try:
        images = _collect(ds.as_numpy_iterator(), stop - start)
    except tf.errors.OpError as e:
        raise UserError(_bad_records_message(dataset, path, e)) from None
    return Shard(images, total, start, None)


def _tfrecords_shape_message(
    path: str, shape: tuple[int, ...], image_size: int, num_channels: int
) -> str:
    height, width, channels = shape
    log2 = math.log2(image_size) if image_size > 0 else 0.5
    name = f' (<name>-r{int(log2):02d}.tfrecords)' if log2.is_integer() else ''
    fix = f'--config.data.image_size={height}'
    if channels != num_channels:
        fix += f' --config.data.num_channels={channels}'
    return (
        f'config.data.tfrecords_path={path!r} holds {height}×{width}×{channels} images but '
        f'config.data.image_size={image_size} and num_channels={num_channels} (these '
        f'records are not resized, as in Score SDE); point it at the file of '
        f'{image_size}×{image_size} images{name} or set {fix}'
        + ('' if height == width else ' (only square images are supported)')
    )


def _tfrecord_files(dataset: str, path: str) -> list[str]:
    """The files that ``path`` names (a glob pattern may name several); UserError when
    none exists."""
    import tensorflow as tf

    if not path:
        raise UserError(
            f'config.data.tfrecords_path is empty but data.dataset={dataset!r} reads '
            f'its images from it; ' + _prepare(dataset)
        )
    try:
        files = sorted(tf.io.gfile.glob(path))
    except tf.errors.OpError as e:
        reason = ' '.join(e.message.split())
        raise UserError(f'config.data.tfrecords_path={path!r} cannot be read ({reason})') from None
    if not files:
        raise UserError(f'config.data.tfrecords_path={path!r} does not exist; ' + _prepare(dataset))
    return files


def _prepare(dataset: str) -> str:
    """How to make the TFRecords file of ``dataset``, for error messages."""
    tool = (
        '`python dataset_tool.py create_celebahq DIR CELEBA_DIR DELTAS_DIR` of '
        'tkarras/progressive_growing_of_gans'
        if dataset == 'CelebAHQ'
        else '`python download_ffhq.py --tfrecords` of NVlabs/ffhq-dataset'
    )
    return (
        f'make the {dataset} records with {tool} (one file per resolution, '
        f'<name>-rNN.tfrecords with 2^NN pixels: r08 = 256, r10 = 1024), or write your own '
        f'uint8 images with datasets.write_image_tfrecords, and set '
        f'--config.data.tfrecords_path to the file'
    )


def _bad_records_message(dataset: str, path: str, error: Exception) -> str:
    reason = ' '.join(getattr(error, 'message', str(error)).split())
    return (
        f'config.data.tfrecords_path={path!r} is not a file of {dataset} records '
        f"(features 'shape' = int64 [C, H, W] and 'data' = raw uint8 bytes): {reason}; "
        + _prepare(dataset)
    )


def _decode_record(record):
    """One serialized record → its uint8 image ``[H, W, C]`` (stored as [C, H, W])."""
    import tensorflow as tf

    features = {
        'shape': tf.io.FixedLenFeature([3], tf.int64),
        'data': tf.io.FixedLenFeature([], tf.string),
    }
    example = tf.io.parse_single_example(record, features)
    image = tf.reshape(tf.io.decode_raw(example['data'], tf.uint8), example['shape'])
    return tf.transpose(image, (1, 2, 0))


def write_image_tfrecords(path: str, images: np.ndarray) -> None:
    """Write uint8 images ``[N, H, W, C]`` to the TFRecords file ``path`` in the record
    format of CelebA-HQ / FFHQ (``data.dataset`` 'CelebAHQ' or 'FFHQ'): one example per
    image with features 'shape' = [C, H, W] (int64) and 'data' = the image's bytes in
    C, H, W order, as progressive GAN's and StyleGAN's dataset tools write them."""
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f'images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}')
    with tf.io.TFRecordWriter(path) as writer:
        for image in images:
            chw = np.ascontiguousarray(image.transpose(2, 0, 1))
            feature = {
                'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=chw.shape)),
                'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


# --- iterators ------------------------------------------------------------------------


def host_batch_size(batch_size: int, process_count: int, field: str) -> int:
    """Per-host part of a global batch (validate_config checks the divisibility)."""
    if batch_size % process_count:
        raise UserError(
            f'config.{field}={batch_size} is not divisible by the '
            f'{process_count} hosts; use a multiple of {process_count}'
        )
    return batch_size // process_count


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, process_index: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, process_index, epoch]).permutation(n)


def _epoch_and_index(n: int, step: int, batch_size: int) -> tuple[int, int]:
    """(epoch, batch within the epoch) of ``step``; an epoch is ⌊n / batch_size⌋ batches."""
    if batch_size > n:
        raise UserError(
            f'the per-host training batch ({batch_size}) is larger than this '
            f"host's {n} training examples; lower --config.training.batch_size"
        )
    return divmod(step, n // batch_size)


def _batch_rows(
    config: ml_collections.ConfigDict,
    shard: Shard,
    step: int,
    batch_size: int,
    process_index: int = 0,
) -> np.ndarray:
    """Rows of ``shard`` in the batch of ``step``, ascending: a slice of the epoch's
    permutation ``default_rng([seed, host, epoch])``."""
    epoch, index = _epoch_and_index(len(shard), step, batch_size)
    order = _epoch_permutation(config.seed, process_index, epoch, len(shard))
    return np.sort(order[index * batch_size : (index + 1) * batch_size])


def train_batch(
    config: ml_collections.ConfigDict,
    shard: Shard,
    step: int,
    batch_size: int,
    process_index: int = 0,
) -> np.ndarray:
    """The host's training batch of ``step``: float32 ``[batch_size, ...]`` in [0, 1]
    (images) or the vectors; a pure function of (config.seed, step, process_index)."""
    epoch, index = _epoch_and_index(len(shard), step, batch_size)
    x = shard.data[_batch_rows(config, shard, step, batch_size, process_index)]
    if x.ndim == 2:
        return x.astype(np.float32, copy=False)
    rng = np.random.default_rng([config.seed, process_index, epoch, index, 1])
    if config.data.random_flip:
        flip = rng.random(batch_size) < 0.5
        x[flip] = x[flip, :, ::-1]
    u = rng.random(x.shape, dtype=np.float32) if config.data.uniform_dequantization else None
    return to_unit_interval(x, config.data.num_bins, u)


def train_labels(
    config: ml_collections.ConfigDict,
    shard: Shard,
    step: int,
    batch_size: int,
    process_index: int = 0,
) -> np.ndarray:
    """int32 ``[batch_size]``: the labels of the rows of ``train_batch`` for ``step``, in
    the same order (flips keep labels)."""
    if shard.labels is None:
        raise UserError(_no_labels_message(config))
    return shard.labels[_batch_rows(config, shard, step, batch_size, process_index)]


def _no_labels_message(config: ml_collections.ConfigDict) -> str:
    return (
        f'config.data.dataset={config.data.dataset!r} has no class labels; labels come '
        f'with {", ".join(DATASET_NUM_CLASSES)}, TOY, and NPZ files with integer arrays '
        f'train_labels and test_labels'
    )


def get_train_iterator(
    config: ml_collections.ConfigDict,
    start_step: int = 0,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    with_labels: bool = False,
) -> Iterator[np.ndarray] | Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless host-local training batches, ``n_jitted_steps`` steps at a time.

    Yields float32 ``[n_jitted_steps, batch_size / process_count, ...]`` for steps
    ``start_step + k·n_jitted_steps …``; the batch of every step depends only on
    (config.seed, step, host), so resuming at ``start_step`` reproduces the run. With
    ``with_labels``, tuples (x, y) with the same x and y int32 ``[n_jitted_steps, B]`` the
    labels of its rows; :class:`UserError` at once when the dataset has no labels.
    """
    if with_labels and not has_labels(config):
        raise UserError(_no_labels_message(config))
    return _train_iterator(config, start_step, process_index, process_count, with_labels)


def _train_iterator(
    config: ml_collections.ConfigDict,
    start_step: int,
    process_index: int | None,
    process_count: int | None,
    with_labels: bool,
) -> Iterator:
    process_index, process_count = _hosts(process_index, process_count)
    shard = get_shard(config, 'train', process_index=process_index, process_count=process_count)
    batch_size = host_batch_size(config.training.batch_size, process_count, 'training.batch_size')
    jitted = config.training.n_jitted_steps
    step = start_step
    while True:
        steps = range(step, step + jitted)
        x = np.stack([train_batch(config, shard, s, batch_size, process_index) for s in steps])
        if with_labels:
            y = [train_labels(config, shard, s, batch_size, process_index) for s in steps]
            yield x, np.stack(y)
        else:
            yield x
        step += jitted


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Batches per pass over a split; the same on every host (the largest shard decides)."""
    largest_shard = -(-num_examples // process_count)
    return -(-largest_shard // (batch_size // process_count))


def get_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str = 'test',
    batch_size: int | None = None,
    start_batch: int = 0,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[EvalBatch]:
    """One pass over ``split`` in a fixed order: host-local ``EvalBatch`` (x, mask, index,
    labels).

    ``x`` holds the raw data (uint8 levels or float32 vectors; map levels to [0, 1] with
    ``to_unit_interval``). Every host yields ``num_eval_batches`` batches of
    ``batch_size / process_count`` rows (default ``eval.batch_size``); rows past the end of
    its shard are padding (zeros, mask False, index −1, label −1). ``labels`` are −1 for
    data without labels. ``start_batch`` resumes a pass.
    """
    process_index, process_count = _hosts(process_index, process_count)
    shard = get_shard(config, split, process_index=process_index, process_count=process_count)
    batch_size = host_batch_size(
        batch_size or config.eval.batch_size, process_count, 'eval.batch_size'
    )
    total = num_eval_batches(shard.num_examples, batch_size * process_count, process_count)
    for b in range(start_batch, total):
        rows = shard.data[b * batch_size : (b + 1) * batch_size]
        x = np.zeros((batch_size,) + shard.data.shape[1:], shard.data.dtype)
        x[: len(rows)] = rows
        mask = np.arange(batch_size) < len(rows)
        index = np.where(mask, shard.start + b * batch_size + np.arange(batch_size), -1)
        labels = np.full(batch_size, -1, np.int32)
        if shard.labels is not None:
            labels[: len(rows)] = shard.labels[b * batch_size : (b + 1) * batch_size]
        yield EvalBatch(x, mask, index.astype(np.int32), labels)
