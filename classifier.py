"""``--mode train_classifier``: the noise-conditional classifier p_t(y | x) of Score SDE §5.

Class-conditional sampling needs ∇_x log p_t(y | x) at every noise level
(∇log p_t(x | y) = ∇log p_t(x) + ∇log p_t(y | x)), so the classifier reads noisy data:

    t ~ the score model's time distribution (``training.eps``, likelihood / importance
        weighting of the objective: ``sde.sample_time_and_weight``; the weight is unused),
    x(t) = α(t) x(0) + σ(t) z,  z ~ N(0, I),   x(0) = the scaled training image,
    loss = − log softmax(f_φ(x(t), σ(t)))_y      (cross-entropy, mean over the batch),

with the network conditioned on σ(t), the standard deviation of p_0t (it embeds log σ,
as the original ``wideresnet_noise_conditional``). Images reach the network as
(x − μ_c)/s_c with the training images' per-channel mean and standard deviation in the
model's data space (:class:`StandardizedClassifier`), as score_sde's ``get_logit_fn``
normalises its classifier's input (CIFAR-10's constants there). Settings:
``config.classifier`` (network, ``n_iters``, ``batch_size``, ``lr``, ``warmup``,
``ema_rate``, ``snapshot_freq``, ``eval_freq``), the other optimizer settings of
``config.optim``, and ``config.training``'s ``n_jitted_steps``, ``log_freq`` and
``snapshot_freq_for_preemption``.

Training runs in :class:`trainer.TrainLoop` (resume after preemption, log lines with ETA,
TensorBoard, non-finite guard) in ``W/<classifier_folder>`` (default ``classifier``):
``checkpoints-meta/`` (resume; the newest is what ``--mode sample`` uses), ``checkpoints/``
(snapshot ``step // classifier.snapshot_freq``), ``tensorboard/`` and ``metrics.json``
(test accuracy of the EMA parameters on clean data, t = ε, and on noisy data,
t ~ U(ε, T) with fixed per-example noise, every ``classifier.eval_freq`` steps).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import checkpointing
import datasets
import file_io
import losses
import sde_lib
from devices import get_mesh, to_global
from errors import UserError
from models import utils as mutils
from train_state import (
    STREAM_CLASSIFIER,
    TrainState,
    get_optimizer,
    replicated_state,
    stream_key,
)
from trainer import TrainLoop, due

Array = jax.Array
CLASSIFIER_FOLDER = 'classifier'
METRICS_FILE = 'metrics.json'
# Sub-stream of the classifier's key for the test accuracy's noise (per example index).
_EVAL_NOISE_STREAM = 1


def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with the classifier's schedule in the fields the training loop, the
    optimizer and the data iterator read (training.n_iters, batch_size, snapshot_freq,
    eval_freq; optim.lr, warmup)."""
    run = config.copy_and_resolve_references()
    c = run.classifier
    run.training.update(
        n_iters=c.n_iters,
        batch_size=c.batch_size,
        snapshot_freq=c.snapshot_freq,
        eval_freq=c.eval_freq,
    )
    run.optim.update(lr=c.lr, warmup=c.warmup)
    return run


def check_labelled(config: ml_collections.ConfigDict) -> int:
    """The number of classes of the data; UserError for data without labels."""
    n = datasets.num_classes(config)
    if not n:
        raise UserError(
            'there is no classifier to train or condition on without class labels: '
            + datasets.no_labels_message(config)
        )
    return int(n)


@dataclasses.dataclass(frozen=True)
class StandardizedClassifier:
    """A classifier network that reads images standardised per channel:
    ``apply(variables, x, sigmas, **kw) = network.apply(variables, (x − mean)/std, sigmas,
    **kw)``, with the same parameters (so checkpoints and parameter trees are the
    network's). ``mean``, ``std``: C floats in the model's data space; None: x as it is."""

    network: nn.Module
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    def apply(self, variables: Dict[str, Any], x: Array, sigmas: Array, **kwargs) -> Array:
        if self.mean is not None:
            x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        return self.network.apply(variables, x, sigmas, **kwargs)


def standardized(config: ml_collections.ConfigDict, network: nn.Module) -> StandardizedClassifier:
    """``network`` reading images as (x − μ_c)/s_c, with μ_c, s_c the training images'
    per-channel mean and standard deviation (``datasets.channel_stats``, in [0, 1]) mapped
    to the model's data space by the data scaler a x + b: μ = a μ₀₁ + b, s = a s₀₁.
    Score SDE's ``get_logit_fn`` does this with CIFAR-10's constants on [0, 1] data.
    Vector data are read as they are."""
    if datasets.is_continuous(config):
        return StandardizedClassifier(network)
    mean, std = datasets.channel_stats(config)
    scaler = datasets.get_data_scaler(config)
    offset = scaler(np.zeros_like(mean))
    return StandardizedClassifier(
        network, tuple(map(float, scaler(mean))), tuple(map(float, scaler(std) - offset))
    )


def noisy_input(sde: sde_lib.SDE, rng: Array, x: Array, t: Array) -> Tuple[Array, Array]:
    """(x(t) ~ p_0t(· | x), σ(t)) for clean scaled data ``x`` and times ``t`` [B]."""
    mean, std = sde.marginal_prob(x, t)
    return mean + sde_lib.batch_mul(std, jax.random.normal(rng, x.shape, x.dtype)), std


def get_classifier_loss_fn(
    sde: sde_lib.SDE, model: StandardizedClassifier, options: losses.LossOptions
) -> Callable[[Any, Array, Tuple[Array, Array]], Tuple[Array, Array]]:
    """``loss(params, rng, (x, y)) -> (cross-entropy, accuracy)`` on noisy data, t drawn
    as the score model's objective ``options`` draws it."""

    def loss_fn(params, rng, batch):
        x, y = batch
        t_rng, z_rng = jax.random.split(rng)
        t, _ = sde.sample_time_and_weight(t_rng, (x.shape[0],), options.weighting, options.eps)
        xt, std = noisy_input(sde, z_rng, x, t)
        logits = model.apply({'params': params}, xt, std, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    return loss_fn


def get_classifier_step_fn(loss_fn, optimizer: optax.GradientTransformation, ema_rate: float):
    """``step(state, (x, y)) -> (state, metrics)``: one guarded optimizer + EMA update."""

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, rng, batch)
        return losses.guarded_update(state, loss, grads, optimizer, ema_rate)

    return step


def get_logp_grad_fn(
    sde: sde_lib.SDE, model: StandardizedClassifier, variables: Dict[str, Any]
) -> Callable[[Array, Array, Array], Array]:
    """``grad(x, t, y) = ∇_x log p_t(y | x)`` of a trained classifier (σ(t) = ``sde.std``),
    for :func:`sampling.conditional_score_fn`."""

    def log_prob(x, t, y):
        logits = model.apply(variables, x, sde.std(t), train=False)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))

    return jax.grad(log_prob)


def initial_state(
    config: ml_collections.ConfigDict, mesh
) -> Tuple[StandardizedClassifier, optax.GradientTransformation, TrainState]:
    """(classifier, optimizer, state at step 0) of the classifier of a prepared ``config``
    (its network behind :func:`standardized`)."""
    num_classes = check_labelled(config)
    run = run_config(config)
    optimizer = get_optimizer(run)
    key = stream_key(config.seed, STREAM_CLASSIFIER)
    init_key, train_key = jax.random.split(key)
    shape = (1,) + datasets.data_shape(config)
    network, variables = mutils.init_classifier(init_key, config, num_classes, shape)
    state = replicated_state(train_key, variables['params'], optimizer, mesh)
    return standardized(config, network), optimizer, state


class ClassifierTrainer(TrainLoop):
    """``classifier.n_iters`` steps of the noise-conditional classifier in ``folder``."""

    loss_name = 'cross-entropy'

    def __init__(self, config: ml_collections.ConfigDict, folder: str):
        self.sde = sde_lib.get_sde(config)
        self.scaler = datasets.get_data_scaler(config)
        self.model, optimizer, state = initial_state(config, get_mesh())
        self.options = losses.LossOptions.from_config(config)
        self.loss_fn = get_classifier_loss_fn(self.sde, self.model, self.options)
        step = get_classifier_step_fn(self.loss_fn, optimizer, float(config.classifier.ema_rate))
        run = run_config(config)
        super().__init__(run, folder, state, step, self._prepare, run.training.n_iters)
        self._accuracy_fn = None

    def _prepare(self, batch):
        x, y = batch
        return self.scaler(x), y

    def batches(self, start_step: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        return datasets.get_train_iterator(self.config, start_step, with_labels=True)

    def describe(self, step: int) -> str:
        c = self.config.classifier
        return (
            f'classifier {c.name} on {self.config.data.dataset} '
            f'({datasets.num_classes(self.config)} classes, '
            f'{mutils.param_count(self.state.params)} parameters), noisy inputs of the '
            f'{self.config.training.sde} SDE, batch {self.config.training.batch_size}, '
            f'steps {step} -> {self.n_iters}'
        )

    def _periodic_work(self, step: int, sums: Dict[str, Array]) -> bool:
        t = self.config.training
        eval_due, snapshot_due = due(step, t.eval_freq), due(step, t.snapshot_freq)
        if eval_due or step == self.n_iters:
            self._evaluate(step)
        saved = super()._periodic_work(step, sums)
        if snapshot_due:
            self._check_finite(sums)
            checkpointing.save_snapshot(self.folder, step // t.snapshot_freq, self.state)
        return eval_due or saved or snapshot_due

    # --- test accuracy ----------------------------------------------------------------------
    def _evaluate(self, step: int) -> None:
        """Accuracy of the EMA classifier on the test split, clean (t = ε) and noisy."""
        correct = np.zeros(2)
        total = 0
        fn = self._accuracy()
        for batch in datasets.get_eval_iterator(self.config, 'test'):
            arrays = (batch.x, batch.labels, batch.mask, batch.index)
            x, y, mask, index = (to_global(a, self.mesh, P('data')) for a in arrays)
            c, n = fn(self.state.ema_params, x, y, mask, index)
            correct += np.asarray(jax.device_get(c))
            total += int(jax.device_get(n))
        clean, noisy = correct / max(total, 1)
        logging.info(
            'step %d  test accuracy (EMA): clean %.4f, noisy %.4f (%d examples)',
            step,
            clean,
            noisy,
            total,
        )
        values = {'eval/accuracy_clean': float(clean), 'eval/accuracy_noisy': float(noisy)}
        self.history.append({'step': step, **values})
        self._scalars(step, values)
        if self.is_main:
            path = os.path.join(self.folder, METRICS_FILE)
            metrics = file_io.read_json(path, {})
            metrics[str(step)] = {
                'accuracy_clean': float(clean),
                'accuracy_noisy': float(noisy),
                'num_examples': total,
            }
            file_io.write_json(path, metrics)

    def _accuracy(self):
        """jit ``(params, levels, y, mask, index) -> ([clean, noisy] correct, count)``."""
        if self._accuracy_fn is None:
            num_bins = self.config.data.num_bins
            continuous = datasets.is_continuous(self.config)
            key = stream_key(self.config.seed, STREAM_CLASSIFIER)
            key = jax.random.fold_in(key, _EVAL_NOISE_STREAM)
            eps = float(self.options.eps)

            def fn(params, x, y, mask, index):
                x = x if continuous else x.astype(jnp.float32) / (num_bins - 1)
                x = self.scaler(x)
                keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
                t_noisy = jax.vmap(
                    lambda k: jax.random.uniform(k, (), minval=eps, maxval=self.sde.T)
                )(keys)
                correct = []
                for i, t in enumerate((jnp.full(x.shape[:1], eps), t_noisy)):
                    z = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(  # noqa: B023
                        jax.vmap(lambda k: jax.random.fold_in(k, 1 + i))(keys)  # noqa: B023
                    )
                    mean, std = self.sde.marginal_prob(x, t)
                    xt = mean + sde_lib.batch_mul(std, z)
                    logits = self.model.apply({'params': params}, xt, std, train=False)
                    correct.append(jnp.sum((jnp.argmax(logits, -1) == y) & mask))
                return jnp.stack(correct), jnp.sum(mask)

            self._accuracy_fn = jax.jit(fn, out_shardings=NamedSharding(self.mesh, P()))
        return self._accuracy_fn


def train_classifier(
    config: ml_collections.ConfigDict, workdir: str, folder: str = CLASSIFIER_FOLDER
) -> Dict[str, Any]:
    """Trains (or resumes) the classifier of a prepared ``config`` in ``W/<folder>``;
    returns {'step', 'accuracy_clean', 'accuracy_noisy'} of the last evaluation."""
    check_labelled(config)
    trainer = ClassifierTrainer(config, os.path.join(workdir, folder))
    state = trainer.run()
    evaluated = [h for h in trainer.history if 'eval/accuracy_clean' in h]
    result: Dict[str, Any] = {'step': int(jax.device_get(state.step))}
    if evaluated:
        result.update(
            accuracy_clean=evaluated[-1]['eval/accuracy_clean'],
            accuracy_noisy=evaluated[-1]['eval/accuracy_noisy'],
        )
    return result


def load_classifier(
    config: ml_collections.ConfigDict, workdir: str, folder: str = CLASSIFIER_FOLDER
) -> Tuple[StandardizedClassifier, Dict[str, Any], int]:
    """(classifier, {'params': EMA parameters}, step) of the newest classifier checkpoint in
    ``W/<folder>``; UserError (saying how to train it) when there is none."""
    path = os.path.join(workdir, folder)
    model, _, template = initial_state(config, get_mesh())
    state = checkpointing.restore_latest_preemption(path, template)
    if state is None:
        raise UserError(
            f'class-conditional sampling needs a trained classifier, and {path} holds none; '
            f'train it first: python main.py --config <this config> --workdir {workdir} '
            f'--mode train_classifier'
            + ('' if folder == CLASSIFIER_FOLDER else f' --classifier_folder={folder}')
        )
    step = int(jax.device_get(state.step))
    if step < int(config.classifier.n_iters):
        logging.warning(
            'The classifier in %s is at step %d of classifier.n_iters=%d (unfinished).',
            path,
            step,
            int(config.classifier.n_iters),
        )
    return model, {'params': state.ema_params}, step
