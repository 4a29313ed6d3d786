"""The cheap check after every edit, before anything is written (no test run: tests run only when
the user asks).

`review` takes one file before and after the model's edit (as the model sees it: LF, no BOM) and
returns the text to write (a rewrite that stopped early is repaired, see deletions.py) and what is
wrong with it:

- lines the instruction did not ask to remove are gone (deletions.py);
- Python: the file no longer parses, or it uses a name that nothing defines where the original
  did not (pyflakes' "undefined name", with a small scope-aware resolver here): a rename that left
  `greet(` behind, or a deleted function that is still called.

Only what the edit *introduces* counts: a name the original already left undefined (a star import,
a name injected at runtime) is not the model's doing. Non-Python files get the deletion rule only.
The coder sends the errors back to the model once (`retry_message`); if they remain, nothing is
written and the user gets them.
"""

from __future__ import annotations

import ast
import builtins
import difflib
from collections import Counter
from dataclasses import dataclass, field

from pairline.assistant.deletions import (
    Source,
    describe,
    parse_python,
    read_intent,
    renamed_to,
    repair_truncation,
    unasked_losses,
)
from pairline.assistant.rewrite import language_for

# Names every module and class body has without binding them.
_IMPLICIT = frozenset(dir(builtins)) | {
    "__file__", "__name__", "__doc__", "__spec__", "__loader__", "__package__", "__builtins__", "__path__",
    "__annotations__", "__cached__", "__debug__", "__class__", "__module__", "__qualname__", "WindowsError",
}


@dataclass(slots=True)
class _Scope:
    kind: str  # module | class | function | comprehension
    parent: _Scope | None
    bound: set[str] = field(default_factory=set)
    declared_global: set[str] = field(default_factory=set)


class _Names(ast.NodeVisitor):
    """Every name a module loads, with the scope it is loaded in, and every name each scope binds.
    Resolution happens at the end, so order does not matter (a function may call one defined after
    it; a module-level use before its definition is not flagged either: fewer false alarms)."""

    def __init__(self) -> None:
        self.module = _Scope("module", None)
        self.scope = self.module
        self.loads: list[tuple[_Scope, str, int]] = []
        self.star = False  # `from x import *`: any name may come from there
        self.bound_anywhere: set[str] = set()

    # -- scopes

    def _enter(self, kind: str) -> _Scope:
        self.scope = _Scope(kind, self.scope)
        return self.scope

    def _leave(self, scope: _Scope) -> None:
        assert scope.parent is not None
        self.scope = scope.parent

    def _bind(self, name: str) -> None:
        scope = self.scope
        if name in scope.declared_global:
            scope = self.module
        scope.bound.add(name)
        self.bound_anywhere.add(name)

    def _arguments(self, args: ast.arguments) -> None:
        """Defaults and annotations are evaluated where the function is defined."""
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.visit(default)
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None and a.annotation is not None:
                self.visit(a.annotation)

    def _bind_arguments(self, args: ast.arguments) -> None:
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None:
                self._bind(a.arg)

    # -- definitions

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        self._arguments(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        self._bind(node.name)
        scope = self._enter("function")
        for p in getattr(node, "type_params", []):  # Python 3.12 generics
            self._bind(p.name)
        self._bind_arguments(node.args)
        for stmt in node.body:
            self.visit(stmt)
        self._leave(scope)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._arguments(node.args)
        scope = self._enter("function")
        self._bind_arguments(node.args)
        self.visit(node.body)
        self._leave(scope)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self._bind(node.name)
        scope = self._enter("class")
        for p in getattr(node, "type_params", []):
            self._bind(p.name)
        for stmt in node.body:
            self.visit(stmt)
        self._leave(scope)

    def _comprehension(self, node: ast.AST, results: list[ast.AST]) -> None:
        gens: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        self.visit(gens[0].iter)  # the first iterable is evaluated in the enclosing scope
        scope = self._enter("comprehension")
        for k, gen in enumerate(gens):
            self.visit(gen.target)
            if k:
                self.visit(gen.iter)
            for cond in gen.ifs:
                self.visit(cond)
        for r in results:
            self.visit(r)
        self._leave(scope)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_ListComp
    visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    # -- bindings and uses

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load | ast.Del):  # `del x` needs an x as much as a use does
            self.loads.append((self.scope, node.id, node.lineno))
        else:
            self._bind(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        scope = self.scope
        while scope.kind == "comprehension" and scope.parent is not None:
            scope = scope.parent  # `:=` in a comprehension binds in the enclosing scope
        scope.bound.add(node.target.id)
        self.bound_anywhere.add(node.target.id)

    def visit_Global(self, node: ast.Global) -> None:
        self.scope.declared_global.update(node.names)
        self.module.bound.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.scope.bound.update(node.names)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._bind(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.star = True
            else:
                self._bind(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._bind(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.AST) -> None:
        if getattr(node, "name", None):
            self._bind(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.AST) -> None:
        if getattr(node, "rest", None):
            self._bind(node.rest)  # type: ignore[attr-defined]
        self.generic_visit(node)

    # -- resolution

    def resolves(self, scope: _Scope, name: str) -> bool:
        if name in scope.declared_global:
            return name in self.module.bound or name in _IMPLICIT
        s: _Scope | None = scope
        while s is not None:
            # a class body's names are not visible from the functions and comprehensions inside it
            if (s is scope or s.kind != "class") and name in s.bound:
                return True
            s = s.parent
        return name in _IMPLICIT

    def undefined(self) -> dict[str, list[int]]:
        """Each name used where nothing binds it, with the lines it is used on."""
        if self.star:
            return {}
        out: dict[str, list[int]] = {}
        for scope, name, line in self.loads:
            if not self.resolves(scope, name):
                out.setdefault(name, []).append(line)
        return {name: sorted(set(lines)) for name, lines in out.items()}


def undefined_names(tree: ast.AST) -> tuple[dict[str, list[int]], set[str]]:
    """The names `tree` uses where nothing binds them (name -> the lines), and the names it binds."""
    v = _Names()
    v.visit(tree)
    return v.undefined(), v.bound_anywhere


def python_problems(
    path: str, old: str | None, new: str, limit: int = 8, deleted: frozenset[str] = frozenset()
) -> list[str]:
    """Why the edited Python file is broken where the original was not: it no longer parses, or it
    uses names nothing defines. `deleted`: names the instruction asks to delete (their uses must go
    too)."""
    lines = new.split("\n")
    old_tree = parse_python(old) if old is not None else None
    tree = parse_python(new)
    try:
        if tree is None:
            ast.parse(new)  # again, for its error message
    except SyntaxError as err:
        if old is not None and old_tree is None:
            return []  # it did not parse before either: not the edit's doing
        n = err.lineno or 0
        shown = f":\n{n:>5}| {lines[n - 1]}" if 0 < n <= len(lines) else ""
        return [f"{path} line {n}: the edited file is not valid Python ({err.msg}){shown}"]
    except ValueError as err:  # null bytes
        return [f"{path}: the edited file is not valid Python ({err})"]
    if old is None or old_tree is None or tree is None:
        return []  # a new file: parsing is the check (no before to compare names with)
    before, defined_before = undefined_names(old_tree)
    after, _ = undefined_names(tree)
    problems = []
    for name, where in sorted(after.items(), key=lambda kv: kv[1][0]):
        if name in before:
            continue
        if name not in defined_before:
            why = "nothing in the file defines or imports it"
        elif name in deleted:
            why = "the instruction deletes it: remove or change its uses too"
        elif new_name := renamed_to(Source(old, True), Source(new, True), name):
            why = f"the edit renamed it to `{new_name}`: use `{new_name}` here too"
        else:
            why = "the edit removed or renamed its definition; update every use"
        shown = where[:limit]
        quoted = "\n".join(f"{n:>5}| {lines[n - 1]}" for n in shown)
        more = f"\n     | … and {len(where) - limit} more lines" if len(where) > limit else ""
        at = f"line {where[0]}" if len(where) == 1 else "lines " + ", ".join(str(n) for n in shown) + (
            ", …" if more else "")
        problems.append(f"{path} {at}: `{name}` is not defined ({why}):\n{quoted}{more}")
    return problems


@dataclass(slots=True)
class Review:
    text: str  # what to write: the edit, with a rewrite's untouched tail put back if it stopped early
    lost: list[str] = field(default_factory=list)  # lines lost that the instruction did not ask to remove
    broken: list[str] = field(default_factory=list)  # Python that no longer parses, or names left undefined
    notes: list[str] = field(default_factory=list)  # what was repaired, for the user

    @property
    def errors(self) -> list[str]:
        return self.lost + self.broken


def review(
    path: str, old: str | None, new: str, instruction: str, *, rewrite: bool = False, elsewhere: str = ""
) -> Review:
    """Check one edited file (texts as the model sees them). `rewrite`: `new` is the model's whole
    file, which may stop early; a blocks edit cannot, so its lost tail is refused, not put back.
    `elsewhere`: what the same edit writes into its other files (where a moved function went)."""
    python = language_for(path) == "python"
    if old is None:
        return Review(new, broken=python_problems(path, None, new) if python else [])
    before = Source(old, python)
    intent = read_intent(instruction, before)
    out = Review(new)
    if rewrite:
        out.text, put_back = repair_truncation(before, new, intent)
        for lines in put_back:
            where = "after it: it stopped before the end" if lines.stop == len(before.lines) else (
                "before it: it started after the beginning")
            out.notes.append(
                f"{path}: the rewrite covered part of the file; kept the original lines "
                f"{lines.start + 1}-{lines.stop} {where} of the file"
            )
    moved = Counter(x.strip() for x in elsewhere.split("\n") if x.strip())
    losses = unasked_losses(before, Source(out.text, python), intent, moved)
    if losses:
        out.lost.append(describe(path, before, losses))
    if python:
        out.broken += python_problems(path, old, out.text, deleted=intent.names if intent.deletes else frozenset())
        out.broken += copied_not_renamed(path, old, out.text, instruction)
    return out


def _top_definitions(text: str) -> dict[str, str]:
    """The module's own functions and classes: name -> body source (header line left out)."""
    tree = parse_python(text)
    if tree is None:
        return {}
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    lines = text.split("\n")
    return {node.name: "\n".join(x.strip() for x in lines[node.lineno : node.end_lineno or node.lineno])
            for node in getattr(tree, "body", []) if isinstance(node, kinds)}


def copied_not_renamed(path: str, old: str, new: str, instruction: str) -> list[str]:
    """A rename answered with a copy: the function or class the instruction asks to rename is still
    defined, next to a new one, under a name the instruction gives, with much the same body
    (measured: SmolLM2's rewrite of "rename total_price to basket_total" added basket_total and
    kept total_price)."""
    from pairline.assistant.rename import new_names, rename_targets

    asked = {n for n in rename_targets(instruction, old) if "." not in n}
    if not asked:
        return []
    before, after = _top_definitions(old), _top_definitions(new)
    added = [n for n in new_names(instruction, old) if n in after and n not in before]
    for name in sorted(asked & before.keys() & after.keys()):
        for copy in added:
            body = after[name].replace(name, copy)
            if difflib.SequenceMatcher(None, body, after[copy], autojunk=False).ratio() >= 0.8:
                return [f"{path}: `{name}` is still defined next to `{copy}`, a copy of it; the instruction "
                        f"asks to rename it, so rename it (and its uses) instead of adding a copy"]
    return []


def review_files(edited: list[tuple[str, str | None, str]], instruction: str, *, rewrite: bool = False) -> list[Review]:
    """`review` on each (shown path, old text or None for a new file, new text) of one edit. Each file's
    review knows what the edit added to its other files: a function moved there is not lost here."""
    added = ["\n".join((Counter(new.split("\n")) - Counter((old or "").split("\n"))).elements())
             for _, old, new in edited]
    return [review(shown, old, new, instruction, rewrite=rewrite,
                   elsewhere="\n".join(a for j, a in enumerate(added) if j != i))
            for i, (shown, old, new) in enumerate(edited)]


def retry_message(errors: list[str], mode: str) -> str:
    """The user turn that hands a failed check back to the model for its one retry. `mode`: rewrite
    (the regions again), focus (the definitions again, focus.py), blocks (all blocks again, none
    were kept) or fix (the blocks were kept: more blocks that fix the errors)."""
    listed = "\n\n".join(errors)
    if mode == "rewrite":
        return (
            f"Your rewrite was not applied:\n\n{listed}\n\n"
            "Write the parts of the file you change again, one code block each, from the first line "
            "of the function or statement you change to the last line you change, and fix this."
        )
    if mode == "focus":
        return (
            f"Your edit was not applied:\n\n{listed}\n\n"
            "Write every function, method or class you change again, whole, one code block each, and fix this."
        )
    if mode == "fix":
        return (
            f"Your edit blocks were applied, but the file has errors now:\n\n{listed}\n\n"
            "Write more search/replace blocks that fix them, with SEARCH lines copied exactly from the file "
            "as it is now (the lines quoted above are). Do not repeat the blocks you already wrote."
        )
    return (
        f"None of your edit blocks were applied, because the result would be wrong:\n\n{listed}\n\n"
        "Write the search/replace blocks for the whole change again, with SEARCH lines copied exactly from "
        "the file as shown above, and fix this."
    )
