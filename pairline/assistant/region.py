"""Lazy rewrites: the model rewrites only the parts of a file it changes, each a region of whole
lines, and they are spliced back into the untouched file.

A region is what the model writes in one code block: from the first line it changes (or the
header of the function around it) to the last. `Region` follows its lines as they stream against
the file's lines, to know
- where it goes: each written line is the file's next line, a line found a little further on
  (the lines between were deleted or rewritten), or a new line; a region's first unchanged line
  may appear at several places of the file, so every such start is followed at once, and the one
  that matches the most written lines while skipping the fewest of the file's wins;
- when it is over (`over`): after a change, `REJOIN_LINES` unchanged lines in a row that reach the
  end of the top-level statement the change was in, with none of the instruction's sites (the
  lines that mention the names it uses, sites.py: a rename's calls, a function's callers) further
  on in the file. What would follow is the file's own lines,
  copied at a verify step per draft; the coder stops the request there and splices instead, so a
  one-line change in a 400-line file costs the function around it, not the file.

New lines at a region's edges (a changed `def` line before the first unchanged one, a changed
`return` after the last) replace the file's lines next to the match that they resemble, one to
one; a new line like none of them is an insertion. Nothing outside the regions is touched, so
a region that ends early can never cut the file short.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass

from pairline.assistant.deletions import is_elision

REJOIN_LINES = 3  # unchanged lines after a change before a region may end
RESYNC_REACH = 40  # how far ahead in the file a written line is looked for
MAX_STARTS = 16  # places of the region's first unchanged line that are followed at once
WHOLE_FILE = 0.9  # a region with this share of the file's non-blank lines is the whole file
RUNAWAY_LINES = 80  # new lines in a row after a region's last match that end it (a model writing on)


def _top_level(line: str) -> bool:
    """A line that starts a statement of the module itself (a def, a class, an assignment...)."""
    return bool(line.strip()) and not line[0].isspace() and not line.startswith((")", "]", "}"))


def _alike(a: str, b: str) -> bool:
    """One line reworded: the same line with a parameter added, a value changed..."""
    a, b = a.strip(), b.strip()
    if not a or not b:
        return a == b
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= 0.5


@dataclass(slots=True)
class _Track:
    """One guess of where the region is in the file."""

    first: int  # the file's line the first unchanged written line matched
    at: int  # the file's line the latest matched written line matched
    last: int  # index of that written line
    matched: int = 1
    skipped: int = 0  # the file's lines jumped over to find a written line again
    changed: bool = False
    run: int = 1  # unchanged lines in a row since the latest change

    def feed(self, old: list[str], line: str, index: int) -> None:
        nxt = self.at + 1
        if nxt < len(old) and old[nxt] == line:
            self.at, self.last, self.matched, self.run = nxt, index, self.matched + 1, self.run + 1
            return
        found = _find(old, line, nxt, min(len(old), nxt + RESYNC_REACH))
        self.changed = True
        if found is None:
            self.run = 0  # a new or rewritten line
        else:  # the lines before it were deleted or rewritten
            self.skipped += found - nxt
            self.at, self.last, self.matched, self.run = found, index, self.matched + 1, 1

    def over(self, old: list[str], sites: frozenset[int]) -> bool:
        if not self.changed or self.run < REJOIN_LINES or any(i > self.at for i in sites):
            return False
        following = next((x for x in old[self.at + 1 :] if x.strip()), None)
        return following is None or _top_level(following)


def _find(old: list[str], line: str, start: int, stop: int) -> int | None:
    if not line.strip():
        return None
    for i in range(start, stop):
        if old[i] == line:
            return i
    return None


class Region:
    """One region's lines as they stream, against the file (`old`: its lines, no newlines).
    `after`: the first file line this region may start at (the end of the one before it); `sites`:
    the file's lines (0-based) the instruction points at, which a region does not end before."""

    def __init__(self, old: list[str], after: int = 0, sites: frozenset[int] = frozenset(),
                 covered: tuple[tuple[int, int], ...] = ()):
        self.old = old
        self.after = after
        self.sites = sites
        self._covered = {x for start, stop in covered for x in old[start:stop] if x.strip()}
        self.written: list[str] = []
        self.lead = 0  # written lines before the first one found in the file
        self.tracks: list[_Track] = []
        # it rewrites a part of the file an earlier region of the answer covered (`covered`: their
        # spans): a model that, its region stopped, writes it again (measured on the 0.5B model,
        # six times over)
        self.behind = False

    def feed(self, line: str) -> bool:
        """One written line (no newline); True once the region is over (see the module docstring)."""
        index = len(self.written)
        self.written.append(line)
        if not self.tracks:
            starts = [i for i in range(self.after, len(self.old)) if self.old[i] == line and line.strip()]
            if not starts:
                self.lead += 1
                self.behind = self.behind or line in self._covered
                return False
            self.tracks = [_Track(i, i, index, changed=self.lead > 0) for i in starts[:MAX_STARTS]]
            return False
        for track in self.tracks:
            track.feed(self.old, line, index)
        return self.over()

    def over(self) -> bool:
        return bool(self.tracks) and self.best().over(self.old, self.sites)

    def best(self) -> _Track:
        # the guess that explains the most written lines with the fewest of the file's skipped
        return max(self.tracks, key=lambda t: (t.matched - t.skipped, t.matched, -t.first))

    def runaway(self) -> bool:
        """The model has written `RUNAWAY_LINES` lines in a row that are in no place of the file
        near where the region was (measured: a 0.5B region that turned into made-up code for
        2,900 tokens). A new function is shorter than that; a file's worth of them is not an edit."""
        return bool(self.tracks) and len(self.written) - 1 - self.best().last >= RUNAWAY_LINES

    def cut(self) -> None:
        """Drop what the region wrote after its last line that matched the file."""
        if self.tracks:
            del self.written[self.best().last + 1 :]

    def whole_file(self) -> bool:
        """The region holds (nearly) every line of the file: it is the whole new file, written out,
        not a part to splice (a model that reorders functions writes them all)."""
        old = Counter(x.strip() for x in self.old if x.strip())
        if not old:
            return False
        have = Counter(x.strip() for x in self.written if x.strip())
        return sum((old & have).values()) >= WHOLE_FILE * sum(old.values())

    def placed(self) -> tuple[int, int, list[str]] | None:
        """(start, stop, lines): the region replaces the file's lines [start, stop) with `lines`;
        None when no line of it is in the file (it cannot be placed)."""
        written = list(self.written)
        while written and (not written[-1].strip() or is_elision(written[-1])):
            written.pop()  # blank lines and "# ... rest unchanged" say nothing about where it ends
        lead = self.lead
        while lead and written and is_elision(written[0]):
            written.pop(0)
            lead -= 1
        if not self.tracks or not written:
            return None
        t = self.best()
        start = t.first
        for j in range(1, lead + 1):  # the new lines before the first match, from the nearest
            if start - 1 < self.after or not _alike(written[lead - j], self.old[start - 1]):
                break
            start -= 1
        stop = t.at + 1
        for line in written[t.last + 1 :]:  # the new lines after the last match
            if stop >= len(self.old) or not _alike(line, self.old[stop]):
                break
            stop += 1
        if t.last >= len(written):  # the region ended on blank lines that matched: they stay the file's
            stop = t.at + 1 - (t.last + 1 - len(written))
        return start, stop, written


def splice(old_text: str, regions: list[Region]) -> tuple[str, list[tuple[int, int]]] | None:
    """The file with each region in its place, in order, and the spans of the file they replaced
    (0-based, end exclusive); None if a region cannot be placed or overlaps the one before it."""
    old = old_text.split("\n")
    final_newline = bool(old) and old[-1] == ""
    if final_newline:
        old.pop()
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    done = 0
    for region in regions:
        placed = region.placed()
        if placed is None:
            return None
        start, stop, lines = placed
        if start < done:
            return None
        out += old[done:start] + lines
        spans.append((start, stop))
        done = max(done, stop)
    out += old[done:]
    text = "\n".join(out)
    return (text + "\n" if final_newline or not old_text else text), spans


def in_order(regions: list[Region]) -> list[Region]:
    """The regions that can be placed, each after the one before it."""
    out: list[Region] = []
    done = 0
    for region in regions:
        placed = region.placed()
        if placed is not None and placed[0] >= done:
            out.append(region)
            done = max(done, placed[1])
    return out


def next_region(old: list[str], regions: list[Region], sites: frozenset[int]) -> Region:
    """A new region of the answer: it starts after the ones already written, and knows their spans."""
    spans = tuple((p[0], p[1]) for p in (r.placed() for r in regions) if p is not None)
    return Region(old, after=spans[-1][1] if spans else 0, sites=sites, covered=spans)
