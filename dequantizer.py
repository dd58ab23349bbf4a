"""Variational dequantization (Flow++; Ho et al., 2019) for ScoreFlow's bits/dim.

Discrete data x̄ ∈ {0,…,K−1}^D are dequantized to x = (x̄ + u)/K. Uniform noise u gives
``−log P(x̄) ≤ E_u[−log p(x)] + D log K``; a learned q(u | x̄) gives the tighter

    −log P(x̄) ≤ E_{u~q(u|x̄)}[−log p((x̄ + u)/K) + log q(u | x̄)] + D log K

(docs/MATH.md, Bits per dimension), tight when q(u|x̄) ∝ p((x̄ + u)/K) on the bin.
ScoreFlow's variational-dequantization numbers (CIFAR-10 2.81 bits/dim for deep sub-VP)
train q with the score model frozen.

The flow. ε ~ N(0, I) on the image grid is transformed by ``num_layers`` affine coupling
layers with alternating checkerboard masks, h ← m⊙h + (1−m)⊙(h·e^{s} + t), where
(s, t) = NN([m⊙h, c(x̄)]) is a small conv net conditioned on features c of x̄/(K−1); then
u = sigmoid(h) ∈ (0, 1)^D. By the change of variables

    log q(u | x̄) = log N(ε; 0, I) − Σ_layers Σ (1−m)⊙s − Σ_i [log σ(h_i) + log σ(−h_i)].

Training (``--mode train_deq``) minimises the variational bits/dim with −log p replaced
by the ScoreFlow bound (``likelihood.get_bound_fn``, importance-sampled t, a few times
per example per step: an unbiased, cheap estimate of the bound), as the paper did, with
the project's training loop (``trainer.TrainLoop``) and train state (``train_state``):
its preemption checkpoints are ``W/deq/checkpoints-meta/<step>`` (orbax, resumable), its
log ``W/deq/tensorboard``. Evaluation with ``--config.eval.dequantizer=True`` uses the
EMA parameters of the newest of those checkpoints with the exact ODE likelihood.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Callable, Dict, Iterator, Tuple

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
    get_optimizer,
    replicated_state,
    stream_key,
)
from trainer import TrainLoop

Array = jax.Array

DEQ_FOLDER = 'deq'
# Times of the bound per example and training step (an unbiased estimate of the bound).
TRAIN_BOUND_TIMES = 4


# --------------------------------------------------------------------------- the flow
def checkerboard(height: int, width: int, parity: int) -> np.ndarray:
    """[H, W, 1] mask with ones where (i + j) % 2 == parity."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
    return ((i + j) % 2 == parity).astype(np.float32)[..., None]


class _ConvNet(nn.Module):
    """3×3 conv → swish → 3×3 conv → swish → zero-initialised 3×3 conv (``features``)."""

    hidden: int
    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.swish(nn.Conv(self.hidden, (3, 3))(x))
        x = nn.swish(nn.Conv(self.hidden, (3, 3))(x))
        return nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(x)


class Dequantizer(nn.Module):
    """q(u | x̄): ``apply(variables, eps, x_cond) -> (u, log_q)``.

    eps: [B, H, W, C] standard normal; x_cond: [B, H, W, C] the data x̄/(K−1) in [0, 1].
    Returns u ∈ (0, 1) of eps's shape and log q(u | x̄) per example ([B]).
    At initialisation every coupling is the identity (zero-initialised output layers),
    so u = sigmoid(ε) — the logistic-normal, not the uniform.
    """

    num_layers: int = 4
    hidden: int = 32

    @nn.compact
    def __call__(self, eps: Array, x_cond: Array) -> Tuple[Array, Array]:
        _, height, width, channels = eps.shape
        cond = nn.swish(nn.Conv(self.hidden, (3, 3))(2.0 * x_cond - 1.0))
        h, logdet = eps, jnp.zeros(eps.shape[0])
        for layer in range(self.num_layers):
            mask = checkerboard(height, width, layer % 2)
            st = _ConvNet(self.hidden, 2 * channels)(jnp.concatenate([h * mask, cond], -1))
            log_s = jnp.tanh(st[..., :channels])  # bounded scales keep training stable
            h = h * mask + (1.0 - mask) * (h * jnp.exp(log_s) + st[..., channels:])
            logdet = logdet + _sum(log_s * (1.0 - mask))
        log_normal = -0.5 * _sum(eps**2) - 0.5 * eps[0].size * math.log(2 * math.pi)
        log_sigmoid_jac = _sum(jax.nn.log_sigmoid(h) + jax.nn.log_sigmoid(-h))
        return jax.nn.sigmoid(h), log_normal - logdet - log_sigmoid_jac


def _sum(a: Array) -> Array:
    return jnp.sum(jnp.reshape(a, (a.shape[0], -1)), axis=-1)


def get_dequantizer_fn(
    model: Dequantizer, num_bins: int
) -> Callable[[Any, Array, Array], Tuple[Array, Array]]:
    """``fn(variables, keys [B], x̄) -> (u, log q(u|x̄))`` with ε drawn from each key
    (the ``eval_runner.Dequantizer`` interface)."""

    def fn(variables, keys, levels):
        eps = jax.vmap(lambda k: jax.random.normal(k, levels.shape[1:]))(keys)
        return model.apply(variables, eps, datasets.to_unit_interval(levels, num_bins))

    return fn


# --------------------------------------------------------------------------- training
def create_dequantizer(
    config: ml_collections.ConfigDict, rng: Array
) -> Tuple[Dequantizer, Dict[str, Any]]:
    """The flow for ``config``'s image shape and its initial variables."""
    shape = datasets.data_shape(config)
    if len(shape) != 3 or datasets.num_bins(config) is None:
        raise UserError(
            'Variational dequantization is for discrete images; '
            f'{config.data.dataset} data are continuous vectors.'
        )
    model = Dequantizer()
    x = jnp.zeros((1,) + shape, jnp.float32)
    return model, dict(jax.jit(model.init)(rng, x, x))


def initial_state(config: ml_collections.ConfigDict, mesh) -> Tuple[Dequantizer, Any, TrainState]:
    """(flow, optimizer, train state at step 0) of the dequantizer of ``config``."""
    key = stream_key(config.seed, STREAM_DEQ)
    model, variables = create_dequantizer(config, key)
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
        keys = jax.random.split(rng, levels.shape[0])
        deq_keys, bound_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        u, log_q = deq_fn({'params': params}, deq_keys, levels)
        y = data.scaler(data.dequantize(levels, u))
        nll = likelihood.nll_in_data_units(bound_fn(bound_keys, y), data.dim, data.scale) + log_q
        bpd = likelihood.bpd(nll, data.dim, data.num_bins)
        return jnp.mean(bpd), bpd

    return loss


def get_deq_step_fn(loss, optimizer, ema_rate: float):
    """``step(state, levels) -> (state, metrics)``: one guarded optimizer and EMA update
    of the flow (``losses.guarded_update``), randomness ``fold_in(state.rng, state.step)``."""

    def step(state: TrainState, levels: Array):
        rng = jax.random.fold_in(state.rng, state.step)
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(state.params, rng, levels)
        return losses.guarded_update(state, value, grads, optimizer, ema_rate)

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
        model, optimizer, state = initial_state(config, get_mesh())
        loss = get_deq_loss_fn(
            sde,
            score_fn,
            get_dequantizer_fn(model, data.num_bins),
            data,
            eps=float(config.training.eps),
            offset=bool(config.deq.offset),
        )
        step = get_deq_step_fn(loss, optimizer, float(config.deq.ema_rate))
        super().__init__(config, folder, state, step, lambda levels: levels, config.deq.n_iters)

    def batches(self, start_step: int) -> Iterator[np.ndarray]:
        """Training batches of levels x̄ [n_jitted_steps, B, H, W, C] (datasets' order)."""
        plain = self.config.copy_and_resolve_references()
        plain.data.uniform_dequantization = False  # x̄/(K−1) exactly, to recover x̄
        k = int(self.config.data.num_bins)
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


def train_deq(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
    """``--mode train_deq`` on a prepared config: trains q(u|x̄) for snapshot
    ``eval.end_ckpt`` of ``workdir`` (its EMA parameters, frozen), into ``W/deq/``."""
    sde = sde_lib.get_sde(config)
    model, _, template = create_train_state(config, local_mesh())
    state = checkpointing.restore_checkpoint(
        workdir, int(config.eval.end_ckpt), template, float(config.eval.ckpt_timeout)
    )
    score_fn = mutils.get_score_fn(
        sde, model, {'params': state.ema_params}, continuous=bool(config.training.continuous)
    )
    return train_dequantizer(
        config,
        os.path.join(workdir, DEQ_FOLDER),
        sde,
        datasets.DataSpec.from_config(config),
        score_fn,
    )


def load_dequantizer(
    config: ml_collections.ConfigDict, workdir: str
) -> Tuple[Callable, Dict[str, Any], str]:
    """(``fn(deq_variables, keys, x̄) -> (u, log q)``, deq_variables, digest) of the trained
    dequantizer: the EMA parameters of ``W/deq``'s newest checkpoint and a digest of them
    (evaluation results made with other parameters are not mixed with these)."""
    folder = os.path.join(workdir, DEQ_FOLDER)
    model, _, template = initial_state(config, local_mesh())
    state = checkpointing.restore_latest_preemption(folder, template)
    if state is None:
        raise UserError(
            f'{folder} holds no trained dequantizer: train it first with '
            '--mode train_deq (same config), or set '
            '--config.eval.dequantizer=False for uniform dequantization.'
        )
    params = jax.device_get(state.ema_params)
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    fn = get_dequantizer_fn(model, int(config.data.num_bins))
    return fn, {'params': params}, digest.hexdigest()
