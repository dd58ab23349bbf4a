"""The probability-flow ODE as an encoder (Score SDE §4.3): the ``--mode sample`` tasks
``encode``, ``interpolate`` and ``identifiability``.

The code of an example x is z = x(T) of dx/dt = f(x, t) − ½ g(t)² s_θ(x, t) integrated
from ε to T (``sampling.get_ode_encoder``); the same ODE from T to ε decodes it
(``sampling.get_ode_sampler`` with a given z, no denoising), so the map is invertible up
to the solver's tolerance. Its settings are the likelihood's — ``eval.eps``, ``eval.rtol``,
``eval.atol``, ``eval.ode_method``, ``eval.ode_time`` (every SDE, solver and time variable
that the likelihood supports) — so z is the x(T) of the ODE likelihood. Each host
splits its rows over its own devices as the likelihood's evaluation does; rounds are
spread over hosts, saved one by one and skipped on a restart, as the other sample tasks.

Inputs are the first test examples; images at one deterministic point of their bin:
(x̄ + ½)/K when the model was trained on dequantized data (``data.uniform_dequantization``),
x̄/(K − 1) otherwise, through the model's data scaler. One grey level is then 1/K (or
1/(K − 1)) in [0, 1] units.

* ``encode`` — ``sampling.num_samples`` images → ``encode.npz`` (``latents`` z,
  ``samples`` = decode(z) in [0, 1], ``inputs``, ``originals``); per image the round-trip
  error, max and RMS over its pixels, in [0, 1] units and in grey levels; the NFE of the
  encoding and decoding solves (the largest of each batch); log π(z) and the bits/dim of
  its prior term −log π(z) beside the bits/dim of the ODE likelihood of the same inputs
  (``likelihood.get_nll_fn`` with ``eval.hutchinson_type``; one point of the dequantized
  likelihood, not its average over u). ``encode.png``: rows of input | decode pairs.
* ``interpolate`` — ``sampling.num_samples`` pairs (test images 2i, 2i + 1): their codes
  joined spherically (:func:`slerp`) and linearly (:func:`lerp`) at
  :data:`INTERPOLATION_POINTS` values of λ ∈ [0, 1], decoded. ``interpolate.png`` /
  ``interpolate_linear.png``: one row per pair, original a | decoded path | original b;
  ``interpolate.npz``: ``spherical``, ``linear`` [n, P, …], ``lambdas``, ``originals``.
  Metrics: the norm of the code along each path relative to its ends' (a linear path
  through two nearly orthogonal codes passes at ~1/√2 of their norm, where the prior has
  almost no mass), the round-trip error at the ends.
* ``identifiability`` — the same ``sampling.num_samples`` images encoded by this work
  directory's snapshot and by the newest snapshot of ``sampling.reference_workdir`` (its
  own ``config.json``: any architecture or SDE of the same data). :func:`identifiability`:
  per-dimension correlation over images of the two codes, their relative distance, and
  the same for a shuffled pairing (the baseline of unrelated codes); a scatter PNG of the
  first :data:`SCATTER_DIMS` dimensions of every image's two codes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import checkpointing
import datasets
import likelihood
import pictures
import sample_runner
import sampling
import sde_lib
from datasets import DataSpec
from datasets.transforms import to_unit_interval
from devices import local_mesh, shard_rows
from diagnostics import load_run_config
from errors import UserError
from eval_quantities import nll_fn_of_config
from eval_store import ResultStore, check_fingerprint
from file_io import read_json, save_npz, write_json
from models import utils as mutils
from train_state import STREAM_SAMPLE, stream_key

Array = jax.Array
INTERPOLATION_POINTS = 9  # λ = 0, 1/8, …, 1 (the ends are the round trips of the pair)
SCATTER_DIMS = 100  # dimensions of each code in the identifiability scatter (Score SDE Fig. 7)
MIN_IDENTIFIABILITY_IMAGES = 3
# The likelihood's solver settings, which the stored codes depend on.
FLOW_FIELDS = ('eval.eps', 'eval.rtol', 'eval.atol', 'eval.ode_method', 'eval.ode_time')
FINGERPRINT_FIELDS = sample_runner.FINGERPRINT_FIELDS + FLOW_FIELDS + ('eval.hutchinson_type',)


# --------------------------------------------------------------------------- the maps
@dataclasses.dataclass(frozen=True)
class Codec:
    """encode(score_fn, y) -> (z, nfe) and decode(score_fn, z) -> (y, nfe) on model-space
    batches, nfe the largest of the batch; both traceable inside a caller's ``jax.jit``."""

    encode: Callable[[Callable, Array], Any]
    decode: Callable[[Callable, Array], Any]


def get_codec(sde: sde_lib.SDE, config: ml_collections.ConfigDict) -> Codec:
    """The probability-flow encoder and decoder of ``sde`` with the likelihood's settings."""
    e = config.eval
    args = (float(e.rtol), float(e.atol), str(e.ode_method), float(e.eps))
    encoder = sampling.get_ode_encoder(sde, *args, ode_time=str(e.ode_time))
    # The sampler's shape only sizes its own prior draws; here z is always given.
    decoder = sampling.get_ode_sampler(sde, None, *args, denoise=False, ode_time=str(e.ode_time))
    return Codec(encoder, lambda score_fn, z: decoder(None, score_fn, z))


def _flat(z: Array) -> Array:
    return jnp.reshape(z, (z.shape[0], -1))


def slerp(z0: Array, z1: Array, lam) -> Array:
    """Spherical interpolation per example: sin((1−λ)θ)/sin θ · z0 + sin(λθ)/sin θ · z1
    with θ the angle between z0 and z1 (linear where θ ≈ 0)."""
    a, b = _flat(z0), _flat(z1)
    cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(theta)
    small = sin < 1e-6
    safe = jnp.where(small, 1.0, sin)
    w0 = jnp.where(small, 1.0 - lam, jnp.sin((1.0 - lam) * theta) / safe)
    w1 = jnp.where(small, lam, jnp.sin(lam * theta) / safe)
    return jnp.reshape(w0[:, None] * a + w1[:, None] * b, z0.shape)


def lerp(z0: Array, z1: Array, lam) -> Array:
    return (1.0 - lam) * z0 + lam * z1


# --------------------------------------------------------------------------- statistics
def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation over rows (images) of each column (dimension) of a and b [N, D]."""
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt(np.sum(a**2, 0) * np.sum(b**2, 0))
    return np.sum(a * b, 0) / np.maximum(den, np.finfo(np.float64).tiny)


def relative_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a_i − b_i‖ / √(½(‖a_i‖² + ‖b_i‖²)) per row: 0 for equal codes, ≈ √2 for
    independent codes of equal size."""
    rms = np.sqrt(0.5 * (np.sum(a**2, -1) + np.sum(b**2, -1)))
    return np.linalg.norm(a - b, axis=-1) / np.maximum(rms, np.finfo(np.float64).tiny)


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of range(n) without a fixed point (n ≥ 2): a random cycle."""
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def identifiability(z: np.ndarray, z_ref: np.ndarray, seed: int = 0) -> Dict[str, float]:
    """How close two models' codes of the same images are [N, ...]: the mean (and the
    smallest) per-dimension correlation over images, the mean relative distance; and the
    same with the reference codes of other images (:func:`derangement`) as the baseline."""
    a = np.reshape(z, (len(z), -1)).astype(np.float64)
    b = np.reshape(z_ref, (len(z_ref), -1)).astype(np.float64)
    shuffled = b[derangement(len(b), seed)]
    out = {}
    for prefix, other in (('', b), ('shuffled_', shuffled)):
        corr = correlations(a, other)
        out[f'{prefix}correlation_mean'] = float(np.mean(corr))
        out[f'{prefix}correlation_min'] = float(np.min(corr))
        out[f'{prefix}relative_distance'] = float(np.mean(relative_distances(a, other)))
    return out


def round_trip_errors(x: np.ndarray, x_back: np.ndarray, level: float) -> Dict[str, np.ndarray]:
    """Per image: max and RMS of |x_back − x| over its pixels, in x's units and in levels."""
    d = np.reshape(np.abs(x_back - x), (len(x), -1)).astype(np.float64)
    err = {'max': np.max(d, -1), 'rms': np.sqrt(np.mean(d**2, -1))}
    return {**err, **{f'{k}_levels': v / level for k, v in err.items()}}


# --------------------------------------------------------------------------- inputs
def encoder_input(data: DataSpec, originals: np.ndarray) -> np.ndarray:
    """Test examples in [0, 1]: the bin centre (x̄ + ½)/K for models trained on dequantized
    levels, x̄/(K − 1) otherwise; vectors unchanged."""
    if data.num_bins is None:
        return np.asarray(originals, np.float32)
    if data.train_dequantized:
        return to_unit_interval(np.asarray(originals), data.num_bins, np.float32(0.5))
    return data.levels_to_unit(originals)


def level_size(data: DataSpec) -> float:
    """One grey level in [0, 1] units (1 for vectors: their errors stay in data units)."""
    if data.num_bins is None:
        return 1.0
    return 1.0 / (data.num_bins if data.train_dequantized else data.num_bins - 1)


def check_task(config: ml_collections.ConfigDict) -> None:
    """One line on bad input of an encoder task, before any work."""
    s = config.sampling
    if s.task != 'identifiability':
        return
    if int(s.num_samples) < MIN_IDENTIFIABILITY_IMAGES:
        raise UserError(
            f'config.sampling.num_samples={s.num_samples}: identifiability correlates codes '
            f'over images; use at least {MIN_IDENTIFIABILITY_IMAGES} (e.g. 64)'
        )
    reference_config(config)


def reference_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The checked config of ``sampling.reference_workdir``: it has one, a snapshot, and
    data of the same dataset and shape."""
    path = str(config.sampling.reference_workdir)
    if not path:
        raise UserError(
            "sampling.task='identifiability' compares with a second model: pass "
            '--config.sampling.reference_workdir=W2, a trained work directory of the same data'
        )
    if read_json(os.path.join(path, 'config.json')) is None:
        raise UserError(
            f'config.sampling.reference_workdir={path!r} has no config.json; pass the work '
            'directory of a trained run (main.py --mode train writes it)'
        )
    if not checkpointing.list_checkpoints(path):
        raise UserError(
            f'config.sampling.reference_workdir={path!r} holds no snapshot in '
            f'{checkpointing.snapshot_dir(path)}; train it first'
        )
    ref = load_run_config(path)
    mine = (config.data.dataset, datasets.data_shape(config))
    theirs = (ref.data.dataset, datasets.data_shape(ref))
    if mine != theirs:
        raise UserError(
            f'config.sampling.reference_workdir={path!r} models {theirs[0]} {theirs[1]}, this '
            f'run {mine[0]} {mine[1]}; the codes of one image need models of the same data'
        )
    return ref


# --------------------------------------------------------------------------- the runner
@dataclasses.dataclass(frozen=True)
class Reference:
    """The second model of ``identifiability``: its config, SDE, network and snapshot."""

    config: ml_collections.ConfigDict
    sde: sde_lib.SDE
    model: Any
    variables: Any
    ckpt: int

    @classmethod
    def load(cls, config: ml_collections.ConfigDict) -> Reference:
        ref = reference_config(config)
        path = str(config.sampling.reference_workdir)
        ckpt = checkpointing.list_checkpoints(path)[-1]
        model, variables = sample_runner.restore_score_model(ref, path, ckpt)
        return cls(ref, sde_lib.get_sde(ref), model, variables, ckpt)

    def score_fn(self, variables):
        continuous = bool(self.config.training.continuous)
        return mutils.get_score_fn(self.sde, self.model, variables, continuous=continuous)


class EncodingRunner(sample_runner.SampleRunner):
    """``--mode sample`` for :data:`sampling.ENCODER_TASKS` (module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *args, **kwargs):
        check_task(config)
        super().__init__(config, workdir, *args, **kwargs)
        self.reference = Reference.load(config) if self.task == 'identifiability' else None
        self.inverse = datasets.get_data_inverse_scaler(config)

    def conditions(self) -> Dict[str, np.ndarray]:
        """``originals`` (test examples; ``interpolate``: pairs [n, 2, …]) and ``labels``."""
        pairs = self.task == 'interpolate'
        n = int(self.config.sampling.num_samples) * (2 if pairs else 1)
        test = datasets.get_shard(self.config, 'test', process_index=0, process_count=1)
        n = min(n, len(test) - (len(test) % 2 if pairs else 0))
        if n < int(self.config.sampling.num_samples) * (2 if pairs else 1):
            logging.info('The test split has %d examples; using %d.', len(test), n)
        out = {'originals': np.asarray(test.data[:n])}
        if test.labels is not None:
            out['labels'] = np.asarray(test.labels[:n], np.int32)
        if pairs:
            out = {k: v.reshape((-1, 2) + v.shape[1:]) for k, v in out.items()}
        return out

    # --- per-round functions: jit (variables, reference variables, key, x, index) -> dict
    def _round_fn(self) -> Callable:
        build = {
            'encode': self._encode_fn,
            'interpolate': self._interpolate_fn,
            'identifiability': self._identifiability_fn,
        }
        return jax.jit(build[self.task]())

    def _encode_fn(self) -> Callable:
        codec, e = get_codec(self.sde, self.config), self.config.eval

        def fn(v, rv, key, x, index):
            score = self.score_fn(v)
            y = self.data.scaler(x)
            z, nfe_enc = codec.encode(score, y)
            y_back, nfe_dec = codec.decode(score, z)
            nll_fn = nll_fn_of_config(self.sde, score, e)
            nll, _, nfe_nll = nll_fn(jax.vmap(lambda i: jax.random.fold_in(key, i))(index), y)
            full = lambda a: jnp.broadcast_to(a, index.shape).astype(jnp.float32)  # noqa: E731
            return {
                'latents': z,
                'samples': self.inverse(y_back),
                'nll': nll,
                'prior_logp': self.sde.prior_logp(z),
                'nfe_encode': full(nfe_enc),
                'nfe_decode': full(nfe_dec),
                'nfe_nll': full(nfe_nll),
            }

        return fn

    def _interpolate_fn(self) -> Callable:
        codec = get_codec(self.sde, self.config)
        lambdas = jnp.linspace(0.0, 1.0, INTERPOLATION_POINTS)

        def fn(v, rv, key, x, index):
            score = self.score_fn(v)
            z, nfe_enc = codec.encode(score, self.data.scaler(jnp.concatenate([x[:, 0], x[:, 1]])))
            za, zb = jnp.split(z, 2)
            out = {'z_a': za, 'z_b': zb, 'nfe_encode': jnp.full(index.shape, nfe_enc, jnp.float32)}
            for name, path in (('spherical', slerp), ('linear', lerp)):
                zs = jax.vmap(lambda lam, path=path: path(za, zb, lam))(lambdas)
                xs, nfe = jax.lax.map(lambda zi: codec.decode(score, zi), zs)
                out[name] = jnp.swapaxes(self.inverse(xs), 0, 1)
                out[f'nfe_decode_{name}'] = jnp.full(index.shape, jnp.max(nfe), jnp.float32)
            return out

        return fn

    def _identifiability_fn(self) -> Callable:
        codec = get_codec(self.sde, self.config)
        ref = self.reference
        ref_codec, ref_scaler = (
            get_codec(ref.sde, self.config),
            datasets.get_data_scaler(ref.config),
        )

        def fn(v, rv, key, x, index):
            z, nfe = codec.encode(self.score_fn(v), self.data.scaler(x))
            z_ref, nfe_ref = ref_codec.encode(ref.score_fn(rv), ref_scaler(x))
            full = lambda a: jnp.full(index.shape, a, jnp.float32)  # noqa: E731
            return {
                'z': z,
                'z_ref': z_ref,
                'nfe_encode': full(nfe),
                'nfe_encode_ref': full(nfe_ref),
            }

        return fn

    # --- the run ------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        cond = self.conditions()
        n, b = len(cond['originals']), self._host_batch()
        rounds = -(-n // b)
        task_dir = os.path.join(self.folder, self.task)
        extra = {'score_ckpt': self.ckpt, 'hosts': self.num_hosts}
        if self.reference is not None:
            extra['reference_ckpt'] = self.reference.ckpt
        check_fingerprint(task_dir, self.config, FINGERPRINT_FIELDS, self.host == 0, extra)
        store = ResultStore(task_dir, 0)
        self._encoder_rounds(store, cond['originals'], rounds)
        if self.host != 0:
            return {}
        parts = [self._wait(store, r) for r in range(rounds)]
        results = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
        return self._finish_task(cond, results)

    def _encoder_rounds(self, store: ResultStore, originals: np.ndarray, rounds: int) -> None:
        """This host's rounds (r ≡ host mod hosts), rows over this host's devices."""
        todo = [
            r for r in range(self.host, rounds, self.num_hosts) if store.load(self.task, r) is None
        ]
        if not todo:
            return
        fn, mesh, b = self._round_fn(), local_mesh(), self._host_batch()
        key = jax.random.fold_in(stream_key(self.config.seed, STREAM_SAMPLE), self.ckpt)
        key = jax.random.fold_in(key, 100 + sampling.SAMPLING_TASKS.index(self.task))
        rv = self.reference.variables if self.reference is not None else None
        start = time.time()
        for i, r in enumerate(todo):
            index = np.minimum(np.arange(r * b, (r + 1) * b), len(originals) - 1)
            x = encoder_input(self.data, originals[index])
            res = fn(self.variables, rv, key, shard_rows(x, mesh), shard_rows(index, mesh))
            store.save(self.task, r, {k: np.asarray(jax.device_get(a)) for k, a in res.items()})
            elapsed = time.time() - start
            logging.info(
                '%s: round %d/%d done (%.1f s elapsed, ETA %.0f s).',
                self.task,
                r + 1,
                rounds,
                elapsed,
                elapsed / (i + 1) * (len(todo) - i - 1),
            )

    def _finish_task(self, cond: Dict[str, np.ndarray], res: Dict[str, np.ndarray]):
        finish = {
            'encode': self._finish_encode,
            'interpolate': self._finish_interpolate,
            'identifiability': self._finish_identifiability,
        }
        inputs = encoder_input(self.data, cond['originals'])
        metrics, arrays = finish[self.task](inputs, res)
        save_npz(os.path.join(self.folder, f'{self.task}.npz'), **cond, **arrays)
        path = os.path.join(self.folder, sample_runner.METRICS_FILE)
        everything = read_json(path, {})
        everything[self.task] = metrics
        write_json(path, everything)
        logging.info('%s metrics: %s', self.task, metrics)
        return metrics

    def _finish_encode(self, inputs, res):
        err = round_trip_errors(inputs, res['samples'], level_size(self.data))
        bpd = lambda nll: likelihood.bpd(nll, self.data.dim, self.data.num_bins, self.data.scale)  # noqa: E731
        prior_std = float(self.sde.prior_std)
        metrics = {
            'num_images': len(inputs),
            **{f'round_trip_{k}_max': float(np.max(v)) for k, v in err.items()},
            **{f'round_trip_{k}_mean': float(np.mean(v)) for k, v in err.items()},
            'nfe_encode': int(np.max(res['nfe_encode'])),
            'nfe_decode': int(np.max(res['nfe_decode'])),
            'nfe_nll_mean': float(np.mean(res['nfe_nll'])),
            'prior_logp_mean': float(np.mean(res['prior_logp'])),
            'prior_logp_of_prior_draws': -0.5
            * self.data.dim
            * (math.log(2 * math.pi * prior_std**2) + 1),
            'bpd_prior_term': float(np.mean(bpd(-res['prior_logp'].astype(np.float64)))),
            'bpd_ode': float(np.mean(bpd(res['nll'].astype(np.float64)))),
            'latent_std': float(np.std(res['latents'])),
        }
        arrays = {
            'inputs': inputs,
            'latents': res['latents'],
            'samples': res['samples'],
            'nll': res['nll'],
            'prior_logp': res['prior_logp'],
            **{f'round_trip_{k}': v for k, v in err.items()},
        }
        self._save_picture(np.stack([inputs, res['samples']], 1), 'encode')
        return metrics, arrays

    def _finish_interpolate(self, inputs, res):
        lambdas = np.linspace(0.0, 1.0, INTERPOLATION_POINTS)
        level = level_size(self.data)
        metrics: Dict[str, Any] = {'num_pairs': len(inputs), 'lambdas': lambdas.tolist()}
        ends = np.stack([res['spherical'][:, 0], res['spherical'][:, -1]], 1)
        err = round_trip_errors(
            inputs.reshape((-1,) + self.data.shape), ends.reshape((-1,) + self.data.shape), level
        )
        metrics['round_trip_max_levels_max'] = float(np.max(err['max_levels']))
        za, zb = res['z_a'].astype(np.float64), res['z_b'].astype(np.float64)
        ends_norm = 0.5 * (
            np.linalg.norm(_np_flat(za), axis=-1) + np.linalg.norm(_np_flat(zb), axis=-1)
        )
        for name, path in (('spherical', slerp), ('linear', lerp)):
            norms = [
                np.linalg.norm(_np_flat(np.asarray(path(za, zb, lam))), axis=-1) / ends_norm
                for lam in lambdas
            ]
            metrics[f'{name}_norm_ratio_midpoint'] = float(np.mean(norms[len(lambdas) // 2]))
            metrics[f'nfe_decode_{name}'] = int(np.max(res[f'nfe_decode_{name}']))
            rows = np.concatenate([inputs[:, :1], res[name], inputs[:, 1:]], 1)
            self._save_picture(rows, 'interpolate' if name == 'spherical' else 'interpolate_linear')
        metrics['nfe_encode'] = int(np.max(res['nfe_encode']))
        arrays = {k: res[k] for k in ('spherical', 'linear', 'z_a', 'z_b')}
        return metrics, {**arrays, 'lambdas': lambdas}

    def _finish_identifiability(self, inputs, res):
        ref = self.reference
        metrics = identifiability(res['z'], res['z_ref'], int(self.config.seed))
        metrics.update(
            num_images=len(inputs),
            reference_workdir=str(self.config.sampling.reference_workdir),
            reference_ckpt=ref.ckpt,
            reference_sde=str(ref.config.training.sde),
            reference_model=f'{ref.config.model.name} nf={ref.config.model.nf}',
            nfe_encode=int(np.max(res['nfe_encode'])),
            nfe_encode_reference=int(np.max(res['nfe_encode_ref'])),
        )
        a = _np_flat(res['z'])[:, :SCATTER_DIMS]
        b = _np_flat(res['z_ref'])[:, :SCATTER_DIMS]
        shuffled = b[derangement(len(b), int(self.config.seed))]
        pictures.scatter_plot(
            os.path.join(self.folder, 'identifiability.png'),
            {'shuffled pairs (baseline)': (a, shuffled), 'same image': (a, b)},
            'code of this model',
            f'code of {os.path.basename(os.path.normpath(metrics["reference_workdir"]))}',
            f'first {a.shape[1]} dimensions, {len(a)} images: '
            f'corr {metrics["correlation_mean"]:.2f} vs {metrics["shuffled_correlation_mean"]:.2f}',
        )
        return metrics, {'inputs': inputs, 'latents': res['z'], 'latents_reference': res['z_ref']}

    def _save_picture(self, rows: np.ndarray, name: str) -> None:
        """Rows of images [n, k, H, W, C] as a grid of :data:`sample_runner.GRID_ROWS` rows;
        vectors as the scatter of every point."""
        if rows.ndim == 2 + len(self.data.shape) and len(self.data.shape) == 3:
            shown = rows[: sample_runner.GRID_ROWS]
            picture = pictures.image_grid(
                shown.reshape((-1,) + self.data.shape), ncol=rows.shape[1]
            )
        else:
            picture = pictures.sample_picture(rows.reshape((-1,) + self.data.shape))
        if picture is not None:
            pictures.save_png(os.path.join(self.folder, f'{name}.png'), picture)


def _np_flat(z: np.ndarray) -> np.ndarray:
    return np.reshape(np.asarray(z), (len(z), -1))
