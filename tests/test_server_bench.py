"""`pairline bench overhead`: a short run against an in-process server (tiny random weights).
No timing is asserted: the fields are there, every mode ran, nothing erred, state was reused."""

from __future__ import annotations

import argparse

import pytest

from pairline.bench import cli as bench_cli
from pairline.bench.overhead import MODES, OverheadConfig, print_summary, run_overhead
from pairline.engine.tokenizer import Tokenizer
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from tests.engine_helpers import tiny_engine


def test_parser_registers_bench_overhead():
    parser = argparse.ArgumentParser(prog="pairline")
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "overhead", "--turns", "3", "--load-sessions", "0"])
    assert args.func is bench_cli.cmd_overhead and args.turns == 3 and args.load_sessions == 0
    assert args.model == "smollm2-135m" and args.file_tokens == 2000


@pytest.fixture(scope="module")
def srv(smollm2_gguf):
    s = ServerThread(tiny_engine(Tokenizer.load(smollm2_gguf), n_ctx=2048), ServerConfig(max_sessions=8)).__enter__()
    yield s
    s.stop()


def test_overhead_run_reports_every_mode(srv, capsys):
    logs: list[str] = []
    cfg = OverheadConfig(model="smollm2-135m", turns=3, max_tokens=5, file_tokens=300, load_sessions=2,
                         load_seconds=1.0, load_max_tokens=3, base_url=srv.base_url, log=logs.append)
    result = run_overhead(cfg)
    s = result["summary"]
    for mode in MODES:
        m = s[mode]
        assert m["turns_ok"] == 3 and m["errors"] == 0
        for key in ("ttft_s", "e2e_s", "server_own_s", "roundtrip_overhead_s", "per_token_overhead_s"):
            assert m[key] is not None, (mode, key)
    turns = {(t["mode"], t["turn"]): t for t in result["turns"]}
    for mode in MODES:  # later turns reuse the KV of earlier ones, through the session or the prefix cache
        assert turns[(mode, 3)]["cached_tokens"] > turns[(mode, 1)]["input_tokens"]
    assert turns[(MODES[2], 3)]["request_bytes"] < turns[(MODES[0], 3)]["request_bytes"] / 5
    assert set(s["c_vs_a_reduction"]) == {"roundtrip_overhead_s", "per_token_overhead_s", "ttft_s", "e2e_s"}
    load = result["load"]
    assert load["errors"] == 0 and load["hung_sessions"] == 0 and load["turns"] >= 2
    assert load["ttft_p50_s"] is not None and load["ttft_p99_s"] >= load["ttft_p50_s"]
    assert len(logs) == 3 * 3
    print_summary(result)
    assert "(c) WebSocket" in capsys.readouterr().out
