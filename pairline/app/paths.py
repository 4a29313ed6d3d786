"""Paths a browser sends, confined to the workspace (docs/app.md, "Safety"), and the tree it shows."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from pairline.assistant.gitsafe import run_git
from pairline.assistant.workspace import Workspace
from pairline.errors import PairlineError

MAX_FILES = 5000  # the tree lists at most this many files
SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                       ".ruff_cache", ".tox", "dist", "build"})


class BadPath(PairlineError):
    """A path the app refuses: outside the workspace, or not a plain relative path."""


def confined(ws: Workspace, raw: object) -> Path:
    """The real path of `raw`, a path relative to the workspace root as a client sent it. Taken
    literally: no URL decoding, no `~`. Refused: not a string, empty, absolute, a `..` part, a
    backslash or a NUL, or a real path (symlinks followed) outside the root or inside .git."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadPath("a path must be a non-empty string relative to the workspace")
    if "\x00" in raw or "\\" in raw or len(raw) > 4096:
        raise BadPath(f"refused path {raw[:200]!r}: no backslashes or NUL bytes")
    rel = PurePosixPath(raw)
    if rel.is_absolute() or ".." in rel.parts:
        raise BadPath(f"refused path {raw[:200]!r}: paths are relative to the workspace, without '..'")
    try:
        return ws.resolve(ws.root / rel)
    except PairlineError as err:
        raise BadPath(f"refused path {raw[:200]!r}: {err}") from None


def list_files(ws: Workspace) -> list[str]:
    """The workspace's files, relative and sorted: in git, what git tracks or would (ignored files
    left out); elsewhere a walk that skips tool folders. Symlinks that leave the root are left out."""
    if ws.git:
        out = run_git(ws.root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", check=False)
        names = [n for n in out.stdout.split("\0") if n] if out.returncode == 0 else _walk(ws.root)
    else:
        names = _walk(ws.root)
    files = []
    for name in sorted(set(names)):
        real = Path(os.path.realpath(ws.root / name))
        if real.is_relative_to(ws.root) and real.is_file() and ".git" not in PurePosixPath(name).parts:
            files.append(name)
            if len(files) >= MAX_FILES:
                break
    return files


def _walk(root: Path) -> list[str]:
    names: list[str] = []
    for top, dirs, files in os.walk(root):  # does not follow directory symlinks
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        names += [Path(top, f).relative_to(root).as_posix() for f in files]
        if len(names) > MAX_FILES * 2:
            break
    return names
