"""``bench/train_step_parts.py``: its reading of XLA's compiled HLO (which thunk is which
part of a convolution's forward and backward), on a compiled gradient of a small
convolution network, and its layer recorder on the real DDPM++."""

from __future__ import annotations

import collections
import os
import sys

import jax
import jax.numpy as jnp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import train_step_parts as parts  # noqa: E402
from bench.train_step import SETUPS, make_config  # noqa: E402
from models import utils as mutils  # noqa: E402


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )


@pytest.mark.timeout(120)
def test_thunks_of_a_convolution_gradient_are_classified():
    def loss(x, w3, w1):  # two 3×3 convolutions
        return jnp.tanh(_conv(jax.nn.silu(_conv(x, w3)), w1)).sum()

    x = jnp.ones((4, 16, 16, 8))
    w3, w1 = jnp.ones((3, 3, 8, 8)), jnp.ones((3, 3, 8, 8))  # XLA turns 1×1 into dots
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, w3, w1).compile()
    comps = parts.hlo_instructions(compiled.as_text())
    entry_name = next(k for k in comps if k.startswith('main'))
    entry = {m.group(1): x for x in comps[entry_name] for m in [parts._NAME.match(x)] if m}
    kinds = collections.Counter(parts.classify(n, comps, entry) for n in entry)
    # Two convolutions: each has a forward and a weight gradient; the input gradient is
    # needed for both (x is differentiated too).
    assert kinds['conv forward'] == 2, kinds
    assert kinds['conv weight grad'] == 2, kinds
    assert kinds['conv input grad'] == 2, kinds
    assert kinds['elementwise'] >= 1  # silu / tanh and their derivatives


def test_conv_kind_and_source_from_hlo_lines():
    fwd = (
        '%convolution.1 = f32[4,8,8,128]{3,2,1,0} convolution(%a, %b), window={size=3x3 '
        'pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(step)/'
        'jvp(NCSNpp)/ResnetBlockBigGANpp_7/Conv_0/conv_general_dilated"}'
    )
    dx = fwd.replace('jvp(NCSNpp)', 'transpose(jvp(NCSNpp))')
    dw = (
        '%convolution.2 = f32[64,3,3,64]{3,2,1,0} convolution(%a, %b), '
        'window={size=16x16 pad=1_1x1_1}'
    )
    assert parts._conv_kind(fwd) == 'conv forward'
    assert parts._conv_kind(dx) == 'conv input grad'
    assert parts._conv_kind(dw) == 'conv weight grad'
    assert parts.source(fwd) == 'Conv fwd'
    assert parts.source(dx) == 'Conv bwd'
    assert parts.source('%f = f32[3] fusion(%a), metadata={op_name="jit(step)/div"}') == (
        'loss / update'
    )
    assert parts.source('%f = f32[3] fusion(%a)') == 'unattributed'


@pytest.mark.timeout(120)
def test_layer_recorder_counts_the_small_ddpmpp():
    config = make_config(**SETUPS['small'][0])
    model, variables = mutils.init_model(jax.random.PRNGKey(0), config)
    x, y = jnp.zeros((2, 32, 32, 3)), jnp.zeros((2,))
    calls = parts.record_calls(model, variables, x, y)
    by_kind = collections.Counter()
    for (kind, _), n in calls.items():
        by_kind[kind] += n
    # One attention block per 16×16 level (ch_mult (1,2,2): down and up) and one in the
    # middle; every 3×3 and 1×1 convolution of the network, its GroupNorms and NINs.
    assert by_kind['attention'] == 3
    conv_params = [p for p in jax.tree_util.tree_leaves_with_path(variables) if 'Conv' in str(p[0])]
    kernels = [p for p in conv_params if str(p[0][-1]).endswith("'kernel']")]
    assert by_kind['conv'] == len(kernels)
