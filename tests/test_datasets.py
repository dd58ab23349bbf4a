"""Datasets: sources, host shards, resumable training order, exact-once evaluation, scalers."""

from __future__ import annotations

import time

import numpy as np
import pytest

import datasets
from configs.default_cifar10_configs import get_default_configs as cifar10_config
from configs.default_digits_configs import get_default_configs as digits_config
from configs.default_toy_configs import get_default_configs as toy_config
from errors import UserError


def npz_config(
    path, *, image_size=0, num_channels=0, num_bins=256, dim=1, batch_size=8, n_jitted_steps=2
):
    config = digits_config()
    config.data.update(
        {
            'dataset': 'NPZ',
            'path': str(path),
            'image_size': image_size,
            'num_channels': num_channels,
            'num_bins': num_bins,
            'dim': dim,
        }
    )
    config.training.batch_size = batch_size
    config.training.n_jitted_steps = n_jitted_steps
    return config


@pytest.fixture
def id_vectors(tmp_path):
    """NPZ vector data whose single coordinate is the example's index: 40 train, 13 test."""
    path = tmp_path / 'ids.npz'
    np.savez(
        path,
        train=np.arange(40, dtype=np.float32)[:, None],
        test=np.arange(13, dtype=np.float32)[:, None],
    )
    return path


@pytest.fixture
def small_images(tmp_path):
    """NPZ images, 4×4×3 with 16 levels, 30 train / 7 test."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 16, (30, 4, 4, 3), dtype=np.uint8)
    test = rng.integers(0, 16, (7, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / 'images.npz'
    np.savez(path, train=train, test=test)
    return path, train, test


# --- sources --------------------------------------------------------------------------


def test_digits_split():
    from sklearn.datasets import load_digits

    config = digits_config()
    train = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    test = datasets.get_shard(config, 'test', process_index=0, process_count=1)
    assert train.data.shape == (1600, 8, 8, 1) and test.data.shape == (197, 8, 8, 1)
    assert train.data.dtype == np.uint8 and (train.num_examples, test.num_examples) == (1600, 197)
    assert train.data.min() == 0 and train.data.max() == 16 and test.data.max() <= 16
    assert datasets.num_bins(config) == 17 and datasets.data_shape(config) == (8, 8, 1)
    images = load_digits().images.astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(1797)  # the documented split
    np.testing.assert_array_equal(train.data, images[order[:1600]])
    np.testing.assert_array_equal(test.data, images[order[1600:]])
    datasets._load_shard.cache_clear()
    again = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    assert again is not train
    np.testing.assert_array_equal(again.data, train.data)
    assert not train.data.flags.writeable


def test_npz_images_round_trip(small_images):
    path, train, test = small_images
    config = npz_config(path, image_size=4, num_channels=3, num_bins=16)
    shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    np.testing.assert_array_equal(shard.data, train)
    assert not datasets.is_continuous(config) and datasets.num_bins(config) == 16
    assert datasets.data_shape(config) == (4, 4, 3)
    batches = list(
        datasets.get_eval_iterator(config, 'test', batch_size=4, process_index=0, process_count=1)
    )
    x = np.concatenate([b.x[b.mask] for b in batches])
    np.testing.assert_array_equal(x, test)
    assert x.dtype == np.uint8


def test_npz_vectors_round_trip(tmp_path):
    train = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float64)
    path = tmp_path / 'vectors.npz'
    np.savez(path, train=train, test=train[:5])
    config = npz_config(path, dim=3)
    config.data.centered = True  # ignored for vectors
    shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    np.testing.assert_allclose(shard.data, train, rtol=1e-6)
    assert shard.data.dtype == np.float32
    assert datasets.is_continuous(config) and datasets.num_bins(config) is None
    assert datasets.data_shape(config) == (3,)
    assert datasets.get_data_scaler(config)(shard.data) is shard.data
    batch = next(datasets.get_train_iterator(config, process_index=0, process_count=1))
    assert batch.shape == (2, 8, 3)
    assert all(any(np.array_equal(row, t) for t in shard.data) for row in batch.reshape(-1, 3))


@pytest.mark.parametrize(
    'problem,arrays,overrides,field',
    [
        ('levels too high', {'train': np.full((2, 4, 4, 3), 16, np.uint8)}, {}, 'num_bins'),
        ('wrong size', {'train': np.zeros((2, 5, 5, 3), np.uint8)}, {}, 'data.image_size'),
        ('wrong channels', {'train': np.zeros((2, 4, 4, 1), np.uint8)}, {}, 'data.num_channels'),
        ('wrong dim', {'train': np.zeros((2, 3), np.float32)}, {'dim': 4}, 'data.dim'),
        ('bad rank', {'train': np.zeros((2, 4, 4), np.uint8)}, {}, '[N, H, W, C]'),
        ('no test array', {'train': np.zeros((2, 4, 4, 3), np.uint8)}, {}, "'test'"),
    ],
)
def test_npz_errors(tmp_path, problem, arrays, overrides, field):
    path = tmp_path / 'bad.npz'
    np.savez(path, **arrays)
    config = npz_config(path, image_size=4, num_channels=3, num_bins=16)
    config.data.update(overrides)
    split = 'test' if problem == 'no test array' else 'train'
    with pytest.raises(UserError) as info:
        datasets.get_shard(config, split, process_index=0, process_count=1)
    assert field in str(info.value)


def test_missing_npz_file(tmp_path):
    config = npz_config(tmp_path / 'absent.npz')
    with pytest.raises(UserError, match='does not exist'):
        datasets.is_continuous(config)


def test_toy_mixture_data():
    config = toy_config()
    train = datasets.get_shard(config, 'train', process_index=0, process_count=1).data
    test = datasets.get_shard(config, 'test', process_index=0, process_count=1).data
    assert train.shape == (20000, 2) and test.shape == (2000, 2) and train.dtype == np.float32
    radius = np.linalg.norm(train, axis=1)  # ring of radius 4, component std 0.5
    assert abs(radius.mean() - 4.0) < 0.1 and np.abs(train.mean(0)).max() < 0.1
    mixture = datasets.toy_distribution(config)
    assert mixture.dim == 2 and len(mixture.weights) == 8
    assert datasets.num_bins(config) is None and datasets.data_shape(config) == (2,)


def test_cifar10_through_tfds_mock():
    import tensorflow_datasets as tfds

    config = cifar10_config()
    config.training.batch_size, config.training.n_jitted_steps = 8, 3
    with tfds.testing.mock_data(num_examples=20):
        datasets._load_shard.cache_clear()
        shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
        test = datasets.get_shard(config, 'test', process_index=0, process_count=1)
    datasets._load_shard.cache_clear()
    assert shard.data.shape == (20, 32, 32, 3) and shard.data.dtype == np.uint8
    assert shard.num_examples == 20 and test.num_examples == 20
    assert shard.labels.shape == (20,) and shard.labels.dtype == np.int32
    assert 0 <= shard.labels.min() and shard.labels.max() < datasets.num_classes(config) == 10
    batch = datasets.train_batch(config, shard, 0, 8)
    assert batch.shape == (8, 32, 32, 3) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    info = datasets.dataset_info(config)
    assert (info['tfds_name'], info['tfds_version']) == ('cifar10', '3.0.2')


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    'make_config, split, expected',
    [
        (lambda: cifar10_config(), 'test', ('tfds build cifar10', 'data.download=True')),
        (
            lambda: lsun_config(),
            'train',
            ('tfds build lsun/bedroom:3.1.0 --data_dir {dir}', 'tensorflow-io'),
        ),
    ],
    ids=['cifar10', 'lsun'],
)
def test_missing_tfds_data_fails_fast(tmp_path, make_config, split, expected):
    """One line naming the build command, in seconds (TFDS is not asked to look remotely)."""
    config = make_config()
    config.data.data_dir = str(tmp_path)
    start = time.time()
    with pytest.raises(UserError) as info:
        datasets.get_shard(config, split, process_index=0, process_count=1)
    assert time.time() - start < 10
    message = str(info.value)
    assert '\n' not in message
    for text in expected:
        assert text.format(dir=tmp_path) in message


def test_tfds_shards_and_resize(tmp_path, monkeypatch):
    """A real prepared TFDS dataset (tfds.testing's dummy_mnist, generated offline)."""
    from tensorflow_datasets import testing

    monkeypatch.setitem(
        datasets.TFDS_SOURCES,
        'CIFAR10',
        datasets.TfdsSource('dummy_mnist', '3.0.1', 'train', 'test'),
    )
    config = cifar10_config()
    config.data.update({'data_dir': str(tmp_path), 'image_size': 28, 'num_channels': 1})
    with pytest.raises(UserError, match='tfds build dummy_mnist:3.0.1 --data_dir'):
        datasets.get_shard(config, 'train', process_index=0, process_count=1)
    testing.DummyMnist(data_dir=str(tmp_path)).download_and_prepare()
    full = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    assert full.data.shape == (20, 28, 28, 1) and full.num_examples == 20
    shards = [
        datasets.get_shard(config, 'train', process_index=h, process_count=3) for h in range(3)
    ]
    assert [(len(s), s.start, s.num_examples) for s in shards] == [
        (6, 0, 20),
        (7, 6, 20),
        (7, 13, 20),
    ]
    np.testing.assert_array_equal(np.concatenate([s.data for s in shards]), full.data)
    assert full.labels.shape == (20,) and full.labels.dtype == np.int32  # its 'label' feature
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), full.labels)
    config.data.image_size = 14
    small = datasets.get_shard(config, 'train', process_index=0, process_count=1).data
    assert small.shape == (20, 14, 14, 1) and small.dtype == np.uint8
    expected = full.data.reshape(20, 14, 2, 14, 2, 1).mean((2, 4))  # antialiased 2× = 2×2 mean
    assert np.abs(small - expected).max() <= 1.0


# --- LSUN (TFDS) and CelebA-HQ / FFHQ (TFRecords), as Score SDE reads them ------------


def lsun_config(category='bedroom', image_size=256):
    from configs.default_lsun_configs import get_default_configs

    config = get_default_configs()
    config.data.update({'category': category, 'image_size': image_size})
    return config


def ramp(height, width, slope_y=0, slope_x=0, offset=0):
    """uint8 [H, W, 3]: offset + slope_y·y + slope_x·x, channel c adds c."""
    y, x = np.mgrid[:height, :width]
    image = offset + slope_y * y + slope_x * x
    return np.stack([image + c for c in range(3)], -1).astype(np.uint8)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    'shape, top, left', [((8, 12), 0, 2), ((13, 8), 2, 0), ((8, 11), 0, 1), ((9, 8), 0, 0)]
)
def test_lsun_central_square_at_the_image_size_is_exact(shape, top, left):
    """Sizes other than 128: crop the central square (offsets ⌊(side − shorter)/2⌋); at
    the square's own size the bicubic resize is the identity."""
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = datasets.lsun_resize(image, 8).numpy()
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, image[top : top + 8, left : left + 8])


@pytest.mark.timeout(60)
def test_lsun_bicubic_downscale_truncates_like_the_original():
    """32×40 ramp of slope 3 along x → central 32×32 (columns 4…35) → 16×16: inside, output
    column j samples x = 2j + 0.5 of the square, 3(2j + 4.5) = 6j + 13.5, truncated to
    6j + 13 (the original's cast; rounding would give 6j + 14)."""
    out = datasets.lsun_resize(ramp(32, 40, slope_x=3), 16).numpy()
    j = np.arange(2, 14)
    np.testing.assert_array_equal(out[4:12, 2:14, 0], np.broadcast_to(6 * j + 13, (8, 12)))
    np.testing.assert_array_equal(out[..., 2], out[..., 0] + 2)  # channels kept apart


@pytest.mark.timeout(60)
@pytest.mark.parametrize('transpose', [False, True])
def test_lsun_128_shrinks_the_shorter_side_then_crops_the_centre(monkeypatch, transpose):
    """At LSUN_SHRINK_SIZE (here patched to 8): 16×20 → 8×10 (bilinear, antialiased: a
    ramp stays a ramp inside), then columns 1…8. Slope 2: pixel j of the 8×10 image
    samples x = 2j + 0.5, value 4j + 1; after the crop 4j + 5."""
    monkeypatch.setattr(datasets.tfds, 'LSUN_SHRINK_SIZE', 8)
    image = ramp(16, 20, slope_x=2, offset=10)
    out = datasets.lsun_resize(image.transpose(1, 0, 2) if transpose else image, 8).numpy()
    out = out.transpose(1, 0, 2) if transpose else out
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    j = np.arange(1, 7)
    np.testing.assert_array_equal(out[2:6, 1:7, 0], np.broadcast_to(10 + 4 * j + 5, (4, 6)))
    # the longer side: round(side · 8 / 16), half to even (21 → 10.5 → 10, 23 → 11.5 → 12)
    for width, left in ((21, 1), (23, 2)):
        wide = datasets.lsun_resize(ramp(16, width, slope_x=2), 8).numpy()
        assert wide.shape == (8, 8, 3)
        scale = width / (2 * left + 8)  # input pixels per output pixel of the shrunk image
        expected = 2 * ((left + 3 + 0.5) * scale - 0.5)  # column 3 of the crop
        assert abs(int(wide[4, 3, 0]) - expected) <= 0.5 + 1e-3


@pytest.mark.timeout(60)
def test_lsun_through_tfds(monkeypatch):
    """The LSUN path of get_shard (TFDS ``lsun/<category>``, mocked with known images of
    several sizes): central crops, no labels, validation as the test split."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(2)
    images = {
        'train': [rng.integers(0, 256, s, dtype=np.uint8) for s in ((8, 11, 3), (10, 8, 3))],
        'validation': [rng.integers(0, 256, (9, 8, 3), dtype=np.uint8)],
    }
    seen = []

    def as_dataset(builder, split, **kwargs):
        seen.append((builder.name, builder.builder_config.name, split))
        return tf.data.Dataset.from_generator(
            lambda: ({'id': str(i), 'image': x} for i, x in enumerate(images[split])),
            output_signature={
                'id': tf.TensorSpec((), tf.string),
                'image': tf.TensorSpec((None, None, 3), tf.uint8),
            },
        )

    config = lsun_config('church_outdoor', image_size=8)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        datasets._load_shard.cache_clear()
        train = datasets.get_shard(config, 'train', process_index=0, process_count=1)
        test = datasets.get_shard(config, 'test', process_index=0, process_count=1)
    datasets._load_shard.cache_clear()
    assert seen == [('lsun', 'church_outdoor', 'train'), ('lsun', 'church_outdoor', 'validation')]
    first, second = images['train']
    np.testing.assert_array_equal(train.data, np.stack([first[:, 1:9], second[1:9]]))
    np.testing.assert_array_equal(test.data, images['validation'][0][None, :8])
    assert train.labels is None and not datasets.has_labels(config)
    info = datasets.dataset_info(config)
    assert (info['tfds_name'], info['splits']['test']) == ('lsun/church_outdoor', 'validation')


def write_records(path, images_chw):
    """TFRecords in Score SDE's CelebA-HQ / FFHQ format, written here independently of
    datasets.write_image_tfrecords: 'shape' = [C, H, W] int64, 'data' = the raw bytes."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in images_chw:
            feature = {
                'shape': tf.train.Feature(int64_list=tf.train.Int64List(value=image.shape)),
                'data': tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )


def records_config(path, dataset='FFHQ', image_size=8):
    config = lsun_config()
    config.data.update({'dataset': dataset, 'tfrecords_path': str(path), 'image_size': image_size})
    return config


@pytest.fixture
def faces(tmp_path):
    """Three 8×8 RGB images, HWC, and their records file (stored C, H, W)."""
    images = np.random.default_rng(3).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / 'faces-r03.tfrecords'
    write_records(path, np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return path, images


@pytest.mark.timeout(60)
@pytest.mark.parametrize('dataset', ['FFHQ', 'CelebAHQ'])
def test_tfrecords_images_are_read_as_written(faces, dataset):
    path, images = faces
    config = records_config(path, dataset)
    datasets._load_shard.cache_clear()
    train = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    test = datasets.get_shard(config, 'test', process_index=0, process_count=1)
    assert train.data.dtype == np.uint8 and train.labels is None
    np.testing.assert_array_equal(train.data, images)
    assert test is train  # Score SDE evaluates on the same records, held once
    shards = [datasets.get_shard(config, 'train', process_index=h, process_count=2) for h in (0, 1)]
    assert [(len(s), s.start, s.num_examples) for s in shards] == [(1, 0, 3), (2, 1, 3)]
    np.testing.assert_array_equal(np.concatenate([s.data for s in shards]), images)
    batch = datasets.train_batch(config, train, 0, 2)
    assert batch.shape == (2, 8, 8, 3) and batch.dtype == np.float32
    assert datasets.dataset_info(config)['source'] == str(path)
    datasets._load_shard.cache_clear()


@pytest.mark.timeout(60)
def test_write_image_tfrecords_matches_the_format_and_globs_join_files(tmp_path, faces):
    path, images = faces
    ours = tmp_path / 'ours-r03.tfrecords'
    datasets.write_image_tfrecords(str(ours), images)
    assert ours.read_bytes() == path.read_bytes()
    more = np.random.default_rng(4).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    datasets.write_image_tfrecords(str(tmp_path / 'part-1.tfrecords'), more)
    datasets.write_image_tfrecords(str(tmp_path / 'part-0.tfrecords'), images)
    config = records_config(tmp_path / 'part-*.tfrecords', 'CelebAHQ')
    shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    np.testing.assert_array_equal(shard.data, np.concatenate([images, more]))  # sorted names
    datasets._load_shard.cache_clear()


@pytest.mark.timeout(60)
def test_tfrecords_errors_are_one_line_and_fast(tmp_path, faces):
    path, _ = faces
    (tmp_path / 'junk.tfrecords').write_bytes(b'not a record file at all')
    cases = [
        (records_config(tmp_path / 'missing-r08.tfrecords'), 'does not exist'),
        (records_config(tmp_path / 'junk.tfrecords', 'CelebAHQ'), 'is not a file of CelebAHQ'),
        (records_config(path, image_size=16), 'holds 8×8×3 images but config.data.image_size=16'),
        (records_config(''), 'is empty'),
    ]
    for config, problem in cases:
        start = time.time()
        with pytest.raises(UserError) as info:
            datasets.get_shard(config, 'train', process_index=0, process_count=1)
        assert time.time() - start < 10
        message = str(info.value)
        assert problem in message and '\n' not in message, message
        assert 'tfrecords_path' in message
    assert 'download_ffhq.py --tfrecords' in str(info.value)  # how to make the file
    datasets._load_shard.cache_clear()


# --- training order -------------------------------------------------------------------


def flat_steps(iterator, blocks):
    """Concatenate ``blocks`` yields of [J, B, ...] into per-step batches."""
    return np.concatenate([next(iterator) for _ in range(blocks)])


@pytest.mark.parametrize('start', [5, 13, 26])
def test_train_resume_is_exact(start):
    config = digits_config()
    config.training.n_jitted_steps = 3
    config.data.random_flip = True  # exercise every random part
    from_zero = flat_steps(
        datasets.get_train_iterator(config, process_index=0, process_count=1), 12
    )
    resumed = flat_steps(
        datasets.get_train_iterator(config, start, process_index=0, process_count=1), 3
    )
    np.testing.assert_array_equal(resumed, from_zero[start : start + 9])
    assert not np.array_equal(from_zero[0], from_zero[1])


@pytest.mark.parametrize(
    'random_flip, sha256, total, pixels',
    [
        (
            False,
            '3ff81f46d2623aff26a1d6ded168a1383f37ed398f7ce6d247deba437b4c5c2b',
            5208.28857421875,
            [0.5793703198432922, 0.7989718317985535, 0.9929726719856262, 0.7917264699935913],
        ),
        (
            True,
            'df8854ddb2d2244b64d9913525bc5f1e7009dec51538c9816a02e82319febbf8',
            5207.8916015625,
            [0.5324382781982422, 0.7880851626396179, 0.9773221611976624, 0.7870208024978638],
        ),
    ],
)
def test_digits_train_batches_are_pinned(random_flip, sha256, total, pixels):
    """The training data, bit for bit, as before datasets became a package of sources
    (values of that code): DIGITS, dequantized, host 1 of 2, steps 11–14 (an epoch
    boundary at 12), with and without flips."""
    import hashlib

    config = digits_config()
    config.training.n_jitted_steps, config.data.random_flip = 2, random_flip
    iterator = datasets.get_train_iterator(config, 11, process_index=1, process_count=2)
    x = np.concatenate([next(iterator) for _ in range(2)])
    assert x.shape == (4, 64, 8, 8, 1) and x.dtype == np.float32
    assert hashlib.sha256(x.tobytes()).hexdigest() == sha256
    assert float(x.sum()) == total and x[1, 3, 2:6, 4, 0].tolist() == pixels
    shard = datasets.get_shard(config, 'train', process_index=1, process_count=2)
    labels = datasets.train_labels(config, shard, 13, 64, 1)
    assert labels[:12].tolist() == [3, 1, 4, 7, 7, 4, 3, 0, 2, 7, 1, 5]


def test_train_epochs_visit_each_example_once(id_vectors):
    config = npz_config(id_vectors, batch_size=8, n_jitted_steps=5)  # 5 steps = 1 epoch
    iterator = datasets.get_train_iterator(config, process_index=0, process_count=1)
    epochs = [next(iterator)[..., 0].astype(int) for _ in range(3)]
    for ids in epochs:
        assert sorted(ids.ravel()) == list(range(40))
    assert not np.array_equal(epochs[0], epochs[1])


def test_train_hosts_read_disjoint_shards(id_vectors):
    config = npz_config(id_vectors, batch_size=8, n_jitted_steps=5)
    seen = [
        next(datasets.get_train_iterator(config, process_index=h, process_count=2))
        for h in range(2)
    ]
    assert seen[0].shape == (5, 4, 1)
    hosts = [set(s.ravel().astype(int)) for s in seen]
    assert hosts[0] == set(range(20)) and hosts[1] == set(range(20, 40))


def test_flip_and_dequantization(small_images):
    path, train, _ = small_images
    config = npz_config(path, image_size=4, num_channels=3, num_bins=16, batch_size=30)
    shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    config.data.random_flip, config.data.uniform_dequantization = True, True
    x = datasets.train_batch(config, shard, 0, 30)
    levels = np.floor(x * 16).astype(np.uint8)
    assert x.min() >= 0 and x.max() < 1
    flipped = [
        any(np.array_equal(lv, t[:, ::-1]) and not np.array_equal(lv, t) for t in train)
        for lv in levels
    ]
    same = [any(np.array_equal(lv, t) for t in train) for lv in levels]
    assert all(f or s for f, s in zip(flipped, same))
    assert 5 <= sum(flipped) <= 25
    config.data.random_flip, config.data.uniform_dequantization = False, False
    x = datasets.train_batch(config, shard, 0, 30)
    assert sorted(map(bytes, np.rint(x * 15).astype(np.uint8))) == sorted(map(bytes, train))


# --- evaluation order -----------------------------------------------------------------


@pytest.mark.parametrize('process_count,batch_size', [(1, 5), (2, 4), (3, 6), (4, 4)])
def test_eval_visits_every_example_once(id_vectors, process_count, batch_size):
    config = npz_config(id_vectors)
    per_host = [
        list(
            datasets.get_eval_iterator(
                config, 'test', batch_size, process_index=h, process_count=process_count
            )
        )
        for h in range(process_count)
    ]
    expected = datasets.num_eval_batches(13, batch_size, process_count)
    assert all(len(batches) == expected for batches in per_host)
    index = np.concatenate([b.index[b.mask] for batches in per_host for b in batches])
    values = np.concatenate([b.x[b.mask, 0] for batches in per_host for b in batches])
    assert sorted(index) == list(range(13))
    np.testing.assert_array_equal(values, index)  # x is the example with that index
    for batches in per_host:
        for b in batches:
            assert b.x.shape == (batch_size // process_count, 1)
            assert (b.index[~b.mask] == -1).all() and (b.x[~b.mask] == 0).all()
    assert datasets.split_size(config, 'test') == 13


def test_eval_resume_from_a_batch(id_vectors):
    config = npz_config(id_vectors)
    full = list(datasets.get_eval_iterator(config, 'train', 6, process_index=0, process_count=1))
    tail = list(
        datasets.get_eval_iterator(
            config, 'train', 6, start_batch=4, process_index=0, process_count=1
        )
    )
    assert len(full) == 7 and len(tail) == 3
    for a, b in zip(full[4:], tail):
        np.testing.assert_array_equal(a.index, b.index)


# --- scaling --------------------------------------------------------------------------


def test_scalers():
    config = digits_config()
    x = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    for centered, expected in ((True, 2 * x - 1), (False, x)):
        config.data.centered = centered
        y = datasets.get_data_scaler(config)(x)
        np.testing.assert_allclose(y, expected, atol=1e-7)
        np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(y), x, atol=1e-7)
    assert datasets.get_data_scaler(toy_config())(x) is x


def test_to_unit_interval():
    levels = np.array([0, 8, 16], np.uint8)
    np.testing.assert_allclose(datasets.to_unit_interval(levels, 17), [0.0, 0.5, 1.0])
    u = np.array([0.0, 0.5, 0.999], np.float32)
    np.testing.assert_allclose(
        datasets.to_unit_interval(levels, 17, u), [0.0, 8.5 / 17, 16.999 / 17], rtol=1e-6
    )


# --- class labels ---------------------------------------------------------------------


def digits_targets_by_image() -> dict[bytes, set[int]]:
    """Raw digits: image bytes → the targets of every image with those pixels."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    found: dict[bytes, set[int]] = {}
    for image, target in zip(raw.images.astype(np.uint8)[..., None], raw.target):
        found.setdefault(image.tobytes(), set()).add(int(target))
    return found


def test_digits_labels_are_the_targets_of_their_images():
    config = digits_config()
    targets = digits_targets_by_image()
    for split, size in (('train', 1600), ('test', 197)):
        shard = datasets.get_shard(config, split, process_index=0, process_count=1)
        assert shard.labels.shape == (size,) and shard.labels.dtype == np.int32
        assert not shard.labels.flags.writeable
        assert all(int(y) in targets[x.tobytes()] for x, y in zip(shard.data, shard.labels))
    assert sorted(set(shard.labels)) == list(range(10))
    assert datasets.num_classes(config) == 10 and datasets.has_labels(config)


@pytest.mark.parametrize('process_index,step', [(0, 0), (0, 30), (1, 7)])
def test_train_labels_are_those_of_the_train_batch_rows(process_index, step):
    config = digits_config()
    config.data.random_flip, config.data.uniform_dequantization = False, False
    shard = datasets.get_shard(config, 'train', process_index=process_index, process_count=2)
    x = datasets.train_batch(config, shard, step, 32, process_index)
    y = datasets.train_labels(config, shard, step, 32, process_index)
    assert y.shape == (32,) and y.dtype == np.int32
    targets = digits_targets_by_image()
    levels = np.rint(x * 16).astype(np.uint8)
    assert all(int(label) in targets[level.tobytes()] for level, label in zip(levels, y))
    config.data.random_flip = True  # flips change images, never labels
    np.testing.assert_array_equal(datasets.train_labels(config, shard, step, 32, process_index), y)


def test_train_iterator_with_labels():
    config = digits_config()
    config.training.n_jitted_steps, config.data.random_flip = 3, True
    plain = datasets.get_train_iterator(config, 4, process_index=0, process_count=1)
    labeled = datasets.get_train_iterator(
        config, 4, process_index=0, process_count=1, with_labels=True
    )
    shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    for block in range(2):
        x, y = next(labeled)
        np.testing.assert_array_equal(x, next(plain))
        assert y.shape == (3, 128) and y.dtype == np.int32
        for j in range(3):
            expected = datasets.train_labels(config, shard, 4 + 3 * block + j, 128)
            np.testing.assert_array_equal(y[j], expected)


def test_train_iterator_without_labels_fails_at_once(small_images):
    path, _, _ = small_images
    config = npz_config(path, image_size=4, num_channels=3, num_bins=16)
    with pytest.raises(UserError, match="dataset='NPZ' has no class labels; .*DIGITS"):
        datasets.get_train_iterator(config, process_index=0, process_count=1, with_labels=True)
    shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    assert shard.labels is None and not datasets.has_labels(config)
    with pytest.raises(UserError, match='has no class labels'):
        datasets.train_labels(config, shard, 0, 8)


def test_npz_labels(small_images):
    path, train, test = small_images
    train_labels, test_labels = np.arange(30) % 4, np.array([0, 1, 2, 5, 0, 1, 2])
    np.savez(path, train=train, test=test, train_labels=train_labels, test_labels=test_labels)
    config = npz_config(path, image_size=4, num_channels=3, num_bins=16)
    datasets._load_shard.cache_clear()
    shard = datasets.get_shard(config, 'train', process_index=1, process_count=2)
    np.testing.assert_array_equal(shard.labels, train_labels[15:])
    assert shard.labels.dtype == np.int32 and not shard.labels.flags.writeable
    assert datasets.num_classes(config) == 6 and datasets.has_labels(config)
    batches = list(
        datasets.get_eval_iterator(config, 'test', batch_size=4, process_index=0, process_count=1)
    )
    labels = np.concatenate([b.labels for b in batches])
    np.testing.assert_array_equal(labels, [*test_labels, -1])


@pytest.mark.parametrize(
    'problem,labels',
    [
        ('wrong length', {'train_labels': np.zeros(29, np.int64)}),
        ('float', {'train_labels': np.zeros(30, np.float32)}),
        ('negative', {'train_labels': np.full(30, -1, np.int32)}),
        ('2-D', {'train_labels': np.zeros((30, 1), np.int32)}),
        ('test only', {'test_labels': np.zeros(7, np.int32)}),
    ],
)
def test_npz_bad_labels(small_images, problem, labels):
    path, train, test = small_images
    np.savez(path, train=train, test=test, **labels)
    config = npz_config(path, image_size=4, num_channels=3, num_bins=16)
    datasets._load_shard.cache_clear()
    with pytest.raises(UserError, match='_labels') as info:
        datasets.get_shard(config, 'train', process_index=0, process_count=1)
    assert '\n' not in str(info.value)
    with pytest.raises(UserError):
        datasets.num_classes(config)


def test_toy_labels_are_the_components():
    import jax

    import mixture

    config = toy_config()
    shard = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    ring = mixture.ring_mixture(dim=2)
    with jax.default_device(jax.devices('cpu')[0]):
        expected = np.asarray(ring.sample(jax.random.PRNGKey(0), 20000))
        x, k = ring.sample_with_components(jax.random.PRNGKey(3), 500)
        np.testing.assert_array_equal(np.asarray(ring.sample(jax.random.PRNGKey(3), 500)), x)
    np.testing.assert_array_equal(shard.data, expected)  # the samples did not change
    assert shard.labels.dtype == np.int32 and k.dtype == np.int32
    distance = np.linalg.norm(shard.data - ring.means[shard.labels], axis=1)
    assert distance.max() < 5 * 0.5  # every point near its component's mean (std 0.5)
    nearest = np.argmin(np.linalg.norm(shard.data[:, None] - ring.means, axis=2), axis=1)
    assert (nearest == shard.labels).mean() > 0.99
    assert np.bincount(shard.labels).min() > 2200  # 8 equal components of 20000
    assert datasets.num_classes(config) == 8


def test_num_classes():
    config = cifar10_config()
    expected = {'CIFAR10': 10, 'SVHN': 10, 'CELEBA': None, 'IMAGENET32': None, 'PHOTOS': None}
    for dataset, classes in expected.items():
        config.data.dataset = dataset
        assert datasets.num_classes(config) == classes  # no data are read
        assert datasets.has_labels(config) == (classes is not None)
    with pytest.raises(UserError, match="dataset='PHOTOS' has no class labels"):
        datasets.get_train_iterator(config, with_labels=True)


def test_eval_labels_and_padding():
    config = digits_config()
    shard = datasets.get_shard(config, 'test', process_index=0, process_count=1)
    batches = list(datasets.get_eval_iterator(config, 'test', 64, process_index=0, process_count=1))
    assert len(batches) == 4 and all(b.labels.dtype == np.int32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.labels[b.mask] for b in batches]), shard.labels)
    assert (batches[-1].labels[~batches[-1].mask] == -1).all() and (~batches[-1].mask).sum() == 59
    x, mask, index, labels = batches[0]
    np.testing.assert_array_equal(labels, shard.labels[index])


# --- PHOTOS ---------------------------------------------------------------------------


def photos_config():
    from configs.default_photos_configs import get_default_configs

    return get_default_configs()


def test_photos():
    config = photos_config()
    train = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    test = datasets.get_shard(config, 'test', process_index=0, process_count=1)
    assert train.data.shape == (1590, 16, 16, 3) and test.data.shape == (690, 16, 16, 3)
    assert train.data.dtype == np.uint8 and train.labels is None and test.labels is None
    assert datasets.num_bins(config) == 256 and datasets.data_shape(config) == (16, 16, 3)
    assert train.data.std() > 20 and train.data.max() > 200  # real photographs, not blanks
    assert not set(map(bytes, test.data)) & set(map(bytes, train.data))
    datasets._load_shard.cache_clear()
    again = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    assert again is not train
    np.testing.assert_array_equal(again.data, train.data)
    info = datasets.dataset_info(config)
    assert info['photos']['test'] == ['coffee', 'rocket'] and 'LANCZOS' in info['recipe']
    assert all((b.labels == -1).all() for b in datasets.get_eval_iterator(config, 'test', 256))


def test_photos_patches_follow_the_recipe():
    image = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    patches = datasets.photo_patches(image)  # resized to 128 × 192: 15 × 23 patches
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((192, 128), Image.Resampling.LANCZOS))
    assert patches.shape == (15 * 23, 16, 16, 3)
    np.testing.assert_array_equal(patches[0], resized[:16, :16])
    np.testing.assert_array_equal(patches[1], resized[:16, 8:24])
    np.testing.assert_array_equal(patches[23], resized[8:24, :16])
    np.testing.assert_array_equal(patches[-1], resized[-16:, 176:192])


def test_photos_need_16_pixel_images():
    config = photos_config()
    config.data.image_size = 32
    with pytest.raises(UserError, match='image_size=16'):
        datasets.get_shard(config, 'test', process_index=0, process_count=1)
