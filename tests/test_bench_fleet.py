"""`pairline bench fleet` on real engines (SmolLM2): sessions over the router, one of two `pairline
serve` backends SIGKILLed mid-stream and brought back; nothing hangs, nothing is lost, and the
streams it cut go on elsewhere. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pairline.bench.peers import llamacpp_server_missing


def test_bad_options_are_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pairline.cli", "bench", "fleet", "--duration", "10", "--kill-at", "30",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "pairline: error: --kill-at must be between 0 and --duration"
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_backend_killed_under_load_loses_nothing(tmp_path, smollm2_gguf):
    if (why := llamacpp_server_missing()) is not None:
        pytest.skip(f"the fleet's deep tier is llama.cpp's server: {why}")
    out = tmp_path / "fleet.json"
    r = subprocess.run([sys.executable, "-m", "pairline.cli", "bench", "fleet", "--model", str(smollm2_gguf),
                        "--sessions", "3", "--duration", "15", "--kill-at", "7", "--down", "1", "--after", "10",
                        "--max-tokens", "32", "--out", str(out)], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    total, fault = data["phases"]["all"], data["fault"]
    assert "router ledger" in r.stdout and fault["victim"] == "a" and fault["outstanding_at_kill"] >= 1
    assert total["hung"] == 0 and total["lost"] == 0
    assert total["sent"] == total["completed"] + total["failed"] > 0
    router_log = Path("bench-results/fleet-router.log")  # the bench's cwd is this one
    assert total["failed"] == 0, ([{k: q[k] for k in ("session", "turn", "sent_s", "ended_s", "error", "error_message")}
                                   for q in data["requests"] if q["outcome"] != "completed"],
                                  router_log.read_text()[-3000:] if router_log.exists() else "no router log")
    assert total["continued"] + total["failed_over"] >= 1  # the streams in flight on the victim went on elsewhere
    assert data["phases"]["during"]["sent"] >= 1 and data["phases"]["after"]["sent"] >= 1
    led = data["router_ledger"]
    assert led["requests_accepted_total"] == led["requests_finished_total"]
