"""Variational dequantization (Flow++; Ho et al., 2019) for ScoreFlow's bits/dim.

Discrete data x̄ ∈ {0,…,K−1}^D are dequantized to x = (x̄ + u)/K. Uniform noise u gives
``−log P(x̄) ≤ E_u[−log p(x)] + D log K``; a learned q(u | x̄) gives the tighter

    −log P(x̄) ≤ E_{u~q(u|x̄)}[−log p((x̄ + u)/K) + log q(u | x̄)] + D log K

(docs/MATH.md, Bits per dimension), tight when q(u|x̄) ∝ p((x̄ + u)/K) on the bin.
ScoreFlow's variational-dequantization numbers (CIFAR-10 2.81 bits/dim for deep sub-VP)
train q with the score model frozen.

The flow q(u | x̄) is chosen by ``config.deq.name``: ``'flowpp'`` (default), the
Flow++ architecture of score_flow (``models/flowpp.py``; ``deq.layout`` 'cifar10' or
'imagenet32', sized by ``deq.filters`` / ``components`` / ``blocks`` / ``attn_heads``,
``deq.dropout`` in training), or ``'affine_coupling'`` (``models/affine_coupling.py``, a
small checkerboard affine-coupling flow). Flow++ initialises its layers from the first
training batch, as the original does.

Training (``--mode train_deq``) minimises the variational bits/dim with −log p replaced
by the ScoreFlow bound (``likelihood.get_bound_fn``, importance-sampled t, a few times
per example per step: an unbiased, cheap estimate of the bound), as the paper did, with
the project's training loop (``trainer.TrainLoop``) and train state (``train_state``):
its preemption checkpoints are ``W/<deq_folder>/checkpoints-meta/<step>`` (orbax,
resumable; ``--deq_folder``, default ``flowpp_dequantizer`` as ScoreFlow's), its log
``W/<deq_folder>/tensorboard``. Evaluation with ``--config.eval.dequantizer=True`` uses the
EMA parameters of the newest of those checkpoints with the exact ODE likelihood.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import checkpointing
import datasets
import likelihood
import losses
import sde_lib
from devices import get_mesh, local_mesh
from errors import UserError
from models import utils as mutils
from train_state import (
    STREAM_DEQ,
    TrainState,
    create_train_state,
    ema_warmup_in,
    get_optimizer,
    replicated_state,
    stream_key,
)
from trainer import TrainLoop

Array = jax.Array

DEQ_FOLDER = 'flowpp_dequantizer'  # score_flow's --deq_folder default
# Times of the bound per example and training step (an unbiased estimate of the bound).
TRAIN_BOUND_TIMES = 4


# --------------------------------------------------------------------------- the flow
def get_dequantizer_fn(model: nn.Module, num_bins: int) -> Callable[..., Tuple[Array, Array]]:
    """``fn(variables, keys [B], x̄, dropout_rng=None) -> (u, log q(u|x̄))`` with ε drawn
    from each key (the ``eval_quantities.Dequantizer`` interface); a ``dropout_rng`` applies
    the flow in training mode (dropout)."""

    def fn(variables, keys, levels, dropout_rng=None):
        eps = jax.vmap(lambda k: jax.random.normal(k, levels.shape[1:]))(keys)
        x_cond = datasets.to_unit_interval(levels, num_bins)
        if dropout_rng is None:
            return model.apply(variables, eps, x_cond)
        return model.apply(variables, eps, x_cond, train=True, rngs={'dropout': dropout_rng})

    return fn


def create_dequantizer(
    config: ml_collections.ConfigDict, rng: Array, init_levels: Optional[np.ndarray] = None
) -> Tuple[nn.Module, Dict[str, Any]]:
    """The flow of ``config.deq`` for ``config``'s images and its initial variables.

    Flow++ initialises every layer from the data: ``init_levels`` [B, H, W, C] (a batch
    of training levels x̄) with ε drawn from ``rng``. Without it the variables are only
    a template of the right structure (for restoring a checkpoint into)."""
    shape = datasets.data_shape(config)
    num_bins = datasets.num_bins(config)
    if len(shape) != 3 or num_bins is None:
        raise UserError(
            'Variational dequantization is for discrete images; '
            f'{config.data.dataset} data are continuous vectors.'
        )
    if config.deq.name == 'flowpp' and shape[1] % 2:
        raise UserError(
            f'The Flow++ dequantizer splits image columns in pairs; images of width '
            f"{shape[1]} are odd: use config.deq.name='affine_coupling'."
        )
    model = mutils.create_dequantizer(config)
    if init_levels is None:
        x = jnp.zeros((1,) + shape, jnp.float32)
        variables = jax.eval_shape(model.init, rng, x, x)
        return model, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), dict(variables))
    x_cond = datasets.to_unit_interval(jnp.asarray(init_levels), num_bins)
    return model, dict(_data_dependent_init(model, rng, x_cond))


@functools.partial(jax.jit, static_argnums=0)
def _data_dependent_init(model: nn.Module, rng: Array, x_cond: Array) -> Dict[str, Any]:
    """``model.init`` on the batch ``x_cond`` with ε ~ N(0, I) (compiled once per flow)."""
    eps_key, params_key = jax.random.split(rng)
    return model.init(params_key, jax.random.normal(eps_key, x_cond.shape), x_cond)


def initial_state(
    config: ml_collections.ConfigDict, mesh, init_levels: Optional[np.ndarray] = None
) -> Tuple[nn.Module, Any, TrainState]:
    """(flow, optimizer, train state at step 0) of the dequantizer of ``config``
    (``init_levels``: the data of the data-dependent initialisation, see
    :func:`create_dequantizer`)."""
    key = stream_key(config.seed, STREAM_DEQ)
    model, variables = create_dequantizer(config, key, init_levels)
    optimizer = get_optimizer(config)
    return model, optimizer, replicated_state(key, variables['params'], optimizer, mesh)


def get_deq_loss_fn(
    sde,
    score_fn,
    deq_fn,
    data: datasets.DataSpec,
    *,
    eps: float,
    offset: bool,
    num_times: int = TRAIN_BOUND_TIMES,
):
    """``loss(params, rng, levels) -> (mean bits/dim, per-example bits/dim)``: the
    variational bits/dim with the ScoreFlow bound (``num_times`` importance-sampled t per
    example) in place of −log p."""
    bound_fn = likelihood.get_bound_fn(
        sde,
        score_fn,
        dsm=True,
        importance_weighting=True,
        N=num_times,
        eps=eps,
        offset=offset,
        chunk_size=num_times,
    )

    def loss(params, rng, levels):
        rng, dropout_rng = jax.random.split(rng)
        keys = jax.random.split(rng, levels.shape[0])
        deq_keys, bound_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        u, log_q = deq_fn({'params': params}, deq_keys, levels, dropout_rng)
        y = data.scaler(data.dequantize(levels, u))
        nll = likelihood.nll_in_data_units(bound_fn(bound_keys, y), data.dim, data.scale) + log_q
        bpd = likelihood.bpd(nll, data.dim, data.num_bins)
        return jnp.mean(bpd), bpd

    return loss


def get_deq_step_fn(loss, optimizer, ema_rate: float, ema_warmup: bool = True):
    """``step(state, levels) -> (state, metrics)``: one guarded optimizer and EMA update
    of the flow (``losses.guarded_update``), randomness ``fold_in(state.rng, state.step)``."""

    def step(state: TrainState, levels: Array):
        rng = jax.random.fold_in(state.rng, state.step)
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(state.params, rng, levels)
        return losses.guarded_update(state, value, grads, optimizer, ema_rate, ema_warmup)

    return step


class DequantizerTrainer(TrainLoop):
    """``deq.n_iters`` steps of the dequantizer against a frozen score function, in
    ``<folder>`` (its checkpoints and TensorBoard log)."""

    loss_name = 'bits/dim (bound)'

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        folder: str,
        sde: sde_lib.SDE,
        data: datasets.DataSpec,
        score_fn,
    ):
        first = next(training_levels(config, 0))[0]  # data-dependent initialisation
        model, optimizer, state = initial_state(config, get_mesh(), first)
        loss = get_deq_loss_fn(
            sde,
            score_fn,
            get_dequantizer_fn(model, data.num_bins),
            data,
            eps=float(config.training.eps),
            offset=bool(config.deq.offset),
        )
        warmup = ema_warmup_in(folder)  # False: it continues score_flow's (constant EMA)
        step = get_deq_step_fn(loss, optimizer, float(config.deq.ema_rate), warmup)
        super().__init__(config, folder, state, step, lambda levels: levels, config.deq.n_iters)

    def batches(self, start_step: int) -> Iterator[np.ndarray]:
        return training_levels(self.config, start_step)


def training_levels(config: ml_collections.ConfigDict, start_step: int) -> Iterator[np.ndarray]:
    """Training batches of levels x̄ [n_jitted_steps, B, H, W, C] (datasets' order)."""
    plain = config.copy_and_resolve_references()
    plain.data.uniform_dequantization = False  # x̄/(K−1) exactly, to recover x̄
    k = int(config.data.num_bins)
    for batch in datasets.get_train_iterator(plain, start_step):
        yield np.round(batch * (k - 1)).astype(np.int32)


def train_dequantizer(
    config: ml_collections.ConfigDict,
    folder: str,
    sde: sde_lib.SDE,
    data: datasets.DataSpec,
    score_fn,
) -> Dict[str, float]:
    """Trains the dequantizer of ``config``'s images against a frozen ``score_fn``.

    Uses ``config.deq`` (``n_iters``, ``ema_rate``, ``offset``), the optimizer of
    ``config.optim`` and ``config.training``'s batch_size, n_jitted_steps, log_freq,
    snapshot_freq_for_preemption and eps; resumes from ``<folder>``'s newest checkpoint.
    Returns {'step', 'train_bpd'} of the last log line ({'step'} if nothing was left).
    """
    if data.num_bins is None:
        raise UserError(
            '--mode train_deq needs discrete images; '
            f'{config.data.dataset} data are continuous vectors.'
        )
    trainer = DequantizerTrainer(config, folder, sde, data, score_fn)
    state = trainer.run()
    logged = [h for h in trainer.history if 'train/loss' in h]
    if not logged:
        return {'step': int(state.step)}
    return {'step': logged[-1]['step'], 'train_bpd': logged[-1]['train/loss']}


def train_deq(
    config: ml_collections.ConfigDict, workdir: str, folder: str = DEQ_FOLDER
) -> Dict[str, float]:
    """``--mode train_deq`` on a prepared config: trains q(u|x̄) for snapshot
    ``eval.ckpt_id`` (score_flow's field; unset: ``eval.end_ckpt``; −1: the newest) of
    ``workdir`` (its EMA parameters, frozen), into ``W/<folder>/``."""
    sde = sde_lib.get_sde(config)
    model, _, template = create_train_state(config, local_mesh())
    field = 'eval.end_ckpt' if config.eval.ckpt_id is None else 'eval.ckpt_id'
    ckpt = checkpointing.resolve_snapshot(workdir, int(config.eval[field.split('.')[1]]), field)
    state = checkpointing.restore_checkpoint(
        workdir, ckpt, template, float(config.eval.ckpt_timeout)
    )
    score_fn = mutils.get_score_fn(
        sde, model, {'params': state.ema_params}, continuous=bool(config.training.continuous)
    )
    return train_dequantizer(
        config,
        os.path.join(workdir, folder),
        sde,
        datasets.DataSpec.from_config(config),
        score_fn,
    )


def load_dequantizer(
    config: ml_collections.ConfigDict, workdir: str, folder: str = DEQ_FOLDER
) -> Tuple[Callable, Dict[str, Any], str]:
    """(``fn(deq_variables, keys, x̄) -> (u, log q)``, deq_variables, digest) of the trained
    dequantizer: the EMA parameters of ``W/<folder>``'s newest checkpoint and a digest of them
    (evaluation results made with other parameters are not mixed with these)."""
    path = os.path.join(workdir, folder)
    model, _, template = initial_state(config, local_mesh())
    state = checkpointing.restore_latest_preemption(path, template)
    if state is None:
        flag = '' if folder == DEQ_FOLDER else f' and --deq_folder={folder}'
        raise UserError(
            f'{path} holds no trained dequantizer: train it first with '
            f'--mode train_deq (same config{flag}), or set '
            '--config.eval.dequantizer=False for uniform dequantization.'
        )
    params = jax.device_get(state.ema_params)
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    fn = get_dequantizer_fn(model, int(config.data.num_bins))
    return fn, {'params': params}, digest.hexdigest()
