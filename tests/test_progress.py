"""Progress lines from inside a long batch: the adaptive ODE solve (the likelihood and the ODE
sampler), the PC sampler's loop and the bound's chunks report to the active task, whose
lines come at least every ``every_s`` seconds with an ETA, and the numbers do not change."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eval_store
import likelihood
import mixture
import ode_solver
import progress
import sampling
import sde_lib

SDE = sde_lib.VPSDE(0.1, 20.0, 50)


def _fractions(fn, *args):
    """Runs ``fn(*args)`` inside a task part; the fractions the device reported."""
    seen = []
    task = progress.Task('test', 4, every_s=1e9)
    task.fraction = seen.append  # record instead of logging
    with task.part(4):
        out = jax.device_get(fn(*args))
    return out, seen


@pytest.fixture(scope='module')
def score_fn():
    return mixture.random_mixture(2, 2, 2).score_fn(SDE)


def test_the_ode_sampler_reports_its_slowest_example(score_fn):
    sampler = sampling.get_ode_sampler(SDE, (4, 2), rtol=1e-3, atol=1e-3)
    (x, nfe), seen = _fractions(sampler, jax.random.key(0), score_fn)
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == 1.0
    again, _ = sampler(jax.random.key(0), score_fn)  # outside a task: the same numbers
    np.testing.assert_array_equal(x, np.asarray(again))


def test_solves_report_their_position_in_log_snr():
    """An adaptive solve near t = ε takes steps ∝ t (VP): its position is measured in
    log(σ²/α²) (``progress_time``), where the steps are roughly even, not in t."""
    position = ode_solver._position(1e-5, 1.0, None, jnp.log)
    t = 1e-3  # 0.1 % of [ε, 1] in t, 40 % of it in log t
    np.testing.assert_allclose(position((t - 1e-5) / (1.0 - 1e-5)), 0.4, rtol=1e-4)
    backwards = ode_solver._position(1.0, 1e-3, SDE.ode_time_change('log_sigma'), None)
    assert float(backwards(0.5)) == 0.5  # no progress_time: the integration variable


def test_the_pc_sampler_and_the_bound_report_each_step(score_fn):
    sampler = sampling.get_pc_sampler(SDE, (4, 2), 'euler_maruyama', 'none', 0.16)
    _, seen = _fractions(lambda k: sampler(k, score_fn)[0], jax.random.key(0))
    np.testing.assert_allclose(seen, np.arange(1, SDE.N + 1) / SDE.N, rtol=1e-6)
    bound = likelihood.get_bound_fn(SDE, score_fn, N=40, chunk_size=10)
    x = jnp.zeros((4, 2))
    _, seen = _fractions(jax.jit(bound), jax.random.key(1), x)
    np.testing.assert_allclose(seen, [0.25, 0.5, 0.75, 1.0])


def test_a_long_batch_logs_its_progress_with_an_eta(score_fn, tmp_path, caplog):
    """One batch of an evaluation pass: lines while it is computed (how far the solver
    is, the ETA), then the line of the finished pass."""
    nll = jax.jit(likelihood.get_nll_fn(SDE, score_fn, rtol=1e-4, atol=1e-4))

    def batch_fn(x, index):
        return {'nll': nll(jax.random.key(0), jnp.asarray(x))[0]}

    batches = [(np.zeros((4, 2), np.float32), np.ones(4, bool), np.arange(4))]
    store = eval_store.ResultStore(str(tmp_path))
    task = eval_store.Progress('ckpt 1 nll', 4, 'nll', every_s=0.0)
    with caplog.at_level(logging.INFO):
        eval_store.run_pass(batch_fn, batches, store, 'nll', task)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('ckpt 1 nll')]
    within = [ln for ln in lines if '4 more under way' in ln]
    assert within and '0/4 examples' in within[0] and '% through' in within[0]
    assert all('ETA' in ln for ln in lines)
    assert lines[-1].startswith('ckpt 1 nll: 4/4 examples (100%), nll ')
    assert progress.where() == 'ckpt 1 nll, 4/4 examples'
