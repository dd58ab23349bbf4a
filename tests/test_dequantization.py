"""eval.dequantization: i-DODE's truncated-normal dequantization against a closed form.

The "model" is the exact score of Gaussian data N(m, s0² I) in model space, so its ODE
density at the start time ε is p_ε = N(α m, c² I), c² = α² s0² + σ², and the discrete
likelihood of a bin is P(x̄) = Π_d [Φ(α(y_hi − m)/c) − Φ(α(y_lo − m)/c)] over the bin
scaled by α. The pipeline's bits/dim (``eval_quantities.ODEBitsPerDim``: the dequantized
input, the ODE with the exact divergence, the conversion to the data's units) must average,
over draws of u, to the closed-form expectation of its bound, which lies above the exact
−log₂ P(x̄)/D; for a point mass at the bin's centre (s0 = 0) the truncated-normal bound is
tight: every draw gives −log P(x̄) = −D log Z exactly. (The ODE's density is the prior's
image, p_ε·π(x_T)/p_T(x_T): the point mass sits at 0, where p_T = π to 10⁻⁵.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import eval_quantities
import likelihood
import sde_lib
from configs.base import get_base_config
from datasets import DataSpec
from errors import UserError
from validation import validate_config

K, LEVELS, EPS, N = 9, np.array([3, 6]), 0.015, 256
MIDDLE = np.array([4, 4])  # the bins centred at 0
A, B = 2.0, -1.0  # centered data: y = 2x − 1


def _context(dequantization, m, s0, train_dequantized=True):
    config = get_base_config()
    config.eval.dequantization = dequantization
    config.eval.eps = EPS
    config.eval.hutchinson_type = 'exact'
    sde = sde_lib.VPSDE()

    def score_fn(y, t):
        alpha = jnp.exp(sde.log_mean_coeff(t))[:, None]
        return -(y - alpha * m) / (alpha**2 * s0**2 + sde.std(t)[:, None] ** 2)

    data = DataSpec((2,), K, lambda x: A * x + B, train_dequantized)
    return eval_quantities.EvalContext(config, '', sde, data, lambda variables: score_fn)


def _bits_per_dim(ctx, levels=LEVELS):
    fn = jax.jit(eval_quantities.ODEBitsPerDim().batch_fn(ctx))
    keys = eval_quantities.example_keys(jax.random.key(3), jnp.arange(N))
    return np.asarray(fn(None, None, keys, jnp.tile(levels, (N, 1)))['bpd'], np.float64)


def _closed_form(dequantization, m, s0, levels=LEVELS, train_dequantized=True):
    """(expected bound, exact −log P(x̄)) in bits/dim; the bins are centred on the levels
    of training: (x̄ + ½)/K, width 1/K, or x̄/(K − 1), width 1/(K − 1)."""
    sde, dim = sde_lib.VPSDE(), len(levels)
    alpha, sigma = float(jnp.exp(sde.log_mean_coeff(EPS))), float(sde.std(EPS))
    c2 = alpha**2 * s0**2 + sigma**2
    width_x = 1 / K if train_dequantized else 1 / (K - 1)
    centre_x = (levels + 0.5) / K if train_dequantized else levels / (K - 1)
    width, centre = A * width_x, A * centre_x + B
    if dequantization == 'uniform':  # y ~ U(bin), fed to p_ε as it is
        sq = (centre - alpha * m) ** 2 + width**2 / 12
        nll = np.sum(0.5 * np.log(2 * np.pi * c2) + sq / (2 * c2)) - dim * np.log(A)
    else:  # y_ε = α y_c + σ z, z ~ N(0, 1) on [−τ, τ]
        tau = alpha * width / (2 * sigma)
        big_z = special.erf(tau / np.sqrt(2))
        ez2 = 1 - 2 * tau * stats.norm.pdf(tau) / big_z
        sq = alpha**2 * (centre - m) ** 2 + sigma**2 * ez2
        neg_log_p = 0.5 * np.log(2 * np.pi * c2) + sq / (2 * c2)
        log_q = -0.5 * np.log(2 * np.pi) - 0.5 * ez2 - np.log(big_z) + np.log(2 * tau)
        nll = np.sum(neg_log_p + log_q) - dim * np.log(alpha * A)
    bound = nll / (dim * np.log(2)) - np.log2(width_x)
    c, lo = np.sqrt(c2), centre - width / 2
    mass = stats.norm.cdf(alpha * (lo + width - m) / c) - stats.norm.cdf(alpha * (lo - m) / c)
    return bound, -np.sum(np.log(mass)) / (dim * np.log(2))


@pytest.mark.parametrize(
    'dequantization, train_dequantized',
    [('uniform', True), ('truncated_normal', True), ('truncated_normal', False)],
)
def test_bits_per_dim_match_the_discretised_gaussian(dequantization, train_dequantized):
    m, s0 = np.array([0.1, -0.3], np.float32), 0.3
    bpd = _bits_per_dim(_context(dequantization, m, s0, train_dequantized))
    bound, exact = _closed_form(dequantization, m, s0, LEVELS, train_dequantized)
    se = bpd.std() / np.sqrt(N)
    assert abs(bpd.mean() - bound) < 4.5 * se + 1e-4, (bpd.mean(), bound, se)
    assert bound > exact


@pytest.mark.parametrize('train_dequantized', [True, False])
def test_truncated_normal_is_tight_for_a_point_mass_at_the_bin_centre(train_dequantized):
    centre = np.zeros(2, np.float32)
    ctx = _context('truncated_normal', centre, 0.0, train_dequantized)
    bpd = _bits_per_dim(ctx, MIDDLE)
    bound, exact = _closed_form('truncated_normal', centre, 0.0, MIDDLE, train_dequantized)
    np.testing.assert_allclose(bpd, exact, atol=2e-4)  # the solver and float32: 1e-4
    np.testing.assert_allclose(bound, exact, rtol=1e-9)
    width = A / K if train_dequantized else A / (K - 1)
    alpha, tau = likelihood.truncation(sde_lib.VPSDE(), EPS, width)
    assert 1.5 < float(tau) < 3  # the truncation matters here: Z = erf(τ/√2) < 1
    np.testing.assert_allclose(exact, -np.log2(special.erf(float(tau) / np.sqrt(2))), rtol=1e-5)


def test_uniform_input_is_unchanged():
    """The default draws u ~ U[0, 1)^D from the dequantization stream, as before."""
    ctx = _context('uniform', np.zeros(2, np.float32), 1.0)
    keys = eval_quantities.example_keys(jax.random.key(1), jnp.arange(8))
    x = jnp.tile(LEVELS, (8, 1))
    y, log_q = eval_quantities.dequantized_input(ctx, None, keys, x)
    u = ctx.data.uniform_noise(eval_quantities.stream(keys, eval_quantities.DEQ_STREAM))
    np.testing.assert_array_equal(y, A * (x + u) / K + B)
    np.testing.assert_array_equal(log_q, 0.0)


def test_truncated_normal_draws_and_density(key):
    tau = jnp.asarray(1.2)
    u, log_q = likelihood.truncated_normal_dequantization(jax.random.split(key, 20000), (3,), tau)
    assert float(u.min()) > 0 and float(u.max()) < 1
    z = np.asarray(2 * tau * (u - 0.5), np.float64)
    expected = stats.truncnorm.logpdf(z, -1.2, 1.2).sum(-1) + 3 * np.log(2 * 1.2)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-5)
    # its variance is that of the truncated normal
    np.testing.assert_allclose(z.var(), stats.truncnorm.var(-1.2, 1.2), rtol=0.03)


@pytest.mark.parametrize(
    'field, value, match',
    [
        ('eval.bound', True, 'ODE bits/dim only'),
        ('eval.dequantizer', True, 'both choose'),
        ('data.dataset', 'TOY', 'needs discrete data'),
    ],
)
def test_truncated_normal_refuses_what_it_cannot_do(field, value, match):
    config = get_base_config()
    config.eval.dequantization = 'truncated_normal'
    section, name = field.split('.')
    config[section][name] = value
    with pytest.raises(UserError, match=match):
        validate_config(config, num_devices=1)


def test_the_field_is_in_the_fingerprint():
    assert 'eval.dequantization' in eval_quantities.get_quantity('bpd').fingerprint
    assert 'eval.dequantization' in eval_quantities.fingerprint_fields()
