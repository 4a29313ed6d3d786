"""`pairline eval agent`: every task's data (the original repository fails its visible and hidden
tests, the reference passes both), the harness with fake tiers (scoring, hidden tests never in the
tier's copy, tests a tier edits put back, the JSON and the plot), bad input on the command line, and
one run on SmolLM2's real weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pairline.bench import agent_eval as ae
from pairline.bench.agent_tasks import (
    KINDS,
    SUFFIX,
    TASKS_DIR,
    apply_reference,
    expected_tests,
    load_tasks,
    score,
    task_names,
    write_repo,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = task_names()


# --------------------------------------------------------------------------- the task set


def test_the_task_set():
    tasks = load_tasks()
    assert len(tasks) >= 30
    assert sum(t.files >= 2 for t in tasks) >= 10  # a third span 2-3 source files
    assert {t.kind for t in tasks} == set(KINDS)
    for t in tasks:
        folder = TASKS_DIR / t.name
        on_disk = {sub: sorted(p.name.removesuffix(SUFFIX) for p in (folder / sub).iterdir())
                   for sub in ("repo", "hidden", "reference")}
        assert on_disk == {"repo": sorted(t.repo), "hidden": sorted(t.hidden), "reference": sorted(t.reference)}
        assert 1 <= t.files <= 3, t.name
        assert t.tests and all(p in t.repo and Path(p).name.startswith("test_") for p in t.tests), t.name
        assert not set(t.hidden) & set(t.repo), t.name  # the hidden tests are not in the repository
        assert set(t.fix) <= set(t.sources), t.name  # the fix changes sources, never the tests
        assert all(expected_tests(text) >= 1 for text in [*t.hidden.values(), *(t.repo[p] for p in t.tests)])
        lines = [t.repo[p].count("\n") for p in t.sources]
        assert max(lines) <= 200 and sum(lines) >= 20, (t.name, lines)
        assert t.instruction.strip() and t.description.strip()


@pytest.mark.parametrize("name", NAMES)
def test_original_fails_and_reference_passes(name, tmp_path):
    (task,) = load_tasks([name])
    original = tmp_path / "original"
    write_repo(task, original, git=False)
    s = score(task, original, 60, confine=False)
    assert not s.visible_passed and not s.hidden_passed, s.output
    fixed = tmp_path / "fixed"
    write_repo(task, fixed, git=False)
    apply_reference(task, fixed)
    s = score(task, fixed, 60, confine=False)
    assert s.passed and s.visible[0] == s.visible[1] and s.hidden[0] == s.hidden[1], s.output


# --------------------------------------------------------------------------- the harness, fake tiers


class FakeClient:
    """What the harness asks of a client, without a model."""

    def __init__(self, name: str):
        self.model_name = name
        self.load_s = 0.0
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def describe(self) -> dict:
        return {"runtime": "fake", "threads": 1}


def test_harness_scores_isolates_and_writes_json(tmp_path):
    seen: list[list[str]] = []

    def look(root: Path) -> list[str]:
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".git" not in p.parts)
        seen.append(names)
        return names

    def fixer(client, task, root, failing, cfg):
        names = look(root)
        assert not any("hidden" in n or "reference" in n for n in names)  # nothing held out is there
        assert sorted(task.repo) == names
        assert "FAILED" in failing or "ERROR" in failing or "Error" in failing  # the user's context
        apply_reference(task, root)
        return ae.Attempt(status="changed", steps=1, requests=1, tokens=42, edits=1)

    def cheater(client, task, root, failing, cfg):
        look(root)
        for path in task.tests:  # "make the failing test pass" by gutting it
            (root / path).write_text("def test_nothing():\n    pass\n")
        (root / "conftest.py").write_text("import pytest\n\n@pytest.fixture(autouse=True)\ndef x():\n    pass\n")
        runs = [{"step": 2, "command": "pytest", "exit_code": 0}]
        return ae.Attempt(status="done", steps=3, tokens=7, test_runs=runs)

    names = ["median-even", "inventory-rename"]  # one file, two files
    checkpoints = []
    clients: dict[str, FakeClient] = {}

    def open_client(model):
        clients[model] = FakeClient(model)
        return clients[model]

    cfg = ae.EvalConfig(tiers=("realtime", "deep"), tasks=names, runners={"realtime": fixer, "deep": cheater},
                        open_client=open_client, allow_weak_sandbox=True, timeout_s=60, command="test",
                        log=lambda m: None, checkpoint=lambda r: checkpoints.append(json.dumps(r)))
    result = ae.run_eval(cfg)

    assert result["kind"] == "agent" and result["complete"]
    assert [t["tier"] for t in result["tiers"]] == ["realtime", "deep"]
    assert [t["model"] for t in result["tiers"]] == [ae.tier_model("realtime"), ae.tier_model("deep")]
    assert all(c.resets == len(names) for c in clients.values())  # every task starts cold
    rt, deep = (t["summary"] for t in result["tiers"])
    assert rt["n"] == 2 and rt["passed"] == 2 and rt["pass_rate"] == 100.0 and rt["multi_file"] == [1, 1]
    assert rt["interval_95"][1] == pytest.approx(100.0) and 0 < rt["interval_95"][0] < 100
    assert deep["passed"] == 0 and deep["tests_restored"] == 2 and deep["tier_test_runs"] == 2
    for key in ("median_wall_s", "p25_wall_s", "p75_wall_s", "median_steps", "tokens", "statuses", "by_kind"):
        assert key in rt
    rec = result["tiers"][0]["records"][1]
    assert rec["task"] == "inventory-rename" and rec["files"] == 2 and rec["passed"]
    assert rec["harness_tests"] == ["test_report.py", "test_hidden.py"] and rec["changed"] == ["report.py"]
    assert rec["visible"] == [2, 2] and rec["hidden"] == [2, 2] and "find_item" in rec["diff"]
    cheat = result["tiers"][1]["records"][0]
    assert cheat["tests_restored"] == ["test_stats.py"] and not cheat["visible_passed"]
    assert cheat["tier_tests"] == [{"step": 2, "command": "pytest", "exit_code": 0}]
    assert len(checkpoints) == 4 and json.loads(checkpoints[-1])["tiers"][1]["records"]
    for key in ("cpu_model", "flags", "cores", "label"):
        assert key in result["machine"]
    assert result["loadavg_start"] is None or len(result["loadavg_start"]) == 3

    # the JSON as written, and `pairline eval plot` on it: one point per tier
    from pairline.bench.common import write_json
    from pairline.bench.plot import load_results, plot

    path = write_json(result, tmp_path / "agent.json")
    points = load_results([path], kinds=("humaneval", "agent"))
    assert [p["tier"] for p in points] == ["realtime", "deep"] and points[0]["summary"]["pass_at_1"] == 100.0
    assert plot(points, tmp_path / "agent.png").stat().st_size > 1000
    ae.print_tables(json.loads(path.read_text()))


def test_a_tier_that_raises_fails_its_task_and_the_run_goes_on(tmp_path):
    def broken(client, task, root, failing, cfg):
        raise RuntimeError("boom")

    cfg = ae.EvalConfig(tasks=["leap-400"], runners={"realtime": broken}, open_client=FakeClient,
                        allow_weak_sandbox=True, log=lambda m: None)
    rec = ae.run_eval(cfg)["tiers"][0]["records"][0]
    assert rec["status"] == "error" and rec["message"] == "RuntimeError: boom" and not rec["passed"]


def test_bad_arguments_before_any_model():
    with pytest.raises(Exception, match="unknown agent task 'nope'"):
        ae.validate(ae.EvalConfig(tasks=["nope"]))
    with pytest.raises(Exception, match="not a known model name"):
        ae.validate(ae.EvalConfig(model="/no/such/model.gguf"))
    with pytest.raises(Exception, match="--max-steps must be at least 1"):
        ae.validate(ae.EvalConfig(tiers=("deep",), max_steps=0))
    with pytest.raises(Exception, match="unknown tier"):
        ae.parse_tiers("fast")


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pairline.cli", "eval", "agent", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "nope"], "unknown agent task 'nope'"),
    (["--model", "/no/such/model.gguf", "--limit", "1"], "not a known model name"),
    (["--limit", "0"], "--limit must be at least 1"),
])
def test_cli_bad_input_is_one_line(args, message):
    r = run_cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and message in r.stderr


def test_cli_lists_the_tasks():
    r = run_cli("--list")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(NAMES)


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_smollm2_deep_tier_on_one_task(tmp_path, monkeypatch, smollm2_gguf):
    """The agent's real path, end to end, inside a tiny budget: it need not fix anything, it must stop
    in budget and be scored."""
    from pairline.assistant.sandbox import Sandbox

    if missing := Sandbox(tmp_path).missing:
        pytest.skip(f"this kernel lacks sandbox protections {', '.join(missing)}: eval agent needs them")
    # the trajectory goes here (the model cache, and the runtime checks remembered in it, stay as they are)
    monkeypatch.setattr("pairline.assistant.agent.runs_dir", lambda: tmp_path / "runs")
    cfg = ae.EvalConfig(tiers=("deep",), model=str(smollm2_gguf), tasks=["median-even"], n_ctx=4096, max_steps=2,
                        max_time_s=40, max_tokens=300, turn_tokens=96, example=False, cmd_timeout=20,
                        log=lambda m: None)
    t0 = time.perf_counter()
    result = ae.run_eval(cfg)
    assert time.perf_counter() - t0 < 90
    rec = result["tiers"][0]["records"][0]
    assert rec["status"] in ("done", "max_steps", "max_tokens", "max_time")
    assert 1 <= rec["steps"] <= 2 and 0 < rec["tokens"] <= 300 and rec["wall_s"] < 40 + 15
    assert rec["harness_tests"] == ["test_stats.py", "test_hidden.py"] and rec["hidden"][1] == 4
    assert Path(rec["trajectory"]).parent == tmp_path / "runs" and Path(rec["trajectory"]).is_file()
    json.dumps(result)
