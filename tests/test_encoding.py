"""The probability-flow ODE as an encoder (``encoding.py``): closed forms, statistics,
and the three ``--mode sample`` tasks end to end.

Gaussian data N(μ, Σ) under a linear SDE stay Gaussian, p_t = N(α_t μ, α_t² Σ + σ_t² I), and
the probability-flow ODE is linear: in the eigenbasis Σ = U Λ Uᵀ each coordinate of x − α_t μ
scales as √v_k(t), v_k = α_t² λ_k + σ_t² (d log √v/dt = f + g²/(2v), the ODE's own factor).
So the code of x is z = α_T μ + U diag(√(v_k(T)/v_k(ε))) Uᵀ (x − α_ε μ), a known matrix.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import encoding
import mixture
import run_lib
import sde_lib
import train_utils
from configs.base import get_base_config
from errors import UserError
from file_io import load_npz, read_json

EPS = 0.05  # eval.eps, far from sampling.eps = 1e-3: the wrong ε would miss the closed form
SDES = {
    'vp': lambda: sde_lib.VPSDE(0.1, 20.0, 1000),
    'subvp': lambda: sde_lib.subVPSDE(0.1, 20.0, 1000),
    've': lambda: sde_lib.VESDE(0.01, 10.0, 1000),
}


def _flow_config(rtol=1e-6, method='dopri5', ode_time='t', eps=EPS):
    config = get_base_config()
    config.eval.update(rtol=rtol, atol=rtol, eps=eps, ode_method=method, ode_time=ode_time)
    return config


def _gaussian(dim=3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    cov = a @ a.T / dim + 0.05 * np.eye(dim)
    mean = rng.normal(size=dim)
    return mixture.GaussianMixture(np.ones(1), mean[None], cov[None])


def _closed_form_code(sde, gauss, x, eps):
    """z of x (and the matrix): α_T μ + U diag(√(v(T)/v(ε))) Uᵀ (x − α_ε μ)."""
    lam, u = np.linalg.eigh(gauss.covs[0])

    def alpha_var(t):
        t = jnp.full((1,), t)
        alpha = float(jnp.exp(sde.log_mean_coeff(t))[0])
        return alpha, alpha**2 * lam + float(sde.std(t)[0]) ** 2

    (a_eps, v_eps), (a_t, v_t) = alpha_var(eps), alpha_var(sde.T)
    matrix = u @ np.diag(np.sqrt(v_t / v_eps)) @ u.T
    mu = gauss.means[0]
    return a_t * mu + (np.asarray(x, np.float64) - a_eps * mu) @ matrix.T


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    'name, method, ode_time',
    [
        ('vp', 'dopri5', 't'),
        ('subvp', 'tsit5', 't'),
        ('ve', 'dopri5', 't'),
        ('vp', 'dopri5', 'sigma'),
        ('ve', 'bosh3', 'log_sigma'),
    ],
)
def test_gaussian_code_is_the_closed_form_linear_map(name, method, ode_time):
    """Encoder = the closed-form linear map, decoder = its inverse, round trip = identity,
    each to the solver's tolerance (rtol = atol = 1e-6: measured code error ≤ 1e-5 of its
    scale, round trip ≤ 2.5e-5; the closed form at ε = 1e-3 instead of eval.eps differs by
    8e-2 (VP), 2.5e-2 (sub-VP), 3.3e-4 (VE) of the scale)."""
    sde, gauss = SDES[name](), _gaussian()
    codec = encoding.get_codec(sde, _flow_config(method=method, ode_time=ode_time))
    score = gauss.score_fn(sde)
    x = gauss.sample(jax.random.PRNGKey(1), 64)
    z, nfe = codec.encode(score, x)
    z_exact = _closed_form_code(sde, gauss, x, EPS)
    scale = float(np.max(np.abs(z_exact)))
    np.testing.assert_allclose(np.asarray(z), z_exact, atol=5e-5 * scale)
    x_back, nfe_back = codec.decode(score, jnp.asarray(z_exact, jnp.float32))
    np.testing.assert_allclose(np.asarray(x_back), np.asarray(x), atol=1e-4 * max(1.0, scale))
    roundtrip, _ = codec.decode(score, z)
    np.testing.assert_allclose(np.asarray(roundtrip), np.asarray(x), atol=1e-4)
    assert int(nfe) > 1 and int(nfe_back) > 1


@pytest.mark.timeout(300)
def test_identifiability_tells_vp_from_sub_vp_on_a_mixture():
    """One 2-D mixture, exact scores: VP and sub-VP share p_0 but not the flow, so their
    codes differ; the same model under another solver and time variable gives the same
    codes (distance at the solver's tolerance). The statistic separates the three cases:
    identical ≪ VP vs sub-VP ≪ shuffled (measured relative distance 3e-6, 0.069, 1.36;
    mean correlation 1 − 4e-12, 0.9990, −0.02)."""
    mix = mixture.random_mixture(0, 3, 2, 1.0)
    x = mix.sample(jax.random.PRNGKey(3), 400)

    def code(name, **kw):
        sde = SDES[name]()
        return np.asarray(
            encoding.get_codec(sde, _flow_config(**kw)).encode(mix.score_fn(sde), x)[0]
        )

    z_vp = code('vp')
    same = encoding.identifiability(z_vp, code('vp', method='tsit5', ode_time='sigma'))
    other = encoding.identifiability(z_vp, code('subvp'))
    assert same['relative_distance'] < 1e-3 and same['correlation_min'] > 0.9999, same
    assert other['relative_distance'] > 0.03, other
    assert other['relative_distance'] > 100 * same['relative_distance'], (same, other)
    for stats in (same, other):
        assert abs(stats['shuffled_correlation_mean']) < 0.15, stats
        assert stats['shuffled_relative_distance'] > 1.0, stats


# --------------------------------------------------------------------------- statistics
@pytest.mark.timeout(60)
def test_slerp_and_lerp():
    z0 = jnp.asarray([[3.0, 0.0], [1.0, 1.0]])
    z1 = jnp.asarray([[0.0, 3.0], [2.0, 2.0]])  # orthogonal; parallel (θ = 0: linear)
    for lam in (0.0, 1.0):
        np.testing.assert_allclose(encoding.slerp(z0, z1, lam), encoding.lerp(z0, z1, lam))
    mid = np.asarray(encoding.slerp(z0, z1, 0.5))
    np.testing.assert_allclose(mid[0], [3 / np.sqrt(2), 3 / np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(mid[1], [1.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(encoding.lerp(z0, z1, 0.5))[0], [1.5, 1.5])
    third = np.asarray(encoding.slerp(z0[:1], z1[:1], 1 / 3))[0]
    np.testing.assert_allclose(np.arctan2(third[1], third[0]), np.pi / 6, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(third), 3.0, rtol=1e-6)


@pytest.mark.timeout(60)
def test_identifiability_statistics():
    rng = np.random.default_rng(0)
    a, noise = rng.normal(size=(500, 6)), rng.normal(size=(500, 6))
    for n in (2, 5, 500):
        perm = encoding.derangement(n, seed=n)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    np.testing.assert_allclose(
        encoding.correlations(a, a + noise),
        [np.corrcoef(a[:, d], a[:, d] + noise[:, d])[0, 1] for d in range(6)],
    )
    same = encoding.identifiability(a, a)
    assert same['correlation_min'] == pytest.approx(1.0) and same['relative_distance'] == 0.0
    assert abs(same['shuffled_correlation_mean']) < 0.1
    assert same['shuffled_relative_distance'] == pytest.approx(np.sqrt(2), rel=0.1)
    unrelated = encoding.identifiability(a, noise)
    assert abs(unrelated['correlation_mean']) < 0.1
    err = encoding.round_trip_errors(np.zeros((2, 4)), np.asarray([[0, 0, 0, 0.5], [0.1] * 4]), 0.1)
    np.testing.assert_allclose(err['max'], [0.5, 0.1])
    np.testing.assert_allclose(err['rms'], [0.25, 0.1])
    np.testing.assert_allclose(err['max_levels'], [5.0, 1.0])


# --------------------------------------------------------------------------- the tasks
_SAMPLE = {
    'eval.end_ckpt': -1,
    'eval.batch_size': 4,
    'eval.rtol': 1e-4,
    'eval.atol': 1e-4,
    'eval.eps': 1e-3,
    'sampling.num_samples': 3,
}


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
    """Two tiny DIGITS models of different widths (nf 8 and 4)."""
    root = tmp_path_factory.mktemp('enc')
    out = []
    for nf in (8, 4):
        config = train_utils.load_config('digits', {**_SAMPLE, 'model.nf': nf})
        run_lib.train(config, str(root / f'nf{nf}'))
        out.append(str(root / f'nf{nf}'))
    return out


def _digits(**overrides):
    return train_utils.load_config('digits', {**_SAMPLE, **overrides})


@pytest.mark.timeout(900)
def test_encode_round_trip_and_resume(workdirs):
    config = _digits(**{'sampling.task': 'encode', 'sampling.num_samples': 6})
    metrics = run_lib.sample(config, workdirs[0])
    folder = os.path.join(workdirs[0], 'sample')
    arrays = load_npz(os.path.join(folder, 'encode.npz'))
    assert arrays['latents'].shape == arrays['samples'].shape == (6, 8, 8, 1)
    # DIGITS trained on dequantized levels: inputs are the bin centres (x̄ + ½)/17.
    np.testing.assert_allclose(arrays['inputs'], (arrays['originals'] + 0.5) / 17, rtol=1e-6)
    # A 20-step model's field is rough: its round trip is the solver's error, which shrinks
    # with the tolerance (measured 1.5 grey levels at 1e-4, 0.33 at 1e-5; a trained
    # DIGITS model: 0.04 at 1e-5, README).
    tight = run_lib.sample(
        _digits(**{'sampling.task': 'encode', 'eval.rtol': 1e-5, 'eval.atol': 1e-5}),
        workdirs[0],
        'tight',
    )
    assert tight['round_trip_max_levels_max'] < 0.5 * metrics['round_trip_max_levels_max']
    assert metrics['round_trip_max_max'] == pytest.approx(
        float(np.max(np.abs(arrays['samples'] - arrays['inputs']))), rel=1e-5
    )
    assert metrics['nfe_encode'] > 1 and metrics['nfe_decode'] > 1
    prior = SDES['vp']().prior_logp(jnp.asarray(arrays['latents']))
    np.testing.assert_allclose(arrays['prior_logp'], prior, rtol=1e-5)
    assert 0 < metrics['bpd_ode'] < metrics['bpd_prior_term'] + 5
    assert os.path.isfile(os.path.join(folder, 'encode.png'))
    assert read_json(os.path.join(folder, 'metrics.json'))['encode'] == metrics

    # Resume: round 1 deleted is recomputed identically; round 0 (kept) is not recomputed.
    parts = sorted(glob.glob(os.path.join(folder, 'encode', 'encode_b*.npz')))
    assert len(parts) == 2
    os.remove(parts[1])
    run_lib.sample(config, workdirs[0])
    again = load_npz(os.path.join(folder, 'encode.npz'))
    np.testing.assert_array_equal(again['latents'], arrays['latents'])


@pytest.mark.timeout(900)
def test_interpolate(workdirs):
    config = _digits(**{'sampling.task': 'interpolate', 'sampling.num_samples': 2})
    metrics = run_lib.sample(config, workdirs[0], 'interp')
    arrays = load_npz(os.path.join(workdirs[0], 'interp', 'interpolate.npz'))
    p = encoding.INTERPOLATION_POINTS
    assert arrays['spherical'].shape == arrays['linear'].shape == (2, p, 8, 8, 1)
    assert arrays['originals'].shape == (2, 2, 8, 8, 1)
    # Both paths end at the round trips of the pair: the same codes, decoded by two
    # compiled loops whose rounding differs, amplified by the adaptive steps of this rough
    # 20-step model (measured 2.5e-3 apart, 1.5 grey levels = 0.09 from the inputs).
    inputs = (arrays['originals'] + 0.5) / 17
    level = metrics['round_trip_max_levels_max'] / 17
    for name in ('spherical', 'linear'):
        ends = arrays[name][:, [0, -1]]
        assert np.max(np.abs(ends - inputs)) <= 2 * level + 1e-6, name
    assert np.max(np.abs(arrays['spherical'][:, [0, -1]] - inputs)) == pytest.approx(level)
    assert metrics['linear_norm_ratio_midpoint'] < metrics['spherical_norm_ratio_midpoint']
    for name in ('interpolate.png', 'interpolate_linear.png'):
        assert os.path.isfile(os.path.join(workdirs[0], 'interp', name))


@pytest.mark.timeout(900)
def test_identifiability_of_two_widths(workdirs):
    over = {'sampling.task': 'identifiability', 'sampling.num_samples': 6}
    self_ref = run_lib.sample(
        _digits(**over, **{'sampling.reference_workdir': workdirs[0]}), workdirs[0], 'self'
    )
    assert self_ref['correlation_min'] > 0.999 and self_ref['relative_distance'] < 1e-3
    other = run_lib.sample(
        _digits(**over, **{'sampling.reference_workdir': workdirs[1]}), workdirs[0], 'other'
    )
    assert other['reference_model'] == 'ncsnpp nf=4' and other['reference_ckpt'] == 2
    assert other['relative_distance'] > self_ref['relative_distance']
    arrays = load_npz(os.path.join(workdirs[0], 'other', 'identifiability.npz'))
    assert arrays['latents'].shape == arrays['latents_reference'].shape == (6, 8, 8, 1)
    assert os.path.isfile(os.path.join(workdirs[0], 'other', 'identifiability.png'))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    'overrides, expected',
    [
        ({}, 'reference_workdir=W2'),
        ({'sampling.reference_workdir': '/nonexistent'}, 'has no config.json'),
        ({'sampling.reference_workdir': 'TOY'}, 'models TOY (2,)'),
        ({'sampling.reference_workdir': 'W', 'sampling.num_samples': 2}, 'at least 3'),
    ],
)
def test_bad_identifiability_input(tmp_path, workdirs, overrides, expected):
    """One UserError before anything is written."""
    if overrides.get('sampling.reference_workdir') == 'TOY':
        toy = tmp_path / 'toy'
        (toy / 'checkpoints').mkdir(parents=True)
        toy_config = train_utils.load_config('toy')
        (toy / 'config.json').write_text(toy_config.to_json_best_effort())
        overrides = {'sampling.reference_workdir': str(toy)}
        os.symlink(os.path.join(workdirs[1], 'checkpoints', '2'), toy / 'checkpoints' / '2')
    if overrides.get('sampling.reference_workdir') == 'W':
        overrides = {**overrides, 'sampling.reference_workdir': workdirs[1]}
    config = _digits(**{'sampling.task': 'identifiability', **overrides})
    with pytest.raises(UserError, match=expected.replace('(', r'\(').replace(')', r'\)')):
        run_lib.sample(config, workdirs[0], 'bad')
    assert not os.path.exists(os.path.join(workdirs[0], 'bad'))


@pytest.mark.timeout(60)
def test_reference_workdir_only_for_identifiability():
    config = _digits(**{'sampling.task': 'encode', 'sampling.reference_workdir': '/x'})
    with pytest.raises(UserError, match="only by sampling.task='identifiability'"):
        run_lib.sample(config, '/nonexistent')


@pytest.mark.extended
@pytest.mark.timeout(900)
def test_identifiability_on_two_devices_matches_one(workdirs):
    """main.py on 1 and 2 host devices: the rows split over the devices give the codes of
    one device, to the solver's tolerance (measured 9e-4 on this rough model at 1e-4; rows
    mixed up between devices would differ by ~1)."""
    over = {
        **_SAMPLE,
        'sampling.task': 'identifiability',
        'sampling.num_samples': 4,
        'sampling.reference_workdir': workdirs[1],
    }
    codes = []
    for devices in (1, 2):
        folder = f'devices{devices}'
        args = train_utils.cli_flags('digits', over) + ['--workdir', workdirs[0]]
        result = train_utils.run_main(
            args + ['--mode', 'sample', '--sample_folder', folder], timeout=400, devices=devices
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f'{devices} devices on 1 hosts' in result.stderr
        codes.append(load_npz(os.path.join(workdirs[0], folder, 'identifiability.npz')))
    for key in ('latents', 'latents_reference'):
        np.testing.assert_allclose(codes[1][key], codes[0][key], atol=1e-2)
