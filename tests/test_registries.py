"""Names come from one place: the registries of the modules that implement them.

Config validation reads its lists of SDEs, models, datasets, predictors, correctors, ODE
solvers and Hutchinson probes from those registries, and a new SDE is one class plus its
registration: it is then a valid ``config.training.sde`` and works with the score
adapter, the corrector and the importance sampling of t without other edits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import datasets
import likelihood
import ode_solver
import sampling
import sde_lib
import validation
from configs.vp import digits_lw_is
from errors import UserError
from models import utils as mutils


def test_validation_lists_are_the_registries():
    allowed = dict(validation.choices())
    assert allowed['training.sde'] == sde_lib.sde_names()
    assert 'vesde_linear' in allowed['training.sde']  # accepted by get_sde, so valid
    assert allowed['model.name'] == mutils.registered_models()
    assert allowed['data.dataset'] == datasets.dataset_names()
    assert allowed['sampling.method'] == sampling.SAMPLING_METHODS
    assert allowed['sampling.predictor'] == sampling.predictor_names()
    assert allowed['sampling.corrector'] == sampling.corrector_names()
    assert allowed['sampling.ode_method'] == ode_solver.solver_names()
    assert allowed['eval.hutchinson_type'] == likelihood.HUTCHINSON_TYPES
    assert allowed['deq.name'] == mutils.registered_dequantizers() == ('affine_coupling', 'flowpp')


class QuadraticVESDE(sde_lib.SDE):
    """A VE SDE defined in a test: σ(t) = σ_min + t² (σ_max − σ_min), g² = dσ²/dt."""

    def __init__(self, sigma_min=0.01, sigma_max=5.0, N=100):
        super().__init__(N)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.prior_std = sigma_max

    @classmethod
    def from_config(cls, model_config):
        return cls(model_config.sigma_min, model_config.sigma_max, model_config.num_scales)

    def log_mean_coeff(self, t):
        return jnp.zeros_like(t)

    def std(self, t):
        return self.sigma_min + t**2 * (self.sigma_max - self.sigma_min)

    def drift_coeff(self, t):
        return jnp.zeros_like(t)

    def diffusion(self, t):
        return jnp.sqrt(4 * t * (self.sigma_max - self.sigma_min) * self.std(t))

    def corrector_alpha(self, t):
        return jnp.ones_like(t)

    def continuous_network_inputs(self, t):
        return self.std(t), jnp.ones_like(t)


@pytest.fixture
def registered(monkeypatch):
    """QuadraticVESDE registered as 'vesde_quadratic' for one test."""
    monkeypatch.setitem(sde_lib._SDES, 'vesde_quadratic', QuadraticVESDE)
    monkeypatch.setattr(QuadraticVESDE, 'name', 'vesde_quadratic', raising=False)
    return QuadraticVESDE


def test_a_new_sde_is_one_registered_class(registered):
    config = digits_lw_is.get_config()
    config.training.sde = 'vesde_quadratic'
    validation.validate_config(config, num_devices=1)
    sde = sde_lib.get_sde(config)
    assert type(sde) is registered and sde.N == config.model.num_scales
    t = jnp.asarray([0.1, 0.5, 1.0])
    labels, scale = sde.network_inputs(t)
    np.testing.assert_allclose(labels, sde.std(t))
    np.testing.assert_array_equal(scale, 1.0)
    np.testing.assert_array_equal(sde.corrector_alpha(t), 1.0)
    # Importance sampling of t by the base class's bisection: uniform in log(σ²/α²).
    times = sde.sample_importance_weighted_time_for_likelihood(
        jax.random.key(0), (20000,), eps=1e-3
    )
    c = np.asarray(sde.log_inverse_snr(times))
    lo, hi = (float(sde.log_inverse_snr(jnp.asarray(v))) for v in (1e-3, 1.0))
    quantiles = (c - lo) / (hi - lo)
    assert abs(quantiles.mean() - 0.5) < 4 * np.sqrt(1 / 12 / len(c))
    # It has no discrete model: discrete training names the fix.
    config.training.continuous = False
    config.training.likelihood_weighting = config.training.importance_weighting = False
    with pytest.raises(UserError, match='training.continuous'):
        validation.validate_config(config, num_devices=1)
    with pytest.raises(UserError, match='continuous=True'):
        sde.network_inputs(t, continuous=False)


def test_an_unregistered_name_lists_the_registered_ones():
    config = digits_lw_is.get_config()
    config.training.sde = 'vesde_quadratic'
    with pytest.raises(UserError, match="'vesde_quadratic' is not one of.*'vesde_linear'"):
        validation.validate_config(config, num_devices=1)
