"""Noise-conditional classifiers p_t(y | x(t)) (models/wideresnet_noise_conditional.py).

The Wide ResNet must be the Score SDE classifier itself: the same parameter tree (names
and shapes), so that the original's checkpoints load, and the same parameter count.

Both references were produced by building the ORIGINAL module outside this repository
(2026-12-03, flax 0.12.8, jax 0.10.2): ``models/wideresnet_noise_conditional.py`` of
yang-song/score_sde at commit 0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c, copied to a
temporary directory and imported from there, then

    model = WideResnet(blocks_per_group=4, channel_multiplier=10, num_outputs=10)
    shapes = jax.eval_shape(lambda k: model.init({'params': k}, zeros([1, 32, 32, 3]),
                                                 ones([1]), train=False), PRNGKey(0))
    flatten_dict(shapes['params'], sep='/') -> {path: list(shape)}

written sorted, one leaf a line, to ``tests/fixtures/wideresnet_noise_conditional_params.json``
(106 leaves; ``shapes`` had no collection but ``params``).  On that day the two modules
also gave identical parameters from the same key and identical logits (small configs).
"""

from __future__ import annotations

import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_import import _fill

import classifier
from configs import base
from errors import UserError
from models import utils as mutils
from models.wideresnet_noise_conditional import ClassifierMLP, WideResnetNoiseConditional

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'wideresnet_noise_conditional_params.json'

# Parameter count of the original score_sde WideResnet (noise-conditional) for CIFAR-10,
# blocks_per_group=4, channel_multiplier=10, num_outputs=10, 32×32×3 inputs; obtained by
# building the original module (2026-12-03, flax 0.12.8; module docstring).  It includes
# the 128 fixed Fourier frequencies W.
ORIGINAL_CIFAR10_PARAM_COUNT = 38_913_242


def classifier_config(**overrides) -> ml_collections.ConfigDict:
    """A config with a ``classifier`` section (the fields of configs/base.py)."""
    section = {
        'name': 'wideresnet_noise_conditional',
        'blocks_per_group': 4,
        'channel_multiplier': 10,
        'embedding_type': 'fourier',
        'fourier_scale': 16.0,
        'nf': 256,
        'num_layers': 3,
    }
    section.update(overrides)
    config = ml_collections.ConfigDict()
    config.classifier = ml_collections.ConfigDict(section)
    return config


def shapes_of(model, input_shape):
    """Variables' shapes without computing anything."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    s = jax.ShapeDtypeStruct(input_shape[:1], jnp.float32)
    return jax.eval_shape(
        lambda k, x, s: model.init({'params': k}, x, s, train=False), jax.random.PRNGKey(0), x, s
    )


def flat_shapes(variables) -> dict:
    flat = flax.traverse_util.flatten_dict(variables['params'], sep='/')
    return {path: list(leaf.shape) for path, leaf in flat.items()}


@pytest.fixture(scope='module')
def small_wrn():
    """A tiny WRN (1 block per group, 16/32/64 channels) on 8×8×3 images, 5 classes."""
    config = classifier_config(blocks_per_group=1, channel_multiplier=1)
    model, variables = mutils.init_classifier(jax.random.PRNGKey(0), config, 5, (2, 8, 8, 3))
    return model, variables, jax.jit(model.apply, static_argnames='train')


def images(key, batch=2):
    return jax.random.normal(key, (batch, 8, 8, 3))


# ------------------------------------------------------------------ the original's tree
def test_cifar10_classifier_has_the_original_parameter_count_and_tree():
    model = mutils.create_classifier(classifier_config(), num_classes=10)
    assert isinstance(model, WideResnetNoiseConditional)
    shapes = shapes_of(model, (1, 32, 32, 3))
    assert list(shapes) == ['params']  # GroupNorm only: no batch statistics
    assert mutils.param_count(shapes) == ORIGINAL_CIFAR10_PARAM_COUNT
    assert flat_shapes(shapes) == json.loads(FIXTURE.read_text(encoding='utf-8'))


# ------------------------------------------------------------------ Wide ResNet forward
# The logits of score_sde's own classifier (models/utils.py:get_logit_fn: CIFAR-10's
# per-channel mean/std, then WideResnet(blocks_per_group=1, channel_multiplier=1,
# num_outputs=5)) on 2 × 8×8×3 inputs, every parameter set by test_import._fill from its
# path (the names are ours too), computed outside this repository in float64
# (tests/fixtures/original_network_outputs.json, its '_about').
ORIGINAL = json.loads(
    (FIXTURE.parent / 'original_network_outputs.json').read_text(encoding='utf-8')
)['cases']['wideresnet_classifier']


def _original_classifier_inputs():
    """(our classifier behind classifier.standardized for CIFAR-10, the fixture's
    parameters in float64, x, σ) — call under jax.enable_x64."""
    config = classifier_config(blocks_per_group=1, channel_multiplier=1)
    config.data = base.get_base_config().data  # CIFAR-10, data in [0, 1]
    network = mutils.create_classifier(config, num_classes=5)
    assert flat_shapes(shapes_of(network, (2, 8, 8, 3))) == ORIGINAL['params']
    params = flax.traverse_util.unflatten_dict(
        {
            tuple(p.split('/')): jnp.asarray(_fill(p, s), jnp.float64)
            for p, s in ORIGINAL['params'].items()
        }
    )
    x = jnp.asarray(np.random.RandomState(2).uniform(size=(2, 8, 8, 3)))
    sigmas = jnp.asarray(ORIGINAL['labels'], jnp.float64)
    return classifier.standardized(config, network), {'params': params}, x, sigmas


def test_wrn_gives_the_original_logits():
    """The network alone: the original WideResnet's logits on the same x (float64; to 1e-6,
    as σ enters in float32 here, so the phases 2π W log σ carry float32 rounding); a
    scalar σ is used for every image and ``train`` changes nothing (no dropout, no batch
    statistics)."""
    with jax.enable_x64(True):
        model, variables, x, sigmas = _original_classifier_inputs()
        logits = model.network.apply(variables, x, sigmas, train=False)
        assert logits.dtype == jnp.float64
        np.testing.assert_allclose(logits, ORIGINAL['output_without_preprocess'], atol=1e-6)
        one = model.network.apply(variables, x, sigmas[1], train=True)
        np.testing.assert_allclose(one[1], logits[1], atol=1e-12)


def test_classifier_reads_its_input_standardized_as_the_original():
    """Through ``classifier.standardized`` (CIFAR-10's per-channel mean and std, as
    score_sde's get_logit_fn): the original's logits to 1e-6. Without the standardisation
    they differ by up to 0.04 (the per-image standardisation inside the network undoes
    any affine map common to the channels, not a per-channel one)."""
    with jax.enable_x64(True):
        model, variables, x, sigmas = _original_classifier_inputs()
        np.testing.assert_allclose(model.mean, [0.49139968, 0.48215841, 0.44653091], rtol=1e-7)
        logits = model.apply(variables, x, sigmas, train=False)
        np.testing.assert_allclose(logits, ORIGINAL['output'], atol=1e-6)


def test_wrn_is_invariant_to_affine_rescaling_of_each_image(small_wrn):
    """Per-image standardisation: x → a·x + b (a > 0, per image) leaves the logits."""
    _, variables, apply = small_wrn
    x = images(jax.random.PRNGKey(3), batch=2)
    sigmas = jnp.array([0.3, 3.0])
    a = jnp.array([2.5, 0.2])[:, None, None, None]
    b = jnp.array([-1.0, 4.0])[:, None, None, None]
    logits = apply(variables, x, sigmas, train=False)
    moved = apply(variables, a * x + b, sigmas, train=False)
    np.testing.assert_allclose(moved, logits, rtol=1e-4, atol=1e-4)


def test_fourier_frequencies_are_not_trained_but_the_input_gradient_flows(small_wrn):
    model, variables, _ = small_wrn
    x = images(jax.random.PRNGKey(4))
    sigmas = jnp.array([0.5, 5.0])

    def loss(params, x):
        return jnp.sum(model.apply({'params': params}, x, sigmas)[:, 0])

    grads, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables['params'], x)
    assert np.all(grads['GaussianFourierProjection_0']['W'] == 0)  # stop_gradient
    assert np.any(grads['Dense_0']['kernel'] != 0)
    assert np.any(grad_x != 0)  # ∇_x log p_t(y | x), the guidance term


def test_positional_embedding_has_no_frequencies_and_the_same_other_shapes():
    fourier = mutils.create_classifier(
        classifier_config(blocks_per_group=1, channel_multiplier=1), 5
    )
    model, variables = mutils.init_classifier(
        jax.random.PRNGKey(0),
        classifier_config(blocks_per_group=1, channel_multiplier=1, embedding_type='positional'),
        5,
        (2, 8, 8, 3),
    )
    assert model.embedding_type == 'positional'
    expected = flat_shapes(shapes_of(fourier, (2, 8, 8, 3)))
    del expected['GaussianFourierProjection_0/W']
    assert flat_shapes(variables) == expected  # sinusoid of log σ as wide as the features
    x = jnp.repeat(images(jax.random.PRNGKey(5), batch=1), 2, axis=0)
    logits = jax.jit(model.apply)(variables, x, jnp.array([0.01, 50.0]))
    assert logits.shape == (2, 5)
    assert np.max(np.abs(logits[0] - logits[1])) > 1e-4


# ------------------------------------------------------------------ MLP
@pytest.mark.parametrize('embedding_type', ['fourier', 'positional'])
def test_mlp_shapes_and_sigma_dependence(embedding_type):
    config = classifier_config(name='mlp', nf=32, num_layers=2, embedding_type=embedding_type)
    model, variables = mutils.init_classifier(jax.random.PRNGKey(0), config, 4, (3, 2))
    assert isinstance(model, ClassifierMLP)
    assert (model.nf, model.num_layers, model.num_outputs) == (32, 2, 4)
    shapes = flat_shapes(variables)
    assert shapes['Dense_0/kernel'] == [256, 32]  # log σ features → width nf
    assert shapes['Dense_2/kernel'] == [2, 32]  # first hidden layer
    assert shapes['Dense_6/kernel'] == [32, 4]  # logits
    assert ('GaussianFourierProjection_0/W' in shapes) == (embedding_type == 'fourier')
    x = jnp.array([[0.5, -1.0]] * 3)
    logits = model.apply(variables, x, jnp.array([0.01, 1.0, 50.0]))
    assert logits.shape == (3, 4)
    assert np.max(np.abs(logits[0] - logits[2])) > 1e-4
    assert np.max(np.abs(logits[1] - logits[2])) > 1e-4


# ------------------------------------------------------------------ registry and config
def test_registry_lookups():
    assert mutils.registered_classifiers() == ('mlp', 'wideresnet_noise_conditional')
    assert mutils.get_classifier('wideresnet_noise_conditional') is WideResnetNoiseConditional
    assert mutils.get_classifier('mlp') is ClassifierMLP
    # A separate registry: the score model 'mlp' is another class.
    assert mutils.get_model('mlp') is not ClassifierMLP
    assert 'wideresnet_noise_conditional' not in mutils.registered_models()
    with pytest.raises(ValueError, match='already registered'):
        mutils.register_classifier('mlp')(ClassifierMLP)


def test_unknown_classifier_name_is_a_user_error_listing_the_choices():
    with pytest.raises(UserError, match='mlp, wideresnet_noise_conditional') as info:
        mutils.create_classifier(classifier_config(name='resnet50'), 10)
    assert "config.classifier.name='resnet50'" in str(info.value)
    with pytest.raises(UserError, match='mlp, wideresnet_noise_conditional'):
        mutils.get_classifier('resnet50')


def test_create_classifier_reads_config_classifier():
    model = mutils.create_classifier(
        classifier_config(blocks_per_group=2, channel_multiplier=3, fourier_scale=8), 7
    )
    assert (model.blocks_per_group, model.channel_multiplier, model.num_outputs) == (2, 3, 7)
    assert model.fourier_scale == 8.0 and model.embedding_type == 'fourier'
    # Extra fields of the section (training settings) are ignored; absent ones default.
    config = ml_collections.ConfigDict({'classifier': {'name': 'mlp', 'lr': 2e-4}})
    mlp = mutils.create_classifier(config, 3)
    assert (mlp.nf, mlp.num_layers, mlp.num_outputs) == (256, 3, 3)


@pytest.mark.parametrize(
    'field, value',
    [('embedding_type', 'learned'), ('blocks_per_group', 0), ('nf', 2.5), ('fourier_scale', -1)],
)
def test_bad_classifier_fields_are_user_errors(field, value):
    with pytest.raises(UserError, match=f'config.classifier.{field}='):
        mutils.create_classifier(classifier_config(**{field: value}), 10)


def test_bad_num_classes_and_input_rank_are_user_errors():
    with pytest.raises(UserError, match='num_classes'):
        mutils.create_classifier(classifier_config(), 0)
    with pytest.raises(UserError, match='rank 2'):
        mutils.init_classifier(
            jax.random.PRNGKey(0), classifier_config(name='mlp'), 3, (2, 8, 8, 3)
        )
