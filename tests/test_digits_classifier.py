"""digits_classifier.py: the feature network of DIGITS, trained by trainer.TrainLoop."""

import os

import jax
import numpy as np
import pytest

import checkpointing
import datasets
import digits_classifier
import evaluation
import train_utils
from configs import default_digits_configs


@pytest.fixture(scope='module')
def digits_workdir(tmp_path_factory):
    """A work directory whose digits classifier is trained once (about 12 s on 2 cores)."""
    workdir = str(tmp_path_factory.mktemp('digits_work'))
    digits_classifier.get_digits_classifier(workdir)
    return workdir


def _test_split():
    config = default_digits_configs.get_default_configs()
    test = datasets.get_shard(config, 'test', process_index=0, process_count=1)
    return datasets.to_unit_interval(test.data, 17), test.labels


def test_its_batches_are_the_whole_digits_training_split():
    config = digits_classifier.run_config()
    train = datasets.get_shard(config, 'train', process_index=0, process_count=1)
    x, y = next(
        datasets.get_train_iterator(config, 7, process_index=0, process_count=1, with_labels=True)
    )
    assert x.shape == (50, 1600, 8, 8, 1) and y.shape == (50, 1600)
    np.testing.assert_array_equal(x[3], train.data / np.float32(16))  # x̄/16, every digit
    np.testing.assert_array_equal(y[3], train.labels)


def test_accuracy_cache_and_judge(digits_workdir):
    folder = os.path.join(digits_workdir, digits_classifier.CLASSIFIER_FOLDER)
    assert checkpointing.list_preemption_checkpoints(folder)[-1] == digits_classifier.NUM_STEPS
    net = digits_classifier.get_digits_classifier(digits_workdir)  # restored, not retrained
    test_x, test_y = _test_split()
    features, logits = net(test_x)
    assert features.shape == (197, 64) and logits.shape == (197, 10)
    assert np.mean(logits.argmax(axis=1) == test_y) > 0.97  # measured 0.985
    config = default_digits_configs.get_default_configs()
    judge, description = evaluation.label_judge(digits_workdir, config)
    assert description == 'digits classifier' and judge.fingerprint == net.fingerprint
    np.testing.assert_array_equal(judge(test_x[:5])[1], logits[:5])


def test_an_interrupted_training_resumes_exactly(digits_workdir, tmp_path):
    """Killed after 100 of 300 steps (its checkpoint at 100 kept): the next call trains
    steps 100 → 300 only, to the parameters of the uninterrupted run."""
    folder = os.path.join(str(tmp_path), digits_classifier.CLASSIFIER_FOLDER)
    trainer = digits_classifier.DigitsClassifierTrainer(folder)
    trainer.n_iters = 100
    assert int(jax.device_get(trainer.run().step)) == 100
    assert not digits_classifier.is_trained(str(tmp_path))
    resumed = digits_classifier.get_digits_classifier(str(tmp_path))
    assert digits_classifier.is_trained(str(tmp_path))
    whole = digits_classifier.get_digits_classifier(digits_workdir)
    train_utils.assert_trees_close(
        train_utils.flat_params(resumed.params), train_utils.flat_params(whole.params)
    )
    assert resumed.fingerprint == whole.fingerprint


def test_digits_sample_quality_separates_real_from_noise(digits_workdir):
    """Test digits in the model's (dequantized) data space, (x̄ + u)/17, score like
    training data; uniform noise scores far worse."""
    config = default_digits_configs.get_default_configs()
    assert config.data.uniform_dequantization
    test_x, _ = _test_split()
    rng = np.random.default_rng(5)
    real_samples = (test_x * 16 + rng.uniform(size=test_x.shape)) / 17
    noise = rng.uniform(size=test_x.shape).astype(np.float32)
    real = evaluation.sample_quality(real_samples, digits_workdir, config)
    fake = evaluation.sample_quality(noise, digits_workdir, config)
    assert os.path.exists(evaluation.stats_path(digits_workdir, 'DIGITS', 'train', 'digits_mlp'))
    assert set(real) == {'fid', 'kid', 'is'}
    assert real['fid'] < 0.05 * fake['fid']  # measured 4.3 vs 315
    assert real['kid'] < 0.01 * fake['kid']
    assert real['is'] > 8.0 > fake['is']
