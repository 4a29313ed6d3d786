"""Deep mode for real: the loop on SmolLM2's weights in a tiny git repo with a failing test, and
`pairline agent` through the CLI (a subprocess): a run, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pairline.assistant.agent import Agent, Budgets
from pairline.assistant.trajectory import load_trajectory
from pairline.assistant.workspace import Workspace

FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}


def tiny_repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name, text in FILES.items():
        (root / name).write_text(text)
    for args in (["init", "-q"], ["config", "user.email", "t@e.com"], ["config", "user.name", "T"], ["add", "."],
                 ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def snapshot(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if "cache" not in p.parts)


def check_intact(root, tmp_path, before):
    # nothing written outside the repo (the cache is where trajectories go), no file lost
    assert [p for p in snapshot(tmp_path) if not p.startswith("repo/")] == [
        p for p in before if not p.startswith("repo/")]
    for name in FILES:
        assert (root / name).is_file()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert not [line for line in status.splitlines() if line[:2].strip() == "D"]
    assert subprocess.run(["git", "fsck", "--no-progress"], cwd=root, capture_output=True).returncode == 0


@pytest.mark.slow
def test_smollm2_loop_stays_in_budget(tmp_path, monkeypatch, smollm2_gguf):
    from pairline.assistant.client import open_client

    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    root = tiny_repo(tmp_path)
    before = snapshot(tmp_path)
    client = open_client(str(smollm2_gguf), n_ctx=4096, runtime="auto")
    budgets = Budgets(max_steps=3, max_time_s=60, max_tokens=400)
    # no worked example: a shorter prompt to prefill on a busy 2-core machine (SmolLM2 follows none)
    agent = Agent(client, Workspace.open(root), "make test_calc.py pass", budgets=budgets, turn_tokens=96,
                  n_ctx=4096, cmd_timeout=30, example=False)
    t0 = time.perf_counter()
    result = agent.run()
    wall = time.perf_counter() - t0
    # it need not succeed; it must stop inside its budget and leave a valid trajectory
    assert result.reason in ("done", "max_steps", "max_tokens", "max_time")
    assert result.steps <= 3 and result.tokens <= 400 and wall < 60 + 15
    events = load_trajectory(result.path)
    assert events[0]["type"] == "run" and events[-1]["type"] == "end"
    assert events[-1]["reason"] == result.reason
    assert sum(e["type"] == "turn" for e in events) == result.steps
    # the tests ran before the first step, so every reply was decoded under the mask's grammar (the
    # engine compiled it: no mask_off), with running the tests again masked
    assert events[1]["type"] == "tool" and events[1]["step"] == 0 and events[1]["name"] == "test"
    assert not [e for e in events if e["type"] == "mask_off"]
    assert all("test" in e.get("masked", []) for e in events if e["type"] == "turn" and e["step"] == 1)
    check_intact(root, tmp_path, before)


@pytest.mark.slow
def test_smollm2_cannot_write_a_masked_read(smollm2_gguf):
    """The mask on real weights: whatever file the model reads first, once that read is a fresh look,
    the same reply (same prompt, greedy) cannot name that file again."""
    from pairline.assistant.agent_mask import Repeats
    from pairline.assistant.client import open_client

    client = open_client(str(smollm2_gguf), n_ctx=2048, runtime="auto")
    messages = [{"role": "user", "content": "Call the read tool on calc.py, as JSON."}]
    prefix = 'I will read the file first.\n```json\n{"name": "read", "arguments": {"path": "'
    free = "".join(client.stream(messages, max_tokens=16, prefix=prefix, stop=('"',)))
    path = free.strip()
    assert path, f"SmolLM2 wrote no path: {free!r}"
    repeats = Repeats("pytest -q", lambda p: p)
    repeats.seen_file(path, 1)
    files = sorted({path, "calc.py", "test_calc.py"})
    grammar, masked = repeats.grammar(files, special_tokens=client.family == "qwen2")
    assert masked == [f"read {path}"]
    again = "".join(client.stream(messages, max_tokens=16, prefix=prefix, stop=('"',), grammar=grammar))
    assert again.split('"')[0].strip() != path, (free, again)  # it must name another file


def cli(*args, cwd, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pairline.cli", "agent", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_run_on_smollm2(tmp_path, smollm2_gguf):
    root = tiny_repo(tmp_path)
    before = snapshot(tmp_path)
    env = {"PAIRLINE_CACHE": str(tmp_path / "cache")}
    p = cli("make test_calc.py pass", "--repo", str(root), "--model", str(smollm2_gguf), "--max-steps", "1",
            "--max-time", "60", "--max-tokens", "200", "--turn-tokens", "80", "--ctx", "4096", cwd=tmp_path,
            env_extra=env)
    assert p.returncode in (0, 1), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert "trajectory: " in p.stderr and "Deep mode ended" in p.stdout
    runs = list((tmp_path / "cache" / "runs").glob("*.jsonl"))
    assert len(runs) == 1 and load_trajectory(runs[0])[-1]["type"] == "end"
    check_intact(root, tmp_path, before)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    root = tiny_repo(tmp_path)
    env = {"PAIRLINE_CACHE": str(tmp_path / "cache")}
    cases = [
        (["fix it", "--repo", str(tmp_path / "missing")], "no such directory"),
        (["   ", "--repo", str(root)], "the task is empty"),
        (["--resume", "no-such-run", "--repo", str(root)], "no such run"),
    ]
    for args, message in cases:
        p = cli(*args, cwd=tmp_path, env_extra=env, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("pairline: error:"), p.stderr
