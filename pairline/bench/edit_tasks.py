"""The tasks of `pairline bench edit`: reading tasks.json, applying a task's reference edit, measuring
how big that edit is, and running a task's check.

A task (pairline/bench/tasks/edit/tasks.json, described in the README there) is an instruction over
one or more real Python files, a `check` and a `reference`:

- one file: `"file"` (relative to the tasks folder) and `"path"` (its name in the workspace the model
  edits), and `"reference"`: a list of [search, replace] pairs;
- several files: `"files": [{"file": ..., "path": ...}, ...]`, and `"reference"`: {path: [[search,
  replace], ...]} (every path of the task has an entry, empty if that file does not change).

Each search text occurs exactly once in its file (the tests hold every task to that), and the pairs
apply in order. `"check"` is Python (a string, or a list of lines) run in a fresh process in the
folder that holds the edited files, after `CHECK_PRELUDE`; it exits non-zero when the edit is wrong.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks" / "edit"
# The kinds of task, in the order the tables list them (every task has one of these).
KINDS = ("rename", "add-parameter", "fix-bug", "change-return", "add-docstring", "add-type-hints", "extract-helper",
         "delete-dead-code", "two-file")

# Run before each check. The task's folder is taken off sys.path, so that an edited `glob.py` or
# `reprlib.py` there never stands in for the standard library's own module; `load(name)` imports a
# file of the folder under a private name (the standard module of the same name is not touched),
# and `load(name, as_name)` under `as_name` as well, so that a second file's `import as_name` gets
# the edited module (load the imported file first). The C accelerator of bisect is blocked, so that
# the Python code in the file is what runs.
CHECK_PRELUDE = """\
import importlib.util, os, sys
sys.path[:] = [p for p in sys.path if p not in ('', '.', os.getcwd())]
sys.modules['_bisect'] = None
def load(name, as_name=None):
    spec = importlib.util.spec_from_file_location(as_name or 'edited_' + name.replace('.', '_'), name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
"""


@dataclass(slots=True)
class TaskFile:
    path: str  # the file's name in the workspace (what the model sees)
    source: str
    reference: list[tuple[str, str]]  # search/replace pairs of a correct edit of this file


@dataclass(slots=True)
class Task:
    name: str
    kind: str
    files: list[TaskFile]
    instruction: str
    check: str

    @property
    def path(self) -> str:
        """The first file's name (the only one, for most tasks)."""
        return self.files[0].path

    @property
    def source(self) -> str:
        return self.files[0].source

    @property
    def reference(self) -> list[tuple[str, str]]:
        """The first file's reference pairs (`reference_texts` has every file's edited text)."""
        return self.files[0].reference


def _files(t: dict) -> list[TaskFile]:
    entries = t.get("files") or [{"file": t["file"], "path": t["path"]}]
    ref = t.get("reference", [])
    if not isinstance(ref, dict):
        ref = {entries[0]["path"]: ref}
    unknown = set(ref) - {e["path"] for e in entries}
    if unknown:
        raise ValueError(f"task {t['name']}: reference for a file it does not have: {', '.join(sorted(unknown))}")
    return [
        TaskFile(e["path"], (TASKS_DIR / e["file"]).read_text(), [(s, r) for s, r in ref.get(e["path"], [])])
        for e in entries
    ]


def load_tasks(names: Collection[str] | None = None, kinds: Collection[str] | None = None) -> list[Task]:
    """The tasks of tasks.json, in its order; only those named in `names` and of a kind in `kinds`
    where given (an unknown name or kind is an error)."""
    from pairline.errors import PairlineError

    data = json.loads((TASKS_DIR / "tasks.json").read_text())["tasks"]
    unknown = set(names or ()) - {t["name"] for t in data}
    if unknown:
        raise PairlineError(f"unknown edit task(s): {', '.join(sorted(unknown))} (see {TASKS_DIR / 'tasks.json'})")
    unknown = set(kinds or ()) - {t["kind"] for t in data}
    if unknown:
        raise PairlineError(f"unknown edit task kind(s): {', '.join(sorted(unknown))}; the kinds: {', '.join(KINDS)}")
    tasks = []
    for t in data:
        if (names and t["name"] not in names) or (kinds and t["kind"] not in kinds):
            continue
        check = "\n".join(t["check"]) if isinstance(t["check"], list) else t["check"]
        tasks.append(Task(t["name"], t["kind"], _files(t), t["instruction"], check))
    return tasks


def reference_texts(task: Task) -> dict[str, str]:
    """{path: text after the reference edit} for every file of the task. Each search text must occur
    exactly once in the file as edited so far (ValueError otherwise)."""
    out = {}
    for f in task.files:
        text = f.source
        for search, replace in f.reference:
            if text.count(search) != 1:
                raise ValueError(f"{task.name}: {f.path}: the reference's search text occurs "
                                 f"{text.count(search)} times, not once: {search[:80]!r}")
            text = text.replace(search, replace)
        out[f.path] = text
    return out


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    """(the lines of `old` a line diff removes or replaces, the lines of `new` it inserts or writes in
    their place), each with its newline."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    removed: list[str] = []
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += a[i1:i2]
            added += b[j1:j2]
    return removed, added


def reference_tokens(task: Task, count_tokens: Callable[[str], int]) -> int:
    """The size of the task's reference edit in tokens: over every file, the tokens of the lines the
    edit removes plus the tokens of the lines it adds (a line diff of the file against the file after
    the reference edit; a changed line counts on both sides). It is what a minimal answer has to
    name: the least an edit format that quotes the old lines and writes the new ones can cost."""
    total = 0
    new = reference_texts(task)
    for f in task.files:
        removed, added = changed_lines(f.source, new[f.path])
        total += (count_tokens("".join(removed)) if removed else 0) + (count_tokens("".join(added)) if added else 0)
    return total


def write_files(task: Task, folder: Path, texts: dict[str, str] | None = None) -> list[Path]:
    """Write the task's files into `folder` (their sources, or `texts` where given); their paths."""
    out = []
    for f in task.files:
        path = folder / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((texts or {}).get(f.path, f.source))
        out.append(path)
    return out


def run_check(task: Task, folder: Path, timeout: float = 30.0) -> tuple[bool, str]:
    """The task's check, in a fresh Python process in `folder`; (passed, output tail)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHECK_PRELUDE + task.check],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.TimeoutExpired:
        return False, f"check timed out after {timeout:.0f} s"
    output = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, output[-500:]
