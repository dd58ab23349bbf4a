"""``--mode eval``: eval loss, bits/dim (probability-flow ODE and ScoreFlow bound), samples.

``evaluate(config, workdir, eval_folder)`` evaluates the checkpoints ``eval.begin_ckpt`` …
``eval.end_ckpt`` of ``W/checkpoints`` (waiting up to ``eval.ckpt_timeout`` seconds for
one not yet written) with their EMA parameters and writes, under ``W/<eval_folder>/``:

* ``metrics.json`` — one entry per checkpoint number (a string) with the scalars of
  the CLI contract (README, Usage): ``loss``, ``bpd``, ``bpd_stderr``, ``nll``,
  ``nfe_mean``, ``bound_bpd``, ``bound_stderr``, ``num_examples``, ``num_images``,
  ``num_repeats``, ``fid``, ``is``, ``kid``, ``num_samples`` (only what was computed),
  and ``step``, the checkpoint's training step. Written atomically (tmp file +
  ``os.replace``) after every phase.
* ``metrics.png`` — metrics.json plotted over training steps (redrawn after each
  checkpoint) and ``tensorboard/`` — the same scalars as ``eval/<name>`` at each
  checkpoint's step.
* ``ckpt_<n>/*.npz`` — per-batch, per-example results (no pickle) and the samples;
  ``ckpt_<n>/samples.png`` — a grid of the first samples.
* ``eval_meta.json`` — the evaluation meta-checkpoint: the settings the per-batch files
  depend on and the position reached. A preempted evaluation restarted with the same
  command skips every batch whose file exists and recomputes the rest on the same
  examples with the same random numbers, so its ``metrics.json`` equals that of an
  uninterrupted run (the per-batch files and their bookkeeping: ``eval_store``).

Sample quality (FID / IS / KID, or FD_digits on DIGITS) is computed by ``evaluation``.

Bits/dim (docs/MATH.md, Bits per dimension). The eval iterator yields discrete data
x̄ ∈ {0,…,K−1}^D (or continuous vectors) with a mask and the global example index. Each example is
dequantized, x = (x̄ + u)/K with u ~ U[0,1)^D (``eval.dequantizer``: u ~ q(u|x̄) of the
trained variational dequantizer, whose log q(u|x̄) is added), mapped to the model's space
y = a·x + b by the data scaler, and
``nll = −log p(x) = −log p(y) − D log a`` (nats per example in the data's own units),
``bpd = nll / (D ln 2) + log₂ K`` (no ``log₂ K`` for continuous data). ``bpd`` uses the
probability-flow ODE with a Hutchinson trace (``likelihood.get_nll_fn``), ``bound_bpd``
the ScoreFlow variational bound (``likelihood.get_bound_fn``); both see the same u.
Means are over examples × ``eval.num_repeats`` passes; every pass visits every example
of the split exactly once (padded last batch, masked). Standard errors are over images:
each image's repeats are averaged first (``eval_store.mean_and_stderr_over_images``).

Randomness. Every per-example random number (dequantization noise, Hutchinson probe,
time samples of the bound, loss noise) comes from
``fold_in(fold_in(fold_in(fold_in(key(seed), phase), ckpt), repeat), example_index)``, so the
results do not depend on the batch size, the number of devices or on a restart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import checkpointing
import datasets
import dequantizer
import digits_classifier  # noqa: F401  (registers the feature network 'digits_mlp')
import evaluation
import file_io
import likelihood
import losses
import pictures
import sampling
import sde_lib
from datasets import DataSpec
from devices import local_mesh, shard_rows
from errors import UserError
from eval_store import (
    META_FILE,
    METRICS_FILE,
    Batch,
    Hook,
    Progress,
    Results,
    ResultStore,
    check_complete,
    check_fingerprint,
    concat_results,
    likelihood_metrics,
    run_pass,
    sorted_results,
    update_metrics,
)
from file_io import read_json, write_json
from models import utils as mutils
from train_state import create_train_state

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
ScoreBuilder = Callable[[Any], ScoreFn]  # variables -> score_fn(x, t)

# Tags folded into the seed so that each phase draws from its own random stream.
PHASE_LOSS, PHASE_BPD, PHASE_SAMPLES = 1, 2, 3
# Sub-streams of one example's key.
_DEQ_STREAM, _ODE_STREAM, _BOUND_STREAM = 0, 1, 2

NUM_GRID_SAMPLES = 64
PLOT_FILE = 'metrics.png'  # metrics.json over checkpoints
# The bound's time integral: importance-sampled t with this many samples, as the paper.
BOUND_NUM_TIMES = 1000


# --------------------------------------------------------------------------- keys
def phase_key(seed: int, phase: int) -> Array:
    """The base key of one evaluation phase: fold_in(key(seed), phase)."""
    return jax.random.fold_in(jax.random.key(seed), phase)


def round_key(base: Array, ckpt: int, repeat: int) -> Array:
    """fold_in(fold_in(base, ckpt), repeat): the key of one pass over the split."""
    return jax.random.fold_in(jax.random.fold_in(base, ckpt), repeat)


def example_keys(rkey: Array, index: Array) -> Array:
    """One key per example, fold_in(rkey, example_index) ([B] typed keys)."""
    return jax.vmap(lambda i: jax.random.fold_in(rkey, i))(jnp.asarray(index, jnp.uint32))


def _stream(keys: Array, stream: int) -> Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys)


# --------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class LikelihoodOptions:
    """What the bits/dim pass computes (from ``config.eval``)."""

    ode: bool = True  # bpd by the probability-flow ODE
    bound: bool = False  # bound_bpd by the ScoreFlow bound
    bound_importance_weighting: bool = True  # its times t ~ p(t) ∝ g²/σ², else U[ε, T]
    dsm: bool = True
    offset: bool = True
    hutchinson_type: str = 'Rademacher'
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5
    ode_method: str = 'dopri5'
    ode_time: str = 't'
    bound_num_times: int = BOUND_NUM_TIMES

    @classmethod
    def from_config(cls, config) -> LikelihoodOptions:
        e = config.eval
        return cls(
            ode=bool(e.enable_bpd),
            bound=bool(e.bound),
            bound_importance_weighting=bool(e.bound_importance_weighting),
            dsm=bool(e.dsm),
            offset=bool(e.offset),
            hutchinson_type=str(e.hutchinson_type),
            rtol=float(e.rtol),
            atol=float(e.atol),
            eps=float(e.eps),
            ode_method=str(e.ode_method),
            ode_time=str(e.ode_time),
        )

    @property
    def enabled(self) -> bool:
        return self.ode or self.bound


# --------------------------------------------------------------------------- per batch
Dequantizer = Callable[[Any, Array, Array], Tuple[Array, Array]]
"""``dequantizer(deq_variables, keys [B], x̄) -> (u [B, *shape] in [0,1), log q(u|x̄) [B])``."""


def get_likelihood_batch_fn(
    sde,
    score_builder: ScoreBuilder,
    data: DataSpec,
    opts: LikelihoodOptions,
    dequantizer: Optional[Dequantizer] = None,
):
    """Jitted ``fn(variables, deq_variables, rkey, x, index) -> {name: [B]}``.

    Returns ``nll``, ``bpd``, ``nfe`` (ODE) and ``bound_nll``, ``bound_bpd`` (bound), as
    selected by ``opts``; nll values in nats per example in the data's own units
    (including log q(u|x̄) with a variational dequantizer), per-example keys
    ``fold_in(rkey, index)``.
    """

    def fn(variables, deq_variables, rkey, x, index):
        keys = example_keys(rkey, index)
        deq_keys = _stream(keys, _DEQ_STREAM)
        if data.num_bins is not None and dequantizer is not None:
            u, log_q = dequantizer(deq_variables, deq_keys, x)
        else:
            u, log_q = data.uniform_noise(deq_keys), jnp.zeros(x.shape[0])
        y = data.scaler(data.dequantize(x, u))
        score_fn = score_builder(variables)
        out = {}
        if opts.ode:
            nll_fn = likelihood.get_nll_fn(
                sde,
                score_fn,
                hutchinson_type=opts.hutchinson_type,
                rtol=opts.rtol,
                atol=opts.atol,
                eps=opts.eps,
                method=opts.ode_method,
                ode_time=opts.ode_time,
            )
            nll, _, nfe = nll_fn(_stream(keys, _ODE_STREAM), y)
            out['nll'] = likelihood.nll_in_data_units(nll, data.dim, data.scale) + log_q
            out['bpd'] = likelihood.bpd(out['nll'], data.dim, data.num_bins)
            out['nfe'] = jnp.broadcast_to(nfe, nll.shape).astype(jnp.float32)
        if opts.bound:
            bound_fn = likelihood.get_bound_fn(
                sde,
                score_fn,
                dsm=opts.dsm,
                importance_weighting=opts.bound_importance_weighting,
                N=opts.bound_num_times,
                eps=opts.eps,
                offset=opts.offset,
                hutchinson_type=opts.hutchinson_type,
            )
            bound = bound_fn(_stream(keys, _BOUND_STREAM), y)  # per-example keys
            out['bound_nll'] = likelihood.nll_in_data_units(bound, data.dim, data.scale) + log_q
            out['bound_bpd'] = likelihood.bpd(out['bound_nll'], data.dim, data.num_bins)
        return out

    return jax.jit(fn)


def get_loss_batch_fn(
    core_loss: Callable[[Array, ScoreFn, Array], Array], score_builder: ScoreBuilder, data: DataSpec
):
    """Jitted ``fn(variables, rkey, x, index) -> {'loss': [B]}``: the training objective
    ``core_loss(rng, score_fn, batch) -> [B]`` (``losses.get_core_loss_fn``) evaluated one
    example at a time with its own key, on the training data mapping."""

    def fn(variables, rkey, x, index):
        keys = example_keys(rkey, index)
        y = data.train_input(x, _stream(keys, _DEQ_STREAM))
        score_fn = score_builder(variables)
        per_example = jax.vmap(lambda k, yi: core_loss(k, score_fn, yi[None])[0])
        return {'loss': per_example(_stream(keys, _ODE_STREAM), y)}

    return jax.jit(fn)


# --------------------------------------------------------------------------- passes
def evaluate_likelihood(
    batch_fn,
    variables,
    deq_variables,
    make_batches,
    *,
    base_key: Array,
    ckpt: int,
    num_repeats: int,
    store: ResultStore,
    num_examples: int = 0,
    hook: Optional[Hook] = None,
    running_key: str = 'bpd',
) -> Results:
    """``num_repeats`` passes of ``get_likelihood_batch_fn``'s function over the split.

    ``make_batches()`` returns a fresh iterable of (x, mask, index) in a fixed order;
    pass ``repeat`` uses the key ``round_key(base_key, ckpt, repeat)``. Returns the
    per-example results of all passes with ``index`` and ``repeat`` columns.
    """
    mesh = local_mesh()
    progress = Progress(f'ckpt {ckpt} bits/dim', num_examples * num_repeats, running_key)
    parts = []
    for repeat in range(num_repeats):
        rkey = round_key(base_key, ckpt, repeat)

        def fn(x, index, rkey=rkey):
            return batch_fn(
                variables, deq_variables, rkey, shard_rows(x, mesh), shard_rows(index, mesh)
            )

        res = run_pass(fn, make_batches(), store, f'bpd_r{repeat}', progress, hook)
        res['repeat'] = np.full(len(res['index']), repeat, np.int64)
        parts.append(res)
    return concat_results(parts)


def evaluate_loss(
    batch_fn,
    params,
    batches: Iterable[Batch],
    *,
    base_key: Array,
    ckpt: int,
    store: ResultStore,
    num_examples: int = 0,
    hook: Optional[Hook] = None,
) -> Results:
    """Per-example training loss over the split (one pass)."""
    mesh = local_mesh()
    rkey = round_key(base_key, ckpt, 0)

    def fn(x, index):
        return batch_fn(params, rkey, shard_rows(x, mesh), shard_rows(index, mesh))

    return run_pass(
        fn, batches, store, 'loss', Progress(f'ckpt {ckpt} loss', num_examples, 'loss'), hook
    )


# --------------------------------------------------------------------------- pipeline
class Evaluator:
    """``--mode eval``: the phases of one checkpoint, resumable batch by batch.

    Args:
      config: the prepared config (``configs.validation.prepare_config``).
      workdir: the training work directory ``W`` (checkpoints in ``W/checkpoints``).
      eval_folder: results go to ``W/<eval_folder>``.
      hook: called as ``hook(tag, batch)`` after each newly saved batch (tests).
      deq_folder: the trained dequantizer ``W/<deq_folder>`` (``eval.dequantizer``).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        eval_folder: str = 'eval',
        hook: Optional[Hook] = None,
        deq_folder: str = dequantizer.DEQ_FOLDER,
    ):
        begin, end = int(config.eval.begin_ckpt), int(config.eval.end_ckpt)
        if begin > end:  # an empty range would end at once with nothing evaluated
            raise UserError(
                f'eval.begin_ckpt={begin} is after eval.end_ckpt={end}: no checkpoint to '
                f'evaluate; pass --config.eval.end_ckpt={begin} (or more).'
            )
        self.config = config
        self.workdir = workdir
        self.hook = hook
        self.host, self.num_hosts = jax.process_index(), jax.process_count()
        self.sde = sde_lib.get_sde(config)
        self.data = DataSpec.from_config(config)
        self.opts = LikelihoodOptions.from_config(config)
        self.eval_dir = os.path.join(workdir, eval_folder)
        self.deq_folder = deq_folder
        file_io.makedirs(self.eval_dir)
        self._deq_fn, self._deq_variables, deq_digest = self._dequantizer()
        extra = {'dequantizer_sha1': deq_digest} if deq_digest else {}
        self.meta = check_fingerprint(self.eval_dir, config, write=self.host == 0, extra=extra)
        if self._wants_sample_quality():  # missing Inception weights: fail before sampling
            evaluation.check_feature_net(workdir, config)
        self._model = None
        self._template = None
        self._fns: Dict[str, Any] = {}
        self._steps: Dict[int, int] = {}  # checkpoint -> its training step

    def _dequantizer(self) -> Tuple[Optional[Dequantizer], Any, str]:
        """The trained variational dequantizer (``eval.dequantizer``), else uniform noise;
        with its parameters' digest (retraining it invalidates old results)."""
        if not self.config.eval.dequantizer or self.data.num_bins is None:
            return None, None, ''
        return dequantizer.load_dequantizer(self.config, self.workdir, self.deq_folder)

    # --- model and checkpoints --------------------------------------------------------
    def score_builder(self, variables) -> ScoreFn:
        return mutils.get_score_fn(
            self.sde,
            self._model,
            variables,
            train=False,
            continuous=bool(self.config.training.continuous),
        )

    def load_variables(self, ckpt: int) -> Dict[str, Any]:
        """{'params': EMA parameters} of snapshot ``ckpt``, waiting up to
        ``eval.ckpt_timeout`` seconds for it to be written."""
        if self._model is None:  # the network and a template to restore into, built once
            self._model, _, self._template = create_train_state(self.config, local_mesh())
        state = checkpointing.restore_checkpoint(
            self.workdir, ckpt, self._template, float(self.config.eval.ckpt_timeout)
        )
        self._steps[ckpt] = int(state.step)
        logging.info('Restored checkpoint %d (step %d).', ckpt, self._steps[ckpt])
        return {'params': state.ema_params}

    # --- data -----------------------------------------------------------------------
    def _batches(self, split: str) -> Callable[[], Iterable[Batch]]:
        def make():
            return ((b.x, b.mask, b.index) for b in datasets.get_eval_iterator(self.config, split))

        return make

    def _save_meta(self) -> None:
        if self.host == 0:  # files shared by all hosts are written by host 0 only
            write_json(os.path.join(self.eval_dir, META_FILE), self.meta)

    def _update_metrics(self, ckpt: int, values: Mapping[str, Any]) -> Dict[str, Any]:
        if self.host != 0:
            return dict(values)
        return update_metrics(self.eval_dir, ckpt, values)

    def _report(self, ckpt: int) -> Dict[str, Any]:
        """Adds the checkpoint's training ``step`` to its metrics.json entry, writes the
        entry's metrics to TensorBoard (``eval/<name>`` at that step) and redraws
        ``metrics.png`` (:func:`pictures.plot_metrics`); host 0 only."""
        # Snapshot n is saved at step n · snapshot_freq (checkpointing); the restored
        # state's own step is used when this evaluator loaded it.
        step = self._steps.get(ckpt, ckpt * int(self.config.training.snapshot_freq))
        entry = self._update_metrics(ckpt, {'step': step})
        if self.host != 0:
            return entry
        # A writer per checkpoint, closed at once: tensorboardX's flush() does not drain
        # its queue, so a writer kept open could lose the last checkpoint's scalars.
        writer = file_io.summary_writer(os.path.join(self.eval_dir, 'tensorboard'))
        for key, se_key in pictures.PLOTTED_METRICS:
            for name in (key, se_key):
                if name and entry.get(name) is not None:
                    writer.add_scalar(f'eval/{name}', entry[name], step)
        writer.close()
        metrics = read_json(os.path.join(self.eval_dir, METRICS_FILE), {})
        pictures.plot_metrics(os.path.join(self.eval_dir, PLOT_FILE), metrics)
        return entry

    def _position(self, ckpt: int, phase: str) -> None:
        self.meta['position'] = {'ckpt': ckpt, 'phase': phase}
        self._save_meta()

    def _hook(self, ckpt: int) -> Hook:
        def hook(tag: str, batch: int) -> None:
            self.meta['position'] = {'ckpt': ckpt, 'phase': tag, 'batches_done': batch + 1}
            self._save_meta()
            if self.hook is not None:
                self.hook(tag, batch)

        return hook

    # --- phases ----------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Evaluates ``eval.begin_ckpt`` … ``eval.end_ckpt``; returns metrics.json's content."""
        e = self.config.eval
        for ckpt in range(int(e.begin_ckpt), int(e.end_ckpt) + 1):
            self.evaluate_checkpoint(ckpt)
        self.meta['position'] = {'ckpt': int(e.end_ckpt), 'phase': 'done'}
        self._save_meta()
        return read_json(os.path.join(self.eval_dir, METRICS_FILE), {})

    def evaluate_checkpoint(self, ckpt: int) -> Dict[str, Any]:
        e = self.config.eval
        store = ResultStore(os.path.join(self.eval_dir, f'ckpt_{ckpt}'), self.host)
        variables = self.load_variables(ckpt)
        entry: Dict[str, Any] = {}
        if e.enable_loss:
            entry = self._loss_phase(ckpt, variables, store)
        if self.opts.enabled:
            entry = self._likelihood_phase(ckpt, variables, store)
        if e.enable_sampling:
            entry = self._sampling_phase(ckpt, variables, store)
        entry = self._report(ckpt)
        logging.info('Checkpoint %d: %s', ckpt, json.dumps(entry, sort_keys=True))
        return entry

    def _gather_and_check(self, store, tag, own, split, repeats) -> Results:
        results = store.gather(tag, own, self.num_hosts, self._gather_timeout())
        check_complete(results, datasets.split_size(self.config, split), repeats, tag)
        return results

    def _gather_timeout(self) -> float:
        return max(600.0, float(self.config.eval.ckpt_timeout))

    def _loss_phase(self, ckpt, variables, store) -> Dict[str, Any]:
        if 'loss' not in self._fns:
            core = losses.get_core_loss_fn(self.sde, losses.LossOptions.from_config(self.config))
            self._fns['loss'] = get_loss_batch_fn(core, self.score_builder, self.data)
        self._position(ckpt, 'loss')
        start = time.time()
        own = evaluate_loss(
            self._fns['loss'],
            variables,
            self._batches('test')(),
            base_key=phase_key(self.config.seed, PHASE_LOSS),
            ckpt=ckpt,
            store=store,
            num_examples=datasets.split_size(self.config, 'test'),
            hook=self._hook(ckpt),
        )
        results = self._gather_and_check(store, 'loss', own, 'test', 1)
        logging.info(
            'ckpt %d: eval loss over %d test examples in %.1f s.',
            ckpt,
            len(results['index']),
            time.time() - start,
        )
        loss = float(np.mean(sorted_results(results)['loss'], dtype=np.float64))
        return self._update_metrics(ckpt, {'loss': loss})

    def _likelihood_phase(self, ckpt, variables, store) -> Dict[str, Any]:
        e = self.config.eval
        split = str(e.bpd_dataset).lower()
        if 'bpd' not in self._fns:
            self._fns['bpd'] = get_likelihood_batch_fn(
                self.sde, self.score_builder, self.data, self.opts, self._deq_fn
            )
        self._position(ckpt, 'bpd')
        start = time.time()
        own = evaluate_likelihood(
            self._fns['bpd'],
            variables,
            self._deq_variables,
            self._batches(split),
            base_key=phase_key(self.config.seed, PHASE_BPD),
            ckpt=ckpt,
            num_repeats=int(e.num_repeats),
            store=store,
            num_examples=datasets.split_size(self.config, split),
            hook=self._hook(ckpt),
            running_key='bpd' if self.opts.ode else 'bound_bpd',
        )
        results = self._gather_and_check(store, 'bpd', own, split, int(e.num_repeats))
        metrics = likelihood_metrics(results)
        logging.info(
            'ckpt %d: %s bits/dim over %d example evaluations in %.1f s: %s',
            ckpt,
            split,
            metrics['num_examples'],
            time.time() - start,
            metrics,
        )
        return self._update_metrics(ckpt, metrics)

    def _sampling_phase(self, ckpt, variables, store) -> Dict[str, Any]:
        e = self.config.eval
        host_batch = datasets.host_batch_size(int(e.batch_size), self.num_hosts, 'eval.batch_size')
        rounds = -(-int(e.num_samples) // int(e.batch_size))
        if 'sample' not in self._fns:
            fn = sampling.get_sampling_fn(
                self.config,
                self.sde,
                (host_batch,) + self.data.shape,
                datasets.get_data_inverse_scaler(self.config),
            )
            self._fns['sample'] = jax.jit(lambda v, rng: fn(rng, self.score_builder(v)))
        self._position(ckpt, 'samples')
        base = phase_key(self.config.seed, PHASE_SAMPLES)
        start, parts = time.time(), []
        for r in range(rounds):
            res = store.load('samples', r)
            if res is None:
                rng = jax.random.fold_in(round_key(base, ckpt, r), self.host)
                x, nfe = self._fns['sample'](variables, rng)
                res = {
                    'samples': self.data.quantize(jax.device_get(x)),
                    'nfe': np.asarray(np.max(jax.device_get(nfe)), np.int64),
                }
                store.save('samples', r, res)
                self._hook(ckpt)('samples', r)
                logging.info(
                    'ckpt %d: sampling round %d/%d, NFE %d, %.1f s elapsed.',
                    ckpt,
                    r + 1,
                    rounds,
                    int(res['nfe']),
                    time.time() - start,
                )
            parts.append(res['samples'])
        own = {
            'samples': np.concatenate(parts),
            'index': np.arange(rounds * host_batch) + self.host * rounds * host_batch,
        }
        samples = store.gather('samples', own, self.num_hosts, self._gather_timeout())['samples'][
            : int(e.num_samples)
        ]
        values: Dict[str, Any] = {'num_samples': len(samples)}
        if self.host == 0:
            self._save_grid(store.folder, samples)
            values.update(self._sample_quality(store.folder, samples))
        return self._update_metrics(ckpt, values)

    def _save_grid(self, folder: str, samples: np.ndarray) -> None:
        """``samples.png``: a grid of the first images, or a scatter of vector samples."""
        if self.data.num_bins is not None:
            samples = self.data.levels_to_unit(samples[:NUM_GRID_SAMPLES])
        picture = pictures.sample_picture(samples)
        if picture is None:
            logging.info('No picture of %d-dimensional vector samples.', samples.shape[-1])
            return
        path = os.path.join(folder, 'samples.png')
        pictures.save_png(path, picture)
        logging.info('Saved %s.', path)

    def _wants_sample_quality(self) -> bool:
        """Sampling with FID / IS / KID (``eval.sample_metrics``) of image samples."""
        e = self.config.eval
        return bool(e.enable_sampling and e.sample_metrics) and self.data.num_bins is not None

    def _sample_quality(self, folder: str, samples: np.ndarray) -> Dict[str, float]:
        """FID / IS / KID (DIGITS: the digits classifier), cached; {} if not wanted."""
        if not self._wants_sample_quality():
            logging.info('No FID/IS/KID: eval.sample_metrics=False or vector samples.')
            return {}
        path = os.path.join(folder, 'sample_quality.json')
        cached = read_json(path, None)
        if cached is not None and cached.get('num_samples') == len(samples):
            return cached['metrics']
        start = time.time()
        try:
            metrics = evaluation.sample_quality(
                self.data.levels_to_unit(samples), self.workdir, self.config
            )
        except UserError as err:
            logging.warning('Skipping FID/IS/KID: %s', err)
            return {}
        metrics = {k: float(v) for k, v in metrics.items()}
        logging.info(
            'Sample quality of %d samples in %.1f s: %s', len(samples), time.time() - start, metrics
        )
        write_json(path, {'num_samples': len(samples), 'metrics': metrics})
        return metrics


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    eval_folder: str = 'eval',
    hook: Optional[Hook] = None,
    deq_folder: str = dequantizer.DEQ_FOLDER,
) -> Dict[str, Any]:
    """``--mode eval`` on a prepared config: evaluates checkpoints eval.begin_ckpt …
    eval.end_ckpt of ``workdir`` (with ``eval.dequantizer``, the dequantizer trained in
    ``W/<deq_folder>``).

    Writes ``W/<eval_folder>/metrics.json`` (see the module docstring) and returns its
    content. Restarting after a preemption continues where it stopped.
    """
    return Evaluator(config, workdir, eval_folder, hook, deq_folder).run()
