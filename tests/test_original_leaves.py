"""Every leaf config of both original repositories, by its original path, validates here
and builds a network with the original's parameter count; and every original file, as
written, runs here.

The counts (tests/fixtures/original_param_counts.json; its '_about' says how they were
obtained) come from building the ORIGINAL model definitions of yang-song/score_sde and
yang-song/score_flow outside this repository. Score SDE's leaves live at the same relative
paths under configs/, ScoreFlow's under configs/score_flow/ (four of its CIFAR-10 paths
collide with Score SDE's). Networks are traced with jax.eval_shape only (nothing is
allocated), once per distinct model section and data shape.

The originals' files themselves, byte for byte, are tests/fixtures/original_leaf_configs.json
(read outside this repository from both repositories' git trees; its '_about'). Executed
here as ``--config`` would execute a copy of them, each validates; the four names that
single score_sde files set and its code never reads are accepted, logged and dropped
(``validation.IGNORED``).
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import types

import ml_collections
import pytest
from test_configs import SCORE_SDE, _plain, config_field, load_leaf

import validation
from configs import base
from errors import UserError
from models import utils as mutils
from validation import prepare_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
COUNTS = json.loads((ROOT / 'tests/fixtures/original_param_counts.json').read_text())
TEXTS = json.loads((ROOT / 'tests/fixtures/original_leaf_configs.json').read_text())
LEAVES = [('score_sde', p) for p in COUNTS['score_sde']] + [
    ('score_flow', p) for p in COUNTS['score_flow']
]


def test_every_original_leaf_is_pinned_and_here():
    """The counts name exactly the originals' leaf files (their texts, read from the
    originals: 39 of score_sde, 8 of score_flow), and each is at its path here."""
    for origin in ('score_sde', 'score_flow'):
        assert sorted(COUNTS[origin]) == sorted(TEXTS[origin]), origin
    assert (len(TEXTS['score_sde']), len(TEXTS['score_flow'])) == (39, 8)
    missing = [f'{o}:{r}' for o, r in LEAVES if not _path(o, r).is_file()]
    assert missing == []


def _path(origin: str, rel: str) -> pathlib.Path:
    return ROOT / 'configs' / ('score_flow/' + rel if origin == 'score_flow' else rel)


_COUNTED: dict = {}  # (model section, data shape) -> parameter count


def _count(config) -> int:
    """Parameter count of the config's network, traced once per distinct network."""
    data = config.data
    key = (
        config.model.to_json_best_effort(sort_keys=True),
        data.image_size,
        data.num_channels,
    )
    if key not in _COUNTED:
        _COUNTED[key] = mutils.param_count(mutils.init_shapes(config))
    return _COUNTED[key]


@pytest.mark.timeout(300)
@pytest.mark.parametrize('origin, rel', LEAVES, ids=[f'{o}:{r}' for o, r in LEAVES])
def test_original_leaf_validates_and_has_the_original_parameter_count(origin, rel):
    config = prepare_config(load_leaf(_path(origin, rel)))
    assert _count(config) == COUNTS[origin][rel]


def _fake_torch() -> types.ModuleType:
    """What two score_sde files use of PyTorch (not a dependency here): ``torch.device``
    and ``torch.cuda.is_available``."""
    torch = types.ModuleType('torch')
    torch.device = lambda name: ('torch.device', name)
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    return torch


def _load_text(origin: str, rel: str):
    """The original file's ``get_config()``, its text executed as a module (its imports of
    ``configs.default_*_configs`` resolve to this repository's, as for a copy of it)."""
    module = types.ModuleType(f'original_{origin}_{rel[:-3].replace("/", "_")}')
    exec(compile(TEXTS[origin][rel], f'{origin}:configs/{rel}', 'exec'), module.__dict__)
    return module.get_config()


# Fields a score_sde file does not set and takes from configs/default_{cifar10,celeba}_configs.py,
# where Score SDE's defaults differ from this repository's (which are ScoreFlow's):
# presets.score_sde_defaults, which our copies of its files apply. The README says so.
SCORE_SDE_DEFAULTS = {
    'training.log_freq',
    'eval.begin_ckpt',
    'eval.end_ckpt',
    'eval.enable_loss',
    'eval.enable_bpd',
    'eval.enable_sampling',
    'sampling.snr',
}


def _sets(config, field: str) -> bool:
    *sections, name = field.split('.')
    for section in sections:
        config = config.get(section, {})
    return name in config


@pytest.mark.parametrize('origin, rel', LEAVES, ids=[f'{o}:{r}' for o, r in LEAVES])
def test_the_original_file_as_written_validates(origin, rel, monkeypatch, caplog):
    """Each original file validates; a name of ``validation.IGNORED`` it sets is named in
    one log line and gone from the prepared config; score_sde's files give the original's
    value of every field they resolve to (tests/fixtures/score_sde_configs.json) but the
    defaults of ``SCORE_SDE_DEFAULTS``. The two CelebA-HQ / FFHQ files build their config
    from scratch (and import torch): the fields they lack take configs/base.py's defaults."""
    monkeypatch.setitem(sys.modules, 'torch', _fake_torch())
    config = _load_text(origin, rel)
    ignored = [f for f in validation.IGNORED if _sets(config, f)]
    with caplog.at_level(logging.INFO):
        prepared = prepare_config(config, num_devices=1)
    assert not [f for f in validation.IGNORED if _sets(prepared, f)]
    lines = [r.getMessage() for r in caplog.records if 'ignored, with no effect' in r.getMessage()]
    assert len(lines) == (1 if ignored else 0), lines
    assert all(f'config.{f}' in lines[0] for f in ignored)
    if origin == 'score_sde':
        wrong = {
            field: (config_field(prepared, field), value)
            for field, value in SCORE_SDE[rel].items()
            if field not in set(validation.IGNORED) | SCORE_SDE_DEFAULTS
            and _plain(config_field(prepared, field)) != value
        }
        assert not wrong, f'field: (here, score_sde) {wrong}'


def test_the_four_names_are_the_only_unknown_ones_accepted():
    config = _load_text('score_sde', 've/ncsnv2/bedroom.py')
    prepare_config(config, num_devices=1)
    config.training.continuouse_ = False
    with pytest.raises(UserError, match='config.training.continuouse_ is not a known'):
        prepare_config(config, num_devices=1)


def test_a_config_built_from_scratch_takes_the_schemas_defaults(caplog):
    """Fields a config lacks are filled from configs/base.py, in one log line naming them
    (validate_config itself still calls a missing field an error)."""
    config = ml_collections.ConfigDict(base.get_base_config().to_dict())
    del config.eval['ckpt_timeout']
    del config['deq']
    with pytest.raises(UserError, match='config.eval.ckpt_timeout is missing'):
        validation.validate_config(config, num_devices=1)
    with caplog.at_level(logging.INFO):
        prepared = prepare_config(config, num_devices=1)
    assert prepared.eval.ckpt_timeout == 0.0 and prepared.deq == base.get_base_config().deq
    lines = [r.getMessage() for r in caplog.records if 'their defaults apply' in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(': config.deq, config.eval.ckpt_timeout.')
