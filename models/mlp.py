"""A time-conditioned residual MLP for vector data ``[B, D]`` (toy 2-D densities),
registered ``mlp``.

    h₀ = Dense(nf)(x)
    r_k = Dense(nf)(act(h_k)) + Dense(nf)(act(temb))
    h_{k+1} = skip(h_k, Dense(nf, init_scale)(dropout(act(r_k))))
    out = Dense(D, init_scale)(act(h_K))

with ``num_res_blocks`` = K blocks of width ``nf`` and the same noise conditioning as
NCSN++ (``embedding_type`` fourier: labels are σ, log σ is embedded; positional:
labels are timesteps, e.g. 999·t), ``skip_rescale``, ``init_scale`` and
``scale_by_sigma``.  Vector data is used as given (``config.data.centered`` is ignored).
"""

from __future__ import annotations

from typing import ClassVar, Optional

import flax.linen as nn
import jax

from models import layerspp
from models.layers import Activation, Dropout, default_init, get_act, skip_sum
from models.utils import ModelConfig, get_sigmas, register_model

Array = jax.Array


class ResidualDenseBlock(nn.Module):
    """x + Dense(dropout(act(Dense(act(x)) + Dense(act(temb))))), last layer init_scale."""

    act: Activation
    dropout: float = 0.0
    skip_rescale: bool = True
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array], train: bool = False) -> Array:
        width = x.shape[-1]
        h = nn.Dense(width, kernel_init=default_init())(self.act(x))
        if temb is not None:
            h = h + nn.Dense(width, kernel_init=default_init())(self.act(temb))
        h = Dropout(self.dropout)(self.act(h), deterministic=not train)
        h = nn.Dense(width, kernel_init=default_init(self.init_scale))(h)
        return skip_sum(x, h, self.skip_rescale)


@register_model('mlp')
class MLP(nn.Module):
    """Residual MLP score network: ``apply(variables, x [B, D], labels [B])``."""

    config: ModelConfig

    vector_input: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
        cfg = self.config
        act = get_act(cfg.nonlinearity)
        temb, used_sigmas = layerspp.noise_conditioning(cfg, labels, act, get_sigmas(cfg))
        h = nn.Dense(cfg.nf, kernel_init=default_init())(x)
        for _ in range(cfg.num_res_blocks):
            h = ResidualDenseBlock(act, cfg.dropout, cfg.skip_rescale, cfg.init_scale)(
                h, temb, train
            )
        h = nn.Dense(x.shape[-1], kernel_init=default_init(cfg.init_scale))(act(h))
        if cfg.scale_by_sigma:
            h = layerspp.divide_by_sigma(h, used_sigmas)
        return h
