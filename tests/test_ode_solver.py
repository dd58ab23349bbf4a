"""ode_solver.solve: accuracy against closed forms and the exact NFE count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_solver


def _counting_field(counter):
    """dy/dt = −5 cos(3t) y, whose solution is y0 exp(−5 sin(3t)/3); counts calls."""

    def field(t, y):
        jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return -5.0 * jnp.cos(3.0 * t) * y

    return field


@pytest.mark.parametrize('method', sorted(ode_solver.SOLVERS))
def test_solution_and_nfe_match_counted_evaluations(method):
    counter = [0]
    y1, nfe = jax.jit(
        lambda y0: ode_solver.solve(_counting_field(counter), y0, 0.0, 1.0, method=method)
    )(jnp.ones(3))
    jax.block_until_ready(y1)
    np.testing.assert_allclose(np.asarray(y1), np.exp(-5 * np.sin(3.0) / 3), rtol=2e-4)
    assert int(nfe) == counter[0]


def test_vmap_gives_each_example_its_own_steps():
    def solve_one(k):
        return ode_solver.solve(lambda t, y: -k * y, jnp.ones(2), 0.0, 1.0)

    ys, nfes = jax.jit(jax.vmap(solve_one))(jnp.array([0.5, 8.0]))
    np.testing.assert_allclose(np.asarray(ys[:, 0]), np.exp([-0.5, -8.0]), rtol=1e-3, atol=5e-5)
    assert nfes[1] > nfes[0]
    # the same example solved alone gives the same result and NFE as in the batch
    y_alone, nfe_alone = jax.jit(solve_one)(jnp.float32(0.5))
    # same steps; XLA may round differently
    np.testing.assert_allclose(np.asarray(y_alone), np.asarray(ys[0]), rtol=1e-6)
    assert int(nfe_alone) == int(nfes[0])


def test_backward_integration_and_failure_gives_nan():
    y0, _ = ode_solver.solve(lambda t, y: y, jnp.full((1,), np.e), 1.0, 0.0)
    np.testing.assert_allclose(np.asarray(y0), 1.0, rtol=1e-4)
    y_bad, _ = ode_solver.solve(lambda t, y: y**2, jnp.ones(1), 0.0, 2.0, max_steps=64)
    assert np.isnan(np.asarray(y_bad)).all()


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match='unknown ODE method'):
        ode_solver.solve(lambda t, y: y, jnp.ones(1), 0.0, 1.0, method='rk4-typo')
