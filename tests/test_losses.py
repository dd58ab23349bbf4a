"""losses: objectives against closed forms and the train step on a tiny network.

The closed-form model is Gaussian: data N(μ, Σ) and the linear score family
s_θ(x, t) = −(α² L Lᵀ + σ² I)⁻¹ (x − α m), θ = (m, L), which contains the exact score of
p_t at θ* = (μ, chol Σ).  Monte-Carlo comparisons use standard errors (SE) and state
their multiple.
"""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import integrate

import losses
import mixture
import sde_lib
import train_state
from configs.base import get_base_config
from errors import UserError
from models import utils as mutils
from validation import validate_config

MU = np.array([1.0, -0.5])
SIGMA = np.array([[1.0, 0.3], [0.3, 0.5]])
_CHOL = np.linalg.cholesky(SIGMA)
THETA_STAR = jnp.asarray([*MU, _CHOL[0, 0], _CHOL[1, 0], _CHOL[1, 1]], jnp.float32)
THETA_OFF = THETA_STAR + jnp.asarray([0.3, 0.0, 0.2, 0.0, -0.1])
EPS = 1e-5


def vp():
    return sde_lib.VPSDE(0.1, 20.0, 1000)


def _theta_parts(theta):
    m = theta[:2]
    chol = jnp.asarray([[theta[2], 0.0], [theta[3], theta[4]]])
    return m, chol @ chol.T


def _solve_2x2(c, v):
    """c⁻¹ v for a batch of symmetric positive definite 2×2 matrices by their Cholesky
    factor, written out: no LAPACK call (jaxlib's batched CPU solvers can deadlock XLA's
    thread pool when two run at once, see docs/DESIGN.md)."""
    l11 = jnp.sqrt(c[..., 0, 0])
    l21 = c[..., 1, 0] / l11
    l22 = jnp.sqrt(c[..., 1, 1] - l21**2)
    y1 = v[..., 0] / l11
    y2 = (v[..., 1] - l21 * y1) / l22
    z2 = y2 / l22
    return jnp.stack([(y1 - l21 * z2) / l11, z2], -1)


def linear_score_fn(theta, sde):
    """s_θ(x, t) = −(α² Σ_θ + σ² I)⁻¹ (x − α m)."""
    m, cov = _theta_parts(theta)

    def score_fn(x, t):
        alpha = jnp.exp(sde.log_mean_coeff(t))[:, None, None]
        sigma = sde.std(t)[:, None, None]
        c = alpha**2 * cov + sigma**2 * jnp.eye(2)
        return -_solve_2x2(c, x - alpha[..., 0] * m)

    return score_fn


def gaussian_data(rng, n):
    return jnp.asarray(MU, jnp.float32) + jax.random.normal(rng, (n, 2)) @ jnp.asarray(
        _CHOL.T, jnp.float32
    )


def mean_and_se(values):
    v = np.asarray(values, np.float64)
    return v.mean(0), v.std(0) / np.sqrt(v.shape[0])


# --- DSM: the gradient vanishes at the exact score -----------------------------------
def _per_example_grads(loss_of_theta, theta):
    return np.asarray(jax.jit(jax.jacfwd(loss_of_theta))(theta))  # [B, 5]


@pytest.mark.parametrize('weighting', sde_lib.WEIGHTINGS)
def test_dsm_gradient_vanishes_at_exact_score(weighting, key):
    sde = vp()
    data_key, loss_key = jax.random.split(key)
    x = gaussian_data(data_key, 20000)

    def loss_of_theta(theta):
        return losses.dsm_loss(
            loss_key,
            linear_score_fn(theta, sde),
            x,
            sde,
            reduce_mean=False,
            weighting=weighting,
            eps=EPS,
        )

    mean, se = mean_and_se(_per_example_grads(loss_of_theta, THETA_STAR))
    assert np.max(np.abs(mean) / se) < 4.5, mean / se
    mean, se = mean_and_se(_per_example_grads(loss_of_theta, THETA_OFF))
    assert np.max(np.abs(mean) / se) > 10, mean / se


def test_ssm_gradient_vanishes_at_exact_score(key):
    sde = vp()
    data_key, loss_key = jax.random.split(key)
    x = gaussian_data(data_key, 20000)

    def loss_of_theta(theta):
        return losses.ssm_loss(loss_key, linear_score_fn(theta, sde), x, sde, reduce_mean=False)

    mean, se = mean_and_se(_per_example_grads(loss_of_theta, THETA_STAR))
    assert np.max(np.abs(mean) / se) < 4.5, mean / se
    mean, se = mean_and_se(_per_example_grads(loss_of_theta, THETA_OFF))
    assert np.max(np.abs(mean) / se) > 10, mean / se


# --- weightings agree with quadrature of the closed form ----------------------------
def _expected_sq_residual(theta, alpha, sigma):
    """E‖s_θ(x_t) + z/σ‖² for x_0 ~ N(μ, Σ), in float64.

    s + z/σ = α A (x_0 − m) + (σ A + I/σ) z with A = −C⁻¹, C = α² Σ_θ + σ² I, and
    σ A + I/σ = α² Σ_θ C⁻¹ / σ (written so that small σ does not cancel).
    """
    m, cov = (np.asarray(a, np.float64) for a in _theta_parts(theta))
    c = alpha**2 * cov + sigma**2 * np.eye(2)
    a = -np.linalg.inv(c)
    noise = alpha**2 * cov @ np.linalg.inv(c) / sigma
    return (
        alpha**2 * np.sum((a @ (MU - m)) ** 2)
        + alpha**2 * np.trace(a @ SIGMA @ a.T)
        + np.sum(noise**2)
    )


def _half_integral(sde, theta, weight):
    """½ ∫_ε^T weight(t) E‖s + z/σ‖² dt, by quadrature in log t."""

    def integrand(u):
        t = np.exp(u)
        tj = jnp.asarray([t], jnp.float32)
        alpha = float(np.exp(sde.log_mean_coeff(tj)[0]))
        sigma = float(sde.std(tj)[0])
        return 0.5 * weight(tj) * _expected_sq_residual(theta, alpha, sigma) * t

    val, _ = integrate.quad(integrand, np.log(EPS), 0.0, limit=200, epsrel=1e-7)
    return val


@pytest.mark.parametrize('sde', [vp(), sde_lib.subVPSDE(0.1, 20.0, 1000)], ids=['vp', 'subvp'])
def test_weightings_estimate_their_integrals(sde, key):
    """σ²: ½∫σ²E‖·‖²/(T−ε); likelihood: ½∫g²E‖·‖²/(T−ε); importance with Z: ½∫g²E‖·‖²."""
    n = 200_000
    keys = jax.random.split(key, 4)
    x = gaussian_data(keys[0], n)
    score_fn = linear_score_fn(THETA_OFF, sde)
    span = sde.T - EPS
    g2 = lambda t: float(sde.diffusion(t)[0] ** 2)  # noqa: E731
    s2 = lambda t: float(sde.std(t)[0] ** 2)  # noqa: E731
    truth_lw = _half_integral(sde, THETA_OFF, g2)
    cases = {
        'sigma2': _half_integral(sde, THETA_OFF, s2) / span,
        'likelihood': truth_lw / span,
        'importance': truth_lw,
    }
    estimates = {}
    for i, (weighting, truth) in enumerate(cases.items()):
        est = jax.jit(
            lambda r, w=weighting: losses.dsm_loss(
                r,
                score_fn,
                x,
                sde,
                reduce_mean=False,
                weighting=w,
                eps=EPS,
                importance_normalizer=True,
            )
        )(keys[1 + i])
        estimates[weighting] = mean, se = mean_and_se(est)
        assert abs(mean - truth) < 4.5 * se, (weighting, mean, truth, se)
    (lw, lw_se), (imp, imp_se) = estimates['likelihood'], estimates['importance']
    assert abs(lw * span - imp) < 4.5 * np.hypot(lw_se * span, imp_se)
    assert imp_se < 0.5 * lw_se  # importance sampling is what makes λ = g² usable


def test_importance_normalizer_only_scales_by_z(key):
    sde = vp()
    data_key, loss_key = jax.random.split(key)
    x = gaussian_data(data_key, 64)
    score_fn = linear_score_fn(THETA_OFF, sde)
    with_z = losses.dsm_loss(
        loss_key, score_fn, x, sde, weighting='importance', importance_normalizer=True
    )
    without = losses.dsm_loss(loss_key, score_fn, x, sde, weighting='importance')
    z = sde.likelihood_importance_cum_weight(jnp.asarray(1.0), EPS)
    np.testing.assert_allclose(with_z, z * without, rtol=1e-6)
    assert abs(float(z) - 23.8645) < 2e-4


def test_reduce_mean_is_mean_and_sum_is_half_sum(key):
    sde = vp()
    data_key, loss_key = jax.random.split(key)
    x = jnp.tile(gaussian_data(data_key, 32), (1, 3)).reshape(32, 3, 2, 1)
    score_fn = lambda y, t: -y  # noqa: E731
    mean = losses.dsm_loss(loss_key, score_fn, x, sde, reduce_mean=True)
    half_sum = losses.dsm_loss(loss_key, score_fn, x, sde, reduce_mean=False)
    np.testing.assert_allclose(half_sum, 0.5 * 6 * mean, rtol=1e-5)


# --- sliced score matching ---------------------------------------------------------
@pytest.mark.parametrize('projection', losses.PROJECTIONS)
@pytest.mark.parametrize('n_projections', (1, 4))
def test_sliced_score_matching_equals_explicit_objective(projection, n_projections, key):
    """E_v[vᵀ∇s v + ½(vᵀs)²] = tr ∇s + ½‖s‖², per example (paired, 4.5 SE)."""
    sde = vp()
    n = 20000
    t = jnp.full((n,), 0.3)
    data_key, v_key = jax.random.split(key)
    x = gaussian_data(data_key, n) * 1.5
    score_fn = linear_score_fn(THETA_OFF, sde)

    @jax.jit
    def sliced_minus_explicit(x, t):
        got = losses.sliced_score_matching(v_key, score_fn, x, t, n_projections, projection)
        jac = jax.vmap(jax.jacfwd(lambda y, s: score_fn(y[None], s[None])[0]))(x, t)
        explicit = jnp.trace(jac, axis1=1, axis2=2) + 0.5 * jnp.sum(score_fn(x, t) ** 2, -1)
        return got - explicit, explicit

    diff, explicit = sliced_minus_explicit(x, t)
    mean, se = mean_and_se(diff)
    assert abs(mean) < 4.5 * se
    assert se < 0.05 * float(jnp.mean(jnp.abs(explicit)))


@pytest.mark.parametrize(
    'reduce_mean, weighting, normalizer',
    [
        (False, 'sigma2', False),
        (True, 'sigma2', False),
        (True, 'importance', False),
        (False, 'importance', True),
    ],
)
def test_ssm_loss_is_dsm_loss_minus_constant(reduce_mean, weighting, normalizer, key):
    """E[dsm] − E[ssm] = E[w]·D/2 (half sum) or E[w] (mean); w = 1 for σ² weighting and
    for importance sampling without the normaliser, w = Z with it (Z_VP(1e-5) = 23.8645).

    D = 4: two independent copies of the 2-D Gaussian model side by side.  Catches an SSM
    loss whose time weighting differs from the DSM loss's (e.g. SSM ignoring the
    importance weight, or not multiplying by σ²).
    """
    sde = vp()
    n = 100_000
    keys = jax.random.split(key, 4)
    x = jnp.concatenate([gaussian_data(keys[0], n), gaussian_data(keys[1], n)], axis=1)
    half = linear_score_fn(THETA_OFF, sde)
    score_fn = lambda y, t: jnp.concatenate([half(y[:, :2], t), half(y[:, 2:], t)], 1)  # noqa
    options = dict(
        reduce_mean=reduce_mean, weighting=weighting, eps=EPS, importance_normalizer=normalizer
    )
    dsm = jax.jit(lambda k, y: losses.dsm_loss(k, score_fn, y, sde, **options))(keys[2], x)
    ssm = jax.jit(lambda k, y: losses.ssm_loss(k, score_fn, y, sde, **options))(keys[3], x)
    (d, d_se), (s, s_se) = mean_and_se(dsm), mean_and_se(ssm)
    weight = 23.8645 if normalizer else 1.0
    constant = weight * (1.0 if reduce_mean else 4 / 2.0)
    assert abs((d - s) - constant) < 4.5 * np.hypot(d_se, s_se), (d, s)
    assert np.hypot(d_se, s_se) < 0.1 * weight


def test_config_selects_sliced_score_matching(key):
    """training.objective='ssm' trains with ssm_loss (the same numbers for the same key),
    'dsm' with dsm_loss; discrete training with SSM is refused by the config check."""
    config = get_base_config()
    config.training.likelihood_weighting = config.training.importance_weighting = True
    sde, x = vp(), jax.random.normal(key, (64, 2))
    score_fn = linear_score_fn(THETA_OFF, sde)
    options = dict(reduce_mean=False, weighting='importance', eps=1e-5)
    for objective, loss in (('ssm', losses.ssm_loss), ('dsm', losses.dsm_loss)):
        config.training.objective = objective
        core = losses.get_core_loss_fn(sde, losses.LossOptions.from_config(config))
        np.testing.assert_array_equal(
            core(key, score_fn, x), loss(key, score_fn, x, sde, **options)
        )
    config.training.objective = 'ssm'
    config.training.continuous = config.training.likelihood_weighting = False
    config.training.importance_weighting = False
    with pytest.raises(UserError, match='training.objective.*continuous=True'):
        validate_config(config, num_devices=1)


def test_ssm_rejects_bad_options(key):
    x = jnp.ones((2, 2))
    with pytest.raises(UserError, match='projection'):
        losses.sliced_score_matching(key, lambda y, t: y, x, jnp.ones(2), 1, 'sphere')
    with pytest.raises(UserError, match='n_projections'):
        losses.sliced_score_matching(key, lambda y, t: y, x, jnp.ones(2), 0)


# --- discrete SMLD / DDPM ---------------------------------------------------------
class DiscreteVPKernel:
    """The DDPM perturbation kernel as an 'SDE' for mixture.score: α = √ᾱ_i, σ = √(1−ᾱ_i)."""

    def __init__(self, sde):
        self.sde = sde

    def _index(self, t):
        return jnp.round(t * (self.sde.N - 1)).astype(jnp.int32)

    def log_mean_coeff(self, t):
        return jnp.log(jnp.asarray(self.sde.sqrt_alphas_cumprod, jnp.float32)[self._index(t)])

    def std(self, t):
        return jnp.asarray(self.sde.sqrt_1m_alphas_cumprod, jnp.float32)[self._index(t)]


def _discrete_case(name):
    if name == 'smld':
        sde = sde_lib.VESDE(0.01, 50.0, 1000)
        return sde, losses.smld_loss, sde
    sde = vp()
    return sde, losses.ddpm_loss, DiscreteVPKernel(sde)


@pytest.mark.parametrize('name', ('smld', 'ddpm'))
def test_discrete_loss_is_minimised_by_exact_score(name, key):
    """d/dc E[loss(c·s*)] is 0 at c = 1 (4.5 SE) and clearly negative at c = 0.8."""
    sde, loss, kernel = _discrete_case(name)
    mix = mixture.random_mixture(4, 3, 4)
    data_key, loss_key = jax.random.split(key)
    x = mix.sample(data_key, 20000).reshape(-1, 2, 2, 1)

    def derivative(c):
        fn = lambda cc: loss(loss_key, lambda y, t: cc * mix.score(kernel, y, t), x, sde)  # noqa
        return jax.jit(lambda cc: jax.jvp(fn, (cc,), (1.0,))[1])(c)

    mean, se = mean_and_se(derivative(1.0))
    assert abs(mean) < 4.5 * se
    mean, se = mean_and_se(derivative(0.8))
    assert mean < -10 * se


@pytest.mark.parametrize('name', ('smld', 'ddpm'))
def test_discrete_loss_uses_grid_times_and_tables(name, key):
    """With x_0 = 0 the exact score of the kernel at level i gives a zero loss only if
    score_fn receives t_i = i/(N−1) and the data was perturbed with the i-th table entry."""
    sde, loss, kernel = _discrete_case(name)
    seen = []

    def score_fn(y, t):
        seen.append(np.asarray(t))
        return -y / kernel.std(t)[:, None, None, None] ** 2

    values = loss(key, score_fn, jnp.zeros((256, 2, 2, 1)), sde)
    assert float(jnp.max(values)) < 1e-8
    grid = seen[0] * (sde.N - 1)
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)
    assert grid.min() >= 0 and grid.max() <= sde.N - 1 and len(np.unique(grid)) > 100


def test_discrete_and_weighting_options_are_checked():
    with pytest.raises(UserError, match='VESDE'):
        losses.get_core_loss_fn(sde_lib.subVPSDE(), continuous=False)
    with pytest.raises(UserError, match='likelihood_weighting'):
        losses.get_core_loss_fn(vp(), continuous=False, likelihood_weighting=True)
    with pytest.raises(UserError, match='importance_weighting'):
        losses.get_core_loss_fn(vp(), importance_weighting=True)
    with pytest.raises(UserError, match='objective'):
        losses.get_core_loss_fn(vp(), objective='ism')
    with pytest.raises(UserError, match='VESDE'):
        losses.smld_loss(None, None, jnp.ones((1, 2)), vp())
    with pytest.raises(UserError, match='VPSDE'):
        losses.ddpm_loss(None, None, jnp.ones((1, 2)), sde_lib.VESDE())
    assert sde_lib.weighting_of(True, True) == 'importance'
    assert sde_lib.weighting_of(True, False) == 'likelihood'
    assert sde_lib.weighting_of(False, False) == 'sigma2'
    with pytest.raises(UserError, match='likelihood_weighting=True'):
        sde_lib.weighting_of(False, True)


# --- the train step on a tiny network --------------------------------------------
class TinyNet(nn.Module):
    """An MLP on flattened x with a sinusoidal embedding of the label; output like x."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        e = jnp.asarray(labels, jnp.float32)[:, None] / 1000.0
        freqs = jnp.asarray([1.0, 2.0, 4.0, 8.0]) * jnp.pi
        h = jnp.concatenate(
            [x.reshape(x.shape[0], -1), e, jnp.sin(e * freqs), jnp.cos(e * freqs)], axis=-1
        )
        h = nn.swish(nn.Dense(64)(h))
        h = nn.Dropout(0.1, deterministic=not train)(h)
        h = nn.swish(nn.Dense(64)(h))
        return nn.Dense(int(np.prod(x.shape[1:])))(h).reshape(x.shape)


def _stand_in_get_score_fn(
    sde, model, variables, train=False, continuous=True, rng=None, precision='float32'
):
    """The VP/sub-VP continuous convention (docs/MATH.md): labels 999 t, score −out/σ(t)."""
    assert continuous and isinstance(sde, sde_lib._VPFamily) and precision == 'float32'
    rngs = {'dropout': rng} if rng is not None else {}

    def score_fn(x, t):
        out = model.apply(variables, x, 999.0 * t, train=train, rngs=rngs)
        return sde_lib.batch_mul(-1.0 / sde.std(t), out)

    return score_fn


_REAL_GET_SCORE_FN = mutils.get_score_fn


def _install_stand_in(monkeypatch):
    """The stand-in adapter in place of ``models.utils.get_score_fn`` (which the losses
    call), so these tests pin the convention independently of the adapter's code."""
    monkeypatch.setattr(mutils, 'get_score_fn', _stand_in_get_score_fn)


def _data(key, n, shape=(2,)):
    mix = mixture.random_mixture(3, 3, int(np.prod(shape)))
    return mix.sample(key, n).reshape((n,) + shape)


def _tiny_setup(key, shape, **step_kwargs):
    sde, model = vp(), TinyNet()
    params = model.init(key, jnp.zeros((1,) + shape), jnp.zeros((1,)))['params']
    tx = train_state.get_optimizer(
        ml_collections.ConfigDict(
            {
                'optim': dict(
                    optimizer='Adam',
                    lr=3e-3,
                    beta1=0.9,
                    beta2=0.999,
                    eps=1e-8,
                    weight_decay=0.0,
                    warmup=10,
                    grad_clip=1.0,
                )
            }
        )
    )
    state = train_state.init_train_state(jax.random.key(1), params, tx)
    step = losses.get_step_fn(sde, model, tx, train=True, reduce_mean=True, **step_kwargs)
    return sde, model, tx, state, step


@pytest.fixture(scope='module')
def tiny():
    """VP + TinyNet with the stand-in adapter; each jitted function compiles once."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _install_stand_in(monkeypatch)
        sde, model, tx, state, step = _tiny_setup(jax.random.PRNGKey(0), (2,), ema_rate=0.99)
        yield types.SimpleNamespace(
            state=state,
            step=jax.jit(step),
            run=jax.jit(lambda s, b: jax.lax.scan(step, s, b)),
            eval_step=jax.jit(losses.get_step_fn(sde, model, tx, train=False)),
            loss=jax.jit(losses.get_sde_loss_fn(sde, model, train=False, reduce_mean=True)),
        )


def _tree_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))


def test_step_fn_trains_under_scan(tiny, key):
    keys = jax.random.split(key, 3)
    batches = _data(keys[0], 60 * 128).reshape(60, 128, 2)
    held_out = _data(keys[1], 4096)
    before = float(tiny.loss(keys[2], tiny.state.params, held_out))
    final, metrics = tiny.run(tiny.state, batches)
    assert int(final.step) == 60
    assert set(metrics) == {'loss', 'grad_norm', 'lr'}
    np.testing.assert_allclose(
        metrics['lr'][:12], 3e-3 * np.minimum(np.arange(12) / 10, 1), rtol=1e-5
    )
    assert np.all(np.isfinite(metrics['loss'])) and np.all(metrics['grad_norm'] > 0)
    after = float(tiny.loss(keys[2], final.params, held_out))
    after_ema = float(tiny.loss(keys[2], final.ema_params, held_out))
    assert after < 0.8 * before and after_ema < 0.9 * before, (before, after, after_ema)


def test_step_fn_is_deterministic_and_skips_non_finite(tiny, key):
    batch = _data(key, 128)
    state = tiny.step(tiny.state, batch)[0]  # past the lr = 0 first step of the warm-up
    s1, m1 = tiny.step(state, batch)
    s2, m2 = tiny.step(state, batch)
    assert _tree_equal(s1, s2) and _tree_equal(m1, m2)
    assert not _tree_equal(s1.params, state.params)
    _, m3 = tiny.step(s1, batch)
    assert float(m3['loss']) != float(m1['loss'])  # fresh noise at the next step
    bad, m_bad = tiny.step(s1, batch.at[3, 0].set(jnp.nan))
    assert np.isnan(m_bad['loss'])
    assert int(bad.step) == int(s1.step) + 1
    for field in ('params', 'ema_params', 'opt_state', 'rng'):
        assert _tree_equal(getattr(bad, field), getattr(s1, field)), field
    s_rng, _ = tiny.step(state, batch, jax.random.PRNGKey(7))
    assert not _tree_equal(s_rng.params, s1.params)


def test_eval_step_uses_ema_and_leaves_state(tiny, key):
    batch = _data(key, 128)
    state = tiny.state
    for _ in range(5):
        state, _ = tiny.step(state, batch)
    new_state, metrics = tiny.eval_step(state, batch)
    assert set(metrics) == {'loss'} and _tree_equal(new_state, state)
    rng = jax.random.fold_in(state.rng, state.step)
    np.testing.assert_allclose(metrics['loss'], tiny.loss(rng, state.ema_params, batch), rtol=1e-6)
    assert abs(float(metrics['loss']) - float(tiny.loss(rng, state.params, batch))) > 1e-6


def test_ssm_importance_step_on_images(key, monkeypatch):
    _install_stand_in(monkeypatch)
    init_key, data_key = jax.random.split(key)
    _, _, _, state, step = _tiny_setup(
        init_key, (2, 2, 1), likelihood_weighting=True, importance_weighting=True, objective='ssm'
    )
    assert state.rng.dtype == jnp.uint32 and state.step.dtype == jnp.int32
    batch = _data(data_key, 32, (2, 2, 1))
    state, _ = jax.jit(step)(state, {'image': batch})
    new_state, metrics = jax.jit(step)(state, {'image': batch})
    assert int(new_state.step) == 2
    assert not _tree_equal(new_state.ema_params, state.ema_params)
    # The reported loss is the importance-weighted SSM loss of the batch, computed here
    # directly (a step that dropped objective='ssm' or the importance weighting differs).
    loss_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    score_fn = _stand_in_get_score_fn(
        vp(), TinyNet(), {'params': state.params}, train=True, rng=dropout_rng
    )
    want = jnp.mean(
        losses.ssm_loss(loss_rng, score_fn, batch, vp(), reduce_mean=True, weighting='importance')
    )
    np.testing.assert_allclose(metrics['loss'], want, rtol=1e-5)
    dsm = jnp.mean(
        losses.dsm_loss(loss_rng, score_fn, batch, vp(), reduce_mean=True, weighting='importance')
    )
    assert abs(float(metrics['loss']) - float(dsm)) > 1e-3


def test_loss_with_real_model_adapter(key, monkeypatch):
    """models.utils.get_score_fn gives the same loss as the stand-in."""
    monkeypatch.setattr(mutils, 'get_score_fn', _REAL_GET_SCORE_FN)  # if `tiny` patched it
    init_key, data_key, loss_key = jax.random.split(key, 3)
    sde, model, _, state, _ = _tiny_setup(init_key, (2,))
    batch = _data(data_key, 64)
    variables = {'params': state.params}
    core = losses.get_core_loss_fn(sde)
    want = core(loss_key, _stand_in_get_score_fn(sde, model, variables), batch)
    got = core(loss_key, _REAL_GET_SCORE_FN(sde, model, variables, train=False), batch)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    ve = sde_lib.VESDE(0.01, 50.0, 100)
    loss_fn = losses.get_sde_loss_fn(ve, model, train=True, continuous=False)
    value, grads = jax.value_and_grad(loss_fn, argnums=1)(loss_key, state.params, batch)
    assert np.isfinite(value) and np.isfinite(optax.global_norm(grads))


@pytest.mark.parametrize(
    'loss_fn, sde, wanted',
    [
        (losses.smld_loss, sde_lib.VPSDE(0.1, 20.0, 10), 'needs a VESDE.*training.sde=vesde'),
        (losses.ddpm_loss, sde_lib.VESDE(0.01, 50.0, 10), 'needs a VPSDE.*training.sde=vpsde'),
    ],
)
def test_discrete_losses_reject_the_other_sde_naming_the_fix(loss_fn, sde, wanted, key):
    with pytest.raises(UserError, match=wanted):
        loss_fn(key, lambda y, t: y, jnp.ones((2, 2)), sde)
