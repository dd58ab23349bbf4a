"""evaluation.py: FID / KID / IS against closed forms, stats cache, feature networks."""

import os

import h5py
import numpy as np
import pytest
import scipy.linalg

import datasets
import evaluation
from configs import default_cifar10_configs
from errors import UserError


def _random_spd(rng: np.random.Generator, d: int, rank: int = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (0.0 if rank else 0.1 * np.eye(d))


# --------------------------------------------------------------------- Fréchet distance
def test_frechet_matches_sqrtm_reference():
    rng = np.random.default_rng(0)
    for d in (1, 3, 16):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
        assert evaluation.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_frechet_closed_forms_including_singular():
    rng = np.random.default_rng(1)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s = _random_spd(rng, d, rank=3)  # singular, as with fewer samples than features
    assert evaluation.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-10)
    assert evaluation.frechet_distance(mu1, s, mu2, s) == pytest.approx(
        np.sum((mu1 - mu2) ** 2), rel=1e-9
    )
    # Commuting (diagonal) covariances, some variances zero: Σᵢ (√aᵢ − √bᵢ)².
    a, b = np.array([0.0, 1.0, 4.0, 2.0]), np.array([1.0, 0.0, 9.0, 2.0])
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = evaluation.frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    with pytest.raises(UserError):
        evaluation.frechet_distance(mu1, s, mu2[:4], s[:4, :4])


# -------------------------------------------------------------------------------- KID
def _population_mmd2_unit_gaussians(mu: np.ndarray) -> float:
    """MMD² between N(μ, I) and N(0, I) for k = (aᵀb/d + 1)³ = Σ_p C(3,p) (aᵀb/d)^p:
    ‖E φ(x) − E φ(y)‖² with moment tensors E x = μ, E x⊗x = I + μμᵀ and
    E x⊗x⊗x = μ⊗μ⊗μ + (μ⊗I + permutations)."""
    d = mu.shape[0]
    eye = np.eye(d)
    m2 = np.outer(mu, mu)
    m3 = (
        np.einsum('i,j,k->ijk', mu, mu, mu)
        + np.einsum('i,jk->ijk', mu, eye)
        + np.einsum('j,ik->ijk', mu, eye)
        + np.einsum('k,ij->ijk', mu, eye)
    )
    return 3 / d * mu @ mu + 3 / d**2 * np.sum(m2**2) + 1 / d**3 * np.sum(m3**2)


def test_mmd2_unbiased_matches_double_loop():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / 42
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(7)) / 35
    assert evaluation.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


@pytest.mark.parametrize('shift', [0.0, 0.5])
def test_kid_matches_population_mmd2(shift):
    """KID is unbiased: over independent draws its mean is the population MMD² (0 for one
    distribution, where single values may be negative) within a few standard errors."""
    rng = np.random.default_rng(3)
    d, n, reps = 4, 200, 40
    mu = np.full(d, shift)
    values = np.array(
        [
            evaluation.kernel_inception_distance(
                rng.normal(size=(n, d)) + mu,
                rng.normal(size=(n + 50, d)),
                num_subsets=10,
                subset_size=150,
                seed=i,
            )
            for i in range(reps)
        ]
    )
    stderr = values.std(ddof=1) / np.sqrt(reps)
    expected = _population_mmd2_unit_gaussians(mu)
    assert abs(values.mean() - expected) < 4 * stderr
    if shift:
        assert expected > 20 * stderr  # clearly > 0 for shifted samples
    else:
        assert values.min() < 0 < values.max()


# --------------------------------------------------------------------------------- IS
def test_inception_score_closed_forms():
    k = 10
    assert evaluation.inception_score(np.zeros((40, k))) == pytest.approx(1.0, abs=1e-12)
    confident = 1e4 * np.eye(k)[np.arange(5 * k) % k]  # huge logits: no overflow
    assert evaluation.inception_score(confident) == pytest.approx(k, rel=1e-12)
    split_score = evaluation.inception_score(confident, num_splits=5)
    assert split_score == pytest.approx(k, rel=1e-12)
    # Half confident and balanced, half uniform: p(y) uniform, KL = log K or 0, IS = √K.
    probs = np.concatenate([np.eye(k)[np.arange(k)], np.full((k, k), 1.0 / k)])
    assert evaluation.inception_score(probs, from_logits=False) == pytest.approx(
        np.sqrt(k), rel=1e-12
    )
    with np.errstate(divide='ignore'):
        assert evaluation.inception_score(np.log(probs)) == pytest.approx(np.sqrt(k), rel=1e-12)


# ------------------------------------------------------------------ statistics and cache
class _LinearNet(evaluation.FeatureNet):
    name, fingerprint, batch_size = 'linear', 'lin0', 7

    def _apply(self, images):
        assert images.shape[0] == self.batch_size
        flat = images.reshape(images.shape[0], -1)
        return flat @ np.arange(flat.shape[1] * 3).reshape(-1, 3) / 10.0, None


def test_dataset_stats_streaming_and_cache_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(53, 2, 2, 1)).astype(np.float32)
    net = _LinearNet()
    features, logits = net(images)
    assert features.shape == (53, 3) and logits is None
    batches = (images[i : i + 10] for i in range(0, 53, 10))
    stats = evaluation.compute_dataset_stats(net, batches, num_kid_features=20, seed=0)
    mu, sigma = evaluation.feature_stats(features)
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-6)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-5)
    np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64).T), rtol=1e-12)
    assert stats.features.shape == (20, 3)
    assert len({tuple(r) for r in stats.features}) == 20  # without replacement
    assert all(np.any(np.all(features == r, axis=1)) for r in stats.features)

    path = evaluation.stats_path(str(tmp_path), 'CIFAR10', 'train', net.name)
    assert path == os.path.join(str(tmp_path), 'stats', 'cifar10_train_linear.npz')
    evaluation.save_stats(path, stats)
    with np.load(path, allow_pickle=False) as f:  # no object arrays inside
        assert sorted(f.files) == ['features', 'fingerprint', 'mu', 'pool_3', 'sigma']
    loaded = evaluation.load_stats(path)
    assert loaded.fingerprint == 'lin0'
    for name in ('mu', 'sigma', 'features'):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
    assert os.listdir(os.path.dirname(path)) == ['cifar10_train_linear.npz']


def test_reference_stats_cached_and_recomputed_for_another_net(tmp_path):
    workdir, images = str(tmp_path), np.random.default_rng(7).uniform(size=(30, 2, 2, 1))
    net = _LinearNet()
    first = evaluation.reference_stats(net, 'CIFAR10', workdir, None, images)
    cached = evaluation.reference_stats(net, 'CIFAR10', workdir, None)  # no data needed
    np.testing.assert_array_equal(cached.sigma, first.sigma)
    other = _LinearNet()
    other.fingerprint = 'lin1'
    again = evaluation.reference_stats(other, 'CIFAR10', workdir, None, images[:10])
    assert again.fingerprint == 'lin1'
    assert (
        evaluation.load_stats(
            evaluation.stats_path(workdir, 'CIFAR10', 'train', 'linear')
        ).fingerprint
        == 'lin1'
    )


@pytest.mark.parametrize('dequantized', [False, True])
def test_quantize_inverts_the_training_map(dequantized):
    k = 17
    levels = np.random.default_rng(8).integers(0, k, size=(50, 8, 8, 1))
    u = np.random.default_rng(9).uniform(size=levels.shape) if dequantized else None
    x = datasets.to_unit_interval(levels, k, u)
    np.testing.assert_array_equal(
        evaluation.quantize(x, k, dequantized), (levels / (k - 1)).astype(np.float32)
    )


# ------------------------------------------------------------------------- Inception
@pytest.mark.parametrize('path', ['', '/nonexistent/inception.h5', 'not_hdf5.h5'])
def test_missing_inception_weights_raise_user_error(tmp_path, path):
    if path == 'not_hdf5.h5':
        path = str(tmp_path / path)
        with open(path, 'wb') as f:
            f.write(b'<html>404</html>')  # e.g. a failed download
    config = default_cifar10_configs.get_default_configs()
    config.eval.inception_path = path
    samples = np.zeros((4, 32, 32, 3), np.float32)
    with pytest.raises(UserError, match=r'eval\.inception_path'):
        evaluation.sample_quality(samples, str(tmp_path), config)


def test_image_pipeline_with_a_feature_net_without_logits(tmp_path, monkeypatch):
    """The CIFAR-10 path (Inception replaced by a linear net): samples quantized to 256
    levels, reference statistics cached, no 'is' without logits."""
    monkeypatch.setattr(evaluation, 'load_inception', lambda path: _LinearNet())
    config = default_cifar10_configs.get_default_configs()
    assert not config.data.uniform_dequantization
    rng = np.random.default_rng(10)
    reference = np.round(rng.uniform(size=(40, 2, 2, 3)) * 255) / 255
    jitter = rng.uniform(-0.4, 0.4, size=reference.shape) / 255  # rounds back
    same = evaluation.sample_quality(reference + jitter, str(tmp_path), config, reference)
    # the reference statistics from the cache
    other = evaluation.sample_quality(reference[:, ::-1] ** 2, str(tmp_path), config)
    assert set(same) == {'fid', 'kid'}
    assert abs(same['fid']) < 1e-9 * other['fid'] and same['kid'] < 0 < other['kid']


def test_the_data_source_names_its_feature_network(tmp_path, monkeypatch):
    """Which network judges samples is the data source's choice: a registered name is
    checked (on every process, before sampling) and built; None means no FID/KID/IS (a
    one-line error that eval logs and skips); an unregistered name is a one-line error."""
    config = default_cifar10_configs.get_default_configs()
    source = datasets.get_source(config)
    calls = []
    monkeypatch.setattr(evaluation, '_FEATURE_NETS', dict(evaluation._FEATURE_NETS))
    evaluation.register_feature_net(
        'linear',
        lambda workdir, config: calls.append(('build', workdir)) or _LinearNet(),
        check=lambda workdir, config: calls.append(('check', workdir)),
    )
    assert 'linear' in evaluation.feature_net_names()
    monkeypatch.setattr(source, 'feature_net', 'linear')
    workdir = str(tmp_path)
    evaluation.check_feature_net(workdir, config)
    reference = np.random.default_rng(11).uniform(size=(20, 2, 2, 3))
    assert set(evaluation.sample_quality(reference, workdir, config, reference)) == {'fid', 'kid'}
    assert calls == [('check', workdir), ('build', workdir)]
    assert evaluation.label_judge(workdir, config) is None  # no judge description
    monkeypatch.setattr(source, 'feature_net', None)
    evaluation.check_feature_net(workdir, config)  # nothing to check
    assert evaluation.label_judge(workdir, config) is None
    with pytest.raises(UserError, match='has no feature network for FID/KID/IS') as info:
        evaluation.sample_quality(reference, workdir, config, reference)
    assert '\n' not in str(info.value) and 'sample_metrics=False' in str(info.value)
    monkeypatch.setattr(source, 'feature_net', 'unknown_net')
    with pytest.raises(UserError, match="'unknown_net', which is not registered"):
        evaluation.check_feature_net(workdir, config)


def test_vector_samples_raise_user_error(tmp_path):
    config = default_cifar10_configs.get_default_configs()
    with pytest.raises(UserError, match='images'):
        evaluation.sample_quality(np.zeros((4, 2)), str(tmp_path), config)


def _save_legacy_h5(model, path: str, skip: tuple = ()) -> None:
    """Writes weights in the legacy Keras HDF5 layout of the published weight files."""
    with h5py.File(path, 'w') as f:
        layers = [layer for layer in model.layers if layer.name not in skip]
        f.attrs['layer_names'] = [layer.name.encode() for layer in layers]
        for layer in layers:
            group = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names = [f'{layer.name}/w{i}' for i in range(len(weights))]
            group.attrs['weight_names'] = [n.encode() for n in names]
            for n, w in zip(names, weights):
                group.create_dataset(n, data=np.asarray(w))


def test_inception_loads_notop_and_top_weight_files(tmp_path):
    """One random-weights Inception-v3 saved as the two Keras files: the 'notop' file gives
    2048-d pool features, the full file the same features plus 1000 logits."""
    import tensorflow as tf

    model = tf.keras.applications.InceptionV3(
        weights=None, include_top=True, classifier_activation=None
    )
    top, notop = (
        str(tmp_path / evaluation.INCEPTION_TOP),
        str(tmp_path / evaluation.INCEPTION_NOTOP),
    )
    _save_legacy_h5(model, top)
    _save_legacy_h5(model, notop, skip=('avg_pool', 'predictions'))
    images = np.random.default_rng(6).uniform(size=(3, 16, 16, 1)).astype(np.float32)
    net_notop = evaluation.load_inception(notop, batch_size=2)
    net_top = evaluation.load_inception(top, batch_size=2)
    assert not net_notop.has_top and net_top.has_top
    assert net_notop.name != net_top.name and net_notop.fingerprint != net_top.fingerprint
    features, logits = net_notop(images)
    assert features.shape == (3, 2048) and logits is None
    features_top, logits_top = net_top(images)
    assert logits_top.shape == (3, 1000)
    np.testing.assert_allclose(features_top, features, rtol=1e-4, atol=1e-5)
    kernel, bias = model.get_layer('predictions').get_weights()
    np.testing.assert_allclose(logits_top, features @ kernel + bias, rtol=1e-3, atol=1e-4)
    resized = tf.image.resize(np.repeat(images, 3, -1), (299, 299)).numpy() * 2 - 1
    direct = model.get_layer('avg_pool').output  # the pool features of the original model
    pool = tf.keras.Model(model.inputs, direct).predict_on_batch(resized)
    np.testing.assert_allclose(features, pool, rtol=1e-4, atol=1e-5)


def _save_tfgan_like_module(path: str, signature_only: bool = False) -> None:
    """A SavedModel with the TF-GAN Inception module's interface: images in [−1, 1] of
    any size → {'pool_3': [N, 1, 1, 3] channel means, 'logits': [N, 3] 50 × those};
    callable, or (``signature_only``, as a TF1 Hub module loads) a 'default' signature."""
    import tensorflow as tf

    def outputs(images):
        means = tf.reduce_mean(images, axis=[1, 2])
        return {'pool_3': means[:, None, None, :], 'logits': 50.0 * means}

    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    module = tf.Module()
    if signature_only:
        module.run = tf.function(lambda images: outputs(images), input_signature=spec)
        tf.saved_model.save(module, path, signatures={'default': module.run})
    else:
        module.__call__ = tf.function(lambda images: outputs(images), input_signature=spec)
        tf.saved_model.save(module, path)


def _constant_images(colours: np.ndarray, size: int = 4) -> np.ndarray:
    return np.broadcast_to(colours[:, None, None, :], (len(colours), size, size, 3)).copy()


def test_tfgan_inception_module_fid_is_and_original_stats(tmp_path):
    """A folder at eval.inception_path is read as the TF-GAN module: [0, 1] images reach
    it as 2x − 1, pool_3 and logits come back flattened; FID against statistics in the
    originals' layout (pool_3 rows) equals the Fréchet distance of the two feature sets'
    moments (scipy.linalg.sqrtm here), and IS of one-hot-like logits is the class count."""
    module = str(tmp_path / 'inception')
    _save_tfgan_like_module(module)
    net = evaluation.load_inception(module, batch_size=4)
    assert isinstance(net, evaluation.TFGANInceptionNet)
    rng = np.random.default_rng(0)
    colours = np.round(rng.uniform(size=(30, 3)) * 255) / 255
    features, logits = net(_constant_images(colours))
    np.testing.assert_allclose(features, 2 * colours - 1, atol=1e-6)
    np.testing.assert_allclose(logits, 50 * (2 * colours - 1), atol=1e-4)

    ref_pool = rng.normal(size=(200, 3)).astype(np.float32)
    stats_file = str(tmp_path / 'cifar10_stats.npz')
    np.savez(stats_file, pool_3=ref_pool)  # the originals' layout: one key
    config = default_cifar10_configs.get_default_configs()
    config.eval.inception_path, config.eval.stats_path = module, stats_file
    result = evaluation.sample_quality(_constant_images(colours), str(tmp_path), config)
    mu1, mu2 = (2 * colours - 1).mean(0), ref_pool.astype(np.float64).mean(0)
    s1 = np.cov(2 * colours - 1, rowvar=False)
    s2 = np.cov(ref_pool.astype(np.float64), rowvar=False)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert result['fid'] == pytest.approx(expected, rel=1e-5)
    signature_module = str(tmp_path / 'signature_only')
    _save_tfgan_like_module(signature_module, signature_only=True)
    net = evaluation.load_inception(signature_module, batch_size=4)
    np.testing.assert_allclose(net(_constant_images(colours))[0], 2 * colours - 1, atol=1e-6)
    # Three pure colours, ten each: logits ±50 put p(y|x) on one class, IS → 3.
    pure = np.repeat(np.eye(3), 10, axis=0)
    assert evaluation.sample_quality(_constant_images(pure), str(tmp_path), config)['is'] == (
        pytest.approx(3.0, rel=1e-6)
    )


def test_statistics_files_layouts_and_errors(tmp_path):
    """This project's statistics files read as the originals' (pool_3) and back; files
    with other keys, and a feature size other than the network's, are one-line errors."""
    features = np.random.default_rng(1).normal(size=(50, 3))
    stats = evaluation.compute_dataset_stats(_LinearNet(), features[:, None, None, :], 20)
    path = str(tmp_path / 'ours.npz')
    evaluation.save_stats(path, stats)
    with np.load(path) as f:
        np.testing.assert_array_equal(f['pool_3'], stats.features)
    original = str(tmp_path / 'original.npz')
    np.savez(original, pool_3=features)
    loaded = evaluation.load_stats(original, num_kid_features=10)
    np.testing.assert_allclose(loaded.mu, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(loaded.sigma, np.cov(features, rowvar=False), rtol=1e-12)
    assert loaded.features.shape == (10, 3)

    wrong = str(tmp_path / 'wrong.npz')
    np.savez(wrong, activations=features)
    with pytest.raises(UserError, match=r"holds \['activations'\].*'pool_3'"):
        evaluation.load_stats(wrong)
    config = default_cifar10_configs.get_default_configs()
    config.eval.stats_path = str(tmp_path / 'wide.npz')
    np.savez(config.eval.stats_path, pool_3=np.zeros((5, 7)))
    module = str(tmp_path / 'inception')
    _save_tfgan_like_module(module)
    config.eval.inception_path = module
    with pytest.raises(UserError, match='7-d features, tfgan_inception gives 3-d'):
        evaluation.sample_quality(np.zeros((4, 2, 2, 3)), str(tmp_path), config)
    config.eval.stats_path = wrong  # found before any sample is drawn
    with pytest.raises(UserError, match=r"holds \['activations'\]"):
        evaluation.check_feature_net(str(tmp_path), config)
    (tmp_path / 'empty').mkdir()
    config.eval.inception_path = str(tmp_path / 'empty')
    with pytest.raises(UserError, match='without saved_model.pb'):
        evaluation.check_feature_net(str(tmp_path), config)
