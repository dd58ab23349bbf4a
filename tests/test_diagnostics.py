"""diagnostics.py: the loss variance of uniform vs importance-sampled t against a closed
form, and TOY's KL(data ‖ model) from the per-example nll of either file layout."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diagnostics
import file_io
import sde_lib
from devices import local_mesh
from train_state import create_train_state
from train_utils import load_config, toy_log_p_data
from validation import prepare_config


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    """A TOY work directory with its resolved config.json (as main.py writes it) and
    log p_data of its test points."""
    workdir = tmp_path_factory.mktemp('toy_run')
    config = prepare_config(load_config('toy'))
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    return str(workdir), toy_log_p_data()


def _nll(n: int, offset: float, seed: int):
    """Per-example nll of two repeats over n images: (values float32, index, repeat)."""
    rng = np.random.default_rng(seed)
    nll = (offset + rng.standard_normal(2 * n)).astype(np.float32)
    return nll, np.tile(np.arange(n), 2), np.repeat([0, 1], n)


def _paired(nll, log_p):
    """Mean and standard error over images of d = nll + log p_data (repeats averaged)."""
    d = (nll.astype(np.float64) + np.tile(log_p, 2)).reshape(2, -1).mean(0)
    return d.mean(), d.std(ddof=1) / math.sqrt(len(d))


def _save(folder, name, **arrays):
    file_io.save_npz(os.path.join(folder, name), **arrays)


@pytest.mark.timeout(120)
def test_toy_kl_older_layout_bound_in_the_bpd_file(toy_run):
    """Runs before the bound had its own tag: ``bpd_h0.npz`` holds the ODE's and the
    bound's nll; metrics.json has ``nll`` (used for the mean) and no ``bound_nll`` (the
    mean is the file's)."""
    workdir, log_p = toy_run
    n = len(log_p)
    nll, index, repeat = _nll(n, 2.5, 0)
    bound_nll, _, _ = _nll(n, 3.0, 1)
    folder = os.path.join(workdir, 'eval', 'ckpt_1')
    _save(folder, 'bpd_h0.npz', nll=nll, bound_nll=bound_nll, index=index, repeat=repeat)
    kl = diagnostics.ToyKL()
    value, se = kl.entry(workdir, 'eval', 1, {'nll': 2.0, 'bpd': 1.0}, 'nll')
    assert math.isclose(value, 2.0 + log_p.mean(), abs_tol=1e-5)  # float32 log p
    assert math.isclose(se, _paired(nll, log_p)[1], rel_tol=1e-4)
    value, se = kl.entry(workdir, 'eval', 1, {'bound_bpd': 1.0}, 'bound_nll')
    mean, stderr = _paired(bound_nll, log_p)
    assert math.isclose(value, mean, abs_tol=1e-5) and se > 0
    assert math.isclose(se, stderr, rel_tol=1e-4)


@pytest.mark.timeout(120)
def test_toy_kl_bound_tag_first_over_hosts(toy_run):
    """The bound's own summaries (``bound_h<host>.npz``, every host) come before a
    ``bound_nll`` in ``bpd_h0.npz``; metrics.json's ``bound_nll`` gives the mean."""
    workdir, log_p = toy_run
    n = len(log_p)
    bound_nll, index, repeat = _nll(n, 3.0, 2)
    folder = os.path.join(workdir, 'eval_bound', 'ckpt_2')
    half = n  # host 0: repeat 0, host 1: repeat 1
    for host in (0, 1):
        part = slice(host * half, (host + 1) * half)
        _save(
            folder,
            f'bound_h{host}.npz',
            bound_nll=bound_nll[part],
            bound_bpd=bound_nll[part] / (2 * math.log(2)),
            index=index[part],
            repeat=repeat[part],
        )
    stale, _, _ = _nll(n, 9.0, 3)
    _save(folder, 'bpd_h0.npz', nll=stale, bound_nll=stale, index=index, repeat=repeat)
    value, se = diagnostics.ToyKL().entry(workdir, 'eval_bound', 2, {'bound_nll': 3.5}, 'bound_nll')
    assert math.isclose(value, 3.5 + log_p.mean(), abs_tol=1e-5)
    assert math.isclose(se, _paired(bound_nll, log_p)[1], rel_tol=1e-4)


@pytest.mark.timeout(120)
def test_toy_kl_without_results(toy_run):
    """No per-example file: the mean from metrics.json alone (no standard error); neither:
    nan."""
    workdir, log_p = toy_run
    kl = diagnostics.ToyKL()
    value, se = kl.entry(workdir, 'eval_missing', 1, {'nll': 2.0}, 'nll')
    assert math.isclose(value, 2.0 + log_p.mean(), abs_tol=1e-5) and math.isnan(se)
    assert all(math.isnan(v) for v in kl.entry(workdir, 'eval_missing', 1, {}, 'bound_nll'))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    'sde_name, eps', [('vp', 1e-2), ('vp', 1e-5), ('subvp', 1e-2), ('subvp', 1e-5)]
)
def test_loss_variance_closed_form(sde_name, eps):
    """Data N(0, I) in D dims: with α² = exp(−∫β), σ² = 1 − α² (VP) or (1 − α²)² (sub-VP)
    and v = α² + σ², the exact score is −x/v, and the per-dimension residual σ s + z
    = (1 − σ²/v) z − (σα/v) x₀ has variance m = (1 − σ²/v)² + σ²α²/v² (VP: m = α²), so h =
    mean over dims of its square has E[h|t] = m, E[h²|t] = m² (1 + 2/D). Both estimators
    have the mean I = ∫ g²/σ² m dt; their second moments are (T − ε) ∫ (g²/σ²)² m² (1 + 2/D)
    dt (uniform t) and Z ∫ g²/σ² m² (1 + 2/D) dt (importance-sampled t). At ε = 1e-5 the
    uniform estimator is so heavy-tailed (E[L⁴] ~ 1/ε³) that its sample variance and
    mean are unreliable (measured: variance 6e3 for a true 1.5e5); the variance
    reweighted from the importance-sampled draws is checked instead."""
    sde, D, n = sde_lib.get_sde_class(f'{sde_name}sde')(), 4, 8192
    x = np.asarray(jax.random.normal(jax.random.key(1), (n, D)))

    def score(y, t):  # −y / v(t), from the SDE's own marginal
        v = jnp.exp(2 * sde.log_mean_coeff(t)) + sde.std(t) ** 2
        return -y / v[:, None]

    res = diagnostics.loss_variance(
        sde, score, x, jax.random.key(2), eps=eps, batch_size=128, chunk=4096
    )
    t = np.geomspace(eps, 1.0, 400001)
    b0, b1 = 0.1, 20.0
    beta = b0 + t * (b1 - b0)
    a2 = np.exp(-(b0 * t + 0.5 * (b1 - b0) * t**2))
    if sde_name == 'vp':
        s2, g2 = 1 - a2, beta
    else:  # sub-VP: σ = 1 − α², g² = β (1 − α⁴)
        s2, g2 = (1 - a2) ** 2, beta * (1 - a2**2)
    v = a2 + s2
    m = (1 - s2 / v) ** 2 + s2 * a2 / v**2
    w = g2 / s2
    integral = np.trapezoid(w * m, t)
    Z = np.trapezoid(w, t)
    var = {
        'uniform': (1 - eps) * np.trapezoid(w**2 * m**2 * (1 + 2 / D), t) - integral**2,
        'importance': Z * np.trapezoid(w * m**2 * (1 + 2 / D), t) - integral**2,
    }
    heavy = eps < 1e-3
    for name in diagnostics.ESTIMATORS:
        r = res[name]
        if not (heavy and name == 'uniform'):
            assert abs(r['mean'] - integral) < 4 * r['mean_stderr'], (name, r['mean'], integral)
            assert abs(r['var'] - var[name]) < 4 * r['var_stderr'], (name, r['var'], var[name])
        assert math.isclose(r['batch_var'], r['var'] / 128)
        assert math.isclose(sum(r['bin_mean']), r['mean'], rel_tol=1e-9)
        second_moment = r['var'] * (n - 1) / n + r['mean'] ** 2
        assert math.isclose(sum(r['bin_second_moment']), second_moment, rel_tol=1e-6)
        assert sum(r['bin_count']) == n
    u = res['uniform']
    rw, rw_se = u['var_from_importance_draws'], u['var_from_importance_draws_stderr']
    assert abs(rw - var['uniform']) < 4 * rw_se, (rw, rw_se, var['uniform'])
    # The importance-sampled loss is the quieter: closed-form ratio VP 4.0 (ε = 1e-2), 567
    # (ε = 1e-5); sub-VP 6.3 and 820. The tail near t = 0 that ε cuts off decides the gain.
    ratio = var['uniform'] / var['importance']
    assert ratio > (100 if heavy else 3)
    assert abs(res['ratio_from_importance_draws'] / ratio - 1) < 0.2
    # The estimators agree bin by bin on the mean (the same integrand), not on E[L²].
    i = res['importance']
    for b in range(len(u['bin_mean'])):
        if u['bin_count'][b] > 200 and i['bin_count'][b] > 200:
            assert math.isclose(u['bin_mean'][b], i['bin_mean'][b], rel_tol=0.25), b


@pytest.mark.timeout(120)
def test_gradient_variance_against_a_closed_form():
    """Loss ½ mean_i (θ − z_i)² with z_i ~ N(μ, 1), B per batch: the gradient θ − z̄ has
    mean θ − μ and variance 1/B per coordinate (trace P/B); at twice the scale the
    clipping fraction is that of 2(θ − z̄), the unbiased-scale statistics are the same."""
    P, B, n, mu, clip = 3, 16, 400, 0.5, 0.6

    def loss(rng, theta, batch):
        z = mu + jax.random.normal(rng, (batch.shape[0], P))
        return 0.5 * jnp.mean(jnp.sum((theta - z) ** 2, axis=1))

    fns = {'one': loss, 'two': lambda rng, theta, batch: 2.0 * loss(rng, theta, batch)}
    out = diagnostics.gradient_variance(
        fns,
        jnp.zeros(P),
        np.zeros((n, B, 1), np.float32),
        jax.random.key(0),
        scales={'one': 1.0, 'two': 0.5},
        clip=clip,
    )
    for name in ('one', 'two'):
        v = out[name]
        assert v['trace_var'] == pytest.approx(P / B, abs=4 * v['trace_var_stderr'])
        assert v['trace_var_stderr'] < 0.1 * P / B
        assert v['norm_of_mean'] == pytest.approx(mu * math.sqrt(P), abs=4 * math.sqrt(P / B / n))
    assert out['one']['trace_var'] == pytest.approx(out['two']['trace_var'], rel=1e-6)
    # ‖g‖² = Σ (θ − z̄)² with z̄ ~ N(μ, 1/B): B‖g‖² is noncentral χ²(P, B P μ²).
    for name, factor in (('one', 1.0), ('two', 2.0)):
        p_clip = stats.ncx2.sf(B * (clip / factor) ** 2, P, B * P * mu**2)
        tol = 4 * math.sqrt(p_clip * (1 - p_clip) / n)
        assert out[name]['clip_fraction'] == pytest.approx(p_clip, abs=tol)


@pytest.mark.timeout(180)
def test_weighting_losses_share_the_lambda_g2_integral():
    """At their scales (T − ε and Z) the λ = g² losses with uniform and importance-sampled
    t estimate the same integral: their batch means agree within the noise."""
    config = prepare_config(load_config('toy'))
    sde = sde_lib.get_sde(config)
    model, _, state = create_train_state(config, local_mesh())
    fns, scales = diagnostics.weighting_losses(config, sde, model)
    x = jnp.asarray(diagnostics.training_draws(config, 256, 0, jax.random.key(0)))
    values = {}
    for name in ('likelihood', 'importance'):
        fn = jax.jit(lambda rng, f=fns[name]: f(rng, state.params, x))
        values[name] = scales[name] * np.array([fn(jax.random.key(k)) for k in range(64)])
    se = math.sqrt(sum(v.var(ddof=1) / len(v) for v in values.values()))
    assert values['likelihood'].mean() == pytest.approx(values['importance'].mean(), abs=4 * se)
    assert scales['sigma2'] == 1.0 and scales['likelihood'] == pytest.approx(1 - 1e-5, rel=1e-3)


def test_paired_over_images(tmp_path):
    """Means, standard errors and the paired difference over images (repeats averaged),
    against NumPy; the files may come in any order and from several hosts."""
    folders = [str(tmp_path / name) for name in ('a', 'b')]
    nll_a, index, repeat = _nll(50, 1.0, 0)
    nll_b = nll_a - 0.3 + 0.05 * np.random.default_rng(1).standard_normal(100).astype(np.float32)
    for folder, nll in zip(folders, (nll_a, nll_b)):
        order = np.random.default_rng(2).permutation(100)
        half = {k: v[order] for k, v in {'index': index, 'repeat': repeat, 'bpd': nll}.items()}
        _save(folder, 'bpd_h0.npz', **{k: v[:60] for k, v in half.items()})
        _save(folder, 'bpd_h1.npz', **{k: v[60:] for k, v in half.items()})
    out = diagnostics.paired_over_images(*folders, 'bpd', 'bpd')
    per_image = lambda v: v.astype(np.float64).reshape(2, -1).mean(0)
    for name, v in (('a', nll_a), ('b', nll_b), ('diff', nll_b - nll_a)):
        d = per_image(v) if name != 'diff' else per_image(nll_b) - per_image(nll_a)
        assert out[name] == pytest.approx(d.mean(), rel=1e-9)
        assert out[f'{name}_se'] == pytest.approx(d.std(ddof=1) / math.sqrt(50), rel=1e-6)
    assert out['num_images'] == 50 and out['diff_se'] < 0.2 * out['a_se']
    _save(folders[1], 'bpd_h1.npz', index=index[60:] + 1, repeat=repeat[60:], bpd=nll_b[60:])
    with pytest.raises(ValueError, match='different images'):
        diagnostics.paired_over_images(*folders, 'bpd', 'bpd')
