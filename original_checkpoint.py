"""``--mode import``: a checkpoint of the original score_sde / score_flow code → a snapshot here.

The originals save ``flax.serialization.to_bytes(state)`` of their ``State`` dataclass
(``models/utils.py``) as ``W/checkpoints/checkpoint_<n>`` (and ``checkpoints-meta/``):
a msgpack map

    step                     int, training steps taken
    optimizer                flax.optim.Optimizer: {target: params,
                             state: {step, param_states: params' tree with a
                             {grad_ema, grad_sq_ema} map at each leaf}} (flax.optim.Adam)
    lr, ema_rate             floats
    model_state              the non-parameter collections (empty for every score model)
    params_ema               the EMA of the parameters
    rng                      uint32[2] key

It is read with ``flax.serialization.msgpack_restore`` (no pickle) and written as the
snapshot ``W/checkpoints/<n>`` of a :class:`train_state.TrainState` (and, when
``W/checkpoints-meta`` is empty, as a preemption checkpoint, so that ``--mode train``
fine-tunes from it):

- ``params`` ← ``optimizer.target``, ``ema_params`` ← ``params_ema``, ``step`` ← ``step``;
  parameter names follow :func:`convert_params` (the originals' flax auto-names where
  this repository's modules differ), then must equal the config's model path for path
  and shape, or a :class:`errors.UserError` names the first difference.
- Adam's moments: ``grad_ema`` → optax ``mu``, ``grad_sq_ema`` → ``nu`` and the
  optimizer's step → every ``count`` of the optax state (bias correction, warm-up
  schedule): flax.optim.Adam and ``optax.adamw`` are the same update (``train_state``),
  so training continues as the original would, up to the random numbers.
- Not imported: ``rng`` (here step n draws from ``fold_in(key, n)`` with the run's
  ``config.seed``), ``lr`` and ``ema_rate`` (the config's ``optim.lr`` /
  ``model.ema_rate`` apply; a different ``ema_rate`` is logged).
- The EMA: the originals' is constant, θ_ema ← r θ_ema + (1 − r) θ, where a run here
  warms it up (``train_state.ema_update``); a folder whose training continues an
  imported state is marked (``train_state.IMPORTED_FILE``) and keeps r constant.

score_flow's Flow++ dequantizer (its ``DeqState``: step, optimizer, lr, ema_rate,
params_ema, ema_train_bpd, ema_eval_bpd, rng) is imported the same way into
``W/<deq_folder>/checkpoints-meta/<step>``, the checkpoint ``--mode eval`` with
``eval.dequantizer=True`` loads; its names are ours already, its 'cifar10' layout's conv
kernels are transposed in height and width (:func:`deq_converter`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import checkpointing
import dequantizer
import file_io
import models  # noqa: F401  (registers the networks)
import train_state
from errors import UserError
from models import utils as mutils

Path = Tuple[str, ...]

# Modules of the originals whose class has another name here (same parameters).
MODULE_RENAMES = {
    'AttnBlockpp': 'AttnBlock',  # NCSN++ / DDPM++ (layerspp.AttnBlockpp)
    # NCSN++ / DDPM++ with resblock_type='ddpm' (layerspp.ResnetBlockDDPMpp): here
    # layers.ResnetBlockDDPM with the DDPM++ norm (layerspp.ResnetBlockDDPMpp is a partial)
    'ResnetBlockDDPMpp': 'ResnetBlockDDPM',
    'CondRefineBlock': 'RefineBlock',  # NCSN (v1): the conditional RefineNet blocks
    'CondCRPBlock': 'CRPBlock',
    'CondMSFBlock': 'MSFBlock',
    'CondRCUBlock': 'RCUBlock',
    'ConditionalResidualBlock': 'ResidualBlock',
}
# The originals' per-channel norms (normalization.py) store γ, β (and α) as [1, 1, 1, C].
_NORM_PARAMS = {'gamma': 'scale', 'beta': 'bias', 'alpha': 'alpha'}
_NAME_RE = re.compile(r'^(.*)_(\d+)$')
_STATE_KEYS = ('step', 'optimizer', 'params_ema')


class _MismatchError(UserError):
    """A parameter tree that differs from the config's model (first difference)."""


def _split(name: str) -> Tuple[str, Optional[int]]:
    """'AttnBlockpp_3' → ('AttnBlockpp', 3); a name without a counter → (name, None)."""
    match = _NAME_RE.match(name)
    return (match.group(1), int(match.group(2))) if match else (name, None)


def _natural(path: Path) -> tuple:
    """Sort key with numeric counters: AttnBlock_2 before AttnBlock_10."""
    return tuple((_split(p)[0], _split(p)[1] or 0, p) for p in path)


def flatten(tree: Any) -> Dict[Path, Any]:
    """Nested maps → {path tuple: leaf}."""
    if not isinstance(tree, dict):
        return {(): tree}
    out = {}
    for key, value in tree.items():
        for sub, leaf in flatten(value).items():
            out[(str(key), *sub)] = leaf
    return out


def unflatten(flat: Dict[Path, Any]) -> Dict[str, Any]:
    """{path tuple: leaf} → nested dicts."""
    out: Dict[str, Any] = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def convert_path(path: Path, dense_counts: Dict[Path, int]) -> Path:
    """The name here of the original's parameter ``path``.

    * modules of :data:`MODULE_RENAMES` take this repository's class name (same counter);
    * ``NIN_k`` (the originals' 1×1 "network in network" layer, parameters ``W``, ``b``)
      is a ``Dense`` here: ``Dense_{d+k}/kernel``, ``bias``, with d the number of
      ``Dense`` layers the original has in the same scope (they come first there: the
      time-embedding projection of a residual block precedes its NIN shortcut);
    * the per-channel norms' ``gamma``, ``beta`` are ``scale``, ``bias``.
    """
    out = []
    for i, name in enumerate(path[:-1]):
        cls, k = _split(name)
        if cls == 'NIN' and k is not None:
            name = f'Dense_{dense_counts.get(path[:i], 0) + k}'
        elif cls in MODULE_RENAMES and k is not None:
            name = f'{MODULE_RENAMES[cls]}_{k}'
        out.append(name)
    leaf = path[-1]
    owner = _split(path[-2])[0] if len(path) > 1 else ''
    if owner == 'NIN':
        leaf = {'W': 'kernel', 'b': 'bias'}.get(leaf, leaf)
    elif owner.endswith(('Norm2d', 'Norm2dPlus')):
        leaf = _NORM_PARAMS.get(leaf, leaf)
    return (*out, leaf)


def convert_params(params: Any) -> Dict[Path, Tuple[Path, Any]]:
    """{path here: (the original's path, value)} of an original parameter tree (nested
    maps of arrays or of anything with a ``shape``)."""
    flat = flatten(params)
    dense_counts: Dict[Path, int] = {}
    for path in flat:
        for i, name in enumerate(path[:-1]):
            cls, k = _split(name)
            if cls == 'Dense' and k is not None:
                scope = path[:i]
                dense_counts[scope] = max(dense_counts.get(scope, 0), k + 1)
    return {convert_path(path, dense_counts): (path, value) for path, value in flat.items()}


def _shape(x: Any) -> Tuple[int, ...]:
    return tuple(int(d) for d in (x.shape if hasattr(x, 'shape') else np.shape(x)))


def _fits_norm(path: Path, have: Tuple[int, ...], want: Tuple[int, ...]) -> bool:
    """An original norm parameter [1, 1, 1, C] that is [C] here."""
    return (
        path[-1] in _NORM_PARAMS.values()
        and len(path) > 1
        and _split(path[-2])[0].endswith(('Norm2d', 'Norm2dPlus'))
        and have == (1,) * (len(have) - 1) + want[-1:]
        and len(want) == 1
    )


def _show(path: Path) -> str:
    return '/'.join(path)


def deq_converter(layout: str) -> Callable[[Any], Dict[Path, Tuple[Path, Any]]]:
    """The conversion of score_flow's Flow++ dequantizer parameters: the same names (see
    ``models/flowpp.py``); in the 'cifar10' layout the original reads its conv kernels
    with height and width swapped, so its ``*_W`` of rank 4 are transposed in their first
    two axes (their Adam moments too)."""

    def convert(params: Any) -> Dict[Path, Tuple[Path, Any]]:
        out = {}
        for path, value in flatten(params).items():
            swap = layout == 'cifar10' and path[-1].endswith('_W') and len(_shape(value)) == 4
            if swap and isinstance(value, jax.ShapeDtypeStruct):
                h, w, *rest = value.shape
                value = jax.ShapeDtypeStruct((w, h, *rest), value.dtype)
            elif swap:
                value = np.swapaxes(np.asarray(value), 0, 1)
            out[path] = (path, value)
        return out

    return convert


def match_params(
    params: Any,
    template: Any,
    what: str = 'params',
    convert: Callable[[Any], Dict[Path, Tuple[Path, Any]]] = convert_params,
) -> Dict[str, Any]:
    """The original's ``params`` renamed (``convert``) and shaped as ``template`` (a tree
    of arrays or ``jax.ShapeDtypeStruct``); UserError naming the first difference."""
    converted = convert(params)
    want = {p: leaf for p, leaf in flatten(flax.core.unfreeze(template)).items()}
    missing = sorted(set(want) - set(converted), key=_natural)
    extra = sorted(set(converted) - set(want), key=_natural)
    problems = []
    if missing:
        p = missing[0]
        problems.append(
            (p, f'{_show(p)} {_shape(want[p])} of this config is not in the checkpoint')
        )
    if extra:
        p = extra[0]
        orig = converted[p][0]
        named = f' (here {_show(p)})' if orig != p else ''
        problems.append(
            (
                p,
                f'the checkpoint has {_show(orig)}{named} {_shape(converted[p][1])}, '
                'which this config does not',
            )
        )
    out = {}
    for p in sorted(set(want) & set(converted), key=_natural):
        orig, value = converted[p]
        have, shape = _shape(value), _shape(want[p])
        if have != shape and not _fits_norm(p, have, shape):
            named = f' (here {_show(p)})' if orig != p else ''
            problems.append(
                (p, f'{_show(orig)}{named} has shape {have} in the checkpoint, {shape} here')
            )
            continue
        dtype = getattr(want[p], 'dtype', np.float32)
        if isinstance(value, jax.ShapeDtypeStruct):  # shapes only (tests, checks)
            out[p] = jax.ShapeDtypeStruct(shape, dtype)
        else:
            out[p] = np.asarray(value, dtype=dtype).reshape(shape)
    if problems:
        first = min(problems, key=lambda item: _natural(item[0]))[1]
        raise _MismatchError(f'{what} {first}')
    return unflatten(out)


# --- reading ----------------------------------------------------------------------------


def read_original(path: str) -> Dict[str, Any]:
    """The state map of an original ``checkpoint_<n>`` file; UserError if it is not one."""
    fix = (
        'pass a checkpoint_<n> file of score_sde or score_flow (their W/checkpoints/ '
        'or W/checkpoints-meta/ folder)'
    )
    if file_io.isdir(path):
        found = sorted(n for n in file_io.listdir(path) if n.startswith('checkpoint_'))
        listing = f' (it holds {", ".join(found[:5])})' if found else ''
        raise UserError(f'--original_checkpoint={path} is a folder{listing}; {fix}.')
    try:
        data = file_io.read_bytes(path)
    except OSError as e:
        raise UserError(
            f'--original_checkpoint={path} cannot be read ({e.strerror}); {fix}.'
        ) from None
    try:
        state = flax.serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several kinds on other bytes
        raise UserError(
            f'{path} is not a flax msgpack checkpoint ({type(e).__name__}); {fix}.'
        ) from None
    if not isinstance(state, dict) or not all(k in state for k in _STATE_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f'{path} is not the State of score_sde / score_flow (its keys: {keys}); {fix}.'
        )
    optimizer = state['optimizer']
    if not isinstance(optimizer, dict) or 'target' not in optimizer:
        raise UserError(f'{path} has no optimizer.target (the parameters); {fix}.')
    if is_dequantizer(state):
        return state
    model_state = state.get('model_state') or {}
    if flatten(model_state) and any(flatten(model_state).values()):
        raise UserError(
            f'{path} has model_state collections {sorted(model_state)} (e.g. batch '
            'statistics), which no model here has; import a score model checkpoint.'
        )
    return state


def is_dequantizer(state: Dict[str, Any]) -> bool:
    """Whether ``state`` is score_flow's ``DeqState`` (the Flow++ dequantizer's)."""
    return 'ema_train_bpd' in state


def _adam_moments(
    state: Dict[str, Any], params: Any, convert: Callable = convert_params
) -> Tuple[Optional[Any], Optional[Any], str]:
    """(mu, nu, '') converted like ``params``, or (None, None, why) when not usable."""
    opt_state = state['optimizer'].get('state')
    if not isinstance(opt_state, dict) or not isinstance(opt_state.get('param_states'), dict):
        return None, None, 'the checkpoint has no optimizer.state.param_states'
    flat = flatten(opt_state['param_states'])
    moments = {}
    for key in ('grad_ema', 'grad_sq_ema'):
        tree = unflatten({p[:-1]: v for p, v in flat.items() if p[-1] == key})
        try:
            moments[key] = match_params(tree, params, f'optimizer {key}', convert)
        except UserError as e:
            return None, None, str(e)
    return moments['grad_ema'], moments['grad_sq_ema'], ''


def _with_adam(opt_state: Any, step: int, mu: Any, nu: Any) -> Any:
    """``opt_state`` with Adam's moments set and every ``count`` at ``step``."""

    def visit(node):
        if isinstance(node, tuple) and hasattr(node, '_fields'):
            fields = {f: visit(getattr(node, f)) for f in node._fields}
            if 'count' in fields:
                fields['count'] = jnp.asarray(step, jnp.asarray(node.count).dtype)
            if 'mu' in fields and 'nu' in fields:
                fields['mu'], fields['nu'] = mu, nu
            return type(node)(**fields)
        if isinstance(node, (tuple, list)):
            return type(node)(visit(c) for c in node)
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        return node

    return visit(opt_state)


def snapshot_number(path: str, number: int) -> int:
    """``number`` if ≥ 0, else the n of a ``checkpoint_<n>`` file name."""
    if number >= 0:
        return int(number)
    match = re.match(r'^checkpoint_(\d+)$', os.path.basename(path))
    if not match:
        raise UserError(
            f'{path} is not named checkpoint_<n>; pass --snapshot_number=N (the snapshot '
            'to write, W/checkpoints/N).'
        )
    return int(match.group(1))


def convert_state(
    state: Dict[str, Any],
    template: Any,
    optimizer: Any,
    rng: Any,
    convert: Callable = convert_params,
) -> Tuple[train_state.TrainState, list]:
    """(TrainState on the host, what was imported: a list of words) of an original
    ``state`` for a model with parameters shaped as ``template``."""
    params = match_params(state['optimizer']['target'], template, 'params', convert)
    ema = match_params(state['params_ema'], template, 'params_ema', convert)
    step = int(np.asarray(state['step']))
    new = train_state.init_train_state(rng, jax.tree.map(jnp.asarray, params), optimizer)
    notes = [f'step {step}', 'params', 'params_ema']
    mu, nu, why = _adam_moments(state, template, convert)
    if mu is None:
        notes.append(f'a fresh Adam state, its warm-up restarting ({why})')
        opt_state = new.opt_state
    else:
        adam_step = int(np.asarray(state['optimizer']['state'].get('step', step)))
        opt_state = _with_adam(
            new.opt_state, adam_step, jax.tree.map(jnp.asarray, mu), jax.tree.map(jnp.asarray, nu)
        )
        notes.append(f'Adam moments (optimizer step {adam_step})')
    new = new.replace(
        step=jnp.asarray(step, jnp.int32),
        ema_params=jax.tree.map(jnp.asarray, ema),
        opt_state=opt_state,
    )
    return new, notes


def _check_ema_rate(state: Dict[str, Any], field: str, rate: float) -> None:
    """Logs a checkpoint's ema_rate that differs from the config's."""
    if 'ema_rate' in state and not np.isclose(float(np.asarray(state['ema_rate'])), rate):
        logging.warning(
            'The checkpoint was trained with ema_rate %g; config.%s=%g applies to further '
            'training here.',
            float(np.asarray(state['ema_rate'])),
            field,
            rate,
        )


def score_state(config: ml_collections.ConfigDict, state: Dict[str, Any]):
    """(TrainState, notes) of an original score model's ``State``."""
    template = mutils.init_shapes(config)['params']
    rng = train_state.stream_key(config.seed, train_state.STREAM_TRAIN)
    _check_ema_rate(state, 'model.ema_rate', float(config.model.ema_rate))
    return convert_state(state, template, train_state.get_optimizer(config), rng)


def dequantizer_state(config: ml_collections.ConfigDict, state: Dict[str, Any]):
    """(TrainState, notes) of score_flow's Flow++ dequantizer ``DeqState``."""
    if config.deq.name != 'flowpp':
        raise UserError(
            "The checkpoint is score_flow's Flow++ dequantizer; config.deq.name="
            f'{config.deq.name!r} is another flow: set --config.deq.name=flowpp.'
        )
    rng = train_state.stream_key(config.seed, train_state.STREAM_DEQ)
    _, variables = dequantizer.create_dequantizer(config, rng)
    _check_ema_rate(state, 'deq.ema_rate', float(config.deq.ema_rate))
    convert = deq_converter(str(config.deq.layout))
    optimizer = train_state.get_optimizer(config)
    return convert_state(state, variables['params'], optimizer, rng, convert)


def _mismatch(path: str, e: Exception, what: str) -> UserError:
    return UserError(
        f'{path} does not match the {what}: {e}; import it with the config it was trained '
        'with, at the same path under configs/.'
    )


def import_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    path: str,
    number: int = -1,
    deq_folder: str = dequantizer.DEQ_FOLDER,
) -> train_state.TrainState:
    """Writes the original checkpoint ``path`` into ``workdir``; returns the imported state.

    A score model's ``State`` becomes snapshot ``number`` (default: the n of its name
    ``checkpoint_<n>``) and, if ``W/checkpoints-meta`` is empty, the preemption
    checkpoint that fine-tuning resumes from. score_flow's dequantizer (``DeqState``)
    becomes ``W/<deq_folder>/checkpoints-meta/<step>``, which ``--mode eval`` with
    ``eval.dequantizer=True`` reads. ``config`` is the prepared config of the model (the
    original's config file, at the same path under ``configs/``)."""
    state = read_original(path)
    if is_dequantizer(state):
        return _import_dequantizer(config, workdir, path, state, deq_folder)
    number = snapshot_number(path, number)
    if number in checkpointing.list_checkpoints(workdir):
        raise UserError(
            f'{checkpointing.checkpoint_path(workdir, number)} exists; pass another '
            '--snapshot_number or --workdir (snapshots are never overwritten).'
        )
    try:
        new, notes = score_state(config, state)
    except _MismatchError as e:
        raise _mismatch(path, e, 'model of this config') from None
    saved = checkpointing.save_snapshot(workdir, number, new)
    logging.info('Imported %s as %s: %s.', path, saved, ', '.join(notes))
    if checkpointing.list_preemption_checkpoints(workdir):
        logging.warning(
            '%s has preemption checkpoints; --mode train resumes from those, not from '
            'the imported state.',
            checkpointing.preemption_dir(workdir),
        )
    else:
        checkpointing.save_preemption(workdir, new)
        _record_import(workdir, path, new)
    return new


def _record_import(folder: str, path: str, state: train_state.TrainState) -> None:
    """Marks ``folder``'s training as the continuation of the original checkpoint
    ``path`` (``train_state.IMPORTED_FILE``): its EMA then keeps the original's constant
    rate instead of warming up again (``train_state.ema_warmup_in``)."""
    file_io.write_json(
        os.path.join(folder, train_state.IMPORTED_FILE),
        {'checkpoint': path, 'step': int(np.asarray(state.step)), 'ema': 'constant rate'},
    )


def _import_dequantizer(
    config: ml_collections.ConfigDict,
    workdir: str,
    path: str,
    state: Dict[str, Any],
    deq_folder: str,
) -> train_state.TrainState:
    """score_flow's ``DeqState`` → ``W/<deq_folder>/checkpoints-meta/<step>``."""
    folder = os.path.join(workdir, deq_folder)
    if checkpointing.list_preemption_checkpoints(folder):
        raise UserError(
            f'{checkpointing.preemption_dir(folder)} already holds a dequantizer; pass '
            'another --deq_folder or --workdir (checkpoints are never overwritten).'
        )
    try:
        new, notes = dequantizer_state(config, state)
    except _MismatchError as e:
        what = f'dequantizer of this config (deq.layout={config.deq.layout!r})'
        raise _mismatch(path, e, what) from None
    saved = checkpointing.save_preemption(folder, new)
    _record_import(folder, path, new)
    logging.info('Imported the dequantizer %s as %s: %s.', path, saved, ', '.join(notes))
    return new
