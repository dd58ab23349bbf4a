"""``--mode eval``: the registered evaluation quantities of each checkpoint.

``evaluate(config, workdir, eval_folder)`` evaluates the checkpoints ``eval.begin_ckpt`` …
``eval.end_ckpt`` of ``W/checkpoints`` (−1: the newest snapshot; ``begin_ckpt`` −1: only
``end_ckpt``; waiting up to ``eval.ckpt_timeout`` seconds for one not yet written) with
their EMA parameters; a missing snapshot stops the run before anything is written. What
is measured is the enabled quantities of :mod:`eval_quantities`, in their registration
order — the eval loss (``eval.enable_loss``), the probability-flow ODE's bits/dim
(``eval.enable_bpd``), the ScoreFlow bound (``eval.bound``), samples and their quality
(``eval.enable_sampling``) — and whatever else a run registers. It writes, under
``W/<eval_folder>/``:

* ``metrics.json`` — one entry per checkpoint number (a string) with the scalars of
  the CLI contract (README, Usage): ``loss``, ``bpd``, ``bpd_stderr``, ``nll``,
  ``nfe_mean``, ``bound_bpd``, ``bound_stderr``, ``bound_nll``, ``num_examples``,
  ``num_images``, ``num_repeats``, ``fid``, ``is``, ``kid``, ``num_samples`` (only what
  was computed), and ``step``, the checkpoint's training step. Written atomically (tmp
  file + ``os.replace``) after every quantity.
* ``metrics.png`` — the plotted metrics over training steps (redrawn after each
  checkpoint) and ``tensorboard/`` — the same scalars as ``eval/<name>`` at each
  checkpoint's step.
* ``ckpt_<n>/*.npz`` — per-batch, per-example results (no pickle) and the samples;
  ``ckpt_<n>/samples.png`` — a grid of the first samples.
* ``eval_meta.json`` — the evaluation meta-checkpoint: the settings the per-batch files
  depend on and the position reached. A preempted evaluation restarted with the same
  command skips every batch whose file exists and recomputes the rest on the same
  examples with the same random numbers, so its ``metrics.json`` equals that of an
  uninterrupted run (the per-batch files and their bookkeeping: ``eval_store``).

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
results do not depend on the batch size, the number of devices or on a restart
(:mod:`eval_quantities`, Randomness).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
from absl import logging

import checkpointing
import dequantizer
import eval_quantities
import file_io
import pictures
import sde_lib
from datasets import DataSpec
from devices import local_mesh
from errors import UserError
from eval_quantities import Dequantizer, EvalContext, ScoreFn
from eval_store import (
    META_FILE,
    Hook,
    ResultStore,
    check_fingerprint,
    read_metrics,
    update_metrics,
)
from file_io import write_json
from models import utils as mutils
from train_state import create_train_state

PLOT_FILE = 'metrics.png'  # metrics.json over checkpoints


class Evaluator:
    """``--mode eval``: the enabled quantities of each checkpoint, resumable batch by batch.

    Args:
      config: the prepared config (``validation.prepare_config``).
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
        # Everything that can fail at the start does before anything is written.
        self.config = config
        self.workdir = workdir
        self.hook = hook
        self.host, self.num_hosts = jax.process_index(), jax.process_count()
        self.sde = sde_lib.get_sde(config)
        self.data = DataSpec.from_config(config)
        self.quantities = eval_quantities.enabled_quantities(config)
        self.eval_dir = os.path.join(workdir, eval_folder)
        self.deq_folder = deq_folder
        deq_fn, deq_variables, deq_digest = self._dequantizer()
        self.ctx = EvalContext(
            config=config,
            workdir=workdir,
            sde=self.sde,
            data=self.data,
            score_builder=self.score_builder,
            dequantizer=deq_fn,
            deq_variables=deq_variables,
            hook=self._hook,
            host=self.host,
            num_hosts=self.num_hosts,
        )
        self.begin, self.end = self.checkpoint_range()
        if self.begin > self.end:  # an empty range would end at once with nothing evaluated
            raise UserError(
                f'eval.begin_ckpt={self.begin} is after eval.end_ckpt={self.end}: no '
                f'checkpoint to evaluate; pass --config.eval.end_ckpt={self.begin} (or more), '
                'or -1 for the newest.'
            )
        for quantity in self.quantities:  # e.g. missing Inception weights: fail now
            quantity.check(self.ctx)
        file_io.makedirs(self.eval_dir)
        extra = {'dequantizer_sha1': deq_digest} if deq_digest else {}
        self.meta = check_fingerprint(
            self.eval_dir,
            config,
            eval_quantities.fingerprint_fields(),
            write=self.host == 0,
            extra=extra,
        )
        logging.info(
            'Evaluating snapshots %d … %d of %s into %s.',
            self.begin,
            self.end,
            checkpointing.snapshot_dir(workdir),
            self.eval_dir,
        )
        self._model = None
        self._template = None
        self._steps: Dict[int, int] = {}  # checkpoint -> its training step

    def _dequantizer(self) -> Tuple[Optional[Dequantizer], Any, str]:
        """The trained variational dequantizer (``eval.dequantizer``), else uniform noise;
        with its parameters' digest (retraining it invalidates old results)."""
        if not self.config.eval.dequantizer or self.data.num_bins is None:
            return None, None, ''
        return dequantizer.load_dequantizer(self.config, self.workdir, self.deq_folder)

    # --- model and checkpoints --------------------------------------------------------
    def checkpoint_range(self) -> Tuple[int, int]:
        """(first, last) snapshot to evaluate (module function :func:`checkpoint_range`)."""
        return checkpoint_range(self.config, self.workdir)

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

    # --- bookkeeping ------------------------------------------------------------------
    def _save_meta(self) -> None:
        if self.host == 0:  # files shared by all hosts are written by host 0 only
            write_json(os.path.join(self.eval_dir, META_FILE), self.meta)

    def _update_metrics(self, ckpt: int, values: Mapping[str, Any]) -> Dict[str, Any]:
        if self.host != 0:
            return dict(values)
        return update_metrics(self.eval_dir, ckpt, values)

    def _report(self, ckpt: int) -> Dict[str, Any]:
        """Adds the checkpoint's training ``step`` to its metrics.json entry, writes the
        entry's plotted metrics (``eval_quantities.plotted_metrics``) to TensorBoard
        (``eval/<name>`` at that step) and redraws ``metrics.png``
        (:func:`pictures.plot_metrics`); host 0 only."""
        # Snapshot n is saved at step n · snapshot_freq (checkpointing); the restored
        # state's own step is used when this evaluator loaded it.
        step = self._steps.get(ckpt, ckpt * int(self.config.training.snapshot_freq))
        entry = self._update_metrics(ckpt, {'step': step})
        if self.host != 0:
            return entry
        plotted = eval_quantities.plotted_metrics()
        # A writer per checkpoint, closed at once: tensorboardX's flush() does not drain
        # its queue, so a writer kept open could lose the last checkpoint's scalars.
        writer = file_io.summary_writer(os.path.join(self.eval_dir, 'tensorboard'))
        for key, se_key in plotted:
            for name in (key, se_key):
                if name and entry.get(name) is not None:
                    writer.add_scalar(f'eval/{name}', entry[name], step)
        writer.close()
        metrics = read_metrics(self.eval_dir)
        pictures.plot_metrics(os.path.join(self.eval_dir, PLOT_FILE), metrics, plotted)
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

    # --- checkpoints ------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Evaluates the snapshots of :func:`checkpoint_range`; returns metrics.json's content."""
        for ckpt in range(self.begin, self.end + 1):
            self.evaluate_checkpoint(ckpt)
        self.meta['position'] = {'ckpt': self.end, 'phase': 'done'}
        self._save_meta()
        return read_metrics(self.eval_dir)

    def evaluate_checkpoint(self, ckpt: int) -> Dict[str, Any]:
        """Every enabled quantity of snapshot ``ckpt``, its metrics.json entry updated after
        each; returns the entry."""
        store = ResultStore(os.path.join(self.eval_dir, f'ckpt_{ckpt}'), self.host)
        variables = self.load_variables(ckpt)
        for quantity in self.quantities:
            self._position(ckpt, quantity.name)
            self._update_metrics(ckpt, quantity.compute(self.ctx, ckpt, variables, store))
        entry = self._report(ckpt)
        logging.info('Checkpoint %d: %s', ckpt, json.dumps(entry, sort_keys=True))
        return entry


def checkpoint_range(config: ml_collections.ConfigDict, workdir: str) -> Tuple[int, int]:
    """(first, last) snapshot to evaluate: ``eval.end_ckpt`` (−1: the newest snapshot now)
    and ``eval.begin_ckpt`` (−1: the same as the last). Without ``eval.ckpt_timeout`` every
    one of them must exist already: UserError otherwise."""
    e = config.eval
    end = checkpointing.resolve_snapshot(workdir, int(e.end_ckpt))
    begin = end if int(e.begin_ckpt) < 0 else int(e.begin_ckpt)
    if float(e.ckpt_timeout) <= 0:  # nothing will be waited for
        checkpointing.require_snapshots(workdir, range(begin, end + 1))
    return begin, end


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
