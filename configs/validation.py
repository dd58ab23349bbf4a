"""``validate_config``: reject a bad config before any work, with one message that names
the field and the fix.

Kept free of JAX, TensorFlow and ``models/`` imports (the known names are listed here) so
that checking a config costs milliseconds.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Iterable

import ml_collections

from configs.base import get_base_config
from errors import UserError

SDES = ('vesde', 'vpsde', 'subvpsde')
MODELS = ('ncsnpp', 'ddpm', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256', 'mlp')
# Datasets and the number of levels K of their discrete data (None: set by data.num_bins
# for NPZ images; TOY is continuous).
DATASET_NUM_BINS = {'CIFAR10': 256, 'SVHN': 256, 'IMAGENET32': 256, 'CELEBA': 256,
                    'DIGITS': 17, 'NPZ': None, 'TOY': None}
DATASETS = tuple(DATASET_NUM_BINS)
SAMPLING_METHODS = ('pc', 'ode')
PREDICTORS = ('euler_maruyama', 'reverse_diffusion', 'ancestral_sampling', 'none')
CORRECTORS = ('langevin', 'ald', 'none')
HUTCHINSON_TYPES = ('Rademacher', 'Gaussian', 'exact')  # 'exact': D tangents, small D
BPD_DATASETS = ('train', 'test')

_CHOICES = (
    ('training.sde', SDES),
    ('model.name', MODELS),
    ('data.dataset', DATASETS),
    ('sampling.method', SAMPLING_METHODS),
    ('sampling.predictor', PREDICTORS),
    ('sampling.corrector', CORRECTORS),
    ('eval.hutchinson_type', HUTCHINSON_TYPES),
    ('eval.bpd_dataset', BPD_DATASETS),
)
_POSITIVE = ('training.n_iters', 'training.batch_size', 'training.n_jitted_steps',
             'eval.batch_size', 'eval.num_repeats', 'optim.lr')
_MULTIPLES_OF_JITTED_STEPS = ('training.log_freq', 'training.eval_freq',
                              'training.snapshot_freq', 'training.snapshot_freq_for_preemption')


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raise ``errors.UserError`` naming the first problem found in ``config``.

    Checks: no unknown (typo) or missing field; known SDE, model, dataset, sampling method,
    predictor, corrector, Hutchinson type and bpd split; positive sizes and learning rate;
    likelihood / importance weighting only with ``continuous=True`` and importance
    weighting only with likelihood weighting; sub-VP only continuous; NPZ with an existing
    ``data.path``; the fixed number of levels of each dataset; training and evaluation
    batch sizes divisible by the number of devices; logging / checkpoint frequencies
    divisible by ``training.n_jitted_steps``.

    Args:
      config: the full config (as built on ``configs.base.get_base_config``).
      num_devices: devices over all hosts; default ``jax.device_count()``.
    """
    _check_schema(config, get_base_config())
    for field, choices in _CHOICES:
        _check_choice(config, field, choices)
    for field in _POSITIVE:
        if not _get(config, field) > 0:
            _fail(field, _get(config, field), 'must be positive')
    if config.seed < 0:
        _fail('seed', config.seed, 'must be non-negative')
    _check_objective(config)
    _check_data(config)
    _check_batch_sizes(config, num_devices)
    for field in _MULTIPLES_OF_JITTED_STEPS:
        if _get(config, field) % config.training.n_jitted_steps:
            _fail(field, _get(config, field),
                  f'must be a multiple of training.n_jitted_steps='
                  f'{config.training.n_jitted_steps} (steps run in jitted groups)')


def _get(config: Any, field: str) -> Any:
    for name in field.split('.'):
        config = config[name]
    return config


def _fail(field: str, value: Any, problem: str) -> None:
    raise UserError(f'config.{field}={value!r} {problem}; '
                    f'fix the config file or pass --config.{field}=...')


def _is_section(value: Any) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, dict))


def _check_schema(config: Any, schema: ml_collections.ConfigDict, prefix: str = '') -> None:
    """Every field of ``config`` exists in ``schema`` and vice versa, sections as sections."""
    for key in config.keys():
        field = prefix + key
        if key not in schema:
            hint = difflib.get_close_matches(key, list(schema.keys()), n=1)
            did_you_mean = f' (did you mean {prefix}{hint[0]}?)' if hint else ''
            raise UserError(f'config.{field} is not a known field{did_you_mean}; '
                            f'remove it or correct its name (known fields are those of '
                            f'configs/base.py)')
        if _is_section(schema[key]) != _is_section(config[key]):
            kind = 'a section' if _is_section(schema[key]) else 'a value'
            raise UserError(f'config.{field} must be {kind}, as in configs/base.py')
        if _is_section(schema[key]):
            _check_schema(config[key], schema[key], field + '.')
    for key in schema.keys():
        if key not in config:
            raise UserError(f'config.{prefix + key} is missing; build configs on '
                            f'configs.base.get_base_config(), which gives every field a default')


def _check_choice(config: Any, field: str, choices: Iterable[str]) -> None:
    value = _get(config, field)
    if value not in choices:
        options = ', '.join(repr(c) for c in choices)
        _fail(field, value, f'is not one of {options}')


def _check_objective(config: ml_collections.ConfigDict) -> None:
    training = config.training
    if not training.continuous:
        for flag in ('likelihood_weighting', 'importance_weighting'):
            if training[flag]:
                _fail(f'training.{flag}', True, 'needs the continuous-time objective; '
                      'set --config.training.continuous=True')
        if training.sde == 'subvpsde':
            _fail('training.continuous', False, 'is not available for the sub-VP SDE, which '
                  'has no discrete (DDPM / SMLD) counterpart; set it to True')
    if training.importance_weighting and not training.likelihood_weighting:
        _fail('training.importance_weighting', True, 'samples t for the likelihood weighting '
              'g(t)²; also set --config.training.likelihood_weighting=True')


def _check_data(config: ml_collections.ConfigDict) -> None:
    data = config.data
    if data.dataset == 'NPZ':
        if not data.path:
            _fail('data.path', data.path, "is empty but data.dataset='NPZ' reads its 'train' "
                  "and 'test' arrays from it; set --config.data.path=/path/to/file.npz")
        if not os.path.isfile(data.path):
            _fail('data.path', data.path, 'is not an existing file')
    if data.dataset == 'TOY' and data.dim < 1:
        _fail('data.dim', data.dim, 'must be at least 1 for the TOY vector data')
    expected_bins = DATASET_NUM_BINS[data.dataset]
    if expected_bins is not None and data.num_bins != expected_bins:
        _fail('data.num_bins', data.num_bins,
              f'does not match {data.dataset}, which has {expected_bins} levels; '
              f'set it to {expected_bins}')
    if data.dataset == 'NPZ' and not 2 <= data.num_bins <= 65536:
        _fail('data.num_bins', data.num_bins, 'must be between 2 and 65536')


def _check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    if num_devices is None:
        import jax  # deferred: validation without devices stays fast
        num_devices = jax.device_count()
    for field in ('training.batch_size', 'eval.batch_size'):
        if _get(config, field) % num_devices:
            _fail(field, _get(config, field),
                  f'is not divisible by the {num_devices} devices (over all hosts); '
                  f'use a multiple of {num_devices}')
