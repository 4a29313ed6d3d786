"""Diffs as the assistant shows them: the unified diff of an edit, its counts, its colours, and the
live view of a diff while the model is still writing the new file (`pairline edit`)."""

from __future__ import annotations

import difflib
from bisect import bisect_left
from collections import defaultdict

# --------------------------------------------------------------------------- final diff


def unified_diff(old: str, new: str, path: str) -> list[str]:
    """A unified diff (lines without their newline); lines keep any CR so the diff is exact."""
    out: list[str] = []
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    name = path.lstrip("/")  # git's a/ b/ prefixes; an absolute path must not give "a//tmp/..."
    for line in difflib.unified_diff(a, b, fromfile=f"a/{name}", tofile=f"b/{name}", n=3):
        if line.endswith("\n"):
            out.append(line[:-1])
        else:  # the last line of a file without a final newline
            out += [line, "\\ No newline at end of file"]
    return out


def diff_counts(lines: list[str]) -> tuple[int, int]:
    """(lines added, lines removed) of a unified diff."""
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return added, removed


def diff_line_style(line: str) -> str:
    """The rich style of one unified-diff line ("" for context)."""
    if line.startswith(("+++", "---")):
        return "bold"
    if line.startswith("@@"):
        return "cyan"
    if line.startswith("+"):
        return "green"
    if line.startswith("-"):
        return "red"
    return ""


def print_diff(console, lines: list[str]) -> None:
    """A unified diff on a rich console, coloured."""
    from rich.text import Text

    for line in lines:
        shown = line.removesuffix("\r")
        console.print(Text(shown, style=diff_line_style(line)), soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------- live diff


class LiveDiff:
    """Classifies the new file's lines against the original as they complete. A line that is the
    original's next line, or a distinctive line found further on, anchors the two; the lines
    between two anchors form a hunk, shown as additions while it grows and re-diffed with difflib
    once the next anchor closes it. Incremental and cheap; for display only (the final diff is
    computed on the whole file)."""

    def __init__(self, original_lines: list[str]):
        self.orig = original_lines
        self.pos = 0  # the original's next line
        self.rows: list[tuple[str, str]] = []  # (" " | "+" | "-", line)
        self.new_lines = 0  # lines of the new file seen so far
        self._hunk_start = 0  # rows[_hunk_start:] are the open hunk's lines, all "+"
        self._pending: list[str] = []
        self._where: dict[str, list[int]] = defaultdict(list)
        for i, line in enumerate(original_lines):
            if len(line.strip()) >= 6:  # short lines ("}", "", "pass") say nothing about position
                self._where[line].append(i)

    def push(self, line: str) -> None:
        self.new_lines += 1
        if self.pos < len(self.orig) and self.orig[self.pos] == line:
            self._close_hunk(self.pos)
        else:
            ahead = self._where.get(line, ())
            i = bisect_left(ahead, self.pos)
            if i == len(ahead):
                self._pending.append(line)
                self.rows.append(("+", line))
                return
            self._close_hunk(ahead[i])
        self.rows.append((" ", line))
        self.pos += 1
        self._hunk_start = len(self.rows)

    def finish(self) -> None:
        self._close_hunk(len(self.orig))
        self._hunk_start = len(self.rows)

    def _close_hunk(self, anchor: int) -> None:
        """The original's lines pos..anchor were replaced by the pending lines."""
        old, new = self.orig[self.pos : anchor], self._pending
        if old:
            rows: list[tuple[str, str]] = []
            sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
            for op, a0, a1, b0, b1 in sm.get_opcodes():
                if op == "equal":
                    rows += [(" ", x) for x in old[a0:a1]]
                else:
                    rows += [("-", x) for x in old[a0:a1]] + [("+", x) for x in new[b0:b1]]
            self.rows[self._hunk_start :] = rows
        self.pos = anchor
        self._pending = []


ROW_STYLE = {" ": "dim", "+": "green", "-": "red"}


def rows_view(title: str, rows: list[tuple[str, str]], height: int):
    """A title and the last `height` rows ((mark, line) pairs), for a rich Live display."""
    from rich.console import Group
    from rich.text import Text

    lines = [Text(title, style="bold cyan")]
    shown = rows[-max(1, height) :]
    lines += [Text(f"{mark} {line}", style=ROW_STYLE[mark], no_wrap=True, overflow="ellipsis") for mark, line in shown]
    return Group(*lines)


def live_view(title: str, diff: LiveDiff, height: int):
    """A live diff's latest rows under a title."""
    return rows_view(title, diff.rows, height)
