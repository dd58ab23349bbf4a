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
from test_eval_runner import _config, _evaluator, _metrics

import dequantizer
import mixture
import sde_lib
from datasets import DataSpec
from devices import get_mesh
from errors import UserError
from models.affine_coupling import AffineCouplingDequantizer


def test_log_q_is_the_change_of_variables():
    model = AffineCouplingDequantizer(num_layers=3, hidden=8)
    shape = (1, 2, 3, 1)
    x_cond = jax.random.uniform(jax.random.key(1), shape)
    variables = model.init(jax.random.key(0), jnp.zeros(shape), x_cond)
    # Random weights everywhere (the output layers start at zero: identity couplings).
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    variables = jax.tree.unflatten(
        treedef, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    )
    eps = jax.random.normal(jax.random.key(3), shape)
    u, log_q = jax.jit(model.apply)(variables, eps, x_cond)
    assert u.shape == shape and bool(jnp.all((u > 0) & (u < 1)))

    def flat_u(e):
        return model.apply(variables, e.reshape(shape), x_cond)[0].ravel()

    jac = jax.jit(jax.jacfwd(flat_u))(eps.ravel())
    log_normal = float(norm.logpdf(np.asarray(eps)).sum())
    expected = log_normal - np.linalg.slogdet(np.asarray(jac, np.float64))[1]
    assert float(log_q[0]) == pytest.approx(expected, abs=1e-4)


SMALL_FLOWPP = {'filters': 8, 'components': 4, 'blocks': 1, 'attn_heads': 2}


def _tiny_deq_config(path, n_iters):
    config = _config(path, batch_size=8, num_bins=4, centered=True)
    config.deq.update(SMALL_FLOWPP)
    config.data.image_size, config.data.num_channels = 2, 1
    config.data.random_flip = False
    t = config.training
    t.batch_size, t.n_jitted_steps, t.log_freq, t.snapshot_freq_for_preemption = 8, 5, 5, 5
    config.deq.n_iters = n_iters
    config.optim.lr, config.optim.warmup = 3e-3, 0
    return config


def _tiny_levels(tmp_path):
    path = tmp_path / 'img.npz'
    levels = np.random.RandomState(0).randint(0, 4, size=(32, 2, 2, 1)).astype(np.uint8)
    np.savez(path, train=levels, test=levels[:8])
    return path


def test_flowpp_initialisation_is_data_dependent_and_reproducible(tmp_path):
    """The initial Flow++ parameters come from the first training batch, the same batch
    and key on every start (so a resumed run restores into the same structure and a
    fresh one starts identically); another batch gives other parameters."""
    config = _tiny_deq_config(_tiny_levels(tmp_path), 10)
    first = next(dequantizer.training_levels(config, 0))[0]
    states = [dequantizer.initial_state(config, get_mesh(), levels)[2] for levels in
              (first, first, (first + 1) % 4)]  # fmt: skip
    same, other = jax.tree.leaves(states[1].params), jax.tree.leaves(states[2].params)
    for a, b in zip(jax.tree.leaves(states[0].params), same):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(same, other))


def test_untrained_dequantizer_is_a_user_error_and_training_resumes_exactly(tmp_path):
    """Evaluation without a trained flow names the fix; 5 + 5 steps (a restart from the
    orbax checkpoint of step 5) give the parameters of 10 uninterrupted steps (the
    affine-coupling flow: the loop is the same for every flow, and its steps compile
    fast)."""
    path = _tiny_levels(tmp_path)
    with pytest.raises(UserError, match='--mode train_deq'):
        dequantizer.load_dequantizer(_tiny_deq_config(path, 10), str(tmp_path / 'none'))
    with pytest.raises(UserError, match='--deq_folder=mine'):
        dequantizer.load_dequantizer(_tiny_deq_config(path, 10), str(tmp_path), 'mine')
    sde = sde_lib.VPSDE()
    gm = mixture.GaussianMixture(np.ones(1), np.zeros((1, 4)), 0.1 * np.eye(4)[None])

    def train(folder, n_iters):
        config = _tiny_deq_config(path, n_iters)
        config.deq.name = 'affine_coupling'
        return dequantizer.train_dequantizer(
            config,
            str(tmp_path / folder / dequantizer.DEQ_FOLDER),
            sde,
            DataSpec.from_config(config),
            gm.score_fn(sde),
        )

    assert train('straight', 10)['step'] == 10
    assert train('resumed', 5)['step'] == 5
    assert train('resumed', 10)['step'] == 10
    config = _tiny_deq_config(path, 10)
    config.deq.name = 'affine_coupling'
    straight, resumed = (
        dequantizer.load_dequantizer(config, str(tmp_path / folder))
        for folder in ('straight', 'resumed')
    )
    assert straight[2] == resumed[2]  # the digest of the EMA parameters
    for a, b in zip(jax.tree.leaves(straight[1]), jax.tree.leaves(resumed[1])):
        np.testing.assert_array_equal(a, b)


def _exact_discrete_bpd(levels, num_bins, sde, std):
    """−log₂ P(x̄)/D with P the mass of each bin of y = 2x − 1 under p_ε = N(0, s²)."""
    t = jnp.full((1,), 1e-5)
    alpha = float(jnp.exp(sde.log_mean_coeff(t))[0])
    s = math.sqrt(alpha**2 * std**2 + float(sde.std(t)[0]) ** 2)
    lo = 2.0 * levels / num_bins - 1.0
    hi = 2.0 * (levels + 1) / num_bins - 1.0
    mass = norm.cdf(hi / s) - norm.cdf(lo / s)
    return -np.log2(mass).reshape(len(levels), -1).mean(1)


@pytest.mark.slow
@pytest.mark.parametrize('flow', ['flowpp', 'affine_coupling'])
def test_trained_dequantizer_beats_uniform(tmp_path, flow):
    num_bins, std, shape = 4, 0.3, (2, 2, 1)
    rs = np.random.RandomState(0)

    def draw(n):  # levels of y ~ N(0, std²) binned on [−1, 1]
        y = np.clip(std * rs.randn(n, *shape), -1 + 1e-6, 1 - 1e-6)
        return np.floor((y + 1) / 2 * num_bins).astype(np.uint8)

    path = tmp_path / 'img.npz'
    np.savez(path, train=draw(512), test=draw(256))
    config = _config(path, batch_size=64, repeats=2, num_bins=num_bins, centered=True)
    config.deq.update(SMALL_FLOWPP)
    config.deq.name = flow
    config.data.image_size, config.data.num_channels = 2, 1
    config.data.random_flip = False
    t = config.training
    t.batch_size, t.n_jitted_steps, t.log_freq, t.snapshot_freq_for_preemption = 64, 10, 100, 100
    config.deq.n_iters = 400
    config.optim.lr, config.optim.warmup = 3e-3, 0
    gm = mixture.GaussianMixture(np.ones(1), np.zeros((1, 4)), std**2 * np.eye(4)[None])
    evaluator = _evaluator(config, tmp_path, gm, folder='uniform')
    evaluator.run()
    result = dequantizer.train_dequantizer(
        config,
        str(tmp_path / dequantizer.DEQ_FOLDER),
        evaluator.sde,
        evaluator.data,
        gm.score_fn(evaluator.sde),
    )
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
    print(
        f'{flow} bits/dim: exact {exact:.4f}, uniform {uniform["bpd"]:.4f} ± '
        f'{uniform["bpd_stderr"]:.4f}, variational {variational["bpd"]:.4f} ± '
        f'{variational["bpd_stderr"]:.4f} (training bound {result["train_bpd"]:.4f})'
    )
    assert gap > 0.1
    assert variational['bpd'] - exact < 0.3 * gap
