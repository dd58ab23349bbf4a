"""Training objectives, optimizer, EMA and the train/eval step.

Core losses take a plain score function ``score_fn(x, t)`` (a network through
``models.utils.get_score_fn``, or a closed form in tests) and return **per-example**
losses ``[B]``; the batch loss is their mean.  With ``α = α(t)``, ``σ = σ(t)``,
``x_t = α x_0 + σ z`` and ``z ~ N(0, I)``:

* Weighted denoising score matching (Score SDE eq. 7, ScoreFlow eq. 5)::

      J(θ; λ) = E_t E_{x_0} E_z [ λ(t) ‖s_θ(x_t, t) + z/σ‖² ]
              = E_t E_{x_0} E_z [ (λ/σ²) ‖σ s_θ(x_t, t) + z‖² ]

  ``weighting='sigma2'``: λ = σ², t ~ U(ε, T) (the Score SDE default);
  ``'likelihood'``: λ = g², t ~ U(ε, T) (ScoreFlow Thm 1);
  ``'importance'``: λ = g² with t ~ p(t) = g²/(σ² Z), which turns the weight into
  Z (ScoreFlow §4).  ``importance_normalizer=False`` (the default, as in the paper's
  training code) drops the constant Z; with ``True`` the importance-sampled loss
  estimates ∫_ε^T g² E‖s + z/σ‖² dt, which is (T − ε) times what ``'likelihood'``
  estimates (a uniform t has density 1/(T − ε)).  ``importance_density='log1p_snr'``
  (i-DODE) samples t ∝ g²/σ² · α²/(α² + σ²) instead, with w = (1 + σ²/α²)(Z₁ or 1): the
  same integral; with a velocity-predicting network (``model.parameterization``) the weight
  of its error ‖v̂ − v‖² is then constant (docs/MATH.md).
* ``reduce_mean``: mean of the squared residual over data dimensions; otherwise half its
  sum, as in the original code, so that ``weighting='likelihood'`` with
  ``reduce_mean=False`` is the ½ ∫ g² ‖·‖² term of the ScoreFlow bound.
* Discrete objectives (``continuous=False``): SMLD/NCSN on a VE SDE (noise levels
  σ_i = ``sde.discrete_sigmas``, loss σ_i² ‖s + z/σ_i‖² = ‖σ_i s + z‖²) and DDPM on a
  VP SDE (x̃ = √ᾱ_i x_0 + √(1−ᾱ_i) z; ε-prediction loss ‖ε̂ − z‖² with
  ε̂ = −√(1−ᾱ_i) s).  The level i ~ U{0, …, N−1} is passed to ``score_fn`` as the
  grid time t_i = T i/(N−1); the model adapter maps such a t back to the level i
  (``sde.timestep_index``, ⌊t (N−1)/T + 10⁻⁴⌋) and labels the network with it (VP: the
  float label t (N−1)/T, whose floor is i; VE: the integer N − 1 − i into the
  descending σ table of NCSN), the same rule as the samplers' steps.
* Sliced score matching (Song et al. 2019) at time t, for p_t::

      λ(t) E_v [ vᵀ ∇_x s_θ(x_t, t) v + ½ (vᵀ s_θ(x_t, t))² ]

  with v Rademacher or Gaussian, vᵀ∇s v from one JVP per projection.  In expectation
  this equals the DSM loss minus the θ-free ½ λ E‖z/σ‖² = ½ λ D/σ², i.e. explicit score
  matching ½ λ E‖s − ∇log p_t‖² up to a constant (same reductions as DSM).

* High-order denoising score matching (Lu et al., ICML 2022; ``score_matching_order``
  2 or 3, :mod:`high_order`): the first-order term plus γ₂ times the second-order
  (Frobenius and trace) and, for order 3, γ₃ times the third-order objective at the same
  t and x_t, all with the weight w(t) of the time sampling::

      w(t) [ reduce(‖σ s_θ + z‖²) + κ γ₂ (‖M‖²_F + (tr M)²) + κ γ₃ ‖E_v R_v‖² ],

  κ = 1/D² with ``reduce_mean`` (Lu et al.'s normalisation), else 1/(2D) (the half sum's
  ½ and the same extra 1/D); M and R_v as in :mod:`high_order`.

The objective's flags travel as one frozen :class:`LossOptions`; model-bound wrappers and
the jit-friendly ``get_step_fn`` (on the ``train_state`` optimizer and EMA) follow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import high_order
import sde_lib
from errors import UserError
from models import utils as mutils
from sde_lib import batch_mul
from train_state import (
    TrainState,
    apply_gradients,
    current_learning_rate,
    get_optimizer,  # noqa: F401  (public here too, as in the original)
)

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
CoreLossFn = Callable[[Array, ScoreFn, Array], Array]

OBJECTIVES = ('dsm', 'ssm')
PROJECTIONS = ('rademacher', 'gaussian')
# The config.training fields of the objective (LossOptions.from_config); a resume that
# changes one of them is recorded in training.objective_changes (trainer.py).
OBJECTIVE_FIELDS = (
    'continuous',
    'reduce_mean',
    'likelihood_weighting',
    'importance_weighting',
    'eps',
    'objective',
    'score_matching_order',
    'second_order_weight',
    'third_order_weight',
    'importance_density',
)


# --- shared pieces -----------------------------------------------------------------
def _reduce(sq: Array, reduce_mean: bool) -> Array:
    """Per-example reduction of a squared residual [B, ...]: mean, or half the sum."""
    flat = jnp.reshape(sq, (sq.shape[0], -1))
    return jnp.mean(flat, axis=-1) if reduce_mean else 0.5 * jnp.sum(flat, axis=-1)


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f'{name}={value!r} is not supported; use one of {", ".join(choices)}.')


def _time_and_weight(
    rng: Array,
    x: Array,
    sde: sde_lib.SDE,
    weighting: str,
    eps: float,
    importance_normalizer: bool,
    importance_density: str,
) -> Tuple[Array, Array]:
    """One t and weight w(t) per example of ``x`` (:meth:`sde_lib.SDE.sample_time_and_weight`)."""
    return sde.sample_time_and_weight(
        rng,
        (x.shape[0],),
        weighting,
        eps,
        importance_normalizer,
        importance_density=importance_density,
    )


def _perturb(rng: Array, x: Array, mean_coeff: Array, std: Array) -> Tuple[Array, Array]:
    """x_t = α x + σ z and z ~ N(0, I)."""
    z = jax.random.normal(rng, x.shape, x.dtype)
    return batch_mul(mean_coeff, x) + batch_mul(std, z), z


def _denoising_loss(
    rng: Array,
    score_fn: ScoreFn,
    x: Array,
    t: Array,
    mean_coeff: Array,
    std: Array,
    reduce_mean: bool,
) -> Array:
    """Per-example reduce(‖σ s(α x + σ z, t) + z‖²): the shared core of every DSM loss."""
    x_t, z = _perturb(rng, x, mean_coeff, std)
    residual = batch_mul(std, score_fn(x_t, t)) + z
    return _reduce(jnp.square(residual), reduce_mean)


# --- continuous objectives --------------------------------------------------------
def dsm_loss(
    rng: Array,
    score_fn: ScoreFn,
    x: Array,
    sde: sde_lib.SDE,
    reduce_mean: bool = True,
    weighting: str = 'sigma2',
    eps: float = 1e-5,
    importance_normalizer: bool = False,
    importance_density: str = 'log_snr',
) -> Array:
    """Weighted denoising score matching, per example [B].

    Returns w(t) · reduce(‖σ s_θ(x_t, t) + z‖²) with t and w from
    :meth:`sde_lib.SDE.sample_time_and_weight`: for 'sigma2' and 'likelihood' an unbiased
    estimate of E_{t~U(ε,T)}[λ(t) reduce(‖s_θ + z/σ‖²)]; for 'importance' with the normaliser, of
    ∫_ε^T g² reduce(‖s_θ + z/σ‖²) dt = (T − ε) × the 'likelihood' value.
    """
    t_rng, z_rng = jax.random.split(rng)
    t, w = _time_and_weight(
        t_rng, x, sde, weighting, eps, importance_normalizer, importance_density
    )
    mean_coeff = jnp.exp(sde.log_mean_coeff(t))
    return w * _denoising_loss(z_rng, score_fn, x, t, mean_coeff, sde.std(t), reduce_mean)


def high_order_scale(x: Array, reduce_mean: bool) -> float:
    """κ of the high-order terms: 1/D² with ``reduce_mean``, else 1/(2D)."""
    dim = int(np.prod(x.shape[1:]))
    return 1.0 / dim**2 if reduce_mean else 0.5 / dim


def high_order_dsm_loss(
    rng: Array,
    score_fn: ScoreFn,
    x: Array,
    sde: sde_lib.SDE,
    reduce_mean: bool = True,
    weighting: str = 'sigma2',
    eps: float = 1e-5,
    importance_normalizer: bool = False,
    importance_density: str = 'log_snr',
    order: int = 2,
    second_order_weight: float = 1.0,
    third_order_weight: float = 1.0,
    projection: str = 'rademacher',
) -> Array:
    """Lu et al.'s high-order DSM objective of ``order`` 2 or 3, per example [B].

    w(t) [reduce(‖σ s_θ + z‖²) + κ γ₂ (‖M‖²_F + (tr M)²) + κ γ₃ ‖E_v R_v‖²] (module
    docstring) with t, w from :meth:`sde_lib.SDE.sample_time_and_weight`, the same x_t for
    every order and two probes v per example (:func:`high_order.high_order_terms`).
    """
    t_rng, z_rng, v_rng = jax.random.split(rng, 3)
    t, w = _time_and_weight(
        t_rng, x, sde, weighting, eps, importance_normalizer, importance_density
    )
    std = sde.std(t)
    x_t, z = _perturb(z_rng, x, jnp.exp(sde.log_mean_coeff(t)), std)
    v = high_order.sample_probes(v_rng, x.shape, projection, x.dtype)
    terms = high_order.high_order_terms(score_fn, x_t, t, z, std, v, order)
    first = _reduce(jnp.square(batch_mul(std, terms['score']) + z), reduce_mean)
    second = second_order_weight * (terms['frobenius'] + terms['trace'])
    third = third_order_weight * terms['third'] if order >= 3 else 0.0
    return w * (first + high_order_scale(x, reduce_mean) * (second + third))


def sliced_score_matching(
    rng: Array,
    score_fn: ScoreFn,
    x: Array,
    t: Array,
    n_projections: int = 1,
    projection: str = 'rademacher',
) -> Array:
    """Per-example E_v[vᵀ ∇_x s(x, t) v + ½ (vᵀ s(x, t))²] over ``n_projections`` draws.

    One linearisation of ``score_fn`` at x and one JVP per projection v (Rademacher or
    standard Gaussian, E[v vᵀ] = I).  Its expectation is tr ∇s + ½ ‖s‖², explicit score
    matching ½ ‖s − ∇log p‖² up to a θ-free constant.
    """
    _check_choice('projection', projection, PROJECTIONS)
    if n_projections < 1:
        raise UserError(f'n_projections={n_projections} must be at least 1.')
    shape = (n_projections,) + x.shape
    if projection == 'rademacher':
        v = jax.random.rademacher(rng, shape, x.dtype)
    else:
        v = jax.random.normal(rng, shape, x.dtype)
    s, score_jvp = jax.linearize(lambda y: score_fn(y, t), x)
    jv = jax.vmap(score_jvp)(v)
    flat = lambda a: jnp.reshape(a, a.shape[:2] + (-1,))  # noqa: E731  [P, B, D]
    v_jv = jnp.sum(flat(v) * flat(jv), axis=-1)
    v_s = jnp.sum(flat(v) * jnp.reshape(s, (1, s.shape[0], -1)), axis=-1)
    return jnp.mean(v_jv + 0.5 * v_s**2, axis=0)


def ssm_loss(
    rng: Array,
    score_fn: ScoreFn,
    x: Array,
    sde: sde_lib.SDE,
    reduce_mean: bool = True,
    weighting: str = 'sigma2',
    eps: float = 1e-5,
    importance_normalizer: bool = False,
    importance_density: str = 'log_snr',
    n_projections: int = 1,
    projection: str = 'rademacher',
) -> Array:
    """Sliced score matching on x_t ~ p_t with the DSM time weighting, per example [B].

    Returns w(t) σ² · SSM(x_t, t) (so λ(t) · SSM), scaled by 2/D when ``reduce_mean``:
    in expectation this is :func:`dsm_loss` minus the θ-free w·reduce(‖z‖²).
    """
    t_rng, z_rng, v_rng = jax.random.split(rng, 3)
    t, w = _time_and_weight(
        t_rng, x, sde, weighting, eps, importance_normalizer, importance_density
    )
    std = sde.std(t)
    x_t, _ = _perturb(z_rng, x, jnp.exp(sde.log_mean_coeff(t)), std)
    ssm = sliced_score_matching(v_rng, score_fn, x_t, t, n_projections, projection)
    scale = 2.0 / np.prod(x.shape[1:]) if reduce_mean else 1.0
    return w * std**2 * ssm * scale


# --- discrete objectives (SMLD / DDPM) -------------------------------------------
def discrete_loss(
    rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.SDE, reduce_mean: bool = True
) -> Array:
    """The discrete model's loss per example: reduce(‖b_i s(a_i x + b_i z, t_i) + z‖²) with
    i ~ U{0..N−1}, t_i = T i/(N−1) and (a_i, b_i) = ``sde.discrete_kernel()`` — SMLD on
    a VE SDE (a_i = 1, b_i = σ_i: σ_i² ‖s + z/σ_i‖²), DDPM on a VP SDE (a_i = √ᾱ_i,
    b_i = √(1−ᾱ_i): ‖ε̂ − z‖² with ε̂ = −b_i s)."""
    mean_coeffs, stds = sde.discrete_kernel()
    i_rng, z_rng = jax.random.split(rng)
    i = jax.random.randint(i_rng, (x.shape[0],), 0, sde.N)
    t = sde.T * i.astype(x.dtype) / (sde.N - 1)
    a = jnp.asarray(mean_coeffs, x.dtype)[i]
    b = jnp.asarray(stds, x.dtype)[i]
    return _denoising_loss(z_rng, score_fn, x, t, a, b, reduce_mean)


def _require_discrete(sde: sde_lib.SDE, objective: str) -> None:
    """A :class:`UserError` naming the fix when ``sde`` is not the SDE of ``objective``."""
    if sde.discrete_objective != objective:
        name = sde_lib.discrete_sde_name(objective)
        wanted = sde_lib.get_sde_class(name).__name__
        raise UserError(
            f'{objective} training needs a {wanted}, got {type(sde).__name__}; '
            f'set config.training.sde={name} or config.training.continuous=True.'
        )


def smld_loss(
    rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.VESDE, reduce_mean: bool = False
) -> Array:
    """SMLD/NCSN loss per example: σ_i² ‖s(x + σ_i z, t_i) + z/σ_i‖² = ‖σ_i s + z‖²."""
    _require_discrete(sde, 'SMLD')
    return discrete_loss(rng, score_fn, x, sde, reduce_mean)


def ddpm_loss(
    rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.VPSDE, reduce_mean: bool = True
) -> Array:
    """DDPM ε-prediction loss per example: ‖ε̂ − z‖² with ε̂ = −√(1−ᾱ_i) s(x̃, t_i)."""
    _require_discrete(sde, 'DDPM')
    return discrete_loss(rng, score_fn, x, sde, reduce_mean)


# --- the training objective as one frozen options object ----------------------------
@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The training objective (the original code's flags of ``config.training``).

    Attributes:
      reduce_mean: mean of the squared residual over data dimensions, else half its sum.
      continuous: t ~ [ε, T]; False: the discrete SMLD / DDPM objective of the SDE.
      likelihood_weighting: λ = g² (ScoreFlow) instead of λ = σ².
      importance_weighting: t ~ p(t) ∝ g²/σ² (needs ``likelihood_weighting``).
      eps: the smallest time ε.
      objective: 'dsm' (denoising) or 'ssm' (sliced score matching).
      importance_normalizer: keep the constant Z of importance sampling.
      n_projections, projection: SSM's probes per example and their distribution.
      precision: the network's compute type in training ('float32', or 'bfloat16':
        mixed precision, ``models.utils.get_model_fn``); the loss is float32.
      score_matching_order: 1 (first-order DSM), 2 or 3 (Lu et al.'s high-order DSM,
        :func:`high_order_dsm_loss`; continuous 'dsm' only); ``projection`` is then the
        distribution of its probes.
      second_order_weight, third_order_weight: γ₂ and γ₃ of the high-order terms.
      importance_density: the density of importance-sampled t
        (:data:`sde_lib.IMPORTANCE_DENSITIES`): 'log_snr' (ScoreFlow, p ∝ g²/σ²) or
        'log1p_snr' (i-DODE, p ∝ g²/σ² · α²/(α² + σ²), for the velocity parameterization).
    """

    reduce_mean: bool = True
    continuous: bool = True
    likelihood_weighting: bool = False
    importance_weighting: bool = False
    eps: float = 1e-5
    objective: str = 'dsm'
    importance_normalizer: bool = False
    n_projections: int = 1
    projection: str = 'rademacher'
    precision: str = 'float32'
    score_matching_order: int = 1
    second_order_weight: float = 1.0
    third_order_weight: float = 1.0
    importance_density: str = 'log_snr'

    def __post_init__(self):
        _check_choice('objective', self.objective, OBJECTIVES)
        _check_choice('importance_density', self.importance_density, sde_lib.IMPORTANCE_DENSITIES)
        _check_choice('projection', self.projection, PROJECTIONS)
        sde_lib.weighting_of(self.likelihood_weighting, self.importance_weighting)
        high_order.check_order(self.score_matching_order)
        if self.score_matching_order > 1 and (not self.continuous or self.objective != 'dsm'):
            raise UserError(
                f'training.score_matching_order={self.score_matching_order} needs the '
                'continuous denoising objective; set config.training.continuous=True and '
                "config.training.objective='dsm', or score_matching_order=1."
            )
        if not self.continuous and (self.likelihood_weighting or self.objective != 'dsm'):
            raise UserError(
                'Discrete (continuous=False) SMLD/DDPM training supports only the '
                'plain DSM loss; set config.training.likelihood_weighting=False, '
                'importance_weighting=False, or continuous=True.'
            )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> LossOptions:
        """The objective of ``config.training``."""
        t = config.training
        return cls(
            reduce_mean=bool(t.reduce_mean),
            continuous=bool(t.continuous),
            likelihood_weighting=bool(t.likelihood_weighting),
            importance_weighting=bool(t.importance_weighting),
            eps=float(t.eps),
            objective=str(t.objective),
            precision=str(t.precision),
            score_matching_order=int(t.score_matching_order),
            second_order_weight=float(t.second_order_weight),
            third_order_weight=float(t.third_order_weight),
            importance_density=str(t.importance_density),
        )

    @property
    def weighting(self) -> str:
        """'sigma2', 'likelihood' or 'importance' (:data:`sde_lib.WEIGHTINGS`)."""
        return sde_lib.weighting_of(self.likelihood_weighting, self.importance_weighting)


def _options(options: Optional[LossOptions], fields: Dict[str, Any]) -> LossOptions:
    """``options``, or one built from keyword ``fields`` (the original code's flags)."""
    if options is not None and fields:
        raise TypeError(f'pass LossOptions or its fields, not both ({sorted(fields)})')
    return options if options is not None else LossOptions(**fields)


def get_core_loss_fn(
    sde: sde_lib.SDE, options: Optional[LossOptions] = None, **fields
) -> CoreLossFn:
    """The per-example loss ``loss(rng, score_fn, x) -> [B]`` of ``options`` (or of the
    :class:`LossOptions` fields given as keywords).

    ``continuous=False`` selects the SDE's discrete objective (SMLD for VE, DDPM for VP).
    """
    opts = _options(options, fields)
    if not opts.continuous:
        sde.discrete_kernel()  # a UserError now for an SDE without a discrete form
        return lambda rng, score_fn, x: discrete_loss(rng, score_fn, x, sde, opts.reduce_mean)
    kwargs = dict(
        reduce_mean=opts.reduce_mean,
        weighting=opts.weighting,
        eps=opts.eps,
        importance_normalizer=opts.importance_normalizer,
        importance_density=opts.importance_density,
    )
    if opts.objective == 'ssm':
        kwargs.update(n_projections=opts.n_projections, projection=opts.projection)
        return lambda rng, score_fn, x: ssm_loss(rng, score_fn, x, sde, **kwargs)
    if opts.score_matching_order > 1:
        kwargs.update(
            order=opts.score_matching_order,
            second_order_weight=opts.second_order_weight,
            third_order_weight=opts.third_order_weight,
            projection=opts.projection,
        )
        return lambda rng, score_fn, x: high_order_dsm_loss(rng, score_fn, x, sde, **kwargs)
    return lambda rng, score_fn, x: dsm_loss(rng, score_fn, x, sde, **kwargs)


# --- model-bound loss ------------------------------------------------------------
def _batch_data(batch: Any) -> Array:
    """The data array of a batch: the array itself, or ``batch['image']``."""
    return batch['image'] if isinstance(batch, Mapping) else batch


def get_sde_loss_fn(
    sde: sde_lib.SDE, model: Any, train: bool, *, options: Optional[LossOptions] = None, **fields
) -> Callable[[Array, Any, Any], Array]:
    """``loss_fn(rng, params, batch) -> scalar``: the batch mean of the chosen loss.

    The objective is ``options`` or the :class:`LossOptions` fields as keywords
    (``reduce_mean``, ``continuous``, ``likelihood_weighting``, ``importance_weighting``,
    ``eps``, … as the original ``get_sde_loss_fn``). ``batch`` is the data in model space
    ([B, ...], or a dict with 'image'); the score function is ``models.utils.get_score_fn``
    with dropout active when ``train``.
    """
    opts = _options(options, fields)
    core = get_core_loss_fn(sde, opts)

    def loss_fn(rng: Array, params: Any, batch: Any) -> Array:
        loss_rng, dropout_rng = jax.random.split(rng)
        score_fn = mutils.get_score_fn(
            sde,
            model,
            {'params': params},
            train=train,
            continuous=opts.continuous,
            rng=dropout_rng if train else None,
            precision=opts.precision if train else 'float32',
        )
        return jnp.mean(core(loss_rng, score_fn, _batch_data(batch)))

    return loss_fn


# --- train and eval step ---------------------------------------------------------
def _all_finite(*values: Array) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


def keep_if(ok: Array, new: Any, old: Any) -> Any:
    """``new`` where the scalar ``ok`` is True, else ``old`` (leaf by leaf, jit-friendly)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def guarded_update(
    state: TrainState,
    loss: Array,
    grads: Any,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    ema_warmup: bool = True,
) -> Tuple[TrainState, Dict[str, Array]]:
    """One optimizer and EMA update (``train_state.apply_gradients``), skipped (step
    counter still advanced) when the loss or the gradient is not finite; metrics
    {'loss', 'grad_norm' (before clipping), 'lr'}."""
    grad_norm = optax.global_norm(grads)
    new = apply_gradients(state, grads, optimizer, ema_rate, ema_warmup)
    ok = _all_finite(loss, grad_norm)
    new_state = new.replace(
        params=keep_if(ok, new.params, state.params),
        ema_params=keep_if(ok, new.ema_params, state.ema_params),
        opt_state=keep_if(ok, new.opt_state, state.opt_state),
    )
    return new_state, {
        'loss': loss,
        'grad_norm': grad_norm,
        'lr': current_learning_rate(new.opt_state),
    }


def get_step_fn(
    sde: sde_lib.SDE,
    model: Any,
    optimizer: optax.GradientTransformation,
    train: bool,
    options: Optional[LossOptions] = None,
    ema_rate: float = 0.999,
    ema_warmup: bool = True,
    **fields,
) -> Callable[..., Tuple[TrainState, Dict[str, Array]]]:
    """``step_fn(state, batch, rng=None) -> (new_state, metrics)``, one step on a global batch.

    Train: one optimizer update of ``params`` and the EMA (:func:`guarded_update`: a
    non-finite loss or gradient leaves params, opt_state and ema_params unchanged and
    reports the loss as is, so the caller can stop with a message; ``ema_warmup=False``:
    the constant EMA rate of a run that continues an original checkpoint).
    Eval: {'loss'} of the EMA parameters; the state is returned unchanged.
    Randomness is ``fold_in(state.rng, state.step)`` unless ``rng`` is given (eval loops
    should pass one per batch), so a step is a pure function of (state, batch).
    No collectives: jit it with batch shardings and XLA computes the global mean.
    The objective is ``options`` or its fields as keywords (:func:`get_sde_loss_fn`).
    """
    loss_fn = get_sde_loss_fn(sde, model, train, options=_options(options, fields))

    def train_step(state: TrainState, batch: Any, rng: Optional[Array] = None):
        rng = jax.random.fold_in(state.rng, state.step) if rng is None else rng
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(rng, state.params, batch)
        return guarded_update(state, loss, grads, optimizer, ema_rate, ema_warmup)

    def eval_step(state: TrainState, batch: Any, rng: Optional[Array] = None):
        rng = jax.random.fold_in(state.rng, state.step) if rng is None else rng
        return state, {'loss': loss_fn(rng, state.ema_params, batch)}

    return train_step if train else eval_step
