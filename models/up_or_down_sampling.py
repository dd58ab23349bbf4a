"""FIR up/down-sampling of NHWC images in plain JAX (StyleGAN2's ``upfirdn_2d``).

NCSN++ resamples with a finite-impulse-response (FIR) filter ``k`` instead of
nearest-neighbour / average pooling.  Every operation here is one
``upfirdn_2d(x, k, up, down, pad)``:

1. upsample by inserting ``up − 1`` zeros after every sample (rows and columns),
2. pad with ``pad = (p₀, p₁)`` zeros (crop where negative),
3. convolve every channel with the 2-D kernel ``k`` (a true convolution: k is flipped),
4. keep every ``down``-th sample.

With a 1-D kernel ``k`` the 2-D kernel is ``outer(k, k) / sum(outer(k, k))``; upsampling
multiplies it by ``factor²`` so that a constant image stays constant.  The fused
``upsample_conv_2d`` / ``conv_downsample_2d`` equal "upsample then 3×3 conv" /
"3×3 conv then downsample" at the cost of one convolution (tested).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
    """The normalised 2-D FIR kernel: ``outer(k, k)`` for 1-D ``k``, divided by its sum."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f'FIR kernel must be 1-D or square 2-D, got shape {k.shape}.')
    return k / np.sum(k)


def upfirdn_2d(
    x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad: Tuple[int, int] = (0, 0)
) -> Array:
    """Upsample by ``up``, pad by ``pad``, convolve each channel with ``k``, keep every
    ``down``-th sample.  ``x`` is NHWC; ``k`` a square 2-D array used as given.

    Zero insertion and padding are one ``lax.pad`` (interior padding), the filter a
    depthwise VALID convolution with stride ``down``.
    """
    kh = k.shape[0]
    c = x.shape[-1]
    p0, p1 = pad
    spatial = (p0, p1 + up - 1, up - 1)
    x = lax.pad(x, jnp.array(0, x.dtype), [(0, 0, 0), spatial, spatial, (0, 0, 0)])
    w = np.broadcast_to(k[::-1, ::-1, None, None], (kh, kh, 1, c))
    return lax.conv_general_dilated(
        x,
        jnp.asarray(w, x.dtype),
        window_strides=(down, down),
        padding='VALID',
        dimension_numbers=_NHWC,
        feature_group_count=c,
    )


def upsample_2d(
    x: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1.0
) -> Array:
    """FIR upsampling: [B, H, W, C] → [B, H·factor, W·factor, C]."""
    kernel = setup_kernel(k if k is not None else [1] * factor) * (gain * factor**2)
    p = kernel.shape[0] - factor
    return upfirdn_2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(
    x: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1.0
) -> Array:
    """FIR downsampling: [B, H, W, C] → [B, H/factor, W/factor, C]."""
    kernel = setup_kernel(k if k is not None else [1] * factor) * gain
    p = kernel.shape[0] - factor
    return upfirdn_2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(
    x: Array, w: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1.0
) -> Array:
    """Fused ``conv2d(upsample_2d(x, k), w)``: a stride-``factor`` transposed convolution
    followed by the FIR filter.  ``w`` is HWIO [kh, kw, C_in, C_out], kh = kw odd."""
    conv_k = w.shape[0]
    kernel = setup_kernel(k if k is not None else [1] * factor) * (gain * factor**2)
    p = (kernel.shape[0] - factor) - (conv_k - 1)
    # Transposed convolution: zero insertion (lhs dilation) + full padding.
    x = lax.conv_general_dilated(
        x,
        w,
        window_strides=(1, 1),
        padding=[(conv_k - 1, conv_k - 1)] * 2,
        lhs_dilation=(factor, factor),
        dimension_numbers=_NHWC,
    )
    return upfirdn_2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(
    x: Array, w: Array, k: Sequence[float] | None = None, factor: int = 2, gain: float = 1.0
) -> Array:
    """Fused ``downsample_2d(conv2d(x, w), k)``: the FIR filter, then a stride-``factor``
    VALID convolution with ``w`` (HWIO)."""
    conv_k = w.shape[0]
    kernel = setup_kernel(k if k is not None else [1] * factor) * gain
    p = (kernel.shape[0] - factor) + (conv_k - 1)
    x = upfirdn_2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return lax.conv_general_dilated(
        x, w, window_strides=(factor, factor), padding='VALID', dimension_numbers=_NHWC
    )


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling: each pixel repeated ``factor × factor`` times.

    Written as concatenations of ``factor`` copies (no broadcast, no gather), so that
    both modes of differentiation are plain and fast on XLA:CPU: forward mode (the jvp
    the likelihood's divergence uses) is the same concatenation, and reverse mode
    transposes each concatenation into ``factor`` slices summed, the window sum of the
    incoming gradient as one loop fusion (the transpose of a broadcast is a reduction,
    ~20× slower on CPU inside a train step).
    """
    b, h, w, c = x.shape
    x = jnp.concatenate([x[:, :, None]] * factor, axis=2).reshape(b, h * factor, w, c)
    x = jnp.concatenate([x[:, :, :, None]] * factor, axis=3)
    return x.reshape(b, h * factor, w * factor, c)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Average pooling over non-overlapping ``factor × factor`` windows."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class Conv2d(nn.Module):
    """A k×k convolution, optionally fused with FIR up- or downsampling (factor 2).

    Parameters ``weight`` [k, k, C_in, C_out] (HWIO) and ``bias`` [C_out].
    """

    fmaps: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_kernel: Tuple[float, ...] = (1, 3, 3, 1)
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.up and self.down:
            raise ValueError('Conv2d cannot both upsample and downsample.')
        if self.kernel < 1 or self.kernel % 2 != 1:
            raise ValueError(f'Conv2d kernel size must be odd, got {self.kernel}.')
        w = self.param(
            'weight', self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps)
        )
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=_NHWC)
        if self.use_bias:
            x = x + self.param('bias', nn.initializers.zeros, (self.fmaps,))
        return x
