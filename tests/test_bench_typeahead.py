"""`pairline bench typeahead --contention`: two sessions on one server, one typing (its drafts
prefilled ahead) and one asking, on a tiny random-weight engine (SmolLM2's tokenizer, 32-token chunks):
the JSON holds both conditions side by side, the chunk's time and the delay, with sane values."""

from __future__ import annotations

import argparse
import json

import pytest

from pairline.bench.typeahead import ContentionConfig, TypeaheadConfig, block_plan, percentile
from pairline.engine.tokenizer import Tokenizer
from tests.engine_helpers import tiny_engine


def test_block_plan_alternates_and_counts():
    plan = block_plan(7, 3)
    assert [c for c, _ in plan] == ["idle", "typing", "typing", "idle", "idle", "typing"]
    assert sum(n for c, n in plan if c == "idle") == sum(n for c, n in plan if c == "typing") == 7


def test_percentile_interpolates():
    assert percentile([3.0, 1.0, 2.0, None], 50) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([None], 50) is None


def test_contention_parser_options():
    from pairline.bench.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "typeahead", "--contention", "--asks", "3", "--ask-block", "2", "--reopen",
                              "--chars-per-s", "30"])
    assert args.contention and args.asks == 3 and args.ask_block == 2 and args.reopen and args.variants is None


def test_contention_writes_both_conditions(smollm2_gguf, tmp_path):
    from pairline.bench.common import write_json
    from pairline.bench.typeahead import bench_result, print_summary

    engine = tiny_engine(Tokenizer.load(smollm2_gguf), n_ctx=2048, prefill_chunk=32)
    cfg = TypeaheadConfig(model="tiny", file_lines=12, chars_per_s=40, pause_s=0.05, typo="q", variants=(),
                          contention=ContentionConfig(asks=3, block=2, ask_tokens=6, gap_s=(0.05, 0.15), reopen=True),
                          log=lambda _msg: None)
    path = write_json(bench_result(engine, cfg), tmp_path / "typeahead.json")
    result = json.loads(path.read_text())
    assert result["variants"] == {} and result["machine"]["cores"]
    c = result["contention"]
    assert set(c) == {"scene", "prefill_chunk", "typist", "idle", "typing", "delay"}
    assert c["prefill_chunk"]["tokens"] == 32 and len(c["prefill_chunk"]["runs"]) >= 2
    assert 0 < c["prefill_chunk"]["median_s"] < 5 and c["prefill_chunk"]["median_after_s"] > 0
    for cond in ("idle", "typing"):
        r = c[cond]
        assert len(r["runs"]) == 3 and {x["condition"] for x in r["runs"]} == {cond}
        assert 0 < r["ttft_s"]["p50"] <= r["ttft_s"]["p99"] <= r["ttft_s"]["max"] < 30
        assert r["queue_s"]["max"] >= 0 and r["server_ttft_s"]["p50"] > 0
        assert r["decode_tokens_per_s"] > 0
        assert all(x["output_tokens"] >= 1 and x["input_tokens"] > x["cached_tokens"] for x in r["runs"])
        assert all(isinstance(x["ahead_pending"], bool) for x in r["runs"]) and 0 <= r["ahead_pending"] <= 3
    ty = c["typist"]
    assert ty["drafts"] > 0 and ty["files_opened"] >= 1 and ty["ahead_tokens"] > 0 and ty["errors"] == []
    d = c["delay"]
    assert d["ttft_p99_s"] is not None and d["decode_ratio"] > 0
    assert isinstance(d["ttft_p99_within_one_chunk"], bool)
    print_summary(result)  # the table prints from the JSON
