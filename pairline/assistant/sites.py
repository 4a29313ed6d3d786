"""Where an instruction points: the lines of the files that mention the names it uses.

A small model finds the first place to change and then loses its way (it copies the prompt's
example, or stops). Telling it every line that mentions the names the instruction uses (a rename's
definition and each call, a parameter's callers) gives it the list of sites to work through.

A name counts when the instruction mentions it (in backquotes or as a plain word) and the file
binds it: a Python file's functions, classes, parameters, assigned names and attributes (found
with `ast`), or, in a file that does not parse, any identifier-like word with an underscore or
a capital inside. Plain English words ("the", "file") are never names here, however often the
file uses them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SITES = 40  # past this many lines a list stops helping (a name used everywhere)


@dataclass(frozen=True, slots=True)
class Site:
    path: str
    line: int  # 1-based
    text: str


def _bound_names(text: str) -> set[str]:
    """Names a Python file defines: functions, classes, parameters, assigned names and attributes
    (imports and mere uses are not: `os` or `self` would list half the file). Empty if it does not
    parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg) and node.arg not in ("self", "cls"):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def _looks_like_code(word: str) -> bool:
    return "_" in word or any(c.isdigit() for c in word) or (word[0].islower() and any(c.isupper() for c in word))


def named_in(instruction: str, text: str) -> list[str]:
    """The names `instruction` uses that `text` binds, in the order the instruction uses them.
    Names in backquotes, where it has any (a user who quotes names quotes all of them), a dotted
    one by its last part; else the words that look like code (an underscore, a digit, camelCase)."""
    quoted = {q.rsplit(".", 1)[-1] for q in re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", instruction)}
    bound = _bound_names(text)
    seen: list[str] = []
    for word in _WORD.findall(instruction):
        if word in seen or not (word in quoted if quoted else _looks_like_code(word)):
            continue
        if word in bound or (not bound and re.search(rf"\b{re.escape(word)}\b", text)):
            seen.append(word)
    return seen


def find_sites(files: dict[str, str], instruction: str) -> list[Site]:
    """Every line of `files` that mentions a name the instruction uses, in file order; none when
    the instruction names nothing or names something used on too many lines to list."""
    out: list[Site] = []
    for path, text in files.items():
        names = named_in(instruction, text)
        if not names:
            continue
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
        out += [Site(path, i, line) for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    return out if len(out) <= _MAX_SITES else []


def sites_message(sites: list[Site]) -> str:
    """The hint for the prompt: each site as `path:line: text`; "" without sites."""
    if not sites:
        return ""
    listed = "\n".join(f"{s.path}:{s.line}: {s.text.strip()}" for s in sites)
    return f"Lines that mention the names in the instruction (check each one):\n{listed}"
