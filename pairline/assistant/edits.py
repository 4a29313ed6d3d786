"""Search/replace edit blocks: the format, a streaming parser, and an applier.

The model answers with one block per change:

    path/to/file.py
    ```python
    <<<<<<< SEARCH
    lines copied from the file
    =======
    the lines that replace them
    >>>>>>> REPLACE
    ```

The parser reads the answer line by line as it streams, so a block is known (and its diff can be
shown) the moment its REPLACE marker arrives. The applier finds the SEARCH lines in the file: an
exact match first, then looser ones (trailing whitespace, a uniform indentation shift, inner
whitespace, blank lines), each tier accepted only if it matches exactly one place. A block that
matches nothing or more than one place raises `EditError` naming the closest lines, written so
that it can go back to the model as is.

Files are handled as the model sees them (LF newlines, no BOM); `rewrite.restore_layout` puts the
original layout back.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pairline.errors import PairlineError

HEAD, DIVIDER, TAIL = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
RENAME = "RENAME"  # an action besides a block: `RENAME old new` below a file name (rename.py)
DELETE = "DELETE"  # and `DELETE name`: a whole definition (delete.py)

# Markers are recognised with some slack (5-9 marker characters, spaces, case), because small
# models miscount; anything looser would collide with merge conflicts or reStructuredText rules.
_HEAD = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$", re.I)
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_TAIL = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$", re.I)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
# "to" may sit between the names: a small model words the action like the instruction it read
_RENAME = re.compile(rf"^\s*{RENAME}\s+([A-Za-z_][A-Za-z0-9_.]*)\s+(?:to\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*$")
_DELETE = re.compile(rf"^\s*{DELETE}\s+([A-Za-z_][A-Za-z0-9_.]*)\s*$")
_BARE_NAMES = {"makefile", "dockerfile", "license", "readme", "gemfile", "procfile", "justfile"}


@dataclass(frozen=True, slots=True)
class RenameAction:
    """`RENAME old new` under a file name: rename `old` (a name the file binds, or scope.name)
    and every reference to it (rename.py does it)."""

    path: str | None  # the file named above it; None if none was
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class DeleteAction:
    """`DELETE name` under a file name: remove that definition whole (delete.py does it)."""

    path: str | None
    name: str


class EditError(PairlineError):
    """A block that cannot be applied; the message is meant for the model as much as the user."""


@dataclass(slots=True)
class EditBlock:
    path: str | None  # as the model wrote it; None if it gave none
    search: list[str]  # lines without newlines
    replace: list[str]
    index: int = 0  # the block's number in the answer, from 0
    capped: bool = False  # SEARCH was cut short by the search cap: REPLACE may run on past it

    @property
    def search_text(self) -> str:
        return "".join(line + "\n" for line in self.search)

    @property
    def replace_text(self) -> str:
        return "".join(line + "\n" for line in self.replace)

    def render(self, lang: str = "") -> str:
        """The block as the model is taught to write it."""
        body = "".join(line + "\n" for line in [HEAD, *self.search, DIVIDER, *self.replace, TAIL])
        return f"{self.path}\n```{lang}\n{body}```\n"


@dataclass(slots=True)
class Malformed:
    """Something in the answer that started as a block but did not finish as one."""

    message: str
    line: int  # 1-based line of the answer


# --------------------------------------------------------------------------- parsing


def clean_path(line: str) -> str | None:
    """A file name as models write it above a block: `path`, **path**, `# path`, `File: path`, path:."""
    s = line.strip().strip("*`'\"").strip()
    s = re.sub(r"^(#+\s*|(file(name)?|path)\s*:\s*)", "", s, flags=re.I).strip().strip("*`'\"").rstrip(":").strip()
    if not s or " " in s or len(s) > 200 or _FENCE.match(s):
        return None
    # a file name has a dot or a slash ("Sure!" or "Done" are prose), or is a known bare name
    if not re.search(r"[./\\]\w", s) and s.lower() not in _BARE_NAMES:
        return None
    return s


@dataclass(slots=True)
class BlockParser:
    """Feed the answer as it streams; completed blocks come back from `feed` as they close.

    `state` is "text" (outside a block), "search" or "replace"; `partial` is the open block so far
    (for a live view); `malformed` collects what went wrong."""

    default_path: str | None = None  # used when the model names no file (one file in the chat)
    state: str = "text"
    blocks: list[EditBlock] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    partial: EditBlock | None = None
    renames: list[RenameAction] = field(default_factory=list)
    deletes: list[DeleteAction] = field(default_factory=list)
    _buf: str = ""
    _line_no: int = 0
    _last_path: str | None = None  # the latest line that could name a file

    def feed(self, delta: str) -> list[EditBlock]:
        self._buf += delta
        done: list[EditBlock] = []
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            block = self._line(line)
            if block is not None:
                done.append(block)
        return done

    def finish(self) -> list[EditBlock]:
        """The answer ended: parse a last line without newline; an open block is malformed."""
        done: list[EditBlock] = []
        if self._buf:
            block = self._line(self._buf)
            self._buf = ""
            if block is not None:
                done.append(block)
        if self.state != "text":
            where = "before its ======= divider" if self.state == "search" else "before its >>>>>>> REPLACE line"
            self.malformed.append(Malformed(f"the answer ended inside an edit block, {where}", self._line_no))
            self.state, self.partial = "text", None
        return done

    def drop_partial_block(self) -> None:
        """Forget the open block (the caller stopped the answer before it)."""
        self.partial, self.state, self._buf = None, "text", ""

    def drop_partial_line(self) -> None:
        """Forget the unfinished line (the caller cut the answer at the last newline)."""
        self._buf = ""

    @property
    def well_formed(self) -> bool:
        return not self.malformed

    def _line(self, line: str) -> EditBlock | None:
        self._line_no += 1
        line = line.removesuffix("\r")
        if self.state == "text":
            if m := _RENAME.match(line):
                self.renames.append(RenameAction(self._last_path or self.default_path, m.group(1), m.group(2)))
            elif m := _DELETE.match(line):
                self.deletes.append(DeleteAction(self._last_path or self.default_path, m.group(1)))
            elif _HEAD.match(line):
                path = self._last_path or self.default_path
                self.partial = EditBlock(path, [], [], len(self.blocks))
                self.state = "search"
            elif _DIVIDER.match(line) or _TAIL.match(line):
                self.malformed.append(Malformed(f"{line.strip()!r} outside an edit block", self._line_no))
            elif line.strip() and not _FENCE.match(line):
                self._last_path = clean_path(line)
            return None
        assert self.partial is not None
        if self.state == "search":
            if _DIVIDER.match(line):
                self.state = "replace"
            elif _HEAD.match(line) or _TAIL.match(line):
                self._broken(f"{line.strip()!r} before the ======= divider")
            else:
                self.partial.search.append(line)
            return None
        if _TAIL.match(line):
            block, self.partial, self.state = self.partial, None, "text"
            if block.path is None:
                self.malformed.append(Malformed("an edit block without a file name above it", self._line_no))
                return None
            self.blocks.append(block)
            return block
        if _DIVIDER.match(line) and self.partial.capped and not self.partial.replace:
            return None  # the divider was forced; the model writing its own right after is agreement
        if _HEAD.match(line) or _DIVIDER.match(line):
            self._broken(f"{line.strip()!r} before the >>>>>>> REPLACE line")
            if _HEAD.match(line):  # the model started the next block: follow it
                self.partial = EditBlock(self._last_path or self.default_path, [], [], len(self.blocks))
                self.state = "search"
            return None
        self.partial.replace.append(line)
        return None

    def _broken(self, why: str) -> None:
        self.malformed.append(Malformed(f"edit block {len(self.blocks) + 1}: {why}", self._line_no))
        self.partial, self.state = None, "text"


def parse_blocks(text: str, default_path: str | None = None) -> BlockParser:
    """The whole answer at once; the same result as feeding it in any chunks."""
    parser = BlockParser(default_path=default_path)
    parser.feed(text)
    parser.finish()
    return parser


# --------------------------------------------------------------------------- applying


def _norm_inner(line: str) -> str:
    return " ".join(line.split())


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


@dataclass(slots=True)
class Match:
    start: int  # first file line replaced
    end: int  # one past the last
    tier: str
    reindent: Callable[[str], str] | None = None  # applied to replacement lines (indentation shift)


def _windows(file: list[str], search: list[str], eq: Callable[[str, str], bool]) -> list[int]:
    n = len(search)
    first = search[0]
    return [
        i
        for i in range(len(file) - n + 1)
        if eq(file[i], first) and all(eq(file[i + k], search[k]) for k in range(1, n))
    ]


def _shift_for(file_lines: list[str], search: list[str]) -> Callable[[str], str] | None:
    """If every non-blank search line equals its file line up to one and the same change of leading
    whitespace, the function that applies that change to a replacement line; else None."""
    pairs = [(f, s) for f, s in zip(file_lines, search, strict=True) if s.strip()]
    if not pairs:
        return None
    if any(f.strip() != s.strip() for f, s in pairs):
        return None
    deltas = set()
    for f, s in pairs:
        fi, si = _indent(f), _indent(s)
        if fi.endswith(si):
            deltas.add(("add", fi[: len(fi) - len(si)]))
        elif si.endswith(fi):
            deltas.add(("drop", si[: len(si) - len(fi)]))
        else:
            return None
    if len(deltas) != 1:
        return None
    kind, ws = deltas.pop()
    if kind == "add":
        return lambda line: ws + line if line.strip() else line
    return lambda line: line.removeprefix(ws) if line.startswith(ws) else line.lstrip()


def _find(file: list[str], search: list[str]) -> tuple[list[Match], str]:
    """Matches of the first tier that finds any, and that tier's name."""
    n = len(search)
    tiers: list[tuple[str, Callable[[str, str], bool]]] = [
        ("exact", lambda a, b: a == b),
        ("trailing whitespace", lambda a, b: a.rstrip() == b.rstrip()),
    ]
    for name, eq in tiers:
        hits = _windows(file, search, eq)
        if hits:
            return [Match(i, i + n, name) for i in hits], name
    # indentation: same text, one consistent shift of leading whitespace (the model re-indented)
    hits = []
    for i in _windows(file, search, lambda a, b: a.strip() == b.strip()):
        shift = _shift_for(file[i : i + n], search)
        if shift is not None:
            hits.append(Match(i, i + n, "indentation", shift))
    if hits:
        return hits, "indentation"
    # inner whitespace: tokens equal, spacing anywhere may differ; indentation follows the first line
    hits = []
    for i in _windows(file, search, lambda a, b: _norm_inner(a) == _norm_inner(b)):
        first = next((k for k in range(n) if search[k].strip()), None)
        shift = None
        if first is not None:
            fi, si = _indent(file[i + first]), _indent(search[first])
            if fi != si:
                shift = _reindent(si, fi)
        hits.append(Match(i, i + n, "inner whitespace", shift))
    if hits:
        return hits, "inner whitespace"
    # blank lines: the model dropped or added blank lines inside the searched lines
    return _find_ignoring_blanks(file, search), "blank lines"


def _reindent(old: str, new: str) -> Callable[[str], str]:
    def shift(line: str) -> str:
        if not line.strip():
            return line
        return new + line.removeprefix(old) if line.startswith(old) else new + line.lstrip()

    return shift


def _find_ignoring_blanks(file: list[str], search: list[str]) -> list[Match]:
    wanted = [s.rstrip() for s in search if s.strip()]
    if not wanted:
        return []
    where = [i for i, line in enumerate(file) if line.strip()]
    dense = [file[i].rstrip() for i in where]
    hits = []
    for k in _windows(dense, wanted, lambda a, b: a == b):
        hits.append(Match(where[k], where[k + len(wanted) - 1] + 1, "blank lines"))
    return hits


def closest_lines(file: list[str], search: list[str], context: int = 0) -> tuple[int, list[str]] | None:
    """The run of file lines most like the searched lines: (first line index, lines)."""
    n = len(search)
    if not file or not n:
        return None
    target = "\n".join(s.strip() for s in search)
    best, best_i = 0.0, -1
    sm = difflib.SequenceMatcher(autojunk=False)
    sm.set_seq2(target)
    stripped = [line.strip() for line in file]
    for i in range(max(1, len(file) - n + 1)):
        sm.set_seq1("\n".join(stripped[i : i + n]))
        if sm.real_quick_ratio() <= best or sm.quick_ratio() <= best:
            continue
        r = sm.ratio()
        if r > best:
            best, best_i = r, i
    if best_i < 0 or best < 0.4:
        return None
    start = max(0, best_i - context)
    return start, file[start : best_i + n + context]


def _quote(lines: list[str], first: int, limit: int = 12) -> str:
    shown = lines[:limit]
    body = "\n".join(f"{first + k + 1:>5}| {line}" for k, line in enumerate(shown))
    if len(lines) > limit:
        body += f"\n     | … {len(lines) - limit} more lines"
    return body


def not_found(path: str, file: list[str], search: list[str]) -> EditError:
    head = f"{path}: the SEARCH part of the block does not match any lines of the file"
    near = closest_lines(file, search)
    if near is None:
        return EditError(f"{head}. Copy the lines to replace exactly from the file.")
    first, lines = near
    return EditError(
        f"{head}. Did you mean these lines ({first + 1}-{first + len(lines)})?\n{_quote(lines, first)}\n"
        "The SEARCH part must copy the file's lines exactly, whitespace included."
    )


def ambiguous(path: str, matches: list[Match], file: list[str]) -> EditError:
    lines = ", ".join(str(m.start + 1) for m in matches[:6])
    return EditError(
        f"{path}: the SEARCH part matches {len(matches)} places (at lines {lines}); "
        "include more of the surrounding lines so it matches exactly one."
    )


def apply_block(content: str, block: EditBlock, path: str | None = None) -> tuple[str, Match | None]:
    """`content` (LF) with the block applied, and how it matched. An empty SEARCH creates the file
    when it is empty, and appends otherwise. Raises EditError if it matches nothing or many places."""
    shown = path or block.path or "the file"
    search = list(block.search)
    replace = list(block.replace)
    if not any(s.strip() for s in search):
        if not content.strip():
            return block.replace_text, None
        sep = "" if content.endswith("\n") else "\n"
        return content + sep + block.replace_text, None
    file = content.split("\n")
    final_newline = content.endswith("\n")
    if final_newline:
        file.pop()
    matches, _tier = _find(file, search)
    if not matches:
        # the model often adds or drops blank lines around the block; trim them and try again
        trimmed = _trim_blank_edges(search)
        if trimmed != search:
            matches, _tier = _find(file, trimmed)
            if len(matches) == 1:
                replace = _trim_blank_edges(replace)
    if not matches:
        raise not_found(shown, file, search)
    if len(matches) > 1:
        raise ambiguous(shown, matches, file)
    m = matches[0]
    if m.reindent is not None:
        replace = [m.reindent(line) for line in replace]
    if block.capped:
        m.end += _overlap(replace, file[m.end :])
    new = file[: m.start] + replace + file[m.end :]
    text = "\n".join(new)
    if new and final_newline:
        text += "\n"  # a file without a final newline keeps lacking one, even when the block is at EOF
    return text, m


def _overlap(replace: list[str], after: list[str]) -> int:
    """How many of the file's lines after the match the replacement ends by copying. A capped
    SEARCH stops after its first lines, and the model's REPLACE carries on copying the file; those
    lines replace their originals rather than repeat them."""
    for t in range(min(len(replace) - 1, len(after)), 0, -1):
        tail = replace[len(replace) - t :]
        if all(a.rstrip() == b.rstrip() for a, b in zip(tail, after[:t], strict=True)) and any(x.strip() for x in tail):
            return t
    return 0


def _trim_blank_edges(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def block_diff_rows(block: EditBlock) -> list[tuple[str, str]]:
    """A block as diff rows (for the live view): searched lines removed, replacement added,
    common leading and trailing lines shown as context."""
    a, b = block.search, block.replace
    rows: list[tuple[str, str]] = []
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal":
            rows += [(" ", x) for x in a[a0:a1]]
        else:
            rows += [("-", x) for x in a[a0:a1]] + [("+", x) for x in b[b0:b1]]
    return rows
