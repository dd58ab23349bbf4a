"""``--mode train_classifier``: the noise-conditional classifier p_t(y | x).

- It learns: on the TOY ring (8 well separated Gaussians, std 0.5 at radius 4) the clean
  test accuracy is ≈ 1 (the Bayes accuracy is > 0.999) and the noisy accuracy lower.
- ∇_x log p_t(y | x) of ``classifier.get_logp_grad_fn`` equals central finite differences.
- SIGKILL during training, then the same command: bitwise the uninterrupted state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import checkpointing
import classifier
import datasets
import run_lib
import sde_lib
import train_utils
from devices import get_mesh
from errors import UserError
from validation import prepare_config

_TOY_CLASSIFIER = {
    'classifier.name': 'mlp',
    'classifier.nf': 64,
    'classifier.num_layers': 2,
    'classifier.batch_size': 128,
    'classifier.lr': 3e-3,
    'classifier.warmup': 0,
    'classifier.ema_rate': 0.9,
}


def _toy(n_iters: int, **overrides):
    return train_utils.load_config(
        'toy',
        {
            **_TOY_CLASSIFIER,
            'classifier.n_iters': n_iters,
            'classifier.eval_freq': n_iters,
            'classifier.snapshot_freq': n_iters,
            **overrides,
        },
    )


def test_toy_classifier_learns_the_components(tmp_path):
    config = _toy(300)
    result = run_lib.train_classifier(config, str(tmp_path))
    assert result['step'] == 300
    # Bayes accuracy of the clean ring > 0.999; at t ~ U(ε, 1) of the VP SDE the data are
    # mostly noise (σ(t) → 1, α(t) → 0.007), so the noisy accuracy is far lower.
    assert result['accuracy_clean'] > 0.97, result
    assert result['accuracy_noisy'] < result['accuracy_clean'] - 0.1, result
    with open(tmp_path / 'classifier' / 'metrics.json') as f:
        metrics = json.load(f)
    assert metrics['300']['num_examples'] == 2000
    assert checkpointing.list_checkpoints(str(tmp_path / 'classifier')) == [1]
    # The sampler's view: the restored EMA classifier, its gradient ∇ log p_t(y | x).
    model, variables, step = classifier.load_classifier(
        prepare_config(config), str(tmp_path), 'classifier'
    )
    assert step == 300
    sde = sde_lib.get_sde(prepare_config(config))
    grad = classifier.get_logp_grad_fn(sde, model, variables)
    x = jnp.asarray([[4.0, 0.0], [0.0, 4.0]])  # the means of components 0 and 2
    t = jnp.full((2,), 0.01)
    g = grad(x, t, jnp.asarray([2, 0]))  # the other component: pulled towards it
    assert float(g[0, 1]) > 0 and float(g[1, 0]) > 0, g


def test_logp_gradient_matches_finite_differences():
    config = prepare_config(_toy(5))
    sde = sde_lib.get_sde(config)
    model, _, state = classifier.initial_state(config, get_mesh())
    x = np.random.default_rng(0).normal(size=(3, 2))
    t, y = np.array([0.1, 0.5, 0.9]), np.array([0, 3, 7])
    with jax.enable_x64():
        variables = {'params': jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), state.params)}
        grad = classifier.get_logp_grad_fn(sde, model, variables)
        g = np.asarray(grad(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))

        def logp(xv):
            logits = model.apply(variables, jnp.asarray(xv), sde.std(jnp.asarray(t)))
            return np.asarray(jax.nn.log_softmax(logits)[np.arange(3), y])

        h = 1e-6
        for d in range(2):
            step = np.zeros_like(x)
            step[:, d] = h
            np.testing.assert_allclose(
                g[:, d], (logp(x + step) - logp(x - step)) / (2 * h), rtol=1e-5, atol=1e-8
            )


def test_unlabelled_data_is_refused(tmp_path):
    config = _toy(5, **{'data.dataset': 'NPZ', 'data.dim': 0})
    config.data.path = train_utils.write_vector_npz(str(tmp_path / 'v.npz'))
    with pytest.raises(UserError, match='has no class labels'):
        run_lib.train_classifier(config, str(tmp_path))


def _classifier_state(workdir: str, config) -> dict:
    _, _, template = classifier.initial_state(prepare_config(config), get_mesh())
    state = checkpointing.restore_latest_preemption(os.path.join(workdir, 'classifier'), template)
    return train_utils.flat_params(
        {
            'params': state.params,
            'ema': state.ema_params,
            'opt': state.opt_state,
            'step': state.step,
        }
    )


def test_sigkill_during_classifier_training_then_resume_is_exact(tmp_path):
    overrides = {
        **_TOY_CLASSIFIER,
        'classifier.n_iters': 400,
        'classifier.eval_freq': 200,
        'classifier.snapshot_freq': 200,
        'training.snapshot_freq_for_preemption': 20,
        'training.log_freq': 20,
    }
    workdir = str(tmp_path / 'killed')
    args = [
        sys.executable,
        os.path.join(train_utils.REPO, 'main.py'),
        *train_utils.cli_flags('toy', overrides),
        '--workdir',
        workdir,
        '--mode',
        'train_classifier',
    ]
    env = train_utils.subprocess_env()
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    meta = os.path.join(workdir, 'classifier')
    try:
        deadline = time.time() + 300
        while not checkpointing.list_preemption_checkpoints(meta):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.02)
        time.sleep(float(np.random.default_rng().uniform(0.0, 0.3)))
        assert proc.poll() is None, 'training finished before it could be killed'
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = checkpointing.list_preemption_checkpoints(meta)
    assert saved and saved[-1] < 400, saved
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'steps {saved[-1]} -> 400' in result.stderr

    config = train_utils.load_config('toy', overrides)
    run_lib.train_classifier(config, str(tmp_path / 'straight'))
    train_utils.assert_trees_close(
        _classifier_state(workdir, config),
        _classifier_state(str(tmp_path / 'straight'), config),
        atol=1e-6,
    )


def test_classifier_input_is_standardized_with_the_training_images_channel_stats():
    """DIGITS (centered: x = 2 x̄/16 − 1): the mean and standard deviation of the scaled
    training digits, computed here with numpy; CIFAR-10 ([0, 1] data): score_sde's
    constants (models/utils.py:get_logit_fn), no data read; vectors: read as they are."""
    config = prepare_config(train_utils.load_config('digits'))
    assert config.data.centered
    levels = datasets.get_shard(config, 'train').data.astype(np.float64)
    x = 2.0 * levels / 16.0 - 1.0
    model = classifier.standardized(config, network=None)
    np.testing.assert_allclose(model.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(model.std, x.std(axis=(0, 1, 2)), rtol=1e-9)
    cifar = prepare_config(train_utils.load_config('cifar10', {'data.centered': False}))
    model = classifier.standardized(cifar, network=None)
    assert model.mean == (0.49139968, 0.48215841, 0.44653091)
    assert model.std == (0.24703223, 0.24348513, 0.26158784)
    assert classifier.standardized(_toy(10), network=None).mean is None
