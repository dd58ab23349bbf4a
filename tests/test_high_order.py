"""high_order / losses: Lu et al.'s second- and third-order DSM against closed forms.

- Values: for 1-D Gaussian data N(m, s0²) and the exact score, ℓ = z + σ s ~ N(0, q) with
  q = α²s0²/(α²s0² + σ²), so E[‖M‖²_F] = E[(tr M)²] = Var(ℓ²) = 2q² and, the third
  derivative of log p_t being 0, E[R²] = E[(ℓ³ − 3qℓ)²] = 6q³.
- Minimisers: on a 2-D Gaussian mixture the expected gradient of each term with respect to
  a perturbation of the exact score vanishes (its Jacobian and ∇ tr are then exact), and
  is far from zero off it.
- Estimators: for a fixed x_t and a nonlinear score, the two-probe estimates average to
  ‖M‖²_F, (tr M)² and ‖R‖² computed with the full Jacobian.
Monte Carlo comparisons state their multiple of the standard error (SE).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import high_order
import losses
import mixture
import sde_lib
from errors import UserError

SDES = {
    'vp': lambda: sde_lib.VPSDE(0.1, 20.0, 1000),
    'subvp': lambda: sde_lib.subVPSDE(0.1, 20.0, 1000),
    've': lambda: sde_lib.VESDE(0.01, 50.0, 1000),
}


def _mean_se(values):
    v = np.asarray(values, np.float64)
    return v.mean(0), v.std(0) / np.sqrt(v.shape[0])


def _gaussian_score(sde, m, s0):
    def score_fn(x, t):
        alpha = jnp.exp(sde.log_mean_coeff(t))[:, None]
        var = alpha**2 * s0**2 + sde.std(t)[:, None] ** 2
        return -(x - alpha * m) / var

    return score_fn


def _perturbed(sde, t, x0, z):
    alpha = jnp.exp(sde.log_mean_coeff(t))
    return alpha[:, None] * x0 + sde.std(t)[:, None] * z


@pytest.mark.parametrize('name', sorted(SDES))
@pytest.mark.parametrize('t_value', [0.05, 0.5])
def test_values_match_the_gaussian_closed_form(name, t_value, key):
    sde, m, s0, n = SDES[name](), 0.7, 1.3, 200_000
    x_key, z_key, v_key = jax.random.split(key, 3)
    x0 = m + s0 * jax.random.normal(x_key, (n, 1))
    z = jax.random.normal(z_key, (n, 1))
    t = jnp.full((n,), t_value)
    v = high_order.sample_probes(v_key, (n, 1))
    # Arrays enter jitted functions as arguments: XLA:CPU miscompiles some large closed-over
    # constants (docs/DESIGN.md, Conventions).
    terms = jax.jit(
        lambda x0, z, t, v: high_order.high_order_terms(
            _gaussian_score(sde, m, s0), _perturbed(sde, t, x0, z), t, z, sde.std(t), v, 3
        )
    )(x0, z, t, v)
    alpha, sigma = float(jnp.exp(sde.log_mean_coeff(t_value))), float(sde.std(t_value))
    q = alpha**2 * s0**2 / (alpha**2 * s0**2 + sigma**2)
    for key_name, exact in (('frobenius', 2 * q**2), ('trace', 2 * q**2), ('third', 6 * q**3)):
        mean, se = _mean_se(terms[key_name])
        assert abs(mean - exact) < 4.5 * se, (key_name, mean, exact, se)


# --- minimisers: a perturbed exact score on a 2-D mixture ------------------------------------
W = np.array([[0.8, -0.5], [0.3, 0.9]], np.float32)
# Isotropic components (their score needs no linear solve: no LAPACK call under jit, see
# docs/DESIGN.md), unequal widths so that every derivative of log p_t is non-trivial.
MIXTURE = mixture.GaussianMixture(
    [0.5, 0.3, 0.2],
    [[-1.0, 0.5], [1.5, 0.0], [0.0, -1.5]],
    [s**2 * np.eye(2) for s in (0.4, 0.8, 0.25)],
)


def _mixture_score(sde, x, t):
    """∇log p_t of :data:`MIXTURE` (isotropic components: C_k = (α² s_k² + σ²) I)."""
    alpha = jnp.exp(sde.log_mean_coeff(t))[:, None]
    var = alpha**2 * jnp.asarray(MIXTURE.covs[:, 0, 0])[None] + sde.std(t)[:, None] ** 2
    diff = x[:, None, :] - alpha[..., None] * jnp.asarray(MIXTURE.means, jnp.float32)[None]
    log_n = -0.5 * jnp.sum(diff**2, -1) / var - jnp.log(var)  # D = 2: −(D/2) log var
    resp = jax.nn.softmax(jnp.log(jnp.asarray(MIXTURE.weights)) + log_n, axis=-1)
    return -jnp.einsum('bk,bkd->bd', resp / var, diff)


def _family(sde):
    """s_θ = ∇log p_t + θ₀ tanh(xW + 0.2) + θ₁ sin(0.7 x) ⊙ x: exact at θ = 0."""

    def score_of(theta):
        def score_fn(x, t):
            bump = theta[0] * jnp.tanh(x @ W + 0.2) + theta[1] * jnp.sin(0.7 * x) * x
            return _mixture_score(sde, x, t) + bump

        return score_fn

    return score_of


def test_mixture_score_is_the_closed_form(key):
    sde = SDES['vp']()
    x, t = jax.random.normal(key, (16, 2)), jnp.linspace(0.01, 1.0, 16)
    np.testing.assert_allclose(
        _mixture_score(sde, x, t), MIXTURE.score(sde, x, t), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize('term', ['frobenius', 'trace', 'third'])
def test_gradients_vanish_at_the_exact_score(term, key):
    sde, n = SDES['vp'](), 20_000
    x_key, t_key, z_key, v_key = jax.random.split(key, 4)
    x0 = MIXTURE.sample(x_key, n)
    t = jax.random.uniform(t_key, (n,), minval=0.05, maxval=1.0)
    z = jax.random.normal(z_key, (n, 2))
    v = high_order.sample_probes(v_key, (n, 2))
    args = (_perturbed(sde, t, x0, z), t, z, sde.std(t), v)
    score_of = _family(sde)

    def per_example(theta, x_t, t, z, std, v):
        return high_order.high_order_terms(score_of(theta), x_t, t, z, std, v, 3)[term]

    grads = jax.jit(jax.jacfwd(per_example))
    mean, se = _mean_se(grads(jnp.zeros(2), *args))
    assert np.max(np.abs(mean) / se) < 4.5, mean / se
    mean, se = _mean_se(grads(jnp.asarray([0.3, -0.3]), *args))
    assert np.max(np.abs(mean) / se) > 10, mean / se


# --- estimators: two probes against the full Jacobian -----------------------------------------
def _network(dim):
    rs = np.random.RandomState(0)
    w1, w2 = rs.randn(dim, 16) / np.sqrt(dim), rs.randn(16, dim) / 4.0

    def score_fn(x, t):
        return jnp.tanh(x @ w1 + t[:, None]) @ w2 - 0.3 * x

    return score_fn


def _exact_objectives(score_fn, x_t, t, z, std):
    """‖M‖²_F, (tr M)² and ‖R‖² of each example, from the full Jacobian."""

    def one(x, ti, zi, si):
        fn = lambda y: score_fn(y[None], ti[None])[0]
        jac = jax.jacfwd(fn)(x)
        trace = lambda y: jnp.trace(jax.jacfwd(fn)(y))
        ell = zi + si * fn(x)
        dim = x.shape[0]
        m = si**2 * jac + jnp.eye(dim) - jnp.outer(ell, ell)
        r = (
            si**3 * jax.grad(trace)(x)
            + jnp.dot(ell, ell) * ell
            - (si**2 * jnp.trace(jac) + dim) * ell
            - 2 * (si**2 * jac + jnp.eye(dim)) @ ell
        )
        return jnp.sum(m**2), jnp.trace(m) ** 2, jnp.sum(r**2)

    return jax.vmap(one)(x_t, t, z, std)


@pytest.mark.parametrize('probe', high_order.PROBES)
def test_two_probe_estimators_are_unbiased(probe, key):
    dim, batch, draws = 3, 4, 40_000
    score_fn = _network(dim)
    x_key, z_key, v_key = jax.random.split(key, 3)
    x_t = jax.random.normal(x_key, (batch, dim))
    z = jax.random.normal(z_key, (batch, dim))
    t, std = jnp.linspace(0.1, 0.9, batch), jnp.asarray([0.3, 0.7, 1.0, 1.5])
    exact = _exact_objectives(score_fn, x_t, t, z, std)

    def draw(k):
        v = high_order.sample_probes(k, (batch, dim), probe)
        terms = high_order.high_order_terms(score_fn, x_t, t, z, std, v, 3)
        return jnp.stack([terms['frobenius'], terms['trace'], terms['third']])

    estimates = jax.jit(jax.vmap(draw))(jax.random.split(v_key, draws))  # [draws, 3, B]
    mean, se = _mean_se(estimates)
    z_scores = (mean - np.asarray(jnp.stack(exact))) / se
    assert np.max(np.abs(z_scores)) < 4.5, z_scores


# --- the loss and its options -----------------------------------------------------------------
def test_loss_adds_the_weighted_terms_to_first_order_dsm(key):
    """At γ₂ = γ₃ = 0 the high-order loss is first-order DSM on the same draws; the terms
    enter with κ = 1/D² (reduce_mean) or 1/(2D) and the time weight w(t)."""
    sde = SDES['vp']()
    x = MIXTURE.sample(key, 64)
    score_fn = _family(sde)(jnp.asarray([0.2, 0.1]))
    common = dict(weighting='likelihood', eps=1e-3)
    for reduce_mean, kappa in ((True, 1 / 4), (False, 1 / 4)):
        base = losses.high_order_dsm_loss(
            key, score_fn, x, sde, reduce_mean, order=3, second_order_weight=0.0,
            third_order_weight=0.0, **common,
        )  # fmt: skip
        t_key, z_key, v_key = jax.random.split(key, 3)
        t, w = sde.sample_time_and_weight(t_key, (64,), 'likelihood', 1e-3)
        first = losses._denoising_loss(
            z_key, score_fn, x, t, jnp.exp(sde.log_mean_coeff(t)), sde.std(t), reduce_mean
        )
        np.testing.assert_allclose(base, w * first, rtol=2e-5)
        full = losses.high_order_dsm_loss(
            key, score_fn, x, sde, reduce_mean, order=3, second_order_weight=0.5,
            third_order_weight=0.25, **common,
        )  # fmt: skip
        x_t, z = losses._perturb(z_key, x, jnp.exp(sde.log_mean_coeff(t)), sde.std(t))
        v = high_order.sample_probes(v_key, x.shape)
        terms = high_order.high_order_terms(score_fn, x_t, t, z, sde.std(t), v, 3)
        extra = 0.5 * (terms['frobenius'] + terms['trace']) + 0.25 * terms['third']
        np.testing.assert_allclose(full, w * (first + kappa * extra), rtol=2e-4)
        assert losses.high_order_scale(x, reduce_mean) == kappa


def test_options_refuse_what_the_objective_cannot_do():
    with pytest.raises(UserError, match='score_matching_order=4'):
        losses.LossOptions(score_matching_order=4)
    with pytest.raises(UserError, match='continuous denoising'):
        losses.LossOptions(score_matching_order=2, objective='ssm')
    with pytest.raises(UserError, match='continuous denoising'):
        losses.LossOptions(score_matching_order=3, continuous=False)
    core = losses.get_core_loss_fn(SDES['vp'](), losses.LossOptions(score_matching_order=2))
    assert core is not None
