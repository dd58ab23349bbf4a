"""An evaluation quantity is one registered unit.

The quantity below — the mean squared norm per dimension of the probability-flow ODE's
latent z = x(T), ‖z‖²/D — is declared and registered in this file alone. ``--mode eval``
(``main.py`` in a subprocess, with this file as its entry point so that the registration
happens there too) computes it, is SIGKILLed in the middle of it and resumes, stores its
per-batch files, plots it, sends it to TensorBoard and writes it to ``metrics.json``, with
no edit anywhere else. Its value is checked against a closed form.
"""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from absl import app
from PIL import Image
from test_eval_runner import _E2E, _evaluator
from test_eval_runner import _config as _vector_eval_config

import eval_quantities
import eval_store
import likelihood
import main
import mixture
import run_lib
import sde_lib
from configs.vp import digits_lw_is
from eval_quantities import Metric, PerExampleQuantity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LatentSquaredNorm(PerExampleQuantity):
    """``latent_sq``: ‖z‖²/D of the latent z = x(T) of the probability-flow ODE started at
    the dequantized image (the same u and probe keys as ``bpd``), with its standard error
    over images."""

    name, title = 'latent_sq', 'latent ‖z‖²/D'
    metrics = (Metric('latent_sq', 'latent_sq_stderr'),)
    fingerprint = ('eval.bpd_dataset', 'eval.rtol', 'eval.atol', 'eval.eps', 'eval.ode_method')
    phase, running_key, repeated = eval_quantities.PHASE_LIKELIHOOD, 'latent_sq', True

    def enabled(self, config):
        return bool(config.eval.enable_bpd)

    def split(self, config):
        return str(config.eval.bpd_dataset)

    def batch_fn(self, ctx):
        e = ctx.config.eval

        def fn(variables, deq_variables, keys, x):
            y, _ = eval_quantities.dequantized_input(ctx, deq_variables, keys, x)
            nll_fn = likelihood.get_nll_fn(
                ctx.sde, ctx.score_builder(variables), rtol=e.rtol, atol=e.atol, eps=e.eps
            )
            _, z, _ = nll_fn(eval_quantities.stream(keys, eval_quantities.ODE_STREAM), y)
            return {'latent_sq': jnp.mean(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)}

        return fn

    def aggregate(self, results):
        mean, se = eval_store.mean_and_stderr_over_images(results['latent_sq'], results['index'])
        return {'latent_sq': mean, 'latent_sq_stderr': se}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(eval_quantities._QUANTITIES, 'latent_sq', LatentSquaredNorm())


# A tiny DIGITS model that stays at its initialisation (learning rate 1e-12): its score
# output is ≈ 0, so the probability-flow ODE is dx/dt = f(t) x and z = c·y in closed form.
OVERRIDES = {
    **{k: v for k, v in _E2E.items() if not k.startswith(('deq.', 'sampling.'))},
    'training.n_iters': 5,
    'training.snapshot_freq': 5,
    'training.snapshot_freq_for_preemption': 5,
    'eval.enable_loss': False,
    'eval.enable_sampling': False,
    'eval.dequantizer': False,
}


def _config(npz_path):
    config = digits_lw_is.get_config()
    for name, value in dict(OVERRIDES, **{'data.path': str(npz_path)}).items():
        section, field = name.split('.')
        config[section][field] = value
    return config


def _vector_config(path):
    """Exact-trace ODE bits/dim (and so the latent) of vectors, two repeats, tolerance
    1e-5, no loss."""
    config = _vector_eval_config(path, batch_size=4, repeats=2, hutchinson='exact')
    config.data.dim = 3
    return config


def test_common_random_numbers_across_objectives_not_across_seeds(tmp_path):
    """The evaluation's random numbers (dequantization noise, probes) depend on the seed,
    the checkpoint, the repeat and the example only: runs of one seed trained with other
    objectives or models are evaluated on identical noise (the paired comparisons of the
    ScoreFlow grid), runs of another seed on other noise."""
    path = tmp_path / 'images.npz'
    images = np.random.RandomState(0).randint(0, 17, size=(6, 2, 2, 1)).astype(np.uint8)
    np.savez(path, train=images, test=images)
    dim = images[0].size
    gm = mixture.GaussianMixture(np.ones(1), np.zeros((1, dim)), np.eye(dim)[None])

    def per_example(name, change=lambda config: None):
        config = _vector_eval_config(path, batch_size=4, repeats=1, num_bins=17)
        config.data.image_size, config.data.num_channels = 2, 1
        change(config)
        _evaluator(config, tmp_path / name, gm).run()
        return np.load(tmp_path / name / 'eval' / 'ckpt_1' / 'bpd_h0.npz')['bpd']

    def other_objective_and_model(config):
        config.training.likelihood_weighting = config.training.importance_weighting = True
        config.model.name, config.model.nf = 'ddpm', 32

    def other_seed(config):
        config.seed = 1

    reference = per_example('a')
    np.testing.assert_array_equal(per_example('b', other_objective_and_model), reference)
    assert np.all(per_example('c', other_seed) != reference)


def _digits_npz(path, num_train=64, num_test=11):
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.uint8)[..., None]
    np.savez(path, train=images[:num_train], test=images[num_train : num_train + num_test])
    return path


def _zero_score_latent_sq(config, levels) -> float:
    """E‖z‖²/D for the zero score: z = c·y, c = α(T)/α(ε), y = 2(x̄ + u)/K − 1, u ~ U[0,1)^D,
    so E‖y‖² = Σ (E y)² + D (2/K)²/12 per image; the mean over the images."""
    sde = sde_lib.get_sde(config)
    log_alpha = np.asarray(sde.log_mean_coeff(np.asarray([config.eval.eps, sde.T])))
    c2 = math.exp(2 * float(log_alpha[1] - log_alpha[0]))
    k = config.data.num_bins
    mean_y = 2 * (levels.reshape(len(levels), -1).astype(np.float64) + 0.5) / k - 1
    return float(c2 * np.mean(np.mean(mean_y**2, 1) + (2 / k) ** 2 / 12))


def _eval_command(workdir, npz_path):
    overrides = dict(OVERRIDES, **{'data.path': str(npz_path)})
    return [
        sys.executable,
        os.path.abspath(__file__),
        '--mode=eval',
        f'--config={os.path.join(REPO, "configs/vp/digits_lw_is.py")}',
        f'--workdir={workdir}',
    ] + [f'--config.{k}={v}' for k, v in overrides.items()]


def _tensorboard(folder):
    out = {}
    for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                out[v.tag] = v.simple_value
    return out


@pytest.mark.slow
def test_a_quantity_registered_in_a_test_runs_through_main(tmp_path, registered):
    npz = _digits_npz(tmp_path / 'digits.npz')
    config = _config(npz)
    workdir = tmp_path / 'w'
    run_lib.train(config, str(workdir))
    reference = run_lib.evaluate(config, str(workdir), 'reference')['1']

    # --mode eval through main.py, SIGKILLed once the second latent batch is saved.
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
    cmd = _eval_command(workdir, npz)
    ckpt_dir = workdir / 'eval' / 'ckpt_1'
    marker = ckpt_dir / 'latent_sq_r0_b00001_h0.npz'
    log = open(tmp_path / 'killed.log', 'wb')  # a file: a full pipe would block the run
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    assert marker.exists(), (tmp_path / 'killed.log').read_text()[-3000:]
    killed = json.loads((workdir / 'eval' / 'metrics.json').read_text())['1']
    assert 'bpd' in killed and 'latent_sq' not in killed  # killed during latent_sq
    saved = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(ckpt_dir / 'latent_sq_r0_b*'))}

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    # Resumed: the batches saved before the kill were kept, not recomputed.
    assert {p: os.stat(p).st_mtime_ns for p in saved} == saved
    entry = json.loads((workdir / 'eval' / 'metrics.json').read_text())['1']
    for key in ('latent_sq', 'latent_sq_stderr', 'bpd', 'bpd_stderr'):
        assert entry[key] == pytest.approx(reference[key], rel=1e-6), key
    # Stored per batch and gathered: 3 batches of 4 (11 images) per repeat, 2 repeats.
    assert len(glob.glob(str(ckpt_dir / 'latent_sq_r*_b*_h0.npz'))) == 6
    per_example = np.load(ckpt_dir / 'latent_sq_h0.npz')
    assert sorted(per_example['index'].tolist()) == sorted(list(range(11)) * 2)
    mean, se = eval_store.mean_and_stderr_over_images(
        per_example['latent_sq'], per_example['index']
    )
    assert (entry['latent_sq'], entry['latent_sq_stderr']) == pytest.approx((mean, se), rel=1e-9)
    # Plotted (two panels: bpd, latent_sq) and sent to TensorBoard with its error.
    with Image.open(workdir / 'eval' / 'metrics.png') as img:
        assert img.width == 2 * 400
    scalars = _tensorboard(workdir / 'eval' / 'tensorboard')
    assert scalars['eval/latent_sq'] == pytest.approx(entry['latent_sq'], rel=1e-6)
    assert scalars['eval/latent_sq_stderr'] == pytest.approx(entry['latent_sq_stderr'], rel=1e-6)
    # Near the zero-score flow's closed form: the network at its initialisation is not
    # exactly 0 (final weights of scale 1e-5), which moves z by a few per cent.
    expected = _zero_score_latent_sq(config, np.load(npz)['test'])
    assert entry['latent_sq'] == pytest.approx(expected, rel=0.2)


def test_latent_of_gaussian_data_is_the_closed_form(tmp_path, registered):
    """Data N(0, s² I) with its exact score: the probability-flow map is the scaling
    z = y · r(T)/r(ε), r(t) = √(α(t)² s² + σ(t)²), so every example's ‖z‖²/D is known."""
    s, dim, n = 0.7, 3, 13
    x = np.random.RandomState(0).randn(n, dim).astype(np.float32) * s
    path = tmp_path / 'gauss.npz'
    np.savez(path, train=x, test=x)
    config = _vector_config(path)
    gm = mixture.GaussianMixture(np.ones(1), np.zeros((1, dim)), s**2 * np.eye(dim)[None])
    metrics = _evaluator(config, tmp_path / 'w', gm).run()['1']
    sde = sde_lib.get_sde(config)
    t = np.asarray([config.eval.eps, sde.T])
    r2 = np.exp(2 * np.asarray(sde.log_mean_coeff(t))) * s**2 + np.asarray(sde.std(t)) ** 2
    expected = np.mean(x**2, axis=1) * r2[1] / r2[0]
    per_example = np.load(tmp_path / 'w' / 'eval' / 'ckpt_1' / 'latent_sq_h0.npz')
    got = per_example['latent_sq']
    np.testing.assert_allclose(got, expected[per_example['index']], rtol=2e-3)
    assert metrics['latent_sq'] == pytest.approx(expected.mean(), rel=2e-3)


if __name__ == '__main__':  # main.py with the quantity registered (the test's subprocess)
    eval_quantities.register_quantity(LatentSquaredNorm)
    app.run(main.main, flags_parser=main.parse_flags)
