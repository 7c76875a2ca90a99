"""The layers of src/ia_continu point one way, and no Python source file grows past 500 lines.

Layers (rank: a module may import modules of its own rank or below, never above):

    0  config                      settings, the only module reading the environment
    1  ml                          pure domain: data, training, evaluation, predictor, drift
    2  db, registry, notify, ops   adapters: database, MLflow, Discord, Kuma/disk/Prefect worker
    3  services                    orchestration of the adapters (training, monitoring, ...)
    4  api, cli, flows, stack      entry points (HTTP, command line, Prefect flows, local stack)

Two components of the same rank (two adapters, two entry points) do not import each
other unless the edge is declared in ``ALLOWED`` with its reason. Every import counts:
module level, lazy imports inside functions (they run sooner or later), and imports under
``if TYPE_CHECKING:`` (a type-only import still couples the modules, and a type-only cycle
is still a cycle to read). No import cycle between modules, whatever their layers.

The checker is plain functions over a source tree, so that the tests below can prove on a
synthetic tree that it fails on a cycle, an upward edge and an unranked module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "ia_continu"
MAX_LINES = 500

RANKS: dict[str, int] = {
    "": 0,  # the package itself (ia_continu/__init__.py: the version)
    "config": 0,
    "ml": 1,
    "db": 2,
    "registry": 2,
    "notify": 2,
    "ops": 2,
    "services": 3,
    "api": 4,
    "cli": 4,
    "flows": 4,
    "stack": 4,
    "__main__": 4,
}

# Same-rank edges between different components, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {
    ("cli", "api"): "`serve` runs the API app; `simulate --source traffic` drives it in-process",
    ("cli", "flows"): "`monitor run|serve` and `worker deploy` run or deploy the Prefect flow",
    ("cli", "stack"): "`up` starts the local stack",
    ("__main__", "cli"): "`python -m ia_continu` is the command line",
}


def find_modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``package`` under ``src``."""
    modules: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, else its nearest enclosing module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(modules: dict[str, Path], package: str) -> set[tuple[str, str]]:
    """(importer, imported) for every import of a module of ``package``, at any depth."""
    edges: set[tuple[str, str]] = set()
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                # `from pkg import mod` imports the module pkg.mod; `from mod import f`, mod.
                targets += [
                    f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                    for alias in node.names
                ]
        for target in targets:
            if target == package or target.startswith(package + "."):
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    edges.add((name, resolved))
    return edges


def component(module: str, package: str) -> str:
    """The layer key of a module: the first name under the package."""
    rest = module.removeprefix(package).removeprefix(".")
    return rest.split(".")[0]


def find_cycles(nodes: Iterable[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component of more than one module."""
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the module graph is small enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                components.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_one_cycle(members, graph) for members in components]


def _one_cycle(members: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A path start -> ... -> start inside one strongly connected component."""
    inside = set(members)
    start = members[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to start
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w not in inside:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return [*members, members[0]]  # unreachable for a real component


def layering_problems(
    src: Path,
    package: str,
    ranks: dict[str, int],
    allowed: dict[tuple[str, str], str],
) -> list[str]:
    """Every unranked module, upward or undeclared same-rank edge, and cycle, as text."""
    modules = find_modules(src, package)
    edges = import_edges(modules, package)
    problems = [
        f"unranked module: {m} (add {component(m, package)!r} to RANKS)"
        for m in sorted(modules)
        if component(m, package) not in ranks
    ]
    for a, b in sorted(edges):
        ca, cb = component(a, package), component(b, package)
        if ca == cb or ca not in ranks or cb not in ranks:
            continue
        if ranks[ca] < ranks[cb]:
            problems.append(f"upward import: {a} (rank {ranks[ca]}) -> {b} (rank {ranks[cb]})")
        elif ranks[ca] == ranks[cb] and (ca, cb) not in allowed:
            problems.append(f"undeclared same-rank import: {a} -> {b} (declare it in ALLOWED)")
    problems += [f"import cycle: {' -> '.join(c)}" for c in find_cycles(modules, edges)]
    return problems


def long_files(src: Path, limit: int) -> list[str]:
    """Python files under ``src`` with more than ``limit`` lines. Static assets (the
    dashboard's JavaScript) are not Python modules and are not counted."""
    return [
        f"{path.relative_to(src)}: {n} lines"
        for path in sorted(src.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > limit
    ]


# --- the project -------------------------------------------------------------------------


def test_src_imports_point_down_the_layers_without_cycles() -> None:
    problems = layering_problems(SRC, PACKAGE, RANKS, ALLOWED)
    assert not problems, "\n".join(problems)


def test_every_allowed_edge_is_used() -> None:
    """A declared exception nobody needs any more is removed, not kept as a loophole."""
    modules = find_modules(SRC, PACKAGE)
    used = {
        (component(a, PACKAGE), component(b, PACKAGE)) for a, b in import_edges(modules, PACKAGE)
    }
    assert set(ALLOWED) <= used, sorted(set(ALLOWED) - used)


def test_no_python_file_under_src_is_over_500_lines() -> None:
    assert not long_files(SRC, MAX_LINES)


# --- the checker, on synthetic trees ------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SYNTHETIC_RANKS = {"": 0, "config": 0, "ml": 1, "db": 2, "registry": 2, "api": 4}


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    src = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/config.py": "",
            "pkg/ml/__init__.py": "",
            "pkg/ml/train.py": "from pkg.config import X\n",
            "pkg/db/__init__.py": "",
            "pkg/db/models.py": "from pkg.ml import train\nfrom . import sql\n",
            "pkg/db/sql.py": "",
            "pkg/api/__init__.py": "",
            "pkg/api/app.py": "def f():\n    from pkg.db.models import g\n",
        },
    )
    assert layering_problems(src, "pkg", SYNTHETIC_RANKS, {}) == []
    edges = import_edges(find_modules(src, "pkg"), "pkg")
    assert edges == {
        ("pkg.ml.train", "pkg.config"),
        ("pkg.db.models", "pkg.ml.train"),
        ("pkg.db.models", "pkg.db.sql"),  # relative import
        ("pkg.api.app", "pkg.db.models"),  # lazy import inside a function
    }


def test_checker_fails_on_a_cycle_an_upward_edge_and_an_unranked_module(
    tmp_path: Path,
) -> None:
    src = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/ml/__init__.py": "",
            # upward, and only at type-checking time: still counted
            "pkg/ml/train.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.db.models import Record\n"
            ),
            "pkg/db/__init__.py": "",
            "pkg/db/models.py": "from pkg.db import sql\n",
            "pkg/db/sql.py": "def f():\n    from pkg.db.predictions import g\n",
            "pkg/db/predictions.py": "import pkg.db.models\n",
            "pkg/db/migrations/__init__.py": "",
            "pkg/registry/__init__.py": "",
            "pkg/registry/core.py": "from pkg.db.models import Record\n",  # adapter -> adapter
            "pkg/extra.py": "",  # in no layer
        },
    )
    problems = layering_problems(src, "pkg", SYNTHETIC_RANKS, {})
    assert "upward import: pkg.ml.train (rank 1) -> pkg.db.models (rank 2)" in problems
    assert (
        "undeclared same-rank import: pkg.registry.core -> pkg.db.models (declare it in ALLOWED)"
        in problems
    )
    assert "unranked module: pkg.extra (add 'extra' to RANKS)" in problems
    assert (
        "import cycle: pkg.db.models -> pkg.db.sql -> pkg.db.predictions -> pkg.db.models"
        in problems
    )
    assert len(problems) == 4, problems
    # Declaring the same-rank edge removes that problem, and only that one.
    allowed = {("registry", "db"): "test"}
    assert len(layering_problems(src, "pkg", SYNTHETIC_RANKS, allowed)) == 3


def test_checker_reports_two_separate_cycles(tmp_path: Path) -> None:
    src = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "from pkg.a import x\n",
            "pkg/c.py": "from . import d\n",
            "pkg/d.py": "from .c import y\n",
        },
    )
    ranks = {"": 0, "a": 0, "b": 0, "c": 0, "d": 0}
    allowed = {(x, y): "test" for x in "abcd" for y in "abcd"}
    cycles = [p for p in layering_problems(src, "pkg", ranks, allowed) if "cycle" in p]
    assert cycles == [
        "import cycle: pkg.a -> pkg.b -> pkg.a",
        "import cycle: pkg.c -> pkg.d -> pkg.c",
    ]


@pytest.mark.parametrize("limit, expected", [(3, ["pkg/big.py: 4 lines"]), (4, [])])
def test_long_files_counts_lines_of_python_files_only(
    tmp_path: Path, limit: int, expected: list[str]
) -> None:
    src = _tree(
        tmp_path,
        {"pkg/big.py": "a = 1\n" * 4, "pkg/small.py": "a = 1\n", "pkg/static/app.js": "x\n" * 9},
    )
    assert long_files(src, limit) == expected
