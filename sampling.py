"""Samplers for score-based models: predictor–corrector (PC), probability-flow ODE, and
controllable generation (Score SDE, Song et al. ICLR 2021, §4 and §5).

Everything takes a plain ``score_fn(x, t) ≈ ∇_x log p_t(x)`` so that it is tested against
the closed-form mixtures of ``mixture.py``; a model becomes one through
``models.utils.get_score_fn``.

**PC sampling.**  Times t_i = linspace(T, ε, N), i = 0 … N−1.  At each t_i the sampler runs
the *corrector first, then the predictor* (as the original code):
``x ← C(x, t_i)`` (``n_steps`` score-based MCMC steps targeting p_{t_i}), then
``x ← P(x, t_i)`` (one step of a reverse-time SDE solver from t_i towards t_{i+1}).  Every
update returns ``(x, x_mean)``, the sample and its noise-free part; with ``denoise`` the
sampler returns the last ``x_mean`` (the final step adds no noise).

**Langevin corrector and snr.**  One step is ``x ← x + ε s(x, t) + √(2ε) z``, z ~ N(0, I),
with ``ε = 2 α (r ‖z‖ / ‖s‖)²``.  The signal-to-noise ratio r (``snr``) is the ratio of the
deterministic move to the noise: ‖ε s‖ / ‖√(2ε) z‖ = √α · r.  ‖z‖ and ‖s‖ are per-example
L2 norms averaged over the batch (as the original).  Under ``jax.jit`` over a sharded
global batch the mean spans all devices, so no ``pmean`` is needed; the result does depend
on the batch's composition.  α = 1 for VE; for VP and sub-VP, α = α_i = 1 − β_i of the
DDPM schedule β_i = linspace(β₀/N, β₁/N, N) at the step's index i (the original code
meant the same for sub-VP but crashed because ``subVPSDE`` has no ``alphas``).

**Annealed Langevin dynamics** (NCSN, Song & Ermon 2019): the same step with
``ε = 2 α (r σ(t))²``, σ(t) the std of p_0t.

Discrete index of a time t: ``sde.timestep_index(t)`` = ⌊t (N−1) / T⌋, the convention of
``sde_lib.*.discretize`` and of the DDPM score's √(1 − ᾱ_i) table (its network gets the
float label t (N−1), as the original), so a DDPM network and the ancestral step read the
same β_i. (NCSN's integer labels N−1 − ``timestep_index(t)`` count the descending σ
table: the same σ_i.)  Since t_i (N−1) = N−1−i + i ε with i ε < 1,
truncation visits the indices N−1, …, 0 exactly once each (rounding, by contrast, would
visit one index twice and never index 0 once ε (N−1) ≥ ½).
"""

from __future__ import annotations

import abc
import functools
from typing import Callable, Dict, Optional, Tuple, Type

import jax
import jax.numpy as jnp
import numpy as np

import ode_solver
import progress
import sde_lib
import solver_plans
from errors import UserError
from sde_lib import batch_mul

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

# the fixed-step solvers of the probability-flow ODE (docs/MATH.md §Fast sampling)
FAST_METHODS = ('dpm_solver', 'ddim', 'heun')
SAMPLING_METHODS = ('pc', 'ode') + FAST_METHODS  # config.sampling.method
SOLVER_TYPES = solver_plans.SOLVER_TYPES  # config.sampling.solver_type
DPM_ALGORITHMS = solver_plans.DPM_ALGORITHMS  # config.sampling.algorithm
DPM_ORDERS = solver_plans.DPM_ORDERS  # config.sampling.order
SKIP_TYPES = solver_plans.SKIP_TYPES  # config.sampling.skip_type
# config.sampling.task: what `main.py --mode sample` draws (see sample_runner); the
# encoder tasks (the probability-flow ODE as an encoder) are run by encoding.py.
ENCODER_TASKS = ('encode', 'interpolate', 'identifiability')
SAMPLING_TASKS = ('unconditional', 'class_conditional', 'inpaint', 'colorize') + ENCODER_TASKS
_PREDICTORS: Dict[str, Type[Predictor]] = {}
_CORRECTORS: Dict[str, Type[Corrector]] = {}


def register_predictor(name: str):
    """Class decorator: makes a :class:`Predictor` available under ``name``."""

    def register(cls):
        _PREDICTORS[name] = cls
        return cls

    return register


def register_corrector(name: str):
    """Class decorator: makes a :class:`Corrector` available under ``name``."""

    def register(cls):
        _CORRECTORS[name] = cls
        return cls

    return register


def predictor_names() -> Tuple[str, ...]:
    return tuple(sorted(_PREDICTORS))


def corrector_names() -> Tuple[str, ...]:
    return tuple(sorted(_CORRECTORS))


def get_predictor(name: str) -> Type[Predictor]:
    """The predictor class registered as ``name`` (:class:`UserError` if unknown)."""
    return _lookup(_PREDICTORS, name, 'predictor')


def get_corrector(name: str) -> Type[Corrector]:
    """The corrector class registered as ``name`` (:class:`UserError` if unknown)."""
    return _lookup(_CORRECTORS, name, 'corrector')


def _lookup(registry: Dict[str, type], name: str, field: str):
    if name not in registry:
        raise UserError(f'{field}={name!r} is not known; use one of {", ".join(sorted(registry))}.')
    return registry[name]


def tweedie_denoise(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """E[x_0 | x_t] = (x_t + σ(t)² ∇log p_t(x_t)) / α(t) (Tweedie); x + σ² s for VE."""
    mean_coeff = jnp.exp(sde.log_mean_coeff(t))
    return batch_mul(1.0 / mean_coeff, x + batch_mul(sde.std(t) ** 2, score_fn(x, t)))


class _JitPerScoreFn:
    """Runs ``fn(*args, score_fn=score_fn)`` as one jitted computation.

    The compiled function is kept for the last ``score_fn`` only (so repeated calls with
    the same score function compile once, and no older model is kept alive).  Inside an
    outer trace (``jax.jit``/``vmap`` of the caller) it just calls ``fn``, which then
    becomes part of the caller's computation.
    """

    def __init__(self, fn: Callable):
        self._fn = fn
        self._score_fn: Optional[ScoreFn] = None
        self._jitted: Optional[Callable] = None

    def __call__(self, score_fn: ScoreFn, *args, **kwargs):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
            return self._fn(*args, score_fn=score_fn, **kwargs)
        if score_fn is not self._score_fn:
            self._score_fn = score_fn
            self._jitted = jax.jit(functools.partial(self._fn, score_fn=score_fn))
        return self._jitted(*args, **kwargs)


# --- predictors -----------------------------------------------------------------------
class Predictor(abc.ABC):
    """One step of a reverse-time SDE solver: ``update(rng, x, t) -> (x, x_mean)``."""

    uses_score = True  # whether ``update`` evaluates the score once

    def __init__(self, sde: sde_lib.SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.check_supported(sde, probability_flow)
        self.sde = sde
        self.score_fn = score_fn
        self.rsde = sde.reverse(score_fn, probability_flow)

    @classmethod  # noqa: B027  (a hook: supported unless a predictor overrides it)
    def check_supported(cls, sde: sde_lib.SDE, probability_flow: bool) -> None:
        """Raises :class:`UserError` if this predictor cannot run with ``sde`` (every SDE
        and both modes are supported unless a predictor overrides this)."""

    @abc.abstractmethod
    def update(self, rng: Array, x: Array, t: Array) -> Tuple[Array, Array]:
        """One step from t towards t − T/N; returns (sample, its noise-free part)."""


@register_predictor('euler_maruyama')
class EulerMaruyamaPredictor(Predictor):
    """x_mean = x + [f − g² s] Δt,  x = x_mean + g √|Δt| z,  Δt = −T/N (reverse EM).

    With ``probability_flow`` the drift is f − ½ g² s and no noise is added (Euler ODE).
    """

    def update(self, rng, x, t):
        dt = -self.sde.T / self.sde.N
        drift, diffusion = self.rsde.sde(x, t)
        x_mean = x + drift * dt
        noise = jax.random.normal(rng, x.shape)
        return x_mean + batch_mul(diffusion * np.sqrt(-dt), noise), x_mean


@register_predictor('reverse_diffusion')
class ReverseDiffusionPredictor(Predictor):
    """Runs the forward discretization x_{i+1} = x_i + f_i + G_i z backwards:
    x_mean = x − f_i + G_i² s,  x = x_mean + G_i z  (SMLD for VE, DDPM for VP)."""

    def update(self, rng, x, t):
        f, g = self.rsde.discretize(x, t)
        x_mean = x - f
        noise = jax.random.normal(rng, x.shape)
        return x_mean + batch_mul(g, noise), x_mean


@register_predictor('ancestral_sampling')
class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling of the discrete models (Score SDE App. F).

    DDPM (VP): x_mean = (x + β_i s) / √(1 − β_i),  x = x_mean + √β_i z.
    SMLD (VE): x_mean = x + (σ_i² − σ_{i−1}²) s,
               x = x_mean + √(σ_{i−1}² (σ_i² − σ_{i−1}²) / σ_i²) z,  σ_{−1} = 0.
    Defined for the SDEs of discrete models (``sde.ancestral_step``: VESDE, VPSDE); for
    others (sub-VP has no discrete model) it raises :class:`UserError` at construction
    (use ``reverse_diffusion``) rather than silently running another sampler.  Not a
    probability-flow sampler.
    """

    @classmethod
    def check_supported(cls, sde, probability_flow):
        if sde.discrete_objective is None:
            raise UserError(
                f"predictor='ancestral_sampling' is defined for the SDEs of the "
                f'discrete models (SMLD, DDPM) only, not {type(sde).__name__}; use '
                f"'reverse_diffusion' or 'euler_maruyama'."
            )
        if probability_flow:
            raise UserError(
                "predictor='ancestral_sampling' has no probability-flow form; "
                "set probability_flow=False or use 'reverse_diffusion'."
            )

    def update(self, rng, x, t):
        x_mean, std = self.sde.ancestral_step(x, t, self.score_fn(x, t))
        noise = jax.random.normal(rng, x.shape)
        return x_mean + batch_mul(std, noise), x_mean


@register_predictor('none')
class NonePredictor(Predictor):
    """No predictor step (corrector-only samplers such as NCSN's annealed Langevin)."""

    uses_score = False

    def update(self, rng, x, t):
        return x, x


# --- correctors -----------------------------------------------------------------------
class Corrector(abc.ABC):
    """``n_steps`` Langevin-type MCMC steps at fixed t, x ← x + ε s + √(2ε) z;
    subclasses choose the step size ε. ``update(rng, x, t) -> (x, x_mean)``."""

    uses_score = True  # whether each of the ``n_steps`` steps evaluates the score

    def __init__(self, sde: sde_lib.SDE, score_fn: ScoreFn, snr: float, n_steps: int):
        self.sde = sde
        self.score_fn = score_fn
        self.snr = snr
        self.n_steps = int(n_steps)

    @abc.abstractmethod
    def step_size(self, score: Array, noise: Array, t: Array) -> Array:
        """ε per example ([B]) before the factor α."""

    def update(self, rng, x, t):
        alpha = self.sde.corrector_alpha(t)

        def body(k, carry):
            x, _ = carry
            score = self.score_fn(x, t)
            noise = jax.random.normal(jax.random.fold_in(rng, k), x.shape)
            eps = alpha * self.step_size(score, noise, t)
            x_mean = x + batch_mul(eps, score)
            return x_mean + batch_mul(jnp.sqrt(2.0 * eps), noise), x_mean

        return jax.lax.fori_loop(0, self.n_steps, body, (x, x))


def _batch_mean_norm(v: Array) -> Array:
    """Per-example L2 norm, averaged over the (global) batch."""
    return jnp.mean(jnp.linalg.norm(jnp.reshape(v, (v.shape[0], -1)), axis=-1))


@register_corrector('langevin')
class LangevinCorrector(Corrector):
    """ε = 2 α (snr ‖z‖ / ‖s‖)², norms averaged over the batch (see the module doc)."""

    def step_size(self, score, noise, t):
        ratio = self.snr * _batch_mean_norm(noise) / _batch_mean_norm(score)
        return 2.0 * ratio**2 * jnp.ones_like(t)


@register_corrector('ald')
class AnnealedLangevinDynamics(Corrector):
    """NCSN's annealed Langevin dynamics: ε = 2 α (snr σ(t))²."""

    def step_size(self, score, noise, t):
        return 2.0 * (self.snr * self.sde.std(t)) ** 2


@register_corrector('none')
class NoneCorrector(Corrector):
    """No corrector step."""

    uses_score = False

    def step_size(self, score, noise, t):
        return jnp.zeros_like(t)

    def update(self, rng, x, t):
        return x, x


# --- the PC loop, shared by sampling, inpainting and colorization ------------------------
Constraint = Callable[[Array, Array, Array, Array], Tuple[Array, Array]]


def _pc_loop(
    rng: Array,
    x: Array,
    sde: sde_lib.SDE,
    eps: float,
    predictor: Predictor,
    corrector: Corrector,
    constrain: Optional[Constraint] = None,
    resample: int = 1,
) -> Tuple[Array, Array]:
    """N corrector-then-predictor steps at t_i = linspace(T, ε, N) in one ``fori_loop``.

    ``constrain(rng, x, x_mean, t)`` (conditional generation) is applied after the
    corrector at t_i and after the predictor at t_{i+1} (t_N = 0), the time the
    predictor's result belongs to.  With ``resample`` = U > 1 (RePaint, conditional
    generation only) each step is taken U times: after each but the last, x is diffused
    back from t_{i+1} to t_i with the forward kernel (:func:`_diffuse_forward`) and the
    step is repeated from there.  U = 1 is the plain loop (the same random numbers).
    """
    times = jnp.concatenate([jnp.linspace(sde.T, eps, sde.N), jnp.zeros(1)])
    batch = x.shape[0]

    def step(key, x, t, t_next):
        keys = jax.random.split(key, 4)
        x, x_mean = corrector.update(keys[0], x, t)
        if constrain is not None:
            x, x_mean = constrain(keys[1], x, x_mean, t)
        x, x_mean = predictor.update(keys[2], x, t)
        if constrain is not None:
            x, x_mean = constrain(keys[3], x, x_mean, t_next)
        return x, x_mean

    def body(i, carry):
        key = jax.random.fold_in(rng, i)
        t, t_next = jnp.full((batch,), times[i]), jnp.full((batch,), times[i + 1])
        x, x_mean = step(key, carry[0], t, t_next)
        if resample > 1:

            def again(r, carry):
                back_key, step_key = jax.random.split(jax.random.fold_in(key, r))
                x = _diffuse_forward(sde, back_key, carry[0], t_next, t)
                return step(step_key, x, t, t_next)

            x, x_mean = jax.lax.fori_loop(1, resample, again, (x, x_mean))
        progress.report((i + 1) / sde.N)  # for the progress lines (reads i only)
        return x, x_mean

    return jax.lax.fori_loop(0, sde.N, body, (x, x))


def _pc_parts(sde, predictor, corrector, probability_flow, prefix=''):
    """Looks up and validates the predictor and corrector classes."""
    pred_cls = _lookup(_PREDICTORS, predictor, prefix + 'predictor')
    corr_cls = _lookup(_CORRECTORS, corrector, prefix + 'corrector')
    try:
        pred_cls.check_supported(sde, probability_flow)
    except UserError as e:
        raise UserError(prefix + str(e)) from None
    return pred_cls, corr_cls


def _pc_nfe(sde, pred_cls, corr_cls, n_steps) -> int:
    """N·[predictor uses the score] + N·n_steps·[corrector uses it]."""
    return sde.N * int(pred_cls.uses_score) + sde.N * int(n_steps) * int(corr_cls.uses_score)


def get_pc_sampler(
    sde: sde_lib.SDE,
    shape,
    predictor: str,
    corrector: str,
    snr: float,
    n_steps: int = 1,
    probability_flow: bool = False,
    denoise: bool = True,
    eps: float = 1e-3,
):
    """Predictor–corrector sampler (Score SDE Alg. 1; see the module doc for the step order).

    Args:
      sde: the forward SDE; its N is the number of PC steps.
      shape: the batch shape [B, ...] of the samples.
      predictor, corrector: registry names (``predictor_names()``, ``corrector_names()``).
        DDPM ancestral sampling is ('ancestral_sampling', 'none'); NCSN annealed Langevin
        dynamics is ('none', 'ald').
      snr: the corrector's signal-to-noise ratio r.
      n_steps: corrector steps per time step.
      probability_flow: predictors follow the probability-flow ODE (no noise).
      denoise: return the last step's noise-free ``x_mean`` instead of ``x``.
      eps: the last time t_{N−1} = ε.

    Returns:
      ``sampler(rng, score_fn) -> (x, nfe)``, with nfe = N·[predictor uses the score] +
      N·n_steps·[corrector uses it] (a Python int).  The whole sampler is one jitted
      computation, compiled once per score function (see :class:`_JitPerScoreFn`).
      With a model, jit it yourself with the parameters as arguments
      (``jax.jit(lambda rng, p: sampler(rng, make_score_fn(p)))``) so that they are not
      baked into the program as constants.
    """
    pred_cls, corr_cls = _pc_parts(sde, predictor, corrector, probability_flow)
    nfe = _pc_nfe(sde, pred_cls, corr_cls, n_steps)

    def sample(rng, score_fn):
        prior_rng, loop_rng = jax.random.split(rng)
        x = sde.prior_sampling(prior_rng, shape)
        x, x_mean = _pc_loop(
            loop_rng,
            x,
            sde,
            eps,
            pred_cls(sde, score_fn, probability_flow),
            corr_cls(sde, score_fn, snr, n_steps),
        )
        return x_mean if denoise else x

    jitted = _JitPerScoreFn(sample)

    def sampler(rng: Array, score_fn: ScoreFn) -> Tuple[Array, int]:
        return jitted(score_fn, rng), nfe

    return sampler


# --- probability-flow ODE ----------------------------------------------------------------
def _flow_solve(
    sde: sde_lib.SDE,
    score_fn: ScoreFn,
    x: Array,
    t0: float,
    t1: float,
    rtol: float,
    atol: float,
    method: str,
    time_change: Optional[sde_lib.TimeChange] = None,
) -> Tuple[Array, Array]:
    """Integrates dx/dt = f(x, t) − ½ g(t)² s(x, t) from t0 to t1, one adaptive solve per
    example (vmapped, so an example's steps do not depend on the rest of the batch; only
    a batch of one, which XLA compiles differently, can differ by rounding, within the
    tolerances), in the variable of ``time_change`` (``SDE.ode_time_change``; None: t).  Returns
    (x(t1), max NFE over the batch)."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def field(t, y):
        return rsde.sde(y[None], jnp.full((1,), t, y.dtype))[0][0]

    def solve_one(y):
        return ode_solver.solve(
            field,
            y,
            t0,
            t1,
            rtol=rtol,
            atol=atol,
            method=method,
            time_change=time_change,
            progress_time=sde.log_inverse_snr,
        )

    x, nfe = jax.vmap(solve_one)(x)
    return x, jnp.max(nfe)


def get_ode_sampler(
    sde: sde_lib.SDE,
    shape,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = 'dopri5',
    eps: float = 1e-3,
    denoise: bool = False,
    ode_time: str = 't',
):
    """Sampler that decodes z ~ π with the probability-flow ODE from T to ε, integrated
    in the variable ``ode_time`` (``sde_lib.ODE_TIMES``).

    With ``denoise`` the result is the Tweedie estimate E[x_0 | x_ε] =
    (x_ε + σ(ε)² s(x_ε, ε)) / α(ε) (x + σ² s for VE; one more score evaluation).

    Returns:
      ``sampler(rng, score_fn, z=None) -> (x, nfe)``: z defaults to prior draws with
      per-example keys ``fold_in(rng, i)``; nfe is the largest per-example number of
      score evaluations (+1 for ``denoise``), an int32 scalar array.
    """
    _check_ode_method(method)
    time_change = sde.ode_time_change(ode_time)  # an unknown name fails here, not in the jit

    def decode(rng, z, score_fn):
        if z is None:
            z = _prior_draws(sde, rng, shape)
        x, nfe = _flow_solve(sde, score_fn, z, sde.T, eps, rtol, atol, method, time_change)
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, jnp.full((x.shape[0],), eps))
            nfe = nfe + 1
        return x, nfe

    jitted = _JitPerScoreFn(decode)

    def sampler(rng: Array, score_fn: ScoreFn, z: Optional[Array] = None):
        return jitted(score_fn, rng, z)

    return sampler


def _prior_draws(sde: sde_lib.SDE, rng: Array, shape) -> Array:
    """Prior draws z_i ~ π with per-example keys ``fold_in(rng, i)``."""
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(shape[0]))
    return jax.vmap(lambda k: sde.prior_sampling(k, tuple(shape[1:])))(keys)


def get_ode_encoder(
    sde: sde_lib.SDE,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = 'dopri5',
    eps: float = 1e-3,
    ode_time: str = 't',
):
    """``encode(score_fn, x) -> (z, nfe)``: the probability-flow ODE from ε to T, the
    inverse of :func:`get_ode_sampler` without denoising (nfe: max over the batch)."""
    _check_ode_method(method)
    time_change = sde.ode_time_change(ode_time)

    def run(x, score_fn):
        return _flow_solve(sde, score_fn, x, eps, sde.T, rtol, atol, method, time_change)

    jitted = _JitPerScoreFn(run)

    def encode(score_fn: ScoreFn, x: Array) -> Tuple[Array, Array]:
        return jitted(score_fn, x)

    return encode


def _check_ode_method(method: str, field: str = 'method') -> None:
    if method not in ode_solver.SOLVERS:
        raise UserError(
            f'{field}={method!r} is not a known ODE solver; use one of '
            f'{", ".join(ode_solver.solver_names())}.'
        )


# --- fixed-step solvers: DPM-Solver(++), DDIM, EDM's Heun ---------------------------------
def _run_plan(
    plan: solver_plans.SolverPlan,
    score_fn: ScoreFn,
    x: Array,
    rng: Optional[Array],
    constrain: Optional[Callable[[Array, Array, Array, Array], Array]] = None,
) -> Array:
    """The K stages of ``plan`` from x at t₀ in one ``lax.scan`` (``solver_plans``):
    m_k = ε̂ = −σ s(y_k, t_k) or x̂₀ = (y_k + σ² s)/α, then y_{k+1} = a_k x̄ + Σ_j b_kj m_{k−j}
    + c_k z_k, z_k drawn with the first of two keys split from ``fold_in(rng, k)``.
    ``constrain(key, y, α, σ)`` (inpainting; the second key) is applied to every y_{k+1}
    with α, σ of its time.  Returns y_K."""
    dtype = x.dtype
    columns = ('t', 'alpha', 'sigma', 'a', 'b', 'c', 'next_alpha', 'next_sigma')
    xs = {k: jnp.asarray(getattr(plan, k), dtype) for k in columns}
    xs.update(new_base=jnp.asarray(plan.new_base), k=jnp.arange(plan.nfe))

    def stage(carry, p):
        base, y, history = carry
        score = score_fn(y, jnp.full((y.shape[0],), p['t'], dtype))
        if plan.output == 'noise':
            m = -p['sigma'] * score
        else:
            m = (y + p['sigma'] ** 2 * score) / p['alpha']
        history = jnp.concatenate([m[None], history[:-1]])
        y = p['a'] * base + jnp.tensordot(p['b'], history, axes=1)
        if plan.stochastic or constrain is not None:
            noise_key, constrain_key = jax.random.split(jax.random.fold_in(rng, p['k']))
        if plan.stochastic:
            y = y + p['c'] * jax.random.normal(noise_key, y.shape, dtype)
        if constrain is not None:
            y = constrain(constrain_key, y, p['next_alpha'], p['next_sigma'])
        return (jnp.where(p['new_base'], y, base), y, history), None

    history = jnp.zeros((3,) + x.shape, dtype)
    (_, y, _), _ = jax.lax.scan(stage, (x, x, history), xs)
    return y


def _get_plan_sampler(sde: sde_lib.SDE, shape, plan: solver_plans.SolverPlan):
    """``sampler(rng, score_fn, z=None) -> (x, nfe)``: ``plan`` from z (default: prior
    draws with per-example keys ``fold_in(rng, i)``, as :func:`get_ode_sampler`); nfe =
    ``plan.nfe``, a Python int.  One jitted computation per score function."""

    def sample(rng, z, score_fn):
        if z is None:
            z = _prior_draws(sde, rng, shape)
        noise_rng = None if rng is None else jax.random.fold_in(rng, shape[0])
        return _run_plan(plan, score_fn, z, noise_rng)

    jitted = _JitPerScoreFn(sample)

    def sampler(rng: Optional[Array], score_fn: ScoreFn, z: Optional[Array] = None):
        if plan.stochastic and rng is None:
            raise UserError('this sampler adds noise (DDIM with eta > 0): pass an rng key.')
        return jitted(score_fn, rng, z), plan.nfe

    return sampler


def _check_in(field: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f'{field}={value!r} is not one of {", ".join(map(repr, allowed))}.')


def _check_range(field: str, value, ok: bool, requirement: str) -> None:
    if not ok:
        raise UserError(f'{field}={value!r} {requirement}.')


def _check_steps_eps(sde: sde_lib.SDE, steps, eps, prefix: str) -> None:
    _check_range(
        prefix + 'steps', steps, int(steps) == steps and steps >= 1, 'must be an integer ≥ 1'
    )
    _check_range(prefix + 'eps', eps, 0.0 < eps < sde.T, f'must lie in (0, T = {sde.T})')


def dpm_solver_plan(
    sde, steps, order, solver_type, algorithm, skip_type, eps, denoise_to_zero=False, prefix=''
) -> solver_plans.SolverPlan:
    """:func:`solver_plans.dpm_solver_plan` after checking every argument (a
    :class:`UserError` names the field, with ``prefix``)."""
    _check_steps_eps(sde, steps, eps, prefix)
    _check_in(prefix + 'order', order, DPM_ORDERS)
    _check_in(prefix + 'solver_type', solver_type, SOLVER_TYPES)
    _check_in(prefix + 'algorithm', algorithm, DPM_ALGORITHMS)
    _check_in(prefix + 'skip_type', skip_type, SKIP_TYPES)
    return solver_plans.dpm_solver_plan(
        sde, int(steps), int(order), solver_type, algorithm, skip_type, eps, denoise_to_zero
    )


def ddim_plan(
    sde, steps, eta, eps, skip_type='time_uniform', denoise_to_zero=False, prefix=''
) -> solver_plans.SolverPlan:
    """:func:`solver_plans.ddim_plan` after checking every argument."""
    _check_steps_eps(sde, steps, eps, prefix)
    _check_range(prefix + 'eta', eta, 0.0 <= eta <= 1.0, 'must lie in [0, 1]')
    _check_in(prefix + 'skip_type', skip_type, SKIP_TYPES)
    return solver_plans.ddim_plan(sde, int(steps), float(eta), eps, skip_type, denoise_to_zero)


def heun_plan(sde, steps, rho, eps, denoise_to_zero=False, prefix='') -> solver_plans.SolverPlan:
    """:func:`solver_plans.heun_plan` after checking every argument."""
    _check_steps_eps(sde, steps, eps, prefix)
    _check_range(prefix + 'rho', rho, rho > 0, 'must be positive (EDM: 7)')
    return solver_plans.heun_plan(sde, int(steps), float(rho), eps, denoise_to_zero)


def get_dpm_solver_sampler(
    sde: sde_lib.SDE,
    shape,
    steps: int = 20,
    order: int = 3,
    solver_type: str = 'multistep',
    algorithm: str = 'dpmsolver++',
    skip_type: str = 'logSNR',
    eps: float = 1e-3,
    *,
    denoise_to_zero: bool = False,
):
    """DPM-Solver (Lu et al. 2022; ``algorithm='dpmsolver'``, the noise form) or
    DPM-Solver++ ('dpmsolver++', the data form, recommended with classifier guidance) of
    ``order`` 1–3, ``solver_type`` 'singlestep' (DPM-Solver-fast's mix of orders) or
    'multistep', time steps ``skip_type`` (``SKIP_TYPES``), from T to ε with ``steps``
    network evaluations (+1 for ``denoise_to_zero``: x̂₀ at ε).  Works for every SDE
    (docs/MATH.md §Fast sampling).

    Returns ``sampler(rng, score_fn, z=None) -> (x, nfe)`` (z: given prior draws; nfe
    a Python int), one jitted computation per score function, as :func:`get_pc_sampler`.
    """
    plan = dpm_solver_plan(
        sde, steps, order, solver_type, algorithm, skip_type, eps, denoise_to_zero
    )
    return _get_plan_sampler(sde, shape, plan)


def get_ddim_sampler(
    sde: sde_lib.SDE,
    shape,
    steps: int = 20,
    eta: float = 0.0,
    eps: float = 1e-3,
    *,
    skip_type: str = 'time_uniform',
    denoise_to_zero: bool = False,
):
    """DDIM (Song, Meng & Ermon 2021) for any SDE: ``steps`` steps from T to ε on the
    ``skip_type`` grid; η = ``eta`` ∈ [0, 1] (0: deterministic, DPM-Solver-1; 1: the
    ancestral sampler).  NFE = steps (+1 for ``denoise_to_zero``).  Returns
    ``sampler(rng, score_fn, z=None) -> (x, nfe)`` as :func:`get_dpm_solver_sampler`."""
    plan = ddim_plan(sde, steps, eta, eps, skip_type, denoise_to_zero)
    return _get_plan_sampler(sde, shape, plan)


def get_heun_sampler(
    sde: sde_lib.SDE,
    shape,
    steps: int = 10,
    rho: float = 7.0,
    eps: float = 1e-3,
    *,
    denoise_to_zero: bool = False,
):
    """EDM's deterministic Heun sampler (Karras et al. 2022, Alg. 1) for any SDE, in
    σ̃ = σ/α on the ρ-schedule: ``steps`` Heun steps from σ̃(T) to σ̃(ε), NFE = 2·steps
    (+1 for ``denoise_to_zero``, EDM's last Euler step to σ̃ = 0).  Returns
    ``sampler(rng, score_fn, z=None) -> (x, nfe)`` as :func:`get_dpm_solver_sampler`."""
    return _get_plan_sampler(sde, shape, heun_plan(sde, steps, rho, eps, denoise_to_zero))


def get_solver_plan(config, sde: sde_lib.SDE, eps: Optional[float] = None):
    """The plan of ``config.sampling.method`` ∈ :data:`FAST_METHODS` from its fields
    (``steps``, ``order``, ``solver_type``, ``algorithm``, ``skip_type``, ``eta``, ``rho``,
    ``denoise_to_zero``; ``eps`` defaults to ``sampling.eps``)."""
    cfg, prefix = config.sampling, 'config.sampling.'
    eps = float(cfg.eps if eps is None else eps)
    denoise = bool(cfg.denoise_to_zero)
    if cfg.method == 'dpm_solver':
        return dpm_solver_plan(
            sde,
            cfg.steps,
            cfg.order,
            cfg.solver_type,
            cfg.algorithm,
            cfg.skip_type,
            eps,
            denoise,
            prefix,
        )
    if cfg.method == 'ddim':
        return ddim_plan(sde, cfg.steps, cfg.eta, eps, cfg.skip_type, denoise, prefix)
    _check_in(prefix + 'method', cfg.method, FAST_METHODS)
    return heun_plan(sde, cfg.steps, cfg.rho, eps, denoise, prefix)


# --- the pipeline entry point ------------------------------------------------------------
def get_sampling_fn(
    config,
    sde: sde_lib.SDE,
    shape,
    inverse_scaler: Callable[[Array], Array],
    eps: Optional[float] = None,
):
    """``sampling_fn(rng, score_fn) -> (samples, nfe)`` from ``config.sampling``.

    Fields: ``method`` (:data:`SAMPLING_METHODS`), ``predictor``, ``corrector``, ``snr``,
    ``n_steps_each``, ``noise_removal`` (denoise), ``probability_flow``; for 'ode' also
    ``rtol``, ``atol``, ``ode_method`` and ``ode_time`` if present; for 'dpm_solver',
    'ddim' and 'heun' those of :func:`get_solver_plan`.  ``eps`` defaults to
    ``config.sampling.eps`` (1e-3).  Samples are returned through ``inverse_scaler``.
    """
    cfg = config.sampling
    eps = cfg.get('eps', 1e-3) if eps is None else eps
    method = str(cfg.method).lower()
    if method == 'pc':
        _pc_parts(sde, cfg.predictor, cfg.corrector, cfg.probability_flow, 'config.sampling.')
        sampler = get_pc_sampler(
            sde,
            shape,
            cfg.predictor,
            cfg.corrector,
            cfg.snr,
            cfg.n_steps_each,
            cfg.probability_flow,
            cfg.noise_removal,
            eps,
        )
    elif method == 'ode':
        ode_method = cfg.get('ode_method', 'dopri5')
        _check_ode_method(ode_method, 'config.sampling.ode_method')
        sampler = get_ode_sampler(
            sde,
            shape,
            cfg.get('rtol', 1e-5),
            cfg.get('atol', 1e-5),
            ode_method,
            eps,
            cfg.noise_removal,
            cfg.get('ode_time', 't'),
        )
    elif method in FAST_METHODS:
        sampler = _get_plan_sampler(sde, shape, get_solver_plan(config, sde, eps))
    else:
        raise UserError(
            f'config.sampling.method={cfg.method!r} is not known; use one of '
            f'{", ".join(SAMPLING_METHODS)}.'
        )

    def sampling_fn(rng: Array, score_fn: ScoreFn):
        x, nfe = sampler(rng, score_fn)
        return inverse_scaler(x), nfe

    return sampling_fn


# --- controllable generation (Score SDE §5) -----------------------------------------------
def _diffuse_forward(sde: sde_lib.SDE, rng: Array, x: Array, s: Array, t: Array) -> Array:
    """A draw of the forward kernel p(x_t | x_s), s ≤ t: N(a x_s, (σ(t)² − a² σ(s)²) I) with
    a = α(t)/α(s) (the Markov property of p_0t = N(α x_0, σ² I) gives the variance)."""
    a = jnp.exp(sde.log_mean_coeff(t) - sde.log_mean_coeff(s))
    var = jnp.maximum(sde.std(t) ** 2 - a**2 * sde.std(s) ** 2, 0.0)
    return batch_mul(a, x) + batch_mul(jnp.sqrt(var), jax.random.normal(rng, x.shape))


def _check_resample(resample) -> int:
    if int(resample) != resample or resample < 1:
        raise UserError(f'resample={resample!r} must be an integer ≥ 1 (1: no resampling).')
    return int(resample)


def _get_pc_projector(
    sde, predictor, corrector, snr, n_steps, eps, to_basis, from_basis, resample: int = 1
):
    """PC sampling that keeps the masked part of ``to_basis(x)`` consistent with data.

    After every corrector and predictor update at time t the known part (mask = 1, in the
    orthogonal basis y = to_basis(x)) is replaced by a fresh sample of
    p_0t(· | data) = N(α(t) y_data, σ(t)² I) and its mean α(t) y_data (Score SDE App. I).
    The last replacement is at t = 0, so the result keeps the known part exactly.
    This is the paper's approximation of conditional sampling, not an exact one: it
    uses ∇log p_t(x_unknown, ŷ_t) with ŷ_t ~ p_0t(· | data) in place of
    ∇log p_t(x_unknown | data).

    ``resample`` = U > 1 adds RePaint's resampling (Lugmayr et al. 2022): each
    (corrector, predictor) step from t_i to t_{i+1} is taken U times, x diffused back to
    t_i with the forward kernel p(x_{t_i} | x_{t_{i+1}}) between the repetitions, which
    lets the unknown part follow the known one; it costs U times the score evaluations
    (docs/controllable.md measures how much closer to the exact conditional it gets).
    U = 1 is the original scheme.
    """
    pred_cls, corr_cls = _pc_parts(sde, predictor, corrector, False)
    resample = _check_resample(resample)

    def run(rng, data, mask, score_fn):
        y_data = to_basis(data)
        mask = jnp.broadcast_to(mask, y_data.shape).astype(y_data.dtype)

        def constrain(key, x, x_mean, t):
            mean, std = sde.marginal_prob(y_data, t)
            known = mean + batch_mul(std, jax.random.normal(key, y_data.shape))
            keep = 1.0 - mask
            return (
                from_basis(to_basis(x) * keep + known * mask),
                from_basis(to_basis(x_mean) * keep + mean * mask),
            )

        prior_rng, init_rng, loop_rng = jax.random.split(rng, 3)
        x = sde.prior_sampling(prior_rng, data.shape)
        x, _ = constrain(init_rng, x, x, jnp.full((data.shape[0],), sde.T))
        _, x_mean = _pc_loop(
            loop_rng,
            x,
            sde,
            eps,
            pred_cls(sde, score_fn),
            corr_cls(sde, score_fn, snr, n_steps),
            constrain,
            resample,
        )
        return x_mean

    jitted = _JitPerScoreFn(run)

    def projector(rng, score_fn, data, mask):
        return jitted(score_fn, rng, data, mask)

    return projector


def get_pc_inpainter(
    sde: sde_lib.SDE,
    predictor: str,
    corrector: str,
    snr: float,
    n_steps: int = 1,
    eps: float = 1e-3,
    resample: int = 1,
):
    """``inpaint(rng, score_fn, data, mask) -> x``: PC sampling of the unknown region
    (mask = 0) given the known one (mask = 1, broadcastable to data), which the result
    keeps exactly.  See :func:`_get_pc_projector` for the replacement rule and for
    ``resample`` (RePaint rounds per step; 1 = the original scheme)."""
    return _get_pc_projector(
        sde, predictor, corrector, snr, n_steps, eps, lambda x: x, lambda y: y, resample
    )


# Orthonormal colour basis: the first column is the grey direction (1, 1, 1)/√3, the other
# two span chroma (the original code's matrix M, exact).
COLOR_BASIS = np.stack(
    [
        np.ones(3) / np.sqrt(3.0),
        np.array([-2.0, 1.0, 1.0]) / np.sqrt(6.0),
        np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0),
    ],
    axis=1,
).astype(np.float32)


def get_pc_colorizer(
    sde: sde_lib.SDE,
    predictor: str,
    corrector: str,
    snr: float,
    n_steps: int = 1,
    eps: float = 1e-3,
    resample: int = 1,
):
    """``colorize(rng, score_fn, gray) -> x`` for images [..., 3]: keeps the grey
    component y₀ = ⟨x, (1,1,1)⟩/√3 of ``gray`` (a grey image repeated over the three
    channels, or any colour image whose grey level is kept) and samples the chroma.

    Inpainting in the orthogonal basis y = x M (:data:`COLOR_BASIS`), where the grey
    level is one coordinate; M is orthogonal, so the noise stays isotropic in y.
    ``resample``: RePaint rounds per step as in :func:`get_pc_inpainter`.
    """
    m = jnp.asarray(COLOR_BASIS)
    project = _get_pc_projector(
        sde, predictor, corrector, snr, n_steps, eps, lambda x: x @ m, lambda y: y @ m.T, resample
    )
    grey_mask = jnp.asarray([1.0, 0.0, 0.0])

    def colorize(rng: Array, score_fn: ScoreFn, gray: Array) -> Array:
        return project(rng, score_fn, gray, grey_mask)

    return colorize


def _get_plan_projector(sde: sde_lib.SDE, plan: solver_plans.SolverPlan, to_basis, from_basis):
    """A fast solver that keeps the masked part of ``to_basis(x)`` consistent with data:
    the known part (mask = 1, in y = to_basis(x)) of the prior draw and of every stage's
    y_{k+1} is replaced by a fresh draw of p_0t(· | data) = N(α y_data, σ² I), α and σ of
    y_{k+1}'s time, and by y_data at the end, so the result keeps it exactly.  The rule and
    the approximation of the conditional are those of :func:`_get_pc_projector`, without a
    corrector; the deterministic solvers are further from the exact conditional than the
    PC sampler (docs/controllable.md measures both)."""

    def run(rng, data, mask, score_fn):
        y_data = to_basis(data)
        mask = jnp.broadcast_to(mask, y_data.shape).astype(y_data.dtype)

        def constrain(key, x, alpha, sigma):
            known = alpha * y_data + sigma * jax.random.normal(key, y_data.shape, y_data.dtype)
            return from_basis(to_basis(x) * (1.0 - mask) + known * mask)

        prior_rng, init_rng, loop_rng = jax.random.split(rng, 3)
        x = sde.prior_sampling(prior_rng, data.shape)
        x = constrain(init_rng, x, float(plan.alpha[0]), float(plan.sigma[0]))
        x = _run_plan(plan, score_fn, x, loop_rng, constrain)
        return constrain(init_rng, x, 1.0, 0.0)

    jitted = _JitPerScoreFn(run)

    def projector(rng, score_fn, data, mask):
        return jitted(score_fn, rng, data, mask)

    return projector


def get_solver_inpainter(sde: sde_lib.SDE, plan: solver_plans.SolverPlan):
    """``inpaint(rng, score_fn, data, mask) -> x`` by a fast solver's ``plan`` (e.g.
    :func:`dpm_solver_plan`): the unknown region (mask = 0) sampled, the known one
    (mask = 1, broadcastable to data) kept exactly; see :func:`_get_plan_projector`."""
    return _get_plan_projector(sde, plan, lambda x: x, lambda y: y)


def get_solver_colorizer(sde: sde_lib.SDE, plan: solver_plans.SolverPlan):
    """``colorize(rng, score_fn, gray) -> x`` by a fast solver's ``plan``: the grey level
    kept, the chroma sampled, as :func:`get_pc_colorizer`."""
    m = jnp.asarray(COLOR_BASIS)
    project = _get_plan_projector(sde, plan, lambda x: x @ m, lambda y: y @ m.T)
    grey_mask = jnp.asarray([1.0, 0.0, 0.0])

    def colorize(rng: Array, score_fn: ScoreFn, gray: Array) -> Array:
        return project(rng, score_fn, gray, grey_mask)

    return colorize


def _pc_projection_args(s) -> tuple:
    """The PC projector's arguments from ``config.sampling``: predictor, corrector, snr,
    corrector steps, ε and RePaint rounds."""
    return (
        s.predictor,
        s.corrector,
        float(s.snr),
        int(s.n_steps_each),
        float(s.eps),
        int(s.inpaint_resample),
    )


def get_inpainting_fn(config, sde: sde_lib.SDE):
    """``inpaint(rng, score_fn, data, mask)`` of ``config.sampling``: a fast solver for
    ``method`` in :data:`FAST_METHODS`, else the PC projector (``predictor``,
    ``corrector``, ``snr``, ``n_steps_each``, ``eps``, ``inpaint_resample``)."""
    s = config.sampling
    if s.method in FAST_METHODS:
        return get_solver_inpainter(sde, get_solver_plan(config, sde))
    return get_pc_inpainter(sde, *_pc_projection_args(s))


def get_colorizing_fn(config, sde: sde_lib.SDE):
    """``colorize(rng, score_fn, gray)`` of ``config.sampling``, as :func:`get_inpainting_fn`."""
    s = config.sampling
    if s.method in FAST_METHODS:
        return get_solver_colorizer(sde, get_solver_plan(config, sde))
    return get_pc_colorizer(sde, *_pc_projection_args(s))


def conditional_score_fn(
    score_fn: ScoreFn,
    classifier_logp_grad_fn: Callable[[Array, Array, Array], Array],
    y: Array,
    scale: float = 1.0,
) -> ScoreFn:
    """∇log p_t(x | y) = ∇log p_t(x) + scale · ∇log p_t(y | x) (Score SDE §5, class-
    conditional sampling with a time-dependent classifier; scale > 1 is classifier
    guidance).  ``classifier_logp_grad_fn(x, t, y)`` returns ∇_x log p_t(y | x), e.g.
    ``jax.grad(lambda x: jnp.sum(log_softmax(logits(x, t))[arange(B), y]))``."""

    def conditional(x: Array, t: Array) -> Array:
        return score_fn(x, t) + scale * classifier_logp_grad_fn(x, t, y)

    return conditional
