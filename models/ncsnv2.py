"""NCSNv2 (Song & Ermon, NeurIPS 2020) and NCSN (v1, NeurIPS 2019) as in the Score SDE
code base.

A RefineNet: a ResNet encoder of levels (two residual blocks each; the first block of
levels ≥ 2 "downsamples", which with dilation > 1 keeps the resolution, as in the
original) and RefineBlocks that fuse the levels from the deepest up; then norm → act →
conv3x3.  The network is not conditioned on the noise level; with ``scale_by_sigma``
(NCSNv2's design) the output is divided by σ: ``sigmas[labels]`` for integer labels
(discrete training), or the labels themselves when they are float σ's (continuous VE).

Registered variants (``config.model.name``), as (channel multiple, dilation) per level
and the RefineBlock widths from the deepest level up:

- ``ncsnv2_64``  (CIFAR-10, CelebA 64): (1,1) (2,1) (2,2) (2,4); refine 2,2,2,1
- ``ncsnv2_128`` (LSUN 96–128):         (1,1) (2,1) (2,1) (4,2) (4,4); refine 4,2,2,1,1
- ``ncsnv2_256`` (LSUN 256):            (1,1) (2,1) (2,1) (2,1) (4,2) (4,4); refine 4,2,2,2,1,1
- ``ncsn`` (NCSN v1; CIFAR-10, CelebA):  as ``ncsnv2_64``, but noise-conditional: every
  norm is a conditional InstanceNorm++ indexed by the noise level i (labels, integers
  0 … num_scales − 1; so discrete training only), the CRP pools by averaging.

Score SDE's own ``ncsn`` cannot be built as written: it reads ``config.model.num_classes``,
which no config sets (here: ``num_scales``, one embedding per noise level), and its
conditional residual block calls ``self.normalization(h, y)`` for a down-sampling block
(a module constructor given the arrays) instead of ``self.normalization()(h, y)``. With
those two fixed it has the parameter count of ours (tests/test_models.py).
"""

from __future__ import annotations

from typing import ClassVar, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from errors import UserError
from models import layerspp
from models.layers import RefineBlock, ResidualBlock, apply_norm, get_act, ncsn_conv
from models.normalization import conditional_normalization, get_normalization
from models.utils import ModelConfig, get_sigmas, register_model

Array = jax.Array


class NCSNv2(nn.Module):
    """Base RefineNet; subclasses give ``LEVELS`` and ``REFINE`` (see module docstring)."""

    config: ModelConfig

    LEVELS: ClassVar[Tuple[Tuple[int, int], ...]] = ((1, 1), (2, 1), (2, 2), (2, 4))
    REFINE: ClassVar[Tuple[int, ...]] = (2, 2, 2, 1)
    CONDITIONAL: ClassVar[bool] = False  # NCSN v1: norms conditioned on the noise level

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """The undilated levels after the first halve the resolution; a noise-conditional
        network needs integer noise levels (discrete training)."""
        if cls.CONDITIONAL and cfg.continuous:
            raise UserError(
                f'config.model.name={cfg.name!r} is conditioned on the index of a noise '
                'level; train it with --config.training.continuous=False.'
            )
        factor = 2 ** sum(1 for i, (_, d) in enumerate(cls.LEVELS) if i > 0 and d == 1)
        if cfg.image_size % factor:
            raise UserError(
                f'config.data.image_size={cfg.image_size} must be divisible by '
                f'{factor} for config.model.name={cfg.name!r}.'
            )

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = False) -> Array:
        del train  # no dropout
        cfg = self.config
        act = get_act(cfg.nonlinearity)
        if self.CONDITIONAL:
            normalize = conditional_normalization(cfg.normalization, cfg.num_scales)
            y = labels.astype(jnp.int32)  # noise-level indices (init passes float ones)
        else:
            normalize, y = get_normalization(cfg.normalization), None
        h = x if cfg.centered else 2 * x - 1.0
        h = ncsn_conv(h, cfg.nf)

        skips = []
        for i, (mult, dilation) in enumerate(self.LEVELS):
            resample = 'down' if i > 0 else None
            h = ResidualBlock(mult * cfg.nf, normalize, act, resample, dilation)(h, y)
            h = ResidualBlock(mult * cfg.nf, normalize, act, None, dilation)(h, y)
            skips.append(h)

        ref = None
        for j, (skip, mult) in enumerate(zip(reversed(skips), self.REFINE)):
            inputs = [skip] if ref is None else [skip, ref]
            ref = RefineBlock(
                skip.shape[1:3],
                mult * cfg.nf,
                act=act,
                interpolation=cfg.interpolation,
                start=ref is None,
                end=j == len(skips) - 1,
                normalize=normalize if self.CONDITIONAL else None,
            )(inputs, y)

        h = ncsn_conv(act(apply_norm(normalize, ref, y)), x.shape[-1])
        if cfg.scale_by_sigma:
            if jnp.issubdtype(labels.dtype, jnp.integer):
                used_sigmas = jnp.asarray(get_sigmas(cfg))[labels]
            else:
                used_sigmas = labels
            h = layerspp.divide_by_sigma(h, used_sigmas)
        return h


@register_model('ncsnv2_64')
class NCSNv2_64(NCSNv2):  # noqa: N801 (registry name)
    """NCSNv2 for 32–64 px images."""


@register_model('ncsnv2_128')
class NCSNv2_128(NCSNv2):  # noqa: N801
    """NCSNv2 for 96–128 px images (NCSNv2Deeper)."""

    LEVELS: ClassVar[Tuple[Tuple[int, int], ...]] = ((1, 1), (2, 1), (2, 1), (4, 2), (4, 4))
    REFINE: ClassVar[Tuple[int, ...]] = (4, 2, 2, 1, 1)


@register_model('ncsnv2_256')
class NCSNv2_256(NCSNv2):  # noqa: N801
    """NCSNv2 for 256 px images (NCSNv2Deepest)."""

    LEVELS: ClassVar[Tuple[Tuple[int, int], ...]] = ((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4))
    REFINE: ClassVar[Tuple[int, ...]] = (4, 2, 2, 2, 1, 1)


@register_model('ncsn')
class NCSN(NCSNv2):
    """NCSN (v1) for 32–64 px images: the noise-conditional RefineNet."""

    CONDITIONAL: ClassVar[bool] = True
