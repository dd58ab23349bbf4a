"""The layout: project imports form an acyclic graph, sit at the top of files, and every
module imports in a fresh interpreter after the modules it depends on.

The graph is read from the source (``ast``), so a cycle hidden by an import inside a
function would show up as such an import and fail here too. docs/DESIGN.md draws it.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
import tomllib
from graphlib import CycleError, TopologicalSorter

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Optional or heavy third-party imports that may stay inside functions (tens of seconds of
# TensorFlow import for users who never read TFDS or compute FID).
LAZY_OK = {'tensorflow', 'tensorflow_datasets', 'h5py', 'skimage'}
# Benchmarks may also import their optional PyTorch peer inside functions.
BENCH_LAZY_OK = LAZY_OK | {'torch', 'torch.nn.functional'}
DESIGN = ROOT / 'docs' / 'DESIGN.md'
PACKAGES = ('models', 'configs', 'datasets')  # their top-level modules (not configs/vp/… leaves)


def project_modules() -> dict[str, pathlib.Path]:
    """Dotted name → path of every project module (leaf configs excluded)."""
    paths = [*ROOT.glob('*.py'), *(f for pkg in PACKAGES for f in ROOT.glob(f'{pkg}/*.py'))]
    return {
        '.'.join(p.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__'): p
        for p in paths
    }


def _imported(node: ast.AST) -> list[str]:
    """Modules an import statement names: ``from package import submodule`` counts as the
    submodule (and the package when a name is not a module of ours)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        modules = project_modules()
        subs = [f'{node.module}.{alias.name}' for alias in node.names]
        return [s for s in subs if s in modules] or [node.module]
    return []


def _project(names, modules) -> set[str]:
    return {n for n in names if n in modules}


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """(module → project modules it imports at top level, module → imports inside code)."""
    modules = project_modules()
    graph, nested = {}, {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding='utf-8'))
        top = [n for stmt in tree.body for n in _imported(stmt)]
        inner = [n for node in ast.walk(tree) for n in _imported(node) if node not in tree.body]
        graph[name] = _project(top, modules) - {name}
        nested[name] = sorted(n for n in inner if n in modules or n.split('.')[0] in modules)
    return graph, nested


def test_project_imports_are_at_the_top_of_files():
    _, nested = import_graph()
    assert {m: n for m, n in nested.items() if n} == {}


def _inner_imports(path: pathlib.Path) -> set[str]:
    """Modules imported anywhere but at the top level of the file (``from a import b``
    counts as ``a``)."""
    tree = ast.parse(path.read_text(encoding='utf-8'))
    inner = set()
    for node in ast.walk(tree):
        if node in tree.body:
            continue
        if isinstance(node, ast.Import):
            inner |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            inner.add(node.module)
    return inner


def test_third_party_imports_inside_functions_are_the_optional_heavy_ones():
    for name, path in project_modules().items():
        inner = _inner_imports(path)
        assert inner <= LAZY_OK, (name, inner - LAZY_OK)


@pytest.mark.parametrize('folder', ['scripts', 'bench'])
def test_scripts_and_benchmarks_import_at_the_top_too(folder):
    for path in sorted((ROOT / folder).glob('*.py')):
        inner = _inner_imports(path)
        assert inner <= BENCH_LAZY_OK, (path.name, inner - BENCH_LAZY_OK)


def design_levels() -> dict[str, int]:
    """Module → level of the table in docs/DESIGN.md's "Import graph" section: the
    backticked names of each ``| level | modules |`` row."""
    text = DESIGN.read_text(encoding='utf-8')
    section = text[text.index('## Import graph') :]
    section = section[: section.index('\n## ', 1)]
    levels: dict[str, int] = {}
    for level, cells in re.findall(r'^\| (\d+) \| (.*) \|$', section, flags=re.M):
        for name in re.findall(r'`([\w.]+)`', cells):
            assert name not in levels, f'{name} is in two lines of the level table'
            levels[name] = int(level)
    return levels


def test_the_level_table_of_the_design_doc_is_true():
    """Every project module is in exactly one line, and imports only from lines above."""
    graph, _ = import_graph()
    levels = design_levels()
    assert sorted(set(levels) - set(graph)) == [], 'names in the table that are no modules'
    assert sorted(set(graph) - set(levels)) == [], 'modules missing from the table'
    upward = {
        f'{m} (level {levels[m]}) imports {d} (level {levels[d]})'
        for m, deps in graph.items()
        for d in deps
        if levels[d] >= levels[m]
    }
    assert sorted(upward) == []


def test_import_graph_is_acyclic():
    graph, _ = import_graph()
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        pytest.fail(f'import cycle: {" → ".join(e.args[1])}')


def test_every_module_imports_in_dependency_order_in_a_fresh_interpreter():
    graph, _ = import_graph()
    order = [m for m in TopologicalSorter(graph).static_order() if m != 'main']
    script = (
        'import importlib, sys\n'
        f'for name in {order!r}:\n'
        '    before = set(sys.modules)\n'
        '    importlib.import_module(name)\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ruff_knows_every_project_module_as_first_party():
    """pyproject's isort ``known-first-party``: the top-level modules and packages, and the
    tests' shared helper ``train_utils``."""
    settings = tomllib.loads((ROOT / 'pyproject.toml').read_text(encoding='utf-8'))
    listed = settings['tool']['ruff']['lint']['isort']['known-first-party']
    top_level = {name.split('.')[0] for name in project_modules()}
    assert sorted(listed) == sorted(top_level | {'train_utils'})
