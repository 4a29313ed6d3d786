"""A turn's edit of one file, staged for the user: its hunks, each accepted or rejected on its own.

The proposal keeps the text the turn read (`base`) and the text it would write (`target`). A hunk
is one group of changes with the unified diff's 3 lines of context. Writing a set of hunks applies
just their changes to the file as it is on disk: where the file changed meanwhile, each hunk's old
lines (with their context) must be found exactly once in the new text, else it is a conflict and
nothing is written."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

CONTEXT = 3


@dataclass(slots=True)
class Hunk:
    id: int
    header: str  # "@@ -a,b +c,d @@"
    lines: list[str]  # unified-diff lines without their newline: " x", "-y", "+z"
    ops: list[tuple[int, int, int, int]]  # (i1, i2, j1, j2): base[i1:i2] becomes target[j1:j2]
    state: str = "pending"  # pending | accepted | rejected


@dataclass(slots=True)
class Proposal:
    path: str
    base: str
    target: str
    hunks: list[Hunk] = field(default_factory=list)

    @classmethod
    def of(cls, path: str, base: str, target: str) -> Proposal:
        a, b = base.splitlines(keepends=True), target.splitlines(keepends=True)
        hunks = []
        for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(CONTEXT):
            i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
            lines = []
            for tag, x1, x2, y1, y2 in group:
                if tag == "equal":
                    lines += [" " + s.rstrip("\r\n") for s in a[x1:x2]]
                    continue
                lines += ["-" + s.rstrip("\r\n") for s in a[x1:x2]]
                lines += ["+" + s.rstrip("\r\n") for s in b[y1:y2]]
            ops = [(x1, x2, y1, y2) for tag, x1, x2, y1, y2 in group if tag != "equal"]
            header = f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@"
            hunks.append(Hunk(len(hunks), header, lines, ops))
        return cls(path, base, target, hunks)

    def hunk(self, hid: object) -> Hunk:
        if isinstance(hid, int) and not isinstance(hid, bool) and 0 <= hid < len(self.hunks):
            return self.hunks[hid]
        raise KeyError(hid)

    @property
    def pending(self) -> list[Hunk]:
        return [h for h in self.hunks if h.state == "pending"]

    def apply(self, current: str, chosen: list[Hunk]) -> str | None:
        """`current` (the file on disk) with the chosen hunks' changes; None when one of them no
        longer fits it (its old lines and their context are not found exactly once)."""
        base, target = self.base.splitlines(keepends=True), self.target.splitlines(keepends=True)
        lines = current.splitlines(keepends=True)
        # from the last hunk to the first, so earlier positions stay valid
        for h in sorted(chosen, key=lambda h: h.ops[0][0], reverse=True):
            lo = max(0, h.ops[0][0] - CONTEXT)
            hi = min(len(base), h.ops[-1][1] + CONTEXT)
            old = base[lo:hi]
            at = lo if lines[lo:hi] == old else _find_once(lines, old)
            if at is None:
                return None
            new: list[str] = []
            pos = lo
            for i1, i2, j1, j2 in h.ops:
                new += base[pos:i1] + target[j1:j2]
                pos = i2
            new += base[pos:hi]
            lines[at:at + len(old)] = new
        return "".join(lines)


def _range(start: int, end: int) -> str:
    n = end - start
    return f"{start + 1 if n else start},{n}"


def _find_once(lines: list[str], block: list[str]) -> int | None:
    if not block:
        return None
    hits = [i for i in range(len(lines) - len(block) + 1) if lines[i:i + len(block)] == block]
    return hits[0] if len(hits) == 1 else None
