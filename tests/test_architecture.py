"""The house rules of docs/architecture.md, checked on the source: no import cycles, commands are
leaves, no file over 800 lines, no reaching into another package's private names, and capabilities
read from the contracts rather than probed with getattr."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pairline"
MAX_LINES = 800
# the objects whose capabilities are declared in a contract (engine/runtime.py, assistant/client.py)
CONTRACT_OBJECTS = re.compile(r"(^|\.)(runtime|rt|client|engine)$")


@cache
def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text())


def imported(name: str) -> set[str]:
    """Every pairline module `name` imports, at module level or inside functions (a lazy import is
    still an arrow), except imports for type checking only."""
    found: set[str] = set()
    type_only = {id(n) for node in ast.walk(tree(name))
                 if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    for node in ast.walk(tree(name)):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in modules() and m != name}


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    graph = {m: imported(m) for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def is_command(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last == "cli" or last.endswith("_cmd")


def test_no_import_cycles():
    assert cycles() == []


def test_commands_are_leaves():
    """Only the top-level CLI dispatches to command modules; nothing else imports one."""
    wrong = [f"{m} imports {c}" for m in modules() if m != "pairline.cli"
             for c in imported(m) if is_command(c)]
    assert wrong == []


def test_no_file_over_the_limit():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_names_across_packages():
    """`from pairline.a.x import _name` only inside package pairline.a."""
    wrong = []
    for m in modules():
        home = m.split(".")[1] if "." in m else ""
        for node in ast.walk(tree(m)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pairline."):
                there = node.module.split(".")[1]
                wrong += [f"{m}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__") and there != home]
    assert wrong == []


def test_capabilities_are_not_probed():
    """getattr/hasattr on a runtime, engine or client: the contract declares the field instead."""
    wrong = []
    for m in modules():
        if m == "pairline.engine.runtime":
            continue
        for node in ast.walk(tree(m)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr") and node.args \
                    and CONTRACT_OBJECTS.search(ast.unparse(node.args[0])):
                wrong.append(f"{m}:{node.lineno}: {ast.unparse(node)}")
    assert wrong == []
