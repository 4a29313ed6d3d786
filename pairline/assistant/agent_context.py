"""What deep mode shows the model before its first step, besides the task and the file list: the files
the task names, and, when the tests fail, the failing test files and the code they import.

A small model that edits a file it has not seen invents its lines (measured on Qwen2.5-Coder-1.5B:
on task brackets-unclosed, whose instruction names no file, it wrote blocks for brackets.py without
reading it). The agent runs the tests once before the first step, so the failing tests are known;
the files they import are the ones the fix most likely touches.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path, PurePosixPath

_PY_PATH = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[\w.-]+\.py)(?!\w)")


def is_test_file(rel: str) -> bool:
    p = PurePosixPath(rel)
    return (p.name.startswith("test_") or p.name.endswith("_test.py") or p.name == "conftest.py"
            or any(part in ("tests", "test") for part in p.parts[:-1]))


def named_files(task: str, files: list[str], context: str = "") -> list[str]:
    """The repository's files the task names, by path or by file name (not those `context` shows)."""
    out = []
    for name in files:
        base = name.rsplit("/", 1)[-1]
        if not re.search(rf"(?<![\w/.-]){re.escape(base)}(?![\w-])", task) and name not in task:
            continue
        if shown_in(context, name):
            continue
        out.append(name)
    return out


def shown_in(context: str, name: str) -> bool:
    """`context` (the chat's, for /deep) shows the file whole: its name on a line, then a fence."""
    return bool(context) and (f"\n{name}\n```" in context or context.startswith(f"{name}\n```"))


def _known(path: str, known: set[str]) -> str | None:
    """A path from a tool's output as the repository names it: relative as is, or an absolute path
    (wherever the sandbox put the repository) whose tail is a repository file."""
    parts = path.removeprefix("./").split("/")
    for i in range(len(parts)):
        cand = "/".join(parts[i:])
        if cand in known:
            return cand
    return None


def failure_files(output: str, root: Path, files: list[str]) -> list[str]:
    """The files to show after a failing test run, most useful first: the source files the failing
    test files import and those their tracebacks name, the failing test files, then what those
    source files import in turn. `output` is the test command's; `files` the repository's."""
    known = set(files)
    mentioned: list[str] = []
    for m in _PY_PATH.finditer(output):
        rel = _known(m.group(1), known)
        if rel is not None and rel not in mentioned:
            mentioned.append(rel)
    tests = [p for p in mentioned if is_test_file(p)]
    traced = [p for p in mentioned if not is_test_file(p)]
    first = [p for t in tests for p in imports_of(root, t, known) if not is_test_file(p)]
    order = _unique(first + traced)
    second = [p for s in order for p in imports_of(root, s, known) if not is_test_file(p)]
    return _unique(order + tests + second)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def imports_of(root: Path, rel: str, known: set[str]) -> list[str]:
    """The repository's files that the Python file `rel` imports (stdlib and packages are not files
    of the repository, so they drop out)."""
    try:
        tree = ast.parse((root / rel).read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return []
    here = PurePosixPath(rel).parent
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules, bases = [a.name for a in node.names], [PurePosixPath(), here, PurePosixPath("src")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            modules = [mod] + [f"{mod}.{a.name}" if mod else a.name for a in node.names if a.name != "*"]
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.parent
                bases = [base]
            else:
                bases = [PurePosixPath(), here, PurePosixPath("src")]
        else:
            continue
        for module in modules:
            if not module:
                continue
            path = PurePosixPath(*module.split("."))
            for base in bases:
                for cand in (base / f"{path}.py", base / path / "__init__.py"):
                    name = cand.as_posix()
                    if name in known and name != rel and name not in out:
                        out.append(name)
    return out
