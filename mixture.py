"""Closed-form Gaussian mixtures diffused by a linear SDE.

If p_0 = Σ_k w_k N(μ_k, Σ_k) and p_0t(x_t | x_0) = N(α(t) x_0, σ(t)² I), then p_t is again a
Gaussian mixture, Σ_k w_k N(α μ_k, α² Σ_k + σ² I).  Its score ∇ log p_t and log-density are
exact, which makes the mixture the reference against which every SDE, loss, sampler,
likelihood and bound in this project is tested; it also supplies the TOY dataset and
exact-score "models".
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k) on R^D.

    Attributes:
      weights: [K] mixture weights summing to one.
      means: [K, D].
      covs: [K, D, D] symmetric positive (semi-)definite covariances.
    """

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    def __post_init__(self):
        for name in ('weights', 'means', 'covs'):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.float64))
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise ValueError(
                f'inconsistent shapes: weights {self.weights.shape}, '
                f'means {self.means.shape}, covs {self.covs.shape}'
            )
        if not np.isclose(self.weights.sum(), 1.0):
            raise ValueError('mixture weights must sum to one')

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def mean(self) -> np.ndarray:
        """E[x] = Σ w_k μ_k."""
        return self.weights @ self.means

    @property
    def cov(self) -> np.ndarray:
        """Cov[x] = Σ w_k (Σ_k + μ_k μ_kᵀ) − E[x] E[x]ᵀ."""
        second = np.einsum(
            'k,kij->ij', self.weights, self.covs + np.einsum('ki,kj->kij', self.means, self.means)
        )
        return second - np.outer(self.mean, self.mean)

    def sample(self, rng: Array, n: int) -> Array:
        """n samples, [n, D] float32 (the x of :meth:`sample_with_components`)."""
        return self.sample_with_components(rng, n)[0]

    def sample_with_components(self, rng: Array, n: int) -> tuple[Array, Array]:
        """n samples x [n, D] float32 and the component k [n] int32 that drew each one."""
        k_rng, z_rng = jax.random.split(rng)
        k = jax.random.choice(k_rng, len(self.weights), (n,), p=jnp.asarray(self.weights))
        chol = np.linalg.cholesky(self.covs + 1e-12 * np.eye(self.dim))
        z = jax.random.normal(z_rng, (n, self.dim))
        x = jnp.asarray(self.means)[k] + jnp.einsum('nij,nj->ni', jnp.asarray(chol)[k], z)
        return x.astype(jnp.float32), k.astype(jnp.int32)

    # --- the diffused mixture p_t -------------------------------------------------
    def _diffused(self, sde, t: Array, dtype=jnp.float32):
        """Per-example component means [B,K,D] and covariances [B,K,D,D] of p_t."""
        alpha = jnp.exp(sde.log_mean_coeff(t))[:, None, None]
        sigma = sde.std(t)[:, None, None, None]
        means = alpha * jnp.asarray(self.means, dtype)[None]
        covs = alpha[..., None] ** 2 * jnp.asarray(self.covs, dtype)[None] + sigma**2 * jnp.eye(
            self.dim, dtype=dtype
        )
        return means, covs

    def _component_terms(self, sde, x: Array, t: Array):
        """log w_k N(x; m_k, C_k) [B,K] and C_k⁻¹(x − m_k) [B,K,D], in x's precision
        (float32, or float64 under ``jax.enable_x64`` for references)."""
        x = jnp.reshape(x, (x.shape[0], -1))
        means, covs = self._diffused(sde, t, x.dtype)
        chol = jnp.linalg.cholesky(covs)
        diff = x[:, None, :] - means
        sol = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        maha = jnp.sum(diff * sol, -1)
        logn = -0.5 * (maha + logdet + self.dim * jnp.log(2 * jnp.pi))
        return jnp.log(jnp.asarray(self.weights, x.dtype)) + logn, sol

    def log_prob(self, sde, x: Array, t: Array) -> Array:
        """log p_t(x) per example [B] (x may be [B, ...] with prod(...) = D)."""
        logits, _ = self._component_terms(sde, x, t)
        return logsumexp(logits, axis=-1)

    def log_posterior(self, sde, x: Array, t: Array) -> Array:
        """log p_t(y = k | x) [B, K]: the normalised log responsibilities of the diffused
        components, log w_k N(x; m_k, C_k) − log p_t(x).  ``jax.grad`` of
        ``log_posterior(sde, x, t)[arange(B), y].sum()`` is ∇_x log p_t(y | x), the exact
        time-dependent classifier gradient of the component label."""
        logits, _ = self._component_terms(sde, x, t)
        return logits - logsumexp(logits, axis=-1, keepdims=True)

    def score(self, sde, x: Array, t: Array) -> Array:
        """∇_x log p_t(x) = −Σ_k r_k(x) C_k⁻¹ (x − m_k), r_k the posterior responsibilities."""
        logits, sol = self._component_terms(sde, x, t)
        resp = jax.nn.softmax(logits, axis=-1)
        return jnp.reshape(-jnp.einsum('bk,bkd->bd', resp, sol), x.shape)

    def score_fn(self, sde) -> Callable[[Array, Array], Array]:
        """The exact score function s(x, t) = ∇ log p_t(x) for use as ``score_fn``."""
        return lambda x, t: self.score(sde, x, t)


def ring_mixture(
    num_components: int = 8, radius: float = 4.0, std: float = 0.5, dim: int = 2
) -> GaussianMixture:
    """Equal-weight isotropic components on a circle in the first two coordinates."""
    angles = 2 * np.pi * np.arange(num_components) / num_components
    means = np.zeros((num_components, dim))
    means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
    covs = np.tile(std**2 * np.eye(dim), (num_components, 1, 1))
    return GaussianMixture(np.full(num_components, 1.0 / num_components), means, covs)


def random_mixture(seed: int, num_components: int, dim: int, scale: float = 1.0) -> GaussianMixture:
    """A mixture with random weights, means and full covariances (for tests)."""
    rs = np.random.RandomState(seed)
    weights = rs.dirichlet(np.full(num_components, 3.0))
    means = scale * rs.randn(num_components, dim)
    a = rs.randn(num_components, dim, dim) / np.sqrt(dim)
    covs = 0.3 * scale**2 * (np.einsum('kij,klj->kil', a, a) + 0.2 * np.eye(dim))
    return GaussianMixture(weights, means, covs)
