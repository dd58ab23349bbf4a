"""High-order denoising score matching (Lu, Zheng, Bao, Chen, Li, Zhu, ICML 2022).

The probability-flow ODE's KL divergence is bounded by the first-, second- and third-order
score-matching errors of s_θ (Lu et al. Thm 3.2), so maximum likelihood for the ODE needs
the network's Jacobian ∇ₓs_θ to match ∇²log p_t and the gradient of its trace to match
∇ tr ∇²log p_t. With x_t = α x_0 + σ z, the first-order residual (stop-gradient on s_θ)

    ℓ = z + σ s_θ(x_t, t),           E[ℓ | x_t] = σ (s_θ − ∇log p_t),

gives the error-bounded second- and third-order DSM objectives (Lu et al. §4,
docs/MATH.md §High-order score matching), per probe direction v (E[v vᵀ] = I):

    M = σ² ∇ₓs_θ + I − ℓ ℓᵀ,
    R_v = σ³ ∇ₓ(vᵀ ∇ₓs_θ v) + (vᵀℓ)² ℓ − (σ² vᵀ∇s_θ v + ‖v‖²) ℓ − 2 (vᵀℓ)(σ² ∇s_θ v + v);

ℓ and the ∇s_θ inside R_v's last three terms are held fixed (stop-gradient), as in Lu et
al.'s code. Where s_θ = ∇log p_t, E[M | x_t] = σ² (∇s_θ − ∇²log p_t) and
E[R_v | x_t] = σ³ ∇(vᵀ(∇s_θ − ∇²log p_t) v): both vanish exactly when the Jacobian and the
gradient of its quadratic forms are exact too (docs/MATH.md §High-order score matching).
The objectives are ‖M‖²_F + (tr M)² (second order, Frobenius and trace) and
‖E_v R_v‖² (third order). Two independent probes v₁, v₂ per example make every estimator
unbiased for them:

    ‖M‖²_F ≈ ½ (‖M v₁‖² + ‖M v₂‖²),   (tr M)² ≈ (v₁ᵀ M v₁)(v₂ᵀ M v₂),   ‖E_v R_v‖² ≈ R_{v₁}ᵀ R_{v₂},

since each factor is unbiased and the two are independent (Lu et al.'s code squares one
probe's value, which adds the probe's variance). M v = σ² (∇s_θ) v + v − (vᵀℓ) ℓ needs one
Jacobian-vector product (forward mode); ∇ₓ(vᵀ∇s_θ v) one reverse pass over it.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp

from errors import UserError
from sde_lib import batch_mul

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

ORDERS = (1, 2, 3)
PROBES = ('rademacher', 'gaussian')
NUM_PROBES = 2  # independent probes per example: products of two unbiased factors


def check_order(order: int) -> int:
    """``order`` as an int if it is one of :data:`ORDERS`, else a :class:`UserError`."""
    if order not in ORDERS:
        raise UserError(
            f'training.score_matching_order={order!r} is not supported; use 1 (first-order '
            'DSM), 2 or 3 (Lu et al. 2022).'
        )
    return int(order)


def sample_probes(rng: Array, shape, kind: str = 'rademacher', dtype=jnp.float32) -> Array:
    """:data:`NUM_PROBES` independent probes [P, *shape] with E[v vᵀ] = I."""
    if kind not in PROBES:
        raise UserError(f'probe={kind!r} is not supported; use one of {", ".join(PROBES)}.')
    shape = (NUM_PROBES,) + tuple(shape)
    if kind == 'rademacher':
        return jax.random.rademacher(rng, shape, dtype)
    return jax.random.normal(rng, shape, dtype)


def _flat_dot(a: Array, b: Array) -> Array:
    """Σ over the data axes of a * b, for arrays [P, B, ...] → [P, B]."""
    return jnp.sum(jnp.reshape(a * b, a.shape[:2] + (-1,)), axis=-1)


def _scale(a: Array, x: Array) -> Array:
    """a [P, B] times x [P, B, ...]."""
    return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim)) * x


def jacobian_terms(
    score_fn: ScoreFn, x: Array, t: Array, v: Array, third: bool
) -> Tuple[Array, Array, Array]:
    """(s, J v, g) at x [B, ...]: the score s = s_θ(x, t), J v = (∇ₓs_θ) v for each probe
    v [P, B, ...], and, if ``third``, g = ∇ₓ(vᵀ (∇ₓs_θ) v) [P, B, ...] (else zeros).

    Examples must not interact in ``score_fn`` (a network in eval or dropout mode with one
    mask), so the gradient of the batch sum is each example's own."""
    fn = lambda y: score_fn(y, t)
    if not third:
        s, jvp_fn = jax.linearize(fn, x)
        return s, jax.vmap(jvp_fn)(v), jnp.zeros_like(v)

    def quadratic_form(y: Array, vv: Array):
        s, jv = jax.jvp(fn, (y,), (vv,))
        return jnp.sum(jv * vv), (s, jv)

    grad_fn = jax.grad(quadratic_form, has_aux=True)
    g, (s, jv) = jax.vmap(lambda vv: grad_fn(x, vv))(v)
    return s[0], jv, g


def second_order_residuals(ell: Array, jv: Array, v: Array, std: Array) -> Tuple[Array, Array]:
    """(M v [P, B, ...], vᵀ M v [P, B]) with M = σ² ∇s + I − ℓ ℓᵀ, from J v; ℓ [B, ...]."""
    v_ell = _flat_dot(v, ell[None])
    s2 = jnp.reshape(std**2, (1, -1))
    mv = _scale(s2, jv) + v - _scale(v_ell, jnp.broadcast_to(ell, v.shape))
    return mv, _flat_dot(v, mv)


def third_order_residual(ell: Array, jv: Array, g: Array, v: Array, std: Array) -> Array:
    """R_v [P, B, ...] (module docstring) from J v, g = ∇(vᵀ J v) and ℓ; J v and ℓ enter
    with a stop-gradient, g carries the gradient."""
    jv = jax.lax.stop_gradient(jv)
    v_ell = _flat_dot(v, ell[None])
    s2 = jnp.reshape(std**2, (1, -1))
    quad = s2 * _flat_dot(v, jv) + _flat_dot(v, v)
    ell_p = jnp.broadcast_to(ell, v.shape)
    target = _scale(v_ell**2 - quad, ell_p) - 2.0 * _scale(v_ell, _scale(s2, jv) + v)
    return _scale(jnp.reshape(std**3, (1, -1)), g) + target


def high_order_terms(
    score_fn: ScoreFn, x_t: Array, t: Array, z: Array, std: Array, v: Array, order: int
) -> Dict[str, Array]:
    """Per-example estimates [B] of the second- and third-order objectives at x_t.

    Returns {'score': s_θ(x_t, t) (for the first-order term, same forward pass),
    'frobenius': ½ Σ_p ‖M v_p‖², 'trace': (v₁ᵀMv₁)(v₂ᵀMv₂), 'third': R_{v₁}ᵀR_{v₂}
    (zeros for ``order`` 2)}: unbiased for ‖M‖²_F, (tr M)² and ‖E_v R_v‖² (module
    docstring); v [2, B, ...] from :func:`sample_probes`.
    """
    s, jv, g = jacobian_terms(score_fn, x_t, t, v, third=order >= 3)
    ell = z + batch_mul(std, jax.lax.stop_gradient(s))
    mv, vmv = second_order_residuals(ell, jv, v, std)
    out = {
        'score': s,
        'frobenius': 0.5 * jnp.sum(_flat_dot(mv, mv), axis=0),
        'trace': vmv[0] * vmv[1],
        'third': jnp.zeros_like(vmv[0]),
    }
    if order >= 3:
        r = third_order_residual(ell, jv, g, v, std)
        out['third'] = _flat_dot(r[:1], r[1:])[0]
    return out
