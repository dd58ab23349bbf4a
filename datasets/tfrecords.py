"""Score SDE's TFRecords sources: ``CelebAHQ`` and ``FFHQ`` (256 levels, no labels).

The TFRecords file(s) ``data.tfrecords_path`` (a path or glob pattern, local or ``gs://``)
of progressive GAN's / StyleGAN's dataset tools, one example per image with features
``'shape'`` (int64 [C, H, W]) and ``'data'`` (its raw uint8 bytes, C, H, W order);
:func:`write_image_tfrecords` writes the format. Not resized, as in Score SDE: the file
must hold ``data.image_size`` images (one file per resolution, ``…-r08.tfrecords`` = 256
px). Train and test are both every record, as in the original (CelebA-HQ 30000 images,
FFHQ 70000). A missing TFRecords file fails fast (after the TensorFlow import), naming the
path and how to make the file.
"""

from __future__ import annotations

import math
import types
from typing import Any, Dict

import ml_collections
import numpy as np

from datasets.base import DataSource, Shard, register_source, shard_bounds
from datasets.tfds import collect, read_batch_size
from errors import UserError, config_error


class TfrecordsData(DataSource):
    """Images of the TFRecords file(s) ``data.tfrecords_path``, made by ``tool``."""

    num_levels = 256
    fields = ('tfrecords_path',)

    def __init__(self, name: str, tool: str):
        self.name, self.tool = name, tool

    def stored_split(self, split: str) -> str:
        return 'train'  # Score SDE evaluates on the same records: read and held once

    def check(self, config: ml_collections.ConfigDict) -> None:
        if not config.data.tfrecords_path:
            raise config_error(
                'data.tfrecords_path',
                config.data.tfrecords_path,
                f'is empty but data.dataset={self.name!r} reads its images from '
                'TFRecords; set --config.data.tfrecords_path=/path/to/<name>-rNN.tfrecords',
            )
        super().check(config)

    def info(self, config: ml_collections.ConfigDict) -> Dict[str, Any]:
        return {
            'source': config.data.tfrecords_path,
            'record_format': "features 'shape' (int64 [C, H, W]) and 'data' (raw uint8 bytes)",
            'splits': {'train': 'every record', 'test': 'every record (as Score SDE)'},
        }

    def load(
        self, data: types.SimpleNamespace, split: str, process_index: int, process_count: int
    ) -> Shard:
        """This host's contiguous slice of the images of the TFRecords file(s) (a file
        name or a glob pattern; local or ``gs://``); the shard serves both splits."""
        import tensorflow as tf

        path, image_size, num_channels = data.tfrecords_path, data.image_size, data.num_channels
        records = tf.data.TFRecordDataset(self._files(path))
        try:
            total = int(records.reduce(np.int64(0), lambda n, _: n + 1))
            first = next(iter(records.take(1)), None)
            shape = None if first is None else tuple(_decode_record(first).shape)
        except (tf.errors.OpError, ValueError) as e:
            raise UserError(self._bad_records(path, e)) from None
        if shape is None:
            raise UserError(
                f'config.data.tfrecords_path={path!r} holds no records; ' + self._prepare()
            )
        if shape != (image_size, image_size, num_channels):
            raise UserError(_shape_message(path, shape, image_size, num_channels))
        start, stop = shard_bounds(total, process_index, process_count)
        ds = records.skip(start).take(stop - start)
        ds = ds.map(_decode_record, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(read_batch_size(image_size, num_channels))
        try:
            images = collect(ds.as_numpy_iterator(), stop - start)
        except tf.errors.OpError as e:
            raise UserError(self._bad_records(path, e)) from None
        return Shard(images, total, start, None)

    def _files(self, path: str) -> list[str]:
        """The files that ``path`` names (a glob pattern may name several); UserError
        when none exists."""
        import tensorflow as tf

        if not path:
            raise UserError(
                f'config.data.tfrecords_path is empty but data.dataset={self.name!r} reads '
                f'its images from it; ' + self._prepare()
            )
        try:
            files = sorted(tf.io.gfile.glob(path))
        except tf.errors.OpError as e:
            reason = ' '.join(e.message.split())
            raise UserError(
                f'config.data.tfrecords_path={path!r} cannot be read ({reason})'
            ) from None
        if not files:
            raise UserError(
                f'config.data.tfrecords_path={path!r} does not exist; ' + self._prepare()
            )
        return files

    def _prepare(self) -> str:
        """How to make the records, for error messages."""
        return (
            f'make the {self.name} records with {self.tool} (one file per resolution, '
            f'<name>-rNN.tfrecords with 2^NN pixels: r08 = 256, r10 = 1024), or write your '
            f'own uint8 images with datasets.write_image_tfrecords, and set '
            f'--config.data.tfrecords_path to the file'
        )

    def _bad_records(self, path: str, error: Exception) -> str:
        reason = ' '.join(getattr(error, 'message', str(error)).split())
        return (
            f'config.data.tfrecords_path={path!r} is not a file of {self.name} records '
            f"(features 'shape' = int64 [C, H, W] and 'data' = raw uint8 bytes): {reason}; "
            + self._prepare()
        )


def _shape_message(path: str, shape: tuple[int, ...], image_size: int, num_channels: int) -> str:
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


# Score SDE's TFRecords datasets (config.data.tfrecords_path).
TFRECORD_SOURCES = (
    TfrecordsData(
        'CelebAHQ',
        '`python dataset_tool.py create_celebahq DIR CELEBA_DIR DELTAS_DIR` of '
        'tkarras/progressive_growing_of_gans',
    ),
    TfrecordsData('FFHQ', '`python download_ffhq.py --tfrecords` of NVlabs/ffhq-dataset'),
)
for _source in TFRECORD_SOURCES:
    register_source(_source)
TFRECORD_DATASETS = tuple(source.name for source in TFRECORD_SOURCES)
