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
    batch = datasets.train_batch(config, shard, 0, 8)
    assert batch.shape == (8, 32, 32, 3) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    info = datasets.dataset_info(config)
    assert (info['tfds_name'], info['tfds_version']) == ('cifar10', '3.0.2')


def test_missing_tfds_data_fails_fast(tmp_path):
    config = cifar10_config()
    config.data.data_dir = str(tmp_path)
    start = time.time()
    with pytest.raises(UserError) as info:
        datasets.get_shard(config, 'test', process_index=0, process_count=1)
    assert time.time() - start < 10
    message = str(info.value)
    assert 'tfds build cifar10' in message and 'data.download=True' in message


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
    config.data.image_size = 14
    small = datasets.get_shard(config, 'train', process_index=0, process_count=1).data
    assert small.shape == (20, 14, 14, 1) and small.dtype == np.uint8
    expected = full.data.reshape(20, 14, 2, 14, 2, 1).mean((2, 4))  # antialiased 2× = 2×2 mean
    assert np.abs(small - expected).max() <= 1.0


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
