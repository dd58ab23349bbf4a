"""``--mode sample``: samples of a trained score model, unconditional or controlled.

Score SDE §5: one unconditional score model s_θ(x, t) ≈ ∇log p_t(x) becomes

* ``class_conditional`` — ∇log p_t(x | y) = ∇log p_t(x) + s·∇log p_t(y | x) with the
  noise-conditional classifier of ``--mode train_classifier`` (s =
  ``sampling.classifier_scale``: 1 is the exact conditional, s > 1 classifier guidance),
  through the sampler of ``sampling.guided_method`` (PC by default: the classifier's
  gradient makes the probability-flow ODE stiff), ``sampling.num_samples`` per class of
  ``sampling.classes`` (() = every class);
* ``inpaint`` — PC sampling of the unknown pixels (``sampling.mask``: :data:`MASKS`,
  ``random_pixels:<fraction>`` or a ``.npy`` file of 0/1, 1 = known) of the first
  ``sampling.num_samples`` test images, the known pixels kept exactly;
* ``colorize`` — PC sampling of the chroma of greyscale test images, the grey level
  ⟨x, (1,1,1)⟩/√3 kept exactly;
* ``unconditional`` — ``sampling.num_samples`` samples, as eval's sampling phase.

Inpainting and colorization use the PC projector of ``sampling`` with
``sampling.predictor`` / ``corrector`` / ``snr`` / ``n_steps_each`` and
``sampling.inpaint_resample`` RePaint rounds per step (1 = the original replacement
method; docs/controllable.md measures how exact each is), or, when ``sampling.method`` is a
fast solver (``dpm_solver``, ``ddim``, ``heun``), that solver with the same replacement
(``sampling.get_inpainting_fn`` / ``get_colorizing_fn``).

The score model is snapshot ``eval.end_ckpt`` of ``W/checkpoints`` (−1: the newest), with
its EMA parameters. Output in ``W/<sample_folder>/`` (default ``sample``):

* ``<task>.npz`` — ``samples`` (float32 in [0, 1]), ``levels`` (images: the quantized
  samples), ``labels`` (class-conditional), ``originals`` / ``inputs`` / ``mask``
  (inpainting, colorization);
* ``<task>.png`` — a grid: one row per class (class-conditional); rows of (original,
  masked or grey input, result) triples (inpainting, colorization); samples otherwise;
* ``metrics.json`` — one entry per task (below), also printed;
* ``<task>/`` — the per-round files: a run killed midway resumes where it stopped
  (same config required, checked with a fingerprint).

Metrics. A *judge* classifier on clean images: the data's feature network when it
classifies their labels (``evaluation.label_judge``; DIGITS: the independent digits
classifier of ``digits_classifier``); otherwise the trained noise-conditional classifier
at t = ε when there is one (then not independent of the sampler, said in ``judge``).
Class-conditional: the fraction of samples the judge assigns to the requested class, per
class and overall. Inpainting: the judge's accuracy on the inpainted images, on the
originals and on a naive fill (the masked pixels set to the training mean), and the mean
squared error over the masked pixels (result and naive fill, images in [0, 1]).
Colorization: the largest change of the grey level (must be ~0) and the chroma mean
squared error against the originals, of the result and of a mean-chroma baseline.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import checkpointing
import classifier as classifier_lib
import datasets
import digits_classifier  # noqa: F401  (registers the feature network 'digits_mlp')
import evaluation
import file_io
import pictures
import sampling
import sde_lib
from datasets import DataSpec
from devices import get_mesh
from errors import UserError
from eval_store import Progress, ResultStore, check_fingerprint, read_json_or_set_aside
from file_io import save_npz, write_json
from models import utils as mutils
from train_state import STREAM_SAMPLE, create_train_state, stream_key

Array = jax.Array
MASKS = ('bottom_half', 'right_half', 'center')
# Tasks whose score carries a classifier's gradient: sampled by `sampling.guided_method`.
GUIDED_TASKS = ('class_conditional',)
RANDOM_PIXELS = 'random_pixels:'
SAMPLE_FOLDER = 'sample'
METRICS_FILE = 'metrics.json'
GRID_ROWS = 10  # rows of a picture (classes, or image triples)
GRID_COLS = 10  # samples per class in a class-conditional picture
_TASK_STREAM = {task: i for i, task in enumerate(sampling.SAMPLING_TASKS)}
# Config fields that a task's stored rounds depend on (a restart with one changed is refused).
FINGERPRINT_FIELDS = (
    'seed',
    'data',
    'model',
    'training.sde',
    'training.continuous',
    'sampling',
    'eval.batch_size',
)


# --------------------------------------------------------------------------- inputs
def parse_mask(spec: str, shape: Tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The 0/1 mask (1 = known) of ``sampling.mask`` for examples of ``shape``.

    Images [H, W, C]: ``bottom_half`` / ``right_half`` (that half unknown), ``center`` (the
    central H/2 × W/2 square unknown); any data: ``random_pixels:<p>`` (a fraction p of the
    pixels, all channels, unknown; fixed by ``seed``) or a ``.npy`` file broadcastable to
    ``shape``.
    """
    if spec in MASKS:
        if len(shape) != 3:
            raise UserError(
                f'config.sampling.mask={spec!r} is for images, but the data are vectors of '
                f'shape {shape}; use random_pixels:<fraction> or a .npy mask file'
            )
        h, w, c = shape
        mask = np.ones((h, w, 1), np.float32)
        if spec == 'bottom_half':
            mask[h // 2 :] = 0
        elif spec == 'right_half':
            mask[:, w // 2 :] = 0
        else:
            mask[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 0
        return np.broadcast_to(mask, shape).copy()
    if spec.startswith(RANDOM_PIXELS):
        return _random_pixels(spec, shape, seed)
    return _mask_file(spec, shape)


def _random_pixels(spec: str, shape: Tuple[int, ...], seed: int) -> np.ndarray:
    try:
        fraction = float(spec[len(RANDOM_PIXELS) :])
    except ValueError:
        fraction = -1.0
    if not 0.0 < fraction < 1.0:
        raise UserError(
            f'config.sampling.mask={spec!r}: the fraction of unknown pixels must be a number '
            'strictly between 0 and 1, e.g. random_pixels:0.5'
        )
    pixels = shape[:-1] if len(shape) == 3 else shape
    unknown = np.random.default_rng(seed).random(pixels) < fraction
    mask = (~unknown).astype(np.float32)
    return np.broadcast_to(mask[..., None] if len(shape) == 3 else mask, shape).copy()


def _mask_file(path: str, shape: Tuple[int, ...]) -> np.ndarray:
    if not path.endswith('.npy') or not file_io.isfile(path):
        raise UserError(
            f'config.sampling.mask={path!r} is none of {", ".join(MASKS)}, '
            f'{RANDOM_PIXELS}<fraction>, or an existing .npy file of 0/1 (1 = known)'
        )
    mask = file_io.np_load(path).astype(np.float32)
    try:
        mask = np.broadcast_to(mask, shape).copy()
    except ValueError:
        raise UserError(
            f'the mask {path} has shape {mask.shape}, which does not match the data shape '
            f'{shape}; save a 0/1 array of shape {shape} (or broadcastable to it)'
        ) from None
    if not np.all((mask == 0) | (mask == 1)):
        raise UserError(f'the mask {path} must hold only 0 (unknown) and 1 (known)')
    return mask


def requested_classes(config: ml_collections.ConfigDict, num_classes: int) -> Tuple[int, ...]:
    """``sampling.classes`` (() = all), each checked against the data's labels."""
    classes = tuple(int(c) for c in config.sampling.classes) or tuple(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(
            f'config.sampling.classes contains {bad[0]}, but {config.data.dataset} has '
            f'classes 0 … {num_classes - 1}; pick class ids in that range'
        )
    return classes


def check_task(config: ml_collections.ConfigDict) -> None:
    """Stops with one line on a task the data cannot support, before any work."""
    s, shape = config.sampling, datasets.data_shape(config)
    if s.task == 'class_conditional':
        requested_classes(config, classifier_lib.check_labelled(config))
    elif s.task == 'inpaint':
        parse_mask(s.mask, shape, config.seed)
    elif s.task == 'colorize' and (len(shape) != 3 or shape[-1] != 3):
        raise UserError(
            f'colorization needs colour images [H, W, 3]; {config.data.dataset} examples have '
            f'shape {shape}; use a colour dataset (e.g. PHOTOS, CIFAR10)'
        )


def sampler_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config the sampler of ``sampling.task`` reads: for a guided task
    (:data:`GUIDED_TASKS`) ``sampling.method`` is ``sampling.guided_method``."""
    s = config.sampling
    if s.task not in GUIDED_TASKS or s.guided_method == s.method:
        return config
    logging.info(
        '%s: sampling.guided_method=%r (sampling.method=%r is for unguided sampling).',
        s.task,
        s.guided_method,
        s.method,
    )
    config = config.copy_and_resolve_references()
    config.sampling.method = config.sampling.guided_method
    return config


# --------------------------------------------------------------------------- runner
class SampleRunner:
    """Everything ``--mode sample`` needs for one prepared config (see module docstring)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        folder: str = SAMPLE_FOLDER,
        classifier_folder: str = classifier_lib.CLASSIFIER_FOLDER,
    ):
        check_task(config)
        self.config, self.workdir = config, workdir
        self.task = config.sampling.task
        self.folder = os.path.join(workdir, folder)
        self.classifier_folder = classifier_folder
        self.sde = sde_lib.get_sde(config)
        self.data = DataSpec.from_config(config)
        self.host, self.num_hosts = jax.process_index(), jax.process_count()
        self.classifier = None
        if self.task == 'class_conditional':
            self.classifier = classifier_lib.load_classifier(config, workdir, classifier_folder)
        self.ckpt = self._snapshot_number()
        self.model, self.variables = self._score_model()
        self.num: Optional[int] = None  # examples asked for (set by run)

    def _snapshot_number(self) -> int:
        """Snapshot ``eval.end_ckpt`` (−1: the newest), which must exist."""
        return checkpointing.resolve_snapshot(self.workdir, int(self.config.eval.end_ckpt))

    def _score_model(self):
        return restore_score_model(self.config, self.workdir, self.ckpt)

    def score_fn(self, variables):
        return mutils.get_score_fn(
            self.sde,
            self.model,
            variables,
            train=False,
            continuous=bool(self.config.training.continuous),
        )

    # --- what is sampled --------------------------------------------------------------
    def conditions(self) -> Dict[str, np.ndarray]:
        """Per-example inputs of the task: labels, or test images (levels) and the mask."""
        s = self.config.sampling
        n = int(s.num_samples)
        if self.task == 'class_conditional':
            classes = requested_classes(self.config, datasets.num_classes(self.config))
            return {'labels': np.repeat(np.asarray(classes, np.int32), n)}
        if self.task in ('inpaint', 'colorize'):
            test = datasets.get_shard(self.config, 'test', process_index=0, process_count=1)
            if len(test) < n:
                logging.info('The test split has %d examples; using all of them.', len(test))
            out = {'originals': np.asarray(test.data[:n])}
            if test.labels is not None:
                out['labels'] = np.asarray(test.labels[:n], np.int32)
            return out
        return {'index': np.arange(n, dtype=np.int32)}

    def model_input(self, originals: np.ndarray) -> np.ndarray:
        """Test data in [0, 1] (images: the levels' values the model was trained on)."""
        if self.data.num_bins is None:
            return np.asarray(originals, np.float32)
        return self.data.levels_to_unit(originals)

    def _sampler(self) -> Callable:
        """jit ``(variables, classifier_variables, rng, cond) -> x in [0, 1]``."""
        s, batch = self.config.sampling, self._host_batch()
        shape = (batch,) + self.data.shape
        inverse = datasets.get_data_inverse_scaler(self.config)
        if self.task in ('unconditional', 'class_conditional'):
            fn = sampling.get_sampling_fn(sampler_config(self.config), self.sde, shape, inverse)
            grad = None
            if self.classifier is not None:
                model = self.classifier[0]
                grad = lambda cv: classifier_lib.get_logp_grad_fn(self.sde, model, cv)  # noqa: E731
                if str(s.method).lower() == 'ode':
                    return jax.jit(self._conditional_ode(grad, inverse))

            def run(v, cv, rng, cond):
                score = self.score_fn(v)
                if grad is not None:
                    score = sampling.conditional_score_fn(
                        score, grad(cv), cond, float(s.classifier_scale)
                    )
                return fn(rng, score)[0]

            return jax.jit(run)
        make = sampling.get_inpainting_fn if self.task == 'inpaint' else sampling.get_colorizing_fn
        project = make(self.config, self.sde)
        mask = jnp.asarray(parse_mask(s.mask, self.data.shape, self.config.seed))

        def run(v, cv, rng, cond):
            y = self.data.scaler(cond)
            if self.task == 'inpaint':
                return inverse(project(rng, self.score_fn(v), y, mask))
            return inverse(project(rng, self.score_fn(v), y))

        return jax.jit(run)

    def _conditional_ode(self, grad: Callable, inverse: Callable) -> Callable:
        """``(variables, classifier_variables, rng, labels) -> x`` of the class-conditional
        probability-flow ODE, one solve per example with its own label.

        The ODE sampler solves each example on its own (``sampling._flow_solve`` vmaps a
        batch of one), so a score closed over the whole batch's labels would add
        Σ_b ∇log p_t(y_b | x) to every example. Here each example i is a batch of one
        with its label, sampled with the key ``fold_in(rng, i)``."""
        s = self.config.sampling
        fn = sampling.get_sampling_fn(self.config, self.sde, (1,) + self.data.shape, inverse)

        def run(v, cv, rng, cond):
            score, logp_grad = self.score_fn(v), grad(cv)

            def one(i, y):
                conditional = sampling.conditional_score_fn(
                    score, logp_grad, y[None], float(s.classifier_scale)
                )
                return fn(jax.random.fold_in(rng, i), conditional)[0][0]

            return jax.vmap(one)(jnp.arange(cond.shape[0]), cond)

        return run

    def _host_batch(self) -> int:
        """Rows per round: ``eval.batch_size`` over the hosts, no more than the examples
        asked for (100 class-conditional digits are not padded to a batch of 256)."""
        batch = datasets.host_batch_size(
            int(self.config.eval.batch_size), self.num_hosts, 'eval.batch_size'
        )
        return batch if self.num is None else min(batch, self.num)

    def _round_input(self, cond: Dict[str, np.ndarray], r: int) -> np.ndarray:
        """The conditioning array of round ``r``, padded to the batch by repetition."""
        b = self._host_batch()
        if self.task == 'class_conditional':
            part = cond['labels'][r * b : (r + 1) * b]
        elif self.task == 'inpaint':
            part = self.model_input(cond['originals'][r * b : (r + 1) * b])
            part = part * parse_mask(self.config.sampling.mask, self.data.shape, self.config.seed)
        elif self.task == 'colorize':
            part = grey(self.model_input(cond['originals'][r * b : (r + 1) * b]))
        else:
            return np.zeros((b,), np.int32)
        pad = b - len(part)
        return np.concatenate([part, np.repeat(part[-1:], pad, 0)]) if pad else part

    # --- the run ----------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        cond = self.conditions()
        n = self.num = len(next(iter(cond.values())))
        b = self._host_batch()
        rounds = -(-n // b)
        task_dir = os.path.join(self.folder, self.task)
        extra = {'score_ckpt': self.ckpt, 'hosts': self.num_hosts}
        if self.classifier is not None:
            extra['classifier_step'] = self.classifier[2]
        check_fingerprint(
            task_dir, self.config, FINGERPRINT_FIELDS, write=self.host == 0, extra=extra
        )
        store = ResultStore(task_dir, 0)
        self._sample_rounds(store, cond, rounds)
        if self.host != 0:
            return {}
        x = np.concatenate([self._wait(store, r)['x'] for r in range(rounds)])[:n]
        return self._finish(cond, x)

    def _sample_rounds(self, store: ResultStore, cond, rounds: int) -> None:
        """This host's rounds (r ≡ host mod hosts), each saved; finished ones skipped."""
        mine = [r for r in range(self.host, rounds, self.num_hosts)]
        todo = [r for r in mine if store.load(self.task, r) is None]
        if not todo:
            return
        fn = self._sampler()
        key = jax.random.fold_in(stream_key(self.config.seed, STREAM_SAMPLE), self.ckpt)
        key = jax.random.fold_in(key, 100 + _TASK_STREAM[self.task])
        cv = self.classifier[1] if self.classifier is not None else None
        b = self._host_batch()
        task = Progress(f'{self.task} (snapshot {self.ckpt})', len(mine) * b, unit='samples')
        task.advance((len(mine) - len(todo)) * b, computed=False)  # rounds of an earlier run
        for r in todo:
            with task.part(b):
                x = fn(self.variables, cv, jax.random.fold_in(key, r), self._round_input(cond, r))
                x = np.asarray(jax.device_get(x), np.float32)
            store.save(self.task, r, {'x': x})
            task.advance(b, extra=f', round {r + 1}/{rounds} done')

    def _wait(self, store: ResultStore, r: int, timeout_s: float = 3600.0):
        deadline = time.time() + timeout_s
        while (res := store.load(self.task, r)) is None:
            if time.time() > deadline:
                raise UserError(f'round {r} of {self.task} was not written by its host')
            time.sleep(1.0)
        return res

    def _finish(self, cond: Dict[str, np.ndarray], x: np.ndarray) -> Dict[str, Any]:
        """Writes ``<task>.npz``, ``<task>.png`` and the task's metrics; returns them."""
        arrays: Dict[str, np.ndarray] = {'samples': x}
        if self.data.num_bins is not None:
            arrays['levels'] = self.data.quantize(x)
        arrays.update({k: v for k, v in cond.items() if k != 'index'})
        if self.task in ('inpaint', 'colorize'):
            arrays['inputs'] = np.stack(
                [self._round_input(cond, r) for r in range(-(-len(x) // self._host_batch()))]
            ).reshape((-1,) + self.data.shape)[: len(x)]
            if self.task == 'inpaint':
                arrays['mask'] = parse_mask(
                    self.config.sampling.mask, self.data.shape, self.config.seed
                )
        save_npz(os.path.join(self.folder, f'{self.task}.npz'), **arrays)
        self._picture(arrays)
        metrics = task_metrics(self, arrays)
        path = os.path.join(self.folder, METRICS_FILE)
        everything = read_json_or_set_aside(path, {})
        everything[self.task] = metrics
        write_json(path, everything)
        logging.info('%s metrics: %s', self.task, metrics)
        return metrics

    def _picture(self, arrays: Dict[str, np.ndarray]) -> None:
        shown = self._shown(arrays)
        if self.task == 'class_conditional':
            picture = class_grid(shown, arrays['labels'])
        elif self.task in ('inpaint', 'colorize'):
            originals = self.model_input(arrays['originals'])
            picture = triple_picture(originals, arrays['inputs'], shown, arrays.get('mask'))
        else:
            picture = pictures.sample_picture(shown)
        if picture is None:
            logging.info('No picture of %d-dimensional vectors.', shown.shape[-1])
            return
        path = os.path.join(self.folder, f'{self.task}.png')
        pictures.save_png(path, picture)
        logging.info('Saved %s.', path)

    def _shown(self, arrays: Dict[str, np.ndarray]) -> np.ndarray:
        """The samples as pictured: images quantized to the data's levels."""
        if 'levels' in arrays:
            return self.data.levels_to_unit(arrays['levels'])
        return arrays['samples']


def restore_score_model(config: ml_collections.ConfigDict, workdir: str, ckpt: int):
    """(model, {'params': EMA parameters}) of snapshot ``ckpt`` of ``workdir``."""
    model, _, template = create_train_state(config, get_mesh())
    state = checkpointing.restore_checkpoint(
        workdir, ckpt, template, float(config.eval.ckpt_timeout)
    )
    logging.info('Score model %s: snapshot %d (step %d).', workdir, ckpt, int(state.step))
    return model, {'params': state.ema_params}


def grey(x: np.ndarray) -> np.ndarray:
    """The grey version of colour images [..., 3]: the channel mean in every channel
    (the projection onto (1, 1, 1)/√3 of ``sampling.COLOR_BASIS``)."""
    return np.repeat(np.mean(x, axis=-1, keepdims=True), x.shape[-1], axis=-1)


def class_grid(samples: np.ndarray, labels: np.ndarray) -> Optional[np.ndarray]:
    """Images: one row per class (first :data:`GRID_ROWS` classes, :data:`GRID_COLS`
    samples each), labelled 'class <c>' on the left; vectors: the scatter of all samples."""
    if samples.ndim != 4:
        return pictures.sample_picture(samples)
    rows, classes = [], list(dict.fromkeys(labels.tolist()))[:GRID_ROWS]
    for c in classes:
        row = samples[labels == c][:GRID_COLS]
        blank = np.ones((GRID_COLS - len(row),) + samples.shape[1:], samples.dtype)
        rows.append(np.concatenate([row, blank]))
    grid = pictures.image_grid(np.concatenate(rows), ncol=GRID_COLS)
    return pictures.label_rows(grid, [f'class {c}' for c in classes], samples.shape[1])


def triple_picture(
    originals: np.ndarray, inputs: np.ndarray, results: np.ndarray, mask: Optional[np.ndarray]
) -> np.ndarray:
    """Rows of (original, input, result) images for the first :data:`GRID_ROWS` examples;
    with an inpainting ``mask`` (1 = known) the input's unknown pixels are tinted
    (``pictures.tint_unknown``), so the masked region shows, and the picture is RGB."""
    columns = [originals, inputs, results]
    if mask is not None:
        columns = [pictures.tint_unknown(x, mask) if x is inputs else x for x in columns]
        columns = [np.repeat(x, 3, -1) if x.shape[-1] == 1 else x for x in columns]
    triples = np.stack([x[:GRID_ROWS] for x in columns], axis=1)
    return pictures.image_grid(triples.reshape((-1,) + triples.shape[2:]), ncol=3)


# --------------------------------------------------------------------------- metrics
def judge(runner: SampleRunner) -> Tuple[Optional[Callable[[np.ndarray], np.ndarray]], str]:
    """(predict(images in [0, 1]) -> class ids, its description), or (None, reason)."""
    config = runner.config
    independent = evaluation.label_judge(runner.workdir, config)
    if independent is not None:
        net, description = independent
        return (lambda x: np.argmax(net(x)[1], -1)), f'{description} (independent, clean)'
    if not datasets.has_labels(config):
        return None, 'none: the data have no labels'
    try:
        model, variables, step = runner.classifier or classifier_lib.load_classifier(
            config, runner.workdir, runner.classifier_folder
        )
    except UserError:
        return None, 'none: no trained classifier'
    eps = float(config.training.eps)
    scaler = runner.data.scaler

    @jax.jit
    def logits(x):
        return model.apply(variables, scaler(x), runner.sde.std(jnp.full(x.shape[:1], eps)))

    def predict(x):
        return np.argmax(np.asarray(logits(jnp.asarray(x, jnp.float32))), -1)

    return predict, f'noise-conditional classifier at t=eps, step {step} (not independent)'


def task_metrics(runner: SampleRunner, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The measured quality of ``runner.task`` (module docstring)."""
    shown = runner._shown(arrays)
    if runner.task == 'colorize':
        return colorization_metrics(runner, arrays)
    if runner.task == 'unconditional':
        return {'num_samples': len(shown)}
    predict, description = judge(runner)
    out: Dict[str, Any] = {'num_samples': len(shown), 'judge': description}
    if runner.task == 'class_conditional':
        if predict is not None:
            out.update(class_metrics(predict(shown), arrays['labels']))
        out['classifier_scale'] = float(runner.config.sampling.classifier_scale)
        return out
    return {**out, **inpainting_metrics(runner, arrays, shown, predict)}


def class_metrics(predicted: np.ndarray, requested: np.ndarray) -> Dict[str, Any]:
    """Fraction of samples judged to be of the requested class, overall and per class."""
    hit = predicted == requested
    per_class = {str(int(c)): float(np.mean(hit[requested == c])) for c in np.unique(requested)}
    return {'accuracy': float(np.mean(hit)), 'accuracy_per_class': per_class}


def inpainting_metrics(runner, arrays, shown, predict) -> Dict[str, Any]:
    """Judge accuracy (result / originals / naive fill) and masked-pixel MSE."""
    original = runner.model_input(arrays['originals'])
    unknown = 1.0 - arrays['mask']
    mean_image = np.mean(runner.model_input(_train_data(runner.config)), axis=0)
    naive = original * arrays['mask'] + mean_image * unknown
    n_unknown = max(float(np.sum(unknown)) * len(shown), 1.0)
    out = {
        'masked_fraction': float(np.mean(unknown)),
        'mse_masked': float(np.sum((shown - original) ** 2 * unknown) / n_unknown),
        'mse_masked_naive_fill': float(np.sum((naive - original) ** 2 * unknown) / n_unknown),
        'known_max_abs_change': float(
            np.max(np.abs((arrays['samples'] - original) * (1 - unknown)))
        ),
    }
    if predict is not None and 'labels' in arrays:
        y = arrays['labels']
        out.update(
            accuracy_inpainted=float(np.mean(predict(shown) == y)),
            accuracy_originals=float(np.mean(predict(original) == y)),
            accuracy_naive_fill=float(np.mean(predict(naive) == y)),
        )
    return out


def colorization_metrics(runner: SampleRunner, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Grey-level change (continuous result) and chroma MSE, result vs mean chroma."""
    original = runner.model_input(arrays['originals'])
    result = arrays['samples']
    train = runner.model_input(_train_data(runner.config))
    mean_chroma = np.mean(train - grey(train), axis=(0, 1, 2))
    baseline = grey(original) + mean_chroma

    def chroma_mse(x):
        return float(np.mean(((x - grey(x)) - (original - grey(original))) ** 2))

    return {
        'num_samples': len(result),
        'grey_max_abs_change': float(np.max(np.abs(grey(result) - grey(original)))),
        'chroma_mse': chroma_mse(runner._shown(arrays)),
        'chroma_mse_mean_chroma_baseline': chroma_mse(baseline),
    }


def _train_data(config: ml_collections.ConfigDict) -> np.ndarray:
    return datasets.get_shard(config, 'train', process_index=0, process_count=1).data
