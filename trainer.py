"""The training loop: one for every trained network (score model, dequantizer).

:class:`TrainLoop` runs ``step_fn`` over host batches and keeps the books:

- The host hands over ``training.n_jitted_steps`` global batches at a time,
  ``[n_jitted_steps, batch_size, ...]`` sharded over ``devices.get_mesh()`` as
  ``P(None, 'data')``; on GPU / TPU one ``jax.jit`` call runs them as a ``lax.scan``, on
  CPU one asynchronously dispatched jit call per step (:func:`get_train_chunk_fn`). The
  train state is replicated and donated. Each host feeds its own rows through
  ``jax.make_array_from_process_local_data``. Step n draws its randomness from
  ``fold_in(state.rng, n)`` with the partitionable threefry RNG, so the trajectory does
  not depend on the number of devices or hosts, only on the global batch.
- Resumes exactly, data order included, from the newest ``<folder>/checkpoints-meta`` save.
- Every ``log_freq`` steps: a log line (mean loss since the last line, steps/s, ETA) and
  TensorBoard scalars in ``<folder>/tensorboard``; every ``snapshot_freq_for_preemption``
  and at the end: a preemption save.
- A non-finite loss or gradient (the step then keeps the old parameters) stops training
  with a :class:`errors.UserError` naming the last good checkpoint; it is caught before
  any later save, so every checkpoint on disk is finite.

:class:`Trainer` (``--mode train``) adds, for the score model: every ``eval_freq`` the loss
of the EMA parameters on a test-split batch; every ``snapshot_freq`` snapshot
``step // snapshot_freq`` in ``W/checkpoints`` (also at the last step, when that number is
free, as score_sde) and, with ``snapshot_sampling``,
``W/samples/iter_<step>/sample.{png,npz}``. ``dequantizer.py`` trains its flow with the
same loop.
"""

from __future__ import annotations

import abc
import datetime
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import checkpointing
import datasets
import file_io
import losses
import pictures
import progress
import sampling
import sde_lib
from configs.base import get_base_config
from devices import get_mesh, to_global
from errors import UserError
from models import utils as mutils
from train_state import (
    STREAM_EVAL,
    STREAM_SAMPLE,
    TrainState,
    create_train_state,
    ema_warmup_in,
    stream_key,
)

MAX_SNAPSHOT_SAMPLES = 64
StepFn = Callable[[TrainState, jax.Array], Tuple[TrainState, Dict[str, jax.Array]]]


# --- jitted pieces --------------------------------------------------------------------------


def new_log_sums() -> Dict[str, jax.Array]:
    """Running sums between two log lines; ``first_bad`` is the first non-finite step."""
    return {
        'loss': jnp.zeros((), jnp.float32),
        'grad_norm': jnp.zeros((), jnp.float32),
        'count': jnp.zeros((), jnp.int32),
        'lr': jnp.full((), jnp.nan, jnp.float32),
        'first_bad': jnp.full((), -1, jnp.int32),
    }


def _add_step(
    sums: Dict[str, jax.Array], step: jax.Array, metrics: Dict[str, jax.Array]
) -> Dict[str, jax.Array]:
    """``sums`` after the step that started at ``step`` and reported ``metrics``."""
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    first_bad = jnp.where((sums['first_bad'] < 0) & ~finite, step, sums['first_bad'])
    return {
        'loss': sums['loss'] + jnp.where(finite, metrics['loss'], 0.0),
        'grad_norm': sums['grad_norm'] + jnp.where(finite, metrics['grad_norm'], 0.0),
        'count': sums['count'] + 1,
        'lr': metrics['lr'].astype(jnp.float32),
        'first_bad': first_bad.astype(jnp.int32),
    }


def get_train_chunk_fn(
    step_fn: StepFn,
    prepare: Callable[[jax.Array], Any],
    mesh: Mesh,
    use_scan: Optional[bool] = None,
):
    """``chunk(state, sums, batch) -> (state, sums)``: ``len(batch)`` training steps.

    ``batch`` is ``[k, B, ...]`` host data sharded ``P(None, 'data')`` (or a tuple of
    such arrays, e.g. images and labels); ``prepare`` maps
    one step's rows to the step's input inside the jit (the data scaler). ``state`` and
    ``sums`` are donated.

    With ``use_scan`` (default on GPU / TPU) the k steps are one ``lax.scan`` in one jit
    call. On CPU (the default there) each step is its own jit call, dispatched
    asynchronously (no host round trip): XLA:CPU runs a train step inside a while loop
    ~30× slower than the same step alone (measured: 10 vs 0.32 CPU-s per DIGITS step; the
    weight gradient of a convolution keeps a non-canonical layout there), and unrolling
    the scan multiplies the compile time instead.
    """
    if use_scan is None:
        use_scan = jax.default_backend() != 'cpu'
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(None, 'data'))

    def one_step(state, sums, x):
        new_state, metrics = step_fn(state, prepare(x))
        return new_state, _add_step(sums, state.step, metrics)

    if use_scan:

        def scan_chunk(state, sums, batch):
            carry, _ = jax.lax.scan(lambda c, x: (one_step(*c, x), None), (state, sums), batch)
            return carry

        return jax.jit(
            scan_chunk,
            in_shardings=(replicated, replicated, batch_sharding),
            out_shardings=(replicated, replicated),
            donate_argnums=(0, 1),
        )

    indexed_step = jax.jit(
        lambda state, sums, batch, i: one_step(state, sums, jax.tree.map(lambda a: a[i], batch)),
        in_shardings=(replicated, replicated, batch_sharding, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0, 1),
    )

    def loop_chunk(state, sums, batch):
        for i in range(_num_steps(batch)):
            state, sums = indexed_step(state, sums, batch, np.int32(i))
        return state, sums

    return loop_chunk


def _num_steps(batch: Any) -> int:
    """k of a chunk: the leading axis of every leaf of ``batch``."""
    return jax.tree.leaves(batch)[0].shape[0]


def due(step: int, freq: int) -> bool:
    """True every ``freq`` steps; never for ``freq <= 0``."""
    return freq > 0 and step % freq == 0


# --- the loop -------------------------------------------------------------------------------


class TrainLoop(abc.ABC):
    """A resumable, logged, checkpointed loop of ``step_fn`` up to ``n_iters`` steps.

    Subclasses give the host batches (:meth:`batches`) and may add periodic work
    (:meth:`_periodic_work`). ``folder`` holds ``checkpoints-meta/`` and ``tensorboard/``.
    """

    loss_name = 'loss'  # what the step's 'loss' metric is, for the log line

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        folder: str,
        state: TrainState,
        step_fn: StepFn,
        prepare: Callable[[jax.Array], Any],
        n_iters: int,
    ):
        self.config = config
        self.folder = folder
        self.n_iters = int(n_iters)
        self.mesh = get_mesh()
        self.state = checkpointing.restore_latest_preemption(folder, state) or state
        self.chunk_fn = get_train_chunk_fn(step_fn, prepare, self.mesh)
        self.new_sums = jax.jit(new_log_sums, out_shardings=NamedSharding(self.mesh, P()))
        self.is_main = jax.process_index() == 0
        # tensorboardX writes from a thread and its flush() does not wait for it; the
        # thread flushes every flush_secs (default 120 s: minutes of scalars lost to a
        # SIGKILL), so 1 s here.
        tb_dir = os.path.join(folder, 'tensorboard')
        self.writer = file_io.summary_writer(tb_dir, flush_secs=1) if self.is_main else None
        self.history: list = []  # one dict per log line (step, train/loss, ...)

    @abc.abstractmethod
    def batches(self, start_step: int) -> Iterator[np.ndarray]:
        """Host batches ``[n_jitted_steps, B / hosts, ...]`` (or tuples of them) from
        ``start_step`` on."""

    def describe(self, step: int) -> str:
        """What is trained, for the first log line."""
        return f'{type(self).__name__}, steps {step} -> {self.n_iters}'

    def run(self) -> TrainState:
        t = self.config.training
        step = int(jax.device_get(self.state.step))
        logging.info('Training %s.', self.describe(step))
        if step >= self.n_iters:
            logging.info('Training already finished: step %d of %d.', step, self.n_iters)
            self._close()
            return self.state
        batches = self.batches(step)
        sums = self.new_sums()
        clock = (time.time(), step)
        while step < self.n_iters:
            k = min(t.n_jitted_steps, self.n_iters - step)
            batch = jax.tree.map(
                lambda a: to_global(a[:k], self.mesh, P(None, 'data')), next(batches)
            )
            self.state, sums = self.chunk_fn(self.state, sums, batch)
            step += k
            progress.set_where(f'training step {step}/{self.n_iters}')
            if due(step, t.log_freq) or step == self.n_iters:
                self._check_finite(sums)
                self._log(step, sums, clock)
                sums = self.new_sums()
                clock = (time.time(), step)
            if self._periodic_work(step, sums):
                clock = (time.time(), step)  # steps/s measures training alone
        logging.info('Training finished at step %d.', step)
        self._close()
        return self.state

    def _periodic_work(self, step: int, sums: Dict[str, jax.Array]) -> bool:
        """Preemption saves due at ``step``; True if any ran."""
        if due(step, self.config.training.snapshot_freq_for_preemption) or step == self.n_iters:
            self._check_finite(sums)
            checkpointing.save_preemption(self.folder, self.state)
            return True
        return False

    # --- logging ----------------------------------------------------------------------------
    def _log(self, step: int, sums: Dict[str, jax.Array], clock: Tuple[float, int]) -> None:
        """The log line and TensorBoard scalars: means since the last line, speed, ETA."""
        sums = jax.device_get(sums)
        now, steps = time.time(), step - clock[1]
        rate = steps / max(now - clock[0], 1e-9)
        count = max(int(sums['count']), 1)
        loss, grad_norm = float(sums['loss']) / count, float(sums['grad_norm']) / count
        eta = datetime.timedelta(seconds=int((self.n_iters - step) / rate))
        logging.info(
            'step %d/%d  %s %.5g  grad_norm %.3g  lr %.3g  %.2f steps/s  ETA %s',
            step,
            self.n_iters,
            self.loss_name,
            loss,
            grad_norm,
            float(sums['lr']),
            rate,
            eta,
        )
        values = {
            'train/loss': loss,
            'train/grad_norm': grad_norm,
            'train/lr': float(sums['lr']),
            'train/steps_per_sec': rate,
        }
        self.history.append({'step': step, **values})
        self._scalars(step, values)

    def _scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _check_finite(self, sums: Dict[str, jax.Array]) -> None:
        """Stops with a UserError naming the last good checkpoint after a non-finite step."""
        first_bad = int(jax.device_get(sums['first_bad']))
        if first_bad < 0:
            return
        saved = checkpointing.list_preemption_checkpoints(self.folder)
        where = (
            f'the last good checkpoint is '
            f'{os.path.join(checkpointing.preemption_dir(self.folder), str(saved[-1]))} '
            f'(step {saved[-1]}), from which the same command resumes'
            if saved
            else 'no checkpoint was saved yet'
        )
        raise UserError(
            f'Training stopped: the loss or its gradient became non-finite at step '
            f'{first_bad} (that update was not applied). Nothing after it was saved; {where}. '
            f'Lower --config.optim.lr, enable gradient clipping (--config.optim.grad_clip=1) '
            f'or check the data before resuming.'
        )


def record_objective_change(
    config: ml_collections.ConfigDict, workdir: str
) -> ml_collections.ConfigDict:
    """``config`` with ``training.objective_changes`` of the run so far (from its previous
    ``W/config.json``) and, if training resumes from a saved step with another objective
    (``losses.OBJECTIVE_FIELDS``: fine-tuning with a higher ``score_matching_order``, say),
    one more entry ``'step <n>: <field> <old> -> <new>'``, which is also logged. The
    optimizer state continues; only the loss changes from step n on."""
    previous = file_io.read_json(os.path.join(workdir, 'config.json'), None)
    if previous is None:
        return config
    old = previous.get('training', {})
    defaults = get_base_config().training
    changes = list(old.get('objective_changes', ()))
    saved = checkpointing.list_preemption_checkpoints(workdir)
    diffs = [
        f'{name} {old.get(name, defaults[name])!r} -> {config.training[name]!r}'
        for name in losses.OBJECTIVE_FIELDS
        if old.get(name, defaults[name]) != config.training[name]
    ]
    if diffs and saved:
        changes.append(f'step {saved[-1]}: ' + ', '.join(diffs))
        logging.info(
            'The objective changes on resuming at step %d: %s (fine-tuning; the optimizer '
            'state continues).',
            saved[-1],
            ', '.join(diffs),
        )
    config = config.copy_and_resolve_references()
    config.training.objective_changes = tuple(changes)
    return config


class Trainer(TrainLoop):
    """``--mode train``: the score model of a prepared config in ``W = workdir``."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.sde = sde_lib.get_sde(config)
        self.scaler = datasets.get_data_scaler(config)
        # The data first (cached): missing data is a UserError in seconds, not after the
        # network's initialisation (16 s for the CIFAR-10 DDPM++ on 2 CPU cores).
        datasets.get_shard(config, 'train')
        self.model, optimizer, state = create_train_state(config, get_mesh())
        options = losses.LossOptions.from_config(config)
        ema_rate = config.model.ema_rate
        warmup = ema_warmup_in(workdir)
        if not warmup:
            logging.info(
                '%s continues an original checkpoint (--mode import): its EMA keeps the '
                "constant rate model.ema_rate=%g, as the original's.",
                workdir,
                ema_rate,
            )
        train_step = losses.get_step_fn(
            self.sde, self.model, optimizer, True, options, ema_rate, ema_warmup=warmup
        )
        super().__init__(config, workdir, state, train_step, self.scaler, config.training.n_iters)
        self.workdir = workdir
        eval_step = losses.get_step_fn(self.sde, self.model, optimizer, False, options, ema_rate)
        self.eval_fn = self._eval_loss_fn(eval_step)
        self._sample_fn = None
        self._eval_rows: Optional[int] = None
        self._save_missing_snapshot()

    def _save_missing_snapshot(self) -> None:
        """Writes the snapshot of the restored step if it is due there and missing.

        At a multiple of ``snapshot_freq`` the preemption checkpoint is written before the
        snapshot; a kill between the two resumes after that step, which would never be
        saved as a snapshot (and ``--mode eval`` would stop at the gap). The restored state
        is the state of that step, so its snapshot is the one the run would have written.
        The same holds for the last step's snapshot (:meth:`_last_snapshot_due`).
        """
        step = int(jax.device_get(self.state.step))
        freq = int(self.config.training.snapshot_freq)
        if step > 0 and (step % freq == 0 or step == self.n_iters):
            if step // freq not in checkpointing.list_checkpoints(self.workdir):
                logging.info('Saving snapshot %d of the restored step %d.', step // freq, step)
                checkpointing.save_snapshot(self.workdir, step // freq, self.state)

    def batches(self, start_step: int) -> Iterator[np.ndarray]:
        return datasets.get_train_iterator(self.config, start_step=start_step)

    def describe(self, step: int) -> str:
        t = self.config.training
        return (
            f'{self.config.model.name} on {self.config.data.dataset} '
            f'({datasets.data_shape(self.config)}, '
            f'{mutils.param_count(self.state.params)} parameters): {t.sde} SDE, global '
            f'batch {t.batch_size} over {jax.device_count()} devices on '
            f'{jax.process_count()} hosts, score matching order {t.score_matching_order}, '
            f'steps {step} -> {self.n_iters}'
        )

    def _periodic_work(self, step: int, sums: Dict[str, jax.Array]) -> bool:
        """Eval loss, checkpoints and samples due at ``step``; True if any ran."""
        t = self.config.training
        eval_due = due(step, t.eval_freq)
        snapshot_due = due(step, t.snapshot_freq) or self._last_snapshot_due(step)
        if eval_due:
            self._eval_loss(step)
        saved = super()._periodic_work(step, sums)
        if snapshot_due:
            self._check_finite(sums)
            checkpointing.save_snapshot(self.workdir, step // t.snapshot_freq, self.state)
            self._sample(step)
        return eval_due or saved or snapshot_due

    def _last_snapshot_due(self, step: int) -> bool:
        """At the last step, a snapshot numbered ``step // snapshot_freq`` if that number is
        free, as score_sde saves one at its last step: a training shorter than
        ``snapshot_freq`` (or ending between two) leaves a snapshot to evaluate and sample."""
        number = step // int(self.config.training.snapshot_freq)
        if step != self.n_iters or number in checkpointing.list_checkpoints(self.workdir):
            return False
        logging.info('Last step %d: saving it as snapshot %d.', step, number)
        return True

    def _close(self) -> None:
        logging.info(
            'Snapshots in %s: %s.',
            checkpointing.snapshot_dir(self.workdir),
            checkpointing.list_checkpoints(self.workdir),
        )
        super()._close()

    # --- evaluation and samples -------------------------------------------------------------
    def _eval_loss_fn(self, eval_step_fn):
        """``eval_loss(state, batch, step) -> loss`` of the EMA parameters on ``batch``."""
        key = stream_key(self.config.seed, STREAM_EVAL)

        def eval_loss(state, batch, step):
            _, metrics = eval_step_fn(state, self.scaler(batch), jax.random.fold_in(key, step))
            return metrics['loss']

        return jax.jit(eval_loss, out_shardings=NamedSharding(self.mesh, P()))

    def _eval_loss(self, step: int) -> None:
        rows = self._eval_batch_rows()
        if not rows:
            return
        shard = datasets.get_shard(self.config, 'test')
        x = datasets.train_batch(
            self.config, shard, step // self.config.training.eval_freq, rows, jax.process_index()
        )
        loss = float(self.eval_fn(self.state, to_global(x, self.mesh, P('data')), np.int32(step)))
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
                logging.warning(
                    'The test split is too small for an eval-loss batch; no eval loss is logged.'
                )
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
            pictures.save_samples(folder, samples)
            logging.info(
                'step %d  saved %d samples (NFE %d) to %s',
                step,
                len(samples),
                int(np.max(jax.device_get(nfe))),
                folder,
            )

    def _sampler(self):
        if self._sample_fn is None:
            n = min(self.config.training.batch_size, MAX_SNAPSHOT_SAMPLES)
            shape = (n,) + datasets.data_shape(self.config)
            sampling_fn = sampling.get_sampling_fn(
                self.config, self.sde, shape, datasets.get_data_inverse_scaler(self.config)
            )
            key = stream_key(self.config.seed, STREAM_SAMPLE)
            continuous = self.config.training.continuous

            def sample(params, step):
                score_fn = mutils.get_score_fn(
                    self.sde, self.model, {'params': params}, train=False, continuous=continuous
                )
                return sampling_fn(jax.random.fold_in(key, step), score_fn)

            self._sample_fn = jax.jit(sample, out_shardings=NamedSharding(self.mesh, P()))
        return self._sample_fn
