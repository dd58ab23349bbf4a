"""Layers shared by the score networks: DDPM U-Net blocks and NCSNv2 RefineNet blocks.

Conventions (as in the Score SDE code base):

- Images are NHWC.  ``default_init(s)`` is DDPM's initialiser,
  ``variance_scaling(s, 'fan_avg', 'uniform')``; a scale of 0 means 1e-10, so a layer
  built with ``init_scale=0`` starts (numerically) at zero.  The last layer of every
  residual and attention block uses it, so each block starts as its shortcut:
  ``x + F(x) ≈ x`` (or ``(x + F(x))/√2 ≈ x/√2`` with ``skip_rescale``).
- NCSNv2 convolutions use PyTorch's default initialiser,
  ``variance_scaling(1/3, 'fan_in', 'uniform')``.
- A norm factory (see ``normalization.py``) maps a channel count to a norm module.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.normalization import NormFactory

Array = jax.Array
Activation = Callable[[Array], Array]

ACTIVATIONS = {
    'elu': nn.elu,
    'relu': nn.relu,
    'lrelu': functools.partial(nn.leaky_relu, negative_slope=0.2),
    'swish': nn.swish,
}


def get_act(name: str) -> Activation:
    """The activation named by ``config.model.nonlinearity`` (case-insensitive)."""
    return ACTIVATIONS[name.lower()]


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """DDPM's initialiser: variance_scaling(scale, 'fan_avg', 'uniform'); 0 → 1e-10."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, 'fan_avg', 'uniform')


def ncsn_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """PyTorch's default conv initialiser, as NCSNv2: U(±√(scale/fan_in))."""
    return nn.initializers.variance_scaling(
        (1e-10 if scale == 0 else scale) / 3.0, 'fan_in', 'uniform'
    )


def conv3x3(
    x: Array,
    out_ch: int,
    stride: int = 1,
    bias: bool = True,
    dilation: int = 1,
    init_scale: float = 1.0,
) -> Array:
    """3×3 'SAME' convolution with DDPM's initialiser (stride 2 pads (0, 1) as TF)."""
    return nn.Conv(
        out_ch,
        (3, 3),
        strides=(stride, stride),
        padding='SAME',
        kernel_dilation=(dilation, dilation),
        use_bias=bias,
        kernel_init=default_init(init_scale),
    )(x)


def conv1x1(
    x: Array, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0
) -> Array:
    """1×1 convolution with DDPM's initialiser."""
    return nn.Conv(
        out_ch,
        (1, 1),
        strides=(stride, stride),
        padding='SAME',
        use_bias=bias,
        kernel_init=default_init(init_scale),
    )(x)


def ncsn_conv(
    x: Array, out_ch: int, kernel: int = 3, bias: bool = True, dilation: int = 1
) -> Array:
    """NCSNv2 'SAME' convolution (k×k, optionally dilated) with PyTorch's initialiser."""
    return nn.Conv(
        out_ch,
        (kernel, kernel),
        padding='SAME',
        kernel_dilation=(dilation, dilation),
        use_bias=bias,
        kernel_init=ncsn_init(),
    )(x)


def NIN(num_units: int, init_scale: float = 0.1) -> nn.Dense:  # noqa: N802 (paper name)
    """Network-in-network: a dense layer over the channel axis (a 1×1 convolution)."""
    return nn.Dense(num_units, kernel_init=default_init(init_scale))


def get_timestep_embedding(
    timesteps: Array, embedding_dim: int, max_positions: int = 10000
) -> Array:
    """Transformer sinusoidal embedding of a [B] vector: [sin(t ω_k), cos(t ω_k)], with
    ω_k = max_positions^(−k/(d/2 − 1)), k = 0 … d/2 − 1 (zero-padded when d is odd).

    The ω_k are float32 (as the original's); t ω_k is computed in t's type, at least
    float32 (float64 labels keep float64 phases, as in the original)."""
    half = embedding_dim // 2
    freqs = np.exp(-math.log(max_positions) / (half - 1) * np.arange(half, dtype=np.float32))
    arg = timesteps.astype(jnp.promote_types(timesteps.dtype, jnp.float32))[:, None] * freqs
    emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    return emb


def skip_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
    """Residual sum ``x + h``, divided by √2 with ``skip_rescale`` (variance-preserving)."""
    return (x + h) * np.float32(1 / np.sqrt(2.0)) if skip_rescale else x + h


def self_attention_2d(q: Array, k: Array, v: Array) -> Array:
    """Single-head attention over all H·W positions: softmax(q kᵀ/√C) v, NHWC in/out.

    Computed as (e v) / Σ_j e with e = exp(l − stop_gradient(max_j l)): the same value
    as the softmax form, but the normalisation acts on the [B, HW, C] output instead of
    the [B, HW, HW] weights, so the backward pass has no reduction over HW (on CPU,
    those reductions cost more than the attention matmuls).

    The logits l, e and Σ_j e are float32 whatever the inputs' type: under bfloat16
    mixed precision a logit of size 64 rounded to bfloat16 moves by up to 0.25, which
    changes its weight e by up to 28 %. Only the product e v takes e in the inputs'
    type (a relative error of 2⁻⁹ per weight), accumulated in float32; the output has
    the inputs' type.
    """
    b, h, w, c = q.shape
    q, k, v = (a.reshape(b, h * w, c) for a in (q, k, v))
    f32 = jnp.float32
    logits = jnp.einsum('bic,bjc->bij', q, k, preferred_element_type=f32) * np.float32(c**-0.5)
    e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    out = jnp.einsum('bij,bjc->bic', e.astype(v.dtype), v, preferred_element_type=f32)
    return (out / jnp.sum(e, axis=-1)[..., None]).astype(v.dtype).reshape(b, h, w, c)


def _fmix32(h: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_bits(rng: Array, shape: Tuple[int, ...]) -> Array:
    """uint32 random bits of ``shape``: a seeded hash of each element's linear index.

    Two seeds are drawn from ``rng`` (threefry); element i gets
    fmix32(fmix32(i·φ + s₀) ⊕ s₁).  Each element is a pure function of its index, so
    draws do not depend on how the array is sharded, and it costs ~10 integer ops per
    element instead of threefry's ~100 (dropout masks were 8 % of a CPU train step).
    """
    seeds = jax.random.bits(rng, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride = (stride * shape[axis]) % (1 << 32)
    return _fmix32(_fmix32(index * np.uint32(0x9E3779B9) + seeds[0]) ^ seeds[1])


class Dropout(nn.Module):
    """Inverted dropout (as ``flax.linen.Dropout``) with masks from :func:`hash_bits`:
    each element is zeroed with probability ``rate`` (to 2⁻³²), survivors scaled by
    1/(1 − rate).  Draws from the ``'dropout'`` RNG stream."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = np.uint32(min(round(self.rate * 2.0**32), 2**32 - 1))
        keep = hash_bits(self.make_rng('dropout'), x.shape) >= threshold
        return jnp.where(keep, x * np.float32(1.0 / (1.0 - self.rate)), 0.0)


class AttnBlock(nn.Module):
    """Self-attention block: x + NIN(attn(NIN_q(n(x)), NIN_k(n(x)), NIN_v(n(x))))."""

    normalize: NormFactory
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        h = self.normalize(c)(x)
        q, k, v = NIN(c)(h), NIN(c)(h), NIN(c)(h)
        h = NIN(c, init_scale=self.init_scale)(self_attention_2d(q, k, v))
        return skip_sum(x, h, self.skip_rescale)


def residual_branch(
    block: nn.Module, h: Array, temb: Optional[Array], train: bool, out_ch: int
) -> Array:
    """The shared tail of DDPM-style residual branches, after the first norm + act:
    conv3x3 → + Dense(act(temb)) → norm → act → dropout → conv3x3 (init_scale).

    ``block`` supplies ``act``, ``normalize``, ``dropout`` and ``init_scale``.
    """
    h = conv3x3(h, out_ch)
    if temb is not None:
        h = h + nn.Dense(out_ch, kernel_init=default_init())(block.act(temb))[:, None, None, :]
    h = block.act(block.normalize(out_ch)(h))
    h = Dropout(block.dropout)(h, deterministic=not train)
    return conv3x3(h, out_ch, init_scale=block.init_scale)


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block (DDPM++ with ``skip_rescale``; ``init_scale`` of the last conv).

    The shortcut is the identity when channels match, else a NIN (or a 3×3 conv with
    ``conv_shortcut``).
    """

    act: Activation
    normalize: NormFactory
    out_ch: Optional[int] = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = self.act(self.normalize(c)(x))
        h = residual_branch(self, h, temb, train, out_ch)
        if c != out_ch:
            x = conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
        return skip_sum(x, h, self.skip_rescale)


# ------------------------------------------------------------------------------------
# NCSNv2 (RefineNet) blocks.
# ------------------------------------------------------------------------------------
def apply_norm(normalize: NormFactory, x: Array, y: Optional[Array]) -> Array:
    """``normalize(C)(x)``, or ``(x, y)`` for a noise-conditional norm (NCSN v1: y given)."""
    module = normalize(x.shape[-1])
    return module(x) if y is None else module(x, y)


class ConvMeanPool(nn.Module):
    """k×k convolution followed by 2×2 average pooling."""

    out_ch: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = ncsn_conv(x, self.out_ch, kernel=self.kernel)
        b, hh, ww, c = h.shape
        return h.reshape(b, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))


class ResidualBlock(nn.Module):
    """NCSNv2 residual block: norm → act → conv → norm → act → conv, plus a shortcut.

    ``resample='down'`` halves the resolution by mean pooling, except with
    ``dilation > 1`` where (as in the original NCSNv2 code) it keeps the resolution and
    only changes the channels. Called with noise levels ``y`` its norms are
    noise-conditional (NCSN v1's ConditionalResidualBlock).
    """

    out_ch: int
    normalize: NormFactory
    act: Activation = nn.elu
    resample: Optional[str] = None
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
        c = x.shape[-1]
        d = self.dilation
        pooled = self.resample == 'down' and d == 1
        mid = c if self.resample == 'down' else self.out_ch
        h = ncsn_conv(self.act(apply_norm(self.normalize, x, y)), mid, dilation=d)
        h = self.act(apply_norm(self.normalize, h, y))
        if pooled:
            h = ConvMeanPool(self.out_ch)(h)
            shortcut = ConvMeanPool(self.out_ch, kernel=1)(x)
        else:
            h = ncsn_conv(h, self.out_ch, dilation=d)
            if c == self.out_ch and self.resample is None:
                shortcut = x
            else:
                shortcut = ncsn_conv(x, self.out_ch, kernel=3 if d > 1 else 1, dilation=d)
        return h + shortcut


class RCUBlock(nn.Module):
    """Residual conv unit: ``n_blocks`` × (x + ([norm →] act → conv3x3)^n_stages (x)), no
    biases; the norm (noise-conditional, NCSN v1) only with ``normalize``."""

    features: int
    n_blocks: int
    n_stages: int
    act: Activation = nn.relu
    normalize: Optional[NormFactory] = None

    @nn.compact
    def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
        for _ in range(self.n_blocks):
            residual = x
            for _ in range(self.n_stages):
                if self.normalize is not None:
                    x = apply_norm(self.normalize, x, y)
                x = ncsn_conv(self.act(x), self.features, bias=False)
            x = x + residual
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling: x ← act(x); path ← conv(maxpool₅ₓ₅(path)); x += path.
    With ``normalize`` (NCSN v1): path ← conv(avgpool₅ₓ₅(norm(path, y)))."""

    features: int
    n_stages: int
    act: Activation = nn.relu
    normalize: Optional[NormFactory] = None

    @nn.compact
    def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
        x = self.act(x)
        path = x
        for _ in range(self.n_stages):
            if self.normalize is None:
                path = nn.max_pool(path, (5, 5), strides=(1, 1), padding='SAME')
            else:
                path = apply_norm(self.normalize, path, y)
                path = nn.avg_pool(path, (5, 5), strides=(1, 1), padding='SAME')
            path = ncsn_conv(path, self.features, bias=False)
            x = path + x
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: Σ_i resize(conv3x3([norm] x_i), shape)."""

    shape: Tuple[int, int]
    features: int
    interpolation: str = 'bilinear'
    normalize: Optional[NormFactory] = None

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Optional[Array] = None) -> Array:
        method = {'bilinear': 'bilinear', 'nearest_neighbor': 'nearest'}[self.interpolation]
        total = 0.0
        for x in xs:
            if self.normalize is not None:
                x = apply_norm(self.normalize, x, y)
            h = ncsn_conv(x, self.features)
            if h.shape[1:3] != tuple(self.shape):
                h = jax.image.resize(h, (h.shape[0], *self.shape, h.shape[-1]), method)
            total = total + h
        return total


class RefineBlock(nn.Module):
    """RefineNet block: RCU per input → multi-resolution fusion → CRP → output RCU; with
    ``normalize`` and noise levels ``y`` the noise-conditional one of NCSN v1
    (CondRefineBlock: norms inside every sub-block, average pooling in the CRP)."""

    output_shape: Tuple[int, int]
    features: int
    act: Activation = nn.relu
    interpolation: str = 'bilinear'
    start: bool = False
    end: bool = False
    normalize: Optional[NormFactory] = None

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Optional[Array] = None) -> Array:
        kw = {'act': self.act, 'normalize': self.normalize}
        hs = [RCUBlock(x.shape[-1], n_blocks=2, n_stages=2, **kw)(x, y) for x in xs]
        if self.start:
            h = hs[0]
        else:
            h = MSFBlock(self.output_shape, self.features, self.interpolation, self.normalize)(
                hs, y
            )
        h = CRPBlock(self.features, n_stages=2, **kw)(h, y)
        return RCUBlock(self.features, n_blocks=3 if self.end else 1, n_stages=2, **kw)(h, y)
