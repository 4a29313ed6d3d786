"""Never a silent deletion, with real weights: whatever a real model writes for the issue's rename,
`pairline edit` either writes a whole file that still parses and defines what it used, or nothing.

The models are weak at edits (SmolLM2 especially), so these tests do not ask for a correct rename:
they check that the outcome is never a fragment, and that the exit code says what happened."""

from __future__ import annotations

import json

import pytest

from pairline.assistant.check import python_problems
from pairline.assistant.deletions import Source, read_intent, unasked_losses
from tests.test_edit_safety import FIVE, RENAME, SHOP


def _edit(tmp_path, monkeypatch, capsys, model: str, name: str, text: str, instruction: str, *extra: str):
    from pairline.cli import main

    monkeypatch.chdir(tmp_path)
    f = tmp_path / name
    f.write_text(text)
    code = main(["edit", name, "-m", instruction, "--model", model, "--json", "--no-commit", *extra])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return code, f.read_text(), events


def assert_never_a_fragment(before: str, after: str, instruction: str, code: int, events: list[dict]) -> None:
    done = events[-1]
    assert done["type"] == "done" and done["exit_code"] == code and code in {0, 1, 3}, done
    if code != 0:
        assert after == before, "a refused or failed edit wrote something"
        return
    src = Source(before, True)
    lost = unasked_losses(src, Source(after, True), read_intent(instruction, src))
    assert lost == [], f"written with lines lost: {[x.where() for x in lost]}\n{after}"
    assert python_problems("f.py", before, after) == [], after
    # every definition of the original is still there, under its name or a new one
    assert after.count("def ") >= before.count("def "), after


@pytest.mark.slow
@pytest.mark.parametrize(("name", "text"), [("five.py", FIVE), ("shop.py", SHOP)], ids=["5", "12"])
def test_real_smollm2_rewrite_is_never_a_fragment(tmp_path, monkeypatch, capsys, smollm2_gguf, name, text):
    monkeypatch.setenv("PAIRLINE_THREADS", "1")
    instruction = RENAME if name == "shop.py" else "Rename the function b to second everywhere in this file."
    code, after, events = _edit(tmp_path, monkeypatch, capsys, "smollm2-135m", name, text, instruction, "--rewrite")
    assert_never_a_fragment(text, after, instruction, code, events)


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "mode"), [((), "blocks"), (("--rewrite",), "rewrite")], ids=["auto", "rewrite"])
def test_real_qwen05_the_issue_rename_is_never_a_fragment(tmp_path, monkeypatch, capsys, qwen05_gguf, extra, mode):
    """The issue's command on the default model: `pairline edit shop.py -m "Rename ..."` (auto mode:
    blocks, for RENAME; the issue's fragment came from a whole-file rewrite, now a lazy one)."""
    code, after, events = _edit(tmp_path, monkeypatch, capsys, "qwen2.5-coder-0.5b", "shop.py", SHOP, RENAME, *extra)
    assert events[0]["mode"] == mode
    assert_never_a_fragment(SHOP, after, RENAME, code, events)


@pytest.mark.slow
def test_real_qwen05_lazy_rewrite_of_a_167_line_file_writes_a_region(tmp_path, monkeypatch, capsys, qwen05_gguf):
    """A lazy rewrite on real weights (auto mode on one file): the answer is a region around the
    change, far shorter than the file, and the file around it is kept line for line, whatever the
    model wrote inside it."""
    from collections import Counter

    from pairline.bench.edit_tasks import TASKS_DIR

    text = (TASKS_DIR.parent / "sched.py.txt").read_text()
    instruction = ("Add a one-line docstring to the class `scheduler` saying that it is a generally useful "
                   "event scheduler. Change nothing else.")
    code, after, events = _edit(tmp_path, monkeypatch, capsys, "qwen2.5-coder-0.5b", "sched.py", text, instruction)
    done = events[-1]
    assert events[0]["mode"] == "rewrite" and done["regions"] >= 1
    assert done["tokens"] < len(text) // 4 // 2, done  # far less than the file (~4 characters a token)
    assert code in (0, 1, 3), done
    if code == 0:
        # nothing of the file was lost: every old line is still there, and it parses
        assert not Counter(text.splitlines()) - Counter(after.splitlines())
        compile(after, "sched.py", "exec")
    else:
        assert after == text  # refused or unchanged: the file untouched
