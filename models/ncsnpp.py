"""NCSN++ and DDPM++ (Score SDE, Song et al. ICLR 2021, §4.4 and Appendix H).

One U-Net family, registered as ``ncsnpp``; a config picks the variant:

- DDPM++: ``resblock_type='biggan'``, no FIR, ``progressive='none'``, positional
  embedding of 999·t (VP / sub-VP).  ``num_res_blocks=8`` is the "deep" variant.
- NCSN++: FIR resampling, ``progressive='output_skip'``, ``progressive_input=
  'input_skip'``, Fourier features of log σ, ``scale_by_sigma`` (VE).

Down path: conv3x3, then per resolution ``num_res_blocks`` residual blocks (attention
after each at ``attn_resolutions``) and a down-sampling step (a Downsample layer for
``resblock_type='ddpm'``, a down-sampling BigGAN block for ``'biggan'``).  With
``progressive_input`` the (FIR-)downsampled input image is merged at each resolution
(``input_skip``: conv1x1 + sum/cat; ``residual``: a strided conv, (h + pyramid)/√2).
Middle: block, attention, block.  Up path: ``num_res_blocks + 1`` blocks per resolution
on [h, skip] concatenations, attention, then with ``progressive`` an output pyramid
(``output_skip``: sum of upsampled conv3x3(act(GN(h))) images; ``residual``: as the
input pyramid) and up-sampling.  The output is conv3x3(act(GN(h))) (or the pyramid),
divided by σ with ``scale_by_sigma``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import UserError
from models import layerspp
from models.layers import conv3x3, get_act, skip_sum
from models.normalization import group_norm_pp
from models.utils import ModelConfig, get_sigmas, register_model

Array = jax.Array


def check_unet_config(cfg: ModelConfig) -> None:
    """Image size must halve cleanly ``len(ch_mult) − 1`` times."""
    factor = 2 ** (cfg.num_resolutions - 1)
    if cfg.image_size % factor:
        raise UserError(
            f'config.data.image_size={cfg.image_size} is not divisible by '
            f'2^(len(config.model.ch_mult) − 1) = {factor}; change one of them.'
        )


@register_model('ncsnpp')
class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network: ``apply(variables, x [B,H,W,C], labels [B])``."""

    config: ModelConfig

    @staticmethod
    def check_config(cfg: ModelConfig) -> None:
        check_unet_config(cfg)
        if cfg.embedding_type == 'fourier' and not cfg.continuous:
            raise UserError(
                "config.model.embedding_type='fourier' embeds a continuous "
                'noise scale; with config.training.continuous=False use '
                "'positional'."
            )

    def _blocks(self, act):
        """Partially applied block constructors for this config."""
        cfg = self.config
        attn = functools.partial(
            layerspp.AttnBlockpp, init_scale=cfg.init_scale, skip_rescale=cfg.skip_rescale
        )
        if cfg.resblock_type == 'ddpm':
            resnet = functools.partial(
                layerspp.ResnetBlockDDPMpp,
                act=act,
                dropout=cfg.dropout,
                init_scale=cfg.init_scale,
                skip_rescale=cfg.skip_rescale,
            )
        else:
            resnet = functools.partial(
                layerspp.ResnetBlockBigGANpp,
                act=act,
                dropout=cfg.dropout,
                fir=cfg.fir,
                fir_kernel=cfg.fir_kernel,
                init_scale=cfg.init_scale,
                skip_rescale=cfg.skip_rescale,
            )
        return attn, resnet

    def _resample(self, kind, with_conv):
        cfg = self.config
        return functools.partial(kind, with_conv=with_conv, fir=cfg.fir, fir_kernel=cfg.fir_kernel)

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
        cfg = self.config
        act = get_act(cfg.nonlinearity)
        temb, used_sigmas = layerspp.noise_conditioning(cfg, labels, act, get_sigmas(cfg))
        attn, resnet = self._blocks(act)
        if not cfg.centered:
            x = 2 * x - 1.0

        # ---- down path ----
        pyramid_down = self._resample(layerspp.Downsample, cfg.progressive_input == 'residual')
        input_pyramid = x if cfg.progressive_input != 'none' else None
        hs = [conv3x3(x, cfg.nf)]
        for i_level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                h = resnet(out_ch=cfg.nf * mult)(hs[-1], temb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if i_level == cfg.num_resolutions - 1:
                continue
            if cfg.resblock_type == 'ddpm':
                h = self._resample(layerspp.Downsample, cfg.resamp_with_conv)()(hs[-1])
            else:
                h = resnet(down=True)(hs[-1], temb, train)
            if cfg.progressive_input == 'input_skip':
                input_pyramid = pyramid_down()(input_pyramid)
                h = layerspp.Combine(method=cfg.progressive_combine)(input_pyramid, h)
            elif cfg.progressive_input == 'residual':
                input_pyramid = pyramid_down(out_ch=h.shape[-1])(input_pyramid)
                h = input_pyramid = skip_sum(input_pyramid, h, cfg.skip_rescale)
            hs.append(h)

        # ---- middle ----
        h = resnet()(hs[-1], temb, train)
        h = attn()(h)
        h = resnet()(h, temb, train)

        # ---- up path ----
        pyramid = None
        pyramid_up = self._resample(layerspp.Upsample, cfg.progressive == 'residual')
        for i_level in reversed(range(cfg.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                h = resnet(out_ch=cfg.nf * cfg.ch_mult[i_level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train
                )
            if h.shape[1] in cfg.attn_resolutions:
                h = attn()(h)
            if cfg.progressive != 'none':
                h, pyramid = self._output_pyramid(h, pyramid, pyramid_up, act, x.shape[-1])
            if i_level != 0:
                if cfg.resblock_type == 'ddpm':
                    h = self._resample(layerspp.Upsample, cfg.resamp_with_conv)()(h)
                else:
                    h = resnet(up=True)(h, temb, train)
        assert not hs

        if cfg.progressive == 'output_skip':
            h = pyramid
        else:
            h = act(group_norm_pp(h.shape[-1])(h))
            h = conv3x3(h, x.shape[-1], init_scale=cfg.init_scale)
        if cfg.scale_by_sigma:
            h = layerspp.divide_by_sigma(h, used_sigmas)
        return h

    def _output_pyramid(self, h, pyramid, pyramid_up, act, out_channels):
        """One level of the progressive output: returns the new (h, pyramid)."""
        cfg = self.config
        if cfg.progressive == 'output_skip':
            level = conv3x3(
                act(group_norm_pp(h.shape[-1])(h)), out_channels, init_scale=cfg.init_scale
            )
            pyramid = level if pyramid is None else pyramid_up()(pyramid) + level
            return h, pyramid
        # 'residual'
        if pyramid is None:
            pyramid = conv3x3(act(group_norm_pp(h.shape[-1])(h)), h.shape[-1])
        else:
            pyramid = pyramid_up(out_ch=h.shape[-1])(pyramid)
            pyramid = h = skip_sum(pyramid, h, cfg.skip_rescale)
        return h, pyramid
