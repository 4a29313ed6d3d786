"""A rename as an action: the model names what to rename, rope does it everywhere it is used.

A small model renames a function's `def` and forgets its calls (measured: docs/benchmarks.md).
Finding every reference is what a refactoring tool is for, so the edit format has one action
besides the search/replace block:

    shop.py
    RENAME total_price basket_total

`old` is a name the file binds; `scope.old` (a function's or class's name, a dot, then the name)
picks the binding inside that scope (a parameter, a method). rope (a well-kept Python refactoring
library) renames the binding and every reference to it, in strings and comments too (`__all__`),
across the files of the edit. It runs on a private copy of those files, so it sees nothing else
and writes nothing: the new texts go back through the same check and workspace as any edit.
"""

from __future__ import annotations

import ast
import functools
import keyword
import re
import tempfile
import warnings
from pathlib import Path, PurePosixPath

from pairline.assistant.edits import EditError


def _bindings(tree: ast.AST) -> list[tuple[str, ast.AST, int, int]]:
    """(name, scope node, line, col) of each place a name is bound, in file order: defs, classes,
    parameters, assignment targets. The scope is the def or class that holds the binding."""
    found: list[tuple[str, ast.AST, int, int]] = []

    def visit(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                col = child.col_offset + (6 if isinstance(child, ast.ClassDef) else 4)
                if isinstance(child, ast.AsyncFunctionDef):
                    col += 6
                found.append((child.name, scope, child.lineno, col))
                visit(child, child)
            elif isinstance(child, ast.arg):
                found.append((child.arg, scope, child.lineno, child.col_offset))
            elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                found.append((child.id, scope, child.lineno, child.col_offset))
                visit(child, scope)
            else:
                visit(child, scope)

    visit(tree, tree)
    return found


def names_bound(text: str) -> list[str]:
    """What a RENAME may name in this file: each bound name, and `scope.name` for names bound
    inside a def or class. Empty where the file does not parse."""
    return list(_names_bound(text))


@functools.lru_cache(maxsize=32)
def _names_bound(text: str) -> tuple[str, ...]:
    # a parse and a walk of the whole file (a few ms): every turn's grammar asks, mostly of the same text
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ()
    out: dict[str, None] = {}
    for name, scope, _, _ in _bindings(tree):
        out[name] = None
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out[f"{scope.name}.{name}"] = None
    return tuple(out)


# "call it `x`" names; "call it from both methods" does not (measured: an extract-helper task went to
# blocks as a rename on `pairline bench edit`)
_ASKS_RENAME = re.compile(r"\b(renam\w*|new name|call (it|them) (`|\w*_)|name it)", re.I)


def rename_targets(instruction: str, text: str) -> list[str]:
    """What a RENAME may name in this file for this instruction: none unless the instruction asks
    for a rename, and then only the bound names it mentions (`scope.name` where it mentions
    `name`). Measured: offered every bound name on every edit, Qwen2.5-Coder-0.5B answered
    bug fixes and new parameters with renames."""
    if not _ASKS_RENAME.search(instruction):
        return []
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", instruction))
    return [n for n in names_bound(text) if n.rpartition(".")[2] in words]


# words of an instruction that are never the new name of a rename
_NOT_NEW = frozenset({
    "rename", "renaming", "renamed", "to", "the", "a", "an", "in", "of", "and", "or", "it", "its",
    "everywhere", "function", "method", "class", "variable", "parameter", "argument", "attribute", "file",
    "this", "that", "change", "nothing", "else", "including", "include", "alias", "end", "new", "name", "call",
    "calls", "from", "with", "at", "as", "also", "all", "uses", "use", "usages", "references", "their",
    "them", "module", "field", "constant",
})


def new_names(instruction: str, text: str) -> list[str]:
    """The names a rename may take: the identifiers the instruction gives that the file does not
    bind yet (the backquoted ones, where it quotes any). Empty: any name. Measured: free to choose,
    Qwen2.5-Coder-0.5B renamed `_isrecursive` to `recursive`, told `_is_recursive`."""
    quoted = [q for q in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", instruction)]
    words = quoted or [w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", instruction) if w.lower() not in _NOT_NEW]
    bound = {n.rpartition(".")[2] for n in names_bound(text)}
    return list(dict.fromkeys(w for w in words if w not in bound and not keyword.iskeyword(w)))


def _offset(text: str, old: str) -> int:
    """Where rope should start: the first binding of `old` (`scope.name`: inside that scope;
    a plain name: at module level first, else anywhere)."""
    tree = ast.parse(text)
    scope_name, _, name = old.rpartition(".")
    found = _bindings(tree)
    if scope_name:
        hits = [b for b in found if b[0] == name and getattr(b[1], "name", None) == scope_name]
    else:
        hits = [b for b in found if b[0] == name and b[1] is tree] or [b for b in found if b[0] == name]
    if not hits:
        raise EditError(f"RENAME {old}: nothing in the file binds {old!r}")
    _, _, line, col = hits[0]
    starts = [0]
    for part in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(part))
    # ast columns count UTF-8 bytes; rope wants characters
    line_text = text.splitlines(keepends=True)[line - 1]
    col = len(line_text.encode("utf-8")[:col].decode("utf-8", errors="ignore"))
    offset = starts[line - 1] + col
    if text[offset : offset + len(name)] != name:  # a def's name after decorators or spacing
        at = text.find(name, offset)
        if at < 0:
            raise EditError(f"RENAME {old}: could not find {name!r} in the file")
        offset = at
    return offset


def apply_rename(texts: dict[str, str], path: str, old: str, new: str) -> dict[str, str]:
    """Rename `old` (bound in the file `path`) to `new` in every file of `texts` (shown name ->
    text as the model sees it); returns the texts that changed. EditError says why it cannot."""
    if keyword.iskeyword(new) or not new.isidentifier():
        raise EditError(f"RENAME {old} {new}: {new!r} is not a valid Python name")
    if path not in texts:
        raise EditError(f"RENAME: {path} is not a file of this edit")
    if not path.endswith((".py", ".pyi")):
        raise EditError(f"RENAME works on Python files; use a search/replace block for {path}")
    try:
        offset = _offset(texts[path], old)
    except SyntaxError as err:
        raise EditError(f"RENAME: {path} is not valid Python ({err.msg}, line {err.lineno})") from None
    from rope.base.exceptions import RopeError
    from rope.base.project import Project
    from rope.refactor.rename import Rename

    with tempfile.TemporaryDirectory(prefix="pairline-rename-") as tmp:
        root = Path(tmp)
        for name, text in texts.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise EditError(f"RENAME: {name} is not a path inside the workspace")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
        with warnings.catch_warnings():  # rope 1.x warns about its own deprecated internals
            warnings.simplefilter("ignore", DeprecationWarning)
            project = Project(str(root), ropefolder=None)
        try:
            changes = Rename(project, project.get_resource(path), offset).get_changes(new, docs=True)
            project.do(changes)
            after = {name: (root / name).read_text(encoding="utf-8") for name in texts}
        except RopeError as err:
            raise EditError(f"RENAME {old} {new}: {err}") from None
        finally:
            project.close()
    return {name: text for name, text in after.items() if text != texts[name]}
