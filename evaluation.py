"""Sample-quality metrics: Fréchet distance (FID), kernel distance (KID), Inception score.

Metrics (docs/MATH.md, Sample-quality metrics), computed in float64 on features φ(x) of
a fixed feature network:

* FID  = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)   (Heusel et al., 2017), with (μ, Σ) the mean
  and covariance of the features of the samples and of the training split.
* KID  = unbiased MMD² with the cubic kernel k(a, b) = (aᵀb / d + 1)³ (Bińkowski et al.,
  2018), averaged over ``num_subsets`` random subsets of ``subset_size`` examples of each
  side, as their reference code (and clean-fid, TF-GAN) do. Unbiased: it can be negative.
* IS   = exp(E_x KL(p(y|x) ‖ p(y)))   (Salimans et al., 2016), p(y) = E_x p(y|x).

Feature networks (:class:`FeatureNet`, inputs are images in [0, 1], NHWC):

* Real images (the sources naming 'inception': the TFDS and TFRecords datasets, PHOTOS,
  NPZ images): an Inception network
  read from the LOCAL path ``config.eval.inception_path`` (nothing is downloaded at run
  time), chosen by what the path is:

  - a folder: the TF-GAN Inception module that Score SDE and ScoreFlow load from TF-Hub
    (``tensorflow/tfgan/eval/inception/1``; :class:`TFGANInceptionNet`): ``pool_3``
    (2048-d) features for FID and KID, its 1008 ``logits`` for IS — the papers'
    numbers. On a machine with network access download
    https://tfhub.dev/tensorflow/tfgan/eval/inception/1?tf-hub-format=compressed and
    unpack the .tar.gz into a folder. Reference statistics can be the originals' files
    (``config.eval.stats_path``: ``assets/stats/cifar10_stats.npz`` etc., feature rows
    under ``pool_3``).
  - a ``.h5`` file: Keras' ImageNet Inception-v3 (:class:`InceptionFeatureNet`), a
    documented alternative whose numbers are close to, not equal to, the papers'.
    Images are resized bilinearly to 299×299, scaled to [−1, 1], grey images repeated to
    three channels. Two files are accepted, both from the Keras applications bucket:

  - ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``
    (md5 bcbd6486424b2319ff4ef7d526e38f63): 2048-d pool features, FID and KID, no IS.
  - ``inception_v3_weights_tf_dim_ordering_tf_kernels.h5``
    (md5 9a0d58056eeedaa3f26cb7ebd46da564): the same features plus the 1000 ImageNet
    logits: FID, KID and IS.

  Both live under https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/
  (the URL is the folder followed by the file name);
  ``python -c "import keras; keras.applications.InceptionV3(include_top=False)"`` also
  downloads the first into ``~/.keras/models/``. Which of the two was given is detected
  from the file (a ``predictions`` layer). Compare models with one feature network.

* DIGITS (8×8 scikit-learn digits, which Inception cannot judge): a small MLP classifier
  trained on the digits training split ('digits_mlp', registered by
  ``digits_classifier.py``). Its 64-d penultimate features give "FD_digits" and KID, its
  10 class probabilities the classifier-based Inception-score analogue (between 1 and 10).

Which network judges a dataset's samples is the data source's choice
(``datasets.feature_net``: a name in this module's registry, :func:`register_feature_net`,
or None for data no network judges). A registered network is built by
``build(workdir, config)``; its ``check(workdir, config)``, run on every process before
samples are drawn, fails at once when the network cannot be had (missing weights) and may
prepare it (the digits classifier is trained there); a ``judge`` description marks a
network whose logits classify the data's own labels (``sample_runner`` then uses it as the
independent judge of class-conditional samples).

Samples (in [0, 1], the data space the model was trained in) are first quantized to the
data's K levels and mapped to x̄/(K−1), like the training images they are compared with
(the original code compared uint8 images). Training-split statistics are cached as
``<workdir>/stats/<dataset>_<split>_<net>.npz`` (``allow_pickle=False``): μ, Σ, a fixed
random subset of features for KID (also under ``pool_3``, so that the originals' code
reads the file), and the feature network's fingerprint; a cache written with another
network is recomputed. KID uses that subset (5000 rows) of the reference features, not
all of them as TF-GAN's ``kernel_classifier_distance`` does: the same expectation, a
little more variance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
from absl import logging
from scipy.special import logsumexp

import datasets
import file_io
from errors import UserError

INCEPTION_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/'
INCEPTION_NOTOP = 'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5'
INCEPTION_TOP = 'inception_v3_weights_tf_dim_ordering_tf_kernels.h5'
INCEPTION_SIZE = 299
TFGAN_INCEPTION_URL = 'https://tfhub.dev/tensorflow/tfgan/eval/inception/1'
TFGAN_POOL, TFGAN_LOGITS = 'pool_3', 'logits'  # its outputs, and the stats files' key
TFGAN_HOW_TO = (
    'For FID/IS as the papers computed them, on a machine with network access download '
    f'{TFGAN_INCEPTION_URL}?tf-hub-format=compressed, unpack the .tar.gz into a folder, '
    'copy it here and pass --config.eval.inception_path=/path/to/that/folder.'
)

ImageSource = Union[np.ndarray, Iterable[np.ndarray]]


# --------------------------------------------------------------------------- metrics
def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between two Gaussians.

    Σ₁Σ₂ has the eigenvalues of the symmetric PSD matrix M = √Σ₁ Σ₂ √Σ₁, so
    Tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(M); both square roots come from ``eigh`` in float64 with
    eigenvalues at round-off level (tiny, or negative) set to zero. Singular covariances
    (fewer samples than feature dimensions) need no ε-regularisation.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1 = _symmetric(np.asarray(sigma1, np.float64))
    sigma2 = _symmetric(np.asarray(sigma2, np.float64))
    if (
        mu1.shape != mu2.shape
        or sigma1.shape != sigma2.shape
        or sigma1.shape != (mu1.shape[0],) * 2
    ):
        raise UserError(
            f'Fréchet distance needs statistics of one feature size; got means '
            f'{mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and {sigma2.shape}. '
            'Delete stale statistics under <workdir>/stats/ so they are recomputed.'
        )
    evals, evecs = np.linalg.eigh(sigma1)
    sqrt_sigma1 = (evecs * _sqrt_psd_eigenvalues(evals)) @ evecs.T
    m = _symmetric(sqrt_sigma1 @ sigma2 @ sqrt_sigma1)
    tr_covmean = np.sum(_sqrt_psd_eigenvalues(np.linalg.eigvalsh(m)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _symmetric(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + a.T)


def _sqrt_psd_eigenvalues(evals: np.ndarray) -> np.ndarray:
    """√λ for the eigenvalues of a PSD matrix, with λ below the round-off level
    (d · ε₆₄ · max λ, negative ones included) set to 0: √ would blow 1e-17 up to 3e-9."""
    tol = evals.shape[0] * np.finfo(np.float64).eps * max(float(np.max(evals)), 0.0)
    return np.sqrt(np.where(evals > tol, evals, 0.0))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb/d + 1)³ between samples x [m, d] and y [n, d].

    MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n−1))
             − 2 Σ_{i,j} k(xᵢ,yⱼ)/(mn).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2:
        raise UserError(
            f'KID needs at least 2 examples on each side; got {m} and {n}. '
            'Raise config.eval.num_samples.'
        )
    k_xx, k_yy, k_xy = (_cubic_kernel(a, b, d) for a, b in ((x, x), (y, y), (x, y)))
    return float(
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2.0 * k_xy.mean()
    )


def _cubic_kernel(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    k = a @ b.T / d + 1.0
    return k * k * k  # 4× faster than k ** 3


def kernel_inception_distance(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID: the mean of :func:`mmd2_unbiased` over random subsets (Bińkowski et al.).

    Each of ``num_subsets`` rounds draws ``min(subset_size, n₁, n₂)`` examples without
    replacement from each side. When that is every example of both sides, the full
    samples are compared once.
    """
    feats1, feats2 = np.asarray(feats1), np.asarray(feats2)
    m = min(subset_size, feats1.shape[0], feats2.shape[0])
    if m == feats1.shape[0] and m == feats2.shape[0]:
        return mmd2_unbiased(feats1, feats2)
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            feats1[rng.choice(feats1.shape[0], m, replace=False)],
            feats2[rng.choice(feats2.shape[0], m, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values))


def inception_score(
    logits_or_probs: np.ndarray, from_logits: bool = True, num_splits: int = 1
) -> float:
    """IS = exp(E_x KL(p(y|x) ‖ p(y))), p(y) = E_x p(y|x), from logits [N, K] (or probs).

    Computed in log space: log p(y|x) = ℓ − logsumexp(ℓ), log p(y) = logsumexp_x log p(y|x)
    − log N. With ``num_splits`` > 1 the score is averaged over that many equal splits
    (Salimans et al. used 10; the default 1 scores all samples at once, like TF-GAN's
    ``classifier_score_from_logits`` used by the Score SDE code).
    """
    a = np.asarray(logits_or_probs, np.float64)
    if from_logits:
        log_p = a - logsumexp(a, axis=1, keepdims=True)
    else:
        with np.errstate(divide='ignore'):
            log_p = np.log(a / a.sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, num_splits):
        log_py = logsumexp(part, axis=0, keepdims=True) - np.log(part.shape[0])
        p = np.exp(part)
        kl = np.sum(p * np.where(p > 0, part - log_py, 0.0), axis=1)  # 0·log 0 = 0
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


# ------------------------------------------------------------------ feature statistics
@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Reference statistics of a feature network on a data split.

    Attributes:
      mu: [d] feature mean (float64).
      sigma: [d, d] feature covariance (float64, ddof = 1).
      features: [k, d] a uniformly random subset of the features, for KID.
      fingerprint: identifies the feature network (weights) that produced them.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    fingerprint: str


def feature_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of features [N, d] in float64, Σ with the unbiased 1/(N−1) normalisation."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def stats_path(workdir: str, dataset: str, split: str, featurenet: str) -> str:
    """``<workdir>/stats/<dataset>_<split>_<featurenet>.npz`` (lower-case dataset)."""
    return os.path.join(workdir, 'stats', f'{dataset.lower()}_{split}_{featurenet}.npz')


def save_stats(path: str, stats: FeatureStats) -> None:
    """Writes ``stats`` to ``path`` (.npz, no pickle) atomically: tmp file, then rename.

    The file also reads as the originals' statistics (``pool_3``: feature rows, the only
    key Score SDE's ``load_dataset_stats`` uses); here those rows are the random subset
    kept for KID, while μ and Σ are those of all rows."""
    file_io.save_npz(
        path,
        mu=stats.mu,
        sigma=stats.sigma,
        features=stats.features,
        fingerprint=np.array(stats.fingerprint),
        **{TFGAN_POOL: stats.features},
    )


_STATS_KEYS = {'mu', 'sigma', 'features', 'fingerprint'}  # this project's statistics


def _layout_error(path: str, keys: Any) -> UserError:
    return UserError(
        f'{path} holds {sorted(keys)}, not feature statistics: expected the '
        f"originals' layout ({TFGAN_POOL!r}: [N, d] feature rows, N ≥ 2) or this "
        "project's (mu, sigma, features, fingerprint)."
    )


def open_stats(path: str) -> Any:
    """The open ``.npz`` statistics file ``path`` (lazy: arrays are read on access), or a
    :class:`UserError` when it cannot be read or has neither known layout."""
    try:
        f = file_io.np_load(path)
    except (OSError, ValueError) as e:
        raise UserError(f'Cannot read the statistics file {path!r} ({e}).') from e
    if not (_STATS_KEYS <= set(f.files) or TFGAN_POOL in f.files):
        f.close()
        raise _layout_error(path, f.files)
    return f


def load_stats(path: str, num_kid_features: int = 5000, seed: int = 0) -> FeatureStats:
    """Reads statistics written by :func:`save_stats`, or the originals' statistics files
    (``assets/stats/cifar10_stats.npz`` etc.: feature rows under ``pool_3``, from which μ,
    Σ and a random subset of ``num_kid_features`` rows for KID are taken; fingerprint '').
    ``allow_pickle=False``; a file with neither layout is a :class:`UserError`."""
    with open_stats(path) as f:
        if _STATS_KEYS <= set(f.files):
            return FeatureStats(
                mu=f['mu'],
                sigma=f['sigma'],
                features=f['features'],
                fingerprint=str(f['fingerprint']),
            )
        pool, keys = f[TFGAN_POOL], f.files
    if pool.ndim != 2 or len(pool) < 2:
        raise _layout_error(path, keys)
    mu, sigma = feature_stats(pool)
    rows = np.random.default_rng(seed).permutation(len(pool))[:num_kid_features]
    return FeatureStats(mu=mu, sigma=sigma, features=pool[np.sort(rows)], fingerprint='')


class _MomentAccumulator:
    """Streaming mean and covariance (float64, shifted by the first batch's mean) plus a
    uniform random subset of ``keep`` rows: each row gets a U(0,1) key, the ``keep``
    smallest keys win (bottom-k sampling, exact without replacement)."""

    def __init__(self, keep: int, seed: int):
        self.keep, self.rng = keep, np.random.default_rng(seed)
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None
        self.keys, self.rows = np.zeros(0), None

    def add(self, f: np.ndarray) -> None:
        f64 = np.asarray(f, np.float64)
        if self.shift is None:
            self.shift = f64.mean(axis=0)
            self.s1 = np.zeros_like(self.shift)
            self.s2 = np.zeros((f64.shape[1],) * 2)
            self.rows = np.zeros((0, f64.shape[1]), np.float32)
        c = f64 - self.shift
        self.n += f64.shape[0]
        self.s1 += c.sum(axis=0)
        self.s2 += c.T @ c
        keys = np.concatenate([self.keys, self.rng.random(f64.shape[0])])
        rows = np.concatenate([self.rows, np.asarray(f, np.float32)])
        best = np.argsort(keys, kind='stable')[: self.keep]
        self.keys, self.rows = keys[best], rows[best]

    def result(self, fingerprint: str) -> FeatureStats:
        if self.n < 2:
            raise UserError('Feature statistics need at least 2 training examples.')
        mean_c = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        return FeatureStats(
            mu=self.shift + mean_c,
            sigma=_symmetric(sigma),
            features=self.rows,
            fingerprint=fingerprint,
        )


def compute_dataset_stats(
    net: FeatureNet, images: ImageSource, num_kid_features: int = 5000, seed: int = 0
) -> FeatureStats:
    """Runs ``net`` over ``images`` (an array [N, H, W, C] in [0, 1], or an iterable of such
    batches, e.g. the training split) and returns μ, Σ and ``num_kid_features`` random
    feature rows for KID. Memory is O(d² + num_kid_features·d), not O(N·d)."""
    acc = _MomentAccumulator(num_kid_features, seed)
    batches = [images] if isinstance(images, np.ndarray) else images
    for batch in batches:
        acc.add(net(batch)[0])
    return acc.result(net.fingerprint)


# --------------------------------------------------------------------- feature networks
class FeatureNet:
    """A fixed network mapping images in [0, 1] ([N, H, W, C]) to features (and logits).

    Subclasses set ``name`` (used in cache file names), ``fingerprint`` and
    ``batch_size`` and implement :meth:`_apply` on one batch of exactly ``batch_size``
    images; :meth:`__call__` pads the last batch so that every call has one shape.
    """

    name: str
    fingerprint: str
    batch_size: int

    def _apply(self, images: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        raise NotImplementedError

    def __call__(self, images: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Returns (features [N, d] float32, logits [N, K] float32 or None)."""
        images = np.asarray(images, np.float32)
        n, feats, logits = images.shape[0], [], []
        for start in range(0, n, self.batch_size):
            batch = images[start : start + self.batch_size]
            pad = self.batch_size - batch.shape[0]
            if pad:
                batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
            f, lg = self._apply(batch)
            feats.append(np.asarray(f, np.float32)[: self.batch_size - pad])
            if lg is not None:
                logits.append(np.asarray(lg, np.float32)[: self.batch_size - pad])
        features = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
        return features, (np.concatenate(logits) if logits else None)


class InceptionFeatureNet(FeatureNet):
    """Keras Inception-v3 (TF backend by default): 2048-d pool features, and the 1000
    ImageNet logits when the weights file has the classification top."""

    def __init__(self, path: str, batch_size: int = 50):
        self.has_top = _has_predictions_layer(path)
        import tensorflow as tf  # pylint: disable=g-import-not-at-top (4-7 s import)

        _allow_tf_gpu_memory_growth(tf)
        self.name = 'inception_v3' + ('' if self.has_top else '_notop')
        self.fingerprint = _file_digest(path)
        self.batch_size = batch_size
        try:
            base = tf.keras.applications.InceptionV3(
                include_top=self.has_top, weights=path, pooling='avg', classifier_activation=None
            )
        except (ValueError, OSError) as e:
            raise UserError(
                f'Could not load Inception-v3 weights from {path!r} ({e}). Expected the '
                f'Keras file {INCEPTION_NOTOP} or {INCEPTION_TOP}; set '
                'config.eval.inception_path to it.'
            ) from e
        outputs = (
            [base.get_layer('avg_pool').output, base.output] if self.has_top else [base.output]
        )
        images = tf.keras.Input((None, None, 3))
        x = tf.keras.layers.Resizing(INCEPTION_SIZE, INCEPTION_SIZE, interpolation='bilinear')(
            images
        )
        x = tf.keras.layers.Rescaling(2.0, offset=-1.0)(x)
        features_model = tf.keras.Model(base.inputs, outputs)
        self.model = tf.keras.Model(images, features_model(x))

    def _apply(self, images: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        images = _three_channels(images)
        out = self.model.predict_on_batch(images)
        out = out if isinstance(out, (list, tuple)) else [out]
        return np.asarray(out[0]), (np.asarray(out[1]) if self.has_top else None)


class TFGANInceptionNet(FeatureNet):
    """The TF-GAN Inception network of Score SDE and ScoreFlow, from a local copy of the
    TF-Hub module ``tensorflow/tfgan/eval/inception/1`` (a SavedModel directory).

    As the originals call it: uint8 levels v are mapped to (v − 127.5)/127.5 = 2x − 1 and
    passed at their own size (the module resizes to 299×299 bilinearly inside, as the
    originals rely on); its outputs ``pool_3`` (2048-d) and ``logits`` (1008) are
    flattened. Grey images are repeated to three channels.
    """

    name = 'tfgan_inception'

    def __init__(self, path: str, batch_size: int = 50):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top (4-7 s import)

        _allow_tf_gpu_memory_growth(tf)
        self.fingerprint = _folder_digest(path)
        self.batch_size = batch_size
        self._fn = _load_tfhub_callable(tf, path)
        self._tf = tf

    def _apply(self, images: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        images = _three_channels(images)
        out = self._fn(self._tf.constant(2.0 * images - 1.0, self._tf.float32))
        pool = np.asarray(out[TFGAN_POOL]).reshape(images.shape[0], -1)
        logits = np.asarray(out[TFGAN_LOGITS]).reshape(images.shape[0], -1)
        return pool, logits


def _three_channels(images: np.ndarray) -> np.ndarray:
    """Grey images [N, H, W, 1] repeated to RGB, as both Inception networks need."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _load_tfhub_callable(tf: Any, path: str) -> Callable[[Any], Any]:
    """``images -> {name: tensor}`` of a SavedModel folder: a TF2 SavedModel's
    ``__call__``, or the ``default`` signature of a TF1 Hub-format module (loaded with the
    empty tag set, as ``tensorflow_hub.load`` does), called with its one input by name."""
    errors = []
    for tags in (None, []):
        try:
            module = tf.saved_model.load(path, tags=tags)
            break
        except (ValueError, OSError, RuntimeError) as e:
            errors.append(f'{type(e).__name__}: {str(e).splitlines()[0][:120]}')
    else:
        raise UserError(
            f'config.eval.inception_path={path!r} is not a loadable TF-Hub module / '
            f'SavedModel ({"; ".join(errors)}). {TFGAN_HOW_TO}'
        )
    if callable(module):
        return module
    signatures = getattr(module, 'signatures', {})
    if 'default' not in signatures:
        raise UserError(
            f'The SavedModel at config.eval.inception_path={path!r} is neither callable nor '
            f'has a "default" signature (it has {sorted(signatures)}). {TFGAN_HOW_TO}'
        )
    signature = signatures['default']
    (name,) = signature.structured_input_signature[1]
    return lambda images: signature(**{name: images})


def load_inception(path: str, batch_size: int = 50) -> FeatureNet:
    """The feature network at ``config.eval.inception_path``: a directory is the TF-GAN
    Inception module (:class:`TFGANInceptionNet`, the papers' network), a ``.h5`` file
    Keras' Inception-v3 (:class:`InceptionFeatureNet`); :class:`UserError` if missing."""
    check_inception_file(path)
    if file_io.isdir(path):
        return TFGANInceptionNet(path, batch_size)
    return InceptionFeatureNet(path, batch_size)


def check_inception_file(path: str) -> None:
    """:class:`UserError` (one line: what to download, where to point the field) unless
    ``path`` is a SavedModel directory or an HDF5 weights file; cheap, for checks before
    long work."""
    if path and file_io.isdir(path):
        if not file_io.isfile(os.path.join(path, 'saved_model.pb')):
            raise UserError(
                f'config.eval.inception_path={path!r} is a folder without saved_model.pb, '
                f'not a TF-Hub module / SavedModel; {TFGAN_HOW_TO}'
            )
        return
    if not path or not file_io.isfile(path):
        what = 'is empty' if not path else f'is {path!r}, which does not exist'
        raise UserError(
            f'FID/KID/IS need an Inception network, but config.eval.inception_path {what}. '
            f'{TFGAN_HOW_TO} (Or Keras Inception-v3 weights: {INCEPTION_URL}{INCEPTION_TOP}, '
            'a file.) Or sample without these metrics: --config.eval.sample_metrics=False.'
        )
    _has_predictions_layer(path)


def _has_predictions_layer(path: str) -> bool:
    """True when the HDF5 weights file holds the classification top ('predictions')."""
    import h5py  # pylint: disable=g-import-not-at-top

    names = []
    try:
        with h5py.File(path, 'r') as f:
            f.visit(names.append)
    except OSError as e:
        raise UserError(
            f'config.eval.inception_path={path!r} is not an HDF5 weights file ({e}). '
            f'Expected {INCEPTION_NOTOP} or {INCEPTION_TOP}.'
        ) from e
    return any(part == 'predictions' for name in names for part in name.split('/'))


def _folder_digest(path: str) -> str:
    """Digest of a SavedModel folder: its files' relative names and contents."""
    h = hashlib.sha256()
    for root, _, files in sorted(file_io.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            h.update(_file_digest(full).encode())
    return h.hexdigest()[:16]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with file_io.open_file(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()[:16]


def _allow_tf_gpu_memory_growth(tf: Any) -> None:
    """Keeps TensorFlow from reserving the whole GPU that JAX already uses."""
    try:
        for gpu in tf.config.list_physical_devices('GPU'):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # GPUs already initialised: too late, keep TF's setting.
        pass


# ----------------------------------------------------------- feature-network registry
@dataclasses.dataclass(frozen=True)
class FeatureNetEntry:
    """A registered feature network (:func:`register_feature_net`).

    Attributes:
      build: ``build(workdir, config) -> FeatureNet`` (may train and cache it in
        ``workdir``).
      check: ``check(workdir, config)``, on every process before samples are drawn:
        :class:`UserError` now when ``build`` would fail for want of files; may prepare
        the network (train it) so that ``build`` then only loads it.
      judge: non-empty when the network's logits classify the data's own labels: its
        description as the independent judge of class-conditional samples.
    """

    build: Callable[[str, Any], FeatureNet]
    check: Callable[[str, Any], None]
    judge: str = ''


_FEATURE_NETS: Dict[str, FeatureNetEntry] = {}


def register_feature_net(
    name: str,
    build: Callable[[str, Any], FeatureNet],
    check: Optional[Callable[[str, Any], None]] = None,
    judge: str = '',
) -> None:
    """Makes ``name`` a feature network that a data source can name
    (``datasets.DataSource.feature_net``); see :class:`FeatureNetEntry`."""
    if name in _FEATURE_NETS:
        raise ValueError(f'A feature network named {name!r} is already registered.')
    _FEATURE_NETS[name] = FeatureNetEntry(build, check or (lambda workdir, config: None), judge)


def feature_net_names() -> Tuple[str, ...]:
    """The registered feature networks."""
    return tuple(sorted(_FEATURE_NETS))


def feature_net_entry(config: Any) -> Optional[FeatureNetEntry]:
    """The registered network that judges samples of ``config.data.dataset``; None when
    its source names none; :class:`UserError` when the name is not registered."""
    name = datasets.feature_net(config)
    if name is None:
        return None
    if name not in _FEATURE_NETS:
        raise UserError(
            f'config.data.dataset={config.data.dataset!r} is judged by the feature network '
            f'{name!r}, which is not registered (known: {", ".join(feature_net_names())}); '
            'import the module that registers it (e.g. digits_classifier) before evaluating'
        )
    return _FEATURE_NETS[name]


def check_feature_net(workdir: str, config: Any) -> None:
    """Raises :class:`UserError` now if :func:`get_feature_net` would fail for want of
    weights (e.g. Inception's), or ``eval.stats_path`` is unreadable — before samples are
    drawn, not after; prepares the network (:class:`FeatureNetEntry`). Call it on every
    process. Data that no network judges pass (their metrics are skipped)."""
    entry = feature_net_entry(config)
    if entry is not None:
        entry.check(workdir, config)
    if config.eval.get('stats_path', ''):
        open_stats(config.eval.stats_path).close()  # readable, a known layout


def get_feature_net(workdir: str, config: Any) -> FeatureNet:
    """The feature network that judges samples of ``config.data.dataset`` (the digits
    classifier for DIGITS, Inception from ``config.eval.inception_path`` for other images);
    :class:`UserError` when it cannot be loaded or the data have none."""
    entry = feature_net_entry(config)
    if entry is None:
        raise UserError(
            f'config.data.dataset={config.data.dataset!r} has no feature network for '
            'FID/KID/IS; sample without these metrics: --config.eval.sample_metrics=False'
        )
    return entry.build(workdir, config)


def label_judge(workdir: str, config: Any) -> Optional[Tuple[FeatureNet, str]]:
    """(network, description) when the data's feature network classifies their labels
    (an independent judge of class-conditional samples: argmax of its logits); else None."""
    entry = feature_net_entry(config)
    if entry is None or not entry.judge:
        return None
    return entry.build(workdir, config), entry.judge


def _inception(workdir: str, config: Any) -> FeatureNet:
    return load_inception(config.eval.get('inception_path', ''))


register_feature_net(
    'inception',
    _inception,
    check=lambda workdir, config: check_inception_file(config.eval.get('inception_path', '')),
)


# --------------------------------------------------------------------------- pipeline
def quantize(samples: np.ndarray, num_bins: int, dequantized: bool) -> np.ndarray:
    """Samples in [0, 1] → the data's levels x̄ ∈ {0, …, K−1} → x̄/(K−1) in [0, 1].

    ``datasets.to_levels`` inverts the training map; metrics compare quantized samples
    with the levels of the training split, as the original code compared uint8 images.
    """
    return datasets.to_unit_interval(datasets.to_levels(samples, num_bins, dequantized), num_bins)


def training_images(
    config: Any, split: str = 'train', batch_size: int = 1000
) -> Iterator[np.ndarray]:
    """The whole ``split`` (every host's part: statistics must not depend on the host) in
    batches of images x̄/(K−1) in [0, 1], from :mod:`datasets`."""
    levels = datasets.get_shard(config, split, process_index=0, process_count=1).data
    for start in range(0, levels.shape[0], batch_size):
        yield datasets.to_unit_interval(
            levels[start : start + batch_size], int(config.data.num_bins)
        )


def reference_stats(
    net: FeatureNet,
    dataset_name: str,
    workdir: str,
    config: Any,
    reference_images: Optional[ImageSource] = None,
    split: str = 'train',
) -> FeatureStats:
    """The reference statistics of ``net``: the file ``config.eval.stats_path`` when set
    (e.g. the originals' ``assets/stats/cifar10_stats.npz``, for the TF-GAN network),
    else the cached ``split`` statistics, computed from ``reference_images`` (default:
    :func:`training_images`) and saved when missing or made by another network."""
    given = config.eval.get('stats_path', '') if config is not None else ''
    if given:
        logging.info('Reference statistics from %s (eval.stats_path).', given)
        return load_stats(given)
    path = stats_path(workdir, dataset_name, split, net.name)
    if file_io.exists(path):
        stats = load_stats(path)
        if stats.fingerprint == net.fingerprint:
            return stats
        logging.info('%s was computed with another feature network; recomputing.', path)
    if reference_images is None:
        reference_images = training_images(config, split)
    stats = compute_dataset_stats(net, reference_images)
    save_stats(path, stats)
    logging.info('Saved %s statistics of %s (%s) to %s', net.name, dataset_name, split, path)
    return stats


def sample_quality(
    samples_in_unit_interval: np.ndarray,
    workdir: str,
    config: Any,
    reference_images: Optional[ImageSource] = None,
) -> dict:
    """FID, KID and IS of image samples [N, H, W, C] in [0, 1] against the training split.

    Samples are first quantized to the data's ``config.data.num_bins`` levels
    (:func:`quantize`, honouring ``config.data.uniform_dequantization``). Returns
    {'fid', 'kid', 'is'} (floats); 'is' only where the feature network has logits (digits
    classifier, Inception top weights). For DIGITS 'fid' is FD_digits and 'is' the
    10-class classifier score. ``reference_images`` (the training split as x̄/(K−1), an
    array or an iterable of batches) overrides :func:`training_images` when the cache
    is built. The feature network is the data source's (:func:`get_feature_net`).
    Raises :class:`UserError` when Inception weights are needed and missing, for data
    that no network judges, or for vector data.
    """
    samples = np.asarray(samples_in_unit_interval)
    if samples.ndim != 4 or samples.shape[-1] not in (1, 3):
        raise UserError(
            f'FID/KID/IS apply to images [N, H, W, 1 or 3]; got samples of shape '
            f'{samples.shape} for {config.data.dataset}. Set --config.eval.enable_sampling=False.'
        )
    net = get_feature_net(workdir, config)
    ref = reference_stats(net, config.data.dataset, workdir, config, reference_images)
    images = quantize(samples, int(config.data.num_bins), bool(config.data.uniform_dequantization))
    features, logits = net(images)
    if features.shape[1] != ref.mu.shape[0]:
        raise UserError(
            f'The reference statistics have {ref.mu.shape[0]}-d features, {net.name} gives '
            f'{features.shape[1]}-d ones: eval.stats_path must come from the same network.'
        )
    mu, sigma = feature_stats(features)
    result = {
        'fid': frechet_distance(mu, sigma, ref.mu, ref.sigma),
        'kid': kernel_inception_distance(features, ref.features),
    }
    if logits is not None:
        result['is'] = inception_score(logits)
    return result
