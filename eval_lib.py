"""Evaluation mode: eval loss, bits/dim (probability-flow ODE and ScoreFlow bound), samples.

``evaluate(config, workdir, eval_folder)`` evaluates the checkpoints ``eval.begin_ckpt`` …
``eval.end_ckpt`` of ``W/checkpoints`` (waiting up to ``eval.ckpt_timeout`` seconds for
one not yet written) with their EMA parameters and writes, under ``W/<eval_folder>/``:

* ``metrics.json`` — one entry per checkpoint number (a string) with the scalars of
  API.md: ``loss``, ``bpd``, ``bpd_stderr``, ``nll``, ``nfe_mean``, ``bound_bpd``,
  ``bound_stderr``, ``num_examples``, ``fid``, ``is``, ``kid``, ``num_samples`` (only what
  was computed). Written atomically (tmp file + ``os.replace``) after every phase.
* ``ckpt_<n>/*.npz`` — per-batch, per-example results (no pickle) and the samples;
  ``ckpt_<n>/samples.png`` — a grid of the first samples.
* ``eval_meta.json`` — the evaluation meta-checkpoint: the settings the per-batch files
  depend on and the position reached. A preempted evaluation restarted with the same
  command skips every batch whose file exists and recomputes the rest on the same
  examples with the same random numbers, so its ``metrics.json`` equals that of an
  uninterrupted run.

Bits/dim (MATH.md). The eval iterator yields discrete data x̄ ∈ {0,…,K−1}^D (or
continuous vectors) with a mask and the global example index. Each example is
dequantized, x = (x̄ + u)/K with u ~ U[0,1)^D (``eval.dequantizer``: u ~ q(u|x̄) of the
trained variational dequantizer, whose log q(u|x̄) is added), mapped to the model's space
y = a·x + b by the data scaler, and
``nll = −log p(x) = −log p(y) − D log a`` (nats per example in the data's own units),
``bpd = nll / (D ln 2) + log₂ K`` (no ``log₂ K`` for continuous data). ``bpd`` uses the
probability-flow ODE with a Hutchinson trace (``likelihood.get_nll_fn``), ``bound_bpd``
the ScoreFlow variational bound (``likelihood.get_bound_fn``); both see the same u.
Means and standard errors are over examples × ``eval.num_repeats`` passes; every pass
visits every example of the split exactly once (padded last batch, masked).

Randomness. Every per-example random number (dequantization noise, Hutchinson probe,
time samples of the bound, loss noise) comes from
``fold_in(fold_in(fold_in(fold_in(key(seed), phase), ckpt), repeat), example_index)``, so the
results do not depend on the batch size, the number of devices or on a restart.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import datasets
import likelihood
from errors import UserError

Array = jax.Array
Batch = Tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, mask [B] bool, index [B] int)
ScoreFn = Callable[[Array, Array], Array]
ScoreBuilder = Callable[[Any], ScoreFn]  # variables -> score_fn(x, t)
Results = Dict[str, np.ndarray]

# Tags folded into the seed so that each phase draws from its own random stream.
PHASE_LOSS, PHASE_BPD, PHASE_SAMPLES = 1, 2, 3
# Sub-streams of one example's key.
_DEQ_STREAM, _ODE_STREAM, _BOUND_STREAM = 0, 1, 2

META_FILE = 'eval_meta.json'
METRICS_FILE = 'metrics.json'
NUM_GRID_SAMPLES = 64
# The bound's time integral: importance-sampled t with this many samples, as the paper.
BOUND_NUM_TIMES = 1000
# Config fields that change the content of a per-batch file: a restart with any of
# them changed must not mix old and new files (see ``check_fingerprint``).
FINGERPRINT_FIELDS = ('seed', 'data', 'model', 'training.sde', 'training.continuous',
                      'training.reduce_mean', 'training.likelihood_weighting',
                      'training.importance_weighting', 'training.eps', 'sampling',
                      'eval.batch_size', 'eval.bpd_dataset', 'eval.dsm', 'eval.offset',
                      'eval.dequantizer', 'eval.rtol', 'eval.atol', 'eval.eps',
                      'eval.hutchinson_type')


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


# --------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class DataSpec:
    """How evaluation turns an iterator batch into model inputs.

    Attributes:
      shape: shape of one example ((H, W, C) or (D,)).
      num_bins: K for discrete data x̄ ∈ {0,…,K−1}; None for continuous vectors.
      scaler: the model's data scaler, affine y = a·x + b (jnp-traceable).
      train_dequantized: the training data were (x̄ + u)/K (else x̄/(K−1)); the eval
        loss uses the training mapping.
    """

    shape: Tuple[int, ...]
    num_bins: Optional[int]
    scaler: Callable[[Array], Array] = lambda x: x
    train_dequantized: bool = False

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def scale(self) -> float:
        """a of the affine scaler y = a·x + b, measured from the scaler itself."""
        with jax.ensure_compile_time_eval():
            y0, y1, yh = (float(self.scaler(jnp.asarray(v, jnp.float32))) for v in (0., 1., .5))
        if not math.isclose(yh, 0.5 * (y0 + y1), rel_tol=1e-6, abs_tol=1e-6) or y1 <= y0:
            raise ValueError('bits/dim needs an increasing affine data scaler')
        return y1 - y0

    def nll_in_data_units(self, nll_model: Array) -> Array:
        """−log p(x) = −log p(y) − D log a for y = a·x + b."""
        return nll_model - self.dim * math.log(self.scale)

    def bits_per_dim(self, nll: Array) -> Array:
        """nll / (D ln 2) + log₂ K for nll in data units (``likelihood.bpd`` with a = 1)."""
        return likelihood.bpd(nll, self.dim, self.num_bins, scale=1.0)

    def uniform_noise(self, keys: Array) -> Array:
        """u ~ U[0,1)^D per example, [B, *shape]."""
        return jax.vmap(lambda k: jax.random.uniform(k, self.shape))(keys)

    def dequantize(self, x: Array, u: Array) -> Array:
        """x = (x̄ + u) / K (continuous data are returned unchanged)."""
        if self.num_bins is None:
            return x.astype(jnp.float32)
        return datasets.to_unit_interval(x, self.num_bins, u)

    def train_input(self, x: Array, keys: Array) -> Array:
        """Model input as in training: scaler((x̄ + u)/K) or scaler(x̄/(K−1))."""
        if self.num_bins is None:
            return self.scaler(x.astype(jnp.float32))
        u = self.uniform_noise(keys) if self.train_dequantized else None
        return self.scaler(datasets.to_unit_interval(x, self.num_bins, u))

    def quantize(self, x01: np.ndarray) -> np.ndarray:
        """Samples in [0, 1] → uint8 levels x̄, inverting the training mapping
        (``evaluation.quantize``); continuous vectors stay float32."""
        import evaluation  # pylint: disable=import-outside-toplevel

        if self.num_bins is None:
            return np.asarray(x01, np.float32)
        unit = evaluation.quantize(np.asarray(x01), self.num_bins, self.train_dequantized)
        dtype = np.uint8 if self.num_bins <= 256 else np.uint16
        return np.round(unit * (self.num_bins - 1)).astype(dtype)

    def levels_to_unit(self, levels: np.ndarray) -> np.ndarray:
        """x̄/(K−1) ∈ [0, 1] (the grid of the feature networks' reference images)."""
        return datasets.to_unit_interval(np.asarray(levels), self.num_bins)


# --------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class LikelihoodOptions:
    """What the bits/dim pass computes (from ``config.eval``)."""

    ode: bool = True                # bpd by the probability-flow ODE
    bound: bool = False             # bound_bpd by the ScoreFlow bound
    dsm: bool = True
    offset: bool = True
    hutchinson_type: str = 'Rademacher'
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5
    bound_num_times: int = BOUND_NUM_TIMES

    @classmethod
    def from_config(cls, config) -> 'LikelihoodOptions':
        e = config.eval
        return cls(ode=bool(e.enable_bpd), bound=bool(e.bound), dsm=bool(e.dsm),
                   offset=bool(e.offset), hutchinson_type=str(e.hutchinson_type),
                   rtol=float(e.rtol), atol=float(e.atol), eps=float(e.eps))

    @property
    def enabled(self) -> bool:
        return self.ode or self.bound


# --------------------------------------------------------------------------- devices
def _mesh() -> Mesh:
    """1-D mesh over this host's devices; evaluation is per example, so no host talks."""
    return Mesh(np.asarray(jax.local_devices()), ('data',))


def _shard(x: np.ndarray, mesh: Mesh) -> Array:
    if len(mesh.devices) == 1 or x.shape[0] % len(mesh.devices):
        return jnp.asarray(x)
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec('data')))


# --------------------------------------------------------------------------- per batch
Dequantizer = Callable[[Any, Array, Array], Tuple[Array, Array]]
"""``dequantizer(deq_variables, keys [B], x̄) -> (u [B, *shape] in [0,1), log q(u|x̄) [B])``."""


def get_likelihood_batch_fn(sde, score_builder: ScoreBuilder, data: DataSpec,
                            opts: LikelihoodOptions,
                            dequantizer: Optional[Dequantizer] = None):
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
            nll_fn = likelihood.get_nll_fn(sde, score_fn, hutchinson_type=opts.hutchinson_type,
                                           rtol=opts.rtol, atol=opts.atol, eps=opts.eps)
            nll, _, nfe = nll_fn(_stream(keys, _ODE_STREAM), y)
            out['nll'] = data.nll_in_data_units(nll) + log_q
            out['bpd'] = data.bits_per_dim(out['nll'])
            out['nfe'] = jnp.broadcast_to(nfe, nll.shape).astype(jnp.float32)
        if opts.bound:
            bound_fn = likelihood.get_bound_fn(
                sde, score_fn, dsm=opts.dsm, importance_weighting=True,
                N=opts.bound_num_times, eps=opts.eps, offset=opts.offset,
                hutchinson_type=opts.hutchinson_type)
            bound = bound_fn(_stream(keys, _BOUND_STREAM), y)  # per-example keys
            out['bound_nll'] = data.nll_in_data_units(bound) + log_q
            out['bound_bpd'] = data.bits_per_dim(out['bound_nll'])
        return out

    return jax.jit(fn)


def get_loss_batch_fn(core_loss: Callable[[Array, ScoreFn, Array], Array],
                      score_builder: ScoreBuilder, data: DataSpec):
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


# --------------------------------------------------------------------------- files
def _atomic_write(path: str, payload: bytes) -> None:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_npz(path: str, **arrays: np.ndarray) -> None:
    """Atomically writes arrays to ``path`` (.npz, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    _atomic_write(path, buf.getvalue())


def load_npz(path: str) -> Optional[Results]:
    """The arrays of ``path``, or None if it is missing or unreadable (then recomputed)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
        logging.warning('Ignoring unreadable %s (%s); recomputing it.', path, e)
        return None


def write_json(path: str, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON."""
    _atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def read_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path, encoding='utf-8') as f:
        return json.load(f)


class ResultStore:
    """Per-batch results of one checkpoint: ``<folder>/<tag>_b<batch>_h<host>.npz``."""

    def __init__(self, folder: str, host: int = 0):
        self.folder = folder
        self.host = host
        os.makedirs(folder, exist_ok=True)

    def path(self, tag: str, batch: int, host: Optional[int] = None) -> str:
        host = self.host if host is None else host
        return os.path.join(self.folder, f'{tag}_b{batch:05d}_h{host}.npz')

    def summary_path(self, tag: str, host: int) -> str:
        return os.path.join(self.folder, f'{tag}_h{host}.npz')

    def load(self, tag: str, batch: int) -> Optional[Results]:
        return load_npz(self.path(tag, batch))

    def save(self, tag: str, batch: int, arrays: Results) -> None:
        save_npz(self.path(tag, batch), **arrays)

    def gather(self, tag: str, own: Results, num_hosts: int, timeout_s: float) -> Results:
        """All hosts' results of ``tag``: each host writes its summary; all read them."""
        save_npz(self.summary_path(tag, self.host), **own)
        parts = []
        for host in range(num_hosts):
            path = self.summary_path(tag, host)
            deadline = time.time() + timeout_s
            while (part := load_npz(path)) is None:
                if time.time() > deadline:
                    raise UserError(f'Host {host} did not write {path} within {timeout_s:.0f}'
                                    ' s; check that every host runs the evaluation.')
                time.sleep(1.0)
            parts.append(part)
        return concat_results(parts)


def concat_results(parts: List[Results]) -> Results:
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- progress
class Progress:
    """A log line every ``every_s`` seconds: examples done, a running mean, the ETA."""

    def __init__(self, what: str, total: int, key: Optional[str] = None,
                 every_s: float = 30.0):
        self.what, self.total, self.key, self.every_s = what, total, key, every_s
        self.start = self.last = time.time()
        self.done = self.computed = 0
        self.sum = 0.0

    def update(self, res: Results, computed: bool) -> None:
        num = len(res['index'])
        self.done += num
        self.computed += num if computed else 0
        if self.key in res:
            self.sum += float(np.sum(res[self.key], dtype=np.float64))
        now = time.time()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        rate = self.computed / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        mean = f', {self.key} {self.sum / max(self.done, 1):.4f}' if self.key else ''
        logging.info('%s: %d/%d examples (%.0f%%)%s, %.2f ex/s, ETA %.0f s', self.what,
                     self.done, self.total, 100.0 * self.done / max(self.total, 1), mean,
                     rate, eta)


# --------------------------------------------------------------------------- passes
BatchFn = Callable[[np.ndarray, np.ndarray], Mapping[str, Array]]
Hook = Callable[[str, int], None]


def run_pass(batch_fn: BatchFn, batches: Iterable[Batch], store: ResultStore, tag: str,
             progress: Optional[Progress] = None, hook: Optional[Hook] = None) -> Results:
    """One pass over ``batches``, resuming from the per-batch files of ``store``.

    ``batch_fn(x, index)`` gives per-example arrays; padded rows are dropped with the
    mask and the example indices are stored beside the results. ``hook(tag, batch)``
    runs after each newly computed batch was saved (tests use it to interrupt).
    """
    parts: List[Results] = []
    for b, (x, mask, index) in enumerate(batches):
        res = store.load(tag, b)
        computed = res is None
        if computed:
            out = batch_fn(x, index)
            mask = np.asarray(mask, bool)
            res = {k: np.asarray(v)[mask] for k, v in out.items()}
            res['index'] = np.asarray(index)[mask].astype(np.int64)
            store.save(tag, b, res)
            if hook is not None:
                hook(tag, b)
        parts.append(res)
        if progress is not None:
            progress.update(res, computed)
    return concat_results(parts)


def evaluate_likelihood(batch_fn, variables, deq_variables, make_batches, *, base_key: Array,
                        ckpt: int, num_repeats: int, store: ResultStore,
                        num_examples: int = 0, hook: Optional[Hook] = None,
                        running_key: str = 'bpd') -> Results:
    """``num_repeats`` passes of ``get_likelihood_batch_fn``'s function over the split.

    ``make_batches()`` returns a fresh iterable of (x, mask, index) in a fixed order;
    pass ``repeat`` uses the key ``round_key(base_key, ckpt, repeat)``. Returns the
    per-example results of all passes with ``index`` and ``repeat`` columns.
    """
    mesh = _mesh()
    progress = Progress(f'ckpt {ckpt} bits/dim', num_examples * num_repeats, running_key)
    parts = []
    for repeat in range(num_repeats):
        rkey = round_key(base_key, ckpt, repeat)

        def fn(x, index, rkey=rkey):
            return batch_fn(variables, deq_variables, rkey, _shard(x, mesh),
                            _shard(index, mesh))

        res = run_pass(fn, make_batches(), store, f'bpd_r{repeat}', progress, hook)
        res['repeat'] = np.full(len(res['index']), repeat, np.int64)
        parts.append(res)
    return concat_results(parts)


def evaluate_loss(batch_fn, params, batches: Iterable[Batch], *, base_key: Array, ckpt: int,
                  store: ResultStore, num_examples: int = 0,
                  hook: Optional[Hook] = None) -> Results:
    """Per-example training loss over the split (one pass)."""
    mesh = _mesh()
    rkey = round_key(base_key, ckpt, 0)

    def fn(x, index):
        return batch_fn(params, rkey, _shard(x, mesh), _shard(index, mesh))

    return run_pass(fn, batches, store, 'loss',
                    Progress(f'ckpt {ckpt} loss', num_examples, 'loss'), hook)


# --------------------------------------------------------------------------- metrics
def _sorted(results: Results) -> Results:
    """Results in (repeat, index) order, so sums do not depend on batching or hosts."""
    keys = [results['index']]
    if 'repeat' in results:
        keys.append(results['repeat'])
    order = np.lexsort(keys)
    return {k: v[order] for k, v in results.items()}


def mean_and_stderr(values: np.ndarray) -> Tuple[float, float]:
    """Mean and standard error std/√n (ddof 1) in float64."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(np.mean(v)), float('nan')
    return float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v)))


def likelihood_metrics(results: Results) -> Dict[str, float]:
    """bpd, bpd_stderr, nll, nfe_mean, bound_bpd, bound_stderr, num_examples."""
    results = _sorted(results)
    out: Dict[str, float] = {'num_examples': int(len(results['index']))}
    if 'bpd' in results:
        out['bpd'], out['bpd_stderr'] = mean_and_stderr(results['bpd'])
        out['nll'] = float(np.mean(results['nll'].astype(np.float64)))
        out['nfe_mean'] = float(np.mean(results['nfe'].astype(np.float64)))
    if 'bound_bpd' in results:
        out['bound_bpd'], out['bound_stderr'] = mean_and_stderr(results['bound_bpd'])
    return out


def check_complete(results: Results, num_examples: int, num_repeats: int, what: str) -> None:
    """Every example evaluated exactly once per repeat, or a clear error."""
    seen = len(results['index'])
    unique = len(np.unique(results['index'] + num_examples * results.get('repeat', 0)))
    if seen != num_examples * num_repeats or unique != seen:
        raise RuntimeError(f'{what}: evaluated {seen} examples ({unique} distinct), expected '
                           f'{num_examples} × {num_repeats}')


# --------------------------------------------------------------------------- images
def image_grid(images: np.ndarray, ncol: Optional[int] = None, pad: int = 1) -> np.ndarray:
    """Tiles [N, H, W, C] images in [0, 1] into one uint8 image [rows·(H+pad), …]."""
    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i, img in enumerate(np.clip(images, 0.0, 1.0)):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + q * (w + pad):pad + q * (w + pad) + w] = img
    return np.round(grid * 255).astype(np.uint8)


def scatter_image(points: np.ndarray, size: int = 256) -> np.ndarray:
    """A 2-D histogram of [N, 2] points as a uint8 grey image (dark = dense)."""
    lo, hi = np.percentile(points, [0.5, 99.5], axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    hist, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=size,
                                range=[[lo[1], hi[1]], [lo[0], hi[0]]])
    img = 1.0 - np.sqrt(hist / max(hist.max(), 1.0))
    return np.round(img[::-1, :, None] * 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
    """Saves a uint8 [H, W, 1|3] image as PNG (atomically)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    mode = 'L' if image.shape[-1] == 1 else 'RGB'
    img = Image.fromarray(image[..., 0] if mode == 'L' else image, mode=mode)
    if img.width < 256:  # tiny images (8×8 digits): scale up with visible pixels
        factor = int(math.ceil(256 / img.width))
        img = img.resize((img.width * factor, img.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    _atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------- meta
def config_fingerprint(config) -> Dict[str, Any]:
    """The config fields that per-batch files depend on, as JSON-comparable values."""
    flat: Dict[str, Any] = {}

    def walk(prefix, value):
        if hasattr(value, 'items'):
            for k, v in value.items():
                walk(f'{prefix}.{k}' if prefix else k, v)
        else:
            flat[prefix] = value

    walk('', config)
    keep = {k: v for k, v in flat.items()
            if any(k == f or k.startswith(f + '.') for f in FINGERPRINT_FIELDS)}
    return json.loads(json.dumps(keep, default=str))


def check_fingerprint(eval_dir: str, config, write: bool = True,
                      extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Loads (or, if ``write``, creates) the meta-checkpoint; a changed setting (of the
    config, or in ``extra``) raises ``UserError``."""
    path = os.path.join(eval_dir, META_FILE)
    fingerprint = dict(config_fingerprint(config), **(extra or {}))
    meta = read_json(path, None)
    if meta is None:
        meta = {'fingerprint': fingerprint, 'position': None}
        if write:
            write_json(path, meta)
        return meta
    old = meta.get('fingerprint', {})
    changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if changed:
        raise UserError(
            f'{eval_dir} holds results made with other settings ({", ".join(changed[:5])}'
            f'{" …" if len(changed) > 5 else ""} changed); use another --eval_folder, or '
            'delete that folder to start over.')
    return meta


def _json_scalar(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf become null (with a warning), numpy → Python."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        logging.warning('A metric is %s; written as null in %s.', value, METRICS_FILE)
        return None
    return value


def update_metrics(eval_dir: str, ckpt: int, values: Mapping[str, Any]) -> Dict[str, Any]:
    """Merges ``values`` into the entry of ``ckpt`` of metrics.json (atomic rewrite)."""
    path = os.path.join(eval_dir, METRICS_FILE)
    metrics = read_json(path, {})
    entry = metrics.setdefault(str(ckpt), {})
    entry.update({k: _json_scalar(v) for k, v in values.items()})
    write_json(path, metrics)
    return entry


# --------------------------------------------------------------------------- pipeline
class Evaluator:
    """``--mode eval``: the phases of one checkpoint, resumable batch by batch.

    Args:
      config: the full config (``configs.base`` schema).
      workdir: the training work directory ``W`` (checkpoints in ``W/checkpoints``).
      eval_folder: results go to ``W/<eval_folder>``; None: no folder (for users of
        ``load_variables`` / ``score_builder`` only, e.g. ``--mode train_deq``).
      hook: called as ``hook(tag, batch)`` after each newly saved batch (tests).
    """

    def __init__(self, config, workdir: str, eval_folder: Optional[str] = 'eval',
                 hook: Optional[Hook] = None):
        import sde_lib  # pylint: disable=import-outside-toplevel

        self.config = config
        self.workdir = workdir
        self.hook = hook
        self.host, self.num_hosts = jax.process_index(), jax.process_count()
        self.sde = sde_lib.get_sde(config)
        self.data = DataSpec(shape=datasets.data_shape(config),
                             num_bins=datasets.num_bins(config),
                             scaler=datasets.get_data_scaler(config),
                             train_dequantized=bool(config.data.uniform_dequantization))
        self.opts = LikelihoodOptions.from_config(config)
        self.eval_dir, self.meta = None, {}
        if eval_folder is not None:
            self.eval_dir = os.path.join(workdir, eval_folder)
            os.makedirs(self.eval_dir, exist_ok=True)
            self.meta = check_fingerprint(self.eval_dir, config, write=self.host == 0,
                                          extra=self._fingerprint_extra())
        self._model = None
        self._template = None
        self._fns: Dict[str, Any] = {}

    def _fingerprint_extra(self) -> Dict[str, Any]:
        """The trained dequantizer's digest: retraining it invalidates old results."""
        import dequantizer  # pylint: disable=import-outside-toplevel

        path = os.path.join(self.workdir, dequantizer.DEQ_FOLDER, dequantizer.PARAMS_FILE)
        if not self.config.eval.dequantizer or not os.path.exists(path):
            return {}
        with open(path, 'rb') as f:
            return {'dequantizer_sha1': hashlib.sha1(f.read()).hexdigest()}

    # --- model and checkpoints --------------------------------------------------------
    def _build_model(self) -> None:
        """The network and a train-state template of the config (as ``run_lib`` builds
        them) to restore checkpoints into."""
        import run_lib  # pylint: disable=import-outside-toplevel

        self._model, _, self._template = run_lib.create_train_state(self.config, _mesh())

    def score_builder(self, variables) -> ScoreFn:
        from models import utils as mutils  # pylint: disable=import-outside-toplevel

        return mutils.get_score_fn(self.sde, self._model, variables, train=False,
                                   continuous=bool(self.config.training.continuous))

    def load_variables(self, ckpt: int) -> Dict[str, Any]:
        """{'params': EMA parameters} of snapshot ``ckpt``, waiting for it if needed."""
        import checkpointing  # pylint: disable=import-outside-toplevel

        if self._model is None:
            self._build_model()
        timeout = float(self.config.eval.ckpt_timeout)
        if not checkpointing.wait_for_checkpoint(self.workdir, ckpt, 0.0):
            logging.info('Waiting up to %.0f s for checkpoint %d in %s.', timeout, ckpt,
                         checkpointing.snapshot_dir(self.workdir))
            if not checkpointing.wait_for_checkpoint(self.workdir, ckpt, timeout):
                raise UserError(
                    f'Checkpoint {checkpointing.checkpoint_path(self.workdir, ckpt)} did not '
                    f'appear within eval.ckpt_timeout={timeout:g} s; available: '
                    f'{checkpointing.list_checkpoints(self.workdir) or "none"}. Set '
                    '--config.eval.begin_ckpt/end_ckpt to available numbers, or raise '
                    '--config.eval.ckpt_timeout to wait for a running training.')
        state = checkpointing.restore_checkpoint(self.workdir, ckpt, self._template)
        logging.info('Restored checkpoint %d (step %d).', ckpt, int(state.step))
        return {'params': state.ema_params}

    # --- data -----------------------------------------------------------------------
    def _batches(self, split: str) -> Callable[[], Iterable[Batch]]:
        def make():
            return (tuple(b) for b in datasets.get_eval_iterator(self.config, split))
        return make

    def _save_meta(self) -> None:
        if self.host == 0:  # files shared by all hosts are written by host 0 only
            write_json(os.path.join(self.eval_dir, META_FILE), self.meta)

    def _update_metrics(self, ckpt: int, values: Mapping[str, Any]) -> Dict[str, Any]:
        if self.host != 0:
            return dict(values)
        return update_metrics(self.eval_dir, ckpt, values)

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
        logging.info('Checkpoint %d: %s', ckpt, json.dumps(entry, sort_keys=True))
        return entry

    def _gather_and_check(self, store, tag, own, split, repeats) -> Results:
        results = store.gather(tag, own, self.num_hosts, self._gather_timeout())
        check_complete(results, datasets.split_size(self.config, split), repeats, tag)
        return results

    def _gather_timeout(self) -> float:
        return max(600.0, float(self.config.eval.ckpt_timeout))

    def _loss_phase(self, ckpt, variables, store) -> Dict[str, Any]:
        import losses  # pylint: disable=import-outside-toplevel

        t = self.config.training
        if 'loss' not in self._fns:
            core = losses.get_core_loss_fn(
                self.sde, reduce_mean=bool(t.reduce_mean), continuous=bool(t.continuous),
                likelihood_weighting=bool(t.likelihood_weighting),
                importance_weighting=bool(t.importance_weighting), eps=float(t.eps))
            self._fns['loss'] = get_loss_batch_fn(core, self.score_builder, self.data)
        self._position(ckpt, 'loss')
        start = time.time()
        own = evaluate_loss(self._fns['loss'], variables, self._batches('test')(),
                            base_key=phase_key(self.config.seed, PHASE_LOSS), ckpt=ckpt,
                            store=store, num_examples=datasets.split_size(self.config, 'test'),
                            hook=self._hook(ckpt))
        results = self._gather_and_check(store, 'loss', own, 'test', 1)
        logging.info('ckpt %d: eval loss over %d test examples in %.1f s.', ckpt,
                     len(results['index']), time.time() - start)
        return self._update_metrics(ckpt,
                              {'loss': float(np.mean(_sorted(results)['loss'], dtype=np.float64))})

    def _likelihood_phase(self, ckpt, variables, store) -> Dict[str, Any]:
        e = self.config.eval
        split = str(e.bpd_dataset).lower()
        if 'bpd' not in self._fns:
            dequantizer, self._deq_variables = self._dequantizer()
            self._fns['bpd'] = get_likelihood_batch_fn(self.sde, self.score_builder, self.data,
                                                       self.opts, dequantizer)
        self._position(ckpt, 'bpd')
        start = time.time()
        own = evaluate_likelihood(
            self._fns['bpd'], variables, self._deq_variables, self._batches(split),
            base_key=phase_key(self.config.seed, PHASE_BPD), ckpt=ckpt,
            num_repeats=int(e.num_repeats), store=store,
            num_examples=datasets.split_size(self.config, split), hook=self._hook(ckpt),
            running_key='bpd' if self.opts.ode else 'bound_bpd')
        results = self._gather_and_check(store, 'bpd', own, split, int(e.num_repeats))
        metrics = likelihood_metrics(results)
        logging.info('ckpt %d: %s bits/dim over %d example evaluations in %.1f s: %s', ckpt,
                     split, metrics['num_examples'], time.time() - start, metrics)
        return self._update_metrics(ckpt, metrics)

    def _dequantizer(self) -> Tuple[Optional[Dequantizer], Any]:
        """The trained variational dequantizer (``eval.dequantizer``), else uniform."""
        import dequantizer  # pylint: disable=import-outside-toplevel

        if not self.config.eval.dequantizer or self.data.num_bins is None:
            return None, None
        return dequantizer.load_dequantizer(self.config, self.workdir)

    def _sampling_phase(self, ckpt, variables, store) -> Dict[str, Any]:
        import sampling  # pylint: disable=import-outside-toplevel

        e = self.config.eval
        host_batch = datasets.host_batch_size(int(e.batch_size), self.num_hosts,
                                              'eval.batch_size')
        rounds = -(-int(e.num_samples) // int(e.batch_size))
        if 'sample' not in self._fns:
            fn = sampling.get_sampling_fn(self.config, self.sde, (host_batch,) + self.data.shape,
                                          datasets.get_data_inverse_scaler(self.config))
            self._fns['sample'] = jax.jit(lambda v, rng: fn(rng, self.score_builder(v)))
        self._position(ckpt, 'samples')
        base = phase_key(self.config.seed, PHASE_SAMPLES)
        start, parts = time.time(), []
        for r in range(rounds):
            res = store.load('samples', r)
            if res is None:
                rng = jax.random.fold_in(round_key(base, ckpt, r), self.host)
                x, nfe = self._fns['sample'](variables, rng)
                res = {'samples': self.data.quantize(jax.device_get(x)),
                       'nfe': np.asarray(np.max(jax.device_get(nfe)), np.int64)}
                store.save('samples', r, res)
                self._hook(ckpt)('samples', r)
                logging.info('ckpt %d: sampling round %d/%d, NFE %d, %.1f s elapsed.', ckpt,
                             r + 1, rounds, int(res['nfe']), time.time() - start)
            parts.append(res['samples'])
        own = {'samples': np.concatenate(parts),
               'index': np.arange(rounds * host_batch) + self.host * rounds * host_batch}
        samples = store.gather('samples', own, self.num_hosts,
                               self._gather_timeout())['samples'][:int(e.num_samples)]
        values: Dict[str, Any] = {'num_samples': len(samples)}
        if self.host == 0:
            self._save_grid(store.folder, samples)
            values.update(self._sample_quality(store.folder, samples))
        return self._update_metrics(ckpt, values)

    def _save_grid(self, folder: str, samples: np.ndarray) -> None:
        path = os.path.join(folder, 'samples.png')
        if self.data.num_bins is not None:
            save_png(path, image_grid(self.data.levels_to_unit(samples[:NUM_GRID_SAMPLES])))
        elif samples.shape[-1] == 2:
            save_png(path, scatter_image(samples))
        else:
            logging.info('No picture of %d-dimensional vector samples.', samples.shape[-1])
            return
        logging.info('Saved %s.', path)

    def _sample_quality(self, folder: str, samples: np.ndarray) -> Dict[str, float]:
        """FID / IS / KID (DIGITS: the digits classifier), cached; {} if not available."""
        import evaluation  # pylint: disable=import-outside-toplevel

        if self.data.num_bins is None:
            logging.info('Sample-quality metrics need images; skipped for vector data.')
            return {}
        path = os.path.join(folder, 'sample_quality.json')
        cached = read_json(path, None)
        if cached is not None and cached.get('num_samples') == len(samples):
            return cached['metrics']
        start = time.time()
        try:
            metrics = evaluation.sample_quality(
                self.data.levels_to_unit(samples), self.config.data.dataset, self.workdir,
                self.config)
        except UserError as err:
            logging.warning('Skipping FID/IS/KID: %s', err)
            return {}
        metrics = {k: float(v) for k, v in metrics.items()}
        logging.info('Sample quality of %d samples in %.1f s: %s', len(samples),
                     time.time() - start, metrics)
        write_json(path, {'num_samples': len(samples), 'metrics': metrics})
        return metrics

def train_deq(config, workdir: str) -> Dict[str, float]:
    """``--mode train_deq``: trains the variational dequantizer (``dequantizer.py``)."""
    import dequantizer  # pylint: disable=import-outside-toplevel

    return dequantizer.train_deq(config, workdir)


def evaluate(config, workdir: str, eval_folder: str = 'eval',
             hook: Optional[Hook] = None) -> Dict[str, Any]:
    """``--mode eval``: evaluates checkpoints eval.begin_ckpt … eval.end_ckpt of ``workdir``.

    Writes ``W/<eval_folder>/metrics.json`` (see the module docstring) and returns its
    content. Restarting after a preemption continues where it stopped.
    """
    from configs.validation import validate_config  # pylint: disable=import-outside-toplevel

    validate_config(config)
    return Evaluator(config, workdir, eval_folder, hook).run()
