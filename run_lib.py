"""The entry points of ``main.py``, one per ``--mode``: ``train``, ``evaluate``, ``train_deq``,
``train_classifier``, ``sample``, ``import_checkpoint`` (``--mode import``).

Each prepares the config once (``validation.prepare_config``: validated against
the schema and the registries, resolved from the data) and hands it to the module that
does the work:

    main.py → run_lib → trainer (--mode train), eval_runner (--mode eval),
                        dequantizer (--mode train_deq),
                        classifier (--mode train_classifier), sample_runner and
                        encoding (--mode sample),
                        original_checkpoint (--mode import)

A bad config stops with one :class:`errors.UserError` before any work starts.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import jax
import ml_collections

import classifier
import dequantizer
import encoding
import eval_runner
import eval_store
import file_io
import original_checkpoint
import sample_runner
import sampling
from errors import UserError
from train_state import TrainState
from trainer import Trainer, record_objective_change
from validation import prepare_config


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes ``config`` as JSON to ``path`` atomically (process 0 only)."""
    if jax.process_index() == 0:
        text = config.to_json_best_effort(indent=2, sort_keys=True)
        file_io.atomic_write(path, (text + '\n').encode())


def check_parameterization(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Stops if ``W/config.json`` says the run's network outputs another quantity
    (``model.parameterization``) than ``config``: its weights would be read as something
    they are not, silently."""
    previous = file_io.read_json(os.path.join(workdir, 'config.json'), None)
    if previous is None:
        return
    saved = previous.get('model', {}).get('parameterization', 'score')
    if saved != config.model.parameterization:
        raise UserError(
            f'{workdir} holds a network trained with model.parameterization={saved!r}, not '
            f'{config.model.parameterization!r}; pass --config.model.parameterization={saved} '
            'or use another --workdir.'
        )


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """``--mode train``: trains (or resumes training of) ``config`` in ``workdir``; writes
    the resolved config to ``W/config.json`` (with ``training.objective_changes``: a resume
    with another objective is fine-tuning, recorded with its step) once the newest
    checkpoint was restored with it (a config that does not fit stops before, leaving the
    run's own); returns the final train state."""
    config = prepare_config(config)
    check_parameterization(config, workdir)
    config = record_objective_change(config, workdir)
    trainer = Trainer(config, workdir)  # restores first: a config that does not fit the
    save_config(config, os.path.join(workdir, 'config.json'))  # run keeps W/config.json
    return trainer.run()


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    eval_folder: str = 'eval',
    deq_folder: str = dequantizer.DEQ_FOLDER,
) -> Dict[str, Any]:
    """``--mode eval``: evaluates snapshots eval.begin_ckpt … eval.end_ckpt of ``workdir``
    (−1: the newest); writes ``W/<eval_folder>/config.json`` and ``metrics.json``, returns
    the latter's content. A restarted evaluation continues where it stopped; a start that
    fails (e.g. a missing snapshot) writes nothing."""
    config = prepare_config(config)
    check_parameterization(config, workdir)
    evaluator = eval_runner.Evaluator(config, workdir, eval_folder, deq_folder=deq_folder)
    save_config(config, os.path.join(workdir, eval_folder, 'config.json'))
    return evaluator.run()


def train_deq(
    config: ml_collections.ConfigDict, workdir: str, deq_folder: str = dequantizer.DEQ_FOLDER
) -> Dict[str, float]:
    """``--mode train_deq``: trains the variational dequantizer of ScoreFlow against
    snapshot ``eval.end_ckpt`` into ``W/<deq_folder>`` (resumable); writes the resolved
    config to ``W/<deq_folder>/config.json``."""
    config = prepare_config(config)
    check_parameterization(config, workdir)
    save_config(config, os.path.join(workdir, deq_folder, 'config.json'))
    return dequantizer.train_deq(config, workdir, deq_folder)


def train_classifier(
    config: ml_collections.ConfigDict, workdir: str, folder: str = classifier.CLASSIFIER_FOLDER
) -> Dict[str, Any]:
    """``--mode train_classifier``: trains (or resumes) the noise-conditional classifier
    p_t(y | x) of class-conditional sampling into ``W/<folder>``; writes the resolved config
    to ``W/<folder>/config.json``."""
    config = prepare_config(config)
    save_config(config, os.path.join(workdir, folder, 'config.json'))
    return classifier.train_classifier(config, workdir, folder)


def sample(
    config: ml_collections.ConfigDict,
    workdir: str,
    folder: str = sample_runner.SAMPLE_FOLDER,
    classifier_folder: str = classifier.CLASSIFIER_FOLDER,
) -> Dict[str, Any]:
    """``--mode sample``: ``sampling.task`` from snapshot ``eval.end_ckpt`` (−1: the newest) into
    ``W/<folder>`` (PNG grid, NPZ, metrics.json); resumable. Bad input stops before
    anything is written."""
    config = prepare_config(config)
    for run in (workdir, config.sampling.reference_workdir):  # the reference: same network
        if run:
            check_parameterization(config, run)
    encoder = config.sampling.task in sampling.ENCODER_TASKS
    runner_cls = encoding.EncodingRunner if encoder else sample_runner.SampleRunner
    runner = runner_cls(config, workdir, folder, classifier_folder)
    save_config(config, os.path.join(workdir, folder, f'config_{config.sampling.task}.json'))
    return runner.run()


def import_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    path: str,
    number: int = -1,
    deq_folder: str = dequantizer.DEQ_FOLDER,
) -> TrainState:
    """``--mode import``: writes the original score_sde / score_flow checkpoint ``path``
    (``checkpoint_<n>``) into ``workdir``: a score model as snapshot ``number`` (-1: n), for
    ``--mode eval``, ``--mode sample`` and fine-tuning (``--mode train``); score_flow's
    Flow++ dequantizer into ``W/<deq_folder>``. Writes ``W/config.json``."""
    config = prepare_config(config)
    if config.model.parameterization != 'score':
        raise UserError(
            "The original checkpoints' networks predict the noise (or the score), not "
            f'{config.model.parameterization!r}; import without '
            '--config.model.parameterization (its default is score).'
        )
    save_config(config, os.path.join(workdir, 'config.json'))
    return original_checkpoint.import_checkpoint(config, workdir, path, number, deq_folder)


def read_metrics(workdir: str, eval_folder: str = 'eval') -> Dict[str, Any]:
    """The ``metrics.json`` written by ``--mode eval`` ({} if there is none yet)."""
    return eval_store.read_metrics(os.path.join(workdir, eval_folder))
