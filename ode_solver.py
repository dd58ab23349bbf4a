"""Adaptive ODE solves that run entirely on device (diffrax), with an NFE count.

Used by the probability-flow ODE sampler (``sampling.py``) and the exact likelihood
(``likelihood.py``).  The whole solve is one XLA computation: no host round trip per step,
so it can be jitted, vmapped (one adaptive step size per example) and sharded. Each step
reports the solve's position (the least advanced example's, in the integration variable)
to :mod:`progress` through one host callback that reads it, for the progress lines of a
long batch; the results do not depend on it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import progress

# name -> (solver class, vector-field evaluations per attempted step).  These solvers are
# FSAL: one extra evaluation at the start.  Checked by counting calls (see tests).
SOLVERS = {
    'dopri5': (diffrax.Dopri5, 6),
    'rk45': (diffrax.Dopri5, 6),
    'tsit5': (diffrax.Tsit5, 6),
    'bosh3': (diffrax.Bosh3, 3),
    'dopri8': (diffrax.Dopri8, 13),
}


def solver_names() -> Tuple[str, ...]:
    return tuple(SOLVERS)


class _ProgressReport(diffrax.AbstractProgressMeter):
    """diffrax's per-step hook: the solve's position in [0, 1] (``position`` of diffrax's
    fraction of the integration interval) to ``progress.report_slowest``."""

    position: Callable[[jax.Array], jax.Array] = eqx.field(static=True)

    def init(self) -> None:
        return None

    def step(self, state: None, progress_value) -> None:
        progress.report_slowest(self.position(progress_value))
        return state

    def close(self, state: None) -> None:
        del state


def _position(s0, s1, time_change, progress_time) -> Callable[[jax.Array], jax.Array]:
    """diffrax's fraction f of [s0, s1] → the fraction of [m(t(s0)), m(t(s1))] reached at
    s0 + f (s1 − s0), with m = ``progress_time`` and t(s) the time of ``time_change``."""
    if progress_time is None:
        return lambda f: f

    def m(s):
        s = jnp.asarray(s, jnp.float32)
        return progress_time(s if time_change is None else time_change.to_t(s))

    def position(f):
        return jnp.clip((m(s0 + f * (s1 - s0)) - m(s0)) / (m(s1) - m(s0)), 0.0, 1.0)

    return position


def solve(
    fn: Callable[[jax.Array, Any], Any],
    y0: Any,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = 'dopri5',
    max_steps: int = 8192,
    time_change: Optional[Any] = None,
    progress_time: Optional[Callable[[jax.Array], jax.Array]] = None,
) -> Tuple[Any, jax.Array]:
    """Integrates dy/dt = fn(t, y) from t0 to t1 with an adaptive embedded Runge–Kutta pair.

    Args:
      fn: vector field ``fn(t, y) -> dy`` on a pytree ``y``.
      y0: initial state (any pytree of arrays).
      t0, t1: integration interval (t1 < t0 integrates backwards).
      rtol, atol: tolerances of the PID step-size controller (error in RMS norm).
      method: one of :data:`SOLVERS` ('dopri5' ≙ SciPy's RK45 pair).
      max_steps: bound on attempted steps; exceeding it gives NaN results.
      time_change: None, or an object with ``to_u(t)``, ``to_t(u)`` and ``dt_du(t)``
        (``sde_lib.TimeChange``): the same ODE is integrated in u = u(t) from u(t0) to
        u(t1), as dy/du = fn(t(u), y) · dt/du.
      progress_time: a monotone function of t in which the progress lines measure how far
        the solve is (e.g. ``sde.log_inverse_snr``, in which adaptive steps are roughly
        even); None: the integration variable. Results do not depend on it.

    Returns:
      (y(t1), nfe): the state at t1 and the number of evaluations of ``fn``.
    """
    if method not in SOLVERS:
        raise ValueError(f'unknown ODE method {method!r}; use one of {", ".join(SOLVERS)}')
    solver_cls, stages = SOLVERS[method]
    term, s0, s1 = lambda t, y, args: fn(t, y), t0, t1
    if time_change is not None:
        s0, s1 = time_change.to_u(jnp.asarray(t0)), time_change.to_u(jnp.asarray(t1))

        def term(u, y, args):
            t = time_change.to_t(u)
            return jax.tree.map(lambda d: d * time_change.dt_du(t).astype(d.dtype), fn(t, y))

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(term),
        solver_cls(),
        t0=s0,
        t1=s1,
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
        saveat=diffrax.SaveAt(t1=True),
        progress_meter=_ProgressReport(_position(s0, s1, time_change, progress_time)),
    )
    y1 = jax.tree.map(lambda y: y[-1], sol.ys)
    failed = sol.result != diffrax.RESULTS.successful
    y1 = jax.tree.map(lambda y: jnp.where(failed, jnp.nan, y), y1)
    return y1, stages * sol.stats['num_steps'] + 1
