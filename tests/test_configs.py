"""Configs: every leaf loads, has exactly the schema's fields and validates; the paper
settings are the original ones; every validation error names its field."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

import validation
from configs import base
from errors import UserError
from validation import prepare_config, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEAVES = sorted(
    p
    for pattern in ('*/*.py', 'score_flow/*/*.py')  # ours, and score_flow's own configs
    for p in (ROOT / 'configs').glob(pattern)
    if p.name != '__init__.py'
)


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
    table = {
        f'{f}/{d}_{deep}{w}.py'
        for f in ('vp', 'subvp')
        for d in ('cifar10', 'imagenet32')
        for deep in ('', 'deep_')
        for w in ('baseline', 'lw', 'lw_is')
    }
    paper = {
        've/cifar10_ncsnpp_continuous.py',
        've/cifar10_ncsnpp_deep_continuous.py',
        'vp/cifar10_ddpmpp_continuous.py',
        'subvp/cifar10_ddpmpp_continuous.py',
    }
    # ScoreFlow's experiment in miniature (scripts/scoreflow_table.py): both SDEs × the
    # three objectives, on DIGITS and on the TOY mixture.
    small = {
        f'{f}/{d}_{w}.py'
        for f in ('vp', 'subvp')
        for d in ('digits', 'toy')
        for w in ('baseline', 'lw', 'lw_is')
    }
    assert len(small) == 12
    assert table | paper | small | {'ve/digits_ncsnpp.py'} <= names


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
    argv = [
        'prog',
        f'--config={ROOT}/configs/vp/digits_lw_is.py',
        '--config.training.batch_size=64',
        '--config.model.ch_mult=(1,2,2)',
    ]
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
    'name': 'ncsnpp',
    'scale_by_sigma': False,
    'ema_rate': 0.9999,
    'normalization': 'GroupNorm',
    'nonlinearity': 'swish',
    'nf': 128,
    'ch_mult': (1, 2, 2, 2),
    'num_res_blocks': 4,
    'attn_resolutions': (16,),
    'resamp_with_conv': True,
    'conditional': True,
    'fir': False,
    'fir_kernel': [1, 3, 3, 1],
    'skip_rescale': True,
    'resblock_type': 'biggan',
    'progressive': 'none',
    'progressive_input': 'none',
    'progressive_combine': 'sum',
    'attention_type': 'ddpm',
    'init_scale': 0.0,
    'embedding_type': 'positional',
    'fourier_scale': 16,
    'conv_size': 3,
    'dropout': 0.1,
    'beta_min': 0.1,
    'beta_max': 20.0,
}
NCSNPP_CIFAR10 = {
    **DDPMPP_CIFAR10,
    'scale_by_sigma': True,
    'ema_rate': 0.999,
    'fir': True,
    'progressive_input': 'residual',
    'embedding_type': 'fourier',
    'sigma_min': 0.01,
    'sigma_max': 50,
}
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
        'euler_maruyama',
        'none',
        True,
    )
    assert load_leaf(ROOT / 'configs/subvp/cifar10_ddpmpp_continuous.py').training.sde == 'subvpsde'
    ve = load_leaf(ROOT / 'configs/ve/cifar10_ncsnpp_continuous.py')
    assert_model(ve, NCSNPP_CIFAR10)
    assert (ve.sampling.predictor, ve.sampling.corrector) == ('reverse_diffusion', 'langevin')
    assert not ve.data.centered and not ve.training.reduce_mean
    deep = load_leaf(ROOT / 'configs/ve/cifar10_ncsnpp_deep_continuous.py')
    assert_model(deep, {**NCSNPP_CIFAR10, 'num_res_blocks': 8})
    assert deep.training.n_iters == 950001


# --- ScoreFlow: our 24 leaves against yang-song/score_flow's own files ----------------------
#
# Transcribed by hand from yang-song/score_flow (commit a92204e; configs/ unchanged at
# 1db7922), under score_flow's field names, and deliberately not computed with anything in
# configs/. A score_flow run is a dataset defaults file, then a leaf file
# configs/{vp,subvp}/{cifar10,imagenet32}_ddpmpp{,_deep}_continuous.py, then the weighting
# flags on the command line; each of our leaves configs/{vp,subvp}/{dataset}_{,deep_}
# {baseline,lw,lw_is}.py must equal that, up to SF_RENAMED, SF_ABSENT and SF_DELIBERATE.

SF_DEFAULT_CIFAR10 = {  # yang-song/score_flow configs/default_cifar10_configs.py
    'training.batch_size': 128,
    'training.n_iters': 1300001,
    'training.snapshot_freq': 50000,
    'training.log_freq': 100,
    'training.eval_freq': 100,
    'training.snapshot_freq_for_preemption': 10000,
    'training.snapshot_sampling': True,
    'training.likelihood_weighting': False,
    'training.importance_weighting': False,
    'training.continuous': True,
    'training.n_jitted_steps': 5,
    'training.reduce_mean': False,
    'training.smallest_time': 1e-5,
    'deq.n_iters': 300001,
    'deq.ema_rate': 0.99,
    'deq.dropout': 0.0,
    'deq.offset': True,
    'sampling.n_steps_each': 1,
    'sampling.noise_removal': True,
    'sampling.probability_flow': False,
    'sampling.snr': 0.16,
    'sampling.smallest_time': 1e-3,
    'eval.begin_ckpt': 26,
    'eval.end_ckpt': 26,
    'eval.ckpt_id': 26,
    'eval.batch_size': 1024,
    'eval.enable_sampling': False,
    'eval.num_samples': 50000,
    'eval.enable_loss': False,
    'eval.enable_bpd': True,
    'eval.bpd_dataset': 'test',
    'eval.num_repeats': 5,
    'eval.bound': False,
    'eval.dsm': True,
    'eval.dequantizer': False,
    'eval.offset': True,
    'data.dataset': 'CIFAR10',
    'data.image_size': 32,
    'data.random_flip': True,
    'data.centered': False,
    'data.uniform_dequantization': False,
    'data.num_channels': 3,
    'model.sigma_min': 0.01,
    'model.sigma_max': 50,
    'model.num_scales': 1000,
    'model.beta_min': 0.1,
    'model.beta_max': 20.0,
    'model.dropout': 0.1,
    'model.embedding_type': 'fourier',
    'model.data_init': False,
    'model.trainable_embedding': False,
    'optim.weight_decay': 0,
    'optim.optimizer': 'Adam',
    'optim.lr': 2e-4,
    'optim.beta1': 0.9,
    'optim.eps': 1e-8,
    'optim.warmup': 5000,
    'optim.grad_clip': 1.0,
    'seed': 42,
}
SF_DEFAULT_IMAGENET32 = {  # yang-song/score_flow configs/default_imagenet32_configs.py
    'training.batch_size': 128,
    'training.n_iters': 1300001,
    'training.snapshot_freq': 50000,
    'training.log_freq': 100,
    'training.eval_freq': 100,
    'training.snapshot_freq_for_preemption': 10000,
    'training.snapshot_sampling': True,
    'training.likelihood_weighting': False,
    'training.importance_weighting': False,
    'training.continuous': True,
    'training.n_jitted_steps': 5,
    'training.reduce_mean': False,
    'training.smallest_time': 1e-5,
    'sampling.n_steps_each': 1,
    'sampling.noise_removal': True,
    'sampling.probability_flow': False,
    'sampling.snr': 0.16,  # no smallest_time here
    'eval.begin_ckpt': 26,
    'eval.end_ckpt': 26,
    'eval.ckpt_id': 26,
    'eval.batch_size': 1024,
    'eval.enable_sampling': False,
    'eval.num_samples': 50000,
    'eval.enable_loss': False,
    'eval.enable_bpd': True,
    'eval.bpd_dataset': 'test',
    'eval.num_repeats': 1,
    'eval.bound': False,
    'eval.dsm': True,
    'eval.dequantizer': False,
    'eval.offset': True,
    'deq.n_iters': 300001,
    'deq.ema_rate': 0.99,
    'deq.dropout': 0.0,
    'deq.offset': True,
    'data.dataset': 'ImageNet',
    'data.image_size': 32,
    'data.random_flip': False,
    'data.centered': False,
    'data.uniform_dequantization': False,
    'data.num_channels': 3,
    'model.sigma_min': 0.01,
    'model.sigma_max': 50,
    'model.num_scales': 1000,
    'model.beta_min': 0.1,
    'model.beta_max': 20.0,
    'model.dropout': 0.0,
    'model.embedding_type': 'fourier',
    'model.data_init': False,
    'model.trainable_embedding': False,
    'optim.weight_decay': 0,
    'optim.optimizer': 'Adam',
    'optim.lr': 2e-4,
    'optim.beta1': 0.9,
    'optim.eps': 1e-8,
    'optim.warmup': 5000,
    'optim.grad_clip': 1.0,
    'seed': 42,
}
# The model section, written out identically in all eight leaf files below except
# num_res_blocks (4; 8 in the *_ddpmpp_deep_continuous.py files).
SF_DDPMPP_MODEL = {
    'model.name': 'ncsnpp',
    'model.scale_by_sigma': False,
    'model.ema_rate': 0.9999,
    'model.normalization': 'GroupNorm',
    'model.nonlinearity': 'swish',
    'model.nf': 128,
    'model.ch_mult': (1, 2, 2, 2),
    'model.attn_resolutions': (16,),
    'model.resamp_with_conv': True,
    'model.conditional': True,
    'model.fir': False,
    'model.fir_kernel': [1, 3, 3, 1],
    'model.skip_rescale': True,
    'model.resblock_type': 'biggan',
    'model.progressive': 'none',
    'model.progressive_input': 'none',
    'model.progressive_combine': 'sum',
    'model.attention_type': 'ddpm',
    'model.init_scale': 0.0,
    'model.embedding_type': 'positional',
    'model.fourier_scale': 16,
    'model.conv_size': 3,
}
# The eval section of the four *_ddpmpp_deep_continuous.py files.
SF_DEEP_EVAL = {'eval.begin_ckpt': 19, 'eval.end_ckpt': 19, 'eval.ckpt_id': 19}

SF_VP_CIFAR10 = {  # yang-song/score_flow configs/vp/cifar10_ddpmpp_continuous.py
    'training.sde': 'vpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-3,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 4,
}
SF_VP_CIFAR10_DEEP = {  # yang-song/score_flow configs/vp/cifar10_ddpmpp_deep_continuous.py
    'training.sde': 'vpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'training.n_iters': 950001,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-3,
    **SF_DEEP_EVAL,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 8,
}
# Both VP ImageNet32 files read `training.smallest_time = 5e-5 if
# training.likelihood_weighting and training.importance_weighting else 1e-5`, evaluated in
# get_config() while both flags still hold the defaults' False (ml_collections applies the
# command line afterwards), so every run of the file got 1e-5; see SF_DELIBERATE.
SF_VP_IMAGENET32 = {  # yang-song/score_flow configs/vp/imagenet32_ddpmpp_continuous.py
    'training.sde': 'vpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'training.smallest_time': 1e-5,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-3,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 4,
}
SF_VP_IMAGENET32_DEEP = {  # yang-song/score_flow configs/vp/imagenet32_ddpmpp_deep_continuous.py
    'training.sde': 'vpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'training.n_iters': 950001,
    'training.smallest_time': 1e-5,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-3,
    **SF_DEEP_EVAL,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 8,
}
SF_SUBVP_CIFAR10 = {  # yang-song/score_flow configs/subvp/cifar10_ddpmpp_continuous.py
    'training.sde': 'subvpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'training.smallest_time': 1e-2,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-2,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 4,
}
SF_SUBVP_CIFAR10_DEEP = {  # yang-song/score_flow configs/subvp/cifar10_ddpmpp_deep_continuous.py
    'training.sde': 'subvpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'training.n_iters': 950001,
    'training.smallest_time': 1e-2,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-2,
    **SF_DEEP_EVAL,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 8,
}
SF_SUBVP_IMAGENET32 = {  # yang-song/score_flow configs/subvp/imagenet32_ddpmpp_continuous.py
    'training.sde': 'subvpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'training.smallest_time': 1e-2,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-2,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 4,
}
SF_SUBVP_IMAGENET32_DEEP = {  # score_flow configs/subvp/imagenet32_ddpmpp_deep_continuous.py
    'training.sde': 'subvpsde',
    'training.continuous': True,
    'training.reduce_mean': True,
    'training.n_iters': 950001,
    'training.smallest_time': 1e-2,
    'sampling.method': 'ode',
    'sampling.smallest_time': 1e-2,
    **SF_DEEP_EVAL,
    'data.centered': True,
    **SF_DDPMPP_MODEL,
    'model.num_res_blocks': 8,
}

SF_FILES = {  # (our folder, dataset, deep) -> (score_flow defaults file, leaf file)
    ('vp', 'cifar10', False): (SF_DEFAULT_CIFAR10, SF_VP_CIFAR10),
    ('vp', 'cifar10', True): (SF_DEFAULT_CIFAR10, SF_VP_CIFAR10_DEEP),
    ('vp', 'imagenet32', False): (SF_DEFAULT_IMAGENET32, SF_VP_IMAGENET32),
    ('vp', 'imagenet32', True): (SF_DEFAULT_IMAGENET32, SF_VP_IMAGENET32_DEEP),
    ('subvp', 'cifar10', False): (SF_DEFAULT_CIFAR10, SF_SUBVP_CIFAR10),
    ('subvp', 'cifar10', True): (SF_DEFAULT_CIFAR10, SF_SUBVP_CIFAR10_DEEP),
    ('subvp', 'imagenet32', False): (SF_DEFAULT_IMAGENET32, SF_SUBVP_IMAGENET32),
    ('subvp', 'imagenet32', True): (SF_DEFAULT_IMAGENET32, SF_SUBVP_IMAGENET32_DEEP),
}
# score_flow sets the weighting on the command line (README, "Configurations for training":
# --config.training.likelihood_weighting, and importance_weighting for importance sampling;
# its checkpoints are named *_likelihood_iw_*); our leaves bake in one choice each.
SF_WEIGHTINGS = {
    'baseline': {'training.likelihood_weighting': False, 'training.importance_weighting': False},
    'lw': {'training.likelihood_weighting': True, 'training.importance_weighting': False},
    'lw_is': {'training.likelihood_weighting': True, 'training.importance_weighting': True},
}
# Settings that score_flow fixes in code and that are config fields here.
SF_CODE_DEFAULTS = {
    # likelihood.py get_likelihood_fn(hutchinson_type='Rademacher', rtol=1e-5, atol=1e-5)
    'eval.hutchinson_type': 'Rademacher',
    'eval.rtol': 1e-5,
    'eval.atol': 1e-5,
    # sampling.py get_ode_sampler(rtol=1e-5, atol=1e-5), as called by get_sampling_fn
    'sampling.rtol': 1e-5,
    'sampling.atol': 1e-5,
    # Deliberate: score_flow solves with SciPy's method='RK45'; here diffrax's 'dopri5', the
    # same Dormand-Prince pair on device (README, "diffrax"; likelihood.py).
    'sampling.ode_method': 'dopri5',
    # losses.py get_optimizer: flax.optim.Adam(beta1, eps, weight_decay), beta2 its 0.999
    'optim.beta2': 0.999,
}
# score_flow field -> our field(s). run_lib.py passes training.smallest_time to the losses
# and, in evaluate(), as eps to the likelihood ODE and the bound; here those are
# training.eps and eval.eps. sampling.smallest_time is the sampler's eps.
SF_RENAMED = {
    'training.smallest_time': ('training.eps', 'eval.eps'),
    'sampling.smallest_time': ('sampling.eps',),
}
# Deliberate: score_flow's 'ImageNet' at image_size 32 is TFDS downsampled_imagenet/32x32
# (its datasets.py); here that dataset is called IMAGENET32 (README, "Datasets").
SF_DATASET_NAMES = {'CIFAR10': 'CIFAR10', 'ImageNet': 'IMAGENET32'}
SF_ABSENT = {
    # score_flow's train_deq loads snapshot eval.ckpt_id; ours (dequantizer.train_deq) loads
    # eval.end_ckpt, which equals ckpt_id in every original file (asserted below).
    'eval.ckpt_id',
    # Set in both defaults files and read nowhere in score_flow's code.
    'model.data_init',
}
SF_DELIBERATE = {  # (our folder, dataset, weighting) -> our values
    # configs/vp/imagenet32_{,deep_}lw_is.py: the ε = 5e-5 that score_flow's VP ImageNet32
    # files meant for likelihood weighting + importance sampling (see SF_VP_IMAGENET32).
    ('vp', 'imagenet32', 'lw_is'): {'training.eps': 5e-5, 'eval.eps': 5e-5},
}

SCOREFLOW_LEAVES = [
    (folder, dataset, deep, weighting)
    for folder, dataset, deep in SF_FILES
    for weighting in SF_WEIGHTINGS
]


def scoreflow_expected(folder, dataset, deep, weighting):
    """Our field -> value for one leaf, from the score_flow transcription above."""
    defaults, leaf = SF_FILES[folder, dataset, deep]
    original = {**defaults, **leaf, **SF_WEIGHTINGS[weighting]}
    assert original['eval.ckpt_id'] == original['eval.end_ckpt']
    expected = dict(SF_CODE_DEFAULTS)
    for field, value in original.items():
        if field in SF_ABSENT:
            continue
        if field == 'data.dataset':
            value = SF_DATASET_NAMES[value]
        for ours in SF_RENAMED.get(field, (field,)):
            expected[ours] = value
    expected.update(SF_DELIBERATE.get((folder, dataset, weighting), {}))
    return expected


def config_field(config, field):
    node = config
    for name in field.split('.'):
        node = node[name]
    return tuple(node) if isinstance(node, (list, tuple)) else node


def scoreflow_mismatches(config, folder, dataset, deep, weighting):
    """{field: (ours, score_flow's)} for every transcribed field that differs."""
    wrong = {}
    for field, value in scoreflow_expected(folder, dataset, deep, weighting).items():
        value = tuple(value) if isinstance(value, (list, tuple)) else value
        try:
            ours = config_field(config, field)
        except (KeyError, AttributeError):
            ours = '<missing>'
        if ours != value or isinstance(ours, bool) != isinstance(value, bool):
            wrong[field] = (ours, value)
    return wrong


def scoreflow_leaf_path(folder, dataset, deep, weighting):
    return ROOT / 'configs' / folder / f'{dataset}_{"deep_" if deep else ""}{weighting}.py'


@pytest.mark.parametrize(
    'folder,dataset,deep,weighting',
    SCOREFLOW_LEAVES,
    ids=[
        scoreflow_leaf_path(*leaf).relative_to(ROOT / 'configs').as_posix()
        for leaf in SCOREFLOW_LEAVES
    ],
)
def test_scoreflow_leaf_matches_score_flow(folder, dataset, deep, weighting):
    config = load_leaf(scoreflow_leaf_path(folder, dataset, deep, weighting))
    wrong = scoreflow_mismatches(config, folder, dataset, deep, weighting)
    assert not wrong, f'field: (ours, score_flow) {wrong}'


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
    (setter('model.name', 'ncsn_v3'), 'model.name'),
    (setter('data.dataset', 'MNIST'), 'data.dataset'),
    (setter('sampling.method', 'sde'), 'sampling.method'),
    (setter('sampling.predictor', 'euler'), 'sampling.predictor'),
    (setter('sampling.corrector', 'lang'), 'sampling.corrector'),
    (setter('eval.hutchinson_type', 'rademacher'), 'eval.hutchinson_type'),
    (setter('eval.bpd_dataset', 'valid'), 'eval.bpd_dataset'),
    (setter('training.batch_size', 100), 'training.batch_size'),
    (setter('eval.batch_size', 1020), 'eval.batch_size'),
    (setter('training.continuous', False), 'training.likelihood_weighting'),
    (
        both(setter('training.continuous', False), setter('training.likelihood_weighting', False)),
        'training.importance_weighting',
    ),
    (setter('training.likelihood_weighting', False), 'training.importance_weighting'),
    (
        both(
            setter('training.sde', 'subvpsde'),
            setter('training.continuous', False),
            setter('training.likelihood_weighting', False),
            setter('training.importance_weighting', False),
        ),
        'training.continuous',
    ),
    (setter('data.dataset', 'NPZ'), 'data.path'),
    (both(setter('data.dataset', 'NPZ'), setter('data.path', '/nonexistent/x.npz')), 'data.path'),
    (setter('data.dataset', 'LSUN'), 'data.category'),  # no category
    (both(setter('data.dataset', 'LSUN'), setter('data.category', 'church')), 'data.category'),
    (setter('data.dataset', 'CelebAHQ'), 'data.tfrecords_path'),
    (setter('data.dataset', 'FFHQ'), 'data.tfrecords_path'),
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


def test_unknown_field_without_a_close_name_gets_no_suggestion():
    config = digits()
    config.eval.ckpt_step = 26  # shares 'ckpt_' with ckpt_timeout (ratio 0.67), nothing more
    with pytest.raises(UserError, match='ckpt_step') as err:
        validate_config(config, num_devices=1)
    assert 'did you mean' not in str(err.value)


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


# --- the originals' field names -------------------------------------------------------
# Read outside this repository from every file under configs/ of yang-song/score_sde and
# yang-song/score_flow (defaults and leaves): the names of all the fields they set.
ORIGINAL_FIELDS = json.loads((ROOT / 'tests/fixtures/original_config_fields.json').read_text())
# Set in one or two leaf files of score_sde and read nowhere in its code; our copies of
# those files leave them out, and validation accepts and drops them (validation.IGNORED),
# so that the originals' files run as written (tests/test_original_leaves.py).
ORIGINAL_LEAF_ONLY = {
    'model.sigma_begin',  # configs/ve/celeba_ncsnpp.py
    'device',  # a torch.device in the CelebA-HQ / FFHQ files (they import torch)
    'training.loss',  # configs/ve/ncsn/celeba.py
    'training.continuouse',  # a typo in configs/ve/ncsnv2/bedroom.py
}


@pytest.mark.parametrize('origin', sorted(ORIGINAL_FIELDS))
def test_every_field_of_the_originals_is_known(origin):
    schema = base.get_base_config()
    unknown = []
    for field in ORIGINAL_FIELDS[origin]:
        try:
            config_field(schema, field)
        except (KeyError, AttributeError):
            unknown.append(field)
    assert set(unknown) <= ORIGINAL_LEAF_ONLY, unknown
    assert len(ORIGINAL_FIELDS[origin]) > 70
    assert set(validation.IGNORED) == ORIGINAL_LEAF_ONLY


def test_score_flow_smallest_time_sets_our_fields():
    config = digits()
    config.training.smallest_time = 1e-2
    config.sampling.smallest_time = 2e-2
    prepared = prepare_config(config, num_devices=1)
    assert prepared.training.eps == prepared.eval.eps == 1e-2
    assert prepared.sampling.eps == 2e-2
    unset = prepare_config(digits(), num_devices=1)
    assert (unset.training.eps, unset.eval.eps, unset.sampling.eps) == (
        digits().training.eps,
        digits().eval.eps,
        digits().sampling.eps,
    )


def test_linear_ve_with_scale_by_sigma_is_refused():
    """score_flow's linear VE divides the output by σ(t) itself; with ``scale_by_sigma``
    NCSN++ would divide by its label again (score_flow stops on this pair)."""
    config = digits()
    config.training.sde = 'linearvesde'
    validate_config(config, num_devices=1)
    config.model.scale_by_sigma = True
    with pytest.raises(UserError) as e:
        validate_config(config, num_devices=1)
    assert str(e.value).startswith('config.model.scale_by_sigma=True divides')
    assert "training.sde='linearvesde'" in str(e.value) and 'set it to False' in str(e.value)
    config.training.sde = 'vesde'
    validate_config(config, num_devices=1)


@pytest.mark.parametrize('field', ['model.data_init', 'optim.amsgrad'])
def test_original_fields_of_unbuilt_features_are_refused(field):
    config = digits()
    section, name = field.split('.')
    config[section][name] = True
    with pytest.raises(UserError, match=f'config.{field}=True .*not supported'):
        validate_config(config, num_devices=1)


# --- Score SDE: every leaf at its original path with its original values ---------------
# The resolved values of each of score_sde's 39 leaf configs (configs/{ve,vp,subvp}/...),
# computed outside this repository by loading the original files (field -> value).
SCORE_SDE = json.loads((ROOT / 'tests/fixtures/score_sde_configs.json').read_text())
# Every leaf is provided (LSUN, CelebA-HQ and FFHQ since 2026-12-04); a leaf left out
# would be listed here with the reason.
SCORE_SDE_NOT_YET: dict[str, str] = {}


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def test_score_sde_leaves_are_at_their_original_paths():
    assert len(SCORE_SDE) == 39
    missing = {path for path in SCORE_SDE if not (ROOT / 'configs' / path).exists()}
    assert missing == set(SCORE_SDE_NOT_YET)


@pytest.mark.parametrize('path', sorted(set(SCORE_SDE) - set(SCORE_SDE_NOT_YET)))
def test_score_sde_leaf_has_the_original_values(path):
    config = load_leaf(ROOT / 'configs' / path)
    wrong = {}
    for field, value in SCORE_SDE[path].items():
        if field in ORIGINAL_LEAF_ONLY:
            continue
        ours = _plain(config_field(config, field))
        if ours != value or isinstance(ours, bool) != isinstance(value, bool):
            wrong[field] = (ours, value)
    assert not wrong, f'field: (ours, score_sde) {wrong}'
