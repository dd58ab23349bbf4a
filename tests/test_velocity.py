"""i-DODE's velocity parameterization and its importance density of t, against closed forms.

* The score of a velocity-predicting network (``sde.velocity_coefficients``): for Gaussian
  data N(0, s² I) the posterior means E[x_0 | x_t] and E[ε | x_t] are linear in x_t, so the
  optimal velocity E[v | x_t] is known; turned into a score it must be the exact
  −x / (α² s² + σ²), for every SDE.
* The density 'log1p_snr' (p ∝ g²/σ² · α²/(α² + σ²)): normalised, followed by its samples
  (KS test against a float64 quadrature of the formula, docs/MATH.md), and the
  likelihood-weighted DSM loss under it is unbiased for the closed-form integral
  ∫ g² E‖s + z/σ‖² dt of a linear score on Gaussian data.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate, stats
from test_sde_lib import EPS, make_sde, ref_coeffs

import losses
import run_lib
import validation
from configs.default_toy_configs import get_default_configs
from errors import UserError
from models import utils as mutils

NAMES = ('vp', 'subvp', 've')


def ref_log1p_density(name: str, t):
    """g²/σ² · α²/(α² + σ²) in float64 (unnormalised)."""
    alpha, sigma, _, g2 = ref_coeffs(name, t)
    return g2 / sigma**2 * alpha**2 / (alpha**2 + sigma**2)


def ref_integral(fn, a: float, b: float) -> float:
    """∫_a^b fn(t) dt by quadrature in u = log t (the integrands are ~1/t near 0)."""
    val, _ = integrate.quad(
        lambda u: fn(np.exp(u)) * np.exp(u), np.log(a), np.log(b), epsrel=1e-10, limit=200
    )
    return val


@pytest.mark.parametrize('name', NAMES)
def test_velocity_of_gaussian_data_gives_exact_score(name):
    """E[v | x] = α σ (1 − s²) x / ((α² s² + σ²) r) for x_0 ~ N(0, s²); its score must be
    −x / (α² s² + σ²)."""
    sde, s2 = make_sde(name), 0.3
    t = np.asarray([1e-4, 0.01, 0.2, 0.6, 1.0])
    alpha, sigma, _, _ = ref_coeffs(name, t)
    r = np.sqrt(alpha**2 + sigma**2)
    x = np.random.default_rng(0).normal(size=(t.size, 3))
    var = alpha**2 * s2 + sigma**2
    v_opt = (alpha * sigma * (1 - s2) / (var * r))[:, None] * x
    a, b = sde.velocity_coefficients(jnp.asarray(t, jnp.float32))
    score = np.asarray(a)[:, None] * v_opt + np.asarray(b)[:, None] * x
    np.testing.assert_allclose(score, -x / var[:, None], rtol=2e-4)


@pytest.mark.parametrize('name', NAMES)
def test_noise_error_is_cos_phi_times_velocity_error(name):
    """ε̂ − ε = (α/r)(v̂ − v) with ε̂ = −σ s(v̂) and v = (α ε − σ x_0)/r."""
    sde = make_sde(name)
    rng = np.random.default_rng(1)
    t = np.asarray([1e-3, 0.1, 0.5, 0.9])
    alpha, sigma, _, _ = ref_coeffs(name, t)
    r = np.sqrt(alpha**2 + sigma**2)
    x0, eps, v_hat = (rng.normal(size=(t.size, 4)) for _ in range(3))
    x_t = alpha[:, None] * x0 + sigma[:, None] * eps
    a, b = (np.asarray(c, np.float64)[:, None] for c in sde.velocity_coefficients(jnp.asarray(t)))
    eps_hat = -sigma[:, None] * (a * v_hat + b * x_t)
    v = (alpha[:, None] * eps - sigma[:, None] * x0) / r[:, None]
    np.testing.assert_allclose(eps_hat - eps, (alpha / r)[:, None] * (v_hat - v), atol=2e-4)


@pytest.mark.parametrize('name', NAMES)
def test_log1p_snr_density_and_normaliser(name):
    sde = make_sde(name)
    z_ref = ref_integral(lambda t: ref_log1p_density(name, t), EPS, 1.0)
    z = float(sde.likelihood_importance_cum_weight(jnp.asarray(1.0), EPS, 'log1p_snr'))
    np.testing.assert_allclose(z, z_ref, rtol=1e-4)
    t = np.asarray([1e-4, 0.01, 0.3, 0.9, 1.0])
    np.testing.assert_allclose(
        sde.likelihood_importance_density(jnp.asarray(t, jnp.float32), EPS, 'log1p_snr'),
        ref_log1p_density(name, t) / z_ref,
        rtol=2e-4,
    )


@pytest.mark.parametrize('name', NAMES)
def test_log1p_snr_samples_follow_density(name, key):
    """KS test against the CDF of the float64 formula; the quantiles 0 and 1 map to ε and T."""
    sde = make_sde(name)
    t = np.asarray(
        sde.sample_importance_weighted_time_for_likelihood(
            key, (20000,), eps=EPS, density='log1p_snr'
        ),
        np.float64,
    )
    grid = np.geomspace(EPS, 1.0, 400)
    pieces = [0.0] + [
        ref_integral(lambda s: ref_log1p_density(name, s), lo, hi)
        for lo, hi in zip(grid[:-1], grid[1:])
    ]
    cdf_grid = np.cumsum(pieces) / np.sum(pieces)
    assert stats.kstest(t, lambda s: np.interp(np.log(s), np.log(grid), cdf_grid)).pvalue > 1e-3
    ends = sde.sample_importance_weighted_time_for_likelihood(
        None, (2,), eps=EPS, quantile=jnp.asarray([0.0, 1.0]), density='log1p_snr'
    )
    np.testing.assert_allclose(ends, [EPS, sde.T], rtol=2e-3, atol=1e-7)


@pytest.mark.parametrize('name', ('vp', 'subvp'))
def test_dsm_loss_under_log1p_snr_is_unbiased(name, key):
    """x_0 ~ N(0, s² I), s_θ(x, t) = −k x: E‖σ s + z‖² = k² σ² α² s² + (1 − k σ²)² per
    dimension, so the λ = g² loss with the normaliser estimates ∫ g²/σ² (that) dt, whatever
    the density of t. Both densities are checked against the quadrature at 4 standard errors."""
    sde, s2, k, dim, n = make_sde(name), 0.5, 0.7, 2, 200_000

    def per_dim(t):
        alpha, sigma, _, g2 = ref_coeffs(name, t)
        return g2 / sigma**2 * (k**2 * sigma**2 * alpha**2 * s2 + (1 - k * sigma**2) ** 2)

    expected = ref_integral(per_dim, EPS, 1.0)
    x = jnp.sqrt(s2) * jax.random.normal(key, (n, dim))
    for density in ('log_snr', 'log1p_snr'):
        per_example = losses.dsm_loss(
            jax.random.fold_in(key, 1),
            lambda y, t: -k * y,
            x,
            sde,
            reduce_mean=True,
            weighting='importance',
            eps=EPS,
            importance_normalizer=True,
            importance_density=density,
        )
        mean, se = float(jnp.mean(per_example)), float(jnp.std(per_example)) / np.sqrt(n)
        assert abs(mean - expected) < 4 * se, (density, mean, expected, se)


def _toy_config(**model) -> ml_collections.ConfigDict:
    config = get_default_configs()
    config.model.update(model)
    return config


def test_score_fn_of_a_velocity_network_is_a_net_plus_b_x(key):
    """The adapter's velocity branch: s = a(t) · net(x, 999 t) + b(t) · x on the TOY MLP."""
    config = _toy_config(parameterization='velocity')
    model, variables = mutils.init_model(key, config)
    sde = make_sde('vp')
    x = jax.random.normal(key, (4, 2))
    t = jnp.asarray([1e-3, 0.1, 0.5, 1.0])
    net = model.apply(variables, x, 999.0 * t, train=False)
    a, b = sde.velocity_coefficients(t)
    got = mutils.get_score_fn(sde, model, variables)(x, t)
    np.testing.assert_allclose(got, a[:, None] * net + b[:, None] * x, rtol=1e-5, atol=1e-6)
    score_model = mutils.create_model(_toy_config())
    plain = mutils.get_score_fn(sde, score_model, variables)(x, t)
    np.testing.assert_allclose(plain, -net / sde.std(t)[:, None], rtol=1e-5)


@pytest.mark.parametrize(
    'fields, named',
    [
        ({'model.parameterization': 'noise'}, 'model.parameterization'),
        ({'training.importance_density': 'snr'}, 'training.importance_density'),
        (
            {'model.parameterization': 'velocity', 'training.continuous': False},
            'model.parameterization',
        ),
        (
            {'model.parameterization': 'velocity', 'model.scale_by_sigma': True},
            'model.scale_by_sigma',
        ),
    ],
)
def test_bad_parameterization_inputs_stop_with_the_field(fields, named):
    config = get_default_configs()
    for field, value in fields.items():
        section, name = field.split('.')
        config[section][name] = value
    with pytest.raises(UserError, match=named):
        validation.prepare_config(config)


def test_a_run_keeps_its_parameterization(tmp_path):
    """W/config.json of a velocity run: evaluating or resuming it as 'score' stops."""
    workdir = str(tmp_path)
    run_lib.save_config(
        _toy_config(parameterization='velocity'), os.path.join(workdir, 'config.json')
    )
    run_lib.check_parameterization(_toy_config(parameterization='velocity'), workdir)
    with pytest.raises(UserError, match="parameterization='velocity'"):
        run_lib.check_parameterization(_toy_config(), workdir)
    run_lib.check_parameterization(_toy_config(), str(tmp_path / 'new'))  # a new run: anything


def test_original_checkpoints_import_only_as_score_networks(tmp_path):
    config = _toy_config(parameterization='velocity')
    with pytest.raises(UserError, match='predict the noise'):
        run_lib.import_checkpoint(config, str(tmp_path), str(tmp_path / 'checkpoint_1'))
    assert not os.listdir(tmp_path)  # nothing written
