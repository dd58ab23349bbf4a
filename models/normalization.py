"""Normalization layers of the score networks (NHWC).

A *norm factory* is a callable ``norm(num_channels) -> nn.Module``; blocks call it with
the channel count of the tensor they normalise, so one block class serves DDPM
(GroupNorm with 32 groups), DDPM++/NCSN++ (GroupNorm with min(C/4, 32) groups) and
NCSNv2 (InstanceNorm++).

- GroupNorm: ``(x − μ_g) / √(σ_g² + ε) · γ + β`` with statistics per example and group.
- InstanceNorm: the same per example and channel.
- InstanceNorm++ (NCSNv2): instance norm plus a correction that keeps the channel means,
  ``h + α_c · (μ_c − mean_c(μ)) / √(var_c(μ) + ε)``, then ``γ h + β``.
- VarianceNorm: ``x / √(σ_c² + ε) · γ`` (no centring).

Under bfloat16 mixed precision (``models.utils.get_model_fn``) the inputs are bfloat16;
every norm takes its statistics and forms its output in float32 (:func:`_float32`) and
returns the input's type. In bfloat16 (8 bits), E[x²] − μ² of a group whose mean is 8
times its standard deviation has lost all of its bits to cancellation.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
NormFactory = Callable[[int], nn.Module]

_EPS = 1e-5


def _float32(x: Array) -> Array:
    """``x`` in float32 (float64 stays float64): the type of every norm's statistics."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _normal_around_one(key: Array, shape, dtype=jnp.float32) -> Array:
    """N(1, 0.02²) initialisation of NCSNv2's γ and α."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class GroupNorm(nn.Module):
    """Group normalization of ``[B, ..., C]`` with per-channel ``scale`` γ and ``bias`` β
    (the parameters of ``flax.linen.GroupNorm``, same values up to float rounding).

    Statistics per example and group g of C/G channels over all positions:
    μ_g = E[x], σ_g² = E[x²] − μ_g²; y = (x − μ_g) γ / √(σ_g² + ε) + β = a·x + b with
    per-(example, channel) a, b.  The sums are taken over the positions per channel
    first (channels stay the minor axis), then over the channels of a group on the small
    [B, C] arrays, which makes forward and backward 3–4× faster than flax's on CPU.
    The sums, a, b and a·x + b are float32 for bfloat16 inputs (as flax's GroupNorm,
    whose one-pass variance is the same); the output has the input's type.
    """

    num_groups: int = 32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(
                f'GroupNorm: {c} channels are not divisible into {self.num_groups} groups.'
            )
        scale = self.param('scale', nn.initializers.ones, (c,))
        bias = self.param('bias', nn.initializers.zeros, (c,))
        spatial = tuple(range(1, x.ndim - 1))
        per_group = c // self.num_groups
        count = per_group * np.prod([x.shape[i] for i in spatial])

        def group_mean(per_channel_sum: Array) -> Array:
            sums = per_channel_sum.reshape(x.shape[0], self.num_groups, per_group).sum(-1)
            return jnp.repeat(sums / count, per_group, axis=-1)  # [B, C]

        xf = _float32(x)
        mean = group_mean(jnp.sum(xf, axis=spatial))
        var = jnp.maximum(group_mean(jnp.sum(xf * xf, axis=spatial)) - mean**2, 0.0)
        a = jax.lax.rsqrt(var + self.epsilon) * _float32(scale)
        b = _float32(bias) - mean * a
        expand = (slice(None),) + (None,) * len(spatial) + (slice(None),)
        return (xf * a[expand] + b[expand]).astype(x.dtype)


def group_norm_32(num_channels: int) -> nn.Module:
    """DDPM's GroupNorm: 32 groups (the channel count must be a multiple of 32)."""
    del num_channels
    return GroupNorm(num_groups=32)


def group_norm_pp(num_channels: int) -> nn.Module:
    """DDPM++/NCSN++ GroupNorm: min(C // 4, 32) groups (at least one)."""
    return GroupNorm(num_groups=max(1, min(num_channels // 4, 32)))


class _ChannelNorm(nn.Module):
    """Base of the per-channel (instance / variance) norms: statistics over H, W."""

    bias: bool = True

    def _affine(self, h: Array, dtype) -> Array:
        """γ h + β with γ ~ N(1, 0.02²) at init (NCSNv2's init) and β = 0, in ``dtype``."""
        c = h.shape[-1]
        h = h * _float32(self.param('scale', _normal_around_one, (c,)))
        if self.bias:
            h = h + _float32(self.param('bias', nn.initializers.zeros, (c,)))
        return h.astype(dtype)


class InstanceNorm2d(_ChannelNorm):
    """Instance normalization with an affine transform."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        xf = _float32(x)
        mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
        var = jnp.var(xf, axis=(1, 2), keepdims=True)
        return self._affine((xf - mean) * jax.lax.rsqrt(var + _EPS), x.dtype)


class VarianceNorm2d(_ChannelNorm):
    """Divides by the per-channel standard deviation (no centring), then scales."""

    bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        xf = _float32(x)
        var = jnp.var(xf, axis=(1, 2), keepdims=True)
        return self._affine(xf * jax.lax.rsqrt(var + _EPS), x.dtype)


def _instance_plus(x: Array) -> tuple:
    """InstanceNorm++'s two terms of a float32 ``x``: the instance-normalised x and the
    normalised channel means (μ_c − mean_c(μ)) / √(var_c(μ) + ε) ([B, 1, 1, C])."""
    means = jnp.mean(x, axis=(1, 2))  # [B, C]
    m = jnp.mean(means, axis=-1, keepdims=True)
    v = jnp.var(means, axis=-1, keepdims=True)
    means_plus = (means - m) * jax.lax.rsqrt(v + _EPS)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    h = (x - means[:, None, None, :]) * jax.lax.rsqrt(var + _EPS)
    return h, means_plus[:, None, None, :]


class InstanceNorm2dPlus(_ChannelNorm):
    """InstanceNorm++ of NCSNv2 (Song & Ermon, 2020): keeps the relative channel means."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, means_plus = _instance_plus(_float32(x))
        alpha = _float32(self.param('alpha', _normal_around_one, (x.shape[-1],)))
        return self._affine(h + means_plus * alpha, x.dtype)


class ConditionalInstanceNorm2dPlus(nn.Module):
    """Conditional InstanceNorm++ of NCSN (Song & Ermon, 2019): InstanceNorm++ whose
    γ, α, β are looked up per noise level y ∈ {0, …, num_classes − 1} (an embedding of
    3C values per level: γ, α ~ N(1, 0.02²) and β = 0 at init). Called as ``norm(x, y)``."""

    num_classes: int
    bias: bool = True

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        c = x.shape[-1]
        h, means_plus = _instance_plus(_float32(x))
        width = 3 if self.bias else 2

        def init(key, shape, dtype=jnp.float32):
            scales = _normal_around_one(key, (shape[0], 2 * c), dtype)
            return jnp.concatenate([scales, jnp.zeros((shape[0], (width - 2) * c), dtype)], -1)

        table = nn.Embed(self.num_classes, width * c, embedding_init=init)(y)[:, None, None, :]
        table = _float32(table)
        gamma, alpha = table[..., :c], table[..., c : 2 * c]
        h = gamma * (h + means_plus * alpha)
        return (h + table[..., 2 * c :] if self.bias else h).astype(x.dtype)


def conditional_normalization(name: str, num_classes: int) -> NormFactory:
    """The noise-conditional norm factory of NCSN (only 'InstanceNorm++' exists)."""
    if name.lower() != 'instancenorm++':
        raise ValueError(f'no conditional version of normalization {name!r}')
    return lambda c: ConditionalInstanceNorm2dPlus(num_classes)


NORMALIZATIONS = {
    'groupnorm': group_norm_32,
    'instancenorm': lambda c: InstanceNorm2d(),
    'instancenorm++': lambda c: InstanceNorm2dPlus(),
    'variancenorm': lambda c: VarianceNorm2d(),
}


def get_normalization(name: str) -> NormFactory:
    """The norm factory named by ``config.model.normalization`` (case-insensitive)."""
    return NORMALIZATIONS[name.lower()]
