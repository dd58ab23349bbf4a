"""Shared by the benchmarks: a trained snapshot of a work directory (not a test)."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

import checkpointing  # noqa: E402
import sde_lib  # noqa: E402
from devices import local_mesh  # noqa: E402
from train_state import create_train_state  # noqa: E402
from validation import prepare_config  # noqa: E402


class Snapshot(NamedTuple):
    config: ml_collections.ConfigDict
    sde: sde_lib.SDE
    model: Any
    ema_params: Any
    step: int


def load_config(path: str) -> ml_collections.ConfigDict:
    """The prepared config of a config file, as ``--config`` loads it."""
    spec = importlib.util.spec_from_file_location('bench_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return prepare_config(module.get_config())


def load_snapshot(config_path: str, workdir: str, number: int = -1) -> Snapshot:
    """Snapshot ``number`` (−1: the newest) of ``workdir``, trained with ``config_path``."""
    config = load_config(config_path)
    model, _, template = create_train_state(config, local_mesh())
    if number < 0:
        number = checkpointing.list_checkpoints(workdir)[-1]
    state = checkpointing.restore_checkpoint(workdir, number, template)
    print(f'{workdir}: snapshot {number}, step {int(state.step)}', flush=True)
    return Snapshot(config, sde_lib.get_sde(config), model, state.ema_params, int(state.step))
