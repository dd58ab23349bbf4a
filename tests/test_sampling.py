"""sampling: PC, ODE and conditional samplers against closed-form Gaussian mixtures.

Every sampler is driven by the exact score of a diffused mixture (``mixture.py``), so any
deviation from the mixture's moments is Monte-Carlo error or discretization bias.
Moment tolerance (``_assert_moments``): |Δ| ≤ 4 standard errors (estimated from the
samples: sd/√n for means, sd of the centred products/√n for covariances) + a stated bias
allowance for the discretization (N steps) or the method.

Moments cannot see the mixture weights, so the samplers of the non-Gaussian targets (MIX
and the diffused MIX) also pass a distributional check.  Component-mass tolerance
(``_assert_component_mass``): each sample x goes to the component of highest posterior
responsibility under the exact target, k̂(x) = argmax_k w_k N(x; μ_k, Σ_k); the fraction f_k
of the n samples per component is compared with the fraction p_k that M = 10⁶ exact draws
get under the same rule:  |f_k − p_k| ≤ 4 √(p_k (1 − p_k) (1/n + 1/M)) + 0.02, i.e. 4
binomial standard errors of the difference of the two estimates (a false alarm about 6e-5
per component) + a bias allowance of 0.02 for the discretization (measured |f_k − p_k| ≤
0.041, at most 2.7 standard errors, over all samplers).  Swapping two mixture weights fails
``_assert_component_mass`` (w_1 ↔ w_2 of MIX moves ≈ 0.2 of the mass, against tolerances
of 0.057-0.064 at n = 2000), even after an affine map restores the mean and covariance
(``test_component_mass_check_rejects_swapped_weights``).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import mixture
import sampling
import sde_lib
from errors import UserError

N = 200  # discretization steps of the PC samplers
NUM = 2000  # samples per moment check
EXACT = 10**6  # exact draws for the reference component masses
MIX = mixture.random_mixture(0, 3, 2, 1.0)  # a non-Gaussian 2-D target
PREDICTORS = ('euler_maruyama', 'reverse_diffusion', 'ancestral_sampling')
CORRECTORS = ('none', 'langevin', 'ald')


def _sde(name: str, n: int = N) -> sde_lib.SDE:
    return {
        've': lambda: sde_lib.VESDE(0.01, 10.0, n),
        'vp': lambda: sde_lib.VPSDE(0.1, 20.0, n),
        'subvp': lambda: sde_lib.subVPSDE(0.1, 20.0, n),
    }[name]()


def _assert_moments(x, mean, cov, bias, what=''):
    x = np.asarray(x, np.float64)
    assert np.isfinite(x).all(), what
    n = len(x)
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]
    se_mean = x.std(0) / np.sqrt(n)
    se_cov = products.std(0) / np.sqrt(n)
    err_mean = np.abs(x.mean(0) - mean)
    err_cov = np.abs(np.cov(x.T) - cov)
    assert (err_mean <= 4 * se_mean + bias).all(), (what, err_mean, se_mean)
    assert (err_cov <= 4 * se_cov + bias).all(), (what, err_cov, se_cov)


def _component_log_densities(mix, x):
    """log w_k N(x; μ_k, Σ_k) [n, K] in float64; their argmax over k is the component of
    highest posterior responsibility r_k(x) = w_k N(x; μ_k, Σ_k) / p(x)."""
    x = np.asarray(x, np.float64)
    maha = np.stack(
        [np.sum((x - m) @ np.linalg.inv(c) * (x - m), -1) for m, c in zip(mix.means, mix.covs)], -1
    )
    logdet = np.linalg.slogdet(mix.covs)[1]
    return np.log(mix.weights) - 0.5 * (maha + logdet + mix.dim * np.log(2 * np.pi))


def _component_mass(mix, x):
    """f_k = #{x : k̂(x) = k} / n, k̂(x) = argmax_k r_k(x) under ``mix``."""
    assigned = np.argmax(_component_log_densities(mix, x), -1)
    return np.bincount(assigned, minlength=len(mix.weights)) / len(assigned)


_EXACT_MASS = {}


def _exact_component_mass(mix):
    """p_k = P(k̂(x) = k) for x ~ mix, from EXACT exact draws (cached per mixture)."""
    key = tuple(a.tobytes() for a in (mix.weights, mix.means, mix.covs))
    if key not in _EXACT_MASS:
        _EXACT_MASS[key] = _component_mass(mix, mix.sample(jax.random.PRNGKey(99), EXACT))
    return _EXACT_MASS[key]


def _assert_component_mass(x, mix, bias, what=''):
    """|f_k − p_k| ≤ 4 √(p_k (1 − p_k) (1/n + 1/M)) + bias for every component k."""
    x = np.asarray(x, np.float64)
    assert np.isfinite(x).all(), what
    exact = _exact_component_mass(mix)
    observed = _component_mass(mix, x)
    se = np.sqrt(exact * (1 - exact) * (1 / len(x) + 1 / EXACT))
    err = np.abs(observed - exact)
    assert (err <= 4 * se + bias).all(), (what, observed, exact, se)


def _diffused(mix, alpha, sigma):
    """p_t of ``mix``: Σ_k w_k N(α μ_k, α² Σ_k + σ² I)."""
    return mixture.GaussianMixture(
        mix.weights, alpha * mix.means, alpha**2 * mix.covs + sigma**2 * np.eye(mix.dim)
    )


def _swap_weights(mix, i, j, keep_moments=False):
    """``mix`` with w_i ↔ w_j.  With ``keep_moments`` it is then moved by the affine map
    x ↦ m + L L_s⁻¹ (x − m_s) (m, m_s the means and L, L_s the Cholesky factors of the
    covariances of ``mix`` and of the swapped mixture): its mean and covariance are mix's,
    m and L L_s⁻¹ (L_s L_sᵀ) L_s⁻ᵀ Lᵀ = L Lᵀ, but its weights are not."""
    weights = mix.weights.copy()
    weights[[i, j]] = weights[[j, i]]
    swapped = mixture.GaussianMixture(weights, mix.means, mix.covs)
    if not keep_moments:
        return swapped
    a = np.linalg.cholesky(mix.cov) @ np.linalg.inv(np.linalg.cholesky(swapped.cov))
    return mixture.GaussianMixture(
        weights, (mix.means - swapped.mean) @ a.T + mix.mean, a @ mix.covs @ a.T
    )


def _counting(score_fn, counter):
    """score_fn that counts its evaluations on the host (one per call of a batch)."""

    def counted(x, t):
        jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return score_fn(x, t)

    return counted


def _gaussian3():
    """A correlated 3-D Gaussian (a one-component mixture)."""
    mean = np.array([0.5, -0.3, 1.0])
    cov = np.array([[1.1, 0.6, 0.3], [0.6, 1.1, 0.4], [0.3, 0.4, 0.9]])
    return mixture.GaussianMixture(np.ones(1), mean[None], cov[None])


def _condition(mean, cov, u, value):
    """Exact moments of x ~ N(mean, cov) given uᵀx = value."""
    cu = cov @ u
    var = u @ cu
    return mean + cu * (value - u @ mean) / var, cov - np.outer(cu, cu) / var


# --- the component-mass check ------------------------------------------------------------
@pytest.mark.parametrize('case', ['exact', 'swapped', 'swapped, same moments'])
def test_component_mass_check_rejects_swapped_weights(case):
    """Swapping two mixture weights fails ``_assert_component_mass``: NUM draws of MIX with
    w_1 ↔ w_2 (0.197 ↔ 0.411: |f_k − p_k| = 0.20, 0.21 in components 1, 2, against
    tolerances 4 standard errors + 0.02 = 0.057, 0.064) are rejected, also when an affine
    map gives them exactly MIX's mean and covariance (|f_k − p_k| = 0.09, 0.14 in
    components 0, 2; ``_assert_moments`` passes them, even with no bias allowance);
    NUM exact draws of MIX pass (|f_k − p_k| ≤ 0.007)."""
    target = {
        'exact': MIX,
        'swapped': _swap_weights(MIX, 1, 2),
        'swapped, same moments': _swap_weights(MIX, 1, 2, keep_moments=True),
    }[case]
    x = target.sample(jax.random.PRNGKey(20), NUM)
    if case == 'exact':
        _assert_component_mass(x, MIX, 0.02, case)
        return
    with pytest.raises(AssertionError):
        _assert_component_mass(x, MIX, 0.02, case)
    if case == 'swapped, same moments':
        np.testing.assert_allclose(target.mean, MIX.mean, atol=1e-12)
        np.testing.assert_allclose(target.cov, MIX.cov, atol=1e-12)
        _assert_moments(x, MIX.mean, MIX.cov, 0.0, case)  # the moments cannot tell


# --- PC sampler -------------------------------------------------------------------------
@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_pc_predictor_corrector_combinations_reproduce_mixture_moments(sde_name):
    """Every predictor × corrector (incl. DDPM / SMLD ancestral sampling); bias allowances
    0.05 (moments) and 0.02 (component masses) for N = 200.  Ancestral sampling is VE/VP
    only (sub-VP: see the next test)."""
    sde = _sde(sde_name)
    score_fn = MIX.score_fn(sde)
    combos = [
        (p, c)
        for p in PREDICTORS
        for c in CORRECTORS
        if not (p == 'ancestral_sampling' and sde_name == 'subvp')
    ]
    samplers = [sampling.get_pc_sampler(sde, (NUM, 2), p, c, snr=0.16) for p, c in combos]
    # one jit for all combinations: half the compile time of one jit each
    results = jax.jit(lambda rng: [s(rng, score_fn) for s in samplers])(jax.random.PRNGKey(1))
    for (predictor, corrector), (x, nfe) in zip(combos, results):
        assert nfe == N * (1 if corrector == 'none' else 2)
        _assert_moments(x, MIX.mean, MIX.cov, 0.05, (sde_name, predictor, corrector))
        _assert_component_mass(x, MIX, 0.02, (sde_name, predictor, corrector))


def test_pc_probability_flow_predictors():
    """Bias allowances 0.05 (moments) and 0.02 (component masses) for N = 200."""
    sde = _sde('vp')
    predictors = ('euler_maruyama', 'reverse_diffusion')
    samplers = [
        sampling.get_pc_sampler(sde, (NUM, 2), p, 'none', 0.16, probability_flow=True)
        for p in predictors
    ]
    results = jax.jit(lambda rng: [s(rng, MIX.score_fn(sde))[0] for s in samplers])(
        jax.random.PRNGKey(2)
    )
    for predictor, x in zip(predictors, results):
        _assert_moments(x, MIX.mean, MIX.cov, 0.05, predictor)
        _assert_component_mass(x, MIX, 0.02, predictor)


@pytest.mark.parametrize('corrector', ['langevin', 'ald'])
def test_corrector_only_samplers_on_ve(corrector):
    """NCSN-style corrector-only sampling ('none' + 'ald' is annealed Langevin dynamics):
    N = 50 noise levels × 20 steps, snr 0.3, 1000 samples; bias allowances 0.05 (moments)
    and 0.02 (component masses; measured |Δ| ≤ 0.041, 2.7 standard errors, for Langevin)."""
    sde = _sde('ve', 50)
    sampler = sampling.get_pc_sampler(sde, (1000, 2), 'none', corrector, 0.3, n_steps=20)
    x, nfe = sampler(jax.random.PRNGKey(3), MIX.score_fn(sde))
    assert nfe == 50 * 20
    _assert_moments(x, MIX.mean, MIX.cov, 0.05, corrector)
    _assert_component_mass(x, MIX, 0.02, corrector)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_correctors_leave_p_t_invariant(sde_name):
    """At fixed t = 0.3, 100 corrector steps from exact samples of p_t stay at p_t
    (mean α μ, cov α² Σ + σ² I); checks the step size and α on every SDE, sub-VP
    included (the original crashed there).  Bias allowances 0.05 (moments) and 0.02
    (masses of the components of p_t = Σ_k w_k N(α μ_k, α² Σ_k + σ² I)), Langevin at
    snr 0.16."""
    sde = _sde(sde_name)
    t = jnp.full((NUM,), 0.3)
    x0 = MIX.sample(jax.random.PRNGKey(4), NUM)
    mean_t, std_t = sde.marginal_prob(x0, t)
    xt = mean_t + std_t[:, None] * jax.random.normal(jax.random.PRNGKey(5), x0.shape)
    alpha, sigma = float(np.exp(sde.log_mean_coeff(0.3))), float(sde.std(0.3))
    correctors = [
        sampling.get_corrector(name)(sde, MIX.score_fn(sde), 0.16, 100)
        for name in ('langevin', 'ald')
    ]
    results = jax.jit(lambda rng: [c.update(rng, xt, t)[0] for c in correctors])(
        jax.random.PRNGKey(6)
    )
    for corrector, x in zip(('langevin', 'ald'), results):
        _assert_moments(
            x,
            alpha * MIX.mean,
            alpha**2 * MIX.cov + sigma**2 * np.eye(2),
            0.05,
            (sde_name, corrector),
        )
        _assert_component_mass(x, _diffused(MIX, alpha, sigma), 0.02, (sde_name, corrector))


def _expected_predictor_step(sde, name, flow, x, s, t):
    """(x_mean, noise std) of one predictor step, from the formulas of Score SDE App. E/F;
    ``flow``: probability flow (half the score term, no noise)."""
    i = int(np.floor(t * (sde.N - 1) + 1e-4))  # sde.timestep_index
    half, noise = (0.5, 0.0) if flow else (1.0, 1.0)
    if name == 'euler_maruyama' or isinstance(sde, sde_lib.subVPSDE):  # EM, Δt = 1/N
        f, g2 = float(sde.drift_coeff(t)), float(sde.diffusion(t)) ** 2
        return x - (f * x - half * g2 * s) / sde.N, noise * np.sqrt(g2 / sde.N)
    if isinstance(sde, sde_lib.VESDE):  # SMLD, σ_{-1} = 0
        var = sde.discrete_sigmas[i] ** 2
        prev = sde.discrete_sigmas[i - 1] ** 2 if i else 0.0
        if name == 'ancestral_sampling':
            return x + (var - prev) * s, np.sqrt(prev * (var - prev) / var)
        return x + half * (var - prev) * s, noise * np.sqrt(var - prev)
    beta = sde.discrete_betas[i]  # VP: DDPM
    if name == 'ancestral_sampling':
        return (x + beta * s) / np.sqrt(1 - beta), np.sqrt(beta)
    return (2 - np.sqrt(1 - beta)) * x + half * beta * s, noise * np.sqrt(beta)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_predictor_updates_match_their_formulas(sde_name):
    """One step at t = 0.37: x_mean exactly, and the noise (x − x_mean)/std ~ N(0, 1) by
    its second moment over 20000 × 2 draws (|E r² − 1| ≤ 0.03, 4 standard errors)."""
    sde = _sde(sde_name)
    t = 0.37
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(17), (20000, 2))
    s = np.asarray(MIX.score(sde, x, jnp.full((20000,), t)), np.float64)
    cases = [
        (name, flow)
        for name in PREDICTORS
        for flow in (False, True)
        if not (name == 'ancestral_sampling' and (flow or sde_name == 'subvp'))
    ]
    predictors = [
        sampling.get_predictor(name)(sde, MIX.score_fn(sde), flow) for name, flow in cases
    ]
    steps = jax.jit(lambda rng: [p.update(rng, x, jnp.full((20000,), t)) for p in predictors])(
        jax.random.PRNGKey(18)
    )
    for (name, flow), step in zip(cases, steps):
        x_new, x_mean = (np.asarray(a, np.float64) for a in step)
        mean, std = _expected_predictor_step(sde, name, flow, np.asarray(x, np.float64), s, t)
        np.testing.assert_allclose(x_mean, mean, rtol=1e-4, atol=1e-5, err_msg=name)
        if std == 0.0:
            np.testing.assert_array_equal(x_new, x_mean)
        else:
            assert abs(np.mean(((x_new - x_mean) / std) ** 2) - 1.0) < 0.03, (name, flow)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_corrector_step_sizes(sde_name):
    """One step x ← x + ε s + √(2ε) z: ε = 2α(snr ‖z‖/‖s‖)² (Langevin, norms averaged
    over the batch) or 2α(snr σ(t))² (ALD); α = 1 − β_i (VP's ``alphas``, the same
    DDPM schedule for sub-VP) and 1 for VE.  ε and z are read back from the step."""
    sde = _sde(sde_name)
    t = jnp.full((64,), 0.37)
    x = jax.random.normal(jax.random.PRNGKey(15), (64, 2))
    score = np.asarray(MIX.score(sde, x, t))
    i = int(np.floor(0.37 * (N - 1) + 1e-4))  # sde.timestep_index
    alpha = 1.0 if sde_name == 've' else 1.0 - (0.1 + i / (N - 1) * 19.9) / N
    if sde_name == 'vp':
        assert np.isclose(alpha, sde.alphas[i])
    correctors = [
        sampling.get_corrector(name)(sde, MIX.score_fn(sde), 0.2, 1) for name in ('langevin', 'ald')
    ]
    steps = jax.jit(lambda rng: [c.update(rng, x, t) for c in correctors])(jax.random.PRNGKey(16))
    for name, step in zip(('langevin', 'ald'), steps):
        x_new, x_mean = (np.asarray(a, np.float64) for a in step)
        eps = np.sum((x_mean - np.asarray(x)) * score, -1) / np.sum(score**2, -1)
        noise = (x_new - x_mean) / np.sqrt(2 * eps)[:, None]
        if name == 'langevin':
            norm = lambda v: np.linalg.norm(v, axis=-1).mean()  # noqa: E731
            expected = 2 * alpha * (0.2 * norm(noise) / norm(score)) ** 2
        else:
            expected = 2 * alpha * (0.2 * float(sde.std(0.37))) ** 2
        np.testing.assert_allclose(eps, expected, rtol=1e-3)  # float32 read-back


def test_pc_nfe_equals_counted_score_evaluations():
    sde = _sde('ve', 10)
    counter = [0]
    sampler = sampling.get_pc_sampler(sde, (4, 2), 'reverse_diffusion', 'langevin', 0.16, n_steps=3)
    x, nfe = sampler(jax.random.PRNGKey(0), _counting(MIX.score_fn(sde), counter))
    jax.block_until_ready(x)
    assert nfe == 10 * (1 + 3) == counter[0]
    assert isinstance(nfe, int)
    _, nfe_none = sampling.get_pc_sampler(sde, (4, 2), 'none', 'ald', 0.1, n_steps=2)(
        jax.random.PRNGKey(0), MIX.score_fn(sde)
    )
    assert nfe_none == 10 * 2


def test_pc_denoise_returns_the_last_noise_free_mean():
    """With the same rng, x (denoise=False) − x_mean (denoise=True) is the last step's
    noise: G z with G = σ_0 = 0.01 for the VE reverse-diffusion step at t = ε (index 0)."""
    sde = _sde('ve', 10)
    samplers = [
        sampling.get_pc_sampler(sde, (2000, 2), 'reverse_diffusion', 'none', 0.16, denoise=d)
        for d in (True, False)
    ]
    x_mean, x = jax.jit(lambda rng: [s(rng, MIX.score_fn(sde))[0] for s in samplers])(
        jax.random.PRNGKey(19)
    )
    ratio = (np.asarray(x, np.float64) - np.asarray(x_mean)) / sde.discrete_sigmas[0]
    assert abs(np.mean(ratio**2) - 1.0) < 0.1


def test_ancestral_sampling_rejects_sub_vp_and_probability_flow():
    with pytest.raises(UserError, match='ancestral_sampling.*subVPSDE.*reverse_diffusion'):
        sampling.get_pc_sampler(_sde('subvp'), (2, 2), 'ancestral_sampling', 'none', 0.1)
    with pytest.raises(UserError, match='probability_flow=False'):
        sampling.get_pc_sampler(
            _sde('vp'), (2, 2), 'ancestral_sampling', 'none', 0.1, probability_flow=True
        )
    with pytest.raises(UserError, match="predictor='heun' is not known"):
        sampling.get_pc_sampler(_sde('vp'), (2, 2), 'heun', 'none', 0.1)


# --- probability-flow ODE -----------------------------------------------------------------
def test_ode_sampler_moments_and_encode_decode_round_trip():
    """dopri5 at rtol = atol = 1e-6 (at 1e-5 the round trip error reaches 1.5e-3; at 1e-6
    measured 4e-5): data → z is N(0, I), z → data is x again, prior draws → the mixture's
    moments (bias allowance 0.03) and component masses (bias allowance 0.02)."""
    sde = _sde('vp')
    score_fn = MIX.score_fn(sde)
    x = MIX.sample(jax.random.PRNGKey(8), 1000)
    z, nfe_enc = sampling.get_ode_encoder(sde, 1e-6, 1e-6)(score_fn, x)
    _assert_moments(z, np.zeros(2), np.eye(2), 0.03, 'encoded data')
    decode = sampling.get_ode_sampler(sde, x.shape, 1e-6, 1e-6)
    x_back, nfe_dec = decode(None, score_fn, z)
    assert int(nfe_enc) > 1 and int(nfe_dec) > 1
    np.testing.assert_allclose(np.asarray(x_back), np.asarray(x), atol=1e-3)
    x_new, _ = decode(None, score_fn, sde.prior_sampling(jax.random.PRNGKey(7), x.shape))
    _assert_moments(x_new, MIX.mean, MIX.cov, 0.03, 'ode samples')
    _assert_component_mass(x_new, MIX, 0.02, 'ode samples')


@pytest.mark.parametrize(
    'name, ode_time', [('vp', 'sigma'), ('ve', 'log_sigma'), ('subvp', 'log_sigma')]
)
def test_ode_sampler_in_another_time_variable_gives_the_same_samples(name, ode_time):
    """The same prior draws decoded in log σ̃ or σ̃ instead of t land on the same samples
    (rtol = atol = 1e-5: max |Δx| measured 8e-3 for sub-VP in log σ̃, ≤ 1.5e-3 elsewhere),
    and those samples have the mixture's component masses."""
    sde = _sde(name)
    score_fn = MIX.score_fn(sde)
    z = sde.prior_sampling(jax.random.PRNGKey(3), (NUM, 2))
    x_t, _ = sampling.get_ode_sampler(sde, z.shape)(None, score_fn, z)
    x_u, _ = sampling.get_ode_sampler(sde, z.shape, ode_time=ode_time)(None, score_fn, z)
    np.testing.assert_allclose(np.asarray(x_u), np.asarray(x_t), atol=2e-2)
    _assert_component_mass(x_u, MIX, 0.02, f'ode samples in {ode_time}')


def test_ode_nfe_is_counted_and_examples_are_independent_of_the_batch():
    sde = _sde('subvp', 10)
    score_fn = MIX.score_fn(sde)
    sampler = sampling.get_ode_sampler(sde, (8, 2), rtol=1e-4, atol=1e-4, denoise=True)
    rng = jax.random.PRNGKey(9)
    x8, nfe8 = sampler(rng, score_fn)
    # the default z is per-example prior draws with keys fold_in(rng, i); decoding the
    # first three of them alone gives the same examples
    z = jnp.stack([sde.prior_sampling(jax.random.fold_in(rng, i), (2,)) for i in range(8)])
    x3, nfe3 = sampler(None, score_fn, z[:3])
    np.testing.assert_allclose(np.asarray(x3), np.asarray(x8[:3]), rtol=1e-6, atol=1e-6)
    assert int(nfe8) >= int(nfe3)
    counter = [0]
    x1, nfe1 = sampler(None, _counting(score_fn, counter), z[:1])
    jax.block_until_ready(x1)
    assert int(nfe1) == counter[0] > 1  # the solve plus one denoising evaluation
    # XLA compiles a batch of one differently; the rounding steers the step-size
    # controller (measured 4.6e-4 difference), so only agreement to the tolerance holds
    np.testing.assert_allclose(np.asarray(x1), np.asarray(x8[:1]), atol=3e-3)


def test_tweedie_denoise_is_the_gaussian_posterior_mean():
    """E[x_0 | x_t] = μ + α Σ (α² Σ + σ² I)⁻¹ (x_t − α μ) for x_0 ~ N(μ, Σ)."""
    gauss = _gaussian3()
    for name in ('ve', 'vp', 'subvp'):
        sde = _sde(name)
        t = jnp.full((5,), 0.4)
        xt = jax.random.normal(jax.random.PRNGKey(14), (5, 3))
        alpha, sigma = float(np.exp(sde.log_mean_coeff(0.4))), float(sde.std(0.4))
        gain = alpha * gauss.cov @ np.linalg.inv(alpha**2 * gauss.cov + sigma**2 * np.eye(3))
        expected = gauss.mean + (np.asarray(xt) - alpha * gauss.mean) @ gain.T
        got = sampling.tweedie_denoise(sde, gauss.score_fn(sde), xt, t)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


# --- controllable generation --------------------------------------------------------------
def test_inpainting_keeps_known_part_and_samples_the_gaussian_conditional():
    """Replacement inpainting is the paper's approximation; with a Langevin corrector it
    matches the exact conditional within 0.1 (measured ≤ 0.05), against a 0.6 shift."""
    gauss = _gaussian3()
    sde = _sde('ve')
    value = 1.5
    data = jnp.zeros((NUM, 3)).at[:, 0].set(value)
    mask = jnp.array([1.0, 0.0, 0.0])
    inpaint = sampling.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin', 0.16)
    x = np.asarray(inpaint(jax.random.PRNGKey(10), gauss.score_fn(sde), data, mask))
    assert (x[:, 0] == value).all()
    mean_c, cov_c = _condition(gauss.mean, gauss.cov, np.eye(3)[0], value)
    assert np.abs(mean_c[1:] - gauss.mean[1:]).max() > 0.5  # conditioning matters
    _assert_moments(x[:, 1:], mean_c[1:], cov_c[1:, 1:], 0.1, 'inpaint')


def test_colorization_keeps_grey_level_and_samples_the_chroma_conditional():
    gauss = _gaussian3()
    sde = _sde('ve')
    grey = 0.2
    colorize = sampling.get_pc_colorizer(sde, 'reverse_diffusion', 'langevin', 0.16)
    x = np.asarray(colorize(jax.random.PRNGKey(11), gauss.score_fn(sde), jnp.full((NUM, 3), grey)))
    np.testing.assert_allclose(x.mean(-1), grey, atol=1e-5)
    u = np.ones(3) / np.sqrt(3.0)
    mean_c, cov_c = _condition(gauss.mean, gauss.cov, u, np.sqrt(3.0) * grey)
    # compare in the two chroma coordinates (the grey one is fixed)
    chroma = sampling.COLOR_BASIS[:, 1:]
    _assert_moments(x @ chroma, mean_c @ chroma, chroma.T @ cov_c @ chroma, 0.1, 'colorize')


def test_class_conditional_sampling_with_exact_classifier():
    """∇log p_t(y|x) of the mixture's component label turns the sampler into one of the
    component's distribution."""
    mix = mixture.GaussianMixture(
        np.array([0.3, 0.7]),
        np.array([[-2.0, 0.0], [2.0, 1.0]]),
        np.array([0.3 * np.eye(2), [[0.5, 0.2], [0.2, 0.4]]]),
    )
    components = [
        mixture.GaussianMixture(np.ones(1), mix.means[k : k + 1], mix.covs[k : k + 1])
        for k in range(2)
    ]
    sde = _sde('vp')

    def log_class_prob(x, t, y):  # log p_t(y | x) for a label shared by the batch
        return jnp.log(mix.weights[y]) + components[y].log_prob(sde, x, t) - mix.log_prob(sde, x, t)

    def grad_fn(x, t, y):
        return jax.grad(lambda x: jnp.sum(log_class_prob(x, t, y)))(x)

    sampler = sampling.get_pc_sampler(sde, (1000, 2), 'euler_maruyama', 'none', 0.16)
    score_fn = sampling.conditional_score_fn(mix.score_fn(sde), grad_fn, 0)
    x, _ = sampler(jax.random.PRNGKey(12), score_fn)
    _assert_moments(x, components[0].mean, components[0].cov, 0.05, 'class 0')


# --- config entry point -------------------------------------------------------------------
def _config(**overrides):
    sampling_cfg = dict(
        method='pc',
        predictor='reverse_diffusion',
        corrector='langevin',
        snr=0.16,
        n_steps_each=1,
        noise_removal=True,
        probability_flow=False,
        rtol=1e-3,
        atol=1e-3,
        eps=1e-3,
    )
    sampling_cfg.update(overrides)
    return ml_collections.ConfigDict({'sampling': sampling_cfg})


def test_get_sampling_fn_reads_the_config():
    sde = _sde('ve', 8)
    scaler = lambda x: 2.0 * x + 1.0  # noqa: E731
    score_fn = MIX.score_fn(sde)
    samplers = [  # (from the config, reference)
        (
            sampling.get_sampling_fn(_config(n_steps_each=2), sde, (3, 2), scaler),
            sampling.get_pc_sampler(sde, (3, 2), 'reverse_diffusion', 'langevin', 0.16, n_steps=2),
        ),
        (
            sampling.get_sampling_fn(_config(method='ode'), sde, (3, 2), scaler, eps=1e-2),
            sampling.get_ode_sampler(sde, (3, 2), 1e-3, 1e-3, eps=1e-2, denoise=True),
        ),
    ]
    # one jit for all: one compile
    results = jax.jit(lambda rng: [(f(rng, score_fn), ref(rng, score_fn)) for f, ref in samplers])(
        jax.random.PRNGKey(13)
    )
    for (x, nfe), (ref, ref_nfe) in results:
        np.testing.assert_allclose(np.asarray(x), 2.0 * np.asarray(ref) + 1.0, rtol=1e-6)
        assert int(nfe) == int(ref_nfe) > 1
    assert results[0][0][1] == 8 * 3


@pytest.mark.parametrize(
    'overrides, field',
    [
        (dict(method='sde'), 'config.sampling.method'),
        (dict(predictor='heun'), 'config.sampling.predictor'),
        (dict(corrector='hmc'), 'config.sampling.corrector'),
        (dict(predictor='ancestral_sampling'), 'config.sampling.predictor'),
        (dict(method='ode', ode_method='rk4'), 'config.sampling.ode_method'),
    ],
)
def test_get_sampling_fn_rejects_unknown_names(overrides, field):
    with pytest.raises(UserError, match=field.replace('.', r'\.')):
        sampling.get_sampling_fn(_config(**overrides), _sde('subvp', 8), (2, 2), lambda x: x)
