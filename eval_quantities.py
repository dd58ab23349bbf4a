"""What ``--mode eval`` measures: one registered unit per evaluation quantity.

A *quantity* (the eval loss, the probability-flow ODE's bits/dim, the ScoreFlow bound, the
sample quality, …) is declared once, as a :class:`Quantity` registered with
:func:`register_quantity`, beside the code that computes it. The declaration says

* ``name`` — the registry name, the phase in ``eval_meta.json`` and the tag of its
  per-batch files (``ckpt_<n>/<name>[_r<repeat>]_b<batch>_h<host>.npz``);
* ``metrics`` — its keys in ``metrics.json`` (:class:`Metric`: the key of its standard
  error, and whether it is drawn in ``metrics.png`` and sent to TensorBoard as
  ``eval/<key>``);
* :meth:`Quantity.enabled` — when it runs (from the config);
* ``fingerprint`` — the config fields its stored results depend on: a restart with one
  of them changed is refused (:func:`fingerprint_fields`, ``eval_store.check_fingerprint``);
* :meth:`Quantity.check` — a fast check before any long work (e.g. FID's Inception weights);
* :meth:`Quantity.compute` — the values of one checkpoint.

Most quantities are per-example passes over a data split (:class:`PerExampleQuantity`):
they give a per-batch function and an aggregation of the per-example results, and the pass
itself — per-example keys, resumable per-batch files, progress lines, the exchange between
hosts, the completeness check — is the same for all of them (:meth:`PerExampleQuantity.compute`).

Randomness. Pass ``r`` of a quantity over checkpoint ``c`` draws example ``i``'s numbers
from ``fold_in(fold_in(fold_in(fold_in(key(seed), phase), c), r), i)``, so results do not
depend on the batch size, the device count or a restart, and nothing else about the run
enters them: runs of one seed — whatever their training objective, SDE flags or model —
are evaluated on identical noise (common random numbers, so the ScoreFlow grid's
differences between runs of one seed are paired), runs of other seeds on other noise.
Quantities with the same ``phase`` see the same keys: the ODE and the bound
(``PHASE_LIKELIHOOD``) dequantize each image with the same u (sub-stream ``DEQ_STREAM``)
and differ only in their own sub-streams.

``eval_runner.Evaluator`` runs the enabled quantities in registration order on every
checkpoint; ``eval_runner`` writes the plotted metrics of :func:`plotted_metrics` to
TensorBoard and ``metrics.png``. A new quantity is one class and its registration (a test
registers its own in its file).
"""

from __future__ import annotations

import abc
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import datasets
import digits_classifier  # noqa: F401  (registers the feature network 'digits_mlp')
import evaluation
import likelihood
import losses
import pictures
import sampling
from datasets import DataSpec
from devices import local_mesh, shard_rows
from errors import UserError
from eval_store import (
    Batch,
    Hook,
    Progress,
    Results,
    ResultStore,
    check_complete,
    concat_results,
    mean_and_stderr_over_images,
    read_json_or_set_aside,
    run_pass,
    sorted_results,
)
from file_io import write_json

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
ScoreBuilder = Callable[[Any], ScoreFn]  # variables -> score_fn(x, t)
Dequantizer = Callable[[Any, Array, Array], Tuple[Array, Array]]
"""``dequantizer(deq_variables, keys [B], x̄) -> (u [B, *shape] in [0,1), log q(u|x̄) [B])``."""
BatchFn = Callable[[Any, Any, Array, Array], Dict[str, Array]]
"""``fn(variables, deq_variables, keys [B], x [B, ...]) -> {name: [B]}`` (traced under jit)."""

# Random streams folded into the seed: one per family of quantities.
PHASE_LOSS, PHASE_LIKELIHOOD, PHASE_SAMPLES = 1, 2, 3
# Sub-streams of one example's key.
DEQ_STREAM, ODE_STREAM, BOUND_STREAM = 0, 1, 2
# Sub-stream of the eval loss's noise (the same index as the ODE's, another phase).
LOSS_STREAM = ODE_STREAM

NUM_GRID_SAMPLES = 64
# The bound's time integral: importance-sampled t with this many samples, as the paper.
BOUND_NUM_TIMES = 1000
# Config fields that every stored result depends on (quantities add their own).
COMMON_FINGERPRINT = (
    'seed',
    'data',
    'model',
    'training.sde',
    'training.continuous',
    'eval.batch_size',
)


# --------------------------------------------------------------------------- keys
def phase_key(seed: int, phase: int) -> Array:
    """The base key of one random stream: fold_in(key(seed), phase)."""
    return jax.random.fold_in(jax.random.key(seed), phase)


def round_key(base: Array, ckpt: int, repeat: int) -> Array:
    """fold_in(fold_in(base, ckpt), repeat): the key of one pass over the split."""
    return jax.random.fold_in(jax.random.fold_in(base, ckpt), repeat)


def example_keys(rkey: Array, index: Array) -> Array:
    """One key per example, fold_in(rkey, example_index) ([B] typed keys)."""
    return jax.vmap(lambda i: jax.random.fold_in(rkey, i))(jnp.asarray(index, jnp.uint32))


def stream(keys: Array, sub: int) -> Array:
    """Sub-stream ``sub`` of per-example keys: fold_in(key_i, sub)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, sub))(keys)


# --------------------------------------------------------------------------- context
@dataclasses.dataclass
class EvalContext:
    """What quantities may use: the run's config, SDE, data, model and services.

    Attributes:
      config: the prepared config.
      workdir: the training work directory ``W``.
      sde: the SDE of the run.
      data: how raw data become model input (:class:`datasets.DataSpec`).
      score_builder: ``variables -> score_fn(x, t)`` of the evaluated network.
      dequantizer: the trained variational dequantizer (``eval.dequantizer``), else None.
      deq_variables: its variables (None without it).
      hook: ``hook(ckpt) -> fn(tag, batch)``, called after each newly saved batch.
      host, num_hosts: this process and the number of processes.
      cache: per-quantity objects built once per evaluation (jitted functions).
    """

    config: ml_collections.ConfigDict
    workdir: str
    sde: Any
    data: DataSpec
    score_builder: ScoreBuilder
    dequantizer: Optional[Dequantizer] = None
    deq_variables: Any = None
    hook: Callable[[int], Hook] = lambda ckpt: lambda tag, batch: None
    host: int = 0
    num_hosts: int = 1
    cache: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def batches(self, split: str) -> Iterable[Batch]:
        """A fresh pass over ``split``: (x, mask, index) in a fixed order."""
        iterator = datasets.get_eval_iterator(self.config, split)
        return ((b.x, b.mask, b.index) for b in iterator)

    @property
    def gather_timeout(self) -> float:
        return max(600.0, float(self.config.eval.ckpt_timeout))

    def gather(self, store: ResultStore, tag: str, own: Results) -> Results:
        """Every host's results of ``tag`` (one summary file per host)."""
        return store.gather(tag, own, self.num_hosts, self.gather_timeout)


def nll_fn_of_config(sde, score_fn, e: ml_collections.ConfigDict):
    """``likelihood.get_nll_fn`` with the likelihood's settings of ``config.eval`` (``e``):
    Hutchinson's probes, rtol, atol, ε, solver and time variable."""
    return likelihood.get_nll_fn(
        sde,
        score_fn,
        hutchinson_type=str(e.hutchinson_type),
        rtol=float(e.rtol),
        atol=float(e.atol),
        eps=float(e.eps),
        method=str(e.ode_method),
        ode_time=str(e.ode_time),
    )


def dequantized_input(
    ctx: EvalContext, deq_variables: Any, keys: Array, x: Array
) -> Tuple[Array, Array]:
    """(y, log q(u|x̄)): model input y = scaler((x̄ + u)/K) of raw data x̄ with u from the
    variational dequantizer (``ctx.dequantizer``), from the truncated normal of
    ``eval.dequantization='truncated_normal'`` (:func:`truncated_normal_input`), or
    u ~ U[0,1)^D (log q = 0); vectors are scaled unchanged. u comes from
    ``stream(keys, DEQ_STREAM)``."""
    data = ctx.data
    deq_keys = stream(keys, DEQ_STREAM)
    if data.num_bins is not None and ctx.dequantizer is not None:
        u, log_q = ctx.dequantizer(deq_variables, deq_keys, x)
    elif data.num_bins is not None and ctx.config.eval.dequantization == 'truncated_normal':
        return truncated_normal_input(ctx, deq_keys, x)
    else:
        u, log_q = data.uniform_noise(deq_keys), jnp.zeros(x.shape[0])
    return data.scaler(data.dequantize(x, u)), log_q


def truncated_normal_input(ctx: EvalContext, deq_keys: Array, x: Array) -> Tuple[Array, Array]:
    """i-DODE's training-free dequantization (``likelihood.truncated_normal_dequantization``
    at the ODE's start time ε = ``eval.eps``): the point y_ε = α(ε) scaler(x), a draw of
    the forward kernel of the bin's centre truncated to the scaled bin, with the bins
    centred on the levels the model was trained on — x = (x̄ + u)/K (bins of width 1/K)
    after uniformly dequantized training, x = (x̄ + u − ½)/(K − 1) (width 1/(K − 1))
    after training on x̄/(K − 1) — and log q(u|x̄) − D log(α K w_x). Fed to the ODE as it
    is, this makes the usual conversion (``_BitsPerDim.in_data_units``, ``likelihood.bpd``)
    the exact bound

        −log P(x̄) ≤ E_u[−log p_ε(y_ε) − D log(α a w_x) + log q(u|x̄)],

    P(x̄) = ∫ p_ε over the bin scaled by α (docs/MATH.md §Bits per dimension)."""
    data, k = ctx.data, ctx.data.num_bins
    width = 1.0 / k if data.train_dequantized else 1.0 / (k - 1)
    alpha, tau = likelihood.truncation(ctx.sde, float(ctx.config.eval.eps), data.scale * width)
    u, log_q = likelihood.truncated_normal_dequantization(deq_keys, data.shape, tau)
    x01 = data.dequantize(x, u) if data.train_dequantized else (x + u - 0.5) * width
    y = alpha * data.scaler(x01)
    return y, log_q - data.dim * (jnp.log(alpha) + np.log(k * width))


# --------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Metric:
    """One ``metrics.json`` key of a quantity.

    Attributes:
      name: the key.
      stderr: the key of its standard error (drawn as error bars), or None.
      plotted: drawn in ``metrics.png`` and written to TensorBoard as ``eval/<name>``
        (with its standard error).
    """

    name: str
    stderr: Optional[str] = None
    plotted: bool = True


class Quantity(abc.ABC):
    """One evaluation quantity (module docstring). Subclasses set the class attributes
    and implement :meth:`enabled` and :meth:`compute`."""

    name: str = ''
    title: str = ''  # for log lines
    metrics: Tuple[Metric, ...] = ()
    fingerprint: Tuple[str, ...] = ()

    @abc.abstractmethod
    def enabled(self, config: ml_collections.ConfigDict) -> bool:
        """Whether ``--mode eval`` computes this quantity."""

    def check(self, ctx: EvalContext) -> None:  # noqa: B027 (optional, nothing by default)
        """Raises :class:`UserError` now for a problem that would stop it later."""

    @abc.abstractmethod
    def compute(
        self, ctx: EvalContext, ckpt: int, variables: Any, store: ResultStore
    ) -> Dict[str, Any]:
        """Its ``metrics.json`` values for checkpoint ``ckpt`` (EMA ``variables``),
        resuming from the per-batch files of ``store``."""


_QUANTITIES: Dict[str, Quantity] = {}


def register_quantity(cls: type) -> type:
    """Class decorator: registers an instance of the :class:`Quantity` subclass ``cls``
    under ``cls.name`` (its phase comes after those registered before it)."""
    quantity = cls()
    if not quantity.name or quantity.name in _QUANTITIES:
        raise ValueError(f'quantity name {quantity.name!r} is empty or already registered')
    _QUANTITIES[quantity.name] = quantity
    return cls


def quantity_names() -> Tuple[str, ...]:
    return tuple(_QUANTITIES)


def get_quantity(name: str) -> Quantity:
    return _QUANTITIES[name]


def enabled_quantities(config: ml_collections.ConfigDict) -> List[Quantity]:
    """The quantities ``config`` asks for, in registration order."""
    return [q for q in _QUANTITIES.values() if q.enabled(config)]


def fingerprint_fields() -> Tuple[str, ...]:
    """:data:`COMMON_FINGERPRINT` and every registered quantity's fields, without repeats."""
    fields = list(COMMON_FINGERPRINT)
    for q in _QUANTITIES.values():
        fields += [f for f in q.fingerprint if f not in fields]
    return tuple(fields)


def plotted_metrics() -> Tuple[Tuple[str, Optional[str]], ...]:
    """(key, standard-error key) of every plotted metric, in registration order."""
    return tuple((m.name, m.stderr) for q in _QUANTITIES.values() for m in q.metrics if m.plotted)


# --------------------------------------------------------------------------- per example
def image_counts(index: np.ndarray) -> Dict[str, int]:
    """num_examples (= num_images × num_repeats), num_images, num_repeats of a pass."""
    num_images = int(len(np.unique(index)))
    return {
        'num_examples': int(len(index)),
        'num_images': num_images,
        'num_repeats': int(len(index) // max(num_images, 1)),
    }


COUNT_METRICS = tuple(
    Metric(name, plotted=False) for name in ('num_examples', 'num_images', 'num_repeats')
)


class PerExampleQuantity(Quantity):
    """A quantity computed example by example over a data split.

    Subclasses set ``phase`` (random stream), ``running_key`` (the per-example value whose
    running mean the progress lines show) and ``repeated`` (``eval.num_repeats`` passes,
    tagged ``<name>_r<k>``, with a ``repeat`` column; else one pass tagged ``<name>``), and
    implement :meth:`batch_fn` and :meth:`aggregate`.
    """

    phase: int = PHASE_LIKELIHOOD
    running_key: str = ''
    repeated: bool = False

    def split(self, config: ml_collections.ConfigDict) -> str:
        """The data split of the pass ('train' or 'test')."""
        return 'test'

    @abc.abstractmethod
    def batch_fn(self, ctx: EvalContext) -> BatchFn:
        """The per-batch function (traced under ``jax.jit``): per-example keys in,
        per-example values ``{name: [B]}`` out."""

    @abc.abstractmethod
    def aggregate(self, results: Results) -> Dict[str, Any]:
        """``metrics.json`` values from every example's results (all hosts and repeats,
        in (repeat, index) order; ``index`` and, if repeated, ``repeat`` columns)."""

    def num_repeats(self, config: ml_collections.ConfigDict) -> int:
        return int(config.eval.num_repeats) if self.repeated else 1

    def tag(self, repeat: int) -> str:
        return f'{self.name}_r{repeat}' if self.repeated else self.name

    def _jitted(self, ctx: EvalContext) -> Callable:
        """jit ``fn(variables, deq_variables, rkey, x, index)``: keys fold_in(rkey, index)."""
        if self.name not in ctx.cache:
            fn = self.batch_fn(ctx)
            ctx.cache[self.name] = jax.jit(
                lambda v, dv, rkey, x, index: fn(v, dv, example_keys(rkey, index), x)
            )
        return ctx.cache[self.name]

    def compute(self, ctx, ckpt, variables, store):
        config, start = ctx.config, time.time()
        split, repeats = self.split(config), self.num_repeats(config)
        num_examples = datasets.split_size(config, split)
        fn, mesh = self._jitted(ctx), local_mesh()
        base = phase_key(config.seed, self.phase)
        progress = Progress(f'ckpt {ckpt} {self.title}', num_examples * repeats, self.running_key)
        parts = []
        for repeat in range(repeats):
            rkey = round_key(base, ckpt, repeat)

            def run(x, index, rkey=rkey):
                x, index = shard_rows(x, mesh), shard_rows(index, mesh)
                return fn(variables, ctx.deq_variables, rkey, x, index)

            tag, hook = self.tag(repeat), ctx.hook(ckpt)
            res = run_pass(run, ctx.batches(split), store, tag, progress, hook)
            if self.repeated:
                res['repeat'] = np.full(len(res['index']), repeat, np.int64)
            parts.append(res)
        results = ctx.gather(store, self.name, concat_results(parts))
        check_complete(results, num_examples, repeats, self.name)
        metrics = self.aggregate(sorted_results(results))
        logging.info(
            'ckpt %d: %s on the %s split, %d example evaluations in %.1f s: %s',
            ckpt,
            self.title,
            split,
            len(results['index']),
            time.time() - start,
            metrics,
        )
        return metrics


# --------------------------------------------------------------------------- built-ins
@register_quantity
class EvalLoss(PerExampleQuantity):
    """``loss``: the run's training objective (``losses.get_core_loss_fn``) on the test
    split, one example at a time with its own key, on the training data mapping."""

    name, title = 'loss', 'eval loss'
    metrics = (Metric('loss'),)
    fingerprint = (
        'training.reduce_mean',
        'training.likelihood_weighting',
        'training.importance_weighting',
        'training.eps',
        'training.objective',
        'training.score_matching_order',
        'training.second_order_weight',
        'training.third_order_weight',
    )
    phase, running_key = PHASE_LOSS, 'loss'

    def enabled(self, config):
        return bool(config.eval.enable_loss)

    def batch_fn(self, ctx):
        core = losses.get_core_loss_fn(ctx.sde, losses.LossOptions.from_config(ctx.config))

        def fn(variables, deq_variables, keys, x):
            y = ctx.data.train_input(x, stream(keys, DEQ_STREAM))
            score_fn = ctx.score_builder(variables)
            per_example = jax.vmap(lambda k, yi: core(k, score_fn, yi[None])[0])
            return {'loss': per_example(stream(keys, LOSS_STREAM), y)}

        return fn

    def aggregate(self, results):
        return {'loss': float(np.mean(results['loss'], dtype=np.float64))}


class _BitsPerDim(PerExampleQuantity):
    """A likelihood estimate on ``eval.bpd_dataset``, ``eval.num_repeats`` passes, with
    the images dequantized as :func:`dequantized_input` (the same u for every estimator)."""

    phase, repeated = PHASE_LIKELIHOOD, True

    def split(self, config):
        return str(config.eval.bpd_dataset).lower()

    @staticmethod
    def in_data_units(data: DataSpec, nll: Array, log_q: Array) -> Tuple[Array, Array]:
        """(nll, bits/dim) of the discrete data from the model-space nll of y and log q(u|x̄):
        ``likelihood.nll_in_data_units`` (the scaler's Jacobian) + log q, ``likelihood.bpd``."""
        nll = likelihood.nll_in_data_units(nll, data.dim, data.scale) + log_q
        return nll, likelihood.bpd(nll, data.dim, data.num_bins)

    def per_image(self, results: Results, key: str, stderr_key: str) -> Dict[str, Any]:
        """The mean of ``key`` with its standard error over images (repeats averaged
        first, ``eval_store.mean_and_stderr_over_images``) and the counts."""
        index = results['index']
        out: Dict[str, Any] = image_counts(index)
        out[key], out[stderr_key] = mean_and_stderr_over_images(results[key], index)
        return out


@register_quantity
class ODEBitsPerDim(_BitsPerDim):
    """``bpd`` / ``nll``: the exact likelihood of the probability-flow ODE
    (``likelihood.get_nll_fn``: adaptive solve, Hutchinson trace) in the data's own units
    (``likelihood.nll_in_data_units``), −log q(u|x̄) of a variational dequantizer included;
    bits/dim by ``likelihood.bpd``; ``nfe_mean`` its score evaluations per solve."""

    name, title = 'bpd', 'bits/dim (probability-flow ODE)'
    metrics = (
        Metric('bpd', 'bpd_stderr'),
        Metric('nll', plotted=False),
        Metric('nfe_mean', plotted=False),
        *COUNT_METRICS,
    )
    fingerprint = (
        'eval.bpd_dataset',
        'eval.dequantizer',
        'eval.dequantization',
        'eval.rtol',
        'eval.atol',
        'eval.eps',
        'eval.ode_method',
        'eval.ode_time',
        'eval.hutchinson_type',
    )
    running_key = 'bpd'

    def enabled(self, config):
        return bool(config.eval.enable_bpd)

    def batch_fn(self, ctx):
        e = ctx.config.eval

        def fn(variables, deq_variables, keys, x):
            y, log_q = dequantized_input(ctx, deq_variables, keys, x)
            nll_fn = nll_fn_of_config(ctx.sde, ctx.score_builder(variables), e)
            nll, _, nfe = nll_fn(stream(keys, ODE_STREAM), y)
            nll, bpd = self.in_data_units(ctx.data, nll, log_q)
            return {
                'nll': nll,
                'bpd': bpd,
                'nfe': jnp.broadcast_to(nfe, nll.shape).astype(jnp.float32),
            }

        return fn

    def aggregate(self, results):
        out = self.per_image(results, 'bpd', 'bpd_stderr')
        out['nll'] = float(np.mean(results['nll'].astype(np.float64)))
        out['nfe_mean'] = float(np.mean(results['nfe'].astype(np.float64)))
        return out


@register_quantity
class BoundBitsPerDim(_BitsPerDim):
    """``bound_bpd`` / ``bound_nll``: ScoreFlow's variational bound
    (``likelihood.get_bound_fn``), its times importance-sampled, p(t) ∝ g²/σ², or
    (``eval.bound_importance_weighting=False``) t ~ U[ε, T], :data:`BOUND_NUM_TIMES` per
    image; in the data's own units as the ODE's, on the same dequantized images."""

    name, title = 'bound', 'bits/dim (ScoreFlow bound)'
    metrics = (Metric('bound_bpd', 'bound_stderr'), Metric('bound_nll', plotted=False))
    metrics += COUNT_METRICS
    fingerprint = (
        'eval.bpd_dataset',
        'eval.dequantizer',
        'eval.dequantization',
        'eval.dsm',
        'eval.bound_importance_weighting',
        'eval.offset',
        'eval.eps',
        'eval.hutchinson_type',
    )
    running_key = 'bound_bpd'

    def enabled(self, config):
        return bool(config.eval.bound)

    def batch_fn(self, ctx):
        e = ctx.config.eval

        def fn(variables, deq_variables, keys, x):
            y, log_q = dequantized_input(ctx, deq_variables, keys, x)
            bound_fn = likelihood.get_bound_fn(
                ctx.sde,
                ctx.score_builder(variables),
                dsm=bool(e.dsm),
                importance_weighting=bool(e.bound_importance_weighting),
                N=BOUND_NUM_TIMES,
                eps=float(e.eps),
                offset=bool(e.offset),
                hutchinson_type=str(e.hutchinson_type),
            )
            nll, bpd = self.in_data_units(ctx.data, bound_fn(stream(keys, BOUND_STREAM), y), log_q)
            return {'bound_nll': nll, 'bound_bpd': bpd}

        return fn

    def aggregate(self, results):
        out = self.per_image(results, 'bound_bpd', 'bound_stderr')
        out['bound_nll'] = float(np.mean(results['bound_nll'].astype(np.float64)))
        return out


@register_quantity
class SampleQuality(Quantity):
    """``eval.num_samples`` samples of the configured sampler, saved per round
    (``samples_b<r>``), ``samples.png``, and their FID / IS / KID (FD_digits on DIGITS)
    from ``evaluation.sample_quality`` (``eval.sample_metrics``; image data only)."""

    name, title = 'samples', 'samples'
    metrics = (Metric('fid'), Metric('is'), Metric('kid'), Metric('num_samples', plotted=False))
    fingerprint = ('sampling',)

    def enabled(self, config):
        return bool(config.eval.enable_sampling)

    def _wants_quality(self, ctx: EvalContext) -> bool:
        return bool(ctx.config.eval.sample_metrics) and ctx.data.num_bins is not None

    def check(self, ctx):
        if self._wants_quality(ctx):  # missing Inception weights: fail before sampling
            evaluation.check_feature_net(ctx.workdir, ctx.config)

    def compute(self, ctx, ckpt, variables, store):
        e = ctx.config.eval
        host_batch = datasets.host_batch_size(int(e.batch_size), ctx.num_hosts, 'eval.batch_size')
        rounds = -(-int(e.num_samples) // int(e.batch_size))
        own = self._sample_rounds(ctx, ckpt, variables, store, host_batch, rounds)
        samples = ctx.gather(store, 'samples', own)['samples'][: int(e.num_samples)]
        values: Dict[str, Any] = {'num_samples': len(samples)}
        if ctx.host == 0:
            _save_grid(ctx.data, store.folder, samples)
            values.update(self._quality(ctx, store.folder, samples))
        return values

    def _sampler(self, ctx: EvalContext, host_batch: int) -> Callable:
        if 'samples' not in ctx.cache:
            fn = sampling.get_sampling_fn(
                ctx.config,
                ctx.sde,
                (host_batch,) + ctx.data.shape,
                datasets.get_data_inverse_scaler(ctx.config),
            )
            ctx.cache['samples'] = jax.jit(lambda v, rng: fn(rng, ctx.score_builder(v)))
        return ctx.cache['samples']

    def _sample_rounds(self, ctx, ckpt, variables, store, host_batch, rounds) -> Results:
        """This host's samples (levels of images), round by round, each round saved."""
        base = phase_key(ctx.config.seed, PHASE_SAMPLES)
        task = Progress(f'ckpt {ckpt} samples', rounds * host_batch, unit='samples')
        parts = []
        for r in range(rounds):
            res = store.load('samples', r)
            computed = res is None
            if computed:
                rng = jax.random.fold_in(round_key(base, ckpt, r), ctx.host)
                with task.part(host_batch):
                    x, nfe = self._sampler(ctx, host_batch)(variables, rng)
                    res = {
                        'samples': ctx.data.quantize(jax.device_get(x)),
                        'nfe': np.asarray(np.max(jax.device_get(nfe)), np.int64),
                    }
                store.save('samples', r, res)
                ctx.hook(ckpt)('samples', r)
            task.advance(host_batch, computed, f', round {r + 1}/{rounds} NFE {int(res["nfe"])}')
            parts.append(res['samples'])
        return {
            'samples': np.concatenate(parts),
            'index': np.arange(rounds * host_batch) + ctx.host * rounds * host_batch,
        }

    def _quality(self, ctx: EvalContext, folder: str, samples: np.ndarray) -> Dict[str, float]:
        """FID / IS / KID (DIGITS: the digits classifier), cached; {} if not wanted."""
        if not self._wants_quality(ctx):
            logging.info('No FID/IS/KID: eval.sample_metrics=False or vector samples.')
            return {}
        path = os.path.join(folder, 'sample_quality.json')
        cached = read_json_or_set_aside(path, None)
        if cached is not None and cached.get('num_samples') == len(samples):
            return cached['metrics']
        start = time.time()
        try:
            metrics = evaluation.sample_quality(
                ctx.data.levels_to_unit(samples), ctx.workdir, ctx.config
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


def _save_grid(data: DataSpec, folder: str, samples: np.ndarray) -> None:
    """``samples.png``: a grid of the first images, or a scatter of vector samples."""
    if data.num_bins is not None:
        samples = data.levels_to_unit(samples[:NUM_GRID_SAMPLES])
    picture = pictures.sample_picture(samples)
    if picture is None:
        logging.info('No picture of %d-dimensional vector samples.', samples.shape[-1])
        return
    path = os.path.join(folder, 'samples.png')
    pictures.save_png(path, picture)
    logging.info('Saved %s.', path)
