"""Resumable per-example results of evaluation: files, passes, aggregation, metrics.json.

An evaluation phase is a pass (or ``num_repeats`` passes) over a data split in a fixed
order. :func:`run_pass` computes one batch at a time and saves its per-example results as
``<folder>/<tag>_b<batch>_h<host>.npz`` (:class:`ResultStore`); a restarted pass loads
every batch whose file exists and computes only the rest, so a preempted evaluation ends
with the same numbers as an uninterrupted one. Hosts exchange their results through
summary files in the shared work directory (:meth:`ResultStore.gather`).

``<eval_dir>/eval_meta.json`` (:func:`check_fingerprint`) records the settings that the
per-batch files depend on (the fields the caller names: ``eval_quantities.fingerprint_fields``
for ``--mode eval``): a restart with other settings is refused instead of mixing results.
``<eval_dir>/metrics.json`` (:func:`update_metrics`) holds one entry per checkpoint with
the scalars of the CLI contract (README, Usage); each entry is also written beside the
checkpoint's results (``ckpt_<n>/metrics_entry.json``), from which a ``metrics.json``
that is not valid JSON is rebuilt (:func:`read_metrics`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

import progress as progress_lib
from errors import UserError
from file_io import exists, listdir, load_npz, makedirs, read_json, rename, save_npz, write_json

Batch = Tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, mask [B] bool, index [B] int)
Results = Dict[str, np.ndarray]

META_FILE = 'eval_meta.json'
METRICS_FILE = 'metrics.json'
ENTRY_FILE = 'metrics_entry.json'  # a checkpoint's entry of metrics.json, in its ckpt_<n>/


# --------------------------------------------------------------------------- files
class ResultStore:
    """Per-batch results of one checkpoint: ``<folder>/<tag>_b<batch>_h<host>.npz``."""

    def __init__(self, folder: str, host: int = 0):
        self.folder = folder
        self.host = host
        makedirs(folder)

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
                    raise UserError(
                        f'Host {host} did not write {path} within {timeout_s:.0f}'
                        ' s; check that every host runs the evaluation.'
                    )
                time.sleep(1.0)
            parts.append(part)
        return concat_results(parts)


def concat_results(parts: List[Results]) -> Results:
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- progress
class Progress(progress_lib.Task):
    """The progress lines of a pass (:class:`progress_lib.Task`: at least every ``every_s``
    seconds, within a batch too, with the ETA), with the running mean of ``key``."""

    def __init__(
        self,
        what: str,
        total: int,
        key: Optional[str] = None,
        every_s: Optional[float] = None,
        unit: str = 'examples',
    ):
        super().__init__(what, total, unit, every_s)
        self.key = key
        self.sum = 0.0

    def update(self, res: Results, computed: bool) -> None:
        num = len(res['index'])
        if self.key in res:
            self.sum += float(np.sum(res[self.key], dtype=np.float64))
        mean = f', {self.key} {self.sum / max(self.done + num, 1):.4f}' if self.key else ''
        self.advance(num, computed, mean)


# --------------------------------------------------------------------------- passes
BatchFn = Callable[[np.ndarray, np.ndarray], Mapping[str, jax.Array]]
Hook = Callable[[str, int], None]


def run_pass(
    batch_fn: BatchFn,
    batches: Iterable[Batch],
    store: ResultStore,
    tag: str,
    progress: Optional[Progress] = None,
    hook: Optional[Hook] = None,
) -> Results:
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
            mask = np.asarray(mask, bool)
            with progress.part(int(mask.sum())) if progress else contextlib.nullcontext():
                out = batch_fn(x, index)
                res = {k: np.asarray(v)[mask] for k, v in out.items()}
            res['index'] = np.asarray(index)[mask].astype(np.int64)
            store.save(tag, b, res)
            if hook is not None:
                hook(tag, b)
        parts.append(res)
        if progress is not None:
            progress.update(res, computed)
    return concat_results(parts)


# --------------------------------------------------------------------------- metrics
def sorted_results(results: Results) -> Results:
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


def per_image_means(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Mean of each image's values over its repeats, in image-index order, float64."""
    index = np.asarray(index, np.int64)
    images, inverse = np.unique(index, return_inverse=True)
    sums = np.bincount(inverse, np.asarray(values, np.float64), minlength=len(images))
    return sums / np.bincount(inverse, minlength=len(images))


def mean_and_stderr_over_images(values: np.ndarray, index: np.ndarray) -> Tuple[float, float]:
    """Mean and standard error of per-example values seen in several passes.

    The passes (``eval.num_repeats``) see the same images with new dequantization noise,
    Hutchinson probes and times, so they are not independent samples: with v̄_i the mean
    of image i over its R repeats and n images, the estimate is mean(v̄) (every image has
    R values, so it equals the mean of all values) and its standard error
    std(v̄, ddof 1)/√n, which stays put as R grows when the repeats agree and shrinks to
    that of the images' own spread when they do not (not std/√(nR), which treats the R
    passes as fresh images and understates it by up to √R).
    """
    return mean_and_stderr(per_image_means(values, index))


def check_complete(results: Results, num_examples: int, num_repeats: int, what: str) -> None:
    """Every example evaluated exactly once per repeat, or a clear error."""
    seen = len(results['index'])
    unique = len(np.unique(results['index'] + num_examples * results.get('repeat', 0)))
    if seen != num_examples * num_repeats or unique != seen:
        raise RuntimeError(
            f'{what}: evaluated {seen} examples ({unique} distinct), expected '
            f'{num_examples} × {num_repeats}'
        )


# --------------------------------------------------------------------------- meta
def config_fingerprint(config, fields: Sequence[str]) -> Dict[str, Any]:
    """The config fields named by ``fields`` (a section name takes all its fields), as
    flat JSON-comparable values ``{'eval.rtol': 1e-05, ...}``."""
    flat: Dict[str, Any] = {}

    def walk(prefix, value):
        if hasattr(value, 'items'):
            for k, v in value.items():
                walk(f'{prefix}.{k}' if prefix else k, v)
        else:
            flat[prefix] = value

    walk('', config)
    keep = {k: v for k, v in flat.items() if any(k == f or k.startswith(f + '.') for f in fields)}
    return json.loads(json.dumps(keep, default=str))


def check_fingerprint(
    eval_dir: str,
    config,
    fields: Sequence[str],
    write: bool = True,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Loads (or, if ``write``, creates) the meta-checkpoint of ``eval_dir``; a setting
    that its stored results were made with and that differs now (a config field of
    ``fields``, or a key of ``extra``) raises ``UserError``.

    Only settings recorded on both sides are compared: a field that a newer quantity
    depends on is recorded when it first appears (no stored result can depend on it yet),
    and a field no longer listed no longer matters.
    """
    path = os.path.join(eval_dir, META_FILE)
    fingerprint = dict(config_fingerprint(config, fields), **(extra or {}))
    try:
        meta = read_json(path, None)
    except ValueError as e:  # cut short: without it the stored results cannot be checked
        raise UserError(
            f'{path} is not valid JSON ({e}); it records the settings of the results stored '
            'beside it. Move it away to reuse those results as they are with this config, or '
            'choose another results folder (--eval_folder, --sample_folder).'
        ) from None
    if meta is None:
        meta = {'fingerprint': fingerprint, 'position': None}
        if write:
            write_json(path, meta)
        return meta
    old = meta.get('fingerprint', {})
    changed = sorted(k for k in set(old) & set(fingerprint) if old[k] != fingerprint[k])
    if changed:
        raise UserError(
            f'{eval_dir} holds results made with other settings ({", ".join(changed[:5])}'
            f'{" …" if len(changed) > 5 else ""} changed); use another --eval_folder, or '
            'delete that folder to start over.'
        )
    if set(fingerprint) - set(old):
        meta['fingerprint'] = dict(old, **fingerprint)
        if write:
            write_json(path, meta)
    return meta


def json_scalar(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf become null (with a warning), numpy → Python."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        logging.warning('A metric is %s; written as null in %s.', value, METRICS_FILE)
        return None
    return value


def read_json_or_set_aside(path: str, default: Any = None) -> Any:
    """The JSON content of ``path`` (``default`` if missing). A file that is not valid JSON
    (cut short by a full disk, a copy, an editor) is renamed to ``<path>.broken-<time>``,
    kept for the user, with a warning, and ``default`` is returned: a result file that
    can be made again must not stop every later run."""
    try:
        return read_json(path, default)
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        aside = f'{path}.broken-{time.strftime("%Y%m%d-%H%M%S")}'
        rename(path, aside, overwrite=True)
        logging.warning('%s is not valid JSON (%s); moved it aside to %s.', path, e, aside)
        return default


def entry_path(eval_dir: str, ckpt: int) -> str:
    """``<eval_dir>/ckpt_<n>/metrics_entry.json``: checkpoint n's entry of metrics.json."""
    return os.path.join(eval_dir, f'ckpt_{int(ckpt)}', ENTRY_FILE)


def read_metrics(eval_dir: str) -> Dict[str, Any]:
    """The content of ``<eval_dir>/metrics.json`` ({} if none). One that is not valid JSON
    is moved aside (:func:`read_json_or_set_aside`) and rebuilt, as is a deleted one, from
    the per-checkpoint entries (:func:`entry_path`) written beside each checkpoint's results."""
    path = os.path.join(eval_dir, METRICS_FILE)
    existed = exists(path)
    metrics = read_json_or_set_aside(path, None)
    if metrics is not None:
        return metrics
    if existed or any(exists(entry_path(eval_dir, n)) for n in _checkpoint_folders(eval_dir)):
        return _rebuild_metrics(eval_dir, path)
    return {}


def _checkpoint_folders(eval_dir: str) -> List[int]:
    """The n of every ``ckpt_<n>`` folder of ``eval_dir``, ascending."""
    names = listdir(eval_dir) if exists(eval_dir) else []
    return sorted(int(n[5:]) for n in names if n.startswith('ckpt_') and n[5:].isdigit())


def _rebuild_metrics(eval_dir: str, path: str) -> Dict[str, Any]:
    metrics, without = {}, []
    for ckpt in _checkpoint_folders(eval_dir):
        entry = read_json_or_set_aside(entry_path(eval_dir, ckpt), None)
        if entry is None:
            without.append(ckpt)
        else:
            metrics[str(ckpt)] = entry
    write_json(path, metrics)
    logging.warning(
        'Rebuilt %s from the per-checkpoint entries (checkpoints %s)%s.',
        path,
        [int(c) for c in metrics] or 'none',
        f'; checkpoints {without} have none: rerun --mode eval over them with '
        '--config.eval.begin_ckpt/end_ckpt to restore theirs (their stored results are '
        'reused)'
        if without
        else '',
    )
    return metrics


def update_metrics(eval_dir: str, ckpt: int, values: Mapping[str, Any]) -> Dict[str, Any]:
    """Merges ``values`` into the entry of ``ckpt`` of metrics.json (atomic rewrite), and
    writes the entry beside the checkpoint's results (:func:`entry_path`)."""
    path = os.path.join(eval_dir, METRICS_FILE)
    metrics = read_metrics(eval_dir)
    entry = metrics.setdefault(str(ckpt), {})
    entry.update({k: json_scalar(v) for k, v in values.items()})
    write_json(entry_path(eval_dir, ckpt), entry)
    write_json(path, metrics)
    return entry
