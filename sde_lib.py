"""Forward and reverse-time SDEs of Score SDE (Song et al., ICLR 2021).

Every SDE here is linear in x, ``dx = f(t) x dt + g(t) dw``, with a Gaussian perturbation
kernel ``p_0t(x_t | x_0) = N(α(t) x_0, σ(t)² I)``.  A subclass states four scalar functions
of t — ``log_mean_coeff`` (log α), ``std`` (σ), ``drift_coeff`` (f = d log α / dt) and
``diffusion`` (g) — plus its prior scale and the behaviour that differs between SDE
families: the corrector's α, how a network's output becomes a score, and, for the SDEs of
the discrete models (SMLD, DDPM), their noise tables and ancestral step. Everything else
(drift, marginals, prior density, discretization, reverse SDE, probability-flow ODE, the
sampling of t with its weight for every training weighting) is implemented once on
:class:`SDE`. A new SDE is one subclass here, registered with :func:`register_sde`; its
name then works everywhere (config validation, training, sampling, likelihoods).

| SDE    | f(t)    | g(t)²                        | α(t)         | σ(t)          |
|--------|---------|------------------------------|--------------|---------------|
| VE     | 0       | σ(t)²·2 log(σ_max/σ_min)     | 1            | σ_min (σ_max/σ_min)^t |
| VP     | −½β(t)  | β(t)                         | exp(−½B(t))  | √(1−α²)       |
| sub-VP | −½β(t)  | β(t)(1−α⁴)                   | exp(−½B(t))  | 1−α²          |

with β(t) = β₀ + t(β₁−β₀) and B(t) = ∫₀ᵗ β = β₀t + ½(β₁−β₀)t². The half log-SNR
λ(t) = log(α/σ) of the fast solvers (DPM-Solver, DDIM, EDM's Heun in ``sampling``;
:meth:`SDE.half_log_snr`) and its inverse (:meth:`SDE.time_of_half_log_snr`), from each
SDE's closed-form inverse of c = log(σ²/α²) = −2λ (``inverse_log_inverse_snr``):

| SDE       | λ(t)                | t(λ)                                                 |
|-----------|---------------------|------------------------------------------------------|
| VE        | −log σ(t)           | (−λ − log σ_min) / log(σ_max/σ_min)                  |
| linear VEs| −log σ(t)           | σ(t) = e^{−λ}, linear in t                           |
| VP        | −½ log(e^B − 1)     | B = log(1 + e^{−2λ}), t = 2B/(β₀ + √(β₀² + 2(β₁−β₀)B)) |
| sub-VP    | −log(2 sinh(B/2))   | B = 2 asinh(½ e^{−λ}), the same quadratic            |

Near t = 0 the VP and sub-VP forms compute 1 − α² without cancellation so that σ stays
accurate in float32 (1 − exp(−B) is 1.2 % off at t = 1e-5, and up to 6 % near there: a
float32 step of 1 is 6e-8 against B ≈ 1e-6).
"""

from __future__ import annotations

import abc
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Type

import jax
import jax.numpy as jnp
import numpy as np

from errors import UserError

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

# The one vocabulary of training weightings λ(t) and their time sampling
# (:meth:`SDE.sample_time_and_weight`), with the config flags of the original code
# (training.likelihood_weighting, training.importance_weighting) that select each.
WEIGHTING_FLAGS = {
    'sigma2': (False, False),  # Score SDE: λ = σ², t ~ U(ε, T)
    'likelihood': (True, False),  # ScoreFlow: λ = g², t ~ U(ε, T)
    'importance': (True, True),  # ScoreFlow: λ = g², t ~ p(t) ∝ g²/σ²
}
WEIGHTINGS = tuple(WEIGHTING_FLAGS)
# The densities of importance-sampled t for λ = g² (config training.importance_density):
# 'log_snr': p(t) ∝ g²/σ², uniform in log SNR (ScoreFlow §4); 'log1p_snr': p(t) ∝ g²/σ² ·
# α²/(α² + σ²), uniform in log(1 + SNR) (i-DODE's for the velocity parameterization).
IMPORTANCE_DENSITIES = ('log_snr', 'log1p_snr')
# What the network's output is (config model.parameterization; models.utils.get_score_fn):
# 'score': the paper's conventions of each SDE (scale · output); 'velocity': v̂ (i-DODE).
PARAMETERIZATIONS = ('score', 'velocity')
# Integration variables of the probability-flow ODE (config eval.ode_time, sampling.ode_time).
ODE_TIMES = ('t', 'log_sigma', 'sigma')
_SDES: Dict[str, Type[SDE]] = {}


def register_sde(name: str):
    """Class decorator: makes an :class:`SDE` available as ``config.training.sde=name``."""

    def register(cls):
        if name in _SDES:
            raise ValueError(f'An SDE named {name!r} is already registered.')
        cls.name = name
        _SDES[name] = cls
        return cls

    return register


def sde_names() -> Tuple[str, ...]:
    """The registered SDE names (the values of ``config.training.sde``)."""
    return tuple(sorted(_SDES))


def get_sde_class(name: str) -> Type[SDE]:
    """The SDE class registered as ``name`` (case-insensitive); UserError if unknown."""
    key = str(name).lower()
    if key not in _SDES:
        raise UserError(
            f'config.training.sde={name!r} is not a known SDE; use one of {", ".join(sde_names())}.'
        )
    return _SDES[key]


def weighting_of(likelihood_weighting: bool, importance_weighting: bool) -> str:
    """The weighting (:data:`WEIGHTINGS`) that the config flags select; the one check that
    importance sampling of t comes with likelihood weighting (it samples t for λ = g²)."""
    flags = (bool(likelihood_weighting), bool(importance_weighting))
    if flags == (False, True):
        raise UserError(
            'config.training.importance_weighting=True needs '
            'config.training.likelihood_weighting=True (it importance-samples t for the '
            'likelihood weighting g(t)²); also pass '
            '--config.training.likelihood_weighting=True, or set neither.'
        )
    return next(name for name, f in WEIGHTING_FLAGS.items() if f == flags)


def _check_density(density: str) -> None:
    if density not in IMPORTANCE_DENSITIES:
        raise UserError(
            f'training.importance_density={density!r} is not supported; use one of '
            f'{", ".join(IMPORTANCE_DENSITIES)}.'
        )


def one_minus_exp_neg(x: Array) -> Array:
    """1 − e^{−x} = 2 tanh(x/2) / (1 + tanh(x/2)), accurate for small x ≥ 0.

    Not ``-expm1(-x)``: XLA:CPU (jax 0.10) returns one value for two ``expm1`` (or two
    ``log1p``) with different arguments that share a fusion with a reduction, so such
    coefficients came out wrong inside jitted losses (sub-VP's g²/σ² up to 4× too small
    at small t). ``tests/test_sde_lib.py`` checks the coefficients jitted inside a reduction.
    """
    th = jnp.tanh(0.5 * x)
    return 2.0 * th / (1.0 + th)


def discrete_sde_name(objective: str) -> str:
    """The registered SDE whose discrete form is ``objective`` ('SMLD' or 'DDPM')."""
    return next(n for n, c in sorted(_SDES.items()) if c.discrete_objective == objective)


def batch_mul(a: Array, x: Array) -> Array:
    """Multiplies a per-example vector ``a`` of shape [B] into ``x`` of shape [B, ...]."""
    return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim)) * x


class TimeChange(NamedTuple):
    """A monotone change u = u(t) of the variable an ODE in t is integrated in:
    dy/du = (dy/dt) · dt/du. ``dt_du`` is given as a function of t."""

    to_u: Callable[[Array], Array]
    to_t: Callable[[Array], Array]
    dt_du: Callable[[Array], Array]


class SDE(abc.ABC):
    """A linear SDE ``dx = f(t) x dt + g(t) dw`` on [0, T] with Gaussian kernels.

    A subclass is one registered class (:func:`register_sde`) that states the four scalar
    functions of t, the corrector's α, how a network's output becomes a score, and —
    if the SDE is the limit of a discrete model (SMLD, DDPM) — that model's noise
    tables and ancestral step. Everything else is shared here.

    Attributes:
      N: number of discretization steps (used by discrete samplers and losses).
      T: end time (1).
      prior_std: the prior is π = N(0, prior_std² I).
      name: the registry name (``config.training.sde``).
      discrete_objective: 'SMLD' or 'DDPM' for the SDE of a discrete model, else None.
    """

    T: float = 1.0
    prior_std: float = 1.0
    name: str = ''
    discrete_objective: Optional[str] = None

    def __init__(self, N: int):
        self.N = int(N)

    @classmethod
    @abc.abstractmethod
    def from_config(cls, model_config) -> SDE:
        """The SDE with the scales of ``config.model`` (σ or β range, ``num_scales``)."""

    # --- the four scalar functions a subclass defines -------------------------------
    @abc.abstractmethod
    def log_mean_coeff(self, t: Array) -> Array:
        """log α(t)."""

    @abc.abstractmethod
    def std(self, t: Array) -> Array:
        """σ(t), the standard deviation of p_0t(x_t | x_0)."""

    @abc.abstractmethod
    def drift_coeff(self, t: Array) -> Array:
        """f(t) = d log α(t) / dt, so that the drift is f(t) x."""

    @abc.abstractmethod
    def diffusion(self, t: Array) -> Array:
        """g(t)."""

    # --- behaviour that differs between SDE families ---------------------------------
    @abc.abstractmethod
    def corrector_alpha(self, t: Array) -> Array:
        """α of the Langevin corrector's step size ε = 2α (snr ‖z‖/‖s‖)² ([B])."""

    @abc.abstractmethod
    def continuous_network_inputs(self, t: Array) -> Tuple[Array, Array]:
        """(labels, scale) of a continuous-time network: it is called with ``labels``
        and the score is ``scale · output`` (docs/MATH.md, Score parametrisation)."""

    def discrete_network_inputs(self, t: Array) -> Tuple[Array, Array]:
        """(labels, scale) of the discrete model's network at grid time t."""
        raise self._no_discrete_form()

    def discrete_kernel(self) -> Tuple[np.ndarray, np.ndarray]:
        """(a_i, b_i), i = 0 … N−1: the discrete model perturbs x̃ = a_i x + b_i z."""
        raise self._no_discrete_form()

    def ancestral_step(self, x: Array, t: Array, score: Array) -> Tuple[Array, Array]:
        """(x_mean, std) of one ancestral-sampling step of the discrete model at t."""
        raise self._no_discrete_form()

    def velocity_coefficients(self, t: Array) -> Tuple[Array, Array]:
        """(a, b) with s = a · v̂ + b · x: the score of a network that predicts the velocity.

        With r² = α² + σ² and the angle φ = atan(σ/α), x_t / r = cos φ · x_0 + sin φ · ε and
        the velocity is v = d(x_t / r)/dφ = (α ε − σ x_0)/r (Salimans & Ho's v; i-DODE's
        target (ε − σ x_t)/α where α² + σ² = 1).  Since ε = (α v + σ x_t / r)/r, the noise
        prediction is ε̂ = (α v̂ + σ x / r)/r and the score −ε̂/σ, so

            a = −α / (r σ),   b = −1 / r²,   and ε̂ − ε = (α / r)(v̂ − v).
        """
        alpha = jnp.exp(self.log_mean_coeff(t))
        sigma = self.std(t)
        r2 = alpha**2 + sigma**2
        return -alpha / (jnp.sqrt(r2) * sigma), -1.0 / r2

    def network_inputs(self, t: Array, continuous: bool = True) -> Tuple[Array, Array]:
        """(labels, scale): a network trained on this SDE is called with ``labels`` and
        the score is ``scale · output``; continuous or discrete (SMLD / DDPM) training."""
        if continuous:
            return self.continuous_network_inputs(t)
        return self.discrete_network_inputs(t)

    def _no_discrete_form(self) -> UserError:
        known = ', '.join(
            f'{c.__name__} ({c.discrete_objective})'
            for _, c in sorted(_SDES.items())
            if c.discrete_objective
        )
        return UserError(
            f'{type(self).__name__} has no discrete form: discrete '
            f'(continuous=False) training and sampling are defined for {known} '
            'only; set config.training.continuous=True or choose one of those '
            'with config.training.sde.'
        )

    # --- shared implementation ---------------------------------------------------
    def sde(self, x: Array, t: Array) -> Tuple[Array, Array]:
        """Drift f(x, t) = f(t) x and diffusion g(t) ([B]) of the forward SDE."""
        return batch_mul(self.drift_coeff(t), x), self.diffusion(t)

    def marginal_prob(self, x: Array, t: Array) -> Tuple[Array, Array]:
        """Mean α(t) x_0 and std σ(t) ([B]) of p_0t(x_t | x_0 = x)."""
        return batch_mul(jnp.exp(self.log_mean_coeff(t)), x), self.std(t)

    def prior_sampling(self, rng: Array, shape) -> Array:
        """A sample of the prior π = N(0, prior_std² I)."""
        return self.prior_std * jax.random.normal(rng, shape)

    def prior_logp(self, z: Array) -> Array:
        """log π(z) per example ([B]), π = N(0, prior_std² I)."""
        dim = np.prod(z.shape[1:])
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * dim * np.log(2 * np.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

    def timestep_index(self, t: Array) -> Array:
        """Discrete index i of time t on the grid t_i = T i/(N−1): ⌊t(N−1)/T + 10⁻⁴⌋.

        Truncation, as the original code, maps the sampler's grid linspace(T, ε, N) (whose
        points lie up to ε(N−1) < 1 index above t_i) onto N−1, …, 0 exactly once each;
        the 10⁻⁴ guards against float round-off just below a grid point.
        """
        i = jnp.floor(t * (self.N - 1) / self.T + 1e-4).astype(jnp.int32)
        return jnp.clip(i, 0, self.N - 1)

    def discretize(self, x: Array, t: Array) -> Tuple[Array, Array]:
        """One step of x_{i+1} = x_i + f_i + G_i z_i; Euler–Maruyama with Δt = T/N.

        VE and VP override this with the SMLD and DDPM discretizations.
        """
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * np.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or the probability-flow ODE) driven by ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)

    # --- the integration variable of the probability-flow ODE ----------------------
    def ode_time_change(self, name: str) -> Optional[TimeChange]:
        """The variable the probability-flow ODE is integrated in (``ODE_TIMES``).

        With σ̃(t) = σ(t)/α(t) (so log σ̃ = ½ log(σ²/α²), minus half the log-SNR) and
        dlog σ̃/dt = ½ g²/σ²:

        - ``'t'``: the SDE's own time (the original code); returns None.
        - ``'log_sigma'``: u = log σ̃, dt/du = 2σ²/g².
        - ``'sigma'``: u = σ̃ (EDM's time for VE), dt/du = 2σ²/(g² σ̃).

        The ODE and its solution are the same; an adaptive solver's steps are not.
        """
        if name == 't':
            return None
        if name == 'log_sigma':
            return TimeChange(
                to_u=lambda t: 0.5 * self.log_inverse_snr(t),
                to_t=lambda u: self.inverse_log_inverse_snr(2.0 * u),
                dt_du=lambda t: 2.0 * self.std(t) ** 2 / self.diffusion(t) ** 2,
            )
        if name == 'sigma':
            return TimeChange(
                to_u=lambda t: jnp.exp(0.5 * self.log_inverse_snr(t)),
                to_t=lambda u: self.inverse_log_inverse_snr(2.0 * jnp.log(u)),
                dt_du=lambda t: (
                    2.0
                    * self.std(t) ** 2
                    / (self.diffusion(t) ** 2 * jnp.exp(0.5 * self.log_inverse_snr(t)))
                ),
            )
        raise UserError(f'ode_time={name!r} is not one of {", ".join(ODE_TIMES)}.')

    # --- importance sampling of t for likelihood weighting (ScoreFlow §4) ---------
    def log_inverse_snr(self, t: Array) -> Array:
        """log(σ(t)² / α(t)²); its derivative is g(t)²/σ(t)² for all three SDEs."""
        return 2.0 * (jnp.log(self.std(t)) - self.log_mean_coeff(t))

    def inverse_log_inverse_snr(self, c: Array) -> Array:
        """t such that log(σ(t)²/α(t)²) = c, by bisection on [0, T] (monotone in t).

        Subclasses with a closed form override this.
        """
        lo = jnp.zeros_like(c)
        hi = jnp.full_like(c, self.T)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self.log_inverse_snr(mid) < c
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 64, body, (lo, hi))
        return 0.5 * (lo + hi)

    def half_log_snr(self, t: Array) -> Array:
        """λ(t) = log α(t) − log σ(t) = −½ log(σ²/α²), decreasing in t: the variable of
        the exponential integrators (DPM-Solver's λ_t; docs/MATH.md §Fast sampling)."""
        return -0.5 * self.log_inverse_snr(t)

    def time_of_half_log_snr(self, lam: Array) -> Array:
        """t with λ(t) = lam: :meth:`inverse_log_inverse_snr` at c = −2λ (a closed form
        for every SDE here; bisection for an SDE that states none)."""
        return self.inverse_log_inverse_snr(-2.0 * lam)

    def importance_variable(self, t: Array, density: str = 'log_snr') -> Array:
        """c(t), the variable in which the importance density of t is uniform:

        * ``'log_snr'``: c = log(σ²/α²), dc/dt = g²/σ² (ScoreFlow);
        * ``'log1p_snr'``: c = log(σ²/(α² + σ²)) = −log(1 + SNR), dc/dt = g²/σ² · α²/(α² + σ²)
          (i-DODE: with the velocity parameterization, whose error enters the likelihood
          weighting as (α²/r²)‖v̂ − v‖², this density makes the loss weight constant).
        """
        _check_density(density)
        if density == 'log_snr':
            return self.log_inverse_snr(t)
        return 2.0 * jnp.log(self.std(t)) - jnp.log(self._r2(t))

    def _r2(self, t: Array) -> Array:
        """r² = α² + σ², from the SDE's own α and σ (no log1p: see :func:`one_minus_exp_neg`)."""
        return jnp.exp(2.0 * self.log_mean_coeff(t)) + self.std(t) ** 2

    def _one_plus_inverse_snr(self, t: Array) -> Array:
        """1 + σ²/α² = r²/α²: the ratio of the two densities' dc/dt ('log_snr' / 'log1p_snr')."""
        return self._r2(t) / jnp.exp(2.0 * self.log_mean_coeff(t))

    def _log_inverse_snr_of_importance_variable(self, c: Array, density: str) -> Array:
        """log(σ²/α²) at the time where :meth:`importance_variable` is c."""
        if density == 'log_snr':
            return c
        return c - jnp.log(one_minus_exp_neg(-c))  # u/(1+u) = e^c ⇒ log u = c − log(1 − e^c)

    def likelihood_importance_cum_weight(
        self, t: Array, eps: float = 1e-5, density: str = 'log_snr'
    ) -> Array:
        """∫_ε^t dc = c(t) − c(ε) (:meth:`importance_variable`): with ``'log_snr'``
        ∫_ε^t g(s)²/σ(s)² ds = log(σ²/α²)(t) − log(σ²/α²)(ε).

        At t = T this is the normaliser Z of the importance density p(t) = (dc/dt) / Z.
        """
        c_eps = self.importance_variable(jnp.asarray(eps), density)
        return self.importance_variable(t, density) - c_eps

    def likelihood_importance_density(
        self, t: Array, eps: float = 1e-5, density: str = 'log_snr'
    ) -> Array:
        """p(t) = (dc/dt)/Z on [ε, T]: g(t)² / (σ(t)² Z), times α²/(α² + σ²) for
        ``'log1p_snr'``."""
        z = self.likelihood_importance_cum_weight(jnp.asarray(self.T), eps, density)
        p = self.diffusion(t) ** 2 / self.std(t) ** 2 / z
        if density == 'log1p_snr':
            p = p / self._one_plus_inverse_snr(t)
        return p

    def sample_importance_weighted_time_for_likelihood(
        self,
        rng: Array,
        shape,
        eps: float = 1e-5,
        quantile: Array | None = None,
        density: str = 'log_snr',
    ) -> Array:
        """Samples t ~ p(t) = (dc/dt)/Z on [ε, T] by inverting its CDF
        (:meth:`importance_variable`; ``'log_snr'``: p ∝ g(t)²/σ(t)²).

        p(t) is uniform in c, so t = c⁻¹(c(ε) + u·Z) with u ~ U[0, 1) (or the given
        ``quantile``).  With ``'log_snr'`` the matching loss weight is Z·σ²/g² times
        λ(t) = g², i.e. Z·σ², with Z = ``likelihood_importance_cum_weight(T, eps)``.
        """
        if quantile is None:
            quantile = jax.random.uniform(rng, shape)
        c_eps = self.importance_variable(jnp.asarray(eps, jnp.float32), density)
        z = self.importance_variable(jnp.asarray(self.T, jnp.float32), density) - c_eps
        log_u = self._log_inverse_snr_of_importance_variable(c_eps + quantile * z, density)
        return jnp.clip(self.inverse_log_inverse_snr(log_u), eps, self.T)

    def sample_time_and_weight(
        self,
        rng: Array,
        shape,
        weighting: str = 'sigma2',
        eps: float = 1e-5,
        importance_normalizer: bool = False,
        dtype=jnp.float32,
        importance_density: str = 'log_snr',
    ) -> Tuple[Array, Array]:
        """Times t on [ε, T] and weights w(t) for a time integral weighted by λ(t).

        For any integrand h, ``E[w(t) h(t)] = c ∫_ε^T λ(t)/σ(t)² h(t) dt`` with

        * ``'sigma2'`` (λ = σ², Score SDE): t ~ U(ε, T), w = 1, c = 1/(T − ε);
        * ``'likelihood'`` (λ = g², ScoreFlow): t ~ U(ε, T), w = g²/σ², c = 1/(T − ε);
        * ``'importance'`` (λ = g²): t ~ p(t) = g²/(σ² Z), w = Z and c = 1 with
          ``importance_normalizer``, else w = 1 and c = 1/Z (the paper's training
          drops the constant Z); with ``importance_density='log1p_snr'`` (i-DODE)
          t ~ p(t) = g²/σ² · α²/((α² + σ²) Z) and w = (1 + σ²/α²) · (Z or 1).

        Denoising score matching takes h = ‖σ s_θ + z‖² (so λ ‖s_θ + z/σ‖²); the ScoreFlow
        bound takes λ = g² with c = 1 (importance sampling with the normaliser) or c =
        1/(T − ε) (uniform t).
        """
        if weighting not in WEIGHTINGS:
            raise UserError(
                f'weighting={weighting!r} is not supported; use one of {", ".join(WEIGHTINGS)}.'
            )
        if weighting == 'importance':
            density = importance_density
            t = self.sample_importance_weighted_time_for_likelihood(
                rng, shape, eps=eps, density=density
            ).astype(dtype)
            z_norm = self.likelihood_importance_cum_weight(jnp.asarray(self.T, dtype), eps, density)
            w = jnp.full_like(t, z_norm if importance_normalizer else 1.0)
            if density == 'log1p_snr':
                w = w * self._one_plus_inverse_snr(t)
            return t, w
        t = jax.random.uniform(rng, shape, dtype, minval=eps, maxval=self.T)
        if weighting == 'likelihood':
            return t, self.diffusion(t) ** 2 / self.std(t) ** 2
        return t, jnp.ones_like(t)


class ReverseSDE:
    """Reverse-time SDE dx = [f − g² s_θ] dt + g dw̄, or, with ``probability_flow``,
    the ODE dx/dt = f − ½ g² s_θ that shares the marginals p_t of the forward SDE."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N
        self.T = forward.T

    def _combine(self, f: Array, g: Array, x: Array, t: Array) -> Tuple[Array, Array]:
        """Turns forward (f, G) into reverse ones: f − G² s (½ G² s for the ODE)."""
        factor = 0.5 if self.probability_flow else 1.0
        drift = f - batch_mul(factor * g**2, self.score_fn(x, t))
        return drift, jnp.zeros_like(g) if self.probability_flow else g

    def sde(self, x: Array, t: Array) -> Tuple[Array, Array]:
        """Reverse drift and diffusion at (x, t)."""
        return self._combine(*self.forward.sde(x, t), x, t)

    def discretize(self, x: Array, t: Array) -> Tuple[Array, Array]:
        """Reverse of the forward discretization: f_i − G_i² s, G_i (reverse diffusion)."""
        return self._combine(*self.forward.discretize(x, t), x, t)


class _VPFamily(SDE):
    """Shared β-schedule of VP and sub-VP: β(t) = β₀ + t(β₁−β₀), α = exp(−½B(t)).

    The DDPM schedule β_i = linspace(β₀/N, β₁/N, N) gives the corrector's α_i = 1 − β_i
    (the original code meant this for sub-VP too but crashed: its sub-VP had no
    ``alphas``). Continuous networks get labels 999·t and predict the noise: the score
    is −output/σ(t).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)
        self.discrete_betas = np.linspace(beta_min / N, beta_max / N, N, dtype=np.float64)
        self.alphas = 1.0 - self.discrete_betas

    @classmethod
    def from_config(cls, model_config) -> SDE:
        return cls(model_config.beta_min, model_config.beta_max, model_config.num_scales)

    def beta(self, t: Array) -> Array:
        """β(t)."""
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def integrated_beta(self, t: Array) -> Array:
        """B(t) = β₀ t + ½ (β₁−β₀) t²."""
        return self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2

    def log_mean_coeff(self, t: Array) -> Array:
        return -0.5 * self.integrated_beta(t)

    def drift_coeff(self, t: Array) -> Array:
        return -0.5 * self.beta(t)

    def one_minus_alpha_sq(self, t: Array) -> Array:
        """1 − α(t)² = 1 − e^{−B}, accurate for small t (:func:`one_minus_exp_neg`)."""
        return one_minus_exp_neg(self.integrated_beta(t))

    def time_of_integrated_beta(self, b: Array) -> Array:
        """Solves B(t) = b without cancellation: t = 2b / (β₀ + √(β₀² + 2(β₁−β₀) b))."""
        root = jnp.sqrt(self.beta_0**2 + 2 * (self.beta_1 - self.beta_0) * b)
        return 2 * b / (self.beta_0 + root)

    def corrector_alpha(self, t: Array) -> Array:
        """α_i = 1 − β_i of the DDPM schedule at i = ``timestep_index(t)``."""
        return jnp.asarray(self.alphas, jnp.float32)[self.timestep_index(t)]

    def continuous_network_inputs(self, t: Array) -> Tuple[Array, Array]:
        """Labels 999·t; score = −output/σ(t) (the network predicts the noise)."""
        return t * 999.0, -1.0 / self.std(t)


@register_sde('vpsde')
class VPSDE(_VPFamily):
    """Variance-preserving SDE (continuous DDPM): dx = −½β(t) x dt + √β(t) dw."""

    discrete_objective = 'DDPM'

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(beta_min, beta_max, N)
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)

    def std(self, t: Array) -> Array:
        return jnp.sqrt(self.one_minus_alpha_sq(t))

    def diffusion(self, t: Array) -> Array:
        return jnp.sqrt(self.beta(t))

    def log_inverse_snr(self, t: Array) -> Array:
        """log(σ²/α²) = log(e^B − 1) = B + log(1 − e^{−B})."""
        return self.integrated_beta(t) + jnp.log(self.one_minus_alpha_sq(t))

    def inverse_log_inverse_snr(self, c: Array) -> Array:
        """Closed form: B(t) = log(1 + e^c), then the quadratic in t."""
        return self.time_of_integrated_beta(jnp.logaddexp(0.0, c))

    def discretize(self, x: Array, t: Array) -> Tuple[Array, Array]:
        """DDPM: x_{i+1} = √(1−β_i) x_i + √β_i z_i, i = ``timestep_index(t)``."""
        i = self.timestep_index(t)
        beta = jnp.asarray(self.discrete_betas, jnp.float32)[i]
        # √(1−β) x − x, written without cancellation
        return batch_mul(-beta / (1.0 + jnp.sqrt(1.0 - beta)), x), jnp.sqrt(beta)

    def discrete_network_inputs(self, t: Array) -> Tuple[Array, Array]:
        """DDPM, as the original: float labels t (N−1)/T; score = −output/√(1 − ᾱ_i) with
        i = ``timestep_index(t)``, the floor of the label — the index the samplers' β_i
        use, so network, table and sampler agree on every step of the sampling grid."""
        labels = t * (self.N - 1) / self.T
        table = jnp.asarray(self.sqrt_1m_alphas_cumprod, jnp.float32)
        return labels, -1.0 / table[self.timestep_index(t)]

    def discrete_kernel(self) -> Tuple[np.ndarray, np.ndarray]:
        """DDPM: x̃ = √ᾱ_i x + √(1 − ᾱ_i) z."""
        return self.sqrt_alphas_cumprod, self.sqrt_1m_alphas_cumprod

    def ancestral_step(self, x: Array, t: Array, score: Array) -> Tuple[Array, Array]:
        """DDPM: x_mean = (x + β_i s)/√(1 − β_i), std √β_i."""
        beta = jnp.asarray(self.discrete_betas, jnp.float32)[self.timestep_index(t)]
        x_mean = batch_mul(1.0 / jnp.sqrt(1.0 - beta), x + batch_mul(beta, score))
        return x_mean, jnp.sqrt(beta)


@register_sde('subvpsde')
class subVPSDE(_VPFamily):  # noqa: N801  (the name of the paper code)
    """Sub-VP SDE: dx = −½β(t) x dt + √(β(t)(1 − e^{−2B(t)})) dw; σ(t) = 1 − α(t)²."""

    def std(self, t: Array) -> Array:
        return self.one_minus_alpha_sq(t)

    def diffusion(self, t: Array) -> Array:
        """g = √(β(1 − α⁴)) with 1 − α⁴ = (1 − α²)(2 − (1 − α²)), through σ's own
        1 − α² (see :meth:`one_minus_alpha_sq` for why not −expm1(−2B))."""
        s = self.one_minus_alpha_sq(t)
        return jnp.sqrt(self.beta(t) * s * (2.0 - s))

    def inverse_log_inverse_snr(self, c: Array) -> Array:
        """Closed form: σ/α = (1 − e^{−B})/e^{−B/2} = 2 sinh(B/2) = e^{c/2}, so
        B = 2 asinh(½ e^{c/2}), then the quadratic in t (accurate at both ends: asinh(z) ≈ z
        for small z, log 2z for large)."""
        return self.time_of_integrated_beta(2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * c)))


class _VEFamily(SDE):
    """Shared part of the variance-exploding SDEs: no drift (α = 1), prior N(0, σ_max² I),
    corrector α = 1; continuous networks get σ(t) as label and output the score itself
    (NCSN++ divides by σ inside when ``scale_by_sigma``)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.prior_std = self.sigma_max

    @classmethod
    def from_config(cls, model_config) -> SDE:
        return cls(model_config.sigma_min, model_config.sigma_max, model_config.num_scales)

    def log_mean_coeff(self, t: Array) -> Array:
        return jnp.zeros_like(t)

    def drift_coeff(self, t: Array) -> Array:
        return jnp.zeros_like(t)

    def corrector_alpha(self, t: Array) -> Array:
        return jnp.ones_like(t)

    def continuous_network_inputs(self, t: Array) -> Tuple[Array, Array]:
        """Labels σ(t); score = output."""
        return self.std(t), jnp.ones_like(t)


@register_sde('vesde')
class VESDE(_VEFamily):
    """Variance-exploding SDE (continuous SMLD): σ(t) = σ_min (σ_max/σ_min)^t,
    dx = σ(t) √(2 log(σ_max/σ_min)) dw; prior N(0, σ_max² I)."""

    discrete_objective = 'SMLD'

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(sigma_min, sigma_max, N)
        self.discrete_sigmas = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), N))

    @property
    def _log_ratio(self) -> float:
        return float(np.log(self.sigma_max / self.sigma_min))

    def std(self, t: Array) -> Array:
        return self.sigma_min * jnp.exp(t * self._log_ratio)

    def diffusion(self, t: Array) -> Array:
        return self.std(t) * np.sqrt(2 * self._log_ratio)

    def inverse_log_inverse_snr(self, c: Array) -> Array:
        """Closed form: log σ(t)² = 2 log σ_min + 2 t log(σ_max/σ_min) = c."""
        return (0.5 * c - np.log(self.sigma_min)) / self._log_ratio

    def _sigma_and_previous(self, t: Array) -> Tuple[Array, Array]:
        """σ_i and σ_{i−1} (σ_{−1} = 0) of the SMLD table at i = ``timestep_index(t)``."""
        i = self.timestep_index(t)
        sigmas = jnp.asarray(self.discrete_sigmas, jnp.float32)
        return sigmas[i], jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])

    def discretize(self, x: Array, t: Array) -> Tuple[Array, Array]:
        """SMLD: x_{i+1} = x_i + √(σ_{i+1}² − σ_i²) z_i with σ_{−1} = 0."""
        sigma, prev = self._sigma_and_previous(t)
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - prev**2)

    def discrete_network_inputs(self, t: Array) -> Tuple[Array, Array]:
        """SMLD: label N − 1 − i, i = ``timestep_index(t)``, into the descending σ table
        (its entry N − 1 − i is σ_i, the σ of the step at t); score = output.

        The original's SMLD loss trains exactly these pairs (label j with σ = the
        descending table's j-th entry). Its samplers label round((T − t)(N−1)) instead,
        which on the grid linspace(T, ε, N) is one level off the step's σ_i wherever
        k ε ≥ ½ at step k (half of the steps for N = 1000, ε = 10⁻³).
        """
        labels = (self.N - 1) - self.timestep_index(t)
        return labels, jnp.ones_like(t)

    def discrete_kernel(self) -> Tuple[np.ndarray, np.ndarray]:
        """SMLD: x̃ = x + σ_i z."""
        return np.ones_like(self.discrete_sigmas), self.discrete_sigmas

    def ancestral_step(self, x: Array, t: Array, score: Array) -> Tuple[Array, Array]:
        """SMLD: x_mean = x + (σ_i² − σ_{i−1}²) s, std √(σ_{i−1}² (σ_i² − σ_{i−1}²)/σ_i²)."""
        sigma, prev = self._sigma_and_previous(t)
        x_mean = x + batch_mul(sigma**2 - prev**2, score)
        return x_mean, jnp.sqrt(prev**2 * (sigma**2 - prev**2) / sigma**2)


@register_sde('vesde_linear')
class LinearVESDE(_VEFamily):
    """VE SDE with a linear noise scale σ(t) = σ_min + t (σ_max − σ_min):
    dx = √(dσ²/dt) dw = √(2 σ(t)(σ_max − σ_min)) dw; prior N(0, σ_max² I)."""

    def std(self, t: Array) -> Array:
        return self.sigma_min + t * (self.sigma_max - self.sigma_min)

    def diffusion(self, t: Array) -> Array:
        return jnp.sqrt(2.0 * self.std(t) * (self.sigma_max - self.sigma_min))

    def inverse_log_inverse_snr(self, c: Array) -> Array:
        """Closed form: σ(t) = e^{c/2}."""
        return (jnp.exp(0.5 * c) - self.sigma_min) / (self.sigma_max - self.sigma_min)


@register_sde('linearvesde')
class ScoreFlowLinearVESDE(_VEFamily):
    """ScoreFlow's ``linearvesde``: σ(t) = σ_max t, dx = σ_max √(2t) dw (g² = dσ²/dt);
    prior N(0, σ_max² I). σ_min is not used by the process (σ(0) = 0).

    As in score_flow, a continuous network gets the label 999·t and predicts the noise:
    score = −output/σ(t), like the VP SDEs. It is not :class:`LinearVESDE`
    (``vesde_linear``), whose σ runs from σ_min to σ_max and whose network sees σ(t).
    """

    def std(self, t: Array) -> Array:
        return self.sigma_max * t

    def diffusion(self, t: Array) -> Array:
        return self.sigma_max * jnp.sqrt(2.0 * t)

    def inverse_log_inverse_snr(self, c: Array) -> Array:
        """Closed form: σ_max t = e^{c/2}."""
        return jnp.exp(0.5 * c) / self.sigma_max

    def continuous_network_inputs(self, t: Array) -> Tuple[Array, Array]:
        """Labels 999·t; score = −output/σ(t) (score_flow's models/utils.py)."""
        return t * 999.0, -1.0 / self.std(t)


def get_sde(config) -> SDE:
    """The SDE named by ``config.training.sde``, with the scales of ``config.model``."""
    return get_sde_class(config.training.sde).from_config(config.model)
