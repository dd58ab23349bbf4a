"""Layers of DDPM++ / NCSN++ (Score SDE §H): Fourier features, FIR resampling,
BigGAN residual blocks, progressive-growing combiners and the noise conditioning.

DDPM++ blocks differ from DDPM's only in GroupNorm(min(C/4, 32) groups),
``skip_rescale`` (residual sums divided by √2) and a configurable ``init_scale`` of
each block's last layer; they are the DDPM classes of ``layers.py`` with those options.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import layers
from models import up_or_down_sampling as uds
from models.layers import Activation, conv1x1, conv3x3, default_init, skip_sum
from models.normalization import group_norm_pp

Array = jax.Array

AttnBlockpp = functools.partial(layers.AttnBlock, normalize=group_norm_pp)
ResnetBlockDDPMpp = functools.partial(layers.ResnetBlockDDPM, normalize=group_norm_pp)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: [sin(2π W x), cos(2π W x)], W ~ N(0, s²).

    W is a parameter (so checkpoints carry it) behind a stop-gradient unless
    ``trainable``.
    """

    embedding_size: int = 256
    scale: float = 1.0
    trainable: bool = False
    # 2π W log σ reaches ~10²: its phase needs float32 under mixed precision as well.
    keeps_float32_inputs = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param('W', nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        w = w.astype(jnp.float32)
        if not self.trainable:
            w = jax.lax.stop_gradient(w)
        proj = x[:, None] * w[None, :] * (2 * np.pi)  # 2π weakly typed: in x's type
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Combine(nn.Module):
    """Merges an input-pyramid level ``x`` into features ``y``: conv1x1(x) then
    concatenation (``'cat'``) or sum (``'sum'``)."""

    method: str = 'cat'

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        h = conv1x1(x, y.shape[-1])
        if self.method == 'cat':
            return jnp.concatenate([h, y], axis=-1)
        return h + y


class _Resample(nn.Module):
    """Fields shared by :class:`Upsample` and :class:`Downsample`: output channels
    (default: the input's), a learned convolution or not, FIR filtering or not."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)


class Upsample(_Resample):
    """×2 upsampling: nearest (+ conv3x3) or FIR (+ fused FIR conv)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            h = uds.naive_upsample_2d(x, 2)
            return conv3x3(h, out_ch) if self.with_conv else h
        if not self.with_conv:
            return uds.upsample_2d(x, self.fir_kernel, factor=2)
        return uds.Conv2d(
            out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel, kernel_init=default_init()
        )(x)


class Downsample(_Resample):
    """×2 downsampling: average pool (or stride-2 conv3x3) or FIR (+ fused FIR conv)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            if self.with_conv:
                return conv3x3(x, out_ch, stride=2)
            return uds.naive_downsample_2d(x, 2)
        if not self.with_conv:
            return uds.downsample_2d(x, self.fir_kernel, factor=2)
        return uds.Conv2d(
            out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel, kernel_init=default_init()
        )(x)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN residual block with optional ×2 up/down-sampling of both branches.

    h = conv(dropout(act(GN(conv(resample(act(GN(x)))) + Dense(act(temb)))))),
    shortcut = conv1x1(resample(x)) when channels or resolution change;
    output (shortcut + h)/√2 with ``skip_rescale``.
    """

    act: Activation
    up: bool = False
    down: bool = False
    out_ch: Optional[int] = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    normalize: layers.NormFactory = group_norm_pp

    def _resample(self, x: Array) -> Array:
        if self.up:
            return uds.upsample_2d(x, self.fir_kernel) if self.fir else uds.naive_upsample_2d(x)
        if self.down:
            return uds.downsample_2d(x, self.fir_kernel) if self.fir else uds.naive_downsample_2d(x)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = self._resample(self.act(self.normalize(c)(x)))
        x = self._resample(x)
        h = layers.residual_branch(self, h, temb, train, out_ch)
        if c != out_ch or self.up or self.down:
            x = conv1x1(x, out_ch)
        return skip_sum(x, h, self.skip_rescale)


def noise_conditioning(
    cfg, labels: Array, act: Activation, sigmas: np.ndarray
) -> Tuple[Optional[Array], Array]:
    """Time / noise-level embedding shared by NCSN++ and the MLP.

    ``embedding_type='fourier'``: ``labels`` are noise scales σ (VE, continuous); the
    embedding is Fourier features of log σ and ``used_sigmas = labels``.
    ``'positional'``: ``labels`` are timesteps (999·t, or a discrete index); the
    embedding is sinusoidal and ``used_sigmas = sigmas[int(labels)]``.
    With ``cfg.conditional`` the embedding goes through Dense(4nf) → act → Dense(4nf);
    otherwise the returned embedding is None.  Returns (temb, used_sigmas [B]).
    """
    if cfg.embedding_type == 'fourier':
        used_sigmas = labels
        temb = GaussianFourierProjection(cfg.nf, cfg.fourier_scale, cfg.trainable_embedding)(
            jnp.log(labels)
        )
    else:
        used_sigmas = jnp.asarray(sigmas, jnp.float32)[labels.astype(jnp.int32)]
        temb = layers.get_timestep_embedding(labels, cfg.nf)
    if not cfg.conditional:
        return None, used_sigmas
    temb = nn.Dense(cfg.nf * 4, kernel_init=default_init())(temb)
    temb = nn.Dense(cfg.nf * 4, kernel_init=default_init())(act(temb))
    return temb, used_sigmas


def divide_by_sigma(h: Array, used_sigmas: Array) -> Array:
    """h / σ per example (``scale_by_sigma``: the net predicts σ·score)."""
    return h / jnp.reshape(used_sigmas, (-1,) + (1,) * (h.ndim - 1))
