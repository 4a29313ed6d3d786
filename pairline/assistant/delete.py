"""Deleting a definition as an action: the model names it, `ast` finds exactly its lines.

A small model deletes dead code badly: its SEARCH part quotes the `def` line and the body stays
behind (measured: docs/benchmarks.md, the delete-dead-code tasks). So the edit format has a second
action besides RENAME:

    glob.py
    DELETE glob0

`name` is a module-level function, class or assigned name, `Class.method`, or `__main__` for the
`if __name__ == "__main__":` block. Its lines go, with its decorators and the comment lines right
above it; so does its entry in `__all__`, and the blank lines it leaves beyond two in a row.
"""

from __future__ import annotations

import ast
import re

from pairline.assistant.edits import EditError

MAIN = "__main__"
# the imperative asks for a deletion; "return True when it removed the event" does not (measured:
# that instruction went to blocks, as a deletion, on `pairline bench edit`)
_ASKS_DELETE = re.compile(r"\b(delete|remove|drop|get rid|dead code|unused)\b", re.I)
_MAIN_WORDS = re.compile(r"__main__|__name__|entry point|main block", re.I)


def is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (the deletion check uses it too)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == MAIN for s in sides
    )


def _assigned(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """What DELETE may name: module-level defs, classes and assignments, methods as Class.name,
    and the main guard."""
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.setdefault(node.name, node)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                        out.setdefault(f"{node.name}.{member.name}", member)
        elif is_main_guard(node):
            out.setdefault(MAIN, node)
        for name in _assigned(node):
            out.setdefault(name, node)
    out.pop("__all__", None)
    return out


def deletable(text: str) -> list[str]:
    try:
        return list(_definitions(ast.parse(text)))
    except (SyntaxError, ValueError):
        return []


def delete_targets(instruction: str, text: str) -> list[str]:
    """What a DELETE may name in this file for this instruction: none unless it asks to delete or
    remove something, and then the definitions it mentions (and the main guard where it speaks of
    it)."""
    if not _ASKS_DELETE.search(instruction):
        return []
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", instruction))
    main = bool(_MAIN_WORDS.search(instruction))
    return [n for n in deletable(text) if n.rpartition(".")[2] in words or (n == MAIN and main)]


def statement_span(node: ast.stmt) -> tuple[int, int]:
    """0-based [start, end) of a statement's lines, its decorators included."""
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)]) - 1, node.end_lineno or node.lineno


def span_with_comments(lines: list[str], node: ast.stmt) -> tuple[int, int]:
    """`statement_span`, with the comment lines right above the statement (they belong to it)."""
    start, end = statement_span(node)
    while start > 0 and lines[start - 1].strip().startswith("#"):
        start -= 1
    return start, end


def _drop_from_all(text: str, name: str) -> str:
    """`name`'s entry removed from a module-level `__all__` list or tuple, if it has one."""
    tree = ast.parse(text)
    for node in tree.body:
        names = _assigned(node) if isinstance(node, ast.Assign) else []
        if "__all__" not in names:
            continue
        if not isinstance(node.value, ast.List | ast.Tuple):
            return text
        for elt in node.value.elts:
            if isinstance(elt, ast.Constant) and elt.value == name and elt.lineno == elt.end_lineno:
                lines = text.splitlines(keepends=True)
                line = lines[elt.lineno - 1]
                b = line.encode("utf-8")
                before, after = b[: elt.col_offset].decode(), b[elt.end_col_offset :].decode()
                if re.match(r"\s*,", after):  # "x", -> drop the comma and the space after it
                    after = re.sub(r"^\s*,[ \t]*", "", after)
                else:  # the last entry: drop the comma before it
                    before = re.sub(r",\s*$", "", before)
                new = before + after
                lines[elt.lineno - 1] = "" if not new.strip() else new
                return "".join(lines)
    return text


def apply_delete(text: str, name: str) -> str:
    """`text` without the definition `name` (see the module's docstring); EditError if it has none."""
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise EditError(f"DELETE {name}: the file is not valid Python ({err.msg}, line {err.lineno})") from None
    node = _definitions(tree).get(name)
    if node is None:
        raise EditError(f"DELETE {name}: the file defines no {name!r} at module level")
    lines = text.splitlines(keepends=True)
    start, end = span_with_comments(lines, node)
    # the blank lines around the hole: keep as many as the larger side had, at most two
    before = 0
    while start - before > 0 and not lines[start - before - 1].strip():
        before += 1
    after = 0
    while end + after < len(lines) and not lines[end + after].strip():
        after += 1
    keep = min(max(before, after), 2) if start - before > 0 and end + after < len(lines) else 0
    out = lines[: start - before] + ["\n"] * keep + lines[end + after :]
    new = "".join(out)
    return _drop_from_all(new, name.rpartition(".")[2]) if "." not in name else new
