"""The package's rooms stay apart: no import cycle between rooms, and no arrow that runs the wrong way.

A room is a top-level module or package of ``redone`` (``redone.data.sft`` is in room ``data``). The
graph is read with ``ast`` from every ``import`` statement, function-level imports included, so a lazy
import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "redone"
# Rooms that must stay below others: data and config never import training, evaluation, the CLI or the
# pipeline; the neutral sns package (task definitions, scorers) imports none of data/eval/train.
FORBIDDEN = {
    "data": {"train", "eval", "cli", "pipeline", "stages", "report"},
    "config": {"data", "train", "eval", "cli", "pipeline", "stages", "model"},
    "sns": {"data", "eval", "train", "cli", "pipeline", "stages", "config", "model"},
    "eval": {"train", "pipeline", "cli", "stages"},
    "train": {"cli", "pipeline"},
    "model": {"data", "train", "eval", "cli", "pipeline"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from redone import sns`
    return {m for m in found if m.startswith("redone.")}


def room_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        source = room(module_name(path))
        for target in imported_modules(path):
            # `from redone.data import sns_tasks` names a module; `from redone.x import func` a symbol.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and room(target) != source:
                edges.setdefault(source, set()).add(room(target))
    return edges


def test_no_forbidden_arrows():
    edges = room_edges()
    bad = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets & FORBIDDEN.get(a, set()))
    assert bad == []


def test_no_cycles_between_rooms():
    edges = room_edges()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                cycles.append(" -> ".join(path + [nxt]))
            elif nxt not in path and nxt > path[0]:  # report each cycle once, from its smallest room
                visit(nxt, path + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert cycles == []


def test_the_graph_is_read():
    # The checks above would pass on an empty graph: make sure the real arrows are seen.
    edges = room_edges()
    assert {"config", "data", "sns"} <= edges["train"] and "train" in edges["stages"]
    assert "sns" in edges["data"] and "sns" in edges["eval"]
