"""Tests of the variational dequantizer (dequantizer.py) and its use in evaluation.

The flow's log q(u|x̄) is checked against the change of variables with an autodiff
Jacobian; training against the exact score of a Gaussian closes most of the gap between
uniform dequantization and the exact discrete likelihood, which is closed form here.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import dequantizer
import mixture
from test_eval_lib import _config, _evaluator, _metrics


def test_log_q_is_the_change_of_variables():
    model = dequantizer.Dequantizer(num_layers=3, hidden=8)
    shape = (1, 2, 3, 1)
    x_cond = jax.random.uniform(jax.random.key(1), shape)
    variables = model.init(jax.random.key(0), jnp.zeros(shape), x_cond)
    # Random weights everywhere (the output layers start at zero: identity couplings).
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    variables = jax.tree.unflatten(treedef, [
        0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    eps = jax.random.normal(jax.random.key(3), shape)
    u, log_q = jax.jit(model.apply)(variables, eps, x_cond)
    assert u.shape == shape and bool(jnp.all((u > 0) & (u < 1)))

    def flat_u(e):
        return model.apply(variables, e.reshape(shape), x_cond)[0].ravel()

    jac = jax.jit(jax.jacfwd(flat_u))(eps.ravel())
    log_normal = float(norm.logpdf(np.asarray(eps)).sum())
    expected = log_normal - np.linalg.slogdet(np.asarray(jac, np.float64))[1]
    assert float(log_q[0]) == pytest.approx(expected, abs=1e-4)


def test_tree_files_round_trip(tmp_path):
    tree = {'a': jnp.arange(3.0), 'b': [jnp.ones((2, 2)), jnp.asarray(7, jnp.int32)]}
    dequantizer.save_tree(str(tmp_path / 't.npz'), tree)
    back = dequantizer.load_tree(str(tmp_path / 't.npz'), tree)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), tree, back))
    with pytest.raises(dequantizer.UserError, match='train_deq'):
        dequantizer.load_tree(str(tmp_path / 't.npz'), {'a': jnp.zeros(4)})


def _exact_discrete_bpd(levels, num_bins, sde, std):
    """−log₂ P(x̄)/D with P the mass of each bin of y = 2x − 1 under p_ε = N(0, s²)."""
    t = jnp.full((1,), 1e-5)
    alpha = float(jnp.exp(sde.log_mean_coeff(t))[0])
    s = math.sqrt(alpha ** 2 * std ** 2 + float(sde.std(t)[0]) ** 2)
    lo = 2.0 * levels / num_bins - 1.0
    hi = 2.0 * (levels + 1) / num_bins - 1.0
    mass = norm.cdf(hi / s) - norm.cdf(lo / s)
    return -np.log2(mass).reshape(len(levels), -1).mean(1)


@pytest.mark.slow
def test_trained_dequantizer_beats_uniform(tmp_path):
    num_bins, std, shape = 4, 0.3, (2, 2, 1)
    rs = np.random.RandomState(0)

    def draw(n):  # levels of y ~ N(0, std²) binned on [−1, 1]
        y = np.clip(std * rs.randn(n, *shape), -1 + 1e-6, 1 - 1e-6)
        return np.floor((y + 1) / 2 * num_bins).astype(np.uint8)

    path = tmp_path / 'img.npz'
    np.savez(path, train=draw(512), test=draw(256))
    config = _config(path, batch_size=64, repeats=2, num_bins=num_bins, centered=True)
    config.data.image_size, config.data.num_channels = 2, 1
    config.data.random_flip = False
    t = config.training
    t.batch_size, t.n_jitted_steps, t.log_freq, t.snapshot_freq_for_preemption = 64, 10, 100, 100
    config.deq.n_iters = 400
    config.optim.lr, config.optim.warmup = 3e-3, 0
    gm = mixture.GaussianMixture(np.ones(1), np.zeros((1, 4)), std ** 2 * np.eye(4)[None])
    evaluator = _evaluator(config, tmp_path, gm, folder='uniform')
    evaluator.run()
    result = dequantizer.train_dequantizer(config, str(tmp_path / 'deq'), evaluator.sde,
                                           evaluator.data, gm.score_fn(evaluator.sde))
    assert result['step'] == 400
    config.eval.dequantizer = True
    _evaluator(config, tmp_path, gm, folder='variational').run()

    uniform = _metrics(tmp_path, 'uniform')['1']
    variational = _metrics(tmp_path, 'variational')['1']
    exact = _exact_discrete_bpd(np.load(path)['test'], num_bins, evaluator.sde, std).mean()
    # Both are upper bounds of the exact discrete bits/dim (up to Monte Carlo error) ...
    assert uniform['bpd'] > exact - 4 * uniform['bpd_stderr']
    assert variational['bpd'] > exact - 4 * variational['bpd_stderr']
    # ... and the learned q closes most of uniform dequantization's gap.
    gap = uniform['bpd'] - exact
    print(f"bits/dim: exact {exact:.4f}, uniform {uniform['bpd']:.4f} ± "
          f"{uniform['bpd_stderr']:.4f}, variational {variational['bpd']:.4f} ± "
          f"{variational['bpd_stderr']:.4f} (training bound {result['train_bpd']:.4f})")
    assert gap > 0.1
    assert variational['bpd'] - exact < 0.3 * gap
