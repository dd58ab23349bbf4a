"""Flow++ variational dequantizer q(u | x̄) of ScoreFlow (Song et al., 2021, §5), the
architecture of score_flow's ``models/flowpp`` (after Ho et al., 2019, Flow++).

The flow maps ε ~ N(0, I) on the image grid to u ∈ (0, 1)ᴰ, conditioned on the data
x̄/(K−1) ∈ [0, 1] through a context network c(x̄):

    ε → split columns (even, odd) = (a, b)
      → S stages × 4 × [ActNorm, (1×1 mixing), coupling b ← T(b; a, c), swap (a, b)]
      → merge columns → sigmoid → u.

A coupling transforms b elementwise, its parameters computed from (a, c):

    T(b) = e^{s} ⊙ σ⁻¹(F(b)) + t,   F(b) = Σ_k π_k σ((b − μ_k) e^{−ℓ_k})

(F the CDF of a mixture of ``components`` logistics, ℓ_k ≥ −7, s = tanh(·)), with
(s, t, π, μ, ℓ) = NN(a, c): a 3×3 conv to ``filters`` channels, then ``blocks`` ×
[gated residual conv (+ a 1×1 projection of the context), LayerNorm, gated multi-head
self-attention with a learned position embedding, LayerNorm], then a conv to
C·(2 + 3·components) outputs. Gated residual layers are x + A ⊙ σ(B) with (A, B) a conv
of concat_elu(x), concat_elu = elu([x, −x]).

By the change of variables ``log q(u | x̄) = log N(ε; 0, I) − Σ log|det ∂layer|``, with
log-determinants Σ log g (ActNorm), H·W·log|det W| (1×1 mixing), Σ [log F′(b) − log F(b)
− log(1 − F(b)) + s] (coupling) and Σ [log σ(h) + log σ(−h)] (the final sigmoid).

Two layouts, as the original's two files:

- ``'cifar10'`` (``dequantization_cifar10.py``): the shallow context network (columns
  split and concatenated, a 3×3 conv to 32 channels, 3 gated residual convs), one stage
  of four couplings each preceded by ActNorm and an invertible 1×1 convolution,
  data-initialised convolutions. Defaults filters 96, components 32, blocks 2, 4 heads:
  3,466,976 parameters on CIFAR-10's 32×32×3, path for path the original's.
- ``'imagenet32'`` (``dequantization_imagenet32.py``): the deep context network (8 ×
  [gated residual conv, LayerNorm, attention, LayerNorm] at 32 channels), two stages of
  four couplings without the 1×1 mixing, weight-normalised convolutions and a
  concat_elu before each coupling's output conv (the original: filters 128, blocks 8;
  35,482,720 parameters on 32×32×3).

Both agree with the original's modules (built outside this repository, in float64) to
1e-9 in u and 1e-10 relative in log q (tests/test_flowpp.py).

Every layer is initialised from the data (Salimans & Kingma, 2016: each output channel
starts at mean 0 and standard deviation ``init_scale`` on the initialisation batch;
ActNorm at mean 0 and variance 1), so ``init`` must see a real batch.

Parameter names and module paths are the original's (``ShallowProcessor_0/proj_W``,
``MixLogisticAttnCoupling_2/block1_attn_proj1_W``, …). Differences on purpose:
σ⁻¹(F(b)) and its log-derivative are computed in log space, log F − log(1 − F), where the
original forms −log(1/F − 1) with F clipped at 1e-7 (so the map saturates at |·| ≈ 16
while its log-det keeps counting, and in float32 it loses up to 2e-4 in u to
cancellation near F = 1); a data-initialised bias is computed from the kernel actually stored (the
original draws a second kernel for it); the original's convolutions of the 'cifar10'
layout read their kernels with height and width swapped (dimension numbers 'NWHC'), so
its ``*_W`` conv kernels are ours transposed in their first two axes.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.utils import register_dequantizer

Array = jax.Array
Halves = Tuple[Array, Array]

LAYOUTS = ('cifar10', 'imagenet32')
MIN_LOGSCALE = -7.0
CONTEXT_FEATURES = 32  # width of the context network, as the original's
BISECTION_STEPS = 100  # inverse of the mixture CDF (float32 resolution long before)


# --------------------------------------------------------------------------- layers
def _conv3x3(x: Array, kernel: Array) -> Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )


def _dense(x: Array, kernel: Array) -> Array:
    return x @ kernel


def _inverse_std(y: Array, axes: Sequence[int]) -> Array:
    mean = jnp.mean(y, axes)
    return jax.lax.rsqrt(jnp.mean(y**2, axes) - mean**2 + 1e-6)


def _layer(
    module: nn.Module,
    x: Array,
    *,
    name: str,
    features: int,
    op: Callable[[Array, Array], Array],
    kernel_shape: Tuple[int, ...],
    init_scale: float = 1.0,
    weight_norm: bool = False,
) -> Array:
    """``op(x, kernel) + bias`` initialised from x: each output channel starts with mean
    0 and standard deviation ``init_scale``. ``weight_norm``: kernel = g · V/‖V‖ per
    output channel (parameters ``<name>_V``, ``<name>_g``), else ``<name>_W``."""
    axes = tuple(range(x.ndim - 1))
    shape = kernel_shape + (x.shape[-1], features)
    if weight_norm:
        v = module.param(f'{name}_V', nn.initializers.normal(0.05), shape)
        sq = jnp.sum(v**2, tuple(range(len(shape) - 1)))
        direction = v * jax.lax.rsqrt(jnp.maximum(sq, 1e-12))
        g = module.param(f'{name}_g', lambda _: init_scale * _inverse_std(op(x, direction), axes))
        kernel = g * direction
    else:

        def kernel_init(rng):
            w = 0.05 * jax.random.normal(rng, shape)
            return w * (init_scale * _inverse_std(op(x, w), axes))

        kernel = module.param(f'{name}_W', kernel_init)
    bias = module.param(f'{name}_b', lambda _: -jnp.mean(op(x, kernel), axes))
    return op(x, kernel) + bias


def conv(module, x, *, name, features, init_scale=1.0, weight_norm=False) -> Array:
    """Data-initialised 3×3 'SAME' convolution."""
    return _layer(
        module,
        x,
        name=name,
        features=features,
        op=_conv3x3,
        kernel_shape=(3, 3),
        init_scale=init_scale,
        weight_norm=weight_norm,
    )


def nin(module, x, *, name, features, init_scale=1.0) -> Array:
    """Data-initialised dense layer over the channels ("network in network", 1×1)."""
    return _layer(
        module, x, name=name, features=features, op=_dense, kernel_shape=(), init_scale=init_scale
    )


def concat_elu(x: Array) -> Array:
    return jax.nn.elu(jnp.concatenate([x, -x], -1))


def _gate(x: Array) -> Array:
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b)


def gated_conv(module, x, *, name, context, use_nin, dropout, train, weight_norm=False) -> Array:
    """x + A ⊙ σ(B), (A, B) = layer₂(concat_elu(conv(concat_elu x) [+ nin(concat_elu c)]))."""
    filters = x.shape[-1]
    c1 = conv(module, concat_elu(x), name=f'{name}_c1', features=filters, weight_norm=weight_norm)
    if context is not None:
        c1 = c1 + nin(module, concat_elu(context), name=f'{name}_a_proj', features=filters)
    c1 = concat_elu(c1)
    if dropout > 0:
        c1 = nn.Dropout(rate=dropout, deterministic=not train)(c1)
    if use_nin:
        c2 = nin(module, c1, name=f'{name}_c2', features=2 * filters, init_scale=0.1)
    else:
        c2 = conv(
            module, c1, name=f'{name}_c2', features=2 * filters, init_scale=0.1,
            weight_norm=weight_norm,
        )  # fmt: skip
    return x + _gate(c2)


def layer_norm(module, x, *, name, eps=1e-5) -> Array:
    """LayerNorm over the channels (parameters ``<name>_g``, ``<name>_b``)."""
    shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    g = module.param(f'{name}_g', nn.initializers.ones, shape)
    b = module.param(f'{name}_b', nn.initializers.zeros, shape)
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * g + b


def gated_attention(module, x, *, name, pos_emb, heads, dropout, train) -> Array:
    """x + A ⊙ σ(B), (A, B) = nin(multi-head self-attention over the H·W positions of
    x + pos_emb)."""
    batch, height, width, ch = x.shape
    dim = ch // heads
    qkv = nin(module, x + pos_emb[None], name=f'{name}_proj1', features=3 * ch)
    qkv = jnp.transpose(qkv.reshape(batch, height * width, 3, heads, dim), (2, 0, 3, 1, 4))
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, T, dim]
    w = jax.nn.softmax(jnp.einsum('bhsd,bhtd->bhst', q, k) / np.sqrt(dim), axis=-1)
    a = jnp.einsum('bhst,bhtd->bhsd', w, v)
    a = jnp.transpose(a, (0, 2, 1, 3)).reshape(batch, height, width, ch)
    if dropout > 0:
        a = nn.Dropout(rate=dropout, deterministic=not train)(a)
    return x + _gate(nin(module, a, name=f'{name}_proj2', features=2 * ch, init_scale=0.1))


def conv_attention_block(
    module, x, names, *, context, use_nin, pos_emb, heads, dropout, train, weight_norm
) -> Array:
    """Gated residual conv, LayerNorm, gated attention, LayerNorm; ``names`` are the
    original's names of the four (they differ between the coupling and the processor)."""
    conv_name, ln1, attn_name, ln2 = names
    x = gated_conv(
        module, x, name=conv_name, context=context, use_nin=use_nin, dropout=dropout,
        train=train, weight_norm=weight_norm,
    )  # fmt: skip
    x = layer_norm(module, x, name=ln1)
    x = gated_attention(
        module, x, name=attn_name, pos_emb=pos_emb, heads=heads, dropout=dropout, train=train
    )
    return layer_norm(module, x, name=ln2)


# --------------------------------------------------------------------------- mixture CDF
def _logistic_terms(b, logits, means, logscales):
    """(log F(b), log(1 − F(b)), log F′(b)) of the logistic mixture, elementwise."""
    logscales = jnp.maximum(logscales, MIN_LOGSCALE)
    z = (b[..., None] - means) * jnp.exp(-logscales)
    log_w = jax.nn.log_softmax(logits, axis=-1)
    log_cdf = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(z), axis=-1)
    log_sf = jax.nn.logsumexp(log_w + jax.nn.log_sigmoid(-z), axis=-1)
    log_pdf = jax.nn.logsumexp(log_w + z - logscales - 2.0 * jax.nn.softplus(z), axis=-1)
    return log_cdf, log_sf, log_pdf


def per_example_sum(a: Array) -> Array:
    """Σ over every axis but the batch axis."""
    return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def mixture_logit_transform(b, logits, means, logscales):
    """(σ⁻¹(F(b)), Σ log of its derivative per example)."""
    log_cdf, log_sf, log_pdf = _logistic_terms(b, logits, means, logscales)
    return log_cdf - log_sf, per_example_sum(log_pdf - log_cdf - log_sf)


def mixture_logit_inverse(y, logits, means, logscales):
    """b with σ⁻¹(F(b)) = y, by bisection on the original's bracket."""
    scales = jnp.sum(jnp.exp(jnp.maximum(logscales, MIN_LOGSCALE)), -1, keepdims=True)
    lo = jnp.min(means - 200.0 * scales, -1)
    hi = jnp.max(means + 200.0 * scales, -1)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = mixture_logit_transform(mid, logits, means, logscales)[0] > y
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, BISECTION_STEPS, step, (lo, hi))
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- flow layers
def split_columns(x: Array) -> Halves:
    """[B, H, W, C] → (even columns, odd columns), each [B, H, W/2, C]."""
    batch, height, width, ch = x.shape
    x = x.reshape(batch, height, width // 2, 2, ch)
    return x[:, :, :, 0], x[:, :, :, 1]


def merge_columns(halves: Halves) -> Array:
    a, b = halves
    batch, height, half, ch = a.shape
    return jnp.stack([a, b], axis=3).reshape(batch, height, 2 * half, ch)


class Norm(nn.Module):
    """ActNorm of each half: x ⊙ g + b per position and channel, initialised to mean 0
    and variance 1 on the initialisation batch; log|det| = Σ log g."""

    @nn.compact
    def __call__(self, halves: Halves, inverse: bool = False) -> Tuple[Halves, Array]:
        out, logdet = [], 0.0
        for i, x in enumerate(halves):
            g = self.param(f'norm{i}_g', lambda _: jax.lax.rsqrt(jnp.var(x, 0) + 1e-6))
            b = self.param(f'norm{i}_b', lambda _: -jnp.mean(x, 0) * g)
            g = jnp.maximum(g, 1e-7)
            out.append((x - b) / g if inverse else x * g + b)
            logdet = logdet + jnp.sum(jnp.log(g))
        logdet = jnp.full(halves[0].shape[:1], logdet)
        return tuple(out), -logdet if inverse else logdet


class Pointwise(nn.Module):
    """Invertible 1×1 convolution of each half, W = I + 0.001·N(0, 1) at
    initialisation; log|det| = H·W·log|det W|."""

    noisy_identity_init: float = 0.001

    @nn.compact
    def __call__(self, halves: Halves, inverse: bool = False) -> Tuple[Halves, Array]:
        out, logdet = [], 0.0
        for i, x in enumerate(halves):
            ch = x.shape[-1]

            def init(key, ch=ch):
                return jnp.eye(ch) + self.noisy_identity_init * jax.random.normal(key, (ch, ch))

            w = self.param(f'W{i}', init)
            out.append(x @ (jnp.linalg.inv(w) if inverse else w))
            logdet = logdet + x.shape[1] * x.shape[2] * jnp.linalg.slogdet(w)[1]
        logdet = jnp.full(halves[0].shape[:1], logdet)
        return tuple(out), -logdet if inverse else logdet


class MixLogisticAttnCoupling(nn.Module):
    """(a, b) ↦ (a, e^{s} ⊙ σ⁻¹(F(b)) + t), the parameters from (a, context)."""

    filters: int
    blocks: int
    components: int
    heads: int = 4
    dropout: float = 0.0
    layout: str = 'cifar10'
    init_scale: float = 0.1

    def _parameters(self, a: Array, context: Array, train: bool):
        deep = self.layout == 'imagenet32'
        batch, height, width, ch = a.shape
        pos_emb = self.param('pos_emb', nn.initializers.normal(0.01), (height, width, self.filters))
        x = conv(self, a, name='c1' if deep else 'proj_in', features=self.filters, weight_norm=deep)
        name = 'block0'
        for i in range(self.blocks):
            name = f'block{i}'
            names = (f'{name}_conv', f'{name}_ln1', f'{name}_attn', f'{name}_ln2')
            x = conv_attention_block(
                self, x, names, context=context, use_nin=True, pos_emb=pos_emb,
                heads=self.heads, dropout=self.dropout, train=train, weight_norm=deep,
            )  # fmt: skip
        if deep:
            x = concat_elu(x)
        x = conv(
            self, x, name=f'{name}_c2' if deep else f'{name}_proj_out',
            features=ch * (2 + 3 * self.components), init_scale=self.init_scale,
            weight_norm=deep,
        )  # fmt: skip
        x = x.reshape(batch, height, width, ch, 2 + 3 * self.components)
        logits, means, logscales = jnp.split(x[..., 2:], 3, axis=-1)
        return jnp.tanh(x[..., 0]), x[..., 1], (logits, means, logscales)

    @nn.compact
    def __call__(self, halves: Halves, context: Array, inverse: bool = False, train=False):
        a, b = halves
        s, t, mixture = self._parameters(a, context, train)
        if inverse:
            b = mixture_logit_inverse((b - t) * jnp.exp(-s), *mixture)
            return (a, b), -(mixture_logit_transform(b, *mixture)[1] + per_example_sum(s))
        y, logdet = mixture_logit_transform(b, *mixture)
        return (a, y * jnp.exp(s) + t), logdet + per_example_sum(s)


class ShallowProcessor(nn.Module):
    """Context of the 'cifar10' layout: columns split and stacked on channels, a 3×3
    conv to 32 channels, three gated residual convs."""

    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = jnp.concatenate(split_columns(x - 0.5), axis=-1)
        x = conv(self, x, name='proj', features=CONTEXT_FEATURES)
        for i in range(3):
            x = gated_conv(
                self, x, name=f'c{i}', context=None, use_nin=False, dropout=self.dropout,
                train=train,
            )  # fmt: skip
        return x


class DeepProcessor(nn.Module):
    """Context of the 'imagenet32' layout: as the shallow one with weight-normalised
    convs, then 8 × [gated residual conv, LayerNorm, attention, LayerNorm]."""

    dropout: float = 0.0
    depth: int = 8
    heads: int = 4

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = jnp.concatenate(split_columns(x - 0.5), axis=-1)
        x = conv(self, x, name='proj', features=CONTEXT_FEATURES, weight_norm=True)
        pos_emb = self.param('pos_emb_dq', nn.initializers.normal(0.01), x.shape[1:])
        for i in range(self.depth):
            x = conv_attention_block(
                self, x, (f'c{i}', f'dqln{i}', f'dqattn{i}', f'ln{i}'), context=None,
                use_nin=False, pos_emb=pos_emb, heads=self.heads, dropout=self.dropout,
                train=train, weight_norm=True,
            )  # fmt: skip
        return x


@register_dequantizer('flowpp')
class FlowppDequantizer(nn.Module):
    """q(u | x̄): ``apply(variables, eps, x_cond) -> (u, log q(u | x̄))``, and with
    ``inverse=True``: ``apply(variables, u, x_cond, inverse=True) -> (eps, log q(u | x̄))``.

    eps: [B, H, W, C] standard normal (W even); x_cond: [B, H, W, C] the data x̄/(K−1)
    in [0, 1]. ``train=True`` applies dropout (rng ``'dropout'``).
    """

    filters: int = 96
    components: int = 32
    blocks: int = 2
    attn_heads: int = 4
    dropout: float = 0.0
    layout: str = 'cifar10'
    couplings_per_stage: int = 4

    @nn.compact
    def __call__(
        self, h: Array, x_cond: Array, inverse: bool = False, train: bool = False
    ) -> Tuple[Array, Array]:
        deep = self.layout == 'imagenet32'
        processor = DeepProcessor if deep else ShallowProcessor
        context = processor(dropout=self.dropout)(x_cond, train=train)
        stages = 2 if deep else 1
        layers = []
        for _ in range(stages * self.couplings_per_stage):
            coupling = MixLogisticAttnCoupling(
                self.filters, self.blocks, self.components, self.attn_heads, self.dropout,
                self.layout,
            )  # fmt: skip
            layers.append([Norm()] + ([] if deep else [Pointwise()]) + [coupling])
        if inverse:
            return self._inverse(h, context, layers, stages, train)
        logdet = jnp.zeros(h.shape[:1])
        eps = h
        for stage in range(stages):
            halves = split_columns(h)
            for layer in layers[stage * self.couplings_per_stage :][: self.couplings_per_stage]:
                halves, logdet = _through(layer, halves, context, logdet, False, train)
                halves = halves[::-1]
            h = merge_columns(halves)
        logdet = logdet + per_example_sum(jax.nn.log_sigmoid(h) + jax.nn.log_sigmoid(-h))
        return jax.nn.sigmoid(h), log_standard_normal(eps) - logdet

    def _inverse(self, u, context, layers, stages, train):
        h = jnp.log(u) - jnp.log1p(-u)
        logdet = -per_example_sum(jnp.log(u) + jnp.log1p(-u))  # of σ⁻¹
        for stage in reversed(range(stages)):
            halves = split_columns(h)
            group = layers[stage * self.couplings_per_stage :][: self.couplings_per_stage]
            for layer in reversed(group):
                halves, logdet = _through(layer[::-1], halves[::-1], context, logdet, True, train)
            h = merge_columns(halves)
        return h, log_standard_normal(h) + logdet


def _through(modules, halves, context, logdet, inverse, train):
    for module in modules:
        if isinstance(module, MixLogisticAttnCoupling):
            halves, delta = module(halves, context, inverse=inverse, train=train)
        else:
            halves, delta = module(halves, inverse=inverse)
        logdet = logdet + delta
    return halves, logdet


def log_standard_normal(eps: Array) -> Array:
    """log N(ε; 0, I) per example."""
    return per_example_sum(-0.5 * eps**2 - 0.5 * np.log(2 * np.pi))
