"""The trainer's modules import one another without circles (loop and session did), and
stay small enough to read. Imports inside functions count: a deferred import is still a
dependency, it only hides the circle until run time."""

from __future__ import annotations

import ast
from pathlib import Path

from trainer_support import REPO

PACKAGE = REPO / "workers/kubetune/workers/train"
MAX_LINES = 400


def imports_of(path: Path) -> set[str]:
    """Sibling modules of the train package that `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("kubetune.workers.train."):
                found.add(node.module.split(".")[3])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kubetune.workers.train."):
                    found.add(alias.name.split(".")[3])
    return found


def graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    stack = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in edges[node]:
            if nxt == start:
                return path + [start]
            if nxt not in path:
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_circles_in_the_trainer():
    edges = graph()
    assert "session" in edges["loop"] and "loop" not in edges["session"]
    circles = [c for c in (cycle_from(m, edges) for m in edges) if c]
    assert circles == []


def test_modules_stay_readable():
    long = {p.name: n for p in PACKAGE.glob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
