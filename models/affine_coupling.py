"""A small affine-coupling dequantizer q(u | x̄) (``config.deq.name='affine_coupling'``),
the project's first variational dequantizer, kept as a light alternative to Flow++
(``models/flowpp.py``).

ε ~ N(0, I) on the image grid is transformed by ``num_layers`` affine coupling layers
with alternating checkerboard masks, h ← m⊙h + (1−m)⊙(h·e^{s} + t), where
(s, t) = NN([m⊙h, c(x̄)]) is a small conv net conditioned on features c of x̄/(K−1); then
u = sigmoid(h) ∈ (0, 1)ᴰ. By the change of variables

    log q(u | x̄) = log N(ε; 0, I) − Σ_layers Σ (1−m)⊙s − Σ_i [log σ(h_i) + log σ(−h_i)].
"""

from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.flowpp import log_standard_normal, per_example_sum
from models.utils import register_dequantizer

Array = jax.Array


def checkerboard(height: int, width: int, parity: int) -> np.ndarray:
    """[H, W, 1] mask with ones where (i + j) % 2 == parity."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
    return ((i + j) % 2 == parity).astype(np.float32)[..., None]


class _ConvNet(nn.Module):
    """3×3 conv → swish → 3×3 conv → swish → zero-initialised 3×3 conv (``features``)."""

    hidden: int
    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.swish(nn.Conv(self.hidden, (3, 3))(x))
        x = nn.swish(nn.Conv(self.hidden, (3, 3))(x))
        return nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(x)


@register_dequantizer('affine_coupling')
class AffineCouplingDequantizer(nn.Module):
    """q(u | x̄): ``apply(variables, eps, x_cond) -> (u, log q)``; with ``inverse=True``,
    ``apply(variables, u, x_cond, inverse=True) -> (eps, log q)``.

    eps: [B, H, W, C] standard normal; x_cond: [B, H, W, C] the data x̄/(K−1) in [0, 1].
    At initialisation every coupling is the identity (zero-initialised output layers),
    so u = sigmoid(ε) — the logistic-normal, not the uniform. ``train`` changes nothing.
    """

    num_layers: int = 4
    hidden: int = 32

    @nn.compact
    def __call__(
        self, h: Array, x_cond: Array, inverse: bool = False, train: bool = False
    ) -> Tuple[Array, Array]:
        del train
        _, height, width, channels = h.shape
        cond = nn.swish(nn.Conv(self.hidden, (3, 3))(2.0 * x_cond - 1.0))
        nets = [_ConvNet(self.hidden, 2 * channels) for _ in range(self.num_layers)]
        if inverse:  # h = u: through σ⁻¹, then the couplings backwards
            log_sigmoid_jac = per_example_sum(jnp.log(h) + jnp.log1p(-h))
            h = jnp.log(h) - jnp.log1p(-h)
        else:
            eps = h
        logdet = jnp.zeros(h.shape[0])
        for layer in reversed(range(self.num_layers)) if inverse else range(self.num_layers):
            mask = checkerboard(height, width, layer % 2)
            st = nets[layer](jnp.concatenate([h * mask, cond], -1))
            log_s = jnp.tanh(st[..., :channels])  # bounded scales keep training stable
            shift = st[..., channels:]
            if inverse:
                h = h * mask + (1.0 - mask) * (h - shift) * jnp.exp(-log_s)
            else:
                h = h * mask + (1.0 - mask) * (h * jnp.exp(log_s) + shift)
            logdet = logdet + per_example_sum(log_s * (1.0 - mask))
        if inverse:
            return h, log_standard_normal(h) - logdet - log_sigmoid_jac
        log_sigmoid_jac = per_example_sum(jax.nn.log_sigmoid(h) + jax.nn.log_sigmoid(-h))
        return jax.nn.sigmoid(h), log_standard_normal(eps) - logdet - log_sigmoid_jac
