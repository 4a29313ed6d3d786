"""The deep-mode agent's tools: read, list and search files, edit them, run commands and tests.

Paths go through `Sandbox.resolve` (nothing outside the repository) and, for writes, through
`Workspace.resolve` too (no `.git/`). Edits use the same applier as the real-time assistant
(`edits.apply_block`) and `Workspace.apply`: atomic writes, refused if a file changed under us, one
git commit per edit, undoable. Commands run in the `Sandbox`.

Two guards keep the agent's own git calls, which run outside the sandbox, from running code a
sandboxed command planted: `GitGuard` puts `.git/config`, hooks and `info/` back as they were
after every command and again right before every git call, and every git call runs with hooks,
fsmonitor, filters and diff/merge drivers off (`gitsafe`, docs/agent.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pairline.assistant.agent_format import Action, truncate_middle
from pairline.assistant.coder import load_file
from pairline.assistant.diffs import unified_diff
from pairline.assistant.edits import EditError, apply_block
from pairline.assistant.gitsafe import GitGuard, protect
from pairline.assistant.rewrite import restore_layout
from pairline.assistant.sandbox import RunResult, Sandbox, SandboxError
from pairline.assistant.workspace import FileChangedError, Workspace, read_text_file, run_git
from pairline.errors import PairlineError

READ_LINES = 250  # one read shows at most this many lines ...
READ_CHARS = 8000  # ... and characters
RUN_CHARS = 3000  # of a command's output, for the model (its end matters most: the verdict)
LIST_MAX = 200
SEARCH_MAX = 50
RECORD_CHARS = 8000  # of a command's output, for the trajectory
_SKIP_DIRS = {".git", "__pycache__", "node_modules", ".venv", "venv", ".mypy_cache", ".pytest_cache",
              ".ruff_cache", ".tox", "dist", "build", ".eggs"}


@dataclass(slots=True)
class ToolResult:
    observation: str  # what the model is told
    ok: bool
    output: str = ""  # a longer record, for the trajectory
    data: dict = field(default_factory=dict)  # more fields for the trajectory (exit code, commit, diff, ...)


def repo_files(root: Path, git: bool, limit: int = 20000) -> list[str]:
    """The repository's files, relative, sorted: git's view (tracked plus untracked, not ignored)
    in a git repository, else a walk that skips the usual tool and cache folders."""
    if git:
        with contextlib.suppress(PairlineError):  # no usable git: walk the folder instead
            proc = run_git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", check=False)
            if proc.returncode == 0:
                names = sorted({n for n in proc.stdout.split("\0") if n})
                return [n for n in names if (root / n).is_file()][:limit]
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            out.append((Path(dirpath) / name).relative_to(root).as_posix())
            if len(out) >= limit:
                return out
    return out


class Tools:
    """One run's tools over a workspace and a sandbox rooted at the same folder."""

    def __init__(self, ws: Workspace, sandbox: Sandbox, test_cmd: str, *, cmd_timeout: float = 120.0):
        self.ws = ws
        self.sandbox = sandbox
        self.test_cmd = test_cmd
        self.cmd_timeout = cmd_timeout
        # kept here, so every git call in this repository restores .git first while the run lasts
        self.guard: GitGuard | None = protect(ws.root) if ws.git else None
        self.originals: dict[str, str | None] = {}  # path -> text before the run first edited it

    # ---------------------------------------------------------------- files

    def _rel(self, path: str) -> tuple[Path, str]:
        real = self.sandbox.resolve(str(path).strip().strip("`'\"") or ".")
        return real, real.relative_to(self.sandbox.root).as_posix() or "."

    def relpath(self, path: str) -> str | None:
        """`path` as the repository-relative name the tools use (`./a.py` and `a.py` are one file);
        None for a path outside the repository."""
        try:
            return self._rel(path)[1]
        except PairlineError:
            return None

    def read(self, path: str, start: int | None = None, end: int | None = None) -> ToolResult:
        try:
            real, rel = self._rel(path)
            if real.is_dir():
                return self.list(path)
            text, _ = read_text_file(real)
        except PairlineError as err:
            return ToolResult(f"read {path}: {err}", False)
        lines = text.splitlines()
        n = len(lines)
        first = max(1, start or 1)
        if n and first > n:
            return ToolResult(f"read {rel}: the file has {n} lines; start must be at most {n}", False)
        stop = min(n, end if end is not None and end >= first else n, first + READ_LINES - 1)
        out: list[str] = []
        size = 0
        for line in lines[first - 1:stop]:
            size += len(line) + 1
            if out and size > READ_CHARS:
                break
            out.append(line)
        last = first + len(out) - 1
        shown = "\n".join(out)
        head = f"{rel} (lines {first}-{last} of {n}):" if n else f"{rel} (empty file)"
        more = ""
        if last < n:
            more = f'\n[lines {last + 1}-{n} not shown; read with "start": {last + 1} for more]'
        return ToolResult(f"{head}\n{shown}{more}", True, data={"path": rel, "lines": [first, last], "of": n})

    def list(self, path: str = ".") -> ToolResult:
        try:
            real, rel = self._rel(path or ".")
        except SandboxError as err:
            return ToolResult(f"list {path}: {err}", False)
        if not real.is_dir():
            return ToolResult(f"list {rel}: not a folder" if real.exists() else f"list {rel}: does not exist", False)
        prefix = "" if rel == "." else rel + "/"
        names = [n for n in repo_files(self.ws.root, self.ws.git) if n.startswith(prefix)]
        shown = names[:LIST_MAX]
        more = f"\n[... and {len(names) - LIST_MAX} more files]" if len(names) > LIST_MAX else ""
        where = "the repository" if rel == "." else rel
        body = "\n".join(shown) if shown else "(no files)"
        return ToolResult(f"{len(names)} files under {where}:\n{body}{more}", True, data={"count": len(names)})

    def search(self, pattern: str, path: str = ".") -> ToolResult:
        try:
            real, rel = self._rel(path or ".")
        except SandboxError as err:
            return ToolResult(f"search {path}: {err}", False)
        note = ""
        try:
            rx = re.compile(pattern)
        except re.error as err:
            rx = re.compile(re.escape(pattern))
            note = f"[not a valid regular expression ({err}); searched for the literal text]\n"
        if real.is_file():
            names = [rel]
        else:
            prefix = "" if rel == "." else rel + "/"
            names = [n for n in repo_files(self.ws.root, self.ws.git) if n.startswith(prefix)]
        hits: list[str] = []
        total = 0
        for name in names:
            f = self.ws.root / name
            try:
                if f.stat().st_size > 1 << 20:
                    continue
                data = f.read_bytes()
            except OSError:
                continue
            if b"\0" in data:
                continue
            for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                # the literal text too: models search for code like `def add(a, b):`, whose
                # parentheses a regex reads as a group (measured: the 1.5B model did)
                if pattern in line or rx.search(line):
                    total += 1
                    if len(hits) < SEARCH_MAX:
                        hits.append(f"{name}:{i}: {line.strip()[:200]}")
        if not hits:
            return ToolResult(f"{note}no matches for {pattern!r} under {rel}", True, data={"matches": 0})
        more = f"\n[... {total - len(hits)} more matches]" if total > len(hits) else ""
        return ToolResult(f"{note}{total} matches for {pattern!r}:\n" + "\n".join(hits) + more, True,
                          data={"matches": total})

    # ---------------------------------------------------------------- edits

    def edit(self, action: Action, message: str) -> ToolResult:
        """Apply the blocks that apply (one commit for all of them); report the others precisely.
        Blocks are applied in order, each to the text the ones before it left."""
        states: dict[Path, object] = {}
        texts: dict[Path, str] = {}
        problems: list[str] = list(action.malformed)
        applied = 0
        for i, block in enumerate(action.blocks, 1):
            name = (block.path or "").strip().removeprefix("./")
            if any(x.strip() for x in block.search) and _same_lines(block.search, block.replace):
                # a block that copies its SEARCH lines as they are (measured: Qwen2.5-Coder-1.5B wrote
                # one when told to fix a file it had); the applier's tolerance for blank lines would
                # otherwise make it a real, useless change
                problems.append(f"block {i} ({name or 'no file name'}): its REPLACE lines are its SEARCH lines, "
                                "so it changes nothing; write the lines as they should be after the fix")
                continue
            try:
                real = self.ws.resolve(self.sandbox.resolve(name))
                if real not in states:
                    state = load_file(self.ws, real)
                    if state.text is None and any(s.strip() for s in block.search):
                        raise EditError(f"{state.shown} does not exist; to create it, leave SEARCH empty")
                    states[real], texts[real] = state, state.model_text
                texts[real] = _apply(texts[real], block, states[real].shown)
                applied += 1
            except PairlineError as err:  # EditError, SandboxError, unreadable files
                problems.append(f"block {i} ({name or 'no file name'}): {err}")
        writes, diffs = [], []
        for real, new_model in texts.items():
            state = states[real]
            new = new_model if state.text is None else restore_layout(state.text, new_model)
            if state.text is None or new != state.text:
                writes.append((real, new, state.fingerprint))
                diffs += unified_diff(state.text or "", new, state.shown)
        data: dict = {"blocks": len(action.blocks), "applied": applied, "errors": problems}
        if not writes:
            if problems:
                return ToolResult(_edit_failed(problems, applied), False, data=data)
            return ToolResult("the edit changes nothing: the new lines equal the old ones", False, data=data)
        try:
            entry = self.ws.apply(writes, message)
        except FileChangedError as err:
            return ToolResult(f"{err}. Read the file again and redo the edit.", False, data=data)
        for c in entry.changes:
            if c.path not in self.originals:
                self.originals[c.path] = None if c.before is None else c.before.decode("utf-8", "replace")
        diff = "\n".join(diffs)
        files = [c.path for c in entry.changes]
        data.update(files=files, commit=entry.commit, diff=truncate_middle(diff, RECORD_CHARS),
                    after_sha256={c.path: hashlib.sha256(c.after).hexdigest() for c in entry.changes})
        where = f" (commit {entry.commit[:10]})" if entry.commit else ""
        obs = f"edit applied to {', '.join(files)}{where}:\n{truncate_middle(diff, 1500)}"
        if problems:
            obs += "\n" + _edit_failed(problems, applied)
        return ToolResult(obs, not problems, output=diff, data=data)

    # ---------------------------------------------------------------- commands

    def run(self, command: str, *, timeout: float, cancel=None, kind: str = "run") -> ToolResult:
        try:
            r = self.sandbox.run(command, timeout_s=max(1.0, min(timeout, self.cmd_timeout)), cancel=cancel)
        except SandboxError as err:
            return ToolResult(f"{kind}: {err}", False)
        restored = self.check_git()
        obs = _run_observation(r)
        if restored:
            obs += f"\n[the command changed git's own files ({', '.join(restored)}); they were put back]"
        return ToolResult(obs, r.ok, output=truncate_middle(r.output, RECORD_CHARS), data={
            "command": r.command, "exit_code": r.exit_code, "timed_out": r.timed_out, "cancelled": r.cancelled,
            "wall_s": round(r.wall_s, 3), "truncated": r.truncated, "git_restored": restored})

    def test(self, args: str = "", *, timeout: float, cancel=None) -> ToolResult:
        command = f"{self.test_cmd} {args}".strip() if args else self.test_cmd
        return self.run(command, timeout=timeout, cancel=cancel, kind="test")

    def check_git(self) -> list[str]:
        return self.guard.restore() if self.guard is not None else []


def _apply(text: str, block, shown: str) -> str:
    """The applier's line matching first; if that fails, a SEARCH that is not whole lines but occurs
    exactly once in the file (an edit tool call's `"search": "a - b"`) is replaced where it is."""
    try:
        new, _ = apply_block(text, block, path=shown)
        return new
    except EditError:
        old = "\n".join(block.search)
        if old.strip() and text.count(old) == 1:
            return text.replace(old, "\n".join(block.replace), 1)
        raise


def _same_lines(a: list[str], b: list[str]) -> bool:
    """The same lines, blank lines and trailing spaces aside."""
    return [x.rstrip() for x in a if x.strip()] == [x.rstrip() for x in b if x.strip()]


def _edit_failed(problems: list[str], applied: int) -> str:
    done = f"{applied} other block(s) applied; do not repeat them. " if applied else "Nothing was written. "
    return ("Some edit blocks failed:\n" + "\n".join(problems) + f"\n{done}"
            "Send corrected blocks for the failed changes only, with SEARCH lines copied exactly from the file.")


def _run_observation(r: RunResult) -> str:
    out = r.output.rstrip() or "(no output)"
    return f"{r.summary()}\n{truncate_middle(out, RUN_CHARS)}"
