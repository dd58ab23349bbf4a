"""Noise-conditional classifiers p_t(y | x(t)) for class-conditional (guided) sampling.

Score SDE (Song et al. ICLR 2021, §5 and Appendix I) samples from p_0(x | y) by adding
the gradient of a time-dependent classifier to the unconditional score,

    ∇_x log p_t(x | y) = ∇_x log p_t(x) + ∇_x log p_t(y | x),

where the classifier is trained on perturbed data x(t) ~ p_0t(x(t) | x(0)) and is told
the noise level.  As in the original (``models/wideresnet_noise_conditional.py`` of
score_sde), the conditioning input is **σ = σ(t), the marginal standard deviation of
p_0t(x(t) | x(0))** (for the VE SDE the noise scale itself), passed as a [B] vector;
the network embeds **log σ**:

    ``classifier.apply(variables, x, sigmas, train=False) -> logits [B, num_outputs]``.

Two networks, registered in :mod:`models.utils` (``get_classifier``):

- ``wideresnet_noise_conditional`` — :class:`WideResnetNoiseConditional`, the original's
  Wide ResNet for images ``[B, H, W, C]`` (WRN-28-10 for CIFAR-10 with
  ``blocks_per_group=4, channel_multiplier=10``), with the same module and parameter
  names, so the original's checkpoints map onto it leaf for leaf.
- ``mlp`` — :class:`ClassifierMLP` for vector data ``[B, D]`` (toy densities).  It lives
  in this file because it shares the log-σ embedding below.

Embedding of the noise level (both networks): ``embedding_type='fourier'`` (the
original) gives Gaussian Fourier features [sin 2πW log σ, cos 2πW log σ] of
``embedding_size = 128`` frequencies W ~ N(0, ``fourier_scale``²) (16 in the original;
W is a parameter named ``W`` behind a stop-gradient, so it is stored but never
trained); ``'positional'`` gives the transformer sinusoidal embedding of log σ, of the
same width 2·128, and no ``W`` parameter.  Either goes through Dense → swish → Dense.

The original normalises with GroupNorm although its layers are named ``*_bn``; there is
no batch statistic, so ``variables == {'params': ...}`` and ``train`` changes nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import layers, layerspp
from models.utils import register_classifier

Array = jax.Array

# Number of Fourier frequencies of log σ (the features are twice as wide: sin and cos).
EMBEDDING_SIZE = 128

# Kaiming normal, fan-out mode, gain 2: the original's initialiser of conv kernels.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def dense_layer_init(key: Array, shape: Tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """The original's initialiser of the logit layer: U[−s, s] with s = 1/√num_outputs
    (``shape[1]``), as in the AutoAugment WRN."""
    scale = 1.0 / np.sqrt(shape[1])
    return jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0) * scale


def activation(x: Array, apply_relu: bool = True, name: str = '') -> Array:
    """GroupNorm (min(C // 4, 32) groups, ε = 1e-5) then ReLU; the original's "bn"."""
    x = nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
    return jax.nn.relu(x) if apply_relu else x


def _output_add(block_x: Array, orig_x: Array) -> Array:
    """Residual sum; when the channel count changes, the shortcut is average-pooled by the
    block's stride and zero-padded in channels (identity + zero-padding skip)."""
    stride = orig_x.shape[-2] // block_x.shape[-2]
    if block_x.shape[-1] != orig_x.shape[-1]:
        orig_x = nn.avg_pool(orig_x, (stride, stride), (stride, stride))
        extra = block_x.shape[-1] - orig_x.shape[-1]
        orig_x = jnp.pad(orig_x, [(0, 0), (0, 0), (0, 0), (0, extra)])
    return block_x + orig_x


def noise_embedding(sigmas: Array, embedding_type: str, fourier_scale: float, width: int) -> Array:
    """temb = Dense(width)(swish(Dense(width)(features(log σ)))), features of width 256.

    Called inside a compact ``__call__``: the layers are the caller's
    ``GaussianFourierProjection_0`` (fourier only), ``Dense_0`` and ``Dense_1``.
    """
    log_sigma = jnp.log(sigmas)
    if embedding_type == 'fourier':
        features = layerspp.GaussianFourierProjection(EMBEDDING_SIZE, fourier_scale)(log_sigma)
    elif embedding_type == 'positional':
        features = layers.get_timestep_embedding(log_sigma, 2 * EMBEDDING_SIZE)
    else:
        raise ValueError(f'embedding_type={embedding_type!r}; use fourier or positional.')
    temb = nn.Dense(width)(features)
    return nn.Dense(width)(nn.swish(temb))


def _batch_sigmas(sigmas: Array, batch: int) -> Array:
    """σ as a float32 [B] vector (a scalar is broadcast over the batch)."""
    return jnp.broadcast_to(jnp.asarray(sigmas, jnp.float32).reshape(-1), (batch,))


class WideResnetBlock(nn.Module):
    """Pre-activation WRN block; the noise embedding is added after ``conv1``:

    h = conv1(act(x)) + Dense(C)(swish(temb)),  out = shortcut(x) + conv2(act(h)).
    """

    channels: int
    strides: Tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        if self.activate_before_residual:
            x = activation(x, name='init_bn')
            block_x = x
        else:
            block_x = activation(x, name='init_bn')
        orig_x = x
        block_x = nn.Conv(
            self.channels,
            (3, 3),
            self.strides,
            padding='SAME',
            use_bias=False,
            kernel_init=conv_kernel_init,
            name='conv1',
        )(block_x)
        if temb is not None:
            block_x = block_x + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
        block_x = activation(block_x, name='bn_2')
        block_x = nn.Conv(
            self.channels,
            (3, 3),
            padding='SAME',
            use_bias=False,
            kernel_init=conv_kernel_init,
            name='conv2',
        )(block_x)
        return _output_add(block_x, orig_x)


class WideResnetGroup(nn.Module):
    """``blocks_per_group`` blocks of ``channels`` channels; the first one strides."""

    blocks_per_group: int
    channels: int
    strides: Tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        for i in range(self.blocks_per_group):
            x = WideResnetBlock(
                self.channels,
                self.strides if i == 0 else (1, 1),
                activate_before_residual=self.activate_before_residual and i == 0,
            )(x, temb, train)
        return x


@register_classifier('wideresnet_noise_conditional')
class WideResnetNoiseConditional(nn.Module):
    """The noise-conditional Wide ResNet of Score SDE (the original's ``WideResnet``).

    x is standardised per image, (x − mean) / max(std, 1/√N) over its N = H·W·C values
    (so logits are invariant to x → a·x + b, a > 0); log σ is embedded (module
    docstring) into temb of width 512; then conv3x3(16), three groups of
    ``blocks_per_group`` blocks with 16k, 32k, 64k channels (k = ``channel_multiplier``)
    and strides 1, 2, 2, GroupNorm + ReLU, global average pooling and
    Dense(``num_outputs``) with U[−1/√n, 1/√n] kernels.

    ``apply(variables, x [B, H, W, C], sigmas [B], train=False) -> logits [B, num_outputs]``
    with σ the marginal std of p_0t(x(t) | x(0)).
    """

    blocks_per_group: int
    channel_multiplier: int
    num_outputs: int
    embedding_type: str = 'fourier'
    fourier_scale: float = 16.0

    input_rank: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, sigmas: Array, train: bool = False) -> Array:
        n = int(np.prod(x.shape[1:]))
        mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) / jnp.maximum(std, np.float32(1.0 / np.sqrt(n)))
        sigmas = _batch_sigmas(sigmas, x.shape[0])
        temb = noise_embedding(sigmas, self.embedding_type, self.fourier_scale, 4 * EMBEDDING_SIZE)

        x = nn.Conv(
            16,
            (3, 3),
            padding='SAME',
            use_bias=False,
            kernel_init=conv_kernel_init,
            name='init_conv',
        )(x)
        k = self.channel_multiplier
        x = WideResnetGroup(self.blocks_per_group, 16 * k, activate_before_residual=True)(
            x, temb, train
        )
        x = WideResnetGroup(self.blocks_per_group, 32 * k, (2, 2))(x, temb, train)
        x = WideResnetGroup(self.blocks_per_group, 64 * k, (2, 2))(x, temb, train)
        x = activation(x, name='pre-pool-bn')
        x = jnp.mean(x, axis=(1, 2))  # average pool over the whole feature map
        return nn.Dense(self.num_outputs, kernel_init=dense_layer_init)(x)


@register_classifier('mlp')
class ClassifierMLP(nn.Module):
    """Noise-conditional MLP classifier for vector data:

        temb = embedding of log σ (module docstring), width ``nf``
        h₀ = x,  h_{k+1} = swish(Dense(nf)(h_k) + Dense(nf)(swish(temb))),  k < num_layers
        logits = Dense(num_outputs)(h_K)   (U[−1/√n, 1/√n] kernel, as the WRN)

    ``apply(variables, x [B, D], sigmas [B], train=False) -> logits [B, num_outputs]``.
    The input is used as given (no standardisation: for low-dimensional data it would
    discard information).
    """

    nf: int
    num_layers: int
    num_outputs: int
    embedding_type: str = 'fourier'
    fourier_scale: float = 16.0

    input_rank: ClassVar[int] = 2

    @nn.compact
    def __call__(self, x: Array, sigmas: Array, train: bool = False) -> Array:
        sigmas = _batch_sigmas(sigmas, x.shape[0])
        temb = noise_embedding(sigmas, self.embedding_type, self.fourier_scale, self.nf)
        h = x
        for _ in range(self.num_layers):
            h = nn.swish(nn.Dense(self.nf)(h) + nn.Dense(self.nf)(nn.swish(temb)))
        return nn.Dense(self.num_outputs, kernel_init=dense_layer_init)(h)
