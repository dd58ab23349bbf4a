"""Variational dequantization (Flow++; Ho et al., 2019) for ScoreFlow's bits/dim.

Discrete data x̄ ∈ {0,…,K−1}^D are dequantized to x = (x̄ + u)/K. Uniform noise u gives
``−log P(x̄) ≤ E_u[−log p(x)] + D log K``; a learned q(u | x̄) gives the tighter

    −log P(x̄) ≤ E_{u~q(u|x̄)}[−log p((x̄ + u)/K) + log q(u | x̄)] + D log K     (MATH.md),

tight when q(u|x̄) ∝ p((x̄ + u)/K) on the bin. ScoreFlow's variational-dequantization
numbers (CIFAR-10 2.81 bits/dim for deep sub-VP) train q with the score model frozen.

The flow. ε ~ N(0, I) on the image grid is transformed by ``num_layers`` affine coupling
layers with alternating checkerboard masks, h ← m⊙h + (1−m)⊙(h·e^{s} + t), where
(s, t) = NN([m⊙h, c(x̄)]) is a small conv net conditioned on features c of x̄/(K−1); then
u = sigmoid(h) ∈ (0, 1)^D. By the change of variables

    log q(u | x̄) = log N(ε; 0, I) − Σ_layers Σ (1−m)⊙s − Σ_i [log σ(h_i) + log σ(−h_i)].

Training (``--mode train_deq``) minimises the variational bits/dim with −log p replaced
by the ScoreFlow bound (``likelihood.get_bound_fn``, importance-sampled t, a few times
per example per step: an unbiased, cheap estimate of the bound), as the paper did;
evaluation with ``--config.eval.dequantizer=True`` uses the exact ODE likelihood. Files:
``W/deq/dequantizer.npz`` (EMA parameters; read by evaluation), ``W/deq/state.npz`` (the
full training state, to resume after preemption). No pickle: pytrees are stored as
their leaves in a fixed order and rebuilt on a template.
"""
from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, Dict, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

import datasets
from errors import UserError

Array = jax.Array

DEQ_FOLDER = 'deq'
PARAMS_FILE = 'dequantizer.npz'
STATE_FILE = 'state.npz'
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
        log_normal = -0.5 * _sum(eps ** 2) - 0.5 * eps[0].size * math.log(2 * math.pi)
        log_sigmoid_jac = _sum(jax.nn.log_sigmoid(h) + jax.nn.log_sigmoid(-h))
        return jax.nn.sigmoid(h), log_normal - logdet - log_sigmoid_jac


def _sum(a: Array) -> Array:
    return jnp.sum(jnp.reshape(a, (a.shape[0], -1)), axis=-1)


def get_dequantizer_fn(model: Dequantizer, num_bins: int
                       ) -> Callable[[Any, Array, Array], Tuple[Array, Array]]:
    """``fn(variables, keys [B], x̄) -> (u, log q(u|x̄))`` with ε drawn from each key
    (the ``eval_lib.Dequantizer`` interface)."""

    def fn(variables, keys, levels):
        eps = jax.vmap(lambda k: jax.random.normal(k, levels.shape[1:]))(keys)
        return model.apply(variables, eps, datasets.to_unit_interval(levels, num_bins))

    return fn


# --------------------------------------------------------------------------- files
def save_tree(path: str, tree: Any) -> None:
    """Atomically saves a pytree's leaves (in ``jax.tree.leaves`` order) as .npz."""
    import eval_lib  # pylint: disable=import-outside-toplevel

    leaves = jax.device_get(jax.tree.leaves(tree))
    eval_lib.save_npz(path, **{f'leaf_{i:05d}': np.asarray(x) for i, x in enumerate(leaves)})


def load_tree(path: str, template: Any) -> Any:
    """The pytree saved by :func:`save_tree`, rebuilt on ``template``'s structure."""
    import eval_lib  # pylint: disable=import-outside-toplevel

    arrays = eval_lib.load_npz(path)
    leaves, treedef = jax.tree.flatten(template)
    if arrays is None or len(arrays) != len(leaves) or any(
            arrays[f'leaf_{i:05d}'].shape != np.shape(x) for i, x in enumerate(leaves)):
        raise UserError(f'{path} is missing, damaged or from another dequantizer; run '
                        '--mode train_deq again (after deleting it).')
    return jax.tree.unflatten(treedef, [jnp.asarray(arrays[f'leaf_{i:05d}'])
                                        for i in range(len(leaves))])


# --------------------------------------------------------------------------- training
@flax.struct.dataclass
class DeqState:
    """Training state of the dequantizer (a pytree)."""

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any


def create_dequantizer(config, rng: Array) -> Tuple[Dequantizer, Dict[str, Any]]:
    """The flow for ``config``'s image shape and its initial variables."""
    shape = datasets.data_shape(config)
    if len(shape) != 3:
        raise UserError('Variational dequantization is for discrete images; '
                        f'{config.data.dataset} data are continuous vectors.')
    model = Dequantizer()
    x = jnp.zeros((1,) + shape, jnp.float32)
    return model, dict(jax.jit(model.init)(rng, x, x))


def get_deq_loss_fn(sde, score_fn, deq_fn, data, *, eps: float, offset: bool,
                    num_times: int = TRAIN_BOUND_TIMES):
    """``loss(params, rng, levels) -> (mean bits/dim, per-example bits/dim)``: the
    variational bits/dim with the ScoreFlow bound (``num_times`` importance-sampled t per
    example) in place of −log p."""
    import likelihood  # pylint: disable=import-outside-toplevel

    bound_fn = likelihood.get_bound_fn(sde, score_fn, dsm=True, importance_weighting=True,
                                       N=num_times, eps=eps, offset=offset,
                                       chunk_size=num_times)

    def loss(params, rng, levels):
        keys = jax.random.split(rng, levels.shape[0])
        deq_keys, bound_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        u, log_q = deq_fn({'params': params}, deq_keys, levels)
        y = data.scaler(data.dequantize(levels, u))
        nll = data.nll_in_data_units(bound_fn(bound_keys, y)) + log_q
        bpd = data.bits_per_dim(nll)
        return jnp.mean(bpd), bpd

    return loss


def train_deq(config, workdir: str) -> Dict[str, float]:
    """``--mode train_deq``: trains q(u|x̄) for snapshot ``eval.end_ckpt`` of ``workdir``
    (its EMA parameters, frozen), into ``W/deq/``. See :func:`train_dequantizer`."""
    import eval_lib  # pylint: disable=import-outside-toplevel

    evaluator = eval_lib.Evaluator(config, workdir, eval_folder=None)
    variables = evaluator.load_variables(int(config.eval.end_ckpt))
    return train_dequantizer(config, os.path.join(workdir, DEQ_FOLDER), evaluator.sde,
                             evaluator.data, evaluator.score_builder(variables))


def train_dequantizer(config, folder: str, sde, data, score_fn) -> Dict[str, float]:
    """Trains the dequantizer of ``config``'s images against a frozen ``score_fn``.

    Uses ``config.deq`` (``n_iters``, ``ema_rate``, ``offset``), the optimizer of
    ``config.optim`` and ``config.training``'s batch_size, n_jitted_steps, log_freq,
    snapshot_freq_for_preemption and eps. ``data`` is an ``eval_lib.DataSpec``. Resumes
    from ``<folder>/state.npz``; writes the EMA parameters to ``<folder>/dequantizer.npz``.
    Returns {'step', 'train_bpd'} of the last log line.
    """
    import losses  # pylint: disable=import-outside-toplevel

    if data.num_bins is None:
        raise UserError('--mode train_deq needs discrete images; '
                        f'{config.data.dataset} data are continuous vectors.')
    os.makedirs(folder, exist_ok=True)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7)
    model, init_vars = create_dequantizer(config, rng)
    optimizer = losses.get_optimizer(config)
    params = init_vars['params']
    state = DeqState(step=jnp.asarray(0, jnp.int32), params=params,
                     ema_params=jax.tree.map(jnp.array, params),
                     opt_state=optimizer.init(params))
    state_path = os.path.join(folder, STATE_FILE)
    if os.path.exists(state_path):
        state = load_tree(state_path, state)
        logging.info('Resuming the dequantizer at step %d.', int(state.step))
    loss = get_deq_loss_fn(sde, score_fn, get_dequantizer_fn(model, data.num_bins), data,
                           eps=float(config.training.eps), offset=bool(config.deq.offset))
    chunk_fn = _get_train_chunk_fn(loss, optimizer, float(config.deq.ema_rate))
    return _train_loop(config, state, chunk_fn, folder, rng)


def _get_train_chunk_fn(loss, optimizer, ema_rate: float):
    """``chunk(state, rngs [k], levels [k, B, ...]) -> (state, bits/dim [k])``: k jitted
    steps called from Python. Not a ``lax.scan``: on XLA:CPU (jaxlib 0.10.2) the weight
    gradient of a convolution inside a while loop keeps a non-canonical layout and runs
    30–60× slower than the same gradient outside a loop."""
    import losses  # pylint: disable=import-outside-toplevel

    @functools.partial(jax.jit, donate_argnums=(0,))
    def one_step(state: DeqState, rng, levels):
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(state.params, rng, levels)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = losses.ema_update(state.ema_params, params, state.step, ema_rate)
        return DeqState(step=state.step + 1, params=params, ema_params=ema,
                        opt_state=opt_state), value

    def chunk(state, rngs, levels):
        values = []
        for rng, batch in zip(rngs, levels):
            state, value = one_step(state, rng, batch)
            values.append(value)
        return state, jnp.stack(values)

    return chunk


def _levels_batches(config, start_step: int):
    """Training batches of levels x̄ [n_jitted_steps, B, H, W, C] (datasets' order)."""
    plain = config.copy_and_resolve_references()
    plain.data.uniform_dequantization = False  # x̄/(K−1) exactly, to recover x̄
    k = int(config.data.num_bins)
    for batch in datasets.get_train_iterator(plain, start_step):
        yield np.round(batch * (k - 1)).astype(np.int32)


def _train_loop(config, state: DeqState, chunk_fn, folder: str, rng: Array
                ) -> Dict[str, float]:
    t = config.training
    jitted, n_iters = int(t.n_jitted_steps), int(config.deq.n_iters)
    start = int(state.step)
    batches = _levels_batches(config, start)
    values, begin, result = [], time.time(), {}
    for step in range(start, n_iters, jitted):
        rngs = jax.vmap(lambda s: jax.random.fold_in(rng, s))(jnp.arange(step, step + jitted))
        state, bpd = chunk_fn(state, rngs, jnp.asarray(next(batches)))
        values.append(np.asarray(bpd))
        done = step + jitted
        if done % int(t.log_freq) < jitted or done >= n_iters:
            mean = float(np.mean(np.concatenate(values)))
            rate = (done - start) / max(time.time() - begin, 1e-9)
            logging.info('deq step %d: training bits/dim (bound) %.4f, %.1f steps/s, '
                         'ETA %.0f s', done, mean, rate, (n_iters - done) / max(rate, 1e-9))
            result, values = {'step': done, 'train_bpd': mean}, []
        if done % int(t.snapshot_freq_for_preemption) < jitted or done >= n_iters:
            save_tree(os.path.join(folder, STATE_FILE), state)
            save_tree(os.path.join(folder, PARAMS_FILE), state.ema_params)
    return result


def load_dequantizer(config, workdir: str):
    """(``fn(deq_variables, keys, x̄) -> (u, log q)``, deq_variables) of the trained
    dequantizer in ``W/deq/dequantizer.npz`` (EMA parameters)."""
    path = os.path.join(workdir, DEQ_FOLDER, PARAMS_FILE)
    if not os.path.exists(path):
        raise UserError(f'{path} does not exist: train the dequantizer first with '
                        '--mode train_deq (same config), or set '
                        '--config.eval.dequantizer=False for uniform dequantization.')
    model, init_vars = create_dequantizer(config, jax.random.PRNGKey(0))
    params = load_tree(path, init_vars['params'])
    return get_dequantizer_fn(model, int(config.data.num_bins)), {'params': params}
