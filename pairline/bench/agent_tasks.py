"""The tasks of `pairline eval agent`: small repositories with a failing test, read from
pairline/bench/tasks/agent/ (its README lists them), written into a folder, and scored.

A task is a folder:

- `task.json`: the instruction a user would type, the kind of bug or feature, a description, and
  the file lists: `files` (the repository the tier gets, visible tests included), `tests` (the
  visible test files among them), `hidden` (held-out tests), `fix` (the files the reference changes);
- `repo/`: the repository's files; `hidden/`: the held-out tests, which the tier never sees (they
  are copied in only after it finished); `reference/`: a correct version of each file in `fix`.

Every file carries a `.txt` suffix, so that linters, test collectors and the package's own import
checks leave the planted bugs alone; `write_repo` writes them under their real names.

Scoring (`score`) puts the visible tests back as they were (a tier that edits a test to pass it
gains nothing), copies the hidden tests in, and runs both in one fresh pytest process in pairline's
sandbox, under a time limit, without conftest files or plugins. A test file passes when every test
it defines passed (its `def test_*` functions, counted from its source) and none failed or errored.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pairline.errors import PairlineError

TASKS_DIR = Path(__file__).parent / "tasks" / "agent"
SUFFIX = ".txt"
# the kinds, in the order the tables list them (every task has one)
KINDS = ("off-by-one", "wrong-condition", "missing-case", "wrong-return", "wrong-default", "renamed-api", "feature")
# what the harness runs: no plugins (their import costs seconds per run, and none is needed), no
# conftest a tier may have written, no cache folder, every outcome listed (-rA), and every file run
# even if another cannot be collected
PYTEST = ("-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--noconftest", "-o", "addopts=",
          "--continue-on-collection-errors")
PYTEST_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
# what a user sees when they run the failing test (the real-time tier gets its output once)
CONTEXT_CMD = "python -m pytest -q -p no:cacheprovider --tb=short"
CONTEXT_CHARS = 3000


@dataclass(frozen=True, slots=True)
class AgentTask:
    name: str
    kind: str
    instruction: str
    description: str
    repo: dict[str, str]  # path -> text: what the tier gets (visible tests included)
    tests: tuple[str, ...]  # the visible test files
    hidden: dict[str, str]  # path -> text: held out until the tier is done
    reference: dict[str, str]  # path -> text: a correct version of each file the fix changes

    @property
    def sources(self) -> list[str]:
        """The repository's files that are not tests: what the real-time tier edits."""
        return [p for p in self.repo if p not in self.tests]

    @property
    def files(self) -> int:
        """How many source files the task spans."""
        return len(self.sources)

    @property
    def fix(self) -> list[str]:
        return sorted(self.reference)


def task_names() -> list[str]:
    return sorted(p.name for p in TASKS_DIR.iterdir() if (p / "task.json").is_file())


def _read(folder: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        path = folder / (name + SUFFIX)
        try:
            out[name] = path.read_text()
        except OSError as err:
            raise PairlineError(f"agent task file {path} cannot be read: {err.strerror or err}") from None
    return out


def load_task(name: str) -> AgentTask:
    folder = TASKS_DIR / name
    try:
        meta = json.loads((folder / "task.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PairlineError(f"agent task {name}: cannot read task.json: {err}") from None
    if meta.get("kind") not in KINDS:
        raise PairlineError(f"agent task {name}: unknown kind {meta.get('kind')!r}; use one of {', '.join(KINDS)}")
    return AgentTask(
        name=name, kind=meta["kind"], instruction=meta["instruction"], description=meta.get("description", ""),
        repo=_read(folder / "repo", meta["files"]), tests=tuple(meta["tests"]),
        hidden=_read(folder / "hidden", meta["hidden"]), reference=_read(folder / "reference", meta["fix"]),
    )


def load_tasks(names: list[str] | None = None, limit: int | None = None) -> list[AgentTask]:
    """The tasks named (in the order given), or all of them by name; then the first `limit`."""
    if limit is not None and limit < 1:
        raise PairlineError(f"--limit must be at least 1, got {limit}")
    known = task_names()
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise PairlineError(f"unknown agent task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                f"the tasks are: {', '.join(known)}")
        known = list(dict.fromkeys(names))
    return [load_task(n) for n in known[:limit] if n]


# --------------------------------------------------------------------------- a task's folder


def write_repo(task: AgentTask, dest: Path, git: bool = True) -> bool:
    """The task's repository (never its hidden tests or reference) in `dest`, committed in a fresh
    git repository when `git` and git is there. Returns whether it is a git repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for path, text in task.repo.items():
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_text(text)
    if not git or shutil.which("git") is None:
        return False
    from pairline.assistant.gitsafe import run_git

    ident = ("-c", "user.name=pairline-eval", "-c", "user.email=pairline-eval@localhost")
    try:
        run_git(dest, "-c", "init.defaultBranch=main", "init", "-q")
        run_git(dest, "add", "--", *task.repo)
        run_git(dest, *ident, "commit", "--no-verify", "-q", "-m", f"task {task.name}")
    except PairlineError:
        shutil.rmtree(dest / ".git", ignore_errors=True)
        return False
    return True


def apply_reference(task: AgentTask, dest: Path) -> None:
    for path, text in task.reference.items():
        (dest / path).write_text(text)


def changed_files(task: AgentTask, dest: Path) -> list[str]:
    """The repository's files whose text now differs from the task's (missing ones included)."""
    out = []
    for path, text in task.repo.items():
        try:
            now = (dest / path).read_text()
        except (OSError, UnicodeDecodeError):
            now = None
        if now != text:
            out.append(path)
    return out


def expected_tests(source: str) -> int:
    """The tests a file defines: top-level `def test_*`, and `test_*` methods of `Test*` classes."""
    n = 0
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            n += 1
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            n += sum(isinstance(m, ast.FunctionDef) and m.name.startswith("test") for m in node.body)
    return n


# --------------------------------------------------------------------------- running tests


@dataclass(slots=True)
class TestRun:
    __test__ = False  # not a pytest class

    command: str
    exit_code: int | None
    timed_out: bool
    wall_s: float
    output: str
    outcomes: dict[str, str] = field(default_factory=dict)  # node id (or a file that failed to collect) -> outcome

    def file_result(self, path: str, expected: int) -> tuple[int, int, bool]:
        """(tests passed, tests expected, whether the file passed) for one test file."""
        mine = {k: v for k, v in self.outcomes.items() if k == path or k.startswith(path + "::")}
        passed = sum(v == "PASSED" for v in mine.values())
        bad = any(v in ("FAILED", "ERROR") for v in mine.values())
        return passed, expected, (not bad and not self.timed_out and expected > 0 and passed == expected)


_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+?)(?: - .*)?$", re.M)


def parse_outcomes(output: str) -> dict[str, str]:
    """pytest -rA's short summary as node id -> outcome (a failed test wins over a later pass)."""
    out: dict[str, str] = {}
    for m in _OUTCOME.finditer(output):
        if out.get(m.group(2)) not in ("FAILED", "ERROR"):
            out[m.group(2)] = m.group(1)
    return out


def run_pytest(root: Path, files: list[str], timeout_s: float = 60.0, *, confine: bool = True,
               allow_weak: bool = False, args: tuple[str, ...] = PYTEST) -> TestRun:
    """`python -m pytest FILES` in `root`, a fresh process under a time limit: in pairline's sandbox
    (`confine`), or a plain subprocess (the task data's own tests, where no model wrote the code)."""
    argv = [sys.executable, *args, *files]
    shown = "python " + " ".join([*args, *files])
    t0 = time.perf_counter()
    if confine:
        from pairline.assistant.sandbox import Limits, Sandbox

        box = Sandbox(root, Limits(timeout_s=timeout_s, output_bytes=200_000), extra_env=dict(PYTEST_ENV),
                      allow_weak=allow_weak)
        r = box.run(argv)
        code, timed_out, output = r.exit_code, r.timed_out, r.output
    else:
        import os

        env = {**os.environ, **PYTEST_ENV, "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1"}
        try:
            p = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)
            code, timed_out, output = p.returncode, False, p.stdout + p.stderr
        except subprocess.TimeoutExpired as err:
            out = err.stdout or b""
            code, timed_out = None, True
            output = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
    return TestRun(shown, code, timed_out, time.perf_counter() - t0, output, parse_outcomes(output))


def failing_output(task: AgentTask, root: Path, timeout_s: float = 60.0, *, confine: bool = True,
                   allow_weak: bool = False) -> tuple[str, TestRun]:
    """The visible tests' output as a user running them would see it (the real-time tier's context),
    its middle cut to CONTEXT_CHARS; and the run."""
    args = tuple(CONTEXT_CMD.split()[1:])
    run = run_pytest(root, list(task.tests), timeout_s, confine=confine, allow_weak=allow_weak, args=args)
    text = run.output.strip()
    if len(text) > CONTEXT_CHARS:
        half = CONTEXT_CHARS // 2
        text = text[:half] + "\n[...]\n" + text[-half:]
    return f"$ {CONTEXT_CMD} {' '.join(task.tests)}\n{text}", run


@dataclass(slots=True)
class Score:
    passed: bool  # visible and hidden tests all passed
    visible_passed: bool
    hidden_passed: bool
    visible: tuple[int, int]  # (tests passed, tests defined)
    hidden: tuple[int, int]
    tests_restored: list[str]  # visible test files the tier had changed (put back before scoring)
    files_run: list[str]
    command: str
    exit_code: int | None
    timed_out: bool
    check_s: float
    output: str  # the end of pytest's output


def score(task: AgentTask, root: Path, timeout_s: float = 60.0, *, confine: bool = True,
          allow_weak: bool = False) -> Score:
    """Visible tests put back as the task has them, hidden tests copied in, both run in one process."""
    restored = []
    for path in task.tests:
        real = root / path
        try:
            same = real.read_text() == task.repo[path]
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            restored.append(path)
            real.parent.mkdir(parents=True, exist_ok=True)
            real.write_text(task.repo[path])
    for path, text in task.hidden.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    files = [*task.tests, *task.hidden]
    run = run_pytest(root, files, timeout_s, confine=confine, allow_weak=allow_weak)

    def group(paths, texts) -> tuple[tuple[int, int], bool]:
        got = [run.file_result(p, expected_tests(texts[p])) for p in paths]
        return (sum(g[0] for g in got), sum(g[1] for g in got)), all(g[2] for g in got)

    visible, vis_ok = group(task.tests, task.repo)
    hidden, hid_ok = group(list(task.hidden), task.hidden)
    return Score(vis_ok and hid_ok, vis_ok, hid_ok, visible, hidden, restored, files, run.command, run.exit_code,
                 run.timed_out, run.wall_s, run.output[-2000:])
