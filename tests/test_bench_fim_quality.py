"""pairline bench fim --quality: the held set is real code cut where it should be (lines of code,
whole blocks, the file given back exactly), the metrics score hand-written suggestions as they
should, and one small real run with Qwen2.5-Coder 0.5B goes end to end."""

from __future__ import annotations

import ast
import json
import tokenize
from pathlib import Path

import pytest

from pairline.bench import fim_quality as fq

CASES, SKIPPED = fq.build_cases(lines=24, blocks=12, seed=3)


def _source(case: fq.Case) -> str:
    return Path(case.path).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the held set


def test_the_set_is_deterministic_and_spread_over_modules():
    again, _ = fq.build_cases(lines=24, blocks=12, seed=3)
    assert [c.where() for c in again] == [c.where() for c in CASES]
    other, _ = fq.build_cases(lines=24, blocks=12, seed=4)
    assert [c.id for c in other] != [c.id for c in CASES]
    assert [c.kind for c in CASES].count("line") == 24 and [c.kind for c in CASES].count("block") == 12
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.module for c in CASES}) >= 8  # round-robin: no single module makes the set
    assert not SKIPPED  # every module of the list is a .py file of this Python
    # more blocks asked leaves the lines as they were (each kind has its own RNG)
    more, _ = fq.build_cases(lines=24, blocks=20, seed=3)
    assert [c.id for c in more if c.kind == "line"] == [c.id for c in CASES if c.kind == "line"]


def test_a_missing_module_is_skipped_and_named():
    cases, skipped = fq.build_cases(lines=3, blocks=1, modules=("textwrap", "no_such_module_here"))
    assert skipped == ["no_such_module_here"]
    assert {c.module for c in cases} == {"textwrap"}


def test_the_expected_middle_reinserted_gives_the_file_back():
    for c in CASES:
        src = _source(c)
        assert c.prefix + c.expected + c.suffix == src, c.id
        lines = src.split("\n")
        # the cursor sits after the first line's indentation; the middle runs to its last line's end
        assert c.prefix.count("\n") == c.start_line - 1, c.id
        assert c.prefix.split("\n")[-1] == lines[c.start_line - 1][: c.col] and not c.prefix.split("\n")[-1].strip()
        assert c.suffix.startswith("\n") or c.suffix == "", c.id
        assert c.expected == "\n".join(lines[c.start_line - 1 : c.end_line])[c.col :], c.id
        assert c.expected.strip() and not c.expected[0].isspace(), c.id


def test_lines_are_real_code():
    for c in (c for c in CASES if c.kind == "line"):
        src = _source(c)
        assert c.start_line == c.end_line and "\n" not in c.expected
        assert not c.expected.startswith("#") and len("".join(c.expected.split())) >= fq.MIN_CODE_CHARS, c.id
        # not inside a string or a docstring: no string token covering the line spans several lines
        for tok in tokenize.generate_tokens(iter(src.splitlines(keepends=True)).__next__):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                assert not tok.start[0] <= c.start_line <= tok.end[0], c.id
        assert not (c.expected.startswith(('"""', "'''")) and c.expected.endswith(('"""', "'''"))), c.id


def test_blocks_are_whole_bodies():
    for c in (c for c in CASES if c.kind == "block"):
        tree = ast.parse(_source(c))
        assert fq.BLOCK_LINES[0] <= c.end_line - c.start_line + 1 <= fq.BLOCK_LINES[1], c.id
        owners = []
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if not isinstance(body, list) or not body or isinstance(node, ast.Module):
                continue
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node, clean=False) is not None:
                body = body[1:]
            if body and body[0].lineno == c.start_line and body[-1].end_lineno == c.end_line:
                owners.append(node)
        assert owners and isinstance(owners[0], (ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.For,
                                                 ast.AsyncFor, ast.While)), c.id
        # the block alone is whole statements (under an `if` at its own indentation)
        ast.parse("if True:\n" + " " * c.col + c.expected)


def test_candidates_skip_docstrings_comments_and_short_lines():
    src = '''"""Module doc
spanning lines."""

# a comment that is long enough to count
def f(a, b):
    """Doc of f, one line, long enough."""
    total = a + b + 1
    x = 1
    text = """a string
    spanning lines = 1"""
    if total > 10:
        total -= 100
        return total
    return total * 2
'''
    lines = src.split("\n")
    got = [lines[n - 1].strip() for n in fq.line_candidates(src)]
    assert got == ["def f(a, b):", "total = a + b + 1", "if total > 10:", "total -= 100", "return total",
                   "return total * 2"]
    # f's body after its docstring is 8 lines, the if's 2
    assert fq.block_candidates(src) == [(7, 14), (12, 13)]


# --------------------------------------------------------------------------- the metrics


def _case(kind: str, expected: str, prefix: str = "def f(x):\n    ", suffix: str = "\n") -> fq.Case:
    return fq.Case("t:1", kind, "t", "t.py", 2, 2 + expected.count("\n"), 4, prefix, expected, suffix)


def test_exact_match_and_parse_on_hand_written_suggestions():
    line = _case("line", "return x + 1")
    assert fq.score(line, "return x + 1  ") == {"em": True, "parses": True, "sim": 1.0, "empty": False}
    near = fq.score(line, "return x + 2")
    assert not near["em"] and near["parses"] and 0.8 < near["sim"] < 1.0
    bad = fq.score(line, "return (x +")
    assert not bad["em"] and not bad["parses"]
    assert fq.score(line, "  ")["empty"] and not fq.score(line, "  ")["em"]

    block = _case("block", "y = x * 2\n    return y")
    # each line stripped: indentation is not part of exact match (the parse says whether it fits)
    assert fq.score(block, "y = x * 2\n    return y")["em"]
    misindented = fq.score(block, "y = x * 2\n        return y")
    assert misindented["em"] and not misindented["parses"]
    assert fq.score(block, "y = x * 2\n\n    return y\n")["em"]  # blank lines carry no code
    partial = fq.score(block, "y = x * 2")
    assert not partial["em"] and partial["parses"] and 0.3 < partial["sim"] < 1.0


def test_wilson_interval():
    assert fq.wilson(0, 0) is None
    lo, hi = fq.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = fq.wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    lo, hi = fq.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


def test_summary_counts_per_order_and_kind():
    def r(order, kind, em, parses, sim, s, empty=False, error=None):
        return {"model": "m", "order": order, "kind": kind, "em": em, "parses": parses, "sim": sim, "seconds": s,
                "empty": empty, "error": error}

    rows = fq.summarize([r("spm", "block", False, True, 0.5, 2.0), r("spm", "line", True, True, 1.0, 1.0),
                         r("spm", "line", False, False, 0.0, 3.0, empty=True),
                         r("spm", "line", False, False, 0.0, None, empty=True, error="too long"),
                         r("psm", "line", True, True, 1.0, 1.0)])
    # as run: spm before psm; line before block
    assert [(x["order"], x["kind"]) for x in rows] == [("spm", "line"), ("spm", "block"), ("psm", "line")]
    spm = rows[0]
    assert spm["cases"] == 3 and spm["em"] == 1 and spm["em_rate"] == pytest.approx(1 / 3)
    assert spm["em_ci95"] == pytest.approx(list(fq.wilson(1, 3)))
    assert spm["parse_rate"] == pytest.approx(1 / 3) and spm["sim_mean"] == pytest.approx(1 / 3)
    assert spm["seconds_mean"] == 2.0 and spm["seconds_median"] == 2.0  # the errored case has no time
    assert spm["empty"] == 2 and spm["errors"] == 1


def test_add_quality_args():
    import argparse

    p = argparse.ArgumentParser()
    fq.add_quality_args(p)
    a = p.parse_args(["--lines", "3", "--blocks", "1", "--orders", "psm", "--seed", "7", "--prefix-chars", "900"])
    assert (a.lines, a.blocks, a.orders, a.seed, a.prefix_chars, a.suffix_chars) == (3, 1, "psm", 7, 900, None)


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_real_run_qwen05():
    from pairline.models.fetch import is_pulled

    if not is_pulled("qwen2.5-coder-0.5b"):
        pytest.skip("qwen2.5-coder-0.5b is not in the pairline cache (pairline pull qwen2.5-coder-0.5b)")
    logs: list[str] = []
    # a small window: the editor's (750-2,200 tokens here) costs 15-90 s a case on a busy 2-core CPU
    r = fq.run_quality("qwen2.5-coder-0.5b", orders=("psm",), lines=2, blocks=1, prefix_chars=600, runtime="llamacpp",
                       suffix_chars=200, log=logs.append)
    json.dumps(r)  # JSON-ready
    assert r["orders"] == ["psm"] and r["config"]["prefix_chars_used"] == 600 and r["config"]["window_step"] == 1
    assert [c["kind"] for c in r["cases"]] == ["line", "line", "block"]
    assert len(r["results"]) == 3 and {x["case"] for x in r["results"]} == {c["id"] for c in r["cases"]}
    for x in r["results"]:
        assert x["error"] is None and isinstance(x["got"], str) and isinstance(x["em"], bool)
        assert 0.0 <= x["sim"] <= 1.0 and 0 < x["seconds"] < 120 and 0 < x["prompt_tokens"] < 600
        assert x["finish_reason"] in ("stop", "length")
    assert [(s["order"], s["kind"], s["cases"]) for s in r["summary"]] == [("psm", "line", 2), ("psm", "block", 1)]
    for s in r["summary"]:
        lo, hi = s["em_ci95"]
        assert 0.0 <= lo <= s["em_rate"] <= hi <= 1.0 and 0.0 <= s["parse_rate"] <= 1.0
        assert 0.0 <= s["sim_mean"] <= 1.0 and s["seconds_median"] > 0 and 0 <= s["empty"] <= s["cases"]
    assert r["machine"]["cores"] and r["order_wall_s"]["psm"] > 0 and any("psm · 3/3" in line for line in logs)
