"""How raw data (levels x̄ or vectors) become model input and back: the data scaler, the
maps between levels and [0, 1], dequantization, and :class:`DataSpec`."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from datasets.base import data_shape, is_continuous, num_bins


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
