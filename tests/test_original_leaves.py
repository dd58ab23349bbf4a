"""Every leaf config of both original repositories, by its original path, validates here
and builds a network with the original's parameter count.

The counts (tests/fixtures/original_param_counts.json; its '_about' says how they were
obtained) come from building the ORIGINAL model definitions of yang-song/score_sde and
yang-song/score_flow outside this repository. Score SDE's leaves live at the same relative
paths under configs/, ScoreFlow's under configs/score_flow/ (four of its CIFAR-10 paths
collide with Score SDE's). Networks are traced with jax.eval_shape only (nothing is
allocated), once per distinct model section and data shape.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from test_configs import load_leaf

from models import utils as mutils
from validation import prepare_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
COUNTS = json.loads((ROOT / 'tests/fixtures/original_param_counts.json').read_text())
LEAVES = [('score_sde', p) for p in COUNTS['score_sde']] + [
    ('score_flow', p) for p in COUNTS['score_flow']
]


def test_every_original_leaf_is_pinned():
    """39 leaves of score_sde (configs/{ve,vp,subvp}/…, ncsn/, ncsnv2/, ddpm/) and 8 of
    score_flow ({vp,subvp}/{cifar10,imagenet32}_ddpmpp{,_deep}_continuous.py)."""
    assert len(COUNTS['score_sde']) == 39 and len(COUNTS['score_flow']) == 8


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
