"""`pairline bench fim --quality`: how often an inline suggestion is what the file really says, per
FIM order (issue 17; engine/fim.py).

The held set is real code: modules of the standard library installed with the running Python (a
fixed list; a module missing here is skipped and named in the result). From them, with a seeded RNG:
- lines: one line of code masked; the cursor sits after the line's indentation (where an editor's
  auto-indent leaves it) and the expected middle is the rest of the line;
- blocks: the body of a function or of an if/for/while block (2-8 lines) masked; the cursor sits
  after the first body line's indentation and the expected middle runs to the end of the block's
  last line.
Each case is suggested the way `pairline lsp` and the editors do it (LocalSuggester: the default
window of the file, the inline stop rules), from a cold KV cache, so that no case's result depends on
which cases ran before it. Reported per (model, order, kind): exact match (whitespace-stripped; a
block line by line) with its 95% Wilson interval, whether the filled-in file parses, the edit
similarity to the expected middle, seconds per case, and how many suggestions were empty.
"""

from __future__ import annotations

import ast
import difflib
import io
import random
import statistics
import sys
import sysconfig
import time
import tokenize
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pairline.bench.common import wilson

# Modules of real, plain code (no generated tables, no C wrappers), in a fixed order: the case set is
# a function of this list, the seed and the Python version (recorded with the result).
MODULES = ("textwrap", "shlex", "heapq", "bisect", "fnmatch", "glob", "difflib", "string", "calendar",
           "colorsys", "csv", "base64", "genericpath", "posixpath")
KINDS = ("line", "block")
MIN_CODE_CHARS = 10  # a masked line has at least this many non-space characters
BLOCK_LINES = (2, 8)  # a masked block's lines, first to last, inclusive
MAX_TOKENS = {"line": 48, "block": 160}
BLOCK_MAX_LINES = 12  # the stop rules' cap on a block suggestion (above the longest expected block)
N_CTX = 8192  # the default window (about 2,300 tokens) and a block's answer fit with room to spare


@dataclass(slots=True, frozen=True)
class Case:
    """One masked span of one module: the file is prefix + expected + suffix exactly. Lines are
    1-based and inclusive; `col` is the cursor's column (the first line's indentation)."""

    id: str
    kind: str  # line | block
    module: str
    path: str
    start_line: int
    end_line: int
    col: int
    prefix: str
    expected: str
    suffix: str

    def where(self) -> dict:
        """The case without the file's text: enough to find it again (module, lines, column)."""
        return {"id": self.id, "kind": self.kind, "module": self.module, "path": self.path,
                "start_line": self.start_line, "end_line": self.end_line, "col": self.col,
                "expected": self.expected}


# --------------------------------------------------------------------------- the held set


def module_sources(modules: tuple[str, ...] = MODULES) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{module: (path, source)} for the modules found as .py files in this Python's standard library
    folder, and the names of those skipped. The folder, not the import system: some modules are
    frozen into the interpreter (posixpath in 3.11) though their source is installed."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, tuple[str, str]] = {}
    skipped: list[str] = []
    for name in modules:
        path = stdlib / f"{name}.py"
        try:
            found[name] = (str(path), path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            skipped.append(name)
    return found, skipped


def _string_lines(source: str) -> set[int]:
    """Lines (1-based) that are inside a string spanning several lines, or hold nothing but a
    string (a docstring or a bare string statement): no code to complete there."""
    out: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            out.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return out


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _offsets(lines: list[str]) -> list[int]:
    """Where each line (of source.split("\\n")) starts in the source."""
    out, at = [], 0
    for line in lines:
        out.append(at)
        at += len(line) + 1
    return out


def line_candidates(source: str) -> list[int]:
    """The 1-based lines a line case can mask: code (not blank, not a comment, not in a string or
    a docstring) with at least MIN_CODE_CHARS non-space characters."""
    strings = _string_lines(source)
    out = []
    for n, line in enumerate(source.split("\n"), 1):
        text = line.strip()
        if n in strings or text.startswith("#") or len("".join(text.split())) < MIN_CODE_CHARS:
            continue
        out.append(n)
    return out


def block_candidates(source: str) -> list[tuple[int, int]]:
    """(first, last) 1-based lines of each body a block case can mask: a function's body after its
    docstring, or an if/for/while's body (not its else), starting on a line of its own, 2-8 lines."""
    lines = source.split("\n")
    out = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.For, ast.AsyncFor, ast.While)):
            continue
        body = list(node.body)
        is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if is_def and ast.get_docstring(node, clean=False) is not None:
            body = body[1:]  # the docstring is prose: the code after it is the block to complete
        if not body:
            continue
        first, last = body[0].lineno, body[-1].end_lineno or body[-1].lineno
        if first <= node.lineno or lines[first - 1][: body[0].col_offset].strip():
            continue  # `if x: y` on one line, or a body that does not start its line
        if BLOCK_LINES[0] <= last - first + 1 <= BLOCK_LINES[1]:
            out.add((first, last))
    return sorted(out)


def line_case(module: str, path: str, source: str, n: int) -> Case:
    """Line `n` masked after its indentation."""
    lines = source.split("\n")
    at = _offsets(lines)[n - 1]
    col = len(_indent(lines[n - 1]))
    start, end = at + col, at + len(lines[n - 1])
    return Case(f"{module}:{n}", "line", module, path, n, n, col, source[:start], source[start:end], source[end:])


def block_case(module: str, path: str, source: str, first: int, last: int) -> Case:
    """Lines first..last masked, from after the first line's indentation to the end of the last."""
    lines = source.split("\n")
    at = _offsets(lines)
    col = len(_indent(lines[first - 1]))
    start, end = at[first - 1] + col, at[last - 1] + len(lines[last - 1])
    return Case(f"{module}:{first}-{last}", "block", module, path, first, last, col,
                source[:start], source[start:end], source[end:])


def _spread(rng: random.Random, pools: dict[str, list], n: int) -> list[tuple[str, Any]]:
    """n picks from the modules' pools, round-robin over the modules (so that one large module
    does not make most of the set), each pool in a seeded random order; fewer if the pools run dry."""
    shuffled = {m: rng.sample(pool, len(pool)) for m, pool in pools.items()}
    picks: list[tuple[str, Any]] = []
    while len(picks) < n and any(shuffled.values()):
        for m in pools:
            if shuffled[m] and len(picks) < n:
                picks.append((m, shuffled[m].pop()))
    return picks


def build_cases(lines: int = 40, blocks: int = 20, seed: int = 0,
                modules: tuple[str, ...] = MODULES) -> tuple[list[Case], list[str]]:
    """The held set: `lines` line cases and `blocks` block cases, and the modules skipped. The same
    seed (on the same Python) gives the same cases."""
    sources, skipped = module_sources(modules)
    # each kind has its own RNG, so that asking for more blocks leaves the lines as they were
    line_picks = _spread(random.Random(f"lines-{seed}"),
                         {m: line_candidates(src) for m, (_, src) in sources.items()}, lines)
    block_picks = _spread(random.Random(f"blocks-{seed}"),
                          {m: block_candidates(src) for m, (_, src) in sources.items()}, blocks)
    cases = [line_case(m, sources[m][0], sources[m][1], n) for m, n in line_picks]
    cases += [block_case(m, sources[m][0], sources[m][1], a, b) for m, (a, b) in block_picks]
    return cases, skipped


# --------------------------------------------------------------------------- the metrics


def normalize(text: str, kind: str) -> str:
    """What exact match compares: a line stripped; a block's lines each stripped, blank ones dropped
    (indentation is the parse check's business, blank lines carry no code)."""
    if kind == "line":
        return text.strip()
    return "\n".join(s for s in (ln.strip() for ln in text.split("\n")) if s)


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: a null byte written by the model
        return False
    return True


def score(case: Case, got: str) -> dict:
    """The metrics of one suggestion `got` (the text inserted at the cursor) for `case`."""
    want, have = normalize(case.expected, case.kind), normalize(got, case.kind)
    return {"em": have == want, "parses": parses(case.prefix + got + case.suffix),
            "sim": difflib.SequenceMatcher(None, have, want, autojunk=False).ratio(), "empty": not got.strip()}


def summarize(results: list[dict]) -> list[dict]:
    """One row per (model, order, kind) over the per-case results (errors count as misses): the
    models and orders as they were run, the kinds in the order of KINDS."""
    first = {k: i for i, k in reversed(list(enumerate((r["model"], r["order"]) for r in results)))}
    keys = sorted({(r["model"], r["order"], r["kind"]) for r in results},
                  key=lambda k: (first[k[:2]], KINDS.index(k[2]) if k[2] in KINDS else len(KINDS), k[2]))
    rows = []
    for model, order, kind in keys:
        rs = [r for r in results if (r["model"], r["order"], r["kind"]) == (model, order, kind)]
        n, em = len(rs), sum(bool(r["em"]) for r in rs)
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        ci = wilson(em, n)
        rows.append({
            "model": model, "order": order, "kind": kind, "cases": n, "em": em,
            "em_rate": em / n if n else None, "em_ci95": list(ci) if ci else None,
            "parse_rate": sum(bool(r["parses"]) for r in rs) / n if n else None,
            "sim_mean": statistics.fmean(r["sim"] for r in rs) if n else None,
            "seconds_mean": statistics.fmean(secs) if secs else None,
            "seconds_median": statistics.median(secs) if secs else None,
            "empty": sum(bool(r["empty"]) for r in rs), "errors": sum(r.get("error") is not None for r in rs),
        })
    return rows


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class QualityConfig:
    lines: int = 40
    blocks: int = 20
    orders: tuple[str, ...] = ("spm", "psm")
    seed: int = 0
    prefix_chars: int | None = None  # None: engine/fim.py's default window, what users get
    suffix_chars: int | None = None
    n_ctx: int = N_CTX


def _suggest_case(suggester, case: Case, cfg: QualityConfig) -> dict:
    """One case from a cold cache: the suggestion's text, time and finish."""
    from pairline.engine.fim import PREFIX_CHARS, SUFFIX_CHARS, InlineRules, window

    prefix, suffix = case.prefix, case.suffix
    if cfg.prefix_chars is not None or cfg.suffix_chars is not None:
        # Cut here with the override; the suggester's own (default, larger) window then keeps it
        # whole. Step 1: the 32-line grid keeps a typist's prompt stable, which one request per case
        # does not need, and on a small window it would cut most of it away.
        prefix, suffix = window(prefix, suffix, cfg.prefix_chars or PREFIX_CHARS, cfg.suffix_chars or SUFFIX_CHARS,
                                step=1)
    rules = InlineRules(single_line=True) if case.kind == "line" else InlineRules(max_lines=BLOCK_MAX_LINES)
    suggester.engine.reset()  # cold: no KV kept from the case before, whichever it was
    t0 = time.perf_counter()
    sug = suggester.suggest(prefix, suffix, max_tokens=MAX_TOKENS[case.kind], rules=rules).run()
    return {"got": sug.text, "seconds": time.perf_counter() - t0, "first_s": sug.first_s,
            "finish_reason": sug.finish_reason, "prompt_tokens": sug.prompt_tokens,
            "prefill_s": sug.timings.prefill_s, "decode_s": sug.timings.decode_s}


def run_quality(model: str, *, orders: tuple[str, ...] = ("spm", "psm"), lines: int = 40, blocks: int = 20,
                runtime: str | None = None, seed: int = 0, log: Callable[[str], None] = print,
                prefix_chars: int | None = None, suffix_chars: int | None = None, n_ctx: int = N_CTX,
                engine=None) -> dict:
    """Measure `model`'s inline suggestions on the held set, per order; the JSON-ready result.
    `engine`: an Engine already loaded (its FIM orders are still read from its tokenizer)."""
    from pairline.assistant.suggest import LocalSuggester
    from pairline.bench.common import git_state, loadavg, machine_info
    from pairline.engine.fim import ORDERS, PREFIX_CHARS, SUFFIX_CHARS, WINDOW_STEP, fim_format
    from pairline.errors import PairlineError

    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise PairlineError(f"the FIM orders must be among {', '.join(ORDERS)}, got {', '.join(orders) or 'none'}")
    if (prefix_chars is not None and not 0 < prefix_chars <= PREFIX_CHARS) or \
            (suffix_chars is not None and not 0 < suffix_chars <= SUFFIX_CHARS):
        # the suggester cuts its default window after ours: a larger one would not be what was measured
        raise PairlineError(f"the window can only shrink: --prefix-chars 1..{PREFIX_CHARS}, "
                            f"--suffix-chars 1..{SUFFIX_CHARS}")
    cfg = QualityConfig(lines, blocks, tuple(orders), seed, prefix_chars, suffix_chars, n_ctx)
    cases, skipped = build_cases(lines, blocks, seed)
    notes = [f"module {m} not found as a .py file of this Python: skipped" for m in skipped]
    log(f"{len(cases)} cases ({sum(c.kind == 'line' for c in cases)} lines, "
        f"{sum(c.kind == 'block' for c in cases)} blocks) from {len({c.module for c in cases})} modules")

    if engine is None:
        from pairline.engine.load import load_engine

        log(f"loading {model}…")
        engine = load_engine(model, runtime=runtime, n_ctx=n_ctx)
    engine.prefix_store = None  # no KV state restored from disk: every case is prefilled from cold
    measured = list(dict.fromkeys(fim_format(engine.tokenizer, o).order for o in orders))
    if measured == ["prefix"] and list(orders) != ["prefix"]:
        notes.append(f"{model} has no FIM tokens: measured once in 'prefix' order (the text before the cursor "
                     f"alone), not as {', '.join(orders)}")
        log(notes[-1])

    results: list[dict] = []
    wall: dict[str, float] = {}  # each order's whole run, seconds (what a full run will cost)
    for order in measured:
        suggester = LocalSuggester(engine, order)
        t_order = time.perf_counter()
        for i, case in enumerate(cases, 1):
            row = {"model": model, "order": order, "case": case.id, "kind": case.kind, "expected": case.expected}
            try:
                row |= _suggest_case(suggester, case, cfg)
                row |= score(case, row["got"])
                row["error"] = None
            except PairlineError as e:  # e.g. a prompt over the context: a miss, said so
                row |= {"got": "", "seconds": None, "em": False, "parses": False, "sim": 0.0, "empty": True,
                        "error": str(e)}
            results.append(row)
            log(f"{model} · {order} · {i}/{len(cases)} {case.id}: {'EM' if row['em'] else 'miss'}, "
                f"sim {row['sim']:.2f}, {row['seconds'] or 0:.1f} s  {row['got'].strip()[:60]!r}")
        wall[order] = time.perf_counter() - t_order
        log(f"{model} · {order}: {wall[order]:.0f} s for {len(cases)} cases")
        suggester.close()

    return {
        "bench": "fim-quality",
        "model": model,
        "orders_asked": list(orders),
        "orders": measured,
        "config": {**asdict(cfg), "orders": list(orders),
                   "prefix_chars_used": prefix_chars or PREFIX_CHARS, "suffix_chars_used": suffix_chars or SUFFIX_CHARS,
                   "window_step": 1 if prefix_chars or suffix_chars else WINDOW_STEP,
                   "max_tokens": MAX_TOKENS, "block_max_lines": BLOCK_MAX_LINES, "modules": list(MODULES),
                   "python": sys.version.split()[0]},
        "notes": notes,
        "skipped_modules": skipped,
        "cases": [c.where() for c in cases],
        "results": results,
        "summary": summarize(results),
        "order_wall_s": wall,
        "runtime": type(engine.runtime).__name__,  # per-case seconds depend on it as much as on the CPU
        "load_s": engine.load_s,
        "machine": {**machine_info(), "loadavg": loadavg()},
        "git": git_state(),
    }


def print_quality(result: dict, console=None) -> None:
    """The summary as a rich table."""
    from pairline.bench.common import console as make_console
    from pairline.bench.common import fmt, table

    console = console or make_console(piped_width=160)
    t = table(f"pairline bench fim --quality ({result['config']['python']} stdlib)",
              ("model", "order", "kind", "cases", "exact match", "95% CI", "parses", "similarity",
               "s / case (mean)", "s / case (median)", "empty", "errors"), left=("model", "order", "kind"))
    for r in result["summary"]:
        ci = r["em_ci95"]
        t.add_row(r["model"], r["order"], r["kind"], str(r["cases"]), fmt(r["em_rate"], "{:.0%}"),
                  f"{ci[0]:.0%}–{ci[1]:.0%}" if ci else "—", fmt(r["parse_rate"], "{:.0%}"),
                  fmt(r["sim_mean"], "{:.2f}"), fmt(r["seconds_mean"], "{:.2f}"), fmt(r["seconds_median"], "{:.2f}"),
                  str(r["empty"]), str(r["errors"]))
    console.print(t)
    for note in result["notes"]:
        console.print(f"note: {note}", highlight=False)
    console.print("exact match: the suggestion equals the masked text, whitespace-stripped (a block line by line, "
                  "blank lines dropped); parses: the file with the suggestion in place parses; similarity: "
                  "difflib's ratio to the masked text, mean; each case from a cold cache.", highlight=False)


def add_quality_args(parser) -> None:
    """The options of the quality half of `pairline bench fim` (the lead's cli.py adds --quality)."""
    parser.add_argument("--lines", type=int, default=40, help="masked single lines (default 40)")
    parser.add_argument("--blocks", type=int, default=20, help="masked blocks of 2-8 lines (default 20)")
    parser.add_argument("--orders", default="spm,psm",
                        help="comma-separated FIM orders, of spm, psm, prefix (default spm,psm; a model with no "
                             "FIM tokens is measured in prefix order alone)")
    parser.add_argument("--seed", type=int, default=0, help="picks the held set's cases (default 0)")
    parser.add_argument("--prefix-chars", type=int, default=None,
                        help="characters of the file before the cursor a suggestion reads, at most the editor's "
                             "(default: the editor's window; smaller runs faster on a CPU)")
    parser.add_argument("--suffix-chars", type=int, default=None,
                        help="characters after the cursor a suggestion reads, at most the editor's "
                             "(default: the editor's)")
