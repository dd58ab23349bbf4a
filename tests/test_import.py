"""``--mode import``: checkpoints of the original score_sde / score_flow code → snapshots here.

The fixture ``tests/fixtures/original_param_paths.json`` holds the originals' parameter
trees (path → shape) for one config file of each architecture: NCSN++ (VE, continuous,
and its deep variant), DDPM++ (VP, continuous), DDPM, NCSNv2, NCSN (v1) of score_sde and
score_flow's DDPM++. It was produced outside this repository, from
``yang-song/score_sde`` at 0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c and
``yang-song/score_flow`` at 1db7922527768226b36c1c581a741e5feac155da (``git show`` of
their ``models/``, ``utils.py``, ``sde_lib.py`` and ``configs/`` into /tmp), with flax
0.12.8 / jax 0.10.2, by ``jax.eval_shape`` of ``model.init({'params', 'dropout'}, x, y)``
as the originals' ``models/utils.py:init_model`` calls it (x zeros [1, H, W, C], y int32
zeros [1]). Patches needed to build them today, and nothing else: the two
``bias_init = lambda key, shape:`` of ``models/layers.py`` take a ``dtype=None`` argument;
``models/utils.py``'s ``State.optimizer`` is typed ``Any`` (``flax.optim`` is gone); for
NCSN (v1) ``config.model.num_classes = config.model.num_scales`` (no config sets it) and
``layers.py``'s down-sampling ``ConditionalResidualBlock`` calls
``self.normalization()(h, y)`` instead of ``self.normalization(h, y)``. No model has a
collection besides ``params``. score_flow's trees equal score_sde's for the same config
(its ``ncsnpp.py`` differs only in the Fourier embedding's input and trainability).

The fixture ``tests/fixtures/original_network_outputs.json`` holds the original networks'
outputs (small variants of one config file per architecture, and NCSN++ / DDPM++ with
``resblock_type='ddpm'``), computed with the same patched copies in float64 on fixed
inputs, every parameter set by a rule of its path (``_fill``; the fixture's '_about'). A
one-off check there also mapped the trees of all 39 score_sde and 8 score_flow config files
onto ours path for path and shape for shape.

Here: (a) each fixture tree maps onto ours (and ours back onto it, by this module's own
inverse of the renames); (b) the original outputs, from their parameters imported; (c)
checkpoints written in the originals' format (msgpack of a map
shaped as their ``State``, or score_flow's ``DeqState`` for the Flow++ dequantizer, whose
'cifar10' layout stores conv kernels with height and width swapped: see
tests/test_flowpp.py) import through ``original_checkpoint.import_checkpoint`` and restore
through ``checkpointing`` / ``dequantizer.load_dequantizer`` with the same values and
network outputs; bad files and other architectures give one line; (d) ``main.py --mode
import``.
"""

from __future__ import annotations

import importlib
import json
import os
import zlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_flowpp import FIXTURES as FLOWPP_FIXTURES
from test_flowpp import _fill as flowpp_fill
from test_flowpp import _small as flowpp_small

import checkpointing
import dequantizer
import file_io
import original_checkpoint as oc
import train_utils
import trainer
from devices import get_mesh
from errors import UserError
from models import flowpp
from models import utils as mutils
from train_state import STREAM_TRAIN, get_optimizer, replicated_state, stream_key
from validation import prepare_config

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'original_param_paths.json')


def _fixture():
    with open(FIXTURE) as f:
        return json.load(f)['models']


def _our_config(key: str):
    """This repository's config of the original's config file ``key``."""
    repo, rel = key.split('/configs/')
    prefix = 'score_flow/' if repo == 'score_flow' else ''
    module = importlib.import_module('configs.' + (prefix + rel)[:-3].replace('/', '.'))
    return module.get_config()


# --- a test-side inverse of the importer's mapping: this repository's names → originals' --


def _original_path(path: tuple, model: str) -> tuple:
    """The original's name of our parameter ``path`` (written independently of the
    importer, from the originals' source: layerspp.AttnBlockpp / layers.AttnBlock and
    ResnetBlockDDPM use NIN (W, b) where this repository uses Dense; NCSNv2's norms store
    gamma, beta; NCSN (v1)'s blocks are the Cond* classes)."""
    out = list(path)
    for i, name in enumerate(path[:-1]):
        cls, _, k = name.rpartition('_')
        if cls == 'AttnBlock':
            out[i] = f'AttnBlockpp_{k}' if model == 'ncsnpp' else name
            if i + 2 < len(path) and path[i + 1].startswith('Dense_'):
                out[i + 1] = 'NIN_' + path[i + 1].split('_')[1]
                out[i + 2] = {'kernel': 'W', 'bias': 'b'}[path[i + 2]]
        elif cls == 'ResnetBlockDDPM':
            out[i] = f'ResnetBlockDDPMpp_{k}' if model == 'ncsnpp' else name
            if path[i + 1] == 'Dense_1':
                out[i + 1] = 'NIN_0'  # Dense_0 is the time embedding's projection
                out[i + 2] = {'kernel': 'W', 'bias': 'b'}[path[i + 2]]
        elif model == 'ncsn' and cls in ('RefineBlock', 'CRPBlock', 'MSFBlock', 'RCUBlock'):
            out[i] = f'Cond{cls}_{k}'
        elif model == 'ncsn' and cls == 'ResidualBlock':
            out[i] = f'ConditionalResidualBlock_{k}'
    if model.startswith('ncsnv2') and path[-2].startswith('InstanceNorm2dPlus_'):
        out[-1] = {'scale': 'gamma', 'bias': 'beta'}.get(path[-1], path[-1])
    return tuple(out)


def _original_shape(path: tuple, shape: tuple, model: str) -> tuple:
    if model.startswith('ncsnv2') and path[-2].startswith('InstanceNorm2dPlus_'):
        return (1, 1, 1, *shape)  # the original's [1, 1, 1, C]
    return tuple(shape)


def _to_original(params: dict, model: str) -> dict:
    """Our parameter tree (arrays) under the original's names and shapes."""
    flat = oc.flatten(flax.core.unfreeze(params))
    return oc.unflatten(
        {
            _original_path(p, model): np.asarray(v).reshape(_original_shape(p, v.shape, model))
            for p, v in flat.items()
        }
    )


# --- (a) every architecture of the fixture ---------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize('key', sorted(_fixture()))
def test_the_originals_trees_map_onto_ours_path_for_path(key):
    original = _fixture()[key]
    config = _our_config(key)
    template = mutils.init_shapes(config)['params']
    ours = {'/'.join(p): list(v.shape) for p, v in oc.flatten(flax.core.unfreeze(template)).items()}
    assert mutils.param_count(template) == original['num_params']
    # importer: the original's names → ours, shapes as ours
    shapes = {
        tuple(p.split('/')): jax.ShapeDtypeStruct(tuple(s), jnp.float32)
        for p, s in original['params'].items()
    }
    converted = oc.match_params(oc.unflatten(shapes), template)
    assert {'/'.join(p): list(v.shape) for p, v in oc.flatten(converted).items()} == ours
    # and back: our names → the original's (the tests' own inverse), exactly the fixture
    model = original['model']
    back = {
        '/'.join(_original_path(p, model)): list(_original_shape(p, v.shape, model))
        for p, v in oc.flatten(flax.core.unfreeze(template)).items()
    }
    assert back == original['params']


# --- (b) the originals' own outputs, after import -----------------------------------------
# tests/fixtures/original_network_outputs.json: outputs of the ORIGINAL networks (small
# variants of one config file of each architecture) on fixed inputs, every parameter set by
# ``_fill`` from its original path; computed outside this repository in float64 (its
# '_about' says how). Here the same values, in the originals' names, go through the
# importer's conversion (``original_checkpoint.score_state`` of a checkpoint in the
# originals' format) into this repository's network.
ORIGINAL_OUTPUTS = json.loads(
    open(
        os.path.join(os.path.dirname(__file__), 'fixtures', 'original_network_outputs.json')
    ).read()
)['cases']
NETWORKS = sorted(c for c in ORIGINAL_OUTPUTS if c != 'wideresnet_classifier')
# Networks with the sinusoidal embedding of a float label (700 here): its float32
# frequencies ω_k are exp(−k log 10⁴/(d/2 − 1)) by numpy here and by XLA in the original,
# 1 ulp apart for some k, so the phase 700 ω_k differs by up to 700 · 6e-8 ≈ 4e-5.
POSITIONAL = {'ddpm', 'ddpmpp_vp', 'ddpmpp_ddpm_resblock'}


def _fill(path: str, shape) -> np.ndarray:
    """The fixture's parameter values (float32), from the original's parameter path."""
    z = np.random.RandomState(zlib.crc32(path.encode())).standard_normal(shape)
    leaf = path.split('/')[-1]
    if leaf in ('scale', 'gamma', 'alpha', 'embedding'):
        value = 1.0 + 0.1 * z
    elif len(shape) >= 2:
        value = z / np.sqrt(np.prod(shape[:-1]))
    elif leaf == 'W':
        value = z
    else:
        value = 0.1 * z
    return value.astype(np.float32)


def _case_config(case: dict):
    config = _our_config('score_sde/configs/' + case['config'])
    for field, value in case['overrides'].items():
        train_utils.set_field(config, field, tuple(value) if isinstance(value, list) else value)
    return prepare_config(config)


@pytest.mark.timeout(300)
@pytest.mark.parametrize('name', NETWORKS)
def test_imported_parameters_give_the_original_networks_outputs(name, tmp_path):
    """NCSN++ (VE), DDPM++ (VP), DDPM++ with ``resblock_type='ddpm'`` (the original's
    ResnetBlockDDPMpp), DDPM, NCSNv2 and NCSN (v1): this repository's network with the
    imported parameters gives the original's outputs, in float64 to 1e-6 of the output's
    RMS (1e-4 with the sinusoidal embedding: ``POSITIONAL``). A wrong mapping (a
    parameter to the wrong layer, a transposed kernel) moves them by O(1)."""
    case = ORIGINAL_OUTPUTS[name]
    config = _case_config(case)
    params = oc.unflatten({tuple(p.split('/')): _fill(p, s) for p, s in case['params'].items()})
    path = tmp_path / 'checkpoint_1'
    path.write_bytes(_original_state_bytes(params, params, step=5))
    state, _ = oc.score_state(config, oc.read_original(str(path)))
    model = mutils.create_model(config)
    shape = mutils.input_shape(config, 2)
    x = np.random.RandomState(1).uniform(size=shape)
    integer = isinstance(case['labels'][0], int)
    with jax.enable_x64(True):
        labels = jnp.asarray(case['labels'], jnp.int32 if integer else jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state.ema_params)
        y = np.asarray(model.apply({'params': p64}, jnp.asarray(x), labels, train=False))
    assert y.dtype == np.float64 and list(y.shape) == case['output_shape']
    tol = (1e-4 if name in POSITIONAL else 1e-6) * case['output_norm'] / np.sqrt(y.size)
    np.testing.assert_allclose(y.ravel()[case['output_index']], case['output_sample'], atol=tol)
    np.testing.assert_allclose(np.linalg.norm(y), case['output_norm'], atol=tol)
    np.testing.assert_allclose(y.sum(), case['output_sum'], atol=tol * np.sqrt(y.size))


# --- (c) an original-format checkpoint through the real entry point -------------------


def _original_state_bytes(params, ema, step=1234, moments=True, **extra) -> bytes:
    """flax.serialization.to_bytes of a map shaped as the originals' State (models/utils.py)
    with flax.optim.Adam's optimizer: what flax.training.checkpoints wrote."""
    leaf_states = jax.tree.map(lambda p: {'grad_ema': 0.1 * p, 'grad_sq_ema': p * p + 1.0}, params)
    optimizer = {'target': params, 'state': {'step': np.asarray(step)}}
    if moments:
        optimizer['state']['param_states'] = leaf_states
    state = {
        'step': np.asarray(step),
        'optimizer': optimizer,
        'lr': 2e-4,
        'model_state': {},
        'ema_rate': 0.9999,
        'params_ema': ema,
        'rng': np.asarray([0, 42], np.uint32),
        **extra,
    }
    return flax.serialization.msgpack_serialize(state)


SMALL = {'model.attn_resolutions': (8,)}  # the tiny DIGITS DDPM++, with attention (NIN)


def _small_config(**model):
    overrides = {**SMALL, **{f'model.{k}': v for k, v in model.items()}}
    return prepare_config(train_utils.load_config('digits', overrides))


def _random_params(config, seed):
    """Random values in the shapes of the config's parameters (no init compile)."""
    rng = np.random.default_rng(seed)
    shapes = mutils.init_shapes(config)['params']
    return jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype), shapes)


def _template(config):
    """A TrainState of the config to restore into (zeros: no model init compile)."""
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), _random_params(config, 0))
    key = stream_key(config.seed, STREAM_TRAIN)
    return replicated_state(key, zeros, get_optimizer(config), get_mesh())


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    """(config, our params, our EMA params, workdir, file) after importing an original-format
    checkpoint_7 of the small DDPM++ into a fresh workdir."""
    config = _small_config()
    params, ema = _random_params(config, 1), _random_params(config, 3)
    folder = tmp_path_factory.mktemp('original')
    path = folder / 'checkpoint_7'
    path.write_bytes(
        _original_state_bytes(_to_original(params, 'ncsnpp'), _to_original(ema, 'ncsnpp'))
    )
    workdir = str(tmp_path_factory.mktemp('w'))
    oc.import_checkpoint(config, workdir, str(path))
    return config, params, ema, workdir, path


@pytest.mark.timeout(180)
def test_an_imported_checkpoint_restores_and_scores_as_the_original_parameters(imported):
    config, params, ema, workdir, _ = imported
    assert checkpointing.list_checkpoints(workdir) == [7]
    assert checkpointing.list_preemption_checkpoints(workdir) == [1234]  # fine-tuning resumes
    state = checkpointing.restore_checkpoint(workdir, 7, _template(config))
    assert int(state.step) == 1234
    for got, want in ((state.params, params), (state.ema_params, ema)):
        assert train_utils.flat_params(got).keys() == train_utils.flat_params(want).keys()
        for name, value in train_utils.flat_params(got).items():
            np.testing.assert_array_equal(value, train_utils.flat_params(want)[name], err_msg=name)
    # Adam: grad_ema → mu, grad_sq_ema → nu, every count at the optimizer's step
    adam = state.opt_state[-1].inner_state[0]
    assert int(adam.count) == 1234 and int(state.opt_state[-1].count) == 1234
    mu, nu = train_utils.flat_params(adam.mu), train_utils.flat_params(adam.nu)
    for name, value in train_utils.flat_params(params).items():
        np.testing.assert_allclose(mu[name], 0.1 * value, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(nu[name], value * value + 1.0, rtol=1e-6, err_msg=name)
    # a snapshot is never overwritten
    with pytest.raises(UserError, match='exists; pass another --snapshot_number'):
        oc.import_checkpoint(config, workdir, str(imported[4]))


@pytest.mark.timeout(300)
def test_fine_tuning_an_import_keeps_the_originals_constant_ema(tmp_path):
    """The originals' EMA is θ_ema ← r θ_ema + (1 − r) θ at every step (score_sde's and
    score_flow's losses.py: ``p_ema * state.ema_rate + p * (1. - state.ema_rate)``). One
    training step after importing a checkpoint of step 50 must use r, not this
    repository's warm-up min(r, 51/60) = 0.85 of a fresh run."""
    overrides = {**SMALL, 'training.n_jitted_steps': 1, 'training.n_iters': 51}
    config = prepare_config(train_utils.load_config('digits', overrides))
    params, ema = _random_params(config, 1), _random_params(config, 3)
    path = tmp_path / 'checkpoint_2'
    original = (_to_original(params, 'ncsnpp'), _to_original(ema, 'ncsnpp'))
    path.write_bytes(_original_state_bytes(*original, step=50))
    workdir = str(tmp_path / 'w')
    oc.import_checkpoint(config, workdir, str(path))
    state = trainer.Trainer(config, workdir).run()
    assert int(state.step) == 51
    rate = float(config.model.ema_rate)
    got, new = train_utils.flat_params(state.ema_params), train_utils.flat_params(state.params)
    old = train_utils.flat_params(params)
    assert any(not np.allclose(new[name], old[name]) for name in old)  # the step moved θ
    for name, value in train_utils.flat_params(ema).items():
        want = rate * value + (1.0 - rate) * new[name]
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.timeout(120)
def test_without_adam_moments_the_optimizer_state_is_fresh(tmp_path):
    config = _small_config()
    params = _to_original(_random_params(config, 5), 'ncsnpp')
    path = tmp_path / 'checkpoint_2'
    path.write_bytes(_original_state_bytes(params, params, step=50, moments=False))
    state, notes = oc.score_state(config, oc.read_original(str(path)))
    assert int(state.step) == 50 and any('fresh Adam state' in n for n in notes)
    adam = state.opt_state[-1].inner_state[0]
    assert int(adam.count) == 0
    assert all(not np.any(np.asarray(v)) for v in jax.tree.leaves(adam.mu))


@pytest.mark.timeout(120)
def test_another_architecture_names_the_first_differing_parameter(tmp_path):
    config = _small_config()
    params = _to_original(_random_params(config, 1), 'ncsnpp')
    path = tmp_path / 'checkpoint_1'
    path.write_bytes(_original_state_bytes(params, params))
    wider = _small_config(nf=64)
    with pytest.raises(UserError) as e:
        oc.import_checkpoint(wider, str(tmp_path / 'w'), str(path))
    fix = '; import it with the config it was trained with, at the same path under configs/.'
    assert str(e.value) == (
        f'{path} does not match the model of this config: params AttnBlockpp_0/NIN_0/b '
        f'(here AttnBlock_0/Dense_0/bias) has shape (8,) in the checkpoint, (64,) here{fix}'
    )
    # a block the checkpoint lacks is named with its shape
    deeper = _small_config(num_res_blocks=2)
    with pytest.raises(UserError) as e:
        oc.import_checkpoint(deeper, str(tmp_path / 'w'), str(path))
    assert str(e.value) == (
        f'{path} does not match the model of this config: params AttnBlock_3/Dense_0/bias '
        f'(8,) of this config is not in the checkpoint{fix}'
    )
    # score_sde's DDPM (one attention block per up-path level) under Ho et al.'s layout
    ddpm = dict(name='ddpm', nf=32, ch_mult=(1,), num_res_blocks=1)
    params = _to_original(_random_params(_small_config(**ddpm), 2), 'ddpm')
    path.write_bytes(_original_state_bytes(params, params))
    with pytest.raises(UserError, match='AttnBlock_3/'):
        oc.import_checkpoint(
            _small_config(**dict(ddpm, name='ddpm_ho')), str(tmp_path / 'w'), str(path)
        )
    assert not checkpointing.list_checkpoints(str(tmp_path / 'w'))


@pytest.mark.timeout(60)
def test_files_that_are_no_original_checkpoint_give_one_line(tmp_path):
    config = _small_config()
    cases = {
        'checkpoint_1': (b'\x00garbage' * 10, 'is not a flax msgpack checkpoint'),
        'checkpoint_2': (flax.serialization.msgpack_serialize({'a': 1}), 'not the State'),
        'checkpoint_3': (
            flax.serialization.msgpack_serialize({'step': 1, 'optimizer': {}, 'params_ema': {}}),
            'has no optimizer.target',
        ),
    }
    for name, (payload, expected) in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(UserError, match=expected) as e:
            oc.import_checkpoint(config, str(tmp_path / 'w'), str(tmp_path / name))
        assert '\n' not in str(e.value) and 'checkpoint_<n>' in str(e.value)
    with pytest.raises(UserError, match='is a folder'):
        oc.read_original(str(tmp_path))
    with pytest.raises(UserError, match='--snapshot_number'):
        oc.snapshot_number(str(tmp_path / 'model.bin'), -1)


@pytest.mark.timeout(60)
def test_an_original_checkpoint_is_read_from_a_url(imported):
    """gs:// and the like through file_io (tested on TensorFlow's in-memory ram://)."""
    url = 'ram://import_test/checkpoints/checkpoint_7'
    file_io.atomic_write(url, imported[4].read_bytes())
    assert int(oc.read_original(url)['step']) == 1234
    with pytest.raises(UserError, match='cannot be read'):
        oc.read_original('ram://import_test/checkpoints/checkpoint_8')


@pytest.mark.parametrize('layout', flowpp.LAYOUTS)
def test_imported_dequantizer_gives_the_originals_outputs(layout):
    """score_flow's ``dequantization_<layout>.Dequantization`` (filters 8, components 3,
    1 block, 2 heads) with every parameter ``flowpp_fill``-ed in the ORIGINAL's layout, on
    2 × 4×8×3 inputs (non-square, so a wrong H/W rule cannot hide):
    its u and −log q, computed by the original outside this repository in float64
    (tests/fixtures/flowpp_original_outputs.json), from the importer's conversion
    (``deq_converter``: the 'cifar10' original reads its conv kernels H/W-swapped, so they
    are transposed; 'imagenet32' is taken as it is)."""
    expected = json.loads((FLOWPP_FIXTURES / 'flowpp_original_outputs.json').read_text())[layout]
    shape = (2, 4, 8, 3)
    rs = np.random.RandomState(0)
    eps, x_cond = rs.standard_normal(shape), rs.randint(0, 17, shape) / 16.0
    model = flowpp_small(layout)
    with jax.enable_x64(True):
        ours = jax.eval_shape(model.init, jax.random.key(0), eps, x_cond)['params']
        flat = oc.flatten(flax.core.unfreeze(ours))
        # The original's tree: its kernels in its own (H/W-swapped for 'cifar10') shapes.
        swap = lambda p, s: (s[1], s[0], *s[2:]) if _swapped(layout, p, s) else s  # noqa: E731
        original = oc.unflatten(
            {p: flowpp_fill('/'.join(p), swap(p, v.shape)) for p, v in flat.items()}
        )
        params = oc.match_params(original, ours, 'params', oc.deq_converter(layout))
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        u, log_q = jax.jit(model.apply)({'params': params}, eps, x_cond)
    np.testing.assert_allclose(u, np.asarray(expected['u']), atol=1e-9)
    np.testing.assert_allclose(-log_q, np.asarray(expected['neg_log_q']), rtol=1e-10)


def _swapped(layout: str, path: tuple, shape: tuple) -> bool:
    """A conv kernel that the 'cifar10' original stores with H and W swapped."""
    return layout == 'cifar10' and path[-1].endswith('_W') and len(shape) == 4


@pytest.mark.timeout(120)
def test_score_flows_flowpp_dequantizer_imports_for_evaluation(tmp_path):
    """A DeqState (score_flow's models/utils.py) of the DIGITS-sized Flow++ ('cifar10'
    layout) becomes the dequantizer that evaluation loads: the converted parameters (the
    conversion itself is checked against the original's outputs above), their EMA and
    Adam's moments, at the state's step, in W/flowpp_dequantizer."""
    config = _small_config()
    key = stream_key(config.seed, 7)
    _, variables = dequantizer.create_dequantizer(config, key)
    flat = oc.flatten(flax.core.unfreeze(variables['params']))
    swap = lambda p, s: (s[1], s[0], *s[2:]) if _swapped('cifar10', p, s) else s  # noqa: E731
    params = oc.unflatten({p: flowpp_fill('/'.join(p), swap(p, v.shape)) for p, v in flat.items()})
    ema = jax.tree.map(lambda a: a + 1.0, params)
    kernels = [p for p, v in oc.flatten(params).items() if _swapped('cifar10', p, v.shape)]
    assert len(kernels) > 4
    leaf_states = jax.tree.map(lambda p: {'grad_ema': p, 'grad_sq_ema': p * p}, params)
    deq_state = {
        'step': np.asarray(900),
        'optimizer': {
            'target': params,
            'state': {'step': np.asarray(900), 'param_states': leaf_states},
        },
        'lr': 1e-3,
        'ema_rate': 0.99,
        'params_ema': ema,
        'ema_train_bpd': 1.5,
        'ema_eval_bpd': 1.6,
        'rng': np.asarray([0, 1], np.uint32),
    }
    path = tmp_path / 'checkpoint_9'
    path.write_bytes(flax.serialization.msgpack_serialize(deq_state))
    workdir = str(tmp_path / 'w')
    state = oc.import_checkpoint(config, workdir, str(path))
    assert int(state.step) == 900
    assert checkpointing.list_preemption_checkpoints(f'{workdir}/flowpp_dequantizer') == [900]
    assert not checkpointing.list_checkpoints(workdir)
    _, loaded, _ = dequantizer.load_dequantizer(config, workdir)
    convert = oc.deq_converter('cifar10')
    for tree, got in ((ema, loaded['params']), (params, state.opt_state[-1].inner_state[0].mu)):
        want = oc.match_params(tree, variables['params'], 'params', convert)
        for name, value in train_utils.flat_params(want).items():
            np.testing.assert_array_equal(train_utils.flat_params(got)[name], value, err_msg=name)
    with pytest.raises(UserError, match='already holds a dequantizer'):
        oc.import_checkpoint(config, workdir, str(path))


# --- (d) the command line -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_main_mode_import_writes_a_snapshot_that_restores(imported, tmp_path):
    config, params, ema, _, path = imported
    workdir = tmp_path / 'w'
    args = train_utils.cli_flags('digits', SMALL) + [
        '--workdir',
        str(workdir),
        '--mode',
        'import',
        f'--original_checkpoint={path}',
        '--snapshot_number=3',
    ]
    result = train_utils.run_main(args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpointing.list_checkpoints(str(workdir)) == [3]
    state = checkpointing.restore_checkpoint(str(workdir), 3, _template(config))
    assert int(state.step) == 1234
    got = train_utils.flat_params(state.ema_params)
    for name, value in train_utils.flat_params(ema).items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
