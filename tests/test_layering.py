"""The layout: project imports form an acyclic graph, sit at the top of files, and every
module imports in a fresh interpreter after the modules it depends on.

The graph is read from the source (``ast``), so a cycle hidden by an import inside a
function would show up as such an import and fail here too. docs/DESIGN.md draws it.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Optional or heavy third-party imports that may stay inside functions (tens of seconds of
# TensorFlow import for users who never read TFDS or compute FID).
LAZY_OK = {'tensorflow', 'tensorflow_datasets', 'h5py', 'skimage'}
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


def test_third_party_imports_inside_functions_are_the_optional_heavy_ones():
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text(encoding='utf-8'))
        inner = {
            n
            for node in ast.walk(tree)
            for n in _imported(node)
            if node not in tree.body and not isinstance(node, ast.ImportFrom)
        }
        inner |= {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node not in tree.body
        }
        assert inner <= LAZY_OK, (name, inner - LAZY_OK)


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
