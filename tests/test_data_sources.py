"""A data source is one registered unit: a source defined and registered in this file alone
(4×4 binary bars and stripes) is valid config, has its shapes, levels, info and batches,
and trains, evaluates (bits/dim) and samples through main.py with no edit anywhere else.

main.py runs in a subprocess, so this file is also that subprocess's entry point:
``python tests/test_data_sources.py <main.py flags>`` registers the source and runs main.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from absl import app

import checkpointing
import datasets
import run_lib
import train_utils
import validation
from errors import UserError


def bars_and_stripes() -> np.ndarray:
    """The 30 distinct 4×4 binary images whose rows are all equal or whose columns are
    all equal (16 + 16 patterns, all-off and all-on counted once), uint8 [30, 4, 4, 1]."""
    rows = np.array(list(itertools.product((0, 1), repeat=4)), np.uint8)  # [16, 4]
    horizontal = np.repeat(rows[:, :, None], 4, axis=2)  # pixel (i, j) = rows[i]
    both = np.concatenate([horizontal, horizontal.transpose(0, 2, 1)])
    _, first = np.unique(both.reshape(len(both), -1), axis=0, return_index=True)
    return both[np.sort(first)][..., None]


class BarsAndStripes(datasets.InMemorySource):
    """K = 2 levels, 1 channel, 4×4, no labels, no feature network. Test: each of the 30
    patterns once; train: each 32 times, in a fixed shuffled order (960 images)."""

    name = 'BARS4'
    num_levels = 2
    feature_net = None

    def info(self, config):
        return {'source': 'tests/test_data_sources.py', 'patterns': len(bars_and_stripes())}

    def load_split(self, data: types.SimpleNamespace, split: str):
        patterns = bars_and_stripes()
        if split == 'test':
            return patterns, None
        order = np.random.default_rng(0).permutation(32 * len(patterns))
        return np.repeat(patterns, 32, axis=0)[order], None


# The lowest expected bits/dim of any model on the test split (every pattern once): the
# data's entropy per dimension, log₂ 30 / 16 ≈ 0.307 (cross-entropy ≥ entropy, and the
# dequantized bound ≥ −log₂ P(x̄)); a model that learnt nothing scores log₂ K = 1 or more.
ENTROPY_BPD = math.log2(30) / 16
OVERRIDES = {
    'data.dataset': 'BARS4',
    'data.image_size': 4,
    'data.num_channels': 1,
    'data.num_bins': 2,
    'model.nf': 16,
    'training.n_iters': 1000,
    'training.batch_size': 64,
    'training.n_jitted_steps': 50,
    'training.log_freq': 500,
    'training.eval_freq': 500,
    'training.snapshot_freq': 1000,
    'training.snapshot_freq_for_preemption': 500,
    'optim.lr': 3e-3,
    'eval.begin_ckpt': 1,
    'eval.end_ckpt': 1,
    'eval.batch_size': 30,
    'eval.rtol': 1e-3,
    'eval.atol': 1e-3,
    'eval.enable_loss': False,
    'eval.enable_sampling': True,  # FID/KID/IS: no feature network, skipped
    'eval.num_samples': 30,
    'sampling.num_samples': 64,
}


@pytest.fixture
def registered(monkeypatch):
    """BARS4 registered for one test (the registry restored afterwards)."""
    monkeypatch.setattr(datasets.base, '_SOURCES', dict(datasets.base._SOURCES))
    datasets.register_source(BarsAndStripes())


def test_bars_and_stripes():
    patterns = bars_and_stripes().reshape(30, 16)
    assert len({p.tobytes() for p in patterns}) == 30 and set(patterns.ravel()) == {0, 1}


def test_the_registered_source_is_valid_config_with_its_data(registered):
    config = validation.prepare_config(train_utils.load_config('digits', OVERRIDES), 1)
    assert 'BARS4' in dict(validation.choices())['data.dataset']
    assert datasets.data_shape(config) == (4, 4, 1) and datasets.num_bins(config) == 2
    assert not datasets.is_continuous(config) and not datasets.has_labels(config)
    assert datasets.feature_net(config) is None
    info = datasets.dataset_info(config)
    assert info == {
        'dataset': 'BARS4',
        'shape': [4, 4, 1],
        'num_bins': 2,
        'source': 'tests/test_data_sources.py',
        'patterns': 30,
    }
    assert [datasets.split_size(config, s) for s in ('train', 'test')] == [960, 30]
    x = next(datasets.get_train_iterator(config, process_index=0, process_count=1))
    assert x.shape == (50, 64, 4, 4, 1) and 0 <= x.min() and x.max() < 1  # (x̄ + u)/2
    with pytest.raises(UserError, match='labels come with .*DIGITS'):
        datasets.get_train_iterator(config, with_labels=True)
    config.data.num_bins = 3
    with pytest.raises(UserError, match='data.num_bins=3 does not match BARS4, which has 2'):
        validation.validate_config(config, 1)


def run_main(args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python tests/test_data_sources.py ARGS``: main.py with BARS4 registered."""
    return subprocess.run(
        [sys.executable, os.path.abspath(__file__)] + args,
        cwd=train_utils.REPO,
        env=train_utils.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_train_evaluate_and_sample_a_new_source_through_main(tmp_path):
    """1000 steps of a small DDPM++ (nf 16) on the 960 training patterns; measured on 2
    CPU cores: 0.72 ± 0.04 bits/dim on the 30 test patterns, 12 of 64 samples are bars or
    stripes (chance: 30 / 2¹⁶ = 0.05 %); about 70 s."""
    workdir = str(tmp_path / 'bars')
    flags = train_utils.cli_flags('digits', OVERRIDES) + ['--workdir', workdir]
    for mode in ('train', 'eval', 'sample'):
        result = run_main(flags + ['--mode', mode])
        assert result.returncode == 0, result.stderr[-3000:]
    assert checkpointing.list_checkpoints(workdir) == [1]
    metrics = run_lib.read_metrics(workdir)['1']
    assert metrics['num_examples'] == 30 and metrics['num_samples'] == 30
    assert 'fid' not in metrics  # no feature network: FID/KID/IS skipped, eval goes on
    with open(os.path.join(workdir, 'stdout.txt')) as f:
        assert "dataset='BARS4' has no feature network" in f.read()
    # between the data's entropy and log₂ K = 1, clearly below the latter
    assert ENTROPY_BPD < metrics['bpd'] < 0.9
    with np.load(os.path.join(workdir, 'sample', 'unconditional.npz')) as f:
        levels = f['levels']
    assert levels.shape == (64, 4, 4, 1) and set(np.unique(levels)) == {0, 1}
    valid = {p.tobytes() for p in bars_and_stripes()}
    assert sum(x.tobytes() in valid for x in levels) >= 4  # measured 12


if __name__ == '__main__':
    import main

    datasets.register_source(BarsAndStripes())
    app.run(main.main, flags_parser=main.parse_flags)
