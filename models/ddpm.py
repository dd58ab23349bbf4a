"""The DDPM U-Net (Ho et al., 2020) as the Score SDE code base builds it (``ddpm``), and
as Ho et al. built it (``ddpm_ho``).

Sinusoidal embedding of the label (a timestep) → Dense(4nf) → act → Dense(4nf);
conv3x3, then per resolution ``num_res_blocks`` residual blocks (attention after each
at ``attn_resolutions``) and a Downsample; middle block–attention–block; up path with
``num_res_blocks + 1`` blocks on [h, skip] and Upsample; GroupNorm(32) → act → conv3x3
(zero-initialised).  With ``scale_by_sigma`` the output is divided by σ_label
(NCSN-style training).

The two differ on the up path only. score_sde's ``models/ddpm.py`` (and its PyTorch port)
applies one attention block per resolution, after the level's last block (an indentation
slip there): 35,218,947 parameters on CIFAR-10 (nf 128, ch_mult (1,2,2,2), 2 blocks,
attention at 16). Its config files name that network ``ddpm`` and its released
checkpoints have that layout, so ``ddpm`` here is it. Ho et al.'s ``unet2d16b2`` applies
attention after each up-path block: ``ddpm_ho``, 35,746,307 parameters ("35.7M").
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers, layerspp
from models.layers import conv3x3, default_init, get_act
from models.ncsnpp import check_unet_config
from models.normalization import get_normalization
from models.utils import ModelConfig, get_sigmas, register_model

Array = jax.Array


@register_model('ddpm')
class DDPM(nn.Module):
    """DDPM score / noise-prediction network: ``apply(variables, x, labels [B])``."""

    config: ModelConfig

    check_config = staticmethod(check_unet_config)
    # score_sde: attention once per up-path resolution, after its last block; Ho et al.:
    # after each up-path block at attn_resolutions (DDPMHo).
    attention_after_each_up_block: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
        cfg = self.config
        act = get_act(cfg.nonlinearity)
        normalize = get_normalization(cfg.normalization)
        attn = functools.partial(layers.AttnBlock, normalize=normalize)
        resnet = functools.partial(
            layers.ResnetBlockDDPM, act=act, normalize=normalize, dropout=cfg.dropout
        )
        if cfg.conditional:
            temb = layers.get_timestep_embedding(labels, cfg.nf)
            temb = nn.Dense(cfg.nf * 4, kernel_init=default_init())(temb)
            temb = nn.Dense(cfg.nf * 4, kernel_init=default_init())(act(temb))
        else:
            temb = None
        h = x if cfg.centered else 2 * x - 1.0

        hs = [conv3x3(h, cfg.nf)]
        for i_level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                h = resnet(out_ch=cfg.nf * mult)(hs[-1], temb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if i_level != cfg.num_resolutions - 1:
                hs.append(layerspp.Downsample(with_conv=cfg.resamp_with_conv)(hs[-1]))

        h = resnet()(hs[-1], temb, train)
        h = attn()(h)
        h = resnet()(h, temb, train)

        for i_level in reversed(range(cfg.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                h = resnet(out_ch=cfg.nf * cfg.ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train
                )
                if self.attention_after_each_up_block and h.shape[1] in cfg.attn_resolutions:
                    h = attn()(h)
            if not self.attention_after_each_up_block and h.shape[1] in cfg.attn_resolutions:
                h = attn()(h)
            if i_level != 0:
                h = layerspp.Upsample(with_conv=cfg.resamp_with_conv)(h)
        assert not hs

        h = act(normalize(h.shape[-1])(h))
        h = conv3x3(h, x.shape[-1], init_scale=0.0)
        if cfg.scale_by_sigma:
            sigmas = jnp.asarray(get_sigmas(cfg))
            h = layerspp.divide_by_sigma(h, sigmas[labels.astype(jnp.int32)])
        return h


@register_model('ddpm_ho')
class DDPMHo(DDPM):
    """Ho et al.'s DDPM: attention after each up-path block (see the module doc)."""

    attention_after_each_up_block: ClassVar[bool] = True
