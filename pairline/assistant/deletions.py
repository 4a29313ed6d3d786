"""Never a silent deletion: which lines an edit removes that the instruction did not ask to remove.

The rule, on the file before and after the edit (as the model sees them: LF, no BOM):

1. **Lost lines.** The two are aligned with difflib. A removed line is *lost* unless something in
   the new file carries it on: lines written in its place that share most of its names, or one
   much like it (a renamed or reworded line); or the same line, or one very like it, written
   elsewhere in this file or in another file of the same edit (a moved line). Blank lines are
   never lost.
2. **Asked for.** A lost line is asked for when the instruction says to delete (delete, remove,
   drop, clean up, simplify, replace…, not negated) and either names nothing the file holds, or
   the line mentions a name (or a quoted text) the instruction gives, or it lies in a definition
   the instruction names. An instruction about comments or docstrings asks for theirs.
3. **A rewrite that stops early is a region, not a file.** The lost lines at the end of a rewrite
   (after the last line the model wrote) that were not asked for are put back: the untouched tail
   of the original is spliced after the last original line the model's answer covers, on whole
   lines. That is the truncation a small model makes when it closes its code block after the
   function it changed. The same holds for the start: a rewrite that begins at the function it
   changes gets the original's head back.
4. **Refused.** Anything else lost and not asked for is refused when it is a whole definition
   (a function, class or module-level assignment whose name is gone from the new file, unless a
   definition much like it took its place under a new name: a rename), a run of `RUN_LINES` or
   more lost lines with words in them (code, comments, docstrings), or lines the model replaced by
   an elision ("...", "# rest of the code"). Smaller losses pass: an edit naturally turns two lines
   into one, and for Python the cheap check after the edit (check.py) catches a small deletion that
   breaks the file.
"""

from __future__ import annotations

import ast
import difflib
import functools
import keyword
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from pairline.assistant.delete import is_main_guard

RUN_LINES = 3  # this many lost lines in a row (not asked for, with words in them) are refused
RENAMED = 0.6  # a new definition this much like a vanished one (names aside, difflib ratio) renames it



def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?")
# Words that say nothing about which line is which: keywords of the common languages.
_NOT_NAMES = frozenset(keyword.kwlist) | _words(
    "self this let var const function func fn end then elif else do done fi null nil true false "
    "public private protected static void int str"
)
_COMMENT = re.compile(r"^\s*(#|//|/\*|\*/|\*\s|\*$|--|<!--|;)")
# A line a lazy model writes instead of the code it leaves out: "# ... rest unchanged", "// ...".
_ELISION = re.compile(
    r"^\s*(#|//|/\*|--|<!--)?\s*(\.\.\.|…|(\.\.\.\s*)?(the\s+)?(rest|remainder)\b"
    r"|.*\b(unchanged|same as (before|above)|existing code)\b)",
    re.I,
)
_INTENT = re.compile(
    r"\b(delet\w*|remov\w*|drop\w*|clean(ing|s)?[\s-]*up|cleanup|get(ting)?\s+rid|eliminat\w*|prun\w*|"
    r"purg\w*|eras\w*|discard\w*|omit\w*|cut|simplif\w*|shorten\w*|condens\w*|collaps\w*|consolidat\w*|"
    r"merg\w*|dedup\w*|de-dup\w*|inlin\w*|replac\w*|unused|dead|obsolete|redundant|"
    r"uncalled|unreachable)\b",
    re.I,
)
_MAIN = re.compile(r"__main__|__name__|entry[ -]point|main block", re.I)
_NOTHING = re.compile(r"\s+(nothing|anything)\b", re.I)  # "remove nothing"
_PROSE = re.compile(r"\b(doc\s*strings?|comments?|commented|documentation|docs)\b", re.I)
_NEGATION = re.compile(r"\b(don'?t|do\s+not|never|without|not|no)\s+(\w+\s+){0,2}$", re.I)
_QUOTED = re.compile(r"`([^`\n]{1,80})`|\"([^\"\n]{1,80})\"|(?<![A-Za-z])'([^'\n]{1,80})'(?![A-Za-z])")
# Words of an instruction that name nothing, even where the file happens to use them as names.
_STOPWORDS = _words(
    "a an the to in of and or it is be this that these those all any from for with by at on as if not no do its "
    "one two three so out up use using then there them they their each every last first next previous other "
    "function functions method methods class classes variable variables line lines file files code comment "
    "comments import imports parameter parameters argument arguments call calls test tests body block please "
    "also only just instead make change rename add delete remove drop keep it's"
)
_DEF_LINE = re.compile(
    r"^(?P<indent>\s*)(?:(?:export|default|public|private|protected|internal|static|async|abstract|final|"
    r"override|inline|extern|unsafe|pub(?:\([^)]*\))?)\s+)*"
    r"(?P<kind>def|class|function\*?|fn|func|interface|struct|enum|trait|impl|module|object)\s+"
    r"(?:\([^)]*\)\s*)?(?P<name>[A-Za-z_$][\w$]*)"
)


# A top-level `const X =` (JavaScript and kin), and a `NAME = …` line read without its file's indentation.
_TOP_ASSIGN = re.compile(r"^(?P<indent>)(?:export\s+)?(?P<kind>const|let|var)\s+(?P<name>[A-Za-z_$][\w$]*)\s*[=:]")
_ASSIGN = re.compile(r"^(?P<name>[A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)")


def split_lines(text: str) -> list[str]:
    """The lines of an LF text, without their newlines (no empty last line for a final newline)."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def _names_defined_in(lines: Iterable[str]) -> set[str]:
    """Names the lines define, read off their first words (lines of another file of the edit)."""
    found = (_DEF_LINE.match(x) or _TOP_ASSIGN.match(x) or _ASSIGN.match(x) for x in lines)
    return {m.group("name") for m in found if m}


def _tokens(line: str) -> set[str]:
    """What identifies a line: its names, or its numbers if it has no names (`x = 1` is about x;
    a 1 elsewhere says nothing about it)."""
    found = [t for t in _TOKEN.findall(line) if t not in _NOT_NAMES]
    names = {t for t in found if not t[0].isdigit()}
    return names or set(found)


def is_code(line: str) -> bool:
    """A line that holds code (not blank, not only a comment, not only brackets)."""
    return bool(line.strip()) and not _COMMENT.match(line) and any(c.isalnum() for c in line)


def is_elision(line: str) -> bool:
    """A line that stands for code left out: `...`, `# ... rest unchanged`, `// existing code`."""
    return bool(_ELISION.match(line)) and not is_code(line)


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True, slots=True)
class Definition:
    kind: str  # "function" | "class" | "assignment" (module level) | the keyword that opened it
    name: str
    qualname: str  # Outer.inner for Python; the name elsewhere
    first: int  # 0-based, decorators and the comments right above included
    header: int  # the line with the name
    last: int  # inclusive

    def label(self) -> str:
        return f"{self.kind} `{self.qualname}`"


def parse_python(text: str) -> ast.AST | None:
    """The module's tree, or None if it does not parse. Cached: the check parses the same texts
    for the deletion rule and for names."""
    return _parse(text)


@functools.lru_cache(maxsize=8)
def _parse(text: str) -> ast.AST | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def _statements(node: ast.AST) -> list[ast.stmt]:
    """The statements directly inside `node` (definitions and docstrings live only there, so the
    expressions, most of a tree, are never walked)."""
    out: list[ast.stmt] = []
    for name in ("body", "orelse", "finalbody"):
        part = getattr(node, name, None)
        if isinstance(part, list):
            out += [x for x in part if isinstance(x, ast.stmt)]
    for holder in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]:
        out += holder.body
    return out


def _python_assignments(tree: ast.AST) -> list[Definition]:
    """Module-level assignments (`TAX = 0.2`): names other modules may import. Imports are left
    out: one no longer used may go, and one still used is caught by the undefined-names check."""
    out = []
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        for t in targets:
            for name in (n.id for n in ast.walk(t) if isinstance(n, ast.Name)):
                last = (node.end_lineno or node.lineno) - 1
                out.append(Definition("assignment", name, name, node.lineno - 1, node.lineno - 1, last))
    return out


_BLOCK_WORDS = {
    ast.For: "for", ast.AsyncFor: "async for", ast.While: "while", ast.If: "if", ast.With: "with",
    ast.AsyncWith: "async with", ast.Try: "try", ast.Match: "match",
}


def _python_blocks(tree: ast.AST) -> list[tuple[str, int, int]]:
    """The statements with a body (`for`, `if`, `with`, `try`…) and the bodies of functions, as
    (what, first line, last line), 0-based: code that goes as a whole or not at all."""
    out: list[tuple[str, int, int]] = []

    def walk(node: ast.AST) -> None:
        for child in _statements(node):
            word = _BLOCK_WORDS.get(type(child))
            if word:
                out.append((f"a `{word}` block", child.lineno - 1, (child.end_lineno or child.lineno) - 1))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and child.body:
                first, last = child.body[0].lineno - 1, (child.body[-1].end_lineno or child.lineno) - 1
                out.append((f"the body of `{child.name}`", first, last))
            walk(child)

    walk(tree)
    return out


def _python_definitions(tree: ast.AST, lines: list[str]) -> list[Definition]:
    out: list[Definition] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in _statements(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                qual = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)]) - 1
                while first > 0 and _COMMENT.match(lines[first - 1]):
                    first -= 1
                last = (child.end_lineno or child.lineno) - 1
                out.append(Definition(kind, child.name, qual, first, child.lineno - 1, last))
                walk(child, qual + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def _indent(line: str) -> int:
    expanded = line.expandtabs()
    return len(expanded) - len(expanded.lstrip())


def _generic_definitions(lines: list[str]) -> list[Definition]:
    """Definitions found by their opening line; each runs to the next line as little indented (a
    closing bracket line at that indent belongs to it). Top-level `const|let|var NAME =` too."""
    out = []
    for i, line in enumerate(lines):
        m = _DEF_LINE.match(line) or _TOP_ASSIGN.match(line)
        if not m:
            continue
        indent = _indent(line)
        last = i
        for j in range(i + 1, len(lines)):
            s = lines[j]
            if not s.strip():
                continue
            if _indent(s) <= indent:
                if not any(c.isalnum() for c in s):  # `}` or `};`: the definition's own close
                    last = j
                break
            last = j
        first = i
        while first > 0 and _COMMENT.match(lines[first - 1]):
            first -= 1
        kind = m.group("kind").rstrip("*")
        kind = {"def": "function", "fn": "function", "func": "function", "const": "assignment", "let": "assignment",
                "var": "assignment"}.get(kind, kind)
        out.append(Definition(kind, m.group("name"), m.group("name"), first, i, last))
    return out


@dataclass(slots=True)
class Source:
    """A file's lines, parsed once: its definitions, docstring lines and the names it uses."""

    text: str
    python: bool
    lines: list[str] = field(init=False)  # without trailing whitespace, for comparing
    raw: list[str] = field(init=False)  # as they are, for putting back
    tree: ast.AST | None = field(init=False, default=None)
    definitions: list[Definition] = field(init=False)
    blocks: list[tuple[str, int, int]] = field(init=False)  # Python: compound statements, function bodies
    prose: set[int] = field(init=False)  # docstring lines (0-based): text, not code

    def __post_init__(self) -> None:
        self.raw = split_lines(self.text)
        self.lines = [x.rstrip() for x in self.raw]
        self.prose = set()
        if self.python:
            self.tree = parse_python(self.text)
        if self.tree is not None:
            self.definitions = _python_definitions(self.tree, self.lines) + _python_assignments(self.tree)
            self.blocks = _python_blocks(self.tree)
            self._docstrings(self.tree)
        else:
            self.definitions = _generic_definitions(self.lines)
            self.blocks = []

    def _docstrings(self, node: ast.AST) -> None:
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                                            | ast.AsyncFunctionDef):
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                first.value.value, str
            ):
                self.prose.update(range(first.lineno - 1, (first.end_lineno or first.lineno)))
        for child in _statements(node):
            self._docstrings(child)

    def names(self) -> set[str]:
        """Every identifier the file holds (Python: names, attributes, definitions, arguments,
        imports; elsewhere: every word of the file)."""
        if self.tree is None:
            return set(_TOKEN.findall(self.text))
        found: set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Name):
                found.add(node.id)
            elif isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.add(node.name)
            elif isinstance(node, ast.arg | ast.keyword) and node.arg:
                found.add(node.arg)
            elif isinstance(node, ast.alias):
                found.update((node.asname or node.name).split("."))
                found.update(node.name.split("."))
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.update(node.module.split("."))
        return found

    def defined(self) -> set[str]:
        """Qualified and bare names of the definitions."""
        return {d.qualname for d in self.definitions} | {d.name for d in self.definitions}

    def code_line(self, i: int) -> bool:
        return i not in self.prose and is_code(self.lines[i])

    def text_line(self, i: int) -> bool:
        """A comment or docstring line with words in it."""
        return any(c.isalnum() for c in self.lines[i]) and not self.code_line(i)


# --------------------------------------------------------------------------- the instruction


@dataclass(frozen=True, slots=True)
class Intent:
    """What the instruction asks to delete: nothing (`deletes` False), anything (no targets), or
    what mentions its targets."""

    deletes: bool
    names: frozenset[str] = frozenset()
    texts: tuple[str, ...] = ()
    prose: bool = False  # the instruction is about comments or docstrings: theirs may change freely
    main: bool = False  # it speaks of the `if __name__ == "__main__":` block (entry point, __main__)

    @property
    def anything(self) -> bool:
        return self.deletes and not self.names and not self.texts

    def mentions(self, line: str) -> bool:
        if any(t in line for t in self.texts):
            return True
        return bool(self.names) and any(w in self.names for w in _TOKEN.findall(line))


def read_intent(instruction: str, source: Source) -> Intent:
    prose = bool(_PROSE.search(instruction))
    deletes = False
    for m in _INTENT.finditer(instruction):
        negated = _NEGATION.search(instruction[max(0, m.start() - 40) : m.start()])
        if not negated and not _NOTHING.match(instruction[m.end() :]):
            deletes = True
            break
    if not deletes:
        return Intent(False, prose=prose)
    texts = []
    for m in _QUOTED.finditer(instruction):
        quoted = next(g for g in m.groups() if g is not None).strip()
        if quoted and quoted in source.text:
            texts.append(quoted)
    words = {w for part in _TOKEN.findall(instruction) for w in part.split(".")}
    names = {w for w in words if w.lower() not in _STOPWORDS and not w[0].isdigit()} & source.names()
    # a quoted identifier is a name, not a substring (`b` must not match every b of the file)
    plain = [t for t in texts if not _TOKEN.fullmatch(t)]
    names |= {t for t in texts if _TOKEN.fullmatch(t)}
    main = bool(_MAIN.search(instruction))
    return Intent(True, frozenset(names), tuple(plain), prose, main)


def asked_lines(source: Source, intent: Intent) -> set[int]:
    """The lines of the original the instruction asks to remove (if they are removed)."""
    every = range(len(source.lines))
    asked = {i for i in every if source.text_line(i)} if intent.prose else set()
    if not intent.deletes:
        return asked
    if intent.anything:
        return set(every)
    asked |= {i for i in every if intent.mentions(source.lines[i])}
    for d in source.definitions:
        if d.name in intent.names or d.qualname in intent.names:
            asked.update(range(d.first, d.last + 1))
    if source.tree is not None:
        for node in ast.walk(source.tree):
            if not isinstance(node, ast.If | ast.For | ast.While | ast.With | ast.Try):
                continue
            header = node.lineno - 1
            # a block whose first line is asked for goes whole (the `else:` of an `if` the
            # instruction quotes, say); so does the main guard where the instruction speaks of it
            if header in asked or (intent.main and is_main_guard(node)):
                asked.update(range(header, node.end_lineno or node.lineno))
    return asked


# --------------------------------------------------------------------------- lost lines


@dataclass(slots=True)
class Hunk:
    old: range
    new: range


def _accounted(line: str, pool_tokens: set[str]) -> bool:
    """Most of the line's names are in the lines written in its place."""
    mine = _tokens(line)
    return 2 * len(mine & pool_tokens) > len(mine)


def lost_lines(old: list[str], new: list[str], elsewhere: Counter[str] | None = None) -> tuple[set[int], list[Hunk]]:
    """The old lines (0-based) nothing in `new` carries on, and the diff's changed hunks.
    `elsewhere`: the lines this edit writes into other files (a function moved to another file is
    not lost)."""
    sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
    hunks = [Hunk(range(i1, i2), range(j1, j2)) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]
    written = Counter(new[j].strip() for h in hunks for j in h.new if new[j].strip())
    written.update(elsewhere or {})
    lost: set[int] = set()
    for h in hunks:
        near = set().union(*(_tokens(new[j]) for j in h.new)) if h.new else set()
        written_here = [new[j].strip() for j in h.new if new[j].strip()]
        for i in h.old:
            s = old[i].strip()
            if not s:
                continue
            if written[s] > 0:  # the same line is written here or elsewhere (moved)
                written[s] -= 1
                continue
            if not _accounted(s, near) and not _like_any(s, written_here, len(h.old)):
                lost.add(i)
    return lost - _moved_and_changed(old, sorted(lost), written), hunks


def _like_any(line: str, candidates: list[str], hunk_size: int) -> bool:
    """`line` reworded in place: one of the lines written in its place is much like it (`TAX = 0.2`
    and `VAT = 0.2`). Skipped for huge hunks, which only leaves more lines lost."""
    if not candidates or hunk_size * len(candidates) > 5_000:
        return False
    sm = difflib.SequenceMatcher(autojunk=False)
    sm.set_seq2(line)
    for c in candidates:
        sm.set_seq1(c)
        if sm.real_quick_ratio() >= 0.6 and sm.quick_ratio() >= 0.6 and sm.ratio() >= 0.6:
            return True
    return False


def _moved_and_changed(old: list[str], lost: list[int], written: Counter[str]) -> set[int]:
    """Lost lines that were moved and changed a little on the way (a helper extracted with its
    variables renamed): each most like one written line, one to one. Skipped where it would cost
    too much, which only leaves more lines lost."""
    spare = [line for line, n in written.items() for _ in range(n) if len(line) >= 8]
    if not spare or len(lost) * len(spare) > 20_000:
        return set()
    found: set[int] = set()
    sm = difflib.SequenceMatcher(autojunk=False)
    shapes = [_line_shape(x) for x in spare]
    for i in lost:
        mine = old[i].strip()
        shape = _line_shape(mine)
        sm.set_seq2(mine)
        for k, line in enumerate(spare):
            # very like it, or the same code with other names (a helper's parameters) and fairly like it
            need = 0.6 if shapes[k] == shape else 0.8
            sm.set_seq1(line)
            if sm.real_quick_ratio() >= need and sm.quick_ratio() >= need and sm.ratio() >= need:
                found.add(i)
                del spare[k], shapes[k]
                break
    return found


def _line_shape(line: str) -> str:
    """The line with its names blanked: `total += order.price` and `result += item.price` alike."""
    return _TOKEN.sub(lambda m: m.group() if m.group() in _NOT_NAMES or m.group()[0].isdigit() else "_", line)


# --------------------------------------------------------------------------- truncated rewrites


def _tail_start(old: list[str], hunk: Hunk, written: list[str]) -> int:
    """Where in the original the model's last lines end: the end of the run of original lines
    (from the hunk's start) most like what the model wrote after the last unchanged line."""
    start = hunk.old.start
    if not written:
        return start
    want = "\n".join(x.strip() for x in written)
    sm = difflib.SequenceMatcher(None, autojunk=False)
    sm.set_seq2(want)
    best, best_end = 0.0, start
    for end in range(start + 1, min(hunk.old.stop, start + 2 * len(written) + 2) + 1):
        sm.set_seq1("\n".join(x.strip() for x in old[start:end]))
        if sm.real_quick_ratio() > best and sm.quick_ratio() > best:
            r = sm.ratio()
            if r > best:
                best, best_end = r, end
    return best_end if best >= 0.5 else start


def _put_back_from(old: list[str], lost: set[int], asked: set[int], hunk: Hunk, written: list[str]) -> int | None:
    """The first original line to put back after a rewrite that stopped inside `hunk` (the diff's
    last hunk, running to the end of both files), or None if nothing it dropped needs to come back."""
    if not any(i in lost and i not in asked for i in hunk.old):
        return None
    start = _tail_start(old, hunk, written)
    # the lines asked to go, at the start of what is put back, stay out
    while start < len(old) and (not old[start].strip() or (start in lost and start in asked)):
        start += 1
    if start >= len(old):
        return None
    while start > hunk.old.start and not old[start - 1].strip():
        start -= 1  # the blank lines before the tail come back with it
    return start


def _mirror(indices: set[int], n: int) -> set[int]:
    return {n - 1 - i for i in indices}


def repair_truncation(before: Source, new_text: str, intent: Intent) -> tuple[str, list[range]]:
    """A rewrite is the region the model wrote: if it stopped before the end of the file (or, less
    often, started after its beginning), the original's untouched lines are put back around it, on
    whole lines. The text, and the original lines (0-based ranges) put back."""
    raw = split_lines(new_text)
    while raw and (not raw[-1].strip() or is_elision(raw[-1])):
        raw.pop()  # trailing blank lines and "# ... rest unchanged" say nothing about where it stopped
    while raw and (not raw[0].strip() or is_elision(raw[0])):
        raw.pop(0)
    new = [x.rstrip() for x in raw]
    old = before.lines
    lost, hunks = lost_lines(old, new)
    asked = asked_lines(before, intent)
    head: list[str] = []
    tail: list[str] = []
    put_back: list[range] = []
    last = hunks[-1] if hunks else None
    if last is not None and last.old.stop == len(old) and last.new.stop == len(new):
        start = _put_back_from(old, lost, asked, last, new[last.new.start :])
        if start is not None:
            tail = before.raw[start:]
            put_back.append(range(start, len(old)))
    first = hunks[0] if hunks else None
    if first is not None and first.old.start == 0 and first.new.start == 0 and not (first is last and tail):
        # the same on the file read backwards: where the model's first lines start in the original
        n = len(old)
        mirrored = Hunk(range(n - first.old.stop, n), range(len(new) - first.new.stop, len(new)))
        start = _put_back_from(old[::-1], _mirror(lost, n), _mirror(asked, n), mirrored, new[: first.new.stop][::-1])
        if start is not None:
            head = before.raw[: n - start]
            put_back.insert(0, range(0, n - start))
    if not put_back:
        return new_text, []
    return "".join(x + "\n" for x in head + raw + tail), put_back


# --------------------------------------------------------------------------- what is refused


@dataclass(frozen=True, slots=True)
class Loss:
    """Lost lines that were not asked for, refused: a whole definition or a run of lines."""

    first: int  # 0-based, inclusive
    last: int
    what: str = ""  # "function `f`", "a `for` block"…; empty for plain lines

    def where(self) -> str:
        span = f"line {self.first + 1}" if self.first == self.last else f"lines {self.first + 1}-{self.last + 1}"
        return f"{span} ({self.what})" if self.what else span


def _shape(source: Source, d: Definition) -> str:
    """A definition's body with its own name blanked (its header line alone for a one-liner): what
    stays the same when it is renamed."""
    lines = source.lines[d.header + 1 : d.last + 1] or source.lines[d.header : d.header + 1]
    return "\n".join(x.strip() for x in lines).replace(d.name, "\0")


def _renamed(d: Definition, before: Source, after: Source, old_names: set[str], used: set[int]) -> bool:
    """The new file has a definition of a new name whose body is much like `d`'s, and more like
    `d`'s than any other old definition's (a copy of another function is not a rename of this one):
    a rename, maybe with changes, maybe moved, not a loss. One new definition excuses one old one."""
    mine = _shape(before, d)
    for other in after.definitions:
        if other.header in used or other.name in old_names or other.kind != d.kind:
            continue
        theirs = _shape(after, other)
        score = _likeness(mine, theirs)
        if score < RENAMED:
            continue
        rivals = (x for x in before.definitions if x.kind == d.kind and x is not d)
        if any(_likeness(_shape(before, x), theirs) > score for x in rivals):
            continue
        used.add(other.header)
        return True
    return False


def renamed_to(before: Source, after: Source, name: str) -> str | None:
    """The new name of the definition `name` of the original, if the edit renamed it (a definition
    of a new name, much like it, names aside); None if it is simply gone."""
    old_names = before.defined()
    for d in before.definitions:
        if d.name != name or d.kind == "assignment":
            continue
        mine = _shape(before, d)
        fresh = [x for x in after.definitions if x.kind == d.kind and x.name not in old_names]
        scored = sorted(((_likeness(mine, _shape(after, x)), x.name) for x in fresh), reverse=True)
        if scored and scored[0][0] >= RENAMED:
            return scored[0][1]
    return None


def _likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def unasked_losses(before: Source, after: Source, intent: Intent, elsewhere: Counter[str] | None = None) -> list[Loss]:
    """What the edit loses that the instruction did not ask for and that is too much to let pass.
    `elsewhere`: the lines the same edit writes into other files."""
    old, new = before.lines, after.lines
    lost, hunks = lost_lines(old, new, elsewhere)
    asked = asked_lines(before, intent)
    hunk_of = {i: h for h in hunks for i in h.old}
    # a definition moved to another file of the edit lives on there
    still = after.defined() | _names_defined_in(elsewhere or ())
    old_names = before.defined()
    used: set[int] = set()  # new definitions already taken as renames
    # lines the model replaced by "..." or "# rest unchanged": elided, not edited, however few
    elided = {i for h in hunks if any(is_elision(new[j]) for j in h.new) for i in h.old}
    losses: list[Loss] = []
    small: list[Loss] = []  # lost lines too few to refuse the edit for
    covered: set[int] = set()
    for d in sorted(before.definitions, key=lambda d: (d.first, -d.last)):
        # a definition whose name is gone from the file is deleted, unless one like it took its
        # place under a new name
        if d.header in covered or d.header not in hunk_of or d.qualname in still:
            continue
        if after.tree is None and d.name in still:  # the new file does not parse: names only
            continue
        span = range(d.first, d.last + 1)
        if "." in d.qualname:
            # a method or inner function also goes when a refactor carries its lines elsewhere (a
            # class made a dataclass has no __init__): lost only if most of its body is
            body = [i for i in span if i > d.header and before.code_line(i)]
            if 2 * sum(1 for i in body if i in lost) < len(body):
                continue
        # a top-level one is gone whatever its lines look like (another function may resemble them)
        if _renamed(d, before, after, old_names, used):
            continue
        covered.update(span)
        if any(i not in asked for i in span if any(c.isalnum() for c in old[i])):
            losses.append(Loss(d.first, d.last, d.label()))
    # Python: a loop, an `if`, a function's whole body gone (two lines or more): code that went as a
    # whole, not an edit's side effect
    for what, first, last in before.blocks:
        content = [i for i in range(first, last + 1) if any(c.isalnum() for c in old[i]) and i not in covered]
        if len(content) >= 2 and all(i in lost for i in content) and any(i not in asked for i in content):
            covered.update(range(first, last + 1))
            losses.append(Loss(first, last, what))
    run: list[int] = []
    for i in [*range(len(old)), len(old)]:
        in_run = i < len(old) and i in lost and i not in covered
        joins = i < len(old) and run and not any(c.isalnum() for c in old[i]) and i not in covered
        if in_run:
            run.append(i)
            continue
        if joins:
            continue
        unasked = [k for k in run if any(c.isalnum() for c in old[k]) and k not in asked]
        if len(unasked) >= RUN_LINES or any(k in elided for k in unasked):
            losses.append(Loss(run[0], run[-1]))
        elif unasked:
            small.append(Loss(unasked[0], unasked[-1]))
        run = []
    # a refused edit names every line it would lose, the small runs too
    return sorted(losses + small, key=lambda x: x.first) if losses else []


def describe(path: str, source: Source, losses: list[Loss], limit: int = 8) -> str:
    """The error for refused losses, quoting the lines: for the user and, as is, for the model."""
    what = ", ".join(loss.where() for loss in losses)
    quoted: list[str] = []
    for loss in losses:
        lines = source.lines[loss.first : loss.last + 1]
        quoted += [f"{loss.first + k + 1:>5}| {x}" for k, x in enumerate(lines[:limit])]
        if len(lines) > limit:
            quoted.append(f"     | … {len(lines) - limit} more lines")
    return (
        f"{path}: the edit deletes {what}, which the instruction does not ask to remove:\n"
        + "\n".join(quoted)
        + "\nKeep those lines; change only what the instruction asks for."
    )
