"""mixture.GaussianMixture: diffused density against SciPy, score against autodiff,
samples against the stated moments, and the Stein identity tying score to samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import mixture
import sde_lib

SDES = {
    'vp': lambda: sde_lib.VPSDE(0.1, 20.0, 1000),
    've': lambda: sde_lib.VESDE(0.01, 50.0, 1000),
    'subvp': lambda: sde_lib.subVPSDE(0.1, 20.0, 1000),
}


def scipy_log_prob(mix: mixture.GaussianMixture, alpha: float, sigma: float, x: np.ndarray):
    """log Σ_k w_k N(x; α μ_k, α² Σ_k + σ² I) in float64."""
    terms = [
        np.log(w)
        + stats.multivariate_normal(alpha * m, alpha**2 * c + sigma**2 * np.eye(mix.dim)).logpdf(x)
        for w, m, c in zip(mix.weights, mix.means, mix.covs)
    ]
    return logsumexp(np.stack(terms), axis=0)


@pytest.mark.parametrize('name', sorted(SDES))
def test_log_prob_of_diffused_mixture_matches_scipy(name, key):
    sde = SDES[name]()
    mix = mixture.random_mixture(3, 4, 3)
    x = mix.sample(key, 5) * 1.3
    for t in (1e-3, 0.2, 1.0):
        tb = jnp.full((5,), t)
        alpha = float(np.exp(np.float64(sde.log_mean_coeff(tb)[0])))
        sigma = float(sde.std(tb)[0])
        ref = scipy_log_prob(mix, alpha, sigma, np.asarray(x, np.float64))
        np.testing.assert_allclose(mix.log_prob(sde, x, tb), ref, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize('name', sorted(SDES))
def test_score_is_gradient_of_log_prob(name, key):
    sde = SDES[name]()
    mix = mixture.random_mixture(0, 3, 3)
    x = mix.sample(key, 8)
    t = jnp.linspace(0.01, 1.0, 8)
    grad = jax.grad(lambda y: jnp.sum(mix.log_prob(sde, y, t)))(x)
    scale = float(jnp.max(jnp.abs(grad)))
    np.testing.assert_allclose(mix.score(sde, x, t), grad, rtol=1e-4, atol=1e-5 * scale)


def test_image_shaped_inputs_are_flattened(key):
    sde = SDES['vp']()
    mix = mixture.random_mixture(2, 2, 4)
    x = mix.sample(key, 3)
    t = jnp.full((3,), 0.3)
    images = x.reshape(3, 2, 2, 1)
    np.testing.assert_allclose(
        mix.score_fn(sde)(images, t).reshape(3, 4), mix.score(sde, x, t), rtol=1e-6
    )
    np.testing.assert_allclose(mix.log_prob(sde, images, t), mix.log_prob(sde, x, t))


def test_sample_moments_match_mean_and_cov(key):
    """Mean within 4.5 standard errors; covariance entries within 4.5 of their own SEs."""
    mix = mixture.random_mixture(5, 3, 3, scale=2.0)
    n = 200_000
    x = np.asarray(mix.sample(key, n), np.float64)
    se_mean = np.sqrt(np.diag(mix.cov) / n)
    assert np.all(np.abs(x.mean(0) - mix.mean) < 4.5 * se_mean)
    centred = x - mix.mean
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(0) / np.sqrt(n)
    assert np.all(np.abs(products.mean(0) - mix.cov) < 4.5 * se_cov + 1e-12)


@pytest.mark.parametrize('t', (0.05, 0.5))
def test_stein_identity_links_samples_and_score(t, key):
    """For x_t = α x_0 + σ z ~ p_t: E[∇log p_t(x)] = 0 and E[∇log p_t(x) xᵀ] = −I."""
    sde = SDES['vp']()
    mix = mixture.random_mixture(7, 3, 2)
    n = 100_000
    k0, k1 = jax.random.split(key)
    tb = jnp.full((n,), t)
    mean, std = sde.marginal_prob(mix.sample(k0, n), tb)
    x = mean + std[:, None] * jax.random.normal(k1, mean.shape)
    s = np.asarray(mix.score(sde, x, tb), np.float64)
    x = np.asarray(x, np.float64)
    prod = s[:, :, None] * x[:, None, :]
    se = prod.std(0) / np.sqrt(n)
    assert np.all(np.abs(s.mean(0)) < 4.5 * s.std(0) / np.sqrt(n))
    assert np.all(np.abs(prod.mean(0) + np.eye(2)) < 4.5 * se)


def test_invalid_mixtures_are_rejected():
    with pytest.raises(ValueError, match='sum to one'):
        mixture.GaussianMixture([0.5, 0.6], np.zeros((2, 2)), np.tile(np.eye(2), (2, 1, 1)))
    with pytest.raises(ValueError, match='inconsistent shapes'):
        mixture.GaussianMixture([1.0], np.zeros((1, 2)), np.eye(3)[None])
    ring = mixture.ring_mixture(8, radius=4.0, std=0.5)
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 4.0)
    np.testing.assert_allclose(ring.mean, 0.0, atol=1e-12)
