"""The package's tiers (docs/architecture.md): each subpackage imports only the ones below it, and
no module imports itself back through others. Every import counts, the ones inside functions too.

    zoo  <  core  <  merge, train, evaluate, export  <  soup  <  inspect  <  demo  <  cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "loramix"
# subpackage -> the subpackages it may import (besides itself and the package root's __version__)
ALLOWED = {
    "zoo": set(),
    "core": {"zoo"},
    "merge": {"core"},
    "train": {"core", "zoo"},
    "evaluate": {"core"},
    "export": {"core"},
    "soup": {"core", "merge", "train"},
    "inspect": {"core", "merge", "soup"},
    "demo": {"core", "zoo", "merge", "train", "soup", "evaluate"},
    "cli": {"core", "zoo", "merge", "train", "evaluate", "export", "soup", "inspect", "demo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The loramix modules `path` imports anywhere in it (a name imported from a package counts
    as that submodule when one exists)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "loramix"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "loramix":
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or {node.module}
    return found


def tier(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_every_subpackage_has_a_tier():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)
    loose = [m for m in modules() if tier(m) is None and m not in ("loramix", "loramix.__main__")]
    assert loose == [], "every module belongs to a subpackage"


def test_no_module_imports_a_tier_above_its_own():
    known = set(modules())
    wrong = []
    for name, path in modules().items():
        mine = tier(name)
        for target in imports(path, known):
            theirs = tier(target)
            if mine and theirs and theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{name} imports {target} ({mine} may use {sorted(ALLOWED[mine]) or 'nothing'})")
    assert wrong == []


def test_the_import_graph_has_no_cycle():
    known = set(modules())
    graph = {name: imports(path, known) & known for name, path in modules().items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.mark.parametrize(
    "graph, cyclic",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a"}}, True),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from loramix.cli import render\n    import loramix.core.data\n")
    known = {"loramix.cli.render", "loramix.core.data", "loramix.cli"}
    assert imports(source, known) == {"loramix.cli.render", "loramix.core.data"}
