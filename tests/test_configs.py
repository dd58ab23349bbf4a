"""Configs: every leaf loads, has exactly the schema's fields and validates; the paper
settings are the original ones; every validation error names its field."""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from configs import base, presets, scoreflow_table
from configs.validation import validate_config
from errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEAVES = sorted(p for p in (ROOT / 'configs').glob('*/*.py') if p.name != '__init__.py')


def load_leaf(path: pathlib.Path):
    """Import a leaf config file by path, as ml_collections' --config flag does."""
    spec = importlib.util.spec_from_file_location(f'leaf_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def flat_keys(config, prefix=''):
    keys = set()
    for key, value in config.items():
        if hasattr(value, 'items'):
            keys |= flat_keys(value, f'{prefix}{key}.')
        else:
            keys.add(prefix + key)
    return keys


def test_leaf_count():
    names = {str(p.relative_to(ROOT / 'configs')) for p in LEAVES}
    table = {f'{f}/{d}_{deep}{w}.py' for f in ('vp', 'subvp') for d in ('cifar10', 'imagenet32')
             for deep in ('', 'deep_') for w in ('baseline', 'lw', 'lw_is')}
    paper = {'ve/cifar10_ncsnpp_continuous.py', 've/cifar10_ncsnpp_deep_continuous.py',
             'vp/cifar10_ddpmpp_continuous.py', 'subvp/cifar10_ddpmpp_continuous.py'}
    digits = {'vp/digits_baseline.py', 'vp/digits_lw.py', 'vp/digits_lw_is.py',
              'subvp/digits_lw_is.py', 've/digits_ncsnpp.py'}
    assert len(table) == 24
    assert table | paper | digits <= names
    assert any(n.startswith('vp/toy_') for n in names)


@pytest.mark.parametrize('path', LEAVES, ids=lambda p: f'{p.parent.name}/{p.stem}')
def test_leaf_loads_and_validates(path):
    config = load_leaf(path)
    assert flat_keys(config) == flat_keys(base.get_base_config())
    validate_config(config, num_devices=1)
    validate_config(config, num_devices=8)
    sde = {'ve': 'vesde', 'vp': 'vpsde', 'subvp': 'subvpsde'}[path.parent.name]
    assert config.training.sde == sde


def test_default_uses_jax_device_count():
    validate_config(load_leaf(ROOT / 'configs/vp/digits_lw_is.py'))


def test_command_line_overrides_a_leaf(monkeypatch):
    argv = ['prog', f'--config={ROOT}/configs/vp/digits_lw_is.py',
            '--config.training.batch_size=64', '--config.model.ch_mult=(1,2,2)']
    monkeypatch.setattr('sys.argv', argv)  # config_flags reads the overrides from sys.argv
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=flag_values)
    flag_values(argv)
    config = flag_values.config
    assert config.training.batch_size == 64 and tuple(config.model.ch_mult) == (1, 2, 2)
    assert config.training.likelihood_weighting and config.training.importance_weighting
    validate_config(config, num_devices=1)


# --- the papers' settings -------------------------------------------------------------

DDPMPP_CIFAR10 = {  # score_sde configs/vp/cifar10_ddpmpp_continuous.py, model section
    'name': 'ncsnpp', 'scale_by_sigma': False, 'ema_rate': 0.9999, 'normalization': 'GroupNorm',
    'nonlinearity': 'swish', 'nf': 128, 'ch_mult': (1, 2, 2, 2), 'num_res_blocks': 4,
    'attn_resolutions': (16,), 'resamp_with_conv': True, 'conditional': True, 'fir': False,
    'fir_kernel': [1, 3, 3, 1], 'skip_rescale': True, 'resblock_type': 'biggan',
    'progressive': 'none', 'progressive_input': 'none', 'progressive_combine': 'sum',
    'attention_type': 'ddpm', 'init_scale': 0.0, 'embedding_type': 'positional',
    'fourier_scale': 16, 'conv_size': 3, 'dropout': 0.1, 'beta_min': 0.1, 'beta_max': 20.0}
NCSNPP_CIFAR10 = {**DDPMPP_CIFAR10, 'scale_by_sigma': True, 'ema_rate': 0.999, 'fir': True,
                  'progressive_input': 'residual', 'embedding_type': 'fourier',
                  'sigma_min': 0.01, 'sigma_max': 50}
del NCSNPP_CIFAR10['beta_min'], NCSNPP_CIFAR10['beta_max']


def assert_model(config, expected):
    for key, value in expected.items():
        assert config.model[key] == value, key


def test_score_sde_cifar10_configs():
    vp = load_leaf(ROOT / 'configs/vp/cifar10_ddpmpp_continuous.py')
    assert_model(vp, DDPMPP_CIFAR10)
    training = vp.training
    assert (training.sde, training.continuous, training.reduce_mean) == ('vpsde', True, True)
    assert (vp.sampling.predictor, vp.sampling.corrector, vp.data.centered) == (
        'euler_maruyama', 'none', True)
    assert load_leaf(ROOT / 'configs/subvp/cifar10_ddpmpp_continuous.py').training.sde == 'subvpsde'
    ve = load_leaf(ROOT / 'configs/ve/cifar10_ncsnpp_continuous.py')
    assert_model(ve, NCSNPP_CIFAR10)
    assert (ve.sampling.predictor, ve.sampling.corrector) == ('reverse_diffusion', 'langevin')
    assert not ve.data.centered and not ve.training.reduce_mean
    deep = load_leaf(ROOT / 'configs/ve/cifar10_ncsnpp_deep_continuous.py')
    assert_model(deep, {**NCSNPP_CIFAR10, 'num_res_blocks': 8})
    assert deep.training.n_iters == 950001


@pytest.mark.parametrize('sde', scoreflow_table.SDES)
@pytest.mark.parametrize('dataset', scoreflow_table.DATASETS)
def test_scoreflow_table(sde, dataset):
    for deep in (False, True):
        for weighting, (lw, iw) in presets.WEIGHTINGS.items():
            config = scoreflow_table.get_config(sde, dataset, deep, weighting)
            assert_model(config, {**DDPMPP_CIFAR10, 'num_res_blocks': 8 if deep else 4,
                                  'dropout': 0.1 if dataset == 'cifar10' else 0.0})
            assert config.training.likelihood_weighting == lw
            assert config.training.importance_weighting == iw
            assert config.training.sde == sde and config.sampling.method == 'ode'
            assert config.data.dataset == dataset.upper()
            assert config.data.random_flip == (dataset == 'cifar10')
            eps = 1e-2 if sde == 'subvpsde' else (
                5e-5 if dataset == 'imagenet32' and weighting == 'lw_is' else 1e-5)
            assert config.training.eps == config.eval.eps == eps
            assert config.eval.num_repeats == (5 if dataset == 'cifar10' else 1)


def test_leaf_file_matches_table():
    config = load_leaf(ROOT / 'configs/subvp/cifar10_deep_lw_is.py')
    assert config == scoreflow_table.get_config('subvpsde', 'cifar10', True, 'lw_is')


# --- validation errors ----------------------------------------------------------------

def digits():
    return load_leaf(ROOT / 'configs/vp/digits_lw_is.py')


def setter(field, value):
    def mutate(config):
        *sections, name = field.split('.')
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    return mutate


def both(*mutations):
    def mutate(config):
        for m in mutations:
            m(config)
    return mutate


CASES = [
    (setter('training.sde', 'vpsd'), 'training.sde'),
    (setter('model.name', 'ncsn'), 'model.name'),
    (setter('data.dataset', 'MNIST'), 'data.dataset'),
    (setter('sampling.method', 'sde'), 'sampling.method'),
    (setter('sampling.predictor', 'euler'), 'sampling.predictor'),
    (setter('sampling.corrector', 'lang'), 'sampling.corrector'),
    (setter('eval.hutchinson_type', 'rademacher'), 'eval.hutchinson_type'),
    (setter('eval.bpd_dataset', 'valid'), 'eval.bpd_dataset'),
    (setter('training.batch_size', 100), 'training.batch_size'),
    (setter('eval.batch_size', 1020), 'eval.batch_size'),
    (setter('training.continuous', False), 'training.likelihood_weighting'),
    (both(setter('training.continuous', False), setter('training.likelihood_weighting', False)),
     'training.importance_weighting'),
    (setter('training.likelihood_weighting', False), 'training.importance_weighting'),
    (both(setter('training.sde', 'subvpsde'), setter('training.continuous', False),
          setter('training.likelihood_weighting', False),
          setter('training.importance_weighting', False)), 'training.continuous'),
    (setter('data.dataset', 'NPZ'), 'data.path'),
    (both(setter('data.dataset', 'NPZ'), setter('data.path', '/nonexistent/x.npz')),
     'data.path'),
    (setter('training.n_iters', 0), 'training.n_iters'),
    (setter('training.batch_size', -8), 'training.batch_size'),
    (setter('eval.batch_size', 0), 'eval.batch_size'),
    (setter('optim.lr', 0.0), 'optim.lr'),
    (setter('data.num_bins', 256), 'data.num_bins'),
    (setter('training.log_freq', 105), 'training.log_freq'),
    (setter('seed', -1), 'seed'),
    (setter('sed', 1), 'config.sed'),
    (setter('training.bach_size', 1), 'training.bach_size'),
    (setter('modle', {'nf': 1}), 'config.modle'),
]


@pytest.mark.parametrize('mutate,field', CASES, ids=[f for _, f in CASES])
def test_validation_error_names_field(mutate, field):
    config = digits()
    mutate(config)
    with pytest.raises(UserError) as info:
        validate_config(config, num_devices=8)
    assert field in str(info.value)


@pytest.mark.parametrize('kind', ['Rademacher', 'Gaussian', 'exact'])
def test_every_hutchinson_type_of_likelihood_validates(kind):
    """Each probe kind likelihood.get_nll_fn / get_bound_fn accept is a valid config."""
    config = digits()
    config.eval.hutchinson_type = kind
    validate_config(config, num_devices=8)


def test_typo_gets_a_suggestion():
    config = digits()
    config.training.bach_size = 1
    with pytest.raises(UserError, match='did you mean training.batch_size'):
        validate_config(config, num_devices=1)


def test_missing_field():
    config = digits()
    del config.eval['ckpt_timeout']
    with pytest.raises(UserError, match='config.eval.ckpt_timeout is missing'):
        validate_config(config, num_devices=1)


def test_section_replaced_by_value():
    fields = digits().to_dict()
    fields['optim'] = 3
    config = ml_collections.ConfigDict(fields)
    with pytest.raises(UserError, match='config.optim must be a section'):
        validate_config(config, num_devices=1)
