"""The train state of every trained network: parameters, EMA, optax state, step and key.

``TrainState`` is the one state of the score model (``--mode train``) and of the
variational dequantizer (``--mode train_deq``); ``checkpointing`` saves and restores it
with orbax, evaluation restores it from snapshots. The optimizer and the EMA follow the
original code's ``optimization_manager`` and ``ExponentialMovingAverage``.
"""

from __future__ import annotations

import os
from typing import Any, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import file_io
from errors import UserError
from models import utils as mutils

Array = jax.Array

# Independent random streams folded into PRNGKey(config.seed) (stream_key).
STREAM_INIT, STREAM_TRAIN, STREAM_EVAL, STREAM_SAMPLE = range(4)
STREAM_DEQ = 7  # the variational dequantizer's initialisation and steps
STREAM_CLASSIFIER = 8  # the noise-conditional classifier's initialisation, steps, test noise
OPTIMIZERS = ('Adam', 'AdamW')
# Written by --mode import into the folder whose training continues an original checkpoint.
IMPORTED_FILE = 'imported_original.json'


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes (a pytree; checkpointable).

    Attributes:
      step: int32 scalar, the number of steps taken (skipped non-finite steps included).
      params, ema_params: parameters and their exponential moving average.
      opt_state: optax state.
      rng: raw uint32 PRNG key data; step n uses ``fold_in(rng, n)``.
    """

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: Array


def init_train_state(
    rng: Array, params: Any, optimizer: optax.GradientTransformation
) -> TrainState:
    """A fresh state at step 0 with EMA = params (typed keys are stored as raw key data)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.array, params),
        opt_state=optimizer.init(params),
        rng=rng,
    )


def get_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
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
        raise UserError(
            f'config.optim.optimizer={optim.optimizer!r} is not supported; '
            f'use one of {", ".join(OPTIMIZERS)}.'
        )
    lr, warmup = float(optim.lr), int(optim.warmup)
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else optax.constant_schedule(lr)
    adam = optax.inject_hyperparams(optax.adamw)(
        learning_rate=schedule,
        b1=float(optim.beta1),
        b2=float(optim.beta2),
        eps=float(optim.eps),
        weight_decay=float(optim.weight_decay),
    )
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


def ema_update(ema_params: Any, params: Any, step: Array, rate: float, warmup: bool = True) -> Any:
    """θ_ema ← d θ_ema + (1 − d) θ with d = min(rate, (1 + n)/(10 + n)), n = ``step``;
    without ``warmup`` d = rate, the originals' constant EMA.

    ``step`` is the number of updates before this one (0 for the first).  The warm-up
    of d (as TensorFlow's ExponentialMovingAverage with num_updates) matters on short
    runs: a plain 0.999 EMA still weights the initial parameters by 0.999^2000 ≈ 13.5 %
    after 2k steps (a 2-D mixture then scored KL 3+ nats); the warm-up fixes that. An
    EMA carried on from an original checkpoint has had no warm-up and keeps d = rate.
    """
    n = jnp.asarray(step, jnp.float32)
    decay = jnp.minimum(rate, (1.0 + n) / (10.0 + n)) if warmup else jnp.float32(rate)
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def apply_gradients(
    state: TrainState,
    grads: Any,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    ema_warmup: bool = True,
) -> TrainState:
    """One optimizer update of ``params`` and the EMA (:func:`ema_update`), the step
    counter advanced."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, state.step, ema_rate, ema_warmup)
    return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)


def ema_warmup_in(folder: str) -> bool:
    """Whether training in ``folder`` warms its EMA up: not when ``--mode import`` made an
    original checkpoint the state it continues from (:data:`IMPORTED_FILE`), whose
    EMA the original code carries on at the constant rate."""
    return not file_io.exists(os.path.join(folder, IMPORTED_FILE))


def replicated_state(
    rng: Array, params: Any, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """``init_train_state`` placed replicated over ``mesh`` (host params in, no copies)."""
    # Host copies: every process holds the same values, which jit treats as replicated.
    params = jax.device_get(params)
    init = lambda p: init_train_state(rng, p, optimizer)  # noqa: E731
    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))(params)


def stream_key(seed: int, stream: int) -> Array:
    """``fold_in(PRNGKey(seed), stream)``: the key of one of the run's random streams."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def create_train_state(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> Tuple[Any, optax.GradientTransformation, TrainState]:
    """(model, optimizer, state at step 0) of the score model of a prepared ``config``,
    the state initialised replicated over ``mesh``."""
    optimizer = get_optimizer(config)
    model, variables = mutils.init_model(stream_key(config.seed, STREAM_INIT), config)
    state = replicated_state(
        stream_key(config.seed, STREAM_TRAIN), variables['params'], optimizer, mesh
    )
    return model, optimizer, state
