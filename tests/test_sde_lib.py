"""sde_lib against independent float64 formulas, simulation, quadrature and SciPy.

The reference coefficients below are written from the table in docs/MATH.md, in NumPy float64,
independently of sde_lib.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate, stats

import mixture
import sde_lib
from errors import UserError

BETA_0, BETA_1, SIGMA_MIN, SIGMA_MAX, EPS = 0.1, 20.0, 0.01, 50.0, 1e-5
NAMES = ('ve', 'vp', 'subvp', 'linear_ve', 'scoreflow_linear_ve')


def make_sde(name: str, n: int = 1000) -> sde_lib.SDE:
    return {
        've': lambda: sde_lib.VESDE(SIGMA_MIN, SIGMA_MAX, n),
        'vp': lambda: sde_lib.VPSDE(BETA_0, BETA_1, n),
        'subvp': lambda: sde_lib.subVPSDE(BETA_0, BETA_1, n),
        'linear_ve': lambda: sde_lib.LinearVESDE(SIGMA_MIN, SIGMA_MAX, n),
        'scoreflow_linear_ve': lambda: sde_lib.ScoreFlowLinearVESDE(SIGMA_MIN, SIGMA_MAX, n),
    }[name]()


def ref_coeffs(name: str, t):
    """(α, σ, f, g²) of docs/MATH.md in float64."""
    t = np.asarray(t, np.float64)
    if name in ('ve', 'linear_ve', 'scoreflow_linear_ve'):
        if name == 've':
            sigma = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
            g2 = sigma**2 * 2 * np.log(SIGMA_MAX / SIGMA_MIN)
        elif name == 'scoreflow_linear_ve':  # score_flow's sde_lib, VESDE(linear=True)
            sigma = SIGMA_MAX * t
            g2 = SIGMA_MAX**2 * 2 * t
        else:
            sigma = SIGMA_MIN + t * (SIGMA_MAX - SIGMA_MIN)
            g2 = 2 * sigma * (SIGMA_MAX - SIGMA_MIN)
        return np.ones_like(t), sigma, np.zeros_like(t), g2
    big_b = BETA_0 * t + 0.5 * (BETA_1 - BETA_0) * t**2
    beta = BETA_0 + t * (BETA_1 - BETA_0)
    one_m_a2 = -np.expm1(-big_b)
    if name == 'vp':
        sigma, g2 = np.sqrt(one_m_a2), beta
    else:
        sigma, g2 = one_m_a2, beta * -np.expm1(-2 * big_b)
    return np.exp(-0.5 * big_b), sigma, -0.5 * beta, g2


def ref_importance_integrand(name: str, t):
    _, sigma, _, g2 = ref_coeffs(name, t)
    return g2 / sigma**2


def ref_cum_weight(name: str, t: float, eps: float = EPS) -> float:
    """∫_ε^t g²/σ² by quadrature in u = log s (the integrand is ~1/s near 0 for VP)."""
    val, _ = integrate.quad(
        lambda u: ref_importance_integrand(name, np.exp(u)) * np.exp(u),
        np.log(eps),
        np.log(t),
        epsabs=1e-11,
        epsrel=1e-11,
        limit=200,
    )
    return val


@pytest.mark.parametrize('name', NAMES)
def test_coefficients_match_reference(name):
    sde = make_sde(name)
    t = np.concatenate([np.geomspace(EPS, 1e-2, 5), np.linspace(0.05, 1.0, 8)])
    alpha, sigma, f, g2 = ref_coeffs(name, t)
    tj = jnp.asarray(t, jnp.float32)
    np.testing.assert_allclose(np.exp(sde.log_mean_coeff(tj)), alpha, rtol=2e-5)
    np.testing.assert_allclose(sde.std(tj), sigma, rtol=2e-5)
    np.testing.assert_allclose(sde.drift_coeff(tj), f, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(sde.diffusion(tj) ** 2, g2, rtol=3e-5)
    x = jnp.ones((len(t), 3))
    drift, diffusion = sde.sde(x, tj)
    np.testing.assert_allclose(drift, f[:, None] * np.ones((1, 3)), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(diffusion**2, g2, rtol=3e-5)


@pytest.mark.parametrize('name', NAMES)
def test_coefficients_inside_a_jitted_reduction(name):
    """g²/σ², α and σ multiplied with a per-example reduction, as in the jitted
    likelihood-weighted loss, against float64. XLA:CPU (jax 0.10) once returned one value
    for two ``expm1`` with different arguments in such a fusion: sub-VP's g²/σ² came out
    up to 4× too small at small t, though each coefficient alone was right."""
    sde = make_sde(name)
    t = np.geomspace(EPS, 1.0, 4096)  # a batch large enough for XLA's vectorised loops
    alpha, sigma, _, g2 = ref_coeffs(name, t)
    x = np.asarray(jax.random.normal(jax.random.key(0), (len(t), 4)), np.float64)
    m = np.mean(x**2, axis=-1)

    tj, xj = jnp.asarray(t, jnp.float32), jnp.asarray(x, jnp.float32)
    h = lambda x: jnp.mean(x**2, axis=-1)  # noqa: E731
    # one output each: a second output can split the fusion and hide the fault
    w_h = jax.jit(lambda t, x: sde.diffusion(t) ** 2 / sde.std(t) ** 2 * h(x))(tj, xj)
    np.testing.assert_allclose(w_h, g2 / sigma**2 * m, rtol=1e-4)
    a_s_h = jax.jit(lambda t, x: jnp.exp(sde.log_mean_coeff(t)) * sde.std(t) * h(x))(tj, xj)
    np.testing.assert_allclose(a_s_h, alpha * sigma * m, rtol=1e-4)
    g_s_h = jax.jit(lambda t, x: sde.diffusion(t) / sde.std(t) * h(x))(tj, xj)
    np.testing.assert_allclose(g_s_h, np.sqrt(g2) / sigma * m, rtol=1e-4)
    snr_s_h = jax.jit(lambda t, x: jnp.exp(sde.log_inverse_snr(t)) / sde.std(t) * h(x))(tj, xj)
    np.testing.assert_allclose(snr_s_h, sigma / alpha**2 * m, rtol=1e-4)


def _euler_maruyama_moments(sde, x0, times, n_paths, n_steps, rng):
    """Mean and variance of x(t) for t in ``times`` from x(0) = x0 (fine EM, midpoint t)."""
    dt = 1.0 / n_steps
    record = {int(round(t * n_steps)) for t in times}

    def body(x, inp):
        k, key = inp
        t = jnp.full((n_paths,), (k + 0.5) * dt)
        drift, g = sde.sde(x, t)
        x = x + drift * dt + g[:, None] * jnp.sqrt(dt) * jax.random.normal(key, x.shape)
        return x, (jnp.mean(x), jnp.var(x))

    keys = jax.random.split(rng, n_steps)
    x_init = jnp.full((n_paths, 1), x0, jnp.float32)
    _, (means, variances) = jax.jit(
        lambda: jax.lax.scan(body, x_init, (jnp.arange(n_steps), keys))
    )()
    return {k: (float(means[k - 1]), float(variances[k - 1])) for k in sorted(record)}


@pytest.mark.parametrize('name', NAMES)
def test_marginal_prob_matches_euler_maruyama(name, key):
    """x(0) = x0 exactly, so Var x(t) = σ(t)² − σ(0)² (σ(0) = σ_min for VE kernels).

    Tolerance: 4.5 Monte-Carlo standard errors plus 1.5 % for the O(Δt) bias of EM
    (Δt = 1/2000, estimated as Δt/2 ∫β²/4 ≈ 0.8 % for VP).
    """
    sde = make_sde(name)
    n_paths, n_steps, x0 = 20000, 2000, 2.0
    moments = _euler_maruyama_moments(sde, x0, (0.25, 1.0), n_paths, n_steps, key)
    std0 = float(sde.std(jnp.zeros(1))[0])
    for k, (mean_hat, var_hat) in moments.items():
        t = jnp.full((1,), k / n_steps)
        mean, std = sde.marginal_prob(jnp.full((1, 1), x0), t)
        mean, var = float(mean[0, 0]), float(std[0]) ** 2 - std0**2
        se_mean, se_var = np.sqrt(var / n_paths), var * np.sqrt(2.0 / n_paths)
        assert abs(mean_hat - mean) <= 4.5 * se_mean + 0.015 * abs(mean), (k, mean_hat, mean)
        assert abs(var_hat - var) <= 4.5 * se_var + 0.015 * var, (k, var_hat, var)


@pytest.mark.parametrize('name', NAMES)
def test_prior_logp_matches_scipy(name, key):
    sde = make_sde(name)
    z = sde.prior_sampling(key, (5, 2, 2, 1))
    np.testing.assert_allclose(
        np.std(np.asarray(sde.prior_sampling(key, (4000, 4)))), sde.prior_std, rtol=0.05
    )
    flat = np.asarray(z, np.float64).reshape(5, -1)
    ref = stats.multivariate_normal(np.zeros(4), sde.prior_std**2 * np.eye(4)).logpdf(flat)
    np.testing.assert_allclose(sde.prior_logp(z), ref, rtol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_diffusion_is_variance_derivative_by_autodiff(name):
    """g² = dσ²/dt − 2 f σ² and f = d log α / dt (Itô for dx = f x dt + g dw)."""
    sde = make_sde(name)
    for t in (1e-3, 0.1, 0.5, 1.0):
        t = jnp.asarray(t, jnp.float32)
        dvar = jax.grad(lambda s: sde.std(s) ** 2)(t)
        dlog_alpha = jax.grad(sde.log_mean_coeff)(t)
        f = sde.drift_coeff(t)
        np.testing.assert_allclose(dlog_alpha, f, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(dvar - 2 * f * sde.std(t) ** 2, sde.diffusion(t) ** 2, rtol=1e-4)


@pytest.mark.parametrize('name', NAMES)
def test_importance_cum_weight_and_density_match_quadrature(name):
    sde = make_sde(name)
    for t in (1e-3, 0.1, 0.5, 1.0):
        got = float(sde.likelihood_importance_cum_weight(jnp.asarray(t), eps=EPS))
        np.testing.assert_allclose(got, ref_cum_weight(name, t), rtol=2e-5, atol=2e-5)
    z = ref_cum_weight(name, 1.0)
    t = jnp.asarray([1e-4, 0.01, 0.3, 0.9], jnp.float32)
    np.testing.assert_allclose(
        sde.likelihood_importance_density(t, eps=EPS),
        ref_importance_integrand(name, np.asarray(t, np.float64)) / z,
        rtol=1e-4,
    )


@pytest.mark.parametrize('name,expected', [('vp', 23.8645), ('subvp', 37.6789)])
def test_importance_normaliser_values(name, expected):
    sde = make_sde(name)
    got = float(sde.likelihood_importance_cum_weight(jnp.asarray(sde.T), eps=EPS))
    assert abs(got - expected) < 2e-4
    assert abs(ref_cum_weight(name, 1.0) - expected) < 1e-4


@pytest.mark.parametrize('name', NAMES)
def test_importance_sampled_times_follow_density(name, key):
    """KS test of t ~ p(t) ∝ g²/σ² against a CDF built by quadrature on a fine grid."""
    sde = make_sde(name)
    t = np.asarray(
        sde.sample_importance_weighted_time_for_likelihood(key, (20000,), eps=EPS), np.float64
    )
    assert t.min() >= EPS and t.max() <= sde.T
    grid = np.geomspace(EPS, 1.0, 600)
    pieces = [0.0] + [ref_cum_weight(name, b, eps=a) for a, b in zip(grid[:-1], grid[1:])]
    cdf_grid = np.cumsum(pieces) / np.sum(pieces)
    cdf = lambda s: np.interp(np.log(s), np.log(grid), cdf_grid)  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 1e-3
    ends = sde.sample_importance_weighted_time_for_likelihood(
        None, (2,), eps=EPS, quantile=jnp.asarray([0.0, 1.0])
    )
    np.testing.assert_allclose(ends, [EPS, sde.T], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('name', ('vp', 'subvp', 've', 'linear_ve', 'scoreflow_linear_ve'))
def test_closed_form_inverse_equals_bisection(name):
    """Equal to float32 precision; for VE, c = 2 log σ(t) loses ~4e-8 absolute in t to the
    cancellation log σ(t) − log σ_min, hence the absolute tolerance."""
    sde = make_sde(name)
    atol = 1e-9 if name == 'vp' else 1e-7
    c = jnp.linspace(
        sde.log_inverse_snr(jnp.asarray(EPS)), sde.log_inverse_snr(jnp.asarray(1.0)), 50
    )
    closed = sde.inverse_log_inverse_snr(c)
    bisect = sde_lib.SDE.inverse_log_inverse_snr(sde, c)
    np.testing.assert_allclose(closed, bisect, rtol=3e-5, atol=atol)
    np.testing.assert_allclose(sde.log_inverse_snr(closed), c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', NAMES)
def test_half_log_snr_and_its_inverse(name):
    """λ(t) = log(α/σ) against the float64 table of docs/MATH.md, and t(λ(t)) = t, in
    float32 (t ∈ [1e-3, 1]: the sampling range) and float64 (to 1e-12)."""
    sde = make_sde(name)
    t = np.asarray([1e-3, 0.01, 0.1, 0.37, 0.8, 1.0])
    alpha, sigma, _, _ = ref_coeffs(name, t)
    lam = sde.half_log_snr(jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(lam, np.log(alpha / sigma), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sde.time_of_half_log_snr(lam), t, rtol=1e-4)
    with jax.enable_x64(True):
        lam64 = sde.half_log_snr(jnp.asarray(t))
        np.testing.assert_allclose(lam64, np.log(alpha / sigma), rtol=1e-12)
        np.testing.assert_allclose(sde.time_of_half_log_snr(lam64), t, rtol=1e-12)


@pytest.mark.parametrize('name', ('vp', 've', 'scoreflow_linear_ve'))
def test_reverse_drift_and_probability_flow(name, key):
    sde = make_sde(name)
    mix = mixture.random_mixture(1, 3, 2)
    score_fn = mix.score_fn(sde)
    x = mix.sample(key, 6)
    t = jnp.linspace(0.05, 1.0, 6)
    s = score_fn(x, t)
    _, _, f, g2 = ref_coeffs(name, np.asarray(t))
    f, g2 = f[:, None], g2[:, None]
    drift, diff = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(drift, f * x - 0.5 * g2 * s, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(diff, 0.0)
    drift, diff = sde.reverse(score_fn).sde(x, t)
    np.testing.assert_allclose(drift, f * x - g2 * s, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(diff**2, g2[:, 0], rtol=1e-4)
    fd, gd = sde.discretize(x, t)
    rev_f, rev_g = sde.reverse(score_fn).discretize(x, t)
    np.testing.assert_allclose(rev_f, fd - np.asarray(gd)[:, None] ** 2 * s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rev_g, gd)


def test_ddpm_and_smld_discretizations():
    n = 1000
    x = jnp.arange(1.0, 4.0)[None].repeat(3, 0)
    idx = np.array([0, 10, n - 1])
    t = jnp.asarray(idx / (n - 1), jnp.float32)
    betas = np.linspace(BETA_0 / n, BETA_1 / n, n)[idx]
    f, g = make_sde('vp').discretize(x, t)
    # f = √(1−β) x − x cancels in float32: absolute error ~ ulp(x), not relative to f.
    np.testing.assert_allclose(
        f, (np.sqrt(1 - betas) - 1)[:, None] * np.asarray(x), rtol=1e-5, atol=4e-7
    )
    np.testing.assert_allclose(g, np.sqrt(betas), rtol=1e-5)
    sigmas = np.exp(np.linspace(np.log(SIGMA_MIN), np.log(SIGMA_MAX), n))
    prev = np.where(idx == 0, 0.0, sigmas[np.maximum(idx - 1, 0)])
    f, g = make_sde('ve').discretize(x, t)
    np.testing.assert_array_equal(f, 0.0)
    np.testing.assert_allclose(g, np.sqrt(sigmas[idx] ** 2 - prev**2), rtol=1e-4)
    vp = make_sde('vp')
    np.testing.assert_allclose(
        vp.sqrt_alphas_cumprod[idx],
        np.sqrt(np.cumprod(1 - np.linspace(BETA_0 / n, BETA_1 / n, n)))[idx],
    )


@pytest.mark.parametrize('name', ('vp', 'subvp'))
def test_small_time_std_is_accurate_in_float32(name):
    """σ(1e-5) in float32 within 1e-5 of float64; the naive 1 − exp(−B) form is > 0.3 % off."""
    sde = make_sde(name)
    t = jnp.asarray([1e-5], jnp.float32)
    exact = ref_coeffs(name, 1e-5)[1]
    np.testing.assert_allclose(sde.std(t), exact, rtol=1e-5)
    big_b = sde.integrated_beta(t)
    naive = 1.0 - jnp.exp(-big_b)
    naive = jnp.sqrt(naive) if name == 'vp' else naive
    assert abs(float(naive[0]) / exact - 1) > 3e-3


def test_get_sde_by_name():
    config = ml_collections.ConfigDict(
        {
            'training': {'sde': 'vpsde'},
            'model': {
                'sigma_min': 0.02,
                'sigma_max': 30.0,
                'beta_min': 0.2,
                'beta_max': 10.0,
                'num_scales': 50,
            },
        }
    )
    expected = {
        'vpsde': sde_lib.VPSDE,
        'subvpsde': sde_lib.subVPSDE,
        'vesde': sde_lib.VESDE,
        'vesde_linear': sde_lib.LinearVESDE,
        'linearvesde': sde_lib.ScoreFlowLinearVESDE,
    }
    for name, cls in expected.items():
        config.training.sde = name.upper()
        sde = sde_lib.get_sde(config)
        assert type(sde) is cls and sde.N == 50
    assert sde_lib.get_sde(config).sigma_max == 30.0
    config.training.sde = 'vpsde'
    assert sde_lib.get_sde(config).beta_1 == 10.0
    config.training.sde = 'cosine'
    with pytest.raises(UserError, match='config.training.sde'):
        sde_lib.get_sde(config)


@pytest.mark.parametrize('sde', [sde_lib.VPSDE(), sde_lib.VESDE()], ids=['vp', 've'])
def test_timestep_index_visits_each_index_once_on_the_sampler_grid(sde):
    """The PC grid linspace(T, ε, N) maps onto N−1, …, 0 once each; grid points onto i."""
    t = jnp.linspace(sde.T, 1e-3, sde.N)
    np.testing.assert_array_equal(np.asarray(sde.timestep_index(t)), np.arange(sde.N)[::-1])
    grid = jnp.arange(sde.N, dtype=jnp.float32) / (sde.N - 1)
    np.testing.assert_array_equal(np.asarray(sde.timestep_index(grid)), np.arange(sde.N))


def test_scoreflow_linear_ve_network_convention():
    """score_flow's models/utils.py for VESDE(linear=True): the network gets 999·t and the
    score is −output/σ(t) with σ(t) = σ_max t (its marginal_prob)."""
    sde = make_sde('scoreflow_linear_ve')
    t = jnp.asarray([1e-3, 0.25, 1.0])
    labels, scale = sde.network_inputs(t, continuous=True)
    np.testing.assert_allclose(labels, 999.0 * np.asarray(t), rtol=1e-6)
    np.testing.assert_allclose(scale, -1.0 / (SIGMA_MAX * np.asarray(t)), rtol=1e-6)
    assert sde.prior_std == SIGMA_MAX
    with pytest.raises(UserError, match='no discrete form'):
        sde.network_inputs(t, continuous=False)


@pytest.mark.parametrize('ode_time', ('log_sigma', 'sigma'))
@pytest.mark.parametrize('name', NAMES)
def test_ode_time_change_is_a_consistent_change_of_variable(name, ode_time):
    """u(t) is σ̃ = σ/α or its log (float64 reference), t(u(t)) = t, and dt/du is the
    derivative of t(u) (central differences in float64)."""
    sde = make_sde(name)
    change = sde.ode_time_change(ode_time)
    t = jnp.asarray([1e-4, 0.01, 0.3, 0.9, 0.999])  # inside [0, T]: bisection clamps there
    alpha, sigma, _, _ = ref_coeffs(name, np.asarray(t, np.float64))
    ref_u = sigma / alpha if ode_time == 'sigma' else np.log(sigma / alpha)
    u = change.to_u(t)
    np.testing.assert_allclose(u, ref_u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(change.to_t(u), t, rtol=2e-4, atol=2e-7)
    with jax.enable_x64(True):
        u64 = change.to_u(jnp.asarray(t, jnp.float64))
        h = 1e-6 * (1.0 + jnp.abs(u64))
        dt_du = (change.to_t(u64 + h) - change.to_t(u64 - h)) / (2 * h)
        np.testing.assert_allclose(change.dt_du(jnp.asarray(t, jnp.float64)), dt_du, rtol=1e-5)
    assert sde.ode_time_change('t') is None
