"""TensorFlow Datasets sources: CIFAR10, SVHN, IMAGENET32, CELEBA and LSUN (256 levels).

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
- CelebA, ImageNet32 and LSUN have no labels; the others' are the TFDS ``label`` feature.
  Images of another size than ``data.image_size`` are resized (bilinear, antialiased).

TFDS data must be prepared beforehand (``tfds build cifar10 --data_dir DIR`` on a machine
with network) or downloaded on first use with ``--config.data.download=True``; missing
data fails at once with a message saying so. With a local ``data.data_dir`` the missing
``<name>/<version>/dataset_info.json`` is seen before TFDS is imported (about 1 ms; through
TFDS 4.9.10, whose GCS look-ups are off, it took 0.3 s plus 4 s to import TensorFlow,
measured with an empty ``data_dir`` on 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import ml_collections
import numpy as np

from datasets.base import DataSource, Shard, register_source, shard_bounds
from errors import UserError, config_error

# Images per batch when reading TFDS / TFRecords data: 4096, or fewer to keep a batch
# under 256 MB (1365 at 256 px, 85 at 1024 px).
_READ_BATCH = 4096
_READ_BATCH_BYTES = 2**28
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


class TfdsData(DataSource):
    """The TFDS dataset ``TFDS_SOURCES[name]``: 256 levels, read from
    ``data.data_dir`` (downloaded first with ``data.download``)."""

    num_levels = 256
    fields = ('data_dir', 'download')
    prepare_note = ''  # what else preparing the dataset needs, for the error message

    def __init__(
        self,
        name: str,
        num_classes: Optional[int] = None,
        channel_stats: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None,
    ):
        self.name, self.num_classes, self.channel_stats = name, num_classes, channel_stats
        self.labels_from = 'the TFDS label' if num_classes else ''

    def tfds_source(self, data: Any) -> TfdsSource:
        """The TFDS dataset of the config's ``data`` section."""
        return TFDS_SOURCES[self.name]

    def info(self, config: ml_collections.ConfigDict) -> Dict[str, Any]:
        source = self.tfds_source(config.data)
        return {
            'tfds_name': source.name,
            'tfds_version': source.version,
            'splits': {'train': source.train_split, 'test': source.test_split},
        }

    def preprocess(self, image_size: int) -> Callable:
        """uint8 image → uint8 image of ``image_size`` (resized when of another size)."""
        import tensorflow as tf

        def preprocess(image):
            if image.shape[0] == image_size and image.shape[1] == image_size:
                return image
            return _resize(tf, image, image_size)

        return preprocess

    def load(
        self, data: types.SimpleNamespace, split: str, process_index: int, process_count: int
    ) -> Shard:
        """Read this host's slice ``split[start:stop]`` of the prepared TFDS dataset."""
        source = self.tfds_source(data)
        if not data.download and data.data_dir and '://' not in data.data_dir:
            # A prepared dataset has its dataset_info.json: without it, fail before TFDS
            # (and the seconds of importing TensorFlow) with the same message.
            version_dir = os.path.join(
                os.path.expanduser(data.data_dir), source.name, source.version
            )
            if not os.path.isfile(os.path.join(version_dir, 'dataset_info.json')):
                raise UserError(self._not_prepared(source, version_dir, data.data_dir))
        import tensorflow_datasets as tfds  # deferred: TensorFlow costs seconds to import

        try:
            builder = tfds.builder(source.versioned_name, data_dir=data.data_dir or None)
        except tfds.core.registered.DatasetNotFoundError as e:  # unregistered, not prepared
            where = data.data_dir or 'the TFDS default'
            raise UserError(self._not_prepared(source, where, data.data_dir)) from e
        if data.download:
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
            raise UserError(self._not_prepared(source, builder.data_dir, data.data_dir)) from e
        with_labels = 'label' in builder.info.features.keys()
        count = None if total is None else stop - start
        preprocess = self.preprocess(data.image_size)
        batch = read_batch_size(data.image_size, 3)
        images, labels = _read_tfds(ds, preprocess, with_labels, count, batch)
        return Shard(images, total if total is not None else len(images), start, labels)

    def _not_prepared(self, source: TfdsSource, where: str, data_dir: str) -> str:
        dir_flag = f' --data_dir {data_dir}' if data_dir else ''
        return (
            f'TFDS dataset {source.versioned_name} is not prepared (looked in {where}). '
            f'Prepare it on a machine with network access: `tfds build '
            f'{source.versioned_name}{dir_flag}`{self.prepare_note} (then copy the data '
            f'directory here and set --config.data.data_dir), or pass '
            f'--config.data.download=True to let TFDS download and prepare it now.'
        )


class CelebaData(TfdsData):
    """CelebA: the centre crop ``CELEBA_CROP`` × ``CELEBA_CROP``, resized."""

    def preprocess(self, image_size: int) -> Callable:
        import tensorflow as tf

        def preprocess(image):
            image = tf.image.resize_with_crop_or_pad(image, CELEBA_CROP, CELEBA_CROP)
            return _resize(tf, image, image_size)

        return preprocess


class LsunData(TfdsData):
    """LSUN: TFDS ``lsun/<data.category>``, train / validation, :func:`lsun_resize`."""

    fields = ('data_dir', 'download', 'category')
    # TFDS's LSUN builder reads the downloaded LMDB archives through tensorflow-io
    prepare_note = (
        " in an environment with tensorflow-io, which LSUN's builder reads its LMDB "
        'archives with (README, Datasets)'
    )

    def tfds_source(self, data: Any) -> TfdsSource:
        return TfdsSource(f'lsun/{data.category}', LSUN_VERSION, 'train', 'validation')

    def preprocess(self, image_size: int) -> Callable:
        return lambda image: lsun_resize(image, image_size)

    def check(self, config: ml_collections.ConfigDict) -> None:
        if config.data.category not in LSUN_CATEGORIES:
            raise config_error(
                'data.category',
                config.data.category,
                f"names no LSUN scene category of TFDS 'lsun'; use one of "
                f'{", ".join(LSUN_CATEGORIES)}',
            )
        super().check(config)


def _resize(tf: Any, image, image_size: int):
    """Bilinear, antialiased resize to ``image_size`` × ``image_size``, rounded to uint8."""
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def read_batch_size(image_size: int, num_channels: int) -> int:
    """Images per read batch: ``_READ_BATCH``, at most ``_READ_BATCH_BYTES`` of uint8."""
    return max(1, min(_READ_BATCH, _READ_BATCH_BYTES // max(1, image_size**2 * num_channels)))


def _read_tfds(
    ds, preprocess: Callable, with_labels: bool, count: int | None, batch: int = _READ_BATCH
) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed images (:func:`collect`) and, ``with_labels``, int32 labels of the
    examples' ``'label'`` feature, read in the same pass."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def example_map(example):
        label = tf.cast(example['label'], tf.int32) if with_labels else tf.constant(-1)
        return preprocess(example['image']), label

    ds = ds.map(example_map, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    label_batches = []
    images = collect(_images_keeping_labels(tfds.as_numpy(ds), label_batches), count)
    labels = np.concatenate([np.zeros(0, np.int32), *label_batches]) if with_labels else None
    return images, labels


def _images_keeping_labels(
    batches: Iterator[tuple[np.ndarray, np.ndarray]], labels: list
) -> Iterator[np.ndarray]:
    """The image of each (image, label) batch; the labels are appended to ``labels``."""
    for images, batch_labels in batches:
        labels.append(batch_labels.astype(np.int32))
        yield images


def collect(batches: Iterator[np.ndarray], count: int | None) -> np.ndarray:
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


# CIFAR-10's per-channel mean and std in [0, 1]: the constants with which score_sde's
# models/utils.py:get_logit_fn normalises the input of its noise-conditional classifier.
CIFAR10_CHANNEL_STATS = (
    (0.49139968, 0.48215841, 0.44653091),
    (0.24703223, 0.24348513, 0.26158784),
)
register_source(TfdsData('CIFAR10', num_classes=10, channel_stats=CIFAR10_CHANNEL_STATS))
register_source(TfdsData('SVHN', num_classes=10))
register_source(TfdsData('IMAGENET32'))
register_source(CelebaData('CELEBA'))
register_source(LsunData('LSUN'))
