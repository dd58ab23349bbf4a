"""Shared by the training tests: tiny configs, the CLI in a subprocess, parameter dumps.

Imported as a top-level module (pytest puts ``tests/`` on ``sys.path``; the worker
scripts run from ``tests/``).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import datasets  # noqa: E402  (the repository is on sys.path now)
import sde_lib  # noqa: E402
from validation import prepare_config  # noqa: E402

# Leaf configs the tests start from, and the overrides that make them tiny.
CONFIG_FILES = {
    'toy': 'configs/vp/toy_lw_is.py',
    'npz': 'configs/vp/toy_lw_is.py',  # with data.dataset = 'NPZ' and data.path
    'digits': 'configs/vp/digits_lw_is.py',
    'cifar10': 'configs/vp/cifar10_lw_is.py',
}
_SCHEDULE = {
    'training.n_iters': 20,
    'training.n_jitted_steps': 5,
    'training.log_freq': 5,
    'training.eval_freq': 10,
    'training.snapshot_freq': 10,
    'training.snapshot_freq_for_preemption': 5,
    'training.snapshot_sampling': False,
    'training.batch_size': 16,
    'optim.warmup': 0,
}
_TINY_CNN = {
    'model.nf': 8,
    'model.ch_mult': (1,),
    'model.num_res_blocks': 1,
    'model.attn_resolutions': (),
    'model.dropout': 0.0,
    'model.num_scales': 20,
}
TINY = {
    'toy': {**_SCHEDULE, 'model.nf': 32, 'model.num_res_blocks': 1},
    'npz': {
        **_SCHEDULE,
        'model.nf': 32,
        'model.num_res_blocks': 1,
        'data.dataset': 'NPZ',
        'data.dim': 0,
    },
    'digits': {**_SCHEDULE, **_TINY_CNN},
    'cifar10': {**_SCHEDULE, **_TINY_CNN, 'data.random_flip': False},
}


def write_vector_npz(
    path: str, dim: int = 2, num_train: int = 512, num_test: int = 64, seed: int = 0
) -> str:
    """An NPZ file of float32 vectors: a ring of 8 Gaussians in the first two coordinates."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> np.ndarray:
        angle = 2 * np.pi * rng.integers(0, 8, n) / 8
        x = 0.05 * rng.standard_normal((n, dim))
        x[:, 0] += np.cos(angle)
        x[:, 1] += np.sin(angle)
        return x.astype(np.float32)

    np.savez(path, train=draw(num_train), test=draw(num_test))
    return path


def zero_score_bpd(config, levels: Optional[np.ndarray] = None) -> float:
    """Expected test bits/dim of a score network whose output is 0, in closed form.

    With s = 0 the probability-flow ODE is dx/dt = f(t) x: x(T) = c·y with
    c = α(T)/α(ε), and log p_ε(y) = log N(c y; 0, I) + D log c.  For y = 2(x̄ + u)/K − 1,
    u ~ U[0, 1)^D: E‖y‖² = Σ (E y)² + D (2/K)²/12, and bits/dim =
    (E[−log p_ε(y)] − D log 2)/(D ln 2) + log₂ K.  Independent of the pipeline's code;
    ``levels`` default to the config's test split.
    """
    if levels is None:
        levels = datasets.get_shard(prepare_config(config), 'test').data
    levels = np.asarray(levels, np.float64)
    num_bins, dim = config.data.num_bins, levels[0].size
    sde = sde_lib.get_sde(config)
    log_alpha = np.asarray(sde.log_mean_coeff(np.asarray([config.eval.eps, sde.T])))
    log_c = float(log_alpha[1] - log_alpha[0])
    mean_y = 2 * (levels.reshape(len(levels), -1) + 0.5) / num_bins - 1
    sq = np.sum(mean_y**2, 1) + dim * (2 / num_bins) ** 2 / 12
    nll = 0.5 * np.exp(2 * log_c) * sq + 0.5 * dim * np.log(2 * np.pi) - dim * log_c
    return float(np.mean((nll - dim * np.log(2)) / (dim * np.log(2)) + np.log2(num_bins)))


def toy_log_p_data() -> np.ndarray:
    """log p_data of TOY's test points, from the mixture directly (NumPy, float64)."""
    config = load_config('toy')
    x = datasets.get_shard(config, 'test').data.astype(np.float64)
    mix = datasets.toy_distribution(config)
    var = mix.covs[:, 0, 0]  # isotropic components
    sq = np.sum((x[:, None, :] - mix.means[None]) ** 2, -1)
    log_n = -0.5 * sq / var - 0.5 * x.shape[1] * np.log(2 * np.pi * var)
    return np.logaddexp.reduce(np.log(mix.weights) + log_n, axis=1)


def load_config(kind: str, overrides: Optional[Dict[str, Any]] = None):
    """The leaf config of ``kind`` with the tiny overrides and then ``overrides``."""
    path = CONFIG_FILES[kind]
    module = importlib.import_module(path[:-3].replace('/', '.'))
    config = module.get_config()
    for field, value in {**TINY[kind], **(overrides or {})}.items():
        set_field(config, field, value)
    return config


def set_field(config, field: str, value: Any) -> None:
    """``config.a.b = value`` for ``field = 'a.b'``."""
    *sections, name = field.split('.')
    for section in sections:
        config = config[section]
    config[name] = value


def cli_flags(kind: str, overrides: Optional[Dict[str, Any]] = None) -> List[str]:
    """``--config FILE --config.a.b=v ...`` reproducing ``load_config(kind, overrides)``."""
    flags = ['--config', os.path.join(REPO, CONFIG_FILES[kind])]
    for field, value in {**TINY[kind], **(overrides or {})}.items():
        flags.append(
            f'--config.{field}={value!r}'
            if isinstance(value, tuple)
            else f'--config.{field}={value}'
        )
    return flags


def subprocess_env(devices: int = 1) -> Dict[str, str]:
    """CPU-only environment with ``devices`` host devices (XLA_FLAGS before jax import)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        PYTHONPATH=REPO,
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    )
    env.pop('PYTEST_XDIST_WORKER', None)
    return env


def run_main(
    args: List[str], timeout: float = 300, devices: int = 1
) -> subprocess.CompletedProcess:
    """Runs ``python main.py ARGS`` to completion and returns its output."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, 'main.py')] + args,
        cwd=REPO,
        env=subprocess_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def flat_params(tree: Any) -> Dict[str, np.ndarray]:
    """``{'a/b': array}`` for every leaf of ``tree`` (host copies of replicated arrays)."""
    import jax

    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
        flat[name] = np.asarray(
            leaf.addressable_data(0) if hasattr(leaf, 'addressable_data') else leaf
        )
    return flat


def assert_trees_close(
    a: Dict[str, np.ndarray], b: Dict[str, np.ndarray], atol: float = 0.0, rtol: float = 0.0
) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=rtol, err_msg=name)
