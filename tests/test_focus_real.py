"""A focused edit with real weights: `pairline edit` on the real-time default model shows it one
function of a file and merges its answer back. Numerics differ by CPU, so the test does not ask for
a right answer: it checks that the turn was focused, and that whatever was written changed the named
function only (every other line of the file is the original's)."""

from __future__ import annotations

import ast
import difflib
import json

import pytest

from tests.test_focus import SRC


@pytest.mark.slow
def test_real_qwen05_focused_edit_touches_only_the_named_function(tmp_path, monkeypatch, capsys, qwen05_gguf):
    from pairline.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes.py").write_text(SRC)
    instruction = "Add type hints to `grow`: `r` is a `float`, and it returns a `float`. Change nothing else."
    code = main(["edit", "shapes.py", "-m", instruction, "--model", "qwen2.5-coder-0.5b", "--json", "--no-commit"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    done = events[-1]
    assert done["type"] == "done" and done["mode"] == "focus" and code in {0, 1, 3}, done
    after = (tmp_path / "shapes.py").read_text()
    if code != 0:
        assert after == SRC
        return
    ast.parse(after)
    grow = next(n for n in ast.parse(SRC).body if getattr(n, "name", "") == "grow")
    inside = range(grow.lineno - 1, grow.end_lineno)
    ops = difflib.SequenceMatcher(None, SRC.splitlines(), after.splitlines(), autojunk=False).get_opcodes()
    touched = [i for op, a0, a1, _, _ in ops if op != "equal" for i in range(a0, max(a1, a0 + 1))]
    assert touched and all(i in inside for i in touched), after
