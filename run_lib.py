"""Training loop and the entry points of ``main.py``: ``train``, ``evaluate``, ``train_deq``.

``train(config, workdir)`` trains the score model of ``config`` in ``W = workdir``:

- The host hands over ``training.n_jitted_steps`` global batches at a time,
  ``[n_jitted_steps, batch_size, ...]`` sharded over a 1-D ``Mesh(jax.devices(),
  ('data',))`` as ``P(None, 'data')``; on GPU / TPU one ``jax.jit`` call runs them as a
  ``lax.scan`` over ``losses.get_step_fn``, on CPU one asynchronously dispatched jit call
  per step (see ``get_train_chunk_fn``). The train state is replicated and donated. Each
  host feeds its own rows (``datasets.get_train_iterator``) through
  ``jax.make_array_from_process_local_data``. Step n draws its randomness from
  ``fold_in(state.rng, n)`` with the partitionable threefry RNG, so the trajectory does
  not depend on the number of devices or hosts, only on the global batch.
- Resumes exactly, data order included, from the newest ``W/checkpoints-meta`` save.
- Every ``log_freq`` steps: a log line (mean loss since the last line, steps/s, ETA) and
  TensorBoard scalars in ``W/tensorboard``; every ``eval_freq``: the loss of the EMA
  parameters on a test-split batch; every ``snapshot_freq_for_preemption``: a preemption
  save; every ``snapshot_freq``: snapshot ``step // snapshot_freq`` in ``W/checkpoints``
  and, with ``snapshot_sampling``, ``W/samples/iter_<step>/sample.{png,npz}``.
- A non-finite loss or gradient (the step function then keeps the old parameters) stops
  training with a :class:`errors.UserError` naming the last good checkpoint; it is caught
  before any later save, so every checkpoint on disk is finite.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import checkpointing
import datasets
import losses
import sde_lib
from configs.validation import validate_config
from errors import UserError

# Independent random streams folded into PRNGKey(config.seed).
STREAM_INIT, STREAM_TRAIN, STREAM_EVAL, STREAM_SAMPLE = range(4)
MAX_SNAPSHOT_SAMPLES = 64


# --- configuration ------------------------------------------------------------------------

def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the fields read from the data filled in.

    ``data.dim = 0`` (vector data: "take it from the data") becomes the dimension of the
    NPZ / TOY vectors, which the model needs.
    """
    config = config.copy_and_resolve_references()
    if datasets.is_continuous(config) and not config.data.dim:
        config.data.dim = int(datasets.data_shape(config)[0])
    return config


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes ``config`` as JSON to ``path`` atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text + '\n')
    os.replace(tmp, path)


# --- devices ------------------------------------------------------------------------------

def get_mesh() -> Mesh:
    """A 1-D mesh ``('data',)`` over every device of every host."""
    return Mesh(np.asarray(jax.devices()), ('data',))


def to_global(local: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
    """Joins each host's rows of ``local`` into one global array sharded as ``spec``."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


def _stream_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


# --- jitted pieces --------------------------------------------------------------------------

def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh
                       ) -> Tuple[Any, Any, losses.TrainState]:
    """(model, optimizer, state at step 0), the state initialised replicated over ``mesh``."""
    from models import utils as mutils  # deferred: importing models/ registers every network

    config = resolve_config(config)
    optimizer = losses.get_optimizer(config)
    seed_key = jax.random.PRNGKey(config.seed)
    model, variables = mutils.init_model(jax.random.fold_in(seed_key, STREAM_INIT), config)
    # Host copies: every process holds the same values, which jit treats as replicated.
    params = jax.device_get(variables['params'])

    def init(params: Any) -> losses.TrainState:
        return losses.init_train_state(jax.random.fold_in(seed_key, STREAM_TRAIN), params,
                                       optimizer)

    state = jax.jit(init, out_shardings=NamedSharding(mesh, P()))(params)
    return model, optimizer, state


def _new_log_sums() -> Dict[str, jax.Array]:
    """Running sums between two log lines; ``first_bad`` is the first non-finite step."""
    return {'loss': jnp.zeros((), jnp.float32), 'grad_norm': jnp.zeros((), jnp.float32),
            'count': jnp.zeros((), jnp.int32), 'lr': jnp.full((), jnp.nan, jnp.float32),
            'first_bad': jnp.full((), -1, jnp.int32)}


def _add_step(sums: Dict[str, jax.Array], step: jax.Array, metrics: Dict[str, jax.Array]
              ) -> Dict[str, jax.Array]:
    """``sums`` after the step that started at ``step`` and reported ``metrics``."""
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    first_bad = jnp.where((sums['first_bad'] < 0) & ~finite, step, sums['first_bad'])
    return {'loss': sums['loss'] + jnp.where(finite, metrics['loss'], 0.0),
            'grad_norm': sums['grad_norm'] + jnp.where(finite, metrics['grad_norm'], 0.0),
            'count': sums['count'] + 1, 'lr': metrics['lr'].astype(jnp.float32),
            'first_bad': first_bad.astype(jnp.int32)}


def get_train_chunk_fn(step_fn, scaler, mesh: Mesh, use_scan: Optional[bool] = None):
    """``chunk(state, sums, batch) -> (state, sums)``: ``len(batch)`` training steps.

    ``batch`` is ``[k, B, ...]`` data in [0, 1] sharded ``P(None, 'data')``; ``scaler``
    maps it to model space inside the jit. ``state`` and ``sums`` are donated.

    With ``use_scan`` (default on GPU / TPU) the k steps are one ``lax.scan`` in one jit
    call. On CPU (the default there) each step is its own jit call, dispatched
    asynchronously (no host round trip): XLA:CPU runs a train step inside a while loop
    ~30× slower than the same step alone (measured: 10 vs 0.32 CPU-s per DIGITS step),
    and unrolling the scan multiplies the compile time instead.
    """
    if use_scan is None:
        use_scan = jax.default_backend() != 'cpu'
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(None, 'data'))

    def one_step(state, sums, x):
        new_state, metrics = step_fn(state, scaler(x))
        return new_state, _add_step(sums, state.step, metrics)

    if use_scan:
        def scan_chunk(state, sums, batch):
            carry, _ = jax.lax.scan(lambda c, x: (one_step(*c, x), None), (state, sums), batch)
            return carry

        return jax.jit(scan_chunk, in_shardings=(replicated, replicated, batch_sharding),
                       out_shardings=(replicated, replicated), donate_argnums=(0, 1))

    indexed_step = jax.jit(lambda state, sums, batch, i: one_step(state, sums, batch[i]),
                           in_shardings=(replicated, replicated, batch_sharding, replicated),
                           out_shardings=(replicated, replicated), donate_argnums=(0, 1))

    def loop_chunk(state, sums, batch):
        for i in range(batch.shape[0]):
            state, sums = indexed_step(state, sums, batch, np.int32(i))
        return state, sums

    return loop_chunk


def get_eval_loss_fn(eval_step_fn, scaler, seed: int, mesh: Mesh):
    """``eval_loss(state, batch, step) -> loss`` of the EMA parameters on ``batch``."""
    key = _stream_key(seed, STREAM_EVAL)

    def eval_loss(state, batch, step):
        _, metrics = eval_step_fn(state, scaler(batch), jax.random.fold_in(key, step))
        return metrics['loss']

    return jax.jit(eval_loss, out_shardings=NamedSharding(mesh, P()))


# --- the loop -------------------------------------------------------------------------------

class Trainer:
    """State and bookkeeping of one ``train`` call; ``run()`` does the work."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate_config(config, jax.device_count())
        self.config = resolve_config(config)
        self.workdir = workdir
        self.mesh = get_mesh()
        self.sde = sde_lib.get_sde(self.config)
        self.scaler = datasets.get_data_scaler(self.config)
        self.model, optimizer, state = create_train_state(self.config, self.mesh)
        self.state = checkpointing.restore_latest_preemption(workdir, state) or state
        self._build_step_fns(optimizer)
        self.is_main = jax.process_index() == 0
        self.writer = self._summary_writer() if self.is_main else None
        self._sample_fn = None
        self._eval_rows: Optional[int] = None
        self.history: list = []  # one dict per log line (step, train/loss, ...)

    def _build_step_fns(self, optimizer) -> None:
        t = self.config.training
        kwargs = dict(reduce_mean=t.reduce_mean, continuous=t.continuous,
                      likelihood_weighting=t.likelihood_weighting,
                      importance_weighting=t.importance_weighting, eps=t.eps,
                      ema_rate=self.config.model.ema_rate)
        train_step = losses.get_step_fn(self.sde, self.model, optimizer, train=True, **kwargs)
        eval_step = losses.get_step_fn(self.sde, self.model, optimizer, train=False, **kwargs)
        self.chunk_fn = get_train_chunk_fn(train_step, self.scaler, self.mesh)
        self.eval_fn = get_eval_loss_fn(eval_step, self.scaler, self.config.seed, self.mesh)
        self.new_sums = jax.jit(_new_log_sums, out_shardings=NamedSharding(self.mesh, P()))

    def _summary_writer(self):
        from tensorboardX import SummaryWriter  # deferred: only the main process writes
        return SummaryWriter(os.path.join(self.workdir, 'tensorboard'))

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> losses.TrainState:
        t = self.config.training
        step = int(jax.device_get(self.state.step))
        self._log_start(step)
        if step >= t.n_iters:
            logging.info('Training already finished: step %d of %d.', step, t.n_iters)
            return self.state
        batches = datasets.get_train_iterator(self.config, start_step=step)
        sums = self.new_sums()
        clock = (time.time(), step)
        while step < t.n_iters:
            k = min(t.n_jitted_steps, t.n_iters - step)
            batch = to_global(next(batches)[:k], self.mesh, P(None, 'data'))
            self.state, sums = self.chunk_fn(self.state, sums, batch)
            step += k
            if _due(step, t.log_freq) or step == t.n_iters:
                self._check_finite(sums)
                self._log(step, sums, clock)
                sums = self.new_sums()
                clock = (time.time(), step)
            if self._periodic_work(step, sums):
                clock = (time.time(), step)  # steps/s measures training alone
        self._log_end(step)
        return self.state

    def _periodic_work(self, step: int, sums: Dict[str, jax.Array]) -> bool:
        """Eval loss, checkpoints and samples due at ``step``; True if any ran."""
        t = self.config.training
        eval_due = _due(step, t.eval_freq)
        preemption_due = _due(step, t.snapshot_freq_for_preemption) or step == t.n_iters
        snapshot_due = _due(step, t.snapshot_freq)
        if eval_due:
            self._eval_loss(step)
        if preemption_due or snapshot_due:
            self._check_finite(sums)
        if preemption_due:
            checkpointing.save_preemption(self.workdir, self.state)
        if snapshot_due:
            checkpointing.save_snapshot(self.workdir, step // t.snapshot_freq, self.state)
            self._sample(step)
        return eval_due or preemption_due or snapshot_due

    # --- logging ----------------------------------------------------------------------------
    def _log_start(self, step: int) -> None:
        from models import utils as mutils

        t = self.config.training
        logging.info('Training %s on %s (%s, %d parameters): %s SDE, global batch %d over '
                     '%d devices on %d hosts, steps %d -> %d.', self.config.model.name,
                     self.config.data.dataset, datasets.data_shape(self.config),
                     mutils.param_count(self.state.params), t.sde, t.batch_size,
                     jax.device_count(), jax.process_count(), step, t.n_iters)

    def _log(self, step: int, sums: Dict[str, jax.Array], clock: Tuple[float, int]) -> None:
        """The log line and TensorBoard scalars: means since the last line, speed, ETA."""
        sums = jax.device_get(sums)
        now, steps = time.time(), step - clock[1]
        rate = steps / max(now - clock[0], 1e-9)
        count = max(int(sums['count']), 1)
        loss, grad_norm = float(sums['loss']) / count, float(sums['grad_norm']) / count
        eta = datetime.timedelta(seconds=int((self.config.training.n_iters - step) / rate))
        logging.info('step %d/%d  loss %.5g  grad_norm %.3g  lr %.3g  %.2f steps/s  ETA %s',
                     step, self.config.training.n_iters, loss, grad_norm, float(sums['lr']),
                     rate, eta)
        values = {'train/loss': loss, 'train/grad_norm': grad_norm,
                  'train/lr': float(sums['lr']), 'train/steps_per_sec': rate}
        self.history.append({'step': step, **values})
        self._scalars(step, values)

    def _scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def _log_end(self, step: int) -> None:
        logging.info('Training finished at step %d; snapshots in %s: %s.', step,
                     checkpointing.snapshot_dir(self.workdir),
                     checkpointing.list_checkpoints(self.workdir))
        if self.writer is not None:
            self.writer.close()

    # --- checks -----------------------------------------------------------------------------
    def _check_finite(self, sums: Dict[str, jax.Array]) -> None:
        """Stops with a UserError naming the last good checkpoint after a non-finite step."""
        first_bad = int(jax.device_get(sums['first_bad']))
        if first_bad < 0:
            return
        saved = checkpointing.list_preemption_checkpoints(self.workdir)
        where = (f'the last good checkpoint is '
                 f'{os.path.join(checkpointing.preemption_dir(self.workdir), str(saved[-1]))} '
                 f'(step {saved[-1]}), from which the same command resumes'
                 if saved else 'no checkpoint was saved yet')
        raise UserError(
            f'Training stopped: the loss or its gradient became non-finite at step '
            f'{first_bad} (that update was not applied). Nothing after it was saved; {where}. '
            f'Lower --config.optim.lr, enable gradient clipping (--config.optim.grad_clip=1) '
            f'or check the data before resuming.')

    # --- evaluation and samples ---------------------------------------------------------------
    def _eval_loss(self, step: int) -> None:
        rows = self._eval_batch_rows()
        if not rows:
            return
        shard = datasets.get_shard(self.config, 'test')
        x = datasets.train_batch(self.config, shard, step // self.config.training.eval_freq,
                                 rows, jax.process_index())
        loss = float(self.eval_fn(self.state, to_global(x, self.mesh, P('data')),
                                  np.int32(step)))
        logging.info('step %d  eval_loss %.5g (EMA, test split)', step, loss)
        self.history.append({'step': step, 'eval/loss': loss})
        self._scalars(step, {'eval/loss': loss})

    def _eval_batch_rows(self) -> int:
        """Rows per host of the eval-loss batch: the training batch, or less for a small
        test split (a multiple of the local device count); 0 disables the eval loss."""
        if self._eval_rows is None:
            per_host = self.config.training.batch_size // jax.process_count()
            available = len(datasets.get_shard(self.config, 'test'))
            local = jax.local_device_count()
            self._eval_rows = min(per_host, available) // local * local
            if not self._eval_rows:
                logging.warning('The test split is too small for an eval-loss batch; '
                                'no eval loss is logged.')
        return self._eval_rows

    def _sample(self, step: int) -> None:
        """Samples of the EMA model into ``W/samples/iter_<step>/`` (PNG and NPZ)."""
        if not self.config.training.snapshot_sampling:
            return
        shape = datasets.data_shape(self.config)
        if len(shape) == 1 and shape[0] < 2:
            logging.info('No sample plot for 1-dimensional data; skipped.')
            return
        samples, nfe = self._sampler()(self.state.ema_params, np.int32(step))
        samples = np.asarray(jax.device_get(samples), np.float32)
        if self.is_main:
            folder = os.path.join(self.workdir, 'samples', f'iter_{step}')
            _save_samples(folder, samples)
            logging.info('step %d  saved %d samples (NFE %d) to %s', step, len(samples),
                         int(np.max(jax.device_get(nfe))), folder)

    def _sampler(self):
        if self._sample_fn is None:
            import sampling
            from models import utils as mutils

            n = min(self.config.training.batch_size, MAX_SNAPSHOT_SAMPLES)
            shape = (n,) + datasets.data_shape(self.config)
            sampling_fn = sampling.get_sampling_fn(
                self.config, self.sde, shape, datasets.get_data_inverse_scaler(self.config))
            key = _stream_key(self.config.seed, STREAM_SAMPLE)
            continuous = self.config.training.continuous

            def sample(params, step):
                score_fn = mutils.get_score_fn(self.sde, self.model, {'params': params},
                                               train=False, continuous=continuous)
                return sampling_fn(jax.random.fold_in(key, step), score_fn)

            self._sample_fn = jax.jit(sample, out_shardings=NamedSharding(self.mesh, P()))
        return self._sample_fn


def _due(step: int, freq: int) -> bool:
    """True every ``freq`` steps; never for ``freq <= 0``."""
    return freq > 0 and step % freq == 0


def _save_samples(folder: str, samples: np.ndarray) -> None:
    """``sample.npz`` (float32) and ``sample.png`` (image grid, or a 2-D scatter plot)."""
    import eval_lib  # its picture helpers

    os.makedirs(folder, exist_ok=True)
    eval_lib.save_npz(os.path.join(folder, 'sample.npz'), samples=samples)
    if samples.ndim == 4:
        picture = eval_lib.image_grid(samples)
    else:
        picture = eval_lib.scatter_image(samples[:, :2])
    eval_lib.save_png(os.path.join(folder, 'sample.png'), picture)


# --- entry points -----------------------------------------------------------------------------

def train(config: ml_collections.ConfigDict, workdir: str) -> losses.TrainState:
    """Trains (or resumes training of) ``config`` in ``workdir``; returns the final state."""
    return Trainer(config, workdir).run()


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             eval_folder: str = 'eval') -> Dict[str, Any]:
    """``--mode eval``: delegates to ``eval_lib.evaluate`` (metrics.json in W/eval_folder)."""
    import eval_lib

    validate_config(config, jax.device_count())
    return eval_lib.evaluate(resolve_config(config), workdir, eval_folder)


def train_deq(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """``--mode train_deq``: trains the variational dequantizer (``eval_lib.train_deq``)."""
    import eval_lib

    fn = getattr(eval_lib, 'train_deq', None)
    if fn is None:
        raise UserError('--mode train_deq (variational dequantization) is not available in '
                        'this installation; use --mode train and --mode eval with '
                        '--config.eval.dequantizer=False.')
    validate_config(config, jax.device_count())
    return fn(resolve_config(config), workdir)


def read_metrics(workdir: str, eval_folder: str = 'eval') -> Dict[str, Any]:
    """The ``metrics.json`` written by ``--mode eval`` ({} if there is none yet)."""
    path = os.path.join(workdir, eval_folder, 'metrics.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
