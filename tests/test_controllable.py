"""Controllable generation (Score SDE §5) proved on closed forms.

Class-conditional sampling: for a labelled Gaussian mixture the exact time-dependent
classifier is the posterior of the component label, log p_t(y | x) =
``GaussianMixture.log_posterior``, and ∇log p_t(x) + ∇log p_t(y | x) = ∇log p_t(x | y) is the
exact score of component y diffused.  With scale 1 the conditional sampler therefore
samples that component, up to the discretization; the checks are the component
assignment, the moments and a Kolmogorov–Smirnov test of a 1-D projection.

Tolerances: means and covariances within 4 standard errors estimated from the samples
(sd/√n; sd of the centred products/√n) + a bias allowance for the discretization; the
KS test's p-value above 10⁻³ (a false alarm of 10⁻³ per check for an exact sampler).

Inpainting: the replacement scheme is biased (docs/controllable.md); ``resample`` (RePaint)
must bring the conditional moments of a correlated 2-D Gaussian closer to the exact ones
by a stated margin, and every variant keeps the known part exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import mixture
import sampling
import sde_lib
from errors import UserError

N = 300  # PC steps of the class-conditional samplers
PER_CLASS = 1000  # samples per requested component
# Three well separated components (distances 3–3.5 against standard deviations ≤ 0.3):
# an exact component sample is nearer (Mahalanobis) to another component with
# probability < 10⁻⁶, so "lands in the requested component" is a ≥ 98 % check with room
# for the discretization.  Data scale ≈ 2, so VE's σ_max = 5 covers the distances
# between components (Song & Ermon 2020, technique 1).
LABELLED = mixture.GaussianMixture(
    np.array([0.2, 0.3, 0.5]),
    np.array([[-1.5, 0.0], [1.5, 0.2], [0.0, 1.8]]),
    np.array(
        [
            [[0.08, 0.03], [0.03, 0.05]],
            [[0.04, -0.02], [-0.02, 0.09]],
            [[0.06, 0.0], [0.0, 0.03]],
        ]
    ),
)


def _sde(name: str, n: int = N) -> sde_lib.SDE:
    return {
        've': lambda: sde_lib.VESDE(0.01, 5.0, n),
        'vp': lambda: sde_lib.VPSDE(0.1, 20.0, n),
        'subvp': lambda: sde_lib.subVPSDE(0.1, 20.0, n),
    }[name]()


def _posterior_grad_fn(mix, sde):
    """∇_x log p_t(y | x) from ``log_posterior``; y is [B] or one label for the batch."""

    def grad_fn(x, t, y):
        labels = jnp.broadcast_to(y, x.shape[:1])

        def log_p(x):
            return jnp.sum(mix.log_posterior(sde, x, t)[jnp.arange(x.shape[0]), labels])

        return jax.grad(log_p)(x)

    return grad_fn


def _component(mix, k):
    return mixture.GaussianMixture(np.ones(1), mix.means[k : k + 1], mix.covs[k : k + 1])


def _nearest_component(mix, x):
    """argmin_k Mahalanobis distance (x − μ_k)ᵀ Σ_k⁻¹ (x − μ_k), in float64."""
    x = np.asarray(x, np.float64)
    maha = [np.sum((x - m) @ np.linalg.inv(c) * (x - m), -1) for m, c in zip(mix.means, mix.covs)]
    return np.argmin(np.stack(maha, -1), -1)


def _assert_moments(x, mean, cov, bias, what=''):
    """|Δ mean|, |Δ cov| ≤ 4 standard errors (from the samples) + ``bias``."""
    x = np.asarray(x, np.float64)
    assert np.isfinite(x).all(), what
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]
    se_mean, se_cov = x.std(0) / np.sqrt(len(x)), products.std(0) / np.sqrt(len(x))
    err_mean, err_cov = np.abs(x.mean(0) - mean), np.abs(np.cov(x.T) - cov)
    assert (err_mean <= 4 * se_mean + bias).all(), (what, err_mean, se_mean)
    assert (err_cov <= 4 * se_cov + bias).all(), (what, err_cov, se_cov)


def _assert_is_component(mix, x, k, bias, what=''):
    """Samples ``x`` requested from component k: ≥ 98 % nearest to it, its moments (bias
    allowance ``bias``) and a KS test of the projection on (1, 0.6) against the exact
    marginal N(vᵀμ_k, vᵀΣ_k v)."""
    x = np.asarray(x, np.float64)
    hit = np.mean(_nearest_component(mix, x) == k)
    assert hit >= 0.98, (what, k, hit)
    _assert_moments(x, mix.means[k], mix.covs[k], bias, (what, k))
    v = np.array([1.0, 0.6])
    p = stats.kstest(x @ v, stats.norm(v @ mix.means[k], np.sqrt(v @ mix.covs[k] @ v)).cdf).pvalue
    assert p > 1e-3, (what, k, p)


# --- the exact classifier -----------------------------------------------------------------
@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_log_posterior_is_the_normalised_responsibility_and_completes_the_score(sde_name):
    """log p_t(k | x) against float64 NumPy, rows summing to one, and ∇log p_t(x) +
    ∇log p_t(k | x) = the score of component k diffused (what makes scale 1 exact)."""
    sde = _sde(sde_name)
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    grad_fn = _posterior_grad_fn(LABELLED, sde)
    for t_val in (0.05, 0.5, 1.0):
        t = jnp.full((64,), t_val)
        alpha, sigma = float(np.exp(sde.log_mean_coeff(t_val))), float(sde.std(t_val))
        log_post = np.asarray(LABELLED.log_posterior(sde, x, t), np.float64)
        ref = np.stack(
            [
                np.log(w)
                + stats.multivariate_normal(alpha * m, alpha**2 * c + sigma**2 * np.eye(2)).logpdf(
                    x
                )
                for w, m, c in zip(LABELLED.weights, LABELLED.means, LABELLED.covs)
            ],
            -1,
        )
        ref -= np.log(np.sum(np.exp(ref), -1, keepdims=True))
        np.testing.assert_allclose(log_post, ref, atol=2e-4, err_msg=str(t_val))
        np.testing.assert_allclose(np.exp(log_post).sum(-1), 1.0, atol=1e-5)
        for k in range(3):
            got = LABELLED.score(sde, x, t) + grad_fn(x, t, k)
            want = _component(LABELLED, k).score(sde, x, t)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-3)


# --- class-conditional sampling ------------------------------------------------------------
@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_class_conditional_pc_sampling_lands_in_the_requested_component(sde_name):
    """Reverse diffusion + Langevin (snr 0.16), N = 300, labels 0, 1, 2 requested for
    1000 samples each in one batch.  Bias allowance 0.01 on means and covariances (the
    component covariances are 0.03–0.09; measured |Δ mean| ≤ 0.020, 2.6 standard errors,
    |Δ cov| ≤ 0.0035; all samples nearest their component; KS p ≥ 0.039).  Without the
    classifier term the samples follow the weights (20/30/50 %), so the 98 % check fails."""
    sde = _sde(sde_name)
    labels = jnp.arange(3 * PER_CLASS) % 3
    score_fn = sampling.conditional_score_fn(
        LABELLED.score_fn(sde), _posterior_grad_fn(LABELLED, sde), labels
    )
    sampler = sampling.get_pc_sampler(
        sde, (3 * PER_CLASS, 2), 'reverse_diffusion', 'langevin', 0.16
    )
    x, nfe = sampler(jax.random.PRNGKey(1), score_fn)
    assert nfe == 2 * N
    x, labels = np.asarray(x), np.asarray(labels)
    for k in range(3):
        _assert_is_component(LABELLED, x[labels == k], k, 0.01, sde_name)


def test_class_conditional_ode_sampling_lands_in_the_requested_component():
    """The probability-flow ODE (dopri5, rtol = atol = 1e-5, Tweedie denoising) of the
    conditional score, VP, labels 0 and 2 (one per batch: the ODE solves each example
    alone); bias allowance 0.01 (measured |Δ mean| ≤ 0.008, |Δ cov| ≤ 0.005, KS p ≥ 0.039,
    110 NFE)."""
    sde = _sde('vp')
    grad_fn = _posterior_grad_fn(LABELLED, sde)
    sampler = sampling.get_ode_sampler(sde, (PER_CLASS, 2), 1e-5, 1e-5, denoise=True)
    score_fns = [
        sampling.conditional_score_fn(LABELLED.score_fn(sde), grad_fn, jnp.int32(k)) for k in (0, 2)
    ]
    results = jax.jit(lambda rng: [sampler(rng, s)[0] for s in score_fns])(jax.random.PRNGKey(2))
    for k, x in zip((0, 2), results):
        _assert_is_component(LABELLED, x, k, 0.01, 'ode')


def test_guidance_scale_above_one_concentrates_the_samples():
    """Classifier guidance ∇log p_t(x) + w ∇log p_t(y | x), w = 4 against w = 1, for two
    overlapping components ±(0.5, 0) with covariance 0.35² I, label 1, VP, N = 200, 2000
    samples sharing their random numbers.  With w = 1 the samples are component 1 (bias
    allowance 0.01).  With w = 4 the variance along the separating direction e₁ drops
    below 0.8 × its w = 1 value (measured 0.086 against 0.130, ratio 0.66; the SE of
    each variance is 3 %) and the mean moves away from component 0 by more than 0.1
    (measured 0.16); along e₂, where p_t(y | x) is constant, the variance is unchanged
    (4 standard errors).  Fails if the scale is ignored (the two runs would be equal)."""
    mix = mixture.GaussianMixture(
        np.array([0.5, 0.5]),
        np.array([[-0.5, 0.0], [0.5, 0.0]]),
        np.tile(0.35**2 * np.eye(2), (2, 1, 1)),
    )
    sde = _sde('vp', 200)
    grad_fn = _posterior_grad_fn(mix, sde)
    sampler = sampling.get_pc_sampler(sde, (2000, 2), 'reverse_diffusion', 'langevin', 0.16)
    score_fns = [
        sampling.conditional_score_fn(mix.score_fn(sde), grad_fn, jnp.int32(1), scale)
        for scale in (1.0, 4.0)
    ]
    plain, guided = (
        np.asarray(x, np.float64)
        for x in jax.jit(lambda rng: [sampler(rng, s)[0] for s in score_fns])(jax.random.PRNGKey(3))
    )
    _assert_moments(plain, mix.means[1], mix.covs[1], 0.01, 'scale 1')
    assert guided[:, 0].var() < 0.8 * plain[:, 0].var(), (guided.var(0), plain.var(0))
    assert guided[:, 0].mean() > plain[:, 0].mean() + 0.1, (guided.mean(0), plain.mean(0))
    se_var = 0.35**2 * np.sqrt(2 / len(guided))
    assert abs(guided[:, 1].var() - plain[:, 1].var()) < 4 * se_var


# --- the forward kernel of RePaint's resampling -----------------------------------------------
@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_diffuse_forward_maps_p_s_to_p_t(sde_name):
    """x_s ~ p_s of a 1-D N(0.7, 0.4²) data law, diffused from s = 0.2 to t = 0.3 (and
    from 0 to 1e-3, the last step) by ``_diffuse_forward``, has p_t's moments
    N(α(t) 0.7, α(t)² 0.16 + σ(t)²): 4 standard errors over 200000 draws."""
    sde = _sde(sde_name)
    n = 200000
    x0 = 0.7 + 0.4 * jax.random.normal(jax.random.PRNGKey(4), (n, 1))
    for s_val, t_val in ((0.2, 0.3), (0.0, 1e-3)):
        s, t = jnp.full((n,), s_val), jnp.full((n,), t_val)
        mean_s, std_s = sde.marginal_prob(x0, s)
        xs = mean_s + std_s[:, None] * jax.random.normal(jax.random.PRNGKey(5), x0.shape)
        xt = np.asarray(sampling._diffuse_forward(sde, jax.random.PRNGKey(6), xs, s, t), np.float64)
        alpha, sigma = float(np.exp(sde.log_mean_coeff(t_val))), float(sde.std(t_val))
        var = alpha**2 * 0.16 + sigma**2
        assert abs(xt.mean() - alpha * 0.7) <= 4 * np.sqrt(var / n), (s_val, t_val)
        assert abs(xt.var() - var) <= 4 * var * np.sqrt(2 / n), (s_val, t_val)


# --- inpainting: how exact, and RePaint ------------------------------------------------------
RHO, X1 = 0.95, 1.116  # exact x₂ | x₁: mean ρ x₁ = 1.0602, std √(1 − ρ²) = 0.3122


def _inpaint_x2(sde, snr, resample, num=4000, seed=7):
    gauss = mixture.GaussianMixture(
        np.ones(1), np.zeros((1, 2)), np.array([[[1.0, RHO], [RHO, 1.0]]])
    )
    data = jnp.zeros((num, 2)).at[:, 0].set(X1)
    inpaint = sampling.get_pc_inpainter(
        sde, 'reverse_diffusion', 'langevin', snr, resample=resample
    )
    x = np.asarray(
        inpaint(jax.random.PRNGKey(seed), gauss.score_fn(sde), data, jnp.array([1.0, 0.0]))
    )
    assert (x[:, 0] == np.float32(X1)).all(), 'the known part is kept exactly'
    return x[:, 1].astype(np.float64)


@pytest.mark.parametrize('sde_name, snr', [('vp', 0.16), ('ve', 0.075)])
def test_repaint_resampling_brings_inpainting_closer_to_the_exact_conditional(sde_name, snr):
    """2-D Gaussian, ρ = 0.95, x₁ = 1.116, N = 200, Langevin snr as given, 4000 samples
    (SE of a mean 0.005, of a std 0.0035).  The replacement scheme is off by −0.093 (VP) /
    −0.105 (VE) in the mean and +0.040 / +0.034 in the std; ``resample=3`` measured
    |Δ| ≤ 0.008 (mean) and ≤ 0.0055 (std).  Required: |Δ mean| smaller by 0.05 and
    |Δ std| by 0.015 than the original's (≥ 2.5 standard errors of the difference of the
    two errors below the measured gains), and |Δ| ≤ 0.025 / 0.015 for ``resample=3``
    (≥ 3 standard errors above the measured).  The known x₁ is kept exactly (bit-equal)."""
    sde = _sde(sde_name, 200)
    exact_mean, exact_std = RHO * X1, np.sqrt(1 - RHO**2)
    errors = {}
    for resample in (1, 3):
        x2 = _inpaint_x2(sde, snr, resample)
        errors[resample] = abs(x2.mean() - exact_mean), abs(x2.std() - exact_std)
    assert errors[3][0] <= errors[1][0] - 0.05, errors
    assert errors[3][1] <= errors[1][1] - 0.015, errors
    assert errors[3][0] <= 0.025 and errors[3][1] <= 0.015, errors


def _gaussian3():
    """A correlated 3-D Gaussian (as in test_sampling)."""
    mean = np.array([0.5, -0.3, 1.0])
    cov = np.array([[1.1, 0.6, 0.3], [0.6, 1.1, 0.4], [0.3, 0.4, 0.9]])
    return mixture.GaussianMixture(np.ones(1), mean[None], cov[None])


def test_repaint_inpainter_and_colorizer_keep_the_known_part_exactly():
    """``resample=2`` on the 3-D Gaussian (VE, N = 100): the inpainter keeps x₀ bit-exact,
    the colorizer the grey level to float32 rounding; the resample=1 runs (the original
    scheme) are tested in test_sampling."""
    gauss = _gaussian3()
    sde = sde_lib.VESDE(0.01, 10.0, 100)
    inpaint = sampling.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin', 0.16, resample=2)
    data = jnp.zeros((500, 3)).at[:, 0].set(1.5)
    x = np.asarray(
        inpaint(jax.random.PRNGKey(8), gauss.score_fn(sde), data, jnp.array([1.0, 0, 0]))
    )
    assert (x[:, 0] == 1.5).all() and np.isfinite(x).all()
    colorize = sampling.get_pc_colorizer(sde, 'reverse_diffusion', 'langevin', 0.16, resample=2)
    x = np.asarray(colorize(jax.random.PRNGKey(9), gauss.score_fn(sde), jnp.full((500, 3), 0.2)))
    np.testing.assert_allclose(x.mean(-1), 0.2, atol=1e-5)
    assert np.isfinite(x).all()


@pytest.mark.parametrize('resample', [0, 1.5, -2])
def test_resample_must_be_a_positive_integer(resample):
    sde = _sde('ve', 10)
    with pytest.raises(UserError, match='resample'):
        sampling.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin', 0.16, resample=resample)
    with pytest.raises(UserError, match='resample'):
        sampling.get_pc_colorizer(sde, 'reverse_diffusion', 'langevin', 0.16, resample=resample)
