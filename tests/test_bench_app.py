"""`pairline bench app` end to end on the small model: one TTFT pair and one stop, measured in
chromium, saved as JSON (the figures themselves are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_app_browser import CHROMIUM, _browser_or_skip

pytestmark = pytest.mark.slow


def test_bench_app_measures_both_sides_and_saves_json(tmp_path, smollm2_gguf):
    _browser_or_skip()
    out = tmp_path / "app.json"
    proc = subprocess.run([sys.executable, "-m", "pairline.cli", "bench", "app", "--model", str(smollm2_gguf),
                           "--repeats", "1", "--stops", "1", "--chromium", CHROMIUM, "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    pair = result["pairs"][0]
    assert pair["ttft_ms_chat"] > 0 and pair["ttft_ms_browser"] > 0 and pair["server_ttft_ms_browser"] > 0
    assert sorted(pair["order"]) == ["browser", "chat"]
    (stop,) = result["stops"]
    assert stop["quiet_ms"] >= 0 and stop["stopped_ms"] > 0 and stop["server_ms"] is not None
    assert result["machine"]["cpu_model"] and result["runtime"] and "browser − chat" in proc.stdout
