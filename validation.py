"""``validate_config``: reject a bad config before any work, with one message that names
the field and the fix; ``prepare_config``: validate, then fill in what is read from the data.

The lists of known names come from the registries of the modules that implement them
(SDEs, models, datasets, predictors, correctors, ODE solvers, Hutchinson probes), so a name
registered there is valid here, and only there.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, Iterable

import jax
import ml_collections
from absl import logging

import datasets
import high_order
import likelihood
import losses
import ode_solver
import sampling
import sde_lib
from configs.base import get_base_config
from errors import UserError, config_error
from models import flowpp
from models import utils as mutils

BPD_DATASETS = ('train', 'test')
# score_flow's names of fields of ours: when set, each sets the fields it names (ScoreFlow's
# run_lib passes training.smallest_time to the losses and to the likelihood and bound).
ALIASES = {
    'training.smallest_time': ('training.eps', 'eval.eps'),
    'sampling.smallest_time': ('sampling.eps',),
}
# Names that single leaf files of score_sde set and its code never reads; accepted (their
# value has no effect, as there) so that those files run as written, and dropped from the
# prepared config: every other unknown name is still refused.
IGNORED = {
    'model.sigma_begin': 'configs/ve/celeba_ncsnpp.py',
    'device': 'a torch.device, in configs/ve/{celebahq,ffhq}_ncsnpp_continuous.py',
    'training.loss': "configs/ve/ncsn/celeba.py, 'vesde' (the SDE is training.sde)",
    'training.continuouse': 'configs/ve/ncsnv2/bedroom.py, a typo of training.continuous',
}
# Fields of the originals' configs whose non-default value asks for something not built.
_REFUSED = {
    'model.data_init': (False, 'is read nowhere in score_flow and not supported here'),
    'optim.amsgrad': (
        False,
        "is not supported (Score SDE's Flax optimizer has no AMSGrad either)",
    ),
}


# Names the originals' documentation uses for fields of ours (score_flow's README writes
# --config.eval.dataset; its code, and ours, read eval.bpd_dataset).
RENAMED = {'eval.dataset': 'eval.bpd_dataset'}


def did_you_mean(field: str) -> str:
    """The schema's field meant by the unknown dotted name ``field``: a known rename
    (:data:`RENAMED`), else the closest name in its section ('' if none is close)."""
    if field in RENAMED:
        return RENAMED[field]
    *sections, name = field.split('.')
    node = get_base_config()
    for section in sections:
        if section not in node or not _is_section(node[section]):
            return ''
        node = node[section]
    # cutoff 0.75: typos (bach_size → batch_size, 0.95) yes; other names that merely share
    # a prefix (ckpt_id → ckpt_timeout, 0.63) no.
    hint = difflib.get_close_matches(name, list(node.keys()), n=1, cutoff=0.75)
    return '.'.join([*sections, hint[0]]) if hint else ''


def choices() -> tuple:
    """(field, allowed values) of every field with a fixed set of values."""
    return (
        ('training.sde', sde_lib.sde_names()),
        ('model.name', mutils.registered_models()),
        ('data.dataset', datasets.dataset_names()),
        ('sampling.method', sampling.SAMPLING_METHODS),
        ('sampling.guided_method', sampling.SAMPLING_METHODS),
        ('sampling.predictor', sampling.predictor_names()),
        ('sampling.corrector', sampling.corrector_names()),
        ('sampling.ode_method', ode_solver.solver_names()),
        ('sampling.ode_time', sde_lib.ODE_TIMES),
        ('sampling.order', sampling.DPM_ORDERS),
        ('sampling.solver_type', sampling.SOLVER_TYPES),
        ('sampling.algorithm', sampling.DPM_ALGORITHMS),
        ('sampling.skip_type', sampling.SKIP_TYPES),
        ('eval.ode_method', ode_solver.solver_names()),
        ('eval.ode_time', sde_lib.ODE_TIMES),
        ('eval.hutchinson_type', likelihood.HUTCHINSON_TYPES),
        ('eval.dequantization', likelihood.DEQUANTIZATIONS),
        ('training.score_matching_order', high_order.ORDERS),
        ('eval.bpd_dataset', BPD_DATASETS),
        ('sampling.task', sampling.SAMPLING_TASKS),
        ('classifier.name', mutils.registered_classifiers()),
        ('training.objective', losses.OBJECTIVES),
        ('training.precision', mutils.PRECISIONS),
        ('deq.name', mutils.registered_dequantizers()),
        ('deq.layout', flowpp.LAYOUTS),
    )


_POSITIVE = (
    'training.n_iters',
    'training.batch_size',
    'training.n_jitted_steps',
    'eval.batch_size',
    'eval.num_repeats',
    'optim.lr',
    'sampling.num_samples',
    'sampling.classifier_scale',
    'sampling.inpaint_resample',
    'sampling.steps',
    'sampling.rho',
    'classifier.n_iters',
    'classifier.batch_size',
    'classifier.lr',
    'deq.filters',
    'deq.components',
    'deq.blocks',
    'deq.attn_heads',
)
_MULTIPLES_OF_JITTED_STEPS = (
    'training.log_freq',
    'training.eval_freq',
    'training.snapshot_freq',
    'training.snapshot_freq_for_preemption',
    'classifier.snapshot_freq',
    'classifier.eval_freq',
)


def prepare_config(
    config: ml_collections.ConfigDict, num_devices: int | None = None
) -> ml_collections.ConfigDict:
    """The config every run works with: ``config`` validated (:func:`validate_config`) and
    resolved — a copy with references resolved, the fields it lacks at their defaults of
    ``configs/base.py`` (an original file that builds its config from scratch sets only
    what its code reads; logged), the names of :data:`IGNORED` dropped (logged) and
    ``data.dim = 0`` (vector data: "take it from the data") replaced by the dimension of
    the NPZ / TOY vectors."""
    config = config.copy_and_resolve_references()
    _fill_defaults(config)
    validate_config(config, num_devices)
    _drop_ignored(config)
    for alias, fields in ALIASES.items():
        value = _get(config, alias)
        if value is not None:
            for field in fields:
                section, name = field.split('.')
                config[section][name] = value
    if datasets.is_continuous(config) and not config.data.dim:
        config.data.dim = int(datasets.data_shape(config)[0])
    return config


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raise ``errors.UserError`` naming the first problem found in ``config``.

    Checks: no unknown (typo) or missing field; known SDE, model, dataset, sampling method,
    predictor, corrector, fast-solver options (order, solver type, algorithm, time steps;
    positive steps and ρ, η in [0, 1], no RePaint rounds), Hutchinson type and bpd split;
    positive sizes and learning rate;
    likelihood / importance weighting only with ``continuous=True`` and importance
    weighting only with likelihood weighting; sub-VP only continuous; the data source's
    own checks (``datasets.DataSource.check``: e.g. NPZ with an existing ``data.path``,
    LSUN with a known ``data.category``, CelebA-HQ / FFHQ with a ``data.tfrecords_path``
    (whether it exists is checked when the data are read), the fixed number of levels of
    each dataset); training and evaluation batch sizes divisible
    by the number of devices; logging / checkpoint frequencies divisible by
    ``training.n_jitted_steps``.

    Args:
      config: the full config (as built on ``configs.base.get_base_config``).
      num_devices: devices over all hosts; default ``jax.device_count()``.
    """
    _check_schema(config, get_base_config())
    for field, allowed in choices():
        _check_choice(config, field, allowed)
    for field in _POSITIVE:
        if not _get(config, field) > 0:
            _fail(field, _get(config, field), 'must be positive')
    if config.seed < 0:
        _fail('seed', config.seed, 'must be non-negative')
    _check_objective(config)
    _check_scale_by_sigma(config)
    _check_parameterization(config)
    _check_fast_sampling(config.sampling)
    _check_high_order(config.training)
    _check_data(config)
    _check_dequantization(config)
    _check_deq(config.deq)
    for field, (default, problem) in _REFUSED.items():
        if _get(config, field) != default:
            _fail(field, _get(config, field), problem)
    if config.sampling.reference_workdir and config.sampling.task != 'identifiability':
        _fail(
            'sampling.reference_workdir',
            config.sampling.reference_workdir,
            "is read only by sampling.task='identifiability'; drop it",
        )
    _check_batch_sizes(config, num_devices)
    for field in _MULTIPLES_OF_JITTED_STEPS:
        if _get(config, field) % config.training.n_jitted_steps:
            _fail(
                field,
                _get(config, field),
                f'must be a multiple of training.n_jitted_steps='
                f'{config.training.n_jitted_steps} (steps run in jitted groups)',
            )


def _get(config: Any, field: str) -> Any:
    for name in field.split('.'):
        config = config[name]
    return config


def _fail(field: str, value: Any, problem: str) -> None:
    raise config_error(field, value, problem)


def _parent(config: Any, field: str) -> tuple:
    """(the section holding ``field``, or {} if there is none; the field's last name)."""
    *sections, name = field.split('.')
    for section in sections:
        config = config[section] if section in config and _is_section(config[section]) else {}
    return config, name


def _missing(config: Any, schema: ml_collections.ConfigDict, prefix: str = '') -> list:
    """The fields (or whole sections) of ``schema`` that ``config`` lacks."""
    out = []
    for key in schema.keys():
        if key not in config:
            out.append(prefix + key)
        elif _is_section(schema[key]) and _is_section(config[key]):
            out += _missing(config[key], schema[key], f'{prefix}{key}.')
    return out


def _fill_defaults(config: ml_collections.ConfigDict) -> None:
    """Adds the fields of ``configs/base.py`` that ``config`` lacks, with their defaults,
    saying so in one log line."""
    schema = get_base_config()
    missing = _missing(config, schema)
    if not missing:
        return
    with config.unlocked():
        for field in missing:
            section, name = _parent(config, field)
            section[name] = copy.deepcopy(_parent(schema, field)[0][name])
    logging.info(
        'The config does not set %d fields (or sections) of configs/base.py; their defaults '
        'apply: %s.',
        len(missing),
        ', '.join(f'config.{f}' for f in missing),
    )


def _drop_ignored(config: ml_collections.ConfigDict) -> None:
    """Removes the :data:`IGNORED` names from ``config``, saying so in one log line."""
    found = []
    with config.unlocked():
        for field in IGNORED:
            section, name = _parent(config, field)
            if name in section:
                del section[name]
                found.append(field)
    if not found:
        return
    logging.info(
        '%s: read nowhere, here as in the original code (set by its config files: %s); '
        'ignored, with no effect.',
        ', '.join(f'config.{f}' for f in found),
        '; '.join(IGNORED[f] for f in found),
    )


def _is_section(value: Any) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, dict))


def _check_schema(config: Any, schema: ml_collections.ConfigDict, prefix: str = '') -> None:
    """Every field of ``config`` exists in ``schema`` and vice versa, sections as sections."""
    for key in config.keys():
        field = prefix + key
        if field in IGNORED:
            continue
        if key not in schema:
            hint = did_you_mean(field)
            hint = f' (did you mean {hint}?)' if hint else ''
            raise UserError(
                f'config.{field} is not a known field{hint}; '
                f'remove it or correct its name (known fields are those of '
                f'configs/base.py)'
            )
        if _is_section(schema[key]) != _is_section(config[key]):
            kind = 'a section' if _is_section(schema[key]) else 'a value'
            raise UserError(f'config.{field} must be {kind}, as in configs/base.py')
        if _is_section(schema[key]):
            _check_schema(config[key], schema[key], field + '.')
    for key in schema.keys():
        if key not in config:
            raise UserError(
                f'config.{prefix + key} is missing; build configs on '
                f'configs.base.get_base_config(), which gives every field a default'
            )


def _check_choice(config: Any, field: str, choices: Iterable[str]) -> None:
    value = _get(config, field)
    if value not in choices:
        options = ', '.join(repr(c) for c in choices)
        _fail(field, value, f'is not one of {options}')


def _check_objective(config: ml_collections.ConfigDict) -> None:
    training = config.training
    if not training.continuous:
        if training.objective != 'dsm':
            _fail(
                'training.objective',
                training.objective,
                'needs the continuous-time objective (discrete SMLD / DDPM training is '
                'denoising); set --config.training.continuous=True',
            )
        for flag in ('likelihood_weighting', 'importance_weighting'):
            if training[flag]:
                _fail(
                    f'training.{flag}',
                    True,
                    'needs the continuous-time objective; set --config.training.continuous=True',
                )
        if sde_lib.get_sde_class(training.sde).discrete_objective is None:
            _fail(
                'training.continuous',
                False,
                f'is not available for training.sde='
                f'{training.sde!r}, which has no discrete (SMLD / DDPM) counterpart; set '
                'it to True',
            )
    sde_lib.weighting_of(training.likelihood_weighting, training.importance_weighting)


def _check_scale_by_sigma(config: ml_collections.ConfigDict) -> None:
    """ScoreFlow's linear VE already divides the output by σ(t) (score = −output/σ(t), a
    noise-predicting network, as VP); ``scale_by_sigma`` would divide by σ a second time
    (score_flow stops on this combination)."""
    if config.training.sde == 'linearvesde' and config.model.scale_by_sigma:
        _fail(
            'model.scale_by_sigma',
            True,
            "divides the network's output by σ, which training.sde='linearvesde' already "
            'does (its score is −output/σ(t)); set it to False',
        )


def _check_parameterization(config: ml_collections.ConfigDict) -> None:
    """``model.parameterization`` and ``training.importance_density`` are known; the
    velocity (i-DODE) is a continuous-time output that the adapter turns into a score by
    itself, so it excludes the discrete objectives and ``scale_by_sigma``."""
    choices = {
        'model.parameterization': sde_lib.PARAMETERIZATIONS,
        'training.importance_density': sde_lib.IMPORTANCE_DENSITIES,
    }
    for field, known in choices.items():
        if _get(config, field) not in known:
            _fail(field, _get(config, field), f'is not one of {", ".join(map(repr, known))}')
    if config.model.parameterization != 'velocity':
        return
    if not config.training.continuous:
        _fail(
            'model.parameterization',
            'velocity',
            'needs continuous-time training (the discrete SMLD / DDPM networks predict the '
            "noise); set training.continuous=True or model.parameterization='score'",
        )
    if config.model.scale_by_sigma:
        _fail(
            'model.scale_by_sigma',
            True,
            'would divide the predicted velocity by σ; set it to False with '
            "model.parameterization='velocity'",
        )


def _check_fast_sampling(s: ml_collections.ConfigDict) -> None:
    """DDIM's η in [0, 1]; RePaint rounds only with the PC projector (inpainting and
    colorization by the fast solvers replace the known part without resampling)."""
    if not 0.0 <= s.eta <= 1.0:
        _fail('sampling.eta', s.eta, 'must lie in [0, 1] (0: deterministic DDIM, 1: ancestral)')
    projected = s.task in ('inpaint', 'colorize')
    if projected and s.method in sampling.FAST_METHODS and s.inpaint_resample != 1:
        _fail(
            'sampling.inpaint_resample',
            s.inpaint_resample,
            f'(RePaint rounds) needs the PC sampler, not sampling.method={s.method!r}; set it '
            'to 1 or use --config.sampling.method=pc',
        )


def _check_high_order(training: ml_collections.ConfigDict) -> None:
    """Lu et al.'s high-order DSM: continuous denoising only, non-negative weights."""
    for name in ('second_order_weight', 'third_order_weight'):
        if not training[name] >= 0:
            _fail(f'training.{name}', training[name], 'must be non-negative')
    if not all(isinstance(c, str) for c in training.objective_changes):
        _fail(
            'training.objective_changes',
            training.objective_changes,
            'is written by --mode train (a list of strings); leave it as it is',
        )
    order = training.score_matching_order
    if order == 1:
        return
    if not training.continuous or training.objective != 'dsm':
        _fail(
            'training.score_matching_order',
            order,
            'needs the continuous denoising objective (training.continuous=True, '
            "training.objective='dsm'); set those or score_matching_order=1",
        )


def _check_dequantization(config: ml_collections.ConfigDict) -> None:
    """The truncated-normal dequantization: discrete data, the ODE only, no trained one."""
    e = config.eval
    if e.dequantization == 'uniform':
        return
    if datasets.is_continuous(config):
        problem = 'needs discrete data (it dequantizes levels); set it to uniform'
    elif e.dequantizer:
        problem = 'and eval.dequantizer=True both choose q(u|x̄); set one of them'
    elif e.bound:
        problem = (
            'applies to the ODE bits/dim only (the bound integrates from the data, not '
            'from the start time); set eval.bound=False or evaluate the bound separately'
        )
    else:
        return
    _fail('eval.dequantization', e.dequantization, problem)


def _check_deq(deq: ml_collections.ConfigDict) -> None:
    if not 0 <= deq.dropout < 1:
        _fail('deq.dropout', deq.dropout, 'must be in [0, 1)')
    if deq.filters % deq.attn_heads:
        _fail(
            'deq.filters',
            deq.filters,
            f'must be divisible by deq.attn_heads={deq.attn_heads} (the attention heads '
            'split the channels)',
        )


def _check_data(config: ml_collections.ConfigDict) -> None:
    """The data source's own checks (``datasets.check_config``)."""
    datasets.check_config(config)


def _check_batch_sizes(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    if num_devices is None:
        num_devices = jax.device_count()
    for field in ('training.batch_size', 'eval.batch_size', 'classifier.batch_size'):
        if _get(config, field) % num_devices:
            _fail(
                field,
                _get(config, field),
                f'is not divisible by the {num_devices} devices (over all hosts); '
                f'use a multiple of {num_devices}',
            )
