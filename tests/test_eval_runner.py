"""Tests of the evaluation mode (eval_runner, eval_store) against closed forms.

An ``ExactScoreEvaluator`` replaces the trained network by the exact score of a Gaussian
(mixture) through ``mixture.py``, so the whole pipeline — eval iterator, dequantization,
scaler, bits/dim offset, per-example keys, per-batch files, resume, metrics.json — is
checked against analytic log-densities without training anything.
"""

from __future__ import annotations

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import eval_quantities
import eval_runner
import eval_store
import mixture
import pictures
import sde_lib
import train_utils
from configs.base import get_base_config
from errors import UserError

EPS = 1e-5


class ExactScoreEvaluator(eval_runner.Evaluator):
    """The evaluation pipeline with the exact score of ``gm`` instead of a checkpoint."""

    gm: mixture.GaussianMixture = None

    def checkpoint_range(self):
        return int(self.config.eval.begin_ckpt), int(self.config.eval.end_ckpt)

    def load_variables(self, ckpt):
        return {}

    def score_builder(self, variables):
        return self.gm.score_fn(self.sde)


def _evaluator(config, workdir, gm, folder='eval', hook=None):
    cls = type('Evaluator', (ExactScoreEvaluator,), {'gm': gm})
    return cls(config, str(workdir), folder, hook)


def _config(
    path,
    *,
    batch_size=8,
    repeats=1,
    num_bins=256,
    centered=False,
    hutchinson='Rademacher',
    tol=1e-5,
):
    config = get_base_config()
    config.data.dataset = 'NPZ'
    config.data.path = str(path)
    config.data.num_bins = num_bins
    config.data.centered = centered
    config.data.dim = 2
    config.training.sde = 'vpsde'
    e = config.eval
    e.begin_ckpt = e.end_ckpt = 1
    e.batch_size = batch_size
    e.num_repeats = repeats
    e.enable_bpd = True
    e.enable_loss = False
    e.hutchinson_type = hutchinson
    e.rtol = e.atol = tol
    e.eps = EPS
    return config


def _metrics(workdir, folder='eval'):
    with open(os.path.join(workdir, folder, 'metrics.json'), encoding='utf-8') as f:
        return json.load(f)


@pytest.fixture(scope='module')
def vector_data(tmp_path_factory):
    """37 test vectors (not a multiple of the batch sizes used) from a 2-D mixture."""
    gm = mixture.random_mixture(3, 3, 2)
    path = tmp_path_factory.mktemp('vec') / 'vectors.npz'
    np.savez(
        path,
        train=np.asarray(gm.sample(jax.random.key(0), 64)),
        test=np.asarray(gm.sample(jax.random.key(1), 37)),
    )
    return gm, path


def _vector_config(path, batch_size=8):
    """Eval loss, then two passes of the exact-trace ODE and the bound over the vectors."""
    config = _config(path, batch_size=batch_size, repeats=2, hutchinson='exact')
    config.eval.bound = True
    config.eval.enable_loss = True
    return config


@pytest.fixture(scope='module')
def vector_eval(vector_data, tmp_path_factory):
    """``_vector_config`` evaluated with batch size 8 on one device."""
    gm, path = vector_data
    workdir = tmp_path_factory.mktemp('w8')
    config = _vector_config(path)
    _evaluator(config, workdir, gm).run()
    return config, workdir


def test_bpd_of_exact_score_equals_analytic_density(vector_data, vector_eval):
    gm, path = vector_data
    _, workdir = vector_eval
    m = _metrics(workdir)['1']
    x = np.load(path)['test']
    nll_exact = -np.asarray(gm.log_prob(sde_lib.VPSDE(), jnp.asarray(x), jnp.full(len(x), EPS)))
    # ODE at rtol = atol = 1e-5 with the exact trace: within 1e-3 nats of −log p_ε.
    assert m['nll'] == pytest.approx(nll_exact.mean(), abs=1e-3)
    # Continuous data: bits/dim without a bin offset.
    assert m['bpd'] == pytest.approx(nll_exact.mean() / (2 * math.log(2)), abs=1e-3)
    assert m['num_examples'] == 2 * len(x)
    assert m['nfe_mean'] > 10
    # With the exact score the bound (with its ε-offset) is tight: per image, bound − ODE
    # bits/dim is zero up to the bound's Monte Carlo noise (measured 0.037 ± 0.039).
    # Doubling the bound's time integral (a weight of 2 Z) fails this (−0.28 ± 0.11).
    diff = _per_image(workdir, 'bound_bpd') - _per_image(workdir, 'bpd')
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert se < 0.1 and abs(diff.mean()) < 4 * se, (diff.mean(), se)


def test_bound_with_uniform_times(vector_data, vector_eval, tmp_path):
    """eval.bound_importance_weighting=False draws the bound's times from U[ε, T]: other
    values than importance-sampled times, the same expectation −log p_ε (exact score)."""
    gm, path = vector_data
    config = _vector_config(path)
    config.eval.enable_bpd = config.eval.enable_loss = False
    config.eval.bound_importance_weighting = False
    _evaluator(config, tmp_path, gm).run()
    x = np.load(path)['test']
    nll_exact = -np.asarray(gm.log_prob(sde_lib.VPSDE(), jnp.asarray(x), jnp.full(len(x), EPS)))
    diff = _per_image(tmp_path, 'bound_bpd') - nll_exact / (2 * math.log(2))
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert se < 0.1 and abs(diff.mean()) < 4 * se, (diff.mean(), se)
    assert _metrics(tmp_path)['1']['bound_bpd'] == pytest.approx(
        np.mean(_per_image(tmp_path, 'bound_bpd')), rel=1e-9
    )
    is_bound = _per_image(vector_eval[1], 'bound_bpd')
    assert not np.allclose(_per_image(tmp_path, 'bound_bpd'), is_bound)


def test_missing_inception_fails_before_sampling(tmp_path):
    """Image samples with FID/IS/KID and no Inception weights: one UserError at once,
    naming the field and the way out; with eval.sample_metrics=False it samples."""
    path = tmp_path / 'images.npz'
    images = np.zeros((4, 3, 3, 1), np.uint8)
    np.savez(path, train=images, test=images)
    config = _config(path, num_bins=17)
    config.data.image_size, config.data.num_channels = 3, 1
    config.eval.enable_bpd, config.eval.enable_sampling = False, True
    gm = mixture.GaussianMixture(np.ones(1), np.zeros((1, 9)), np.eye(9)[None])
    for inception_path, what in (
        ('', 'is empty'),
        (str(tmp_path / 'no.h5'), "is '.*no.h5', which does not exist"),
    ):
        config.eval.inception_path = inception_path
        with pytest.raises(UserError, match=f'eval.inception_path {what}.*sample_metrics=False'):
            _evaluator(config, tmp_path / 'w', gm)
    (tmp_path / 'bad.h5').write_text('not hdf5')
    config.eval.inception_path = str(tmp_path / 'bad.h5')
    with pytest.raises(UserError, match='not an HDF5 weights file'):
        _evaluator(config, tmp_path / 'w', gm)
    config.eval.sample_metrics = False
    _evaluator(config, tmp_path / 'w', gm)


def _tensorboard_scalars(folder):
    """{tag: [(step, value)]} of the TensorBoard event files in ``folder``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, 'events.out.tfevents.*'))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_results_reach_tensorboard_and_a_plot(vector_eval):
    """metrics.json's entry gets the checkpoint's step; the same numbers are TensorBoard
    scalars at that step, and metrics.png is a PNG of the plotted metrics."""
    config, workdir = vector_eval
    entry = _metrics(workdir)['1']
    step = int(config.training.snapshot_freq)  # snapshot 1 (the exact score has none)
    assert entry['step'] == step
    scalars = _tensorboard_scalars(os.path.join(workdir, 'eval', 'tensorboard'))
    for name in ('bpd', 'bpd_stderr', 'bound_bpd', 'bound_stderr', 'loss'):
        ((s, value),) = scalars[f'eval/{name}']
        assert s == step and value == pytest.approx(entry[name], rel=1e-6)
    with Image.open(os.path.join(workdir, 'eval', 'metrics.png')) as img:
        assert img.format == 'PNG' and img.width == 3 * 400  # 3 panels: loss, bpd, bound_bpd


def _per_image(workdir, key, folder='eval'):
    """Per-example values ``key`` of the bits/dim passes (ODE: ``bpd_r*`` files, bound:
    ``bound_r*``), averaged over repeats, by index."""
    ckpt = os.path.join(workdir, folder, 'ckpt_1')
    tag = 'bound' if key.startswith('bound') else 'bpd'
    parts = [
        np.load(os.path.join(ckpt, f), allow_pickle=False)
        for f in sorted(os.listdir(ckpt))
        if f.startswith(f'{tag}_r')
    ]
    index = np.concatenate([p['index'] for p in parts])
    return eval_store.per_image_means(np.concatenate([p[key] for p in parts]), index)


def test_every_example_once_per_repeat(vector_data, vector_eval):
    _, path = vector_data
    config, workdir = vector_eval
    folder = os.path.join(workdir, 'eval', 'ckpt_1')
    n = len(np.load(path)['test'])
    for repeat in range(2):
        parts = [
            np.load(os.path.join(folder, f), allow_pickle=False)['index']
            for f in sorted(os.listdir(folder))
            if f.startswith(f'bpd_r{repeat}_b')
        ]
        assert len(parts) == math.ceil(n / config.eval.batch_size)  # 5 batches, last padded
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def _bpd_gaussian_images(tmp_path, num_bins, centered, shape=(3, 3, 1), n=29, repeats=2):
    """Pipeline bits/dim of random K-level images under the exact N(0, I) model in the
    model's space, against E_u of the closed form ½‖y‖² + ½D log 2π per example."""
    rs = np.random.RandomState(num_bins)
    test = rs.randint(0, num_bins, size=(n,) + shape).astype(np.uint8)
    path = tmp_path / 'images.npz'
    np.savez(path, train=test, test=test)
    config = _config(path, batch_size=8, repeats=repeats, num_bins=num_bins, centered=centered)
    config.data.image_size, config.data.num_channels = shape[0], shape[2]
    gm = mixture.GaussianMixture(
        np.ones(1), np.zeros((1, test[0].size)), np.eye(test[0].size)[None]
    )
    _evaluator(config, tmp_path / 'w', gm).run()
    m = _metrics(tmp_path / 'w')['1']
    # y = a (x̄ + u)/K + b with u ~ U[0, 1): E[y] and Var[y] = (a/K)²/12 per pixel.
    a, b = (2.0, -1.0) if centered else (1.0, 0.0)
    dim = test[0].size
    mean_y = a * (test.reshape(n, -1) + 0.5) / num_bins + b
    e_nll_y = 0.5 * np.sum(mean_y**2 + (a / num_bins) ** 2 / 12, 1) + 0.5 * dim * math.log(
        2 * math.pi
    )
    expected = (e_nll_y - dim * math.log(a)) / (dim * math.log(2)) + math.log2(num_bins)
    # Monte Carlo error of u: Var[½y²] ≈ y² Var[y]; bits/dim of the mean over n × repeats.
    sd = np.sqrt(np.sum(mean_y**2, 1) * (a / num_bins) ** 2 / 12) / (dim * math.log(2))
    tol = 5 * np.sqrt(np.mean(sd**2) / (n * repeats)) + 2e-4
    return m, expected.mean(), tol


@pytest.mark.parametrize('num_bins,centered', [(256, True), (256, False), (17, True)])
def test_bpd_offset_and_scale(tmp_path, num_bins, centered):
    m, expected, tol = _bpd_gaussian_images(tmp_path, num_bins, centered)
    assert m['bpd'] == pytest.approx(expected, abs=tol)
    # nll is in the data's own units [0, 1]^D: bpd = nll / (D ln 2) + log₂ K.
    assert m['bpd'] == pytest.approx(m['nll'] / (9 * math.log(2)) + math.log2(num_bins), abs=1e-6)


class _InterruptError(Exception):
    pass


def test_resume_after_interruption_gives_same_metrics(vector_data, vector_eval, tmp_path):
    gm, path = vector_data
    config, full = vector_eval
    calls = []

    def interrupt_after_7(tag, batch):
        calls.append((tag, batch))
        if len(calls) == 7:  # 5 loss batches, then 2 of the first bits/dim pass
            raise _InterruptError

    with pytest.raises(_InterruptError):
        _evaluator(config, tmp_path, gm, hook=interrupt_after_7).run()
    meta = json.load(open(tmp_path / 'eval' / 'eval_meta.json', encoding='utf-8'))
    assert meta['position'] == {'ckpt': 1, 'phase': 'bpd_r0', 'batches_done': 2}
    assert 'bpd' not in _metrics(tmp_path)['1'] and 'loss' in _metrics(tmp_path)['1']
    computed = []
    _evaluator(config, tmp_path, gm, hook=lambda t, b: computed.append((t, b))).run()
    # Only the batches not done before are computed again ...
    odes = [('bpd_r0', b) for b in range(2, 5)] + [('bpd_r1', b) for b in range(5)]
    assert computed == odes + [(f'bound_r{r}', b) for r in range(2) for b in range(5)]
    # ... and the metrics are those of an uninterrupted evaluation.
    assert _metrics(tmp_path) == _metrics(full)


def test_a_truncated_metrics_json_is_rebuilt_from_the_checkpoint_entries(vector_data, tmp_path):
    """metrics.json cut short (a full disk, a copy): the next evaluation in that folder
    moves it aside (kept) and rebuilds it from the per-checkpoint entries, reusing the
    stored results, instead of failing with a JSONDecodeError."""
    gm, path = vector_data
    config = _config(path)
    first = _evaluator(config, tmp_path, gm).run()
    assert json.load(open(tmp_path / 'eval' / 'ckpt_1' / 'metrics_entry.json')) == first['1']
    metrics = tmp_path / 'eval' / 'metrics.json'
    text = metrics.read_text()
    metrics.write_text(text[: len(text) // 2])
    computed = []
    again = _evaluator(config, tmp_path, gm, hook=lambda t, b: computed.append(t)).run()
    assert again == first and computed == []  # rebuilt; no batch computed again
    assert _metrics(tmp_path) == first
    (aside,) = [p for p in os.listdir(tmp_path / 'eval') if p.startswith('metrics.json.broken-')]
    assert (tmp_path / 'eval' / aside).read_text() == text[: len(text) // 2]


def test_empty_checkpoint_range_is_refused(vector_data, tmp_path):
    gm, path = vector_data
    config = _config(path)
    config.eval.begin_ckpt, config.eval.end_ckpt = 3, 2
    with pytest.raises(UserError, match=r'eval.begin_ckpt=3 is after eval.end_ckpt=2.*=3'):
        _evaluator(config, tmp_path, gm)
    assert not os.path.exists(tmp_path / 'eval')  # refused before creating anything


def test_changed_settings_are_refused(vector_data, tmp_path):
    gm, path = vector_data
    config = _config(path, batch_size=8, tol=1e-3)
    config.eval.enable_bpd = False
    _evaluator(config, tmp_path, gm)
    config.eval.rtol = 1e-4
    with pytest.raises(UserError, match='eval.rtol'):
        _evaluator(config, tmp_path, gm)


def test_image_grid_and_stats():
    images = np.random.RandomState(0).rand(10, 4, 5, 3)
    grid = pictures.image_grid(images, ncol=4, pad=1)
    assert grid.shape == (3 * 5 + 1, 4 * 6 + 1, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[1:5, 1:6], np.round(images[0] * 255).astype(np.uint8))
    mean, se = eval_store.mean_and_stderr(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def _repeated_results(per_image, num_repeats, noise_sd, seed=0):
    """Results of ``num_repeats`` passes: image i's value per_image[i] + N(0, noise_sd²)
    noise, fresh in every pass, shuffled as hosts and batches would return them."""
    rs = np.random.RandomState(seed)
    n = len(per_image)
    values = np.tile(per_image, num_repeats) + noise_sd * rs.randn(n * num_repeats)
    out = {
        'index': np.tile(np.arange(n), num_repeats),
        'repeat': np.repeat(np.arange(num_repeats), n),
        'bound_bpd': values,
    }
    order = rs.permutation(n * num_repeats)
    return {k: v[order] for k, v in out.items()}


def _bound_metrics(results):
    """The bound's metrics.json values from its per-example results (any order)."""
    results = dict(results, bound_nll=np.zeros(len(results['index'])))
    return eval_quantities.get_quantity('bound').aggregate(eval_store.sorted_results(results))


def test_stderr_is_over_images_not_over_repeats():
    """Repeats of one image are averaged before the standard error is taken."""
    per_image = np.random.RandomState(1).randn(50)
    se_images = np.std(per_image, ddof=1) / math.sqrt(50)
    # Perfectly correlated repeats (no noise between passes): R passes say no more than
    # one, so the error must not shrink (treating the 8 × 50 values as independent
    # would report se_images / √8).
    for repeats in (1, 8):
        m = _bound_metrics(_repeated_results(per_image, repeats, 0.0))
        assert m['bound_stderr'] == pytest.approx(se_images, rel=1e-12)
        assert m['bound_bpd'] == pytest.approx(per_image.mean(), rel=1e-12)
        assert (m['num_images'], m['num_repeats'], m['num_examples']) == (
            50,
            repeats,
            50 * repeats,
        )
    # Independent values (all images alike, only pass-to-pass noise of sd 1): the error
    # is 1/√(n R) and halves when the images are four times as many.
    for n, repeats in ((400, 4), (1600, 4), (1600, 1)):
        m = _bound_metrics(_repeated_results(np.zeros(n), repeats, 1.0, n))
        # The sample std of n values of per-image variance 1/R is within ±3.5 % (n = 400).
        assert m['bound_stderr'] == pytest.approx(1 / math.sqrt(n * repeats), rel=0.1)


# --------------------------------------------------------------------------- devices
_DEVICE_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import jax
import mixture
from test_eval_runner import _evaluator, _vector_config
assert jax.local_device_count() == {devices}
gm = mixture.random_mixture(3, 3, 2)
config = _vector_config({path!r}, batch_size={batch_size})
print(json.dumps(_evaluator(config, {workdir!r}, gm).run()))
"""


def test_metrics_independent_of_devices_and_batch_size(vector_data, vector_eval, tmp_path):
    """Per-example keys: batches of 12 sharded over 4 devices give the metrics of
    batches of 8 on one device."""
    import subprocess
    import sys

    _, path = vector_data
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(
        os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=4'
    )
    script = _DEVICE_SCRIPT.format(
        repo=os.path.dirname(tests),
        tests=tests,
        devices=4,
        batch_size=12,
        path=str(path),
        workdir=str(tmp_path),
    )
    out = subprocess.run(
        [sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    four = json.loads(out.stdout.strip().splitlines()[-1])['1']
    one = _metrics(vector_eval[1])['1']
    assert four.keys() == one.keys() >= {'loss', 'bpd', 'nll', 'nfe_mean', 'bound_bpd'}
    for key in one:
        assert four[key] == pytest.approx(one[key], rel=1e-5, abs=1e-5), key


# --------------------------------------------------------------------------- end to end
def _digits_npz(path, num_train=96, num_test=11):
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.uint8)[..., None]
    np.savez(path, train=images[:num_train], test=images[num_train : num_train + num_test])
    return path


_E2E = {
    'data.dataset': 'NPZ',
    'data.num_bins': 17,
    'data.image_size': 8,
    'data.num_channels': 1,
    'model.nf': 8,
    'model.ch_mult': (1,),
    'model.num_res_blocks': 1,
    'model.dropout': 0.0,
    'training.n_iters': 10,
    'training.n_jitted_steps': 5,
    'training.log_freq': 5,
    'training.eval_freq': 5,
    'training.snapshot_freq': 10,
    'training.snapshot_freq_for_preemption': 10,
    'training.snapshot_sampling': False,
    'training.batch_size': 16,
    'optim.warmup': 0,
    'optim.lr': 1e-12,
    'eval.begin_ckpt': 1,
    'eval.end_ckpt': 1,
    'eval.batch_size': 4,
    'eval.num_repeats': 2,
    'eval.enable_loss': True,
    'eval.bound': False,
    'eval.enable_sampling': True,
    'eval.num_samples': 6,
    'eval.sample_metrics': False,  # NPZ images: FID would need Inception weights
    'eval.rtol': 1e-3,
    'eval.atol': 1e-3,
    'sampling.rtol': 1e-3,
    'sampling.atol': 1e-3,
    'deq.n_iters': 10,
    'eval.dequantizer': True,
}


def _logistic_normal_entropy_bits() -> float:
    """−E[log₂ q(u)] per dimension of u = sigmoid(ε), ε ~ N(0, 1) (the dequantizer's
    identity-coupling initialisation): log q(u) = log φ(ε) − log σ(ε) − log σ(−ε)."""
    eps = np.linspace(-12.0, 12.0, 200_001)
    phi = np.exp(-0.5 * eps**2) / math.sqrt(2 * math.pi)
    log_q = np.log(phi) + np.logaddexp(0, -eps) + np.logaddexp(0, eps)
    return float(-np.trapezoid(phi * log_q, eps) / math.log(2))


@pytest.mark.slow
def test_end_to_end_eval_killed_and_resumed(tmp_path):
    """train → train_deq (run_lib) → eval through main.py with the variational
    dequantizer, SIGKILLed in the middle of bits/dim and restarted: the bits/dim of an
    uninterrupted evaluation, and every other phase done.

    The learning rate is 1e-12, so both networks stay at their initialisation: the score
    network outputs ≈ 0 and the flow is the identity coupling, u = sigmoid(ε). The
    bits/dim are then a closed form: the zero-score model's with uniform noise
    (``train_utils.zero_score_bpd``) minus the entropy of the logistic-normal per
    dimension (E[log q(u|x̄)] enters the variational bound)."""
    import signal
    import subprocess
    import sys
    import time

    import run_lib
    from configs.vp import digits_lw_is

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    overrides = dict(_E2E, **{'data.path': str(_digits_npz(tmp_path / 'digits.npz'))})
    config = digits_lw_is.get_config()
    for name, value in overrides.items():
        section, field = name.split('.')
        config[section][field] = value
    workdir = tmp_path / 'w'
    run_lib.train(config, str(workdir))
    deq = run_lib.train_deq(config, str(workdir))
    assert deq['step'] == 10 and math.isfinite(deq['train_bpd'])

    cmd = [
        sys.executable,
        os.path.join(repo, 'main.py'),
        '--mode=eval',
        f'--config={os.path.join(repo, "configs/vp/digits_lw_is.py")}',
        f'--workdir={workdir}',
    ] + [f'--config.{k}={v}' for k, v in overrides.items()]
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    marker = workdir / 'eval' / 'ckpt_1' / 'bpd_r0_b00001_h0.npz'
    log = open(tmp_path / 'killed.log', 'wb')  # a file: a full pipe would block the run
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    assert marker.exists(), (tmp_path / 'killed.log').read_text()[-2000:]
    assert set(_metrics(workdir)['1']) == {'loss'}  # killed during bits/dim
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'No FID/IS/KID: eval.sample_metrics=False' in done.stderr
    resumed = _metrics(workdir)['1']
    bpd_keys = {'bpd', 'bpd_stderr', 'nll', 'nfe_mean', 'num_examples', 'num_images'}
    bpd_keys |= {'num_repeats', 'step'}
    assert resumed.keys() == bpd_keys | {'loss', 'num_samples'}
    assert resumed['num_examples'] == 2 * 11 and resumed['num_samples'] == 6
    assert (resumed['num_images'], resumed['num_repeats']) == (11, 2)
    assert resumed['step'] == 10  # snapshot 1 of the restored state (snapshot_freq 10)
    levels = np.load(tmp_path / 'digits.npz')['test']
    expected = train_utils.zero_score_bpd(config, levels) - _logistic_normal_entropy_bits()
    # log q varies with u: Monte Carlo error of 22 evaluations (per-image standard error).
    assert resumed['bpd'] == pytest.approx(expected, abs=4 * resumed['bpd_stderr'] + 2e-3)
    assert (workdir / 'eval' / 'ckpt_1' / 'samples.png').exists()

    config.eval.enable_loss = config.eval.enable_sampling = False
    reference = run_lib.evaluate(config, str(workdir), 'reference')['1']
    assert reference.keys() == bpd_keys
    for key in reference:
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5), key
