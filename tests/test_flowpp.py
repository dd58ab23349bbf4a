"""Tests of the Flow++ dequantizer network (models/flowpp.py).

log q(u | x̄) is checked against the change of variables with a finite-difference
Jacobian (float64), the flow against its inverse, the mixture-of-logistics transform
against its closed form, the data-dependent initialisation against its definition, and
the parameter tree against the original's (score_flow ``models/flowpp``, built outside
this repository: tests/fixtures/flowpp_cifar10_params.json).
"""

from __future__ import annotations

import json
import pathlib
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict
from scipy.stats import norm

import configs.base
import dequantizer
from errors import UserError
from models import flowpp
from models import utils as mutils
from validation import validate_config

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def _small(layout: str = 'cifar10', **kw) -> flowpp.FlowppDequantizer:
    return flowpp.FlowppDequantizer(
        filters=8, components=3, blocks=1, attn_heads=2, layout=layout, **kw
    )


def _inputs(shape, seed=0):
    eps = jax.random.normal(jax.random.key(seed), shape)
    x_cond = jax.random.randint(jax.random.key(seed + 1), shape, 0, 17) / 16.0
    return eps, x_cond


@pytest.mark.parametrize('layout', flowpp.LAYOUTS)
def test_log_q_is_the_change_of_variables(layout):
    """log q(u|x̄) = log N(ε) − log|det ∂u/∂ε|, the Jacobian by central differences."""
    shape = (4, 2, 4, 1)
    with jax.enable_x64(True):
        model = _small(layout)
        eps, x_cond = _inputs(shape)
        eps, x_cond = eps.astype(jnp.float64), x_cond.astype(jnp.float64)
        variables = model.init(jax.random.key(2), eps, x_cond)
        variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
        apply = jax.jit(model.apply)
        u, log_q = apply(variables, eps, x_cond)
        assert bool(jnp.all((u > 0) & (u < 1)))

        def flat_u(e):
            batch = eps.at[0].set(e.reshape(shape[1:]))
            return np.asarray(apply(variables, batch, x_cond)[0][0]).ravel()

        e0, h = np.asarray(eps[0]).ravel(), 1e-6
        jac = np.stack(
            [(flat_u(e0 + h * d) - flat_u(e0 - h * d)) / (2 * h) for d in np.eye(e0.size)], 1
        )
    expected = norm.logpdf(e0).sum() - np.linalg.slogdet(jac)[1]
    assert float(log_q[0]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('layout', flowpp.LAYOUTS)
def test_inverse_recovers_eps_and_log_q(layout):
    model = _small(layout, couplings_per_stage=2)  # both stages of 'imagenet32', fewer couplings
    eps, x_cond = _inputs((4, 4, 8, 3), seed=3)
    variables = jax.jit(model.init)(jax.random.key(0), eps, x_cond)
    u, log_q = jax.jit(model.apply)(variables, eps, x_cond)
    back, log_q_back = jax.jit(lambda v, u, x: model.apply(v, u, x, inverse=True))(
        variables, u, x_cond
    )
    np.testing.assert_allclose(back, eps, atol=1e-4)
    np.testing.assert_allclose(log_q_back, log_q, rtol=1e-5, atol=1e-3)


def test_mixture_logit_transform_closed_form():
    """One logistic: σ⁻¹(F(b)) = (b − μ)e^{−ℓ}, log-derivative −ℓ, also 50 scales out
    (where the original's clip of F at 1 − 1e-7 would saturate near 16)."""
    b = jnp.array([[-3.0, 0.2, 50.0 * np.exp(0.5) + 1.0]])
    logits, means, logscales = jnp.zeros((1, 3, 1)), jnp.ones((1, 3, 1)), jnp.full((1, 3, 1), 0.5)
    y, logdet = flowpp.mixture_logit_transform(b, logits, means, logscales)
    np.testing.assert_allclose(y, (b - 1.0) * np.exp(-0.5), rtol=1e-5)
    assert float(logdet[0]) == pytest.approx(-1.5, abs=1e-5)
    # Two components: the value against float64 numpy, the inverse by bisection.
    logits = jnp.array([[[0.3, -0.4]] * 3])
    means = jnp.array([[[-1.0, 2.0]] * 3])
    logscales = jnp.array([[[0.2, -0.7]] * 3])
    y, _ = flowpp.mixture_logit_transform(b, logits, means, logscales)
    w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    cdf = (w / (1 + np.exp(-(np.asarray(b)[..., None] - means) / np.exp(logscales)))).sum(-1)
    finite = np.asarray(b) < 10
    cdf = cdf[finite]
    np.testing.assert_allclose(np.asarray(y)[finite], np.log(cdf / (1 - cdf)), rtol=1e-4)
    back = flowpp.mixture_logit_inverse(y, logits, means, logscales)
    np.testing.assert_allclose(back, b, rtol=1e-5, atol=1e-5)


class _Layer(nn.Module):
    weight_norm: bool
    init_scale: float

    @nn.compact
    def __call__(self, x):
        return flowpp.conv(
            self, x, name='c', features=5, init_scale=self.init_scale, weight_norm=self.weight_norm
        )


@pytest.mark.parametrize('weight_norm', [False, True])
def test_data_dependent_initialisation(weight_norm):
    """On the initialisation batch every output channel has mean 0 and std init_scale."""
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (16, 6, 6, 4))
    layer = _Layer(weight_norm, 0.1)
    variables = layer.init(jax.random.key(1), x)
    y = layer.apply(variables, x)
    np.testing.assert_allclose(jnp.mean(y, (0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, (0, 1, 2)), 0.1, rtol=1e-3)
    expected = {'c_V', 'c_g', 'c_b'} if weight_norm else {'c_W', 'c_b'}
    assert set(variables['params']) == expected


def _param_shapes(model, shape):
    x = jnp.zeros(shape)
    params = jax.eval_shape(model.init, jax.random.key(0), x, x)['params']
    return {'/'.join(k): list(v.shape) for k, v in flatten_dict(params).items()}


def test_cifar10_parameters_are_the_originals():
    """Path for path and shape for shape the parameters of score_flow's
    ``dequantization_cifar10.Dequantization()`` on 32×32×3 images (3,466,976; the
    original's definition built outside this repository), which our kernels read with
    their first two axes swapped."""
    original = json.loads((FIXTURES / 'flowpp_cifar10_params.json').read_text())
    ours = _param_shapes(flowpp.FlowppDequantizer(), (2, 32, 32, 3))
    assert ours == original
    assert sum(int(np.prod(s)) for s in ours.values()) == 3_466_976


def test_imagenet32_parameter_count_is_the_originals():
    """score_flow's ``dequantization_imagenet32.Dequantization()`` (filters 128, blocks 8):
    35,482,720 parameters (built outside this repository)."""
    model = flowpp.FlowppDequantizer(layout='imagenet32', filters=128, blocks=8)
    shapes = _param_shapes(model, (2, 32, 32, 3))
    assert sum(int(np.prod(s)) for s in shapes.values()) == 35_482_720


def test_dropout_only_in_training():
    model = _small(dropout=0.5)
    eps, x_cond = _inputs((2, 4, 4, 1))
    variables = jax.jit(model.init)(jax.random.key(0), eps, x_cond)

    @jax.jit
    def outputs(key):
        u_eval = model.apply(variables, eps, x_cond)[0]
        u_train = model.apply(variables, eps, x_cond, train=True, rngs={'dropout': key})[0]
        return u_eval, u_train

    (u_eval, u_train), (u_eval_again, _) = outputs(jax.random.key(5)), outputs(jax.random.key(6))
    np.testing.assert_array_equal(u_eval, u_eval_again)
    assert float(jnp.max(jnp.abs(u_train - u_eval))) > 1e-4


def _digits_config():
    config = configs.base.get_base_config()
    config.data.dataset, config.data.num_bins = 'DIGITS', 17
    config.data.image_size, config.data.num_channels = 8, 1
    return config


def test_config_errors_name_the_field():
    config = _digits_config()
    config.deq.layout = 'cifar'
    with pytest.raises(UserError, match="deq.layout.*'cifar10', 'imagenet32'"):
        validate_config(config, num_devices=1)
    config = _digits_config()
    config.deq.filters = 30
    with pytest.raises(UserError, match='deq.attn_heads=4'):
        validate_config(config, num_devices=1)
    config = _digits_config()
    config.deq.name, config.deq.dropout = 'affine_coupling', 0.1
    with pytest.raises(UserError, match='deq.dropout=0.1 is not supported'):
        mutils.create_dequantizer(config)
    config = _digits_config()
    config.data.image_size = 7
    with pytest.raises(UserError, match='width 7 are odd'):
        dequantizer.create_dequantizer(config, jax.random.key(0))


def _fill(path: str, shape) -> np.ndarray:
    """Deterministic parameter values from a path: the rule used to build the fixture
    ``flowpp_original_outputs.json`` with the original's modules."""
    rs = np.random.RandomState(zlib.crc32(path.encode()))
    noise = 0.1 * rs.standard_normal(shape)
    if path.split('/')[-1].endswith('_g'):
        return 1.0 + noise
    if path.split('/')[0].startswith('Pointwise'):
        return np.eye(shape[0]) + noise
    return noise


@pytest.mark.parametrize('layout', flowpp.LAYOUTS)
def test_outputs_are_the_originals(layout):
    """u and log q(u|x̄) of score_flow's ``dequantization_<layout>.Dequantization(filters=8,
    components=3, blocks=1, attn_heads=2)`` on 2 × 4×8×3 inputs (numpy RandomState(0): ε
    standard normal, then x̄/16 with x̄ uniform in 0…16), every parameter set by
    :func:`_fill` from its path — computed by the original modules outside this repository
    in float64 (tests/fixtures/flowpp_original_outputs.json). In float32 the original
    differs from itself in float64 by up to 1.8e-4 in u ('imagenet32'; it forms σ⁻¹(F) as
    −log(1/F − 1)), so the comparison is in float64. The 'cifar10' original reads its conv
    kernels with height and width swapped, so they are transposed here."""
    expected = json.loads((FIXTURES / 'flowpp_original_outputs.json').read_text())[layout]
    shape = (2, 4, 8, 3)
    rs = np.random.RandomState(0)
    eps = rs.standard_normal(shape)
    x_cond = rs.randint(0, 17, shape) / 16.0
    model = _small(layout)
    with jax.enable_x64(True):
        abstract = jax.eval_shape(model.init, jax.random.key(0), eps, x_cond)['params']
        params = {}
        for key, leaf in flatten_dict(abstract).items():
            value = _fill('/'.join(key), leaf.shape)
            if layout == 'cifar10' and key[-1].endswith('_W') and value.ndim == 4:
                value = value.transpose(1, 0, 2, 3)
            params[key] = jnp.asarray(value, jnp.float64)
        u, log_q = jax.jit(model.apply)({'params': unflatten_dict(params)}, eps, x_cond)
        assert u.dtype == jnp.float64
    np.testing.assert_allclose(u, np.asarray(expected['u']), atol=1e-9)
    np.testing.assert_allclose(-log_q, np.asarray(expected['neg_log_q']), rtol=1e-10)
