"""The fast solvers of ``sampling`` (DPM-Solver, DPM-Solver++, DDIM, EDM's Heun) against
closed forms.

The probability-flow ODE maps each prior draw to one sample, so with the exact score of a
Gaussian mixture (``mixture.py``) every fixed-step solver must land near the adaptive ODE
solution from the same draws (``sampling.get_ode_sampler``), closer as its steps grow at
the rate its order claims, and its samples must have the mixture's component masses.

Tolerances (measured values in each test's docstring):
- *matching the ODE* (float32, 2000 draws, the ODE at rtol = atol = 1e-6): the RMS over the
  draws of |x_solver − x_ODE| at 10, 15 and 20 NFE is below the bound of
  :data:`RMS_BOUND` (about twice the largest value measured over VP, sub-VP and VE), and
  decreases from 10 to 20 NFE;
- *component masses*: ``test_sampling._assert_component_mass`` (4 binomial standard
  errors + a bias allowance of 0.02) at every NFE;
- *convergence order* (float64, 64 draws, the ODE at 1e-11; its own error ≈ 1e-9): the
  least-squares slope of log RMS error against log NFE over NFE ∈ :data:`ORDER_NFES`
  (where the asymptotic regime holds for every SDE) lies in :data:`ORDER_WINDOW`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from test_sampling import (
    MIX,
    _assert_component_mass,
    _assert_moments,
    _condition,
    _counting,
    _gaussian3,
)

import configs.vp.photos_lw_is as photos_config
import mixture
import run_lib
import sampling
import sde_lib
import solver_plans
import train_utils
import validation
from configs.vp import digits_lw_is
from errors import UserError
from file_io import load_npz

NUM = 2000
# (label, get_*_sampler keyword arguments; Heun's steps are NFE // 2)
METHODS = {
    'DPM-Solver-1': dict(order=1, solver_type='singlestep', algorithm='dpmsolver'),
    'DPM-Solver-2S': dict(order=2, solver_type='singlestep', algorithm='dpmsolver'),
    'DPM-Solver-3S': dict(order=3, solver_type='singlestep', algorithm='dpmsolver'),
    'DPM-Solver-3M': dict(order=3, solver_type='multistep', algorithm='dpmsolver'),
    'DPM-Solver++2M': dict(order=2, solver_type='multistep', algorithm='dpmsolver++'),
    'DPM-Solver++3M': dict(order=3, solver_type='multistep', algorithm='dpmsolver++'),
    'DPM-Solver++3S': dict(order=3, solver_type='singlestep', algorithm='dpmsolver++'),
    'DDIM': dict(eta=0.0),
    'Heun': dict(rho=7.0),
}
# RMS bound at NFE 10 / 15 / 20: twice the largest measured over VP, VE and sub-VP
RMS_BOUND = {
    'DPM-Solver-1': (0.75, 0.5, 0.4),  # measured 0.364, 0.252, 0.192 (sub-VP)
    'DPM-Solver-2S': (2.0, 0.6, 0.4),  # 0.958, 0.306, 0.202 (sub-VP)
    'DPM-Solver-3S': (1.3, 0.3, 0.22),  # 0.641, 0.136, 0.108 (sub-VP)
    'DPM-Solver-3M': (0.2, 0.09, 0.055),  # 0.095, 0.043, 0.026 (sub-VP)
    'DPM-Solver++2M': (0.3, 0.16, 0.1),  # 0.146, 0.079, 0.048 (sub-VP)
    'DPM-Solver++3M': (0.21, 0.08, 0.045),  # 0.106, 0.039, 0.021 (sub-VP)
    'DPM-Solver++3S': (0.23, 0.09, 0.09),  # 0.112, 0.041, 0.044 (sub-VP)
    'DDIM': (0.43, 0.3, 0.22),  # 0.212, 0.145, 0.110 (sub-VP)
    'Heun': (3.1, 1.25, 0.55),  # 1.549, 0.617, 0.272 (sub-VP)
}
# The solvers whose component masses pass at 10 and 15 NFE too (all pass at 20)
MASSES_FROM_10 = ('DPM-Solver-3M', 'DPM-Solver++2M', 'DPM-Solver++3M', 'DPM-Solver++3S')
# (method, expected order, NFE): the asymptotic regime.  Third-order singlestep at NFE ≡ 2
# (mod 3), whose last step is second order (≡ 0, 1 end with a first-order step: globally
# second order); on VE its local slopes are 2.51, 2.58, 2.84, 2.92 over NFE 29 … 479.
ORDER_NFES = {
    'DPM-Solver-1': (1, (20, 40, 80)),
    'DPM-Solver-2S': (2, (20, 40, 80)),
    'DPM-Solver-3S': (3, (119, 239, 479)),
    'DPM-Solver++2M': (2, (20, 40, 80)),
    'DPM-Solver++3M': (3, (40, 80, 160)),
    'Heun': (2, (20, 40, 80)),
}
ORDER_WINDOW = {1: (0.9, 1.1), 2: (1.8, 2.3), 3: (2.7, 3.4)}


def _sde(name: str) -> sde_lib.SDE:
    return {
        've': lambda: sde_lib.VESDE(0.01, 10.0, 200),
        'vp': lambda: sde_lib.VPSDE(0.1, 20.0, 200),
        'subvp': lambda: sde_lib.subVPSDE(0.1, 20.0, 200),
    }[name]()


def _sampler(sde, shape, label: str, nfe: int, **extra):
    kwargs = METHODS[label]
    if label == 'DDIM':
        return sampling.get_ddim_sampler(sde, shape, nfe, eps=1e-3, **kwargs, **extra)
    if label == 'Heun':
        return sampling.get_heun_sampler(sde, shape, nfe // 2, eps=1e-3, **kwargs, **extra)
    return sampling.get_dpm_solver_sampler(sde, shape, nfe, eps=1e-3, **kwargs, **extra)


def _rms(x, ref) -> float:
    d = np.asarray(x, np.float64) - np.asarray(ref, np.float64)
    return float(np.sqrt(np.mean(np.sum(d**2, -1))))


# --- plans ----------------------------------------------------------------------------------
def test_singlestep_orders_spend_every_evaluation():
    """DPM-Solver-fast's orders sum to the NFE and end as Lu et al. App. D.1 says."""
    for steps in range(1, 40):
        for order in (1, 2, 3):
            orders = solver_plans.singlestep_orders(steps, order)
            assert sum(orders) == steps and max(orders) <= order
    assert solver_plans.singlestep_orders(10, 3) == [3, 3, 3, 1]
    assert solver_plans.singlestep_orders(11, 3) == [3, 3, 3, 2]
    assert solver_plans.singlestep_orders(12, 3) == [3, 3, 3, 2, 1]
    assert solver_plans.singlestep_orders(7, 2) == [2, 2, 2, 1]


def test_multistep_orders_warm_up_and_end_low_below_ten_steps():
    assert solver_plans.multistep_orders(12, 3) == [1, 2] + [3] * 10
    assert solver_plans.multistep_orders(6, 3) == [1, 2, 3, 3, 2, 1]
    assert solver_plans.multistep_orders(5, 2) == [1, 2, 2, 2, 1]


@pytest.mark.parametrize('name', ['vp', 've', 'subvp'])
def test_time_grids(name):
    """logSNR steps are uniform in λ, EDM's in σ̃^{1/ρ}; all run from T to ε exactly."""
    sched = solver_plans.Schedule(_sde(name))
    grid = solver_plans.time_grid(sched, 'logSNR', 1.0, 1e-3, 8)
    assert grid[0] == 1.0 and grid[-1] == 1e-3
    np.testing.assert_allclose(np.diff(sched.lam(grid)), np.diff(sched.lam(grid)).mean(), 1e-9)
    quad = solver_plans.time_grid(sched, 'time_quadratic', 1.0, 1e-3, 8)
    np.testing.assert_allclose(np.diff(np.sqrt(quad)), np.diff(np.sqrt(quad))[0], 1e-12)
    rho = solver_plans.rho_grid(sched, 7.0, 1.0, 1e-3, 8)
    root = np.exp(-sched.lam(rho)) ** (1 / 7)
    np.testing.assert_allclose(np.diff(root), np.diff(root).mean(), 1e-9)


# --- NFE, compiled loop, errors ---------------------------------------------------------------
@pytest.mark.parametrize(
    'label, nfe, extra, expected',
    [
        ('DPM-Solver-3S', 10, {}, 10),
        ('DPM-Solver++3M', 7, {}, 7),
        ('DPM-Solver-2S', 5, {'denoise_to_zero': True}, 6),
        ('DDIM', 6, {}, 6),
        ('Heun', 8, {}, 8),
        ('Heun', 8, {'denoise_to_zero': True}, 9),
    ],
)
def test_nfe_is_counted_exactly(label, nfe, extra, expected):
    """The returned NFE (a Python int) is the number of score evaluations, counted on the
    host; the sampler is one jitted program with one ``scan`` of NFE stages."""
    sde = _sde('ve')
    sampler = _sampler(sde, (4, 2), label, nfe, **extra)
    counter = [0]
    x, count = sampler(jax.random.PRNGKey(0), _counting(MIX.score_fn(sde), counter))
    jax.block_until_ready(x)
    assert count == expected == counter[0] and isinstance(count, int)
    jaxpr = jax.make_jaxpr(lambda r: sampler(r, MIX.score_fn(sde))[0])(jax.random.PRNGKey(0))
    assert _scan_lengths(jaxpr.jaxpr) == [expected]


def _scan_lengths(jaxpr) -> list:
    """Lengths of the scans of a jaxpr (inside jitted calls too, not inside scans)."""
    lengths = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'scan':
            lengths.append(eqn.params['length'])
        elif 'jaxpr' in eqn.params:
            lengths += _scan_lengths(getattr(eqn.params['jaxpr'], 'jaxpr', eqn.params['jaxpr']))
    return lengths


def test_ddim_with_noise_counts_and_needs_a_key():
    sde = _sde('vp')
    sampler = sampling.get_ddim_sampler(sde, (4, 2), 5, eta=1.0)
    counter = [0]
    x, nfe = sampler(jax.random.PRNGKey(1), _counting(MIX.score_fn(sde), counter))
    jax.block_until_ready(x)
    assert nfe == counter[0] == 5
    with pytest.raises(UserError, match='rng'):
        sampler(None, MIX.score_fn(sde), jnp.zeros((4, 2)))


@pytest.mark.parametrize(
    'call, match',
    [
        (lambda s: sampling.get_dpm_solver_sampler(s, (2, 2), 10, order=4), 'order=4'),
        (lambda s: sampling.get_dpm_solver_sampler(s, (2, 2), 0), 'steps=0'),
        (lambda s: sampling.get_dpm_solver_sampler(s, (2, 2), 10, 2, 'adaptive'), 'solver_type'),
        (lambda s: sampling.get_dpm_solver_sampler(s, (2, 2), 10, 2, algorithm='x'), 'algorithm'),
        (lambda s: sampling.get_dpm_solver_sampler(s, (2, 2), 10, skip_type='edm'), 'skip_type'),
        (lambda s: sampling.get_dpm_solver_sampler(s, (2, 2), 10, eps=0.0), 'eps=0.0'),
        (lambda s: sampling.get_ddim_sampler(s, (2, 2), 10, eta=1.5), 'eta=1.5'),
        (lambda s: sampling.get_heun_sampler(s, (2, 2), 10, rho=0.0), 'rho=0.0'),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(UserError, match=match):
        call(_sde('vp'))


def test_order_one_is_ddim_in_both_forms():
    """DPM-Solver-1 is DDIM (η = 0) in the noise and in the data form (the same map)."""
    sde = _sde('subvp')
    z = sde.prior_sampling(jax.random.PRNGKey(2), (256, 2))
    score = MIX.score_fn(sde)
    ddim, _ = sampling.get_ddim_sampler(sde, z.shape, 12, skip_type='logSNR')(None, score, z)
    for algorithm in ('dpmsolver', 'dpmsolver++'):
        x, _ = sampling.get_dpm_solver_sampler(sde, z.shape, 12, 1, 'multistep', algorithm)(
            None, score, z
        )
        np.testing.assert_allclose(np.asarray(x), np.asarray(ddim), rtol=2e-5, atol=2e-5)


def test_the_plan_is_built_inside_a_trace():
    """get_*_sampler inside jax.jit computes its float64 coefficients eagerly."""
    sde = _sde('vp')
    score = MIX.score_fn(sde)

    @jax.jit
    def draw(rng):
        return sampling.get_dpm_solver_sampler(sde, (3, 2), 6)(rng, score)[0]

    direct, _ = sampling.get_dpm_solver_sampler(sde, (3, 2), 6)(jax.random.PRNGKey(3), score)
    np.testing.assert_allclose(draw(jax.random.PRNGKey(3)), direct, rtol=1e-5, atol=1e-6)


# --- closed forms: the ODE solution, component masses, convergence orders ------------------
@pytest.mark.slow
@pytest.mark.parametrize('name', ['vp', 've', 'subvp'])
def test_fast_samplers_match_the_ode_and_the_mixture(name):
    """Every solver from the same 2000 prior draws as the adaptive ODE (Dopri5, 1e-6): RMS
    error below :data:`RMS_BOUND` at 10, 15 and 20 NFE (Heun: 10, 14, 20) and smaller at
    20 than at 10; the mixture's component masses at 20 NFE, and at 10 and 15 for the
    multistep solvers and singlestep DPM-Solver++-3 (:data:`MASSES_FROM_10`).  Measured
    (the largest |f_k − p_k| minus 4 standard errors, against the 0.02 allowed): at 20 NFE
    ≤ +0.012 for every solver; at 10 NFE ≤ −0.004 for those of :data:`MASSES_FROM_10`,
    but up to +0.048 (DPM-Solver-1, sub-VP) and +0.073 (Heun, sub-VP) for the others."""
    sde = _sde(name)
    score = MIX.score_fn(sde)
    z = sde.prior_sampling(jax.random.PRNGKey(3), (NUM, 2))
    ref, _ = sampling.get_ode_sampler(sde, z.shape, 1e-6, 1e-6)(None, score, z)
    for label in METHODS:
        errors = []
        for nfe, bound in zip((10, 15, 20), RMS_BOUND[label]):
            x, _ = _sampler(sde, z.shape, label, nfe)(None, score, z)
            errors.append(_rms(x, ref))
            assert errors[-1] <= bound, (label, nfe, errors)
            if nfe == 20 or label in MASSES_FROM_10:
                _assert_component_mass(x, MIX, 0.02, (name, label, nfe))
        assert errors[-1] < errors[0], (label, errors)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vp', 've', 'subvp'])
def test_convergence_orders(name):
    """Slope of log RMS error against log NFE, float64: DPM-Solver-1 ≈ 1, DPM-Solver-2
    and Heun ≈ 2, DPM-Solver-3 ≈ 3 (:data:`ORDER_NFES`, :data:`ORDER_WINDOW`).  Measured
    (VP / VE / sub-VP): 0.99 / 1.00 / 0.99; 2S 2.15 / 2.06 / 2.23; 3S 2.96 / 2.88 / 2.93;
    ++2M 1.99 / 1.88 / 1.98; ++3M 3.15 / 2.86 / 3.05; Heun 2.19 / 2.09 / 2.22."""
    sde = _sde(name)
    with jax.enable_x64(True):
        score = MIX.score_fn(sde)
        z = jnp.asarray(sde.prior_sampling(jax.random.PRNGKey(3), (64, 2)), jnp.float64)
        ref, _ = sampling.get_ode_sampler(sde, z.shape, 1e-11, 1e-11)(None, score, z)
        for label, (order, nfes) in ORDER_NFES.items():
            errors = [_rms(_sampler(sde, z.shape, label, n)(None, score, z)[0], ref) for n in nfes]
            slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
            print(name, label, nfes, [f'{e:.2e}' for e in errors], f'slope {slope:.2f}')
            lo, hi = ORDER_WINDOW[order]
            assert lo <= slope <= hi, (label, nfes, errors, slope)


def test_ddim_with_eta_one_samples_the_mixture():
    """DDIM with η = 1 (ancestral: noise c² = σ_t²(1 − e^{−2h}) each step) at 100 steps
    has the mixture's component masses (measured excess ≤ −0.02 over 4 standard errors)
    and moments (bias allowance 0.06; measured |Δ| ≤ 0.057 in the mean, 0.038 in the
    covariance; at 20 steps the variance is 0.13–0.23 short)."""
    for name in ('vp', 've', 'subvp'):
        sde = _sde(name)
        x, _ = sampling.get_ddim_sampler(sde, (NUM, 2), 100, eta=1.0)(
            jax.random.PRNGKey(5), MIX.score_fn(sde)
        )
        _assert_component_mass(x, MIX, 0.02, name)
        _assert_moments(x, MIX.mean, MIX.cov, 0.06, name)


def test_class_conditional_sampling_with_dpm_solver_plus_plus():
    """DPM-Solver++ multistep (2M and 3M, 20 NFE), the recommended guided solver, with the
    exact classifier ∇log p_t(y | x) of a mixture's component samples that component
    (bias allowance 0.03; measured |Δ| ≤ 0.021 in the mean, 0.019 in the covariance).
    On VESDE(0.01, 10) the prior N(0, 100 I) is 0.2 standard deviations off the
    component's p_T, which moves its samples by 0.1; VP and sub-VP are tested."""
    mix = mixture.GaussianMixture(
        np.array([0.3, 0.7]),
        np.array([[-2.0, 0.0], [2.0, 1.0]]),
        np.array([0.3 * np.eye(2), [[0.5, 0.2], [0.2, 0.4]]]),
    )
    for name in ('vp', 'subvp'):
        sde = _sde(name)

        def grad_fn(x, t, y):
            return jax.grad(lambda x: jnp.sum(mix.log_posterior(sde, x, t)[:, y]))(x)

        score = sampling.conditional_score_fn(mix.score_fn(sde), grad_fn, 0)
        for order in (2, 3):
            sampler = sampling.get_dpm_solver_sampler(sde, (NUM, 2), 20, order, 'multistep')
            x, _ = sampler(jax.random.PRNGKey(12), score)
            _assert_moments(x, mix.means[0], mix.covs[0], 0.03, (name, order))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vp', 've', 'subvp'])
def test_inpainting_and_colorization_by_the_fast_solvers(name):
    """The known part is kept exactly (the grey level to float32 rounding).  Replacement
    conditions the unknown part, with the bias docs/controllable.md explains: x₁'s mean
    (exact shift +0.545) moves 39–54 % of the way (measured; asserted ≥ 25 %) for
    DPM-Solver++3M (20 NFE), Heun (10 steps) and DDIM η = 1 (100 steps); colorization's
    chroma moments are within 0.1 of the exact conditional (0.35 for Heun's covariance:
    measured 0.08 and 0.31)."""
    gauss, sde = _gaussian3(), _sde(name)
    plans = {
        'DPM-Solver++3M': (
            sampling.dpm_solver_plan(sde, 20, 3, 'multistep', 'dpmsolver++', 'logSNR', 1e-3),
            0.1,
        ),
        'Heun': (sampling.heun_plan(sde, 10, 7.0, 1e-3), 0.35),
        'DDIM eta=1': (sampling.ddim_plan(sde, 100, 1.0, 1e-3), 0.1),
    }
    value, grey = 1.5, 0.2
    mean_i, _ = _condition(gauss.mean, gauss.cov, np.eye(3)[0], value)
    u, chroma = np.ones(3) / np.sqrt(3.0), sampling.COLOR_BASIS[:, 1:]
    mean_c, cov_c = _condition(gauss.mean, gauss.cov, u, np.sqrt(3.0) * grey)
    for label, (plan, cov_bias) in plans.items():
        data = jnp.zeros((NUM, 3)).at[:, 0].set(value)
        inpaint = sampling.get_solver_inpainter(sde, plan)
        x = np.asarray(inpaint(jax.random.PRNGKey(10), gauss.score_fn(sde), data, np.eye(3)[0]))
        assert (x[:, 0] == value).all(), label
        shift = (x[:, 1].mean() - gauss.mean[1]) / (mean_i[1] - gauss.mean[1])
        assert shift >= 0.25, (label, shift)
        colorize = sampling.get_solver_colorizer(sde, plan)
        x = np.asarray(
            colorize(jax.random.PRNGKey(11), gauss.score_fn(sde), jnp.full((NUM, 3), grey))
        )
        np.testing.assert_allclose(x.mean(-1), grey, atol=1e-5)
        c = x @ chroma
        assert np.abs(c.mean(0) - mean_c @ chroma).max() <= 0.1, label
        assert np.abs(np.cov(c.T) - chroma.T @ cov_c @ chroma).max() <= cov_bias, label


# --- the config: get_sampling_fn, validation ------------------------------------------------
def _config(**fields):
    config = digits_lw_is.get_config()
    config.sampling.update(fields)
    return config


def test_get_sampling_fn_runs_the_fast_methods_of_the_config():
    """sampling.method dpm_solver / ddim / heun and their fields give the library's
    samplers (same numbers through the inverse scaler, same NFE)."""
    sde, shape = _sde('ve'), (3, 2)
    dpm = dict(order=2, solver_type='singlestep', algorithm='dpmsolver', skip_type='time_quadratic')
    cases = [  # (config.sampling fields, the library's sampler, its NFE)
        (
            dict(method='dpm_solver', steps=8, denoise_to_zero=True, **dpm),
            sampling.get_dpm_solver_sampler(sde, shape, 8, **dpm, denoise_to_zero=True),
            9,
        ),
        (
            dict(method='ddim', steps=6, eta=0.5, skip_type='time_uniform'),
            sampling.get_ddim_sampler(sde, shape, 6, 0.5, skip_type='time_uniform'),
            6,
        ),
        (dict(method='heun', steps=4, rho=5.0), sampling.get_heun_sampler(sde, shape, 4, 5.0), 8),
    ]
    score = MIX.score_fn(sde)
    for fields, direct, expected in cases:
        fn = sampling.get_sampling_fn(_config(**fields), sde, shape, lambda x: 2.0 * x + 1.0)
        x, nfe = fn(jax.random.PRNGKey(13), score)
        ref, ref_nfe = direct(jax.random.PRNGKey(13), score)
        np.testing.assert_allclose(np.asarray(x), 2.0 * np.asarray(ref) + 1.0, rtol=1e-6)
        assert nfe == ref_nfe == expected


@pytest.mark.parametrize(
    'fields, field',
    [
        (dict(method='dpm'), 'sampling.method'),
        (dict(order=4), 'sampling.order'),
        (dict(solver_type='adaptive'), 'sampling.solver_type'),
        (dict(algorithm='dpmsolver+'), 'sampling.algorithm'),
        (dict(skip_type='karras'), 'sampling.skip_type'),
        (dict(steps=0), 'sampling.steps'),
        (dict(rho=0.0), 'sampling.rho'),
        (dict(eta=1.5), 'sampling.eta'),
        (dict(method='heun', task='inpaint', inpaint_resample=3), 'sampling.inpaint_resample'),
    ],
)
def test_validation_names_the_fast_sampling_field(fields, field):
    with pytest.raises(UserError, match=f'config\\.{field}='):
        validation.validate_config(_config(**fields), num_devices=1)


@pytest.mark.parametrize('method', sampling.FAST_METHODS)
def test_every_fast_method_validates(method):
    validation.validate_config(_config(method=method, task='inpaint'), num_devices=1)


# --- end to end: --mode sample ---------------------------------------------------------------
_FAST = {
    'eval.end_ckpt': -1,
    'eval.batch_size': 8,
    'sampling.method': 'dpm_solver',
    'sampling.steps': 6,
    'sampling.num_samples': 3,
}
_CLASSIFIER = {
    'classifier.blocks_per_group': 1,
    'classifier.channel_multiplier': 1,
    'classifier.n_iters': 10,
    'classifier.batch_size': 16,
    'classifier.eval_freq': 10,
    'classifier.snapshot_freq': 10,
    'classifier.warmup': 0,
}


@pytest.mark.extended
@pytest.mark.slow
def test_sample_mode_runs_the_digits_tasks_with_the_fast_solvers(tmp_path):
    """A tiny DIGITS model and classifier; ``run_lib.sample`` with DPM-Solver++ multistep
    (class-conditional, the recommended guided solver, and unconditional) and Heun
    (inpainting, which keeps the known pixels)."""
    workdir = str(tmp_path)
    config = train_utils.load_config('digits', {**_FAST, **_CLASSIFIER})
    run_lib.train(config, workdir)
    run_lib.train_classifier(config, workdir)
    tasks = [
        ('class_conditional', {'sampling.classes': (1, 3)}),
        ('unconditional', {}),
        ('inpaint', {'sampling.method': 'heun', 'sampling.steps': 3}),
    ]
    for task, fields in tasks:
        overrides = {**_FAST, **_CLASSIFIER, **fields, 'sampling.task': task}
        metrics = run_lib.sample(train_utils.load_config('digits', overrides), workdir)
        arrays = load_npz(os.path.join(workdir, 'sample', f'{task}.npz'))
        assert np.isfinite(arrays['samples']).all(), task
        if task == 'inpaint':
            assert metrics['known_max_abs_change'] < 1e-5
        if task == 'class_conditional':
            np.testing.assert_array_equal(arrays['labels'], [1, 1, 1, 3, 3, 3])


@pytest.mark.slow
def test_sample_mode_colorizes_with_a_fast_solver(tmp_path):
    """A tiny PHOTOS model colorized by singlestep DPM-Solver-3: the grey level is kept to
    float32 rounding of the colour basis (as tests/test_sample_runner.py's PC run)."""
    photos = photos_config.get_config()
    fields = {**train_utils.TINY['digits'], **_FAST, 'sampling.task': 'colorize'}
    fields.update({'sampling.order': 3, 'sampling.solver_type': 'singlestep'})
    for field, value in fields.items():
        train_utils.set_field(photos, field, value)
    run_lib.train(photos, str(tmp_path))
    metrics = run_lib.sample(photos, str(tmp_path))
    samples = load_npz(str(tmp_path / 'sample' / 'colorize.npz'))['samples']
    bound = 32 * np.finfo(np.float32).eps * max(1.0, float(np.abs(samples).max()))
    assert metrics['grey_max_abs_change'] < bound


@pytest.mark.parametrize('output', solver_plans.OUTPUTS)
def test_multistep_third_order_step_is_exact_for_quadratic_outputs(output):
    """One multistep DPM-Solver-3 stage from (t_n, t_{n−1}, t_{n−2}) to t, with model
    outputs m(λ) quadratic in λ, equals the exact solution of docs/MATH.md §Fast sampling
    (its integral by quadrature; float64, to 1e-10).
    With the reference code's D₂ (half as large) it is off by 6.4e-3 here (data form)."""
    sched = solver_plans.Schedule(_sde('vp'))
    times = np.array([0.5, 0.6, 0.72])  # t_n, t_{n−1}, t_{n−2}: unequal λ steps
    t = 0.4
    stage = solver_plans._multistep_stage(sched, output, times, t)
    lam = sched.lam(np.append(times, t))
    poly = np.array([0.3, -1.2, 0.7])  # m(λ) = 0.3 − 1.2 λ + 0.7 λ²
    m = np.polyval(poly[::-1], lam[:3])
    alpha_t, sigma_t, _ = sched.point(t)
    alpha_n, sigma_n, _ = sched.point(times[0])
    x = 1.3
    if output == 'noise':  # x_t = (α_t/α_s) x − α_t ∫ e^{−λ} ε̂ dλ
        integral = integrate.quad(lambda v: np.exp(-v) * np.polyval(poly[::-1], v), lam[0], lam[3])
        exact = alpha_t / alpha_n * x - alpha_t * integral[0]
    else:  # x_t = (σ_t/σ_s) x + σ_t ∫ e^{λ} x̂₀ dλ
        integral = integrate.quad(lambda v: np.exp(v) * np.polyval(poly[::-1], v), lam[0], lam[3])
        exact = sigma_t / sigma_n * x + sigma_t * integral[0]
    got = stage.a * x + np.dot(stage.b, m)
    np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-12)
