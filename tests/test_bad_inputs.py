"""docs/bad_inputs.md is current: every case of scripts/bad_inputs.py is a row, none lost
work, and the cheap ones give the recorded first line again — the config checks in-process
(through the command line's own parsing of ``--config.*``), three through ``main.py``."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

import train_utils
from errors import UserError
from validation import prepare_config

_spec = importlib.util.spec_from_file_location(
    'bad_inputs', os.path.join(train_utils.REPO, 'scripts', 'bad_inputs.py')
)
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules['bad_inputs'] = bad_inputs  # dataclasses look their module up there
_spec.loader.exec_module(bad_inputs)

# A few that main.py itself answers (flags, the score_flow hint, a start without a snapshot).
SUBPROCESS_CASES = (
    '--mode=evaluate',
    "--config.eval.dataset=test (score_flow's README)",
    '--mode eval before any training',
)


def table() -> dict:
    """input → (exit code, first line, seconds, nothing lost) of docs/bad_inputs.md."""
    with open(bad_inputs.TABLE, encoding='utf-8') as f:
        text = f.read()
    rows = {}
    for line in text.splitlines():
        cells = [c.replace('\\|', '|').strip() for c in re.split(r'(?<!\\)\|', line)[1:-1]]
        if len(cells) == 6 and cells[0].isdigit():
            rows[cells[1]] = tuple(cells[2:])
    return rows


def test_every_case_is_a_row_and_nothing_was_lost():
    rows = table()
    assert len(rows) >= 40
    assert sorted(rows) == sorted(case.text for case in bad_inputs.CASES)
    assert {kept for _, _, _, kept in rows.values()} <= {'yes', '–'}
    for case in bad_inputs.CASES:
        code, message = rows[case.text][:2]
        if code == '1':  # a problem the user can fix: one line naming it
            assert message.startswith('Error: '), case.text


def _message(case) -> str:
    """The first line of ``case`` from the config checks, without starting main.py."""
    argv = ['prog', f'--config={bad_inputs.CONFIG}', *case.args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=flag_values, lock_config=True)
    flag_values(argv)
    with pytest.raises(UserError) as error:
        prepare_config(flag_values.config, num_devices=1)
    return f'Error: {error.value}'


@pytest.mark.parametrize(
    'case', [c for c in bad_inputs.CASES if c.in_process], ids=lambda c: c.args[0][9:]
)
def test_config_checks_give_the_recorded_line(case, monkeypatch):
    monkeypatch.chdir(train_utils.REPO)
    monkeypatch.setattr('sys.argv', ['prog', f'--config={bad_inputs.CONFIG}', *case.args])
    code, message = table()[case.text][:2]
    assert code == '1' and _message(case) == message


@pytest.mark.parametrize('text', SUBPROCESS_CASES)
def test_main_gives_the_recorded_line(text, tmp_path):
    (case,) = [c for c in bad_inputs.CASES if c.text == text]
    workdir = str(tmp_path / 'W')
    cmd = bad_inputs.command(case, workdir, str(tmp_path / 'T'))
    result = subprocess.run(
        cmd,
        cwd=train_utils.REPO,
        env=train_utils.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = bad_inputs.normalise(bad_inputs.first_line(result.stderr), workdir, str(tmp_path))
    assert (str(result.returncode), line) == table()[text][:2]
    assert 'Traceback' not in result.stderr
