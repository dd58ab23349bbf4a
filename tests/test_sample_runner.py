"""``--mode sample``: every task end to end on tiny models, resume, and bad input.

The exactness of the samplers themselves is proved on closed forms in
tests/test_controllable.py; here the pipeline: inputs, outputs, metrics, resumption.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

import configs.vp.photos_lw_is as photos_config
import datasets
import evaluation
import pictures
import run_lib
import sample_runner
import train_utils
from errors import UserError
from file_io import load_npz, save_npz
from validation import prepare_config

_SAMPLE = {
    'eval.end_ckpt': -1,
    'eval.batch_size': 8,
    'sampling.method': 'pc',
    'sampling.predictor': 'reverse_diffusion',
    'sampling.corrector': 'langevin',
    'sampling.num_samples': 3,
}
_CLASSIFIER = {
    'classifier.blocks_per_group': 1,
    'classifier.channel_multiplier': 1,
    'classifier.n_iters': 10,
    'classifier.batch_size': 16,
    'classifier.eval_freq': 10,
    'classifier.snapshot_freq': 10,
    'classifier.warmup': 0,
}


@pytest.fixture(scope='module')
def digits_workdir(tmp_path_factory):
    """A tiny DIGITS score model (2 snapshots) and classifier (10 steps)."""
    workdir = str(tmp_path_factory.mktemp('digits'))
    config = train_utils.load_config('digits', {**_SAMPLE, **_CLASSIFIER})
    run_lib.train(config, workdir)
    run_lib.train_classifier(config, workdir)
    return workdir


def _digits(**overrides):
    return train_utils.load_config('digits', {**_SAMPLE, **_CLASSIFIER, **overrides})


def _is_png(path: str) -> tuple:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def _judged(workdir: str, config, images: np.ndarray) -> np.ndarray:
    """The independent judge's classes (the digits classifier of FD_digits) of images in
    [0, 1], computed here from its network."""
    net, _ = evaluation.label_judge(workdir, prepare_config(config))
    return np.argmax(np.asarray(net(images)[1]), -1)


def test_class_conditional_outputs(digits_workdir):
    config = _digits(**{'sampling.task': 'class_conditional', 'sampling.classes': (1, 3)})
    metrics = run_lib.sample(config, digits_workdir)
    folder = os.path.join(digits_workdir, 'sample')
    arrays = load_npz(os.path.join(folder, 'class_conditional.npz'))
    np.testing.assert_array_equal(arrays['labels'], [1, 1, 1, 3, 3, 3])
    assert arrays['samples'].shape == (6, 8, 8, 1) and arrays['levels'].max() <= 16
    (round_file,) = glob.glob(os.path.join(folder, 'class_conditional', '*_b00000_h0.npz'))
    assert load_npz(round_file)['x'].shape[0] == 6  # not padded to eval.batch_size=8
    assert _is_png(os.path.join(folder, 'class_conditional.png'))
    # The judge is the independent digits classifier; the fractions are those of its
    # predictions on the quantized samples (a 20-step model draws noise, so whether they
    # are of the requested class is tested on TOY below).
    assert metrics['judge'].startswith('digits classifier')
    hit = _judged(digits_workdir, config, arrays['levels'] / 16.0) == arrays['labels']
    assert metrics['accuracy'] == float(np.mean(hit))
    assert metrics['accuracy_per_class'] == {
        '1': float(np.mean(hit[:3])),
        '3': float(np.mean(hit[3:])),
    }
    with open(os.path.join(folder, 'metrics.json')) as f:
        assert json.load(f)['class_conditional'] == metrics


def test_guided_tasks_use_the_guided_method():
    """DIGITS samples by the probability-flow ODE, which a classifier's gradient makes stiff
    (> 15 min for 100 samples): class-conditional sampling takes sampling.guided_method
    (PC by default, minutes), unguided sampling keeps sampling.method."""
    config = train_utils.load_config('digits', {'sampling.task': 'class_conditional'})
    assert config.sampling.method == 'ode' and config.sampling.guided_method == 'pc'
    assert sample_runner.sampler_config(config).sampling.method == 'pc'
    config.sampling.task = 'unconditional'
    assert sample_runner.sampler_config(config).sampling.method == 'ode'


def test_class_rows_are_labelled():
    """One row per class with 'class <c>' written left of it (dark pixels in a white margin,
    different for different classes); the images beside are those of the plain grid."""
    samples = np.full((6, 8, 8, 1), 0.5, np.float32)
    labels = np.array([3, 3, 3, 7, 7, 7])
    picture = sample_runner.class_grid(samples, labels)
    plain = pictures.image_grid(np.concatenate([samples[:3], np.ones((7, 8, 8, 1))] * 2), 10)
    factor = picture.shape[0] // plain.shape[0]
    margin = picture.shape[1] - plain.shape[1] * factor
    assert factor >= 2 and margin > 20 and picture.shape[-1] == 3
    rows = [picture[(1 + 9 * i) * factor : (9 + 9 * i) * factor, :margin].min(-1) for i in (0, 1)]
    assert all(row.min() < 100 for row in rows) and not np.array_equal(*rows)
    np.testing.assert_array_equal(picture[::factor, margin::factor, 0], plain[..., 0])


def test_the_inpainting_mask_is_tinted():
    """The masked input shows its unknown pixels in a tint (they are black, the colour of
    the digits' background, otherwise); originals and results are unchanged."""
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    mask = sample_runner.parse_mask('bottom_half', (8, 8, 1))
    picture = sample_runner.triple_picture(x, x * mask, x, mask).astype(float) / 255
    cells = [picture[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c] for r in (0, 1) for c in (0, 1)]
    for original, masked in (cells[:2], cells[2:]):
        np.testing.assert_allclose(masked[:4], original[:4], atol=1 / 255)  # known: as is
        tint = np.broadcast_to(pictures.MASK_TINT, (4, 8, 3))
        np.testing.assert_allclose(masked[4:], tint, atol=1 / 255)


def test_inpaint_keeps_known_pixels_and_resumes(digits_workdir):
    config = _digits(**{'sampling.task': 'inpaint', 'sampling.num_samples': 12})
    folder = os.path.join(digits_workdir, 'inpaint_run')
    metrics = run_lib.sample(config, digits_workdir, 'inpaint_run')
    arrays = load_npz(os.path.join(folder, 'inpaint.npz'))
    mask = arrays['mask']
    assert mask.shape == (8, 8, 1) and mask[:4].all() and not mask[4:].any()
    assert metrics['known_max_abs_change'] < 1e-5
    assert metrics['masked_fraction'] == 0.5
    # The judge's accuracies, recomputed: on the 12 test digits themselves it is right
    # nearly always (labels aligned with their images), on the inpainted ones as it says.
    labels, originals = arrays['labels'], arrays['originals'] / 16.0
    on_originals = np.mean(_judged(digits_workdir, config, originals) == labels)
    assert metrics['accuracy_originals'] == float(on_originals) >= 10 / 12
    inpainted = _judged(digits_workdir, config, arrays['levels'] / 16.0)
    assert metrics['accuracy_inpainted'] == float(np.mean(inpainted == labels))
    assert _is_png(os.path.join(folder, 'inpaint.png'))

    # Resume: a rerun reuses finished rounds (round 0 tampered with: kept) and recomputes
    # missing ones (round 1 deleted: recomputed identically, same keys).
    parts = sorted(glob.glob(os.path.join(folder, 'inpaint', 'inpaint_b*.npz')))
    assert len(parts) == 2
    save_npz(parts[0], x=np.full_like(load_npz(parts[0])['x'], 0.25))
    os.remove(parts[1])
    run_lib.sample(config, digits_workdir, 'inpaint_run')
    again = load_npz(os.path.join(folder, 'inpaint.npz'))
    np.testing.assert_array_equal(again['samples'][:8], 0.25)
    np.testing.assert_array_equal(again['samples'][8:], arrays['samples'][8:])


def test_unconditional(digits_workdir):
    config = _digits(**{'sampling.task': 'unconditional', 'sampling.num_samples': 5})
    metrics = run_lib.sample(config, digits_workdir)
    assert metrics == {'num_samples': 5}
    arrays = load_npz(os.path.join(digits_workdir, 'sample', 'unconditional.npz'))
    assert arrays['samples'].shape == (5, 8, 8, 1)


def test_colorize_photos_keeps_grey(tmp_path):
    photos = photos_config.get_config()  # PHOTOS, the colour dataset
    overrides = {**train_utils.TINY['digits'], **_SAMPLE, 'sampling.task': 'colorize'}
    for field, value in {**overrides, 'sampling.num_samples': 4}.items():
        train_utils.set_field(photos, field, value)
    run_lib.train(photos, str(tmp_path))
    metrics = run_lib.sample(photos, str(tmp_path))
    arrays = load_npz(str(tmp_path / 'sample' / 'colorize.npz'))
    # Exact up to float32 rounding of the colour-basis change, relative to the values'
    # size (an untrained model's chroma is far from [-1, 1]); a grey that were not
    # held would move by the chroma's own size, ~1.
    bound = 32 * np.finfo(np.float32).eps * max(1.0, float(np.abs(arrays['samples']).max()))
    assert metrics['grey_max_abs_change'] < bound, (metrics, bound)
    assert metrics['chroma_mse'] >= 0 and metrics['chroma_mse_mean_chroma_baseline'] > 0
    inputs = arrays['inputs']
    np.testing.assert_allclose(inputs, inputs[..., :1].repeat(3, -1))  # grey inputs
    assert arrays['samples'].shape == (4, 16, 16, 3)
    assert _is_png(str(tmp_path / 'sample' / 'colorize.png'))


# --------------------------------------------------------------------------- masks
def test_masks():
    shape = (8, 8, 3)
    assert sample_runner.parse_mask('right_half', shape)[:, 4:].sum() == 0
    center = sample_runner.parse_mask('center', shape)
    assert center[2:6, 2:6].sum() == 0 and center.sum() == 3 * (64 - 16)
    random = sample_runner.parse_mask('random_pixels:0.25', shape, seed=1)
    assert (random == random[..., :1]).all()  # all channels of a pixel together
    assert 0.1 < 1 - random.mean() < 0.4
    with pytest.raises(UserError, match='strictly between 0 and 1'):
        sample_runner.parse_mask('random_pixels:1.5', shape)
    with pytest.raises(UserError, match='for images'):
        sample_runner.parse_mask('bottom_half', (5,))
    with pytest.raises(UserError, match='none of'):
        sample_runner.parse_mask('top_half', shape)


# --------------------------------------------------------------------------- bad input
def _fails(tmp_path, workdir: str, overrides: dict, *expected: str, kind='digits') -> None:
    """main.py --mode sample exits 1 with one error line and writes no output."""
    flags = train_utils.cli_flags(kind, {**_SAMPLE, **_CLASSIFIER, **overrides})
    result = train_utils.run_main(
        flags + ['--workdir', workdir, '--mode', 'sample', '--sample_folder', 'bad'], timeout=240
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith('Error: ')]
    assert len(errors) == 1, result.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    written = [
        p
        for p in glob.glob(os.path.join(workdir, 'bad', '**'), recursive=True)
        if os.path.isfile(p)
    ]
    assert written == [], written


@pytest.mark.parametrize(
    'overrides, expected',
    [
        (
            {'sampling.task': 'class_conditional', 'sampling.classes': (3, 10)},
            ['sampling.classes contains 10', '0 … 9'],
        ),
        ({'sampling.task': 'colorize'}, ['colour images', '(8, 8, 1)']),
        ({'sampling.task': 'class_conditional', 'sampling.classifier_scale': 0.0}, ['positive']),
        ({'sampling.task': 'inpaint', 'sampling.mask': 'MASK'}, ['does not match']),
    ],
)
def test_bad_input(tmp_path, digits_workdir, overrides, expected):
    if overrides.get('sampling.mask') == 'MASK':
        path = str(tmp_path / 'mask.npy')
        np.save(path, np.ones((4, 4, 1)))
        overrides = {**overrides, 'sampling.mask': path}
    _fails(tmp_path, digits_workdir, overrides, *expected)


def test_class_conditional_without_classifier(tmp_path):
    workdir = str(tmp_path / 'w')
    config = _digits()
    run_lib.train(config, workdir)
    _fails(
        tmp_path,
        workdir,
        {'sampling.task': 'class_conditional'},
        'needs a trained classifier',
        '--mode train_classifier',
    )


def test_unlabelled_dataset(tmp_path):
    path = train_utils.write_vector_npz(str(tmp_path / 'v.npz'))
    flags = {'sampling.task': 'class_conditional', 'data.path': path}
    _fails(tmp_path, str(tmp_path / 'w'), flags, 'has no class labels', kind='npz')


# --- does conditioning condition? TOY, whose classes are the mixture's components ------
_TOY = {
    'training.n_iters': 1000,
    'training.batch_size': 256,
    'training.n_jitted_steps': 50,
    'training.log_freq': 500,
    'training.eval_freq': 500,
    'training.snapshot_freq': 1000,
    'training.snapshot_freq_for_preemption': 500,
    'training.snapshot_sampling': False,
    'model.nf': 64,
    'model.num_res_blocks': 2,
    'optim.warmup': 0,
    'classifier.nf': 64,
    'classifier.num_layers': 2,
    'classifier.batch_size': 128,
    'classifier.lr': 3e-3,
    'classifier.warmup': 0,
    'classifier.ema_rate': 0.9,
    'classifier.n_iters': 300,
    'classifier.eval_freq': 300,
    'classifier.snapshot_freq': 300,
    'eval.end_ckpt': -1,
    'eval.batch_size': 64,
}


@pytest.fixture(scope='module')
def toy_workdir(tmp_path_factory):
    """A TOY score model (1000 steps) and its classifier p_t(component | x) (300 steps,
    clean test accuracy 0.996)."""
    workdir = str(tmp_path_factory.mktemp('toy'))
    config = train_utils.load_config('toy', _TOY)
    run_lib.train(config, workdir)
    assert run_lib.train_classifier(config, workdir)['accuracy_clean'] > 0.97
    return workdir


@pytest.mark.timeout(600)
@pytest.mark.parametrize('method', ['pc', 'ode'])
def test_class_conditional_samples_are_of_the_requested_class(toy_workdir, method):
    """16 samples each of components 0, 2 and 5 of the ring of 8 Gaussians (PC: reverse
    diffusion, 1000 steps; ODE: Dopri5): nearly every sample lies nearest the mean of its
    requested component (measured 0.90 PC, 0.96 ODE; the unconditional samples of the
    same model fall over all 8, so unconditioned ones would match 1/8). The ODE sampler
    solves each example on its own; closed over the batch's labels, the conditional score
    added the gradient of all 48 labels to every example, and all 48 samples went to one
    component (0.33)."""
    overrides = {
        **_TOY,
        'sampling.task': 'class_conditional',
        'sampling.method': method,
        'sampling.predictor': 'reverse_diffusion',
        'sampling.classes': (0, 2, 5),
        'sampling.num_samples': 16,
    }
    config = train_utils.load_config('toy', overrides)
    metrics = run_lib.sample(config, toy_workdir, f'cond_{method}')
    arrays = load_npz(os.path.join(toy_workdir, f'cond_{method}', 'class_conditional.npz'))
    means = datasets.toy_distribution(prepare_config(config)).means
    nearest = np.argmin(((arrays['samples'][:, None] - means[None]) ** 2).sum(-1), -1)
    np.testing.assert_array_equal(arrays['labels'], np.repeat([0, 2, 5], 16))
    assert np.mean(nearest == arrays['labels']) >= 0.8, nearest
    assert metrics['judge'].startswith('noise-conditional classifier')
    assert metrics['accuracy'] >= 0.8, metrics
