"""pairline bench edit: the tasks are sound (their checks fail before and pass after a correct
edit), the harness scores a scripted model, and one real SmolLM2 run goes end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pairline.assistant import prompts
from pairline.assistant.edits import DIVIDER, HEAD, TAIL
from pairline.bench import edit as bench
from tests.assistant_helpers import ScriptedClient

TASKS = bench.load_tasks()


def reference_answer(task: bench.Task) -> str:
    """The task's correct edit as the model would write it (primed: the first block continues the primer)."""
    out = prompts.primer(prompts.prompt_for("qwen2"), task.path)
    for i, (search, replace) in enumerate(task.reference):
        if i:
            out += f"{task.path}\n```python\n{HEAD}\n"
        out += f"{search}{DIVIDER}\n{replace}{TAIL}\n```\n"
    return out


def test_tasks_cover_the_kinds_and_sizes():
    assert {t.kind for t in TASKS} == {"rename", "add-parameter", "fix-bug", "docstring"}
    for t in TASKS:
        assert 50 <= t.source.count("\n") <= 400, t.name
        assert t.reference, t.name


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_check_fails_before_and_passes_after_the_reference_edit(task, tmp_path):
    (tmp_path / task.path).write_text(task.source)
    ok, _ = bench.run_check(task, tmp_path)
    assert not ok, f"{task.name}: the check passes on the unedited file"
    text = task.source
    for search, replace in task.reference:
        assert text.count(search) == 1, (task.name, search)
        text = text.replace(search, replace)
    (tmp_path / task.path).write_text(text)
    ok, output = bench.run_check(task, tmp_path)
    assert ok, f"{task.name}: {output}"


def test_harness_scores_a_scripted_model(tmp_path):
    picked = ("rename-insort", "fix-commonprefix")
    tasks = [t for t in TASKS if t.name in picked]
    # blocks: the reference edit; rewrite: the file unchanged (applies nothing)
    answers = [reference_answer(t) for t in tasks] + [f"```python\n{t.source}```\n" for t in tasks]
    client = ScriptedClient(answers)
    result = bench.run_edit_bench(["scripted"], ("blocks", "rewrite"), picked, log=lambda m: None,
                                  open_client=lambda name: client)
    by = {(r.mode, r.task): r for r in result.results}
    assert all(by["blocks", n].correct and by["blocks", n].well_formed for n in picked)
    assert all(by["rewrite", n].status == "unchanged" and not by["rewrite", n].correct for n in picked)
    rows = {r["mode"]: r for r in bench.summarize(result.results)}
    assert rows["blocks"]["correct_pct"] == 100.0 and rows["rewrite"]["correct_pct"] == 0.0
    path = bench.write_json(result, tmp_path / "out.json")
    data = json.loads(path.read_text())
    assert data["summary"] and len(data["results"]) == 4


def test_unknown_task_and_mode():
    from pairline.errors import PairlineError

    with pytest.raises(PairlineError, match="unknown edit task"):
        bench.load_tasks(("nope",))
    with pytest.raises(PairlineError, match="unknown mode"):
        bench.run_edit_bench(["x"], ("diff",), log=lambda m: None, open_client=lambda n: None)


@pytest.mark.slow
def test_real_smollm2_one_task(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_THREADS", "1")  # steady on a shared 2-core machine
    result = bench.run_edit_bench(["smollm2-135m"], ("blocks",), ("fix-bisect-right",), n_ctx=2048, max_tokens=32,
                                  log=lambda m: None)
    (r,) = result.results
    assert r.model == "smollm2-135m" and r.mode == "blocks" and r.tokens > 0
    assert r.status in {"changed", "unchanged", "malformed"}
    assert r.correct is (r.status == "changed" and r.correct)
    assert Path(bench.write_json(result, tmp_path / "r.json")).is_file()
