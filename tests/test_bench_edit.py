"""pairline bench edit: the tasks are sound (their checks fail before and pass after a correct
edit, and the edit's own check lets the correct edit through), the harness scores a scripted model
on every task, the summaries and tables add up, and one real SmolLM2 run goes end to end."""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from pairline.assistant import check, prompts
from pairline.assistant.edits import DIVIDER, HEAD, TAIL
from pairline.bench import edit as bench
from pairline.bench import edit_tasks
from tests.assistant_helpers import ScriptedClient

TASKS = bench.load_tasks()
BY_NAME = {t.name: t for t in TASKS}
# the first eight tasks, kept as they were so that results before and after compare
FIRST_EIGHT = ("rename-insort", "rename-commonprefix", "param-exists", "param-scheduler-name", "fix-bisect-right",
               "fix-commonprefix", "doc-scheduler", "doc-check-arg-types")


def reference_answer(task: bench.Task) -> str:
    """The task's correct edit as the model would write it (primed: the first block continues the
    primer); a block per reference pair, each naming its file."""
    blocks = [(f.path, s, r) for f in task.files for s, r in f.reference]
    out = prompts.primer(prompts.prompt_for("qwen2"), blocks[0][0])
    for i, (path, search, replace) in enumerate(blocks):
        if i:
            out += f"{path}\n```python\n{HEAD}\n"
        out += f"{search}{DIVIDER}\n{replace}{TAIL}\n```\n"
    return out


def _before_and_after(task: bench.Task) -> tuple[tuple[bool, str], tuple[bool, str]]:
    with tempfile.TemporaryDirectory() as before, tempfile.TemporaryDirectory() as after:
        edit_tasks.write_files(task, Path(before))
        edit_tasks.write_files(task, Path(after), edit_tasks.reference_texts(task))
        return bench.run_check(task, Path(before)), bench.run_check(task, Path(after))


@cache
def check_results() -> dict[str, tuple[tuple[bool, str], tuple[bool, str]]]:
    """Every task's check on the unedited files and on the reference edit, run a few at a time
    (each is a fresh Python process)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(BY_NAME, pool.map(_before_and_after, TASKS), strict=True))


# --------------------------------------------------------------------------- the task set


def test_tasks_cover_the_kinds_and_sizes():
    assert len(TASKS) >= 40 and len(BY_NAME) == len(TASKS)  # names are unique
    assert set(FIRST_EIGHT) <= set(BY_NAME)
    kinds = [t.kind for t in TASKS]
    assert set(kinds) == set(bench.KINDS)
    for kind in bench.KINDS:
        assert kinds.count(kind) >= (5 if kind == "two-file" else 3), kind
    for t in TASKS:
        assert (len(t.files) == 2) == (t.kind == "two-file"), t.name
        assert len({f.path for f in t.files}) == len(t.files), t.name
        for f in t.files:
            assert 50 <= f.source.count("\n") <= 400, (t.name, f.path)
        assert t.instruction.strip() and t.check.strip(), t.name
        assert any(f.reference for f in t.files), t.name


def test_references_are_whole_lines_found_once():
    """Each search text occurs exactly once (in its file as edited so far), every pair is whole
    lines (so it is a valid search/replace block), and a two-file task changes both files."""
    for t in TASKS:
        new = edit_tasks.reference_texts(t)  # raises unless every search occurs exactly once
        for f in t.files:
            assert new[f.path] != f.source, (t.name, f.path)
            text = f.source
            for search, replace in f.reference:
                at = text.index(search)
                assert at == 0 or text[at - 1] == "\n", (t.name, "starts mid-line", search[:60])
                assert search.endswith("\n") and (not replace or replace.endswith("\n")), (t.name, search[:60])
                text = text.replace(search, replace)


def test_renames_are_multi_site():
    """The new rename tasks change the name everywhere: three or more places."""
    for t in TASKS:
        if t.kind == "rename" and t.name not in FIRST_EIGHT:
            assert "everywhere" in t.instruction and len(t.reference) >= 3, t.name


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_check_fails_before_and_passes_after_the_reference_edit(task):
    (ok_before, out_before), (ok_after, out_after) = check_results()[task.name]
    assert not ok_before, f"{task.name}: the check passes on the unedited file(s)"
    assert ok_after, f"{task.name}: the check fails on the reference edit: {out_after}"


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_the_edit_check_lets_every_reference_through(task):
    """`pairline edit` reviews every edit before writing it (lines lost, names left undefined): the
    reference edit, which is correct, must pass, or no model could score on the task."""
    new = edit_tasks.reference_texts(task)
    reviews = check.review_files([(f.path, f.source, new[f.path]) for f in task.files], task.instruction)
    assert [e for r in reviews for e in r.errors] == []


def test_load_tasks_by_name_and_kind():
    from pairline.errors import PairlineError

    assert [t.name for t in bench.load_tasks(kinds=("two-file",))] == [t.name for t in TASKS if t.kind == "two-file"]
    assert [t.name for t in bench.load_tasks(("rename-insort", "fix-commonprefix"), ("rename",))] == ["rename-insort"]
    with pytest.raises(PairlineError, match="unknown edit task"):
        bench.load_tasks(("nope",))
    with pytest.raises(PairlineError, match="unknown edit task kind"):
        bench.load_tasks(kinds=("nope",))


def test_reference_tokens_count_the_changed_lines():
    """A changed line counts on both sides; unchanged lines do not count."""
    task = BY_NAME["fix-commonprefix"]  # one line changed
    removed, added = edit_tasks.changed_lines(task.source, edit_tasks.reference_texts(task)[task.path])
    assert removed == ["            return s1[:i + 1]\n"] and added == ["            return s1[:i]\n"]
    assert edit_tasks.reference_tokens(task, len) == len(removed[0]) + len(added[0])
    two = BY_NAME["two-file-rename-filter"]  # two lines in each file
    assert edit_tasks.reference_tokens(two, lambda text: text.count("\n")) == 8


def test_a_check_cannot_import_the_edited_file_by_its_plain_name(tmp_path):
    """The task's folder is off sys.path: an edited `glob.py` there never stands in for the
    standard library's glob (which other modules import); `load(name, as_name)` is the way in."""
    (tmp_path / "glob.py").write_text("raise SystemExit('the edited file was imported')\n")
    (tmp_path / "user.py").write_text("import glob\nVALUE = glob.VALUE\n")
    task = bench.Task("t", "rename", [], "x", "import glob\nassert hasattr(glob, 'iglob')")
    assert bench.run_check(task, tmp_path) == (True, "")
    task.check = "load('glob.py', 'glob')"
    assert bench.run_check(task, tmp_path)[0] is False
    (tmp_path / "glob.py").write_text("VALUE = 42\n")
    task.check = "load('glob.py', 'glob')\nassert load('user.py').VALUE == 42"
    assert bench.run_check(task, tmp_path) == (True, "")


# --------------------------------------------------------------------------- the harness


def test_harness_scores_a_scripted_model(tmp_path):
    picked = ("rename-insort", "fix-commonprefix", "two-file-rename-filter")
    tasks = [BY_NAME[n] for n in picked]
    # blocks: the reference edit; rewrite: the file unchanged (applies nothing), twice (it goes back
    # once as "nothing changed"); the two-file task is not run as a rewrite
    answers = [reference_answer(t) for t in tasks] + [f"```python\n{t.source}```\n" for t in tasks[:2] for _ in (1, 2)]
    client = ScriptedClient(answers)
    result = bench.run_edit_bench(["scripted"], ("blocks", "rewrite"), picked, log=lambda m: None,
                                  open_client=lambda name: client)
    by = {(r.mode, r.task): r for r in result.results}
    assert set(by) == {("blocks", n) for n in picked} | {("rewrite", n) for n in picked[:2]}
    assert result.skipped == ["scripted · rewrite · two-file-rename-filter: a rewrite takes one file"]
    assert all(by["blocks", n].correct and by["blocks", n].well_formed for n in picked)
    assert all(by["rewrite", n].status == "unchanged" and not by["rewrite", n].correct for n in picked[:2])
    two = by["blocks", "two-file-rename-filter"]
    assert two.files == 2 and two.kind == "two-file"
    assert two.file_tokens == sum(client.count_tokens(f.source) for f in tasks[2].files)
    assert two.reference_tokens == edit_tasks.reference_tokens(tasks[2], client.count_tokens) > 0
    assert two.tokens_vs_file == two.tokens / two.file_tokens
    assert two.tokens_vs_reference == two.tokens / two.reference_tokens
    rows = {r["mode"]: r for r in bench.summarize(result.results)}
    assert rows["blocks"]["correct_pct"] == 100.0 and rows["rewrite"]["correct_pct"] == 0.0
    assert rows["blocks"]["tasks"] == 3 and rows["rewrite"]["tasks"] == 2
    assert rows["rewrite"]["median_time_to_applied_s"] is None  # nothing applied
    kinds = [(r["mode"], r["kind"], r["tasks"], r["correct_pct"]) for r in bench.summarize_kinds(result.results)]
    assert kinds == [("blocks", "rename", 1, 100.0), ("blocks", "fix-bug", 1, 100.0), ("blocks", "two-file", 1, 100.0),
                     ("rewrite", "rename", 1, 0.0), ("rewrite", "fix-bug", 1, 0.0)]
    path = bench.write_json(result, tmp_path / "out.json")
    data = json.loads(path.read_text())
    assert data["summary"] and len(data["by_kind"]) == 5 and len(data["results"]) == 5
    saved = next(r for r in data["results"] if r["task"] == "two-file-rename-filter")
    assert saved["applied"] and saved["time_to_applied_s"] == saved["time_to_edit_s"]
    assert saved["tokens_vs_reference"] == pytest.approx(two.tokens_vs_reference)


def test_a_scripted_model_that_writes_the_reference_gets_every_task_right():
    """Every reference, written as search/replace blocks, goes through the whole `pairline edit`
    path (parse, apply, the edit's check) and passes the task's check."""
    client = ScriptedClient([reference_answer(t) for t in TASKS])
    result = bench.run_edit_bench(["scripted"], ("blocks",), log=lambda m: None, open_client=lambda name: client)
    wrong = {r.task: (r.status, r.check_output) for r in result.results if not r.correct}
    assert wrong == {} and len(result.results) == len(TASKS)


def test_a_request_that_fails_is_an_error_and_the_run_goes_on():
    from pairline.errors import PairlineError

    class FirstDoesNotFit(ScriptedClient):
        failed = False

        def stream(self, messages, **kw):
            if not self.failed:
                self.failed = True
                raise PairlineError("the prompt has 9000 tokens; the context holds 4096 (raise --ctx)")
            return super().stream(messages, **kw)

    picked = ("rename-insort", "fix-commonprefix")
    client = FirstDoesNotFit([reference_answer(BY_NAME[picked[1]])])
    result = bench.run_edit_bench(["scripted"], ("blocks",), picked, log=lambda m: None, open_client=lambda n: client)
    first, second = result.results
    assert (first.status, first.correct, first.tokens) == ("error", False, 0) and "raise --ctx" in first.check_output
    assert second.status == "changed" and second.correct


def test_print_summary_has_a_table_per_mode_and_per_kind():
    from rich.console import Console

    def result(task, mode, *, correct, tokens=40, accepted=10):
        t = BY_NAME[task]
        return bench.TaskResult(model="m", mode=mode, task=task, kind=t.kind, status="changed" if correct else
                                "malformed", well_formed=True, retried=False, correct=correct, time_to_edit_s=2.0,
                                ttft_s=0.5, tokens=tokens, decode_tok_s=20.0, effective_tok_s=18.0,
                                accepted_draft_tokens=accepted, file_tokens=400, reference_tokens=20)

    out = bench.EditBenchResult("cmd", {}, [result("rename-insort", "blocks", correct=True),
                                            result("fix-commonprefix", "blocks", correct=False),
                                            result("rename-insort", "rewrite", correct=True, tokens=400, accepted=380)])
    rows = {r["mode"]: r for r in bench.summarize(out.results)}
    assert rows["blocks"]["applied_pct"] == 50.0 and rows["blocks"]["median_time_to_applied_s"] == 2.0
    assert rows["blocks"]["median_tokens_vs_file"] == 0.1 and rows["blocks"]["median_tokens_vs_reference"] == 2.0
    assert rows["blocks"]["accepted_draft_tokens"] == 20 and rows["blocks"]["accepted_pct"] == 25.0
    assert rows["rewrite"]["median_tokens_vs_file"] == 1.0 and rows["rewrite"]["accepted_pct"] == 95.0
    console = Console(record=True, width=250)
    bench.print_summary(out, console)
    text = console.export_text()
    assert "pairline bench edit" in text and "per kind" in text
    assert "fix-bug" in text and "rename" in text and "95%" in text and "20.0" in text


def test_unknown_mode_and_empty_selection():
    from pairline.errors import PairlineError

    with pytest.raises(PairlineError, match="unknown mode"):
        bench.run_edit_bench(["x"], ("diff",), log=lambda m: None, open_client=lambda n: None)
    with pytest.raises(PairlineError, match="no edit task"):
        bench.run_edit_bench(["x"], ("blocks",), ("rename-insort",), kinds=("fix-bug",), log=lambda m: None,
                             open_client=lambda n: None)


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
