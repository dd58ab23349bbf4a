"""Fixed-step solvers of the probability-flow ODE, written as plans of stages: DPM-Solver
and DPM-Solver++ (Lu et al., NeurIPS 2022 and arXiv:2211.01095), DDIM (Song, Meng & Ermon,
ICLR 2021) and EDM's Heun sampler (Karras et al., NeurIPS 2022).  docs/MATH.md §Fast
sampling has the derivations; ``sampling`` runs a plan on device.

Every SDE here perturbs data as x_t = α_t x_0 + σ_t ε, and its probability-flow ODE in the
half log-SNR λ_t = log(α_t/σ_t) has the exact solution (DPM-Solver eq. 3.4; ++ eq. 8)

    x_t = (α_t/α_s) x_s − α_t ∫_{λ_s}^{λ_t} e^{−λ} ε̂(x_λ, λ) dλ
        = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂₀(x_λ, λ) dλ,

with the noise prediction ε̂ = −σ_t ∇log p_t and the data prediction x̂₀ = (x_t + σ_t²
∇log p_t)/α_t.  Every solver here is linear in the state and the model outputs, so it is a
*plan* of K stages (K = the number of network evaluations, NFE).  Stage k evaluates the model
m_k = m(y_k, t_k) (ε̂ or x̂₀, ``SolverPlan.output``) and forms

    y_{k+1} = a_k x̄ + b_{k0} m_k + b_{k1} m_{k−1} + b_{k2} m_{k−2} + c_k z_k,   z_k ~ N(0, I),

where x̄ is the state at the start of the current step (a step of a singlestep solver takes
up to three stages; y_{k+1} becomes x̄ where a step ends, ``new_base``).  The coefficients
depend on the time grid only, so they are computed here once, on the host, in float64,
from the SDE's α, σ, λ and t(λ) (``sde_lib``: ``half_log_snr``, ``time_of_half_log_snr``).
With z = κh, h = λ_t − λ_s > 0, κ = +1 for ε̂ (DPM-Solver) and −1 for x̂₀ (DPM-Solver++),
A = α_t/α_s or σ_t/σ_s and M = σ_t or α_t, and

    φ₁(z) = e^z − 1,   φ₂(z) = (e^z − 1)/z − 1,   φ₃(z) = (e^z − 1 − z)/z² − ½,

the first-order step is x_t = A x_s − M φ₁(z) m_s for both (DPM-Solver-1 = DDIM).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

OUTPUTS = ('noise', 'data')  # what a plan's model evaluations return: ε̂ or x̂₀
SOLVER_TYPES = ('singlestep', 'multistep')  # config.sampling.solver_type (dpm_solver)
DPM_ALGORITHMS = ('dpmsolver', 'dpmsolver++')  # config.sampling.algorithm: ε̂ or x̂₀ form
DPM_ORDERS = (1, 2, 3)  # config.sampling.order
SKIP_TYPES = ('logSNR', 'time_uniform', 'time_quadratic')  # config.sampling.skip_type
LOWER_ORDER_FINAL_BELOW = 10  # multistep: fewer steps than this end with lower orders


class SolverPlan(NamedTuple):
    """K stages of a fixed-step solver (module docstring); arrays of float64 / bool.

    Attributes:
      output: 'noise' (the model is ε̂) or 'data' (x̂₀).
      t, alpha, sigma: [K] the time of each evaluation and α, σ there.
      a, b, c: [K], [K, 3], [K] the coefficients of x̄, (m_k, m_{k−1}, m_{k−2}) and z_k.
      new_base: [K] whether y_{k+1} starts a step (becomes x̄).
      next_alpha, next_sigma: [K] α and σ of the time y_{k+1} belongs to ((1, 0) after a
        final denoising step, which lands on the data).
    """

    output: str
    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    new_base: np.ndarray
    next_alpha: np.ndarray
    next_sigma: np.ndarray

    @property
    def nfe(self) -> int:
        """Network evaluations: one per stage."""
        return len(self.t)

    @property
    def stochastic(self) -> bool:
        """Whether any stage adds noise (DDIM with η > 0)."""
        return bool(np.any(self.c != 0.0))


class _Stage(NamedTuple):
    t: float  # evaluation time t_k
    a: float
    b: Tuple[float, ...]  # up to three coefficients of m_k, m_{k−1}, m_{k−2}
    new_base: bool
    t_next: Optional[float]  # the time of y_{k+1}; None after the final denoising
    c: float = 0.0


# --- α, σ, λ of an SDE on the host in float64 ---------------------------------------------
class Schedule:
    """α(t), σ(t), λ(t) and t(λ) of ``sde`` as float64 NumPy (eagerly, also while a caller
    is being traced)."""

    def __init__(self, sde):
        self.sde = sde
        self.T = float(sde.T)
        self._points = {}

    @staticmethod
    def _eval(fn, x) -> np.ndarray:
        """fn elementwise on scalars (one compiled shape, whatever the grid's length)."""
        x = np.asarray(x, np.float64)
        with jax.enable_x64(True), jax.ensure_compile_time_eval():
            values = [float(fn(jnp.asarray(v, jnp.float64))) for v in x.ravel()]
        return np.array(values, np.float64).reshape(x.shape)

    def alpha(self, t) -> np.ndarray:
        return np.exp(self._eval(self.sde.log_mean_coeff, t))

    def sigma(self, t) -> np.ndarray:
        return self._eval(self.sde.std, t)

    def lam(self, t) -> np.ndarray:
        return self._eval(self.sde.half_log_snr, t)

    def time(self, lam) -> np.ndarray:
        return self._eval(self.sde.time_of_half_log_snr, lam)

    def point(self, t: float) -> Tuple[float, float, float]:
        """(α, σ, λ) at one time t, cached."""
        key = float(t)
        if key not in self._points:
            self._points[key] = tuple(float(f(key)) for f in (self.alpha, self.sigma, self.lam))
        return self._points[key]


def time_grid(sched: Schedule, skip_type: str, t_start: float, t_end: float, n: int) -> np.ndarray:
    """n + 1 times from t_start down to t_end: uniform in λ ('logSNR'), in t
    ('time_uniform') or in √t ('time_quadratic', DDIM's); the ends exact."""
    if skip_type == 'logSNR':
        lams = np.linspace(sched.lam(t_start), sched.lam(t_end), n + 1)
        grid = sched.time(lams)
    elif skip_type == 'time_uniform':
        grid = np.linspace(t_start, t_end, n + 1)
    else:
        grid = np.linspace(np.sqrt(t_start), np.sqrt(t_end), n + 1) ** 2
    grid[0], grid[-1] = t_start, t_end
    return grid


def rho_grid(sched: Schedule, rho: float, t_start: float, t_end: float, n: int) -> np.ndarray:
    """EDM's schedule (Karras et al. eq. 5) in σ̃ = σ/α = e^{−λ}: σ̃_i = (σ̃_max^{1/ρ} +
    i/n (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ, i = 0 … n, σ̃_max = σ̃(t_start), σ̃_min = σ̃(t_end);
    returned as times t_i = t(λ = −log σ̃_i)."""
    hi, lo = np.exp(-sched.lam(t_start)) ** (1 / rho), np.exp(-sched.lam(t_end)) ** (1 / rho)
    sig = (hi + np.linspace(0.0, 1.0, n + 1) * (lo - hi)) ** rho
    grid = sched.time(-np.log(sig))
    grid[0], grid[-1] = t_start, t_end
    return grid


# --- the φ functions ----------------------------------------------------------------------
def phi1(z: float) -> float:
    return float(np.expm1(z))


def phi2(z: float) -> float:
    """(e^z − 1)/z − 1, by its series z/2 + z²/6 + z³/24 for |z| < 1e-3."""
    if abs(z) < 1e-3:
        return z / 2 + z**2 / 6 + z**3 / 24
    return float(np.expm1(z) / z - 1.0)


def phi3(z: float) -> float:
    """(e^z − 1 − z)/z² − ½, by its series z/6 + z²/24 + z³/120 for |z| < 1e-3."""
    if abs(z) < 1e-3:
        return z / 6 + z**2 / 24 + z**3 / 120
    return float((np.expm1(z) - z) / z**2 - 0.5)


class _Form:
    """The ε̂ (κ = +1) or x̂₀ (κ = −1) form of the exponential integrator from time s:
    A(u) = α_u/α_s or σ_u/σ_s (``scale``), M(u) = σ_u or α_u (``weight``),
    z(u) = κ (λ_u − λ_s)."""

    def __init__(self, sched: Schedule, output: str, s: float):
        self.sched, self.kappa = sched, 1.0 if output == 'noise' else -1.0
        self.alpha_s, self.sigma_s, self.lam_s = sched.point(s)

    def scale(self, u: float) -> float:
        alpha, sigma, _ = self.sched.point(u)
        return alpha / self.alpha_s if self.kappa > 0 else sigma / self.sigma_s

    def weight(self, u: float) -> float:
        alpha, sigma, _ = self.sched.point(u)
        return sigma if self.kappa > 0 else alpha

    def z(self, u: float) -> float:
        return self.kappa * (self.sched.point(u)[2] - self.lam_s)


# --- DPM-Solver: singlestep ------------------------------------------------------------------
def singlestep_orders(steps: int, order: int) -> List[int]:
    """DPM-Solver-fast's orders per step for ``steps`` NFE (Lu et al. App. D.1): order 3:
    K = ⌊steps/3⌋ + 1 steps, [3]·(K−2) + [2, 1] (steps ≡ 0 mod 3), [3]·(K−1) + [1] (≡ 1),
    [3]·(K−1) + [2] (≡ 2); order 2: [2]·⌊steps/2⌋ (+ [1] if odd); order 1: [1]·steps."""
    if order == 3:
        k, rem = steps // 3 + 1, steps % 3
        return [3] * (k - 2) + [2, 1] if rem == 0 else [3] * (k - 1) + ([1] if rem == 1 else [2])
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    return [1] * steps


def _singlestep_stages(sched, output, s, t, inner: np.ndarray) -> List[_Stage]:
    """One step s → t of singlestep DPM-Solver-k, k = len(inner) − 1 stages at the inner
    times s = s₀ > s₁ > s₂ (r_i = (λ_{s_i} − λ_s)/h), 'dpm_solver' type (Lu et al. Alg. 1, 4,
    5 and ++ Alg. 1):
      k = 1:  x_t = A_t x − M_t φ₁(z) m₀
      k = 2:  y₁ = A₁ x − M₁ φ₁(r₁z) m₀;  x_t = A_t x − M_t φ₁(z) m₀ − M_t φ₁(z)(m₁ − m₀)/(2r₁)
      k = 3:  y₁ as above;  y₂ = A₂ x − M₂ φ₁(r₂z) m₀ − (r₂/r₁) M₂ φ₂(r₂z)(m₁ − m₀);
              x_t = A_t x − M_t φ₁(z) m₀ − M_t φ₂(z)(m₂ − m₀)/r₂."""
    f, k = _Form(sched, output, s), len(inner) - 1
    h = f.kappa * f.z(t)
    r = [(sched.point(u)[2] - f.lam_s) / h for u in inner[1:-1]]
    z, At, Mt = f.z(t), f.scale(t), f.weight(t)
    if k == 1:
        return [_Stage(s, At, (-Mt * phi1(z),), True, t)]
    s1, A1, M1 = inner[1], f.scale(inner[1]), f.weight(inner[1])
    first = _Stage(s, A1, (-M1 * phi1(r[0] * z),), False, s1)
    if k == 2:
        d = Mt * phi1(z) / (2 * r[0])  # coefficient of (m₁ − m₀)
        return [first, _Stage(s1, At, (-d, -Mt * phi1(z) + d), True, t)]
    s2, A2, M2 = inner[2], f.scale(inner[2]), f.weight(inner[2])
    e = (r[1] / r[0]) * M2 * phi2(r[1] * z)  # coefficient of (m₁ − m₀) in y₂
    second = _Stage(s1, A2, (-e, -M2 * phi1(r[1] * z) + e), False, s2)
    g = Mt * phi2(z) / r[1]  # coefficient of (m₂ − m₀)
    return [first, second, _Stage(s2, At, (-g, 0.0, -Mt * phi1(z) + g), True, t)]


def _singlestep(sched, output, steps, order, skip_type, t_start, t_end) -> List[_Stage]:
    """DPM-Solver-fast: the orders of :func:`singlestep_orders`; outer steps uniform in λ
    ('logSNR') or the ``steps``-point grid at the cumulated orders (time skips), inner
    times of a step on the same kind of grid."""
    orders = singlestep_orders(steps, order)
    if skip_type == 'logSNR':
        outer = time_grid(sched, skip_type, t_start, t_end, len(orders))
    else:
        outer = time_grid(sched, skip_type, t_start, t_end, steps)[np.cumsum([0] + orders)]
    stages = []
    for i, k in enumerate(orders):
        inner = time_grid(sched, skip_type, outer[i], outer[i + 1], k)
        stages += _singlestep_stages(sched, output, outer[i], outer[i + 1], inner)
    return stages


# --- DPM-Solver: multistep -------------------------------------------------------------------
def multistep_orders(steps: int, order: int) -> List[int]:
    """Step k uses order min(order, k + 1) (the first steps have fewer previous outputs)
    and, for fewer than :data:`LOWER_ORDER_FINAL_BELOW` steps, at most steps − k (the
    reference implementation's ``lower_order_final``, for stability at very few steps)."""
    orders = [min(order, k + 1) for k in range(steps)]
    if steps < LOWER_ORDER_FINAL_BELOW:
        orders = [min(o, steps - k) for k, o in enumerate(orders)]
    return orders


def _multistep_stage(sched, output, times: Sequence[float], t: float) -> _Stage:
    """One step of multistep DPM-Solver-k from times = (t_{n}, t_{n−1}, …) (k of them,
    newest first) to t, with h = λ_t − λ_{t_n}, r₀ = (λ_{t_n} − λ_{t_{n−1}})/h,
    r₁ = (λ_{t_{n−1}} − λ_{t_{n−2}})/h, D₁⁰ = (m₀ − m₁)/r₀, D₁¹ = (m₁ − m₂)/r₁
    (Lu et al. ++ Alg. 2 and its order-3 form):
      k = 1:  x_t = A x − M φ₁(z) m₀
      k = 2:  x_t = A x − M φ₁(z) m₀ − ½ M φ₁(z) D₁⁰
      k = 3:  x_t = A x − M φ₁(z) m₀ − M φ₂(z) D₁ − M φ₃(z) D₂,
              D₁ = D₁⁰ + r₀/(r₀ + r₁) (D₁⁰ − D₁¹) ≈ h m′,  D₂ = 2 (D₁⁰ − D₁¹)/(r₀ + r₁) ≈ h² m″.
    The reference code (dpm-solver, and k-diffusion's and diffusers' copies) has
    D₂ = (D₁⁰ − D₁¹)/(r₀ + r₁) ≈ ½ h² m″, half the term, which makes its third-order
    multistep solver second order (measured: docs/MATH.md §Fast sampling)."""
    f = _Form(sched, output, times[0])
    z, A, M = f.z(t), f.scale(t), f.weight(t)
    h, lams = f.kappa * z, [sched.point(u)[2] for u in times]
    b = np.zeros(3)
    b[0] = -M * phi1(z)
    if len(times) == 1:
        return _Stage(times[0], A, tuple(b), True, t)
    r0 = (lams[0] - lams[1]) / h
    d10 = np.array([1.0, -1.0, 0.0]) / r0  # D₁⁰ in terms of (m₀, m₁, m₂)
    if len(times) == 2:
        return _Stage(times[0], A, tuple(b - 0.5 * M * phi1(z) * d10), True, t)
    r1 = (lams[1] - lams[2]) / h
    d11 = np.array([0.0, 1.0, -1.0]) / r1
    d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
    d2 = 2 * (d10 - d11) / (r0 + r1)
    return _Stage(times[0], A, tuple(b - M * phi2(z) * d1 - M * phi3(z) * d2), True, t)


def _multistep(sched, output, steps, order, skip_type, t_start, t_end) -> List[_Stage]:
    """Multistep DPM-Solver(++) on a ``steps``-step grid, orders :func:`multistep_orders`."""
    grid = time_grid(sched, skip_type, t_start, t_end, steps)
    orders = multistep_orders(steps, order)
    return [
        _multistep_stage(sched, output, grid[k - orders[k] + 1 : k + 1][::-1], grid[k + 1])
        for k in range(steps)
    ]


# --- plans ----------------------------------------------------------------------------------
def _denoise_stage(sched: Schedule, output: str, t: float) -> _Stage:
    """x̂₀ at t (one evaluation): x̂₀ itself, or (x − σ ε̂)/α."""
    if output == 'data':
        return _Stage(t, 0.0, (1.0,), True, None)
    alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
    return _Stage(t, 1.0 / alpha, (-sigma / alpha,), True, None)


def _plan(sched: Schedule, output: str, stages: List[_Stage], denoise_to_zero: bool):
    """The :class:`SolverPlan` of ``stages`` (+ the final denoising stage)."""
    if denoise_to_zero:
        stages = stages + [_denoise_stage(sched, output, stages[-1].t_next)]
    t = np.array([s.t for s in stages])
    t_next = np.array([s.t if s.t_next is None else s.t_next for s in stages])
    final = np.array([s.t_next is None for s in stages])
    b = np.zeros((len(stages), 3))
    for i, s in enumerate(stages):
        b[i, : len(s.b)] = s.b
    return SolverPlan(
        output=output,
        t=t,
        alpha=sched.alpha(t),
        sigma=sched.sigma(t),
        a=np.array([s.a for s in stages]),
        b=b,
        c=np.array([s.c for s in stages]),
        new_base=np.array([s.new_base for s in stages]),
        next_alpha=np.where(final, 1.0, sched.alpha(t_next)),
        next_sigma=np.where(final, 0.0, sched.sigma(t_next)),
    )


def dpm_solver_plan(
    sde,
    steps: int,
    order: int,
    solver_type: str,
    algorithm: str,
    skip_type: str,
    eps: float,
    denoise_to_zero: bool = False,
) -> SolverPlan:
    """DPM-Solver (``algorithm='dpmsolver'``, ε̂) or DPM-Solver++ ('dpmsolver++', x̂₀) of
    ``order`` from T to ε with ``steps`` NFE (+1 with ``denoise_to_zero``): singlestep
    (DPM-Solver-fast's mix of orders) or multistep.  Arguments are not checked here
    (``sampling`` does)."""
    sched = Schedule(sde)
    output = 'noise' if algorithm == 'dpmsolver' else 'data'
    build = _singlestep if solver_type == 'singlestep' else _multistep
    stages = build(sched, output, steps, order, skip_type, sched.T, eps)
    return _plan(sched, output, stages, denoise_to_zero)


def ddim_plan(
    sde, steps: int, eta: float, eps: float, skip_type: str, denoise_to_zero: bool = False
) -> SolverPlan:
    """DDIM (Song et al. eq. 12) for any α, σ on a ``steps``-step grid, with η ∈ [0, 1]:

        x_t = α_t x̂₀ + √(σ_t² − c²) ε̂ + c z,   c = η σ_t √(1 − e^{−2h}),

    c² the variance of the posterior p(x_t | x_s, x₀) times η² (η = 1: ancestral
    sampling, η = 0: DPM-Solver-1).  In ε̂: a = α_t/α_s, b₀ = √(σ_t² − c²) − α_t σ_s/α_s."""
    sched = Schedule(sde)
    grid = time_grid(sched, skip_type, sched.T, eps, steps)
    alpha, sigma, lam = sched.alpha(grid), sched.sigma(grid), sched.lam(grid)
    stages = []
    for k in range(steps):
        c = eta * sigma[k + 1] * np.sqrt(-np.expm1(-2.0 * (lam[k + 1] - lam[k])))
        a = alpha[k + 1] / alpha[k]
        b0 = np.sqrt(sigma[k + 1] ** 2 - c**2) - a * sigma[k]
        stages.append(_Stage(grid[k], a, (b0,), True, grid[k + 1], c))
    return _plan(sched, 'noise', stages, denoise_to_zero)


def heun_plan(sde, steps: int, rho: float, eps: float, denoise_to_zero: bool = False) -> SolverPlan:
    """EDM's deterministic Heun sampler (Karras et al. Alg. 1) on x̃ = x/α in σ̃ = σ/α,
    dx̃/dσ̃ = ε̂, over ``steps`` steps of the ρ-schedule from σ̃(T) to σ̃(ε) (2 NFE each):

        x̃' = x̃_i + (σ̃_{i+1} − σ̃_i) ε̂_i,   x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i)(ε̂_i + ε̂')/2;

    in x = α x̃: a = α_{i+1}/α_i and b = α_{i+1}(σ̃_{i+1} − σ̃_i) (·½ each in the corrector).
    ``denoise_to_zero`` adds EDM's last Euler step to σ̃ = 0, which is x̂₀ (so ``steps`` =
    N − 1 with it is EDM's N time points, 2N − 1 NFE)."""
    sched = Schedule(sde)
    grid = rho_grid(sched, rho, sched.T, eps, steps)
    alpha, sig = sched.alpha(grid), np.exp(-sched.lam(grid))
    stages = []
    for i in range(steps):
        a, d = alpha[i + 1] / alpha[i], alpha[i + 1] * (sig[i + 1] - sig[i])
        stages.append(_Stage(grid[i], a, (d,), False, grid[i + 1]))
        stages.append(_Stage(grid[i + 1], a, (0.5 * d, 0.5 * d), True, grid[i + 1]))
    return _plan(sched, 'noise', stages, denoise_to_zero)
