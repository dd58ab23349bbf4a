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
  estimates (a uniform t has density 1/(T − ε)).
* ``reduce_mean``: mean of the squared residual over data dimensions; otherwise half its
  sum, as in the original code, so that ``weighting='likelihood'`` with
  ``reduce_mean=False`` is the ½ ∫ g² ‖·‖² term of the ScoreFlow bound.
* Discrete objectives (``continuous=False``): SMLD/NCSN on a VE SDE (noise levels
  σ_i = ``sde.discrete_sigmas``, loss σ_i² ‖s + z/σ_i‖² = ‖σ_i s + z‖²) and DDPM on a
  VP SDE (x̃ = √ᾱ_i x_0 + √(1−ᾱ_i) z; ε-prediction loss ‖ε̂ − z‖² with
  ε̂ = −√(1−ᾱ_i) s).  The level i ~ U{0, …, N−1} is passed to ``score_fn`` as the
  grid time t_i = T i/(N−1); the model adapter maps such a t back to the integer label
  (VP: round(t (N−1)); VE: round((T − t)(N−1)) into the descending σ table of NCSN).
* Sliced score matching (Song et al. 2019) at time t, for p_t::

      λ(t) E_v [ vᵀ ∇_x s_θ(x_t, t) v + ½ (vᵀ s_θ(x_t, t))² ]

  with v Rademacher or Gaussian, vᵀ∇s v from one JVP per projection.  In expectation
  this equals the DSM loss minus the θ-free ½ λ E‖z/σ‖² = ½ λ D/σ², i.e. explicit score
  matching ½ λ E‖s − ∇log p_t‖² up to a constant (same reductions as DSM).

Model-bound wrappers, the optimizer (``get_optimizer``), EMA with warm-up and the
jit-friendly ``get_step_fn`` follow at the end.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sde_lib
from errors import UserError
from sde_lib import batch_mul

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
CoreLossFn = Callable[[Array, ScoreFn, Array], Array]

WEIGHTINGS = ('sigma2', 'likelihood', 'importance')
OBJECTIVES = ('dsm', 'ssm')
PROJECTIONS = ('rademacher', 'gaussian')


# --- shared pieces -----------------------------------------------------------------
def _reduce(sq: Array, reduce_mean: bool) -> Array:
    """Per-example reduction of a squared residual [B, ...]: mean, or half the sum."""
    flat = jnp.reshape(sq, (sq.shape[0], -1))
    return jnp.mean(flat, axis=-1) if reduce_mean else 0.5 * jnp.sum(flat, axis=-1)


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f'{name}={value!r} is not supported; use one of {", ".join(choices)}.')


def sample_time_and_weight(rng: Array, sde: sde_lib.SDE, batch_size: int,
                           weighting: str = 'sigma2', eps: float = 1e-5,
                           importance_normalizer: bool = False) -> Tuple[Array, Array]:
    """Draws t [B] and the weight w(t) that multiplies ‖σ s + z‖² so that λ is applied.

    'sigma2': t ~ U(ε, T), w = λ/σ² = 1.  'likelihood': t ~ U(ε, T), w = g²/σ².
    'importance': t ~ p(t) = g²/(σ² Z), w = λ/(σ² p(t)) = Z, or 1 when
    ``importance_normalizer`` is False (the paper's training drops the constant).
    """
    _check_choice('weighting', weighting, WEIGHTINGS)
    if weighting == 'importance':
        t = sde.sample_importance_weighted_time_for_likelihood(rng, (batch_size,), eps=eps)
        z_norm = sde.likelihood_importance_cum_weight(jnp.asarray(sde.T), eps=eps)
        return t, jnp.full_like(t, z_norm if importance_normalizer else 1.0)
    t = jax.random.uniform(rng, (batch_size,), minval=eps, maxval=sde.T)
    if weighting == 'likelihood':
        return t, sde.diffusion(t) ** 2 / sde.std(t) ** 2
    return t, jnp.ones_like(t)


def _perturb(rng: Array, x: Array, mean_coeff: Array, std: Array) -> Tuple[Array, Array]:
    """x_t = α x + σ z and z ~ N(0, I)."""
    z = jax.random.normal(rng, x.shape, x.dtype)
    return batch_mul(mean_coeff, x) + batch_mul(std, z), z


def _denoising_loss(rng: Array, score_fn: ScoreFn, x: Array, t: Array, mean_coeff: Array,
                    std: Array, reduce_mean: bool) -> Array:
    """Per-example reduce(‖σ s(α x + σ z, t) + z‖²): the shared core of every DSM loss."""
    x_t, z = _perturb(rng, x, mean_coeff, std)
    residual = batch_mul(std, score_fn(x_t, t)) + z
    return _reduce(jnp.square(residual), reduce_mean)


# --- continuous objectives --------------------------------------------------------
def dsm_loss(rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.SDE,
             reduce_mean: bool = True, weighting: str = 'sigma2', eps: float = 1e-5,
             importance_normalizer: bool = False) -> Array:
    """Weighted denoising score matching, per example [B].

    Returns w(t) · reduce(‖σ s_θ(x_t, t) + z‖²) with t and w from
    :func:`sample_time_and_weight`: for 'sigma2' and 'likelihood' an unbiased estimate of
    E_{t~U(ε,T)}[λ(t) reduce(‖s_θ + z/σ‖²)]; for 'importance' with the normaliser, of
    ∫_ε^T g² reduce(‖s_θ + z/σ‖²) dt = (T − ε) × the 'likelihood' value.
    """
    t_rng, z_rng = jax.random.split(rng)
    t, w = sample_time_and_weight(t_rng, sde, x.shape[0], weighting, eps,
                                  importance_normalizer)
    mean_coeff = jnp.exp(sde.log_mean_coeff(t))
    return w * _denoising_loss(z_rng, score_fn, x, t, mean_coeff, sde.std(t), reduce_mean)


def sliced_score_matching(rng: Array, score_fn: ScoreFn, x: Array, t: Array,
                          n_projections: int = 1, projection: str = 'rademacher') -> Array:
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
    return jnp.mean(v_jv + 0.5 * v_s ** 2, axis=0)


def ssm_loss(rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.SDE,
             reduce_mean: bool = True, weighting: str = 'sigma2', eps: float = 1e-5,
             importance_normalizer: bool = False, n_projections: int = 1,
             projection: str = 'rademacher') -> Array:
    """Sliced score matching on x_t ~ p_t with the DSM time weighting, per example [B].

    Returns w(t) σ² · SSM(x_t, t) (so λ(t) · SSM), scaled by 2/D when ``reduce_mean``:
    in expectation this is :func:`dsm_loss` minus the θ-free w·reduce(‖z‖²).
    """
    t_rng, z_rng, v_rng = jax.random.split(rng, 3)
    t, w = sample_time_and_weight(t_rng, sde, x.shape[0], weighting, eps,
                                  importance_normalizer)
    std = sde.std(t)
    x_t, _ = _perturb(z_rng, x, jnp.exp(sde.log_mean_coeff(t)), std)
    ssm = sliced_score_matching(v_rng, score_fn, x_t, t, n_projections, projection)
    scale = 2.0 / np.prod(x.shape[1:]) if reduce_mean else 1.0
    return w * std ** 2 * ssm * scale


# --- discrete objectives (SMLD / DDPM) -------------------------------------------
def _discrete_loss(rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.SDE,
                   mean_coeffs: np.ndarray, stds: np.ndarray, reduce_mean: bool) -> Array:
    """reduce(‖b_i s(a_i x + b_i z, t_i) + z‖²) with i ~ U{0..N−1}, t_i = T i/(N−1)."""
    i_rng, z_rng = jax.random.split(rng)
    i = jax.random.randint(i_rng, (x.shape[0],), 0, sde.N)
    t = sde.T * i.astype(x.dtype) / (sde.N - 1)
    a = jnp.asarray(mean_coeffs, x.dtype)[i]
    b = jnp.asarray(stds, x.dtype)[i]
    return _denoising_loss(z_rng, score_fn, x, t, a, b, reduce_mean)


def _require_sde(sde: sde_lib.SDE, cls: type, objective: str, name: str) -> None:
    """A :class:`UserError` naming the fix when a discrete objective gets another SDE."""
    if not isinstance(sde, cls):
        raise UserError(f'{objective} training needs a {cls.__name__}, got '
                        f'{type(sde).__name__}; set config.training.sde={name} or '
                        'config.training.continuous=True.')


def smld_loss(rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.VESDE,
              reduce_mean: bool = False) -> Array:
    """SMLD/NCSN loss per example: σ_i² ‖s(x + σ_i z, t_i) + z/σ_i‖² = ‖σ_i s + z‖²."""
    _require_sde(sde, sde_lib.VESDE, 'SMLD (discrete VE)', 'vesde')
    ones = np.ones_like(sde.discrete_sigmas)
    return _discrete_loss(rng, score_fn, x, sde, ones, sde.discrete_sigmas, reduce_mean)


def ddpm_loss(rng: Array, score_fn: ScoreFn, x: Array, sde: sde_lib.VPSDE,
              reduce_mean: bool = True) -> Array:
    """DDPM ε-prediction loss per example: ‖ε̂ − z‖² with ε̂ = −√(1−ᾱ_i) s(x̃, t_i)."""
    _require_sde(sde, sde_lib.VPSDE, 'DDPM (discrete VP)', 'vpsde')
    return _discrete_loss(rng, score_fn, x, sde, sde.sqrt_alphas_cumprod,
                          sde.sqrt_1m_alphas_cumprod, reduce_mean)


# --- choosing the objective from training flags ------------------------------------
def get_weighting(likelihood_weighting: bool, importance_weighting: bool) -> str:
    """Maps the config flags to a weighting name ('sigma2', 'likelihood', 'importance')."""
    if importance_weighting and not likelihood_weighting:
        raise UserError('config.training.importance_weighting=True needs '
                        'config.training.likelihood_weighting=True (it importance-samples '
                        'the likelihood weighting); set both, or neither.')
    if likelihood_weighting:
        return 'importance' if importance_weighting else 'likelihood'
    return 'sigma2'


def get_core_loss_fn(sde: sde_lib.SDE, reduce_mean: bool = True, continuous: bool = True,
                     likelihood_weighting: bool = False, importance_weighting: bool = False,
                     eps: float = 1e-5, objective: str = 'dsm',
                     importance_normalizer: bool = False, n_projections: int = 1,
                     projection: str = 'rademacher') -> CoreLossFn:
    """The per-example loss ``loss(rng, score_fn, x) -> [B]`` picked by the training flags.

    ``continuous=False`` selects SMLD for a VE SDE and DDPM for a VP SDE (σ² weighting,
    objective 'dsm' only).
    """
    _check_choice('objective', objective, OBJECTIVES)
    if not continuous:
        if likelihood_weighting or importance_weighting or objective != 'dsm':
            raise UserError('Discrete (continuous=False) SMLD/DDPM training supports only '
                            'the plain DSM loss; set config.training.likelihood_weighting='
                            'False, importance_weighting=False, or continuous=True.')
        if isinstance(sde, sde_lib.VESDE):
            return lambda rng, score_fn, x: smld_loss(rng, score_fn, x, sde, reduce_mean)
        if isinstance(sde, sde_lib.VPSDE):
            return lambda rng, score_fn, x: ddpm_loss(rng, score_fn, x, sde, reduce_mean)
        raise UserError(f'Discrete training is defined for VESDE (SMLD) and VPSDE (DDPM) '
                        f'only, not {type(sde).__name__}; set config.training.continuous=True.')
    weighting = get_weighting(likelihood_weighting, importance_weighting)
    kwargs = dict(reduce_mean=reduce_mean, weighting=weighting, eps=eps,
                  importance_normalizer=importance_normalizer)
    if objective == 'ssm':
        kwargs.update(n_projections=n_projections, projection=projection)
        return lambda rng, score_fn, x: ssm_loss(rng, score_fn, x, sde, **kwargs)
    return lambda rng, score_fn, x: dsm_loss(rng, score_fn, x, sde, **kwargs)


# --- model-bound loss ------------------------------------------------------------
def _batch_data(batch: Any) -> Array:
    """The data array of a batch: the array itself, or ``batch['image']``."""
    return batch['image'] if isinstance(batch, Mapping) else batch


def get_sde_loss_fn(sde: sde_lib.SDE, model: Any, train: bool, reduce_mean: bool = True,
                    continuous: bool = True, likelihood_weighting: bool = False,
                    importance_weighting: bool = False, eps: float = 1e-5,
                    objective: str = 'dsm', **core_kwargs) -> Callable[[Array, Any, Any], Array]:
    """``loss_fn(rng, params, batch) -> scalar``: the batch mean of the chosen loss.

    ``batch`` is the data in model space ([B, ...], or a dict with 'image'); the score
    function is ``models.utils.get_score_fn(sde, model, {'params': params}, train=train,
    continuous=continuous, rng=dropout_rng)``.  ``core_kwargs`` go to
    :func:`get_core_loss_fn` (``importance_normalizer``, ``n_projections``,
    ``projection``).
    """
    core = get_core_loss_fn(sde, reduce_mean, continuous, likelihood_weighting,
                            importance_weighting, eps, objective, **core_kwargs)

    def loss_fn(rng: Array, params: Any, batch: Any) -> Array:
        from models import utils as mutils  # local: core losses work without models/

        loss_rng, dropout_rng = jax.random.split(rng)
        score_fn = mutils.get_score_fn(sde, model, {'params': params}, train=train,
                                       continuous=continuous,
                                       rng=dropout_rng if train else None)
        return jnp.mean(core(loss_rng, score_fn, _batch_data(batch)))

    return loss_fn


# --- optimizer and EMA -----------------------------------------------------------
OPTIMIZERS = ('Adam', 'AdamW')


def get_optimizer(config) -> optax.GradientTransformation:
    """The optax optimizer of ``config.optim``, as the original ``optimization_manager``.

    * lr(n) = lr · min(n / warmup, 1) for update n = 0, 1, … (so the first update has
      lr 0 when warmup > 0, as in the original); constant lr when warmup ≤ 0.
    * grad_clip ≥ 0: global-norm clipping g ← g · c / max(‖g‖, c) before Adam; < 0: off.
    * 'Adam' is flax.optim.Adam of the original code: β₂ = ``optim.beta2`` (0.999),
      ε outside the square root, decoupled weight decay p ← p − lr·wd·p, which is
      exactly optax.adamw; 'AdamW' is accepted as the same optimizer.
    The current learning rate is readable with :func:`current_learning_rate`.
    """
    optim = config.optim
    if optim.optimizer not in OPTIMIZERS:
        raise UserError(f'config.optim.optimizer={optim.optimizer!r} is not supported; '
                        f'use one of {", ".join(OPTIMIZERS)}.')
    lr = float(optim.lr)
    warmup = int(optim.warmup)
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else optax.constant_schedule(lr)
    adam = optax.inject_hyperparams(optax.adamw)(
        learning_rate=schedule, b1=float(optim.beta1), b2=float(getattr(optim, 'beta2', 0.999)),
        eps=float(optim.eps), weight_decay=float(optim.weight_decay))
    if float(optim.grad_clip) >= 0:
        return optax.chain(optax.clip_by_global_norm(float(optim.grad_clip)), adam)
    return adam


def current_learning_rate(opt_state: Any) -> Array:
    """The learning rate of the last update (of the next one before any update).

    Read from the injected hyperparameters of :func:`get_optimizer`; NaN for an
    optimizer built otherwise.
    """
    has_hparams = lambda n: hasattr(n, 'hyperparams')  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=has_hparams):
        if has_hparams(node) and 'learning_rate' in node.hyperparams:
            return jnp.asarray(node.hyperparams['learning_rate'], jnp.float32)
    return jnp.asarray(jnp.nan, jnp.float32)


def ema_update(ema_params: Any, params: Any, step: Array, rate: float) -> Any:
    """θ_ema ← d θ_ema + (1 − d) θ with d = min(rate, (1 + n)/(10 + n)), n = ``step``.

    ``step`` is the number of updates before this one (0 for the first).  The warm-up
    of d (as TensorFlow's ExponentialMovingAverage with num_updates) matters on short
    runs: a plain 0.999 EMA still weights the initial parameters by 0.999^2000 ≈ 13.5 %
    after 2k steps (FACTS.md: KL 3+ nats on a 2-D mixture); the warm-up fixes that.
    """
    n = jnp.asarray(step, jnp.float32)
    decay = jnp.minimum(rate, (1.0 + n) / (10.0 + n))
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


# --- train state and step ---------------------------------------------------------
@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes (a pytree; checkpointable).

    Attributes:
      step: int32 scalar, the number of steps taken (skipped non-finite steps included).
      params, ema_params: model parameters and their EMA.
      opt_state: optax state.
      rng: raw uint32 PRNG key data; step n uses ``fold_in(rng, n)``.
    """

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: Array


def init_train_state(rng: Array, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0 with EMA = params (typed keys are stored as raw key data)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.array, params),
                      opt_state=optimizer.init(params), rng=rng)


def _all_finite(*values: Array) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


def _keep_if(ok: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def get_step_fn(sde: sde_lib.SDE, model: Any, optimizer: optax.GradientTransformation,
                train: bool, reduce_mean: bool = False, continuous: bool = True,
                likelihood_weighting: bool = False, importance_weighting: bool = False,
                eps: float = 1e-5, ema_rate: float = 0.999, objective: str = 'dsm',
                **core_kwargs) -> Callable[..., Tuple[TrainState, Dict[str, Array]]]:
    """``step_fn(state, batch, rng=None) -> (new_state, metrics)``, one step on a global batch.

    Train: one optimizer update of ``params`` and the EMA; metrics {'loss', 'grad_norm'
    (before clipping), 'lr' (used by this update)}.  A non-finite loss or gradient leaves
    params, opt_state and ema_params unchanged (the step counter still advances) and
    reports the loss as is, so the caller can stop with a message.
    Eval: {'loss'} of the EMA parameters; the state is returned unchanged.
    Randomness is ``fold_in(state.rng, state.step)`` unless ``rng`` is given (eval loops
    should pass one per batch), so a step is a pure function of (state, batch).
    No collectives: jit it with batch shardings and XLA computes the global mean.
    """
    loss_fn = get_sde_loss_fn(sde, model, train, reduce_mean, continuous,
                              likelihood_weighting, importance_weighting, eps, objective,
                              **core_kwargs)

    def train_step(state: TrainState, batch: Any, rng: Optional[Array] = None):
        rng = jax.random.fold_in(state.rng, state.step) if rng is None else rng
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(rng, state.params, batch)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_rate)
        ok = _all_finite(loss, grad_norm)
        new_state = state.replace(
            step=state.step + 1, params=_keep_if(ok, params, state.params),
            ema_params=_keep_if(ok, ema, state.ema_params),
            opt_state=_keep_if(ok, opt_state, state.opt_state))
        metrics = {'loss': loss, 'grad_norm': grad_norm,
                   'lr': current_learning_rate(opt_state)}
        return new_state, metrics

    def eval_step(state: TrainState, batch: Any, rng: Optional[Array] = None):
        rng = jax.random.fold_in(state.rng, state.step) if rng is None else rng
        return state, {'loss': loss_fn(rng, state.ema_params, batch)}

    return train_step if train else eval_step
