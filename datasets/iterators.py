"""Batches of host shards: resumable training order and exact-once evaluation passes.

- :func:`get_train_iterator`: a pure function of (seed, step, host), so training resumes
  exactly, data order included, from any step. Per host and epoch a fixed permutation
  ``np.random.default_rng([seed, host, epoch])``; the batch of a step is a slice of it.
  Images map to [0, 1] as x̄/(K−1) (the original code) or, with
  ``data.uniform_dequantization``, as (x̄ + u)/K with u ~ U[0, 1)^D; random horizontal
  flips with ``data.random_flip``; vectors are returned unchanged. ``with_labels=True``
  adds the labels of the same rows (:func:`train_labels`).
- :func:`get_eval_iterator`: every example of a split exactly once per pass, in a fixed
  order, the last batch padded, with a mask, each example's global index (so evaluators
  can draw per-example noise from ``fold_in(key, index)``, independent of batching and
  hosts) and its label (−1 for padding and for data without labels).
"""

from __future__ import annotations

import functools
from typing import Iterator

import ml_collections
import numpy as np

from datasets.base import EvalBatch, Shard, get_shard, has_labels, hosts, no_labels_message
from datasets.transforms import to_unit_interval
from errors import UserError


def host_batch_size(batch_size: int, process_count: int, field: str) -> int:
    """Per-host part of a global batch (validate_config checks the divisibility)."""
    if batch_size % process_count:
        raise UserError(
            f'config.{field}={batch_size} is not divisible by the '
            f'{process_count} hosts; use a multiple of {process_count}'
        )
    return batch_size // process_count


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, process_index: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, process_index, epoch]).permutation(n)


def _epoch_and_index(n: int, step: int, batch_size: int) -> tuple[int, int]:
    """(epoch, batch within the epoch) of ``step``; an epoch is ⌊n / batch_size⌋ batches."""
    if batch_size > n:
        raise UserError(
            f'the per-host training batch ({batch_size}) is larger than this '
            f"host's {n} training examples; lower --config.training.batch_size"
        )
    return divmod(step, n // batch_size)


def _batch_rows(
    config: ml_collections.ConfigDict,
    shard: Shard,
    step: int,
    batch_size: int,
    process_index: int = 0,
) -> np.ndarray:
    """Rows of ``shard`` in the batch of ``step``, ascending: a slice of the epoch's
    permutation ``default_rng([seed, host, epoch])``."""
    epoch, index = _epoch_and_index(len(shard), step, batch_size)
    order = _epoch_permutation(config.seed, process_index, epoch, len(shard))
    return np.sort(order[index * batch_size : (index + 1) * batch_size])


def train_batch(
    config: ml_collections.ConfigDict,
    shard: Shard,
    step: int,
    batch_size: int,
    process_index: int = 0,
) -> np.ndarray:
    """The host's training batch of ``step``: float32 ``[batch_size, ...]`` in [0, 1]
    (images) or the vectors; a pure function of (config.seed, step, process_index)."""
    epoch, index = _epoch_and_index(len(shard), step, batch_size)
    x = shard.data[_batch_rows(config, shard, step, batch_size, process_index)]
    if x.ndim == 2:
        return x.astype(np.float32, copy=False)
    rng = np.random.default_rng([config.seed, process_index, epoch, index, 1])
    if config.data.random_flip:
        flip = rng.random(batch_size) < 0.5
        x[flip] = x[flip, :, ::-1]
    u = rng.random(x.shape, dtype=np.float32) if config.data.uniform_dequantization else None
    return to_unit_interval(x, config.data.num_bins, u)


def train_labels(
    config: ml_collections.ConfigDict,
    shard: Shard,
    step: int,
    batch_size: int,
    process_index: int = 0,
) -> np.ndarray:
    """int32 ``[batch_size]``: the labels of the rows of ``train_batch`` for ``step``, in
    the same order (flips keep labels)."""
    if shard.labels is None:
        raise UserError(no_labels_message(config))
    return shard.labels[_batch_rows(config, shard, step, batch_size, process_index)]


def get_train_iterator(
    config: ml_collections.ConfigDict,
    start_step: int = 0,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    with_labels: bool = False,
) -> Iterator[np.ndarray] | Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless host-local training batches, ``n_jitted_steps`` steps at a time.

    Yields float32 ``[n_jitted_steps, batch_size / process_count, ...]`` for steps
    ``start_step + k·n_jitted_steps …``; the batch of every step depends only on
    (config.seed, step, host), so resuming at ``start_step`` reproduces the run. With
    ``with_labels``, tuples (x, y) with the same x and y int32 ``[n_jitted_steps, B]`` the
    labels of its rows; :class:`UserError` at once when the dataset has no labels.
    """
    if with_labels and not has_labels(config):
        raise UserError(no_labels_message(config))
    return _train_iterator(config, start_step, process_index, process_count, with_labels)


def _train_iterator(
    config: ml_collections.ConfigDict,
    start_step: int,
    process_index: int | None,
    process_count: int | None,
    with_labels: bool,
) -> Iterator:
    process_index, process_count = hosts(process_index, process_count)
    shard = get_shard(config, 'train', process_index=process_index, process_count=process_count)
    batch_size = host_batch_size(config.training.batch_size, process_count, 'training.batch_size')
    jitted = config.training.n_jitted_steps
    step = start_step
    while True:
        steps = range(step, step + jitted)
        x = np.stack([train_batch(config, shard, s, batch_size, process_index) for s in steps])
        if with_labels:
            y = [train_labels(config, shard, s, batch_size, process_index) for s in steps]
            yield x, np.stack(y)
        else:
            yield x
        step += jitted


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Batches per pass over a split; the same on every host (the largest shard decides)."""
    largest_shard = -(-num_examples // process_count)
    return -(-largest_shard // (batch_size // process_count))


def get_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str = 'test',
    batch_size: int | None = None,
    start_batch: int = 0,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[EvalBatch]:
    """One pass over ``split`` in a fixed order: host-local ``EvalBatch`` (x, mask, index,
    labels).

    ``x`` holds the raw data (uint8 levels or float32 vectors; map levels to [0, 1] with
    ``to_unit_interval``). Every host yields ``num_eval_batches`` batches of
    ``batch_size / process_count`` rows (default ``eval.batch_size``); rows past the end of
    its shard are padding (zeros, mask False, index −1, label −1). ``labels`` are −1 for
    data without labels. ``start_batch`` resumes a pass.
    """
    process_index, process_count = hosts(process_index, process_count)
    shard = get_shard(config, split, process_index=process_index, process_count=process_count)
    batch_size = host_batch_size(
        batch_size or config.eval.batch_size, process_count, 'eval.batch_size'
    )
    total = num_eval_batches(shard.num_examples, batch_size * process_count, process_count)
    for b in range(start_batch, total):
        rows = shard.data[b * batch_size : (b + 1) * batch_size]
        x = np.zeros((batch_size,) + shard.data.shape[1:], shard.data.dtype)
        x[: len(rows)] = rows
        mask = np.arange(batch_size) < len(rows)
        index = np.where(mask, shard.start + b * batch_size + np.arange(batch_size), -1)
        labels = np.full(batch_size, -1, np.int32)
        if shard.labels is not None:
            labels[: len(rows)] = shard.labels[b * batch_size : (b + 1) * batch_size]
        yield EvalBatch(x, mask, index.astype(np.int32), labels)
