"""`pairline bench engine`: the parser, the helpers, and a --quick run that writes the JSON.
No test here asserts a timing: they check that the fields are there and well formed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pairline.bench import cli as bench_cli
from pairline.bench import engine as bench


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairline")
    sub = parser.add_subparsers(dest="command")
    bench_cli.add_parser(sub)
    return parser


def test_parser_registers_bench_engine():
    args = _parser().parse_args(["bench", "engine", "--model", "smollm2-135m", "--dtype", "fp32", "--peers", "none"])
    assert args.func is bench_cli.cmd_engine
    assert (args.model, args.runtime, args.dtype, args.peers) == ("smollm2-135m", "torch", "fp32", "none")
    assert args.repeats is None and not args.quick
    cmd = bench.command_line(args)
    assert cmd.startswith("pairline bench engine --model smollm2-135m --runtime torch --dtype fp32")


def test_parser_needs_a_subcommand():
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench"])


def test_default_out_path(tmp_path):
    p = bench.default_out_path(None, "smollm2-135m", "bf16")
    assert p.parent == Path("bench-results") and p.name.startswith("engine-smollm2-135m-bf16-")
    assert p.suffix == ".json"
    assert bench.default_out_path(str(tmp_path), "smollm2-135m").parent == tmp_path
    assert bench.default_out_path(str(tmp_path / "x.json"), "m") == tmp_path / "x.json"
    assert bench.default_out_path("/tmp/a/b/", "/models/My Model.gguf").name.startswith("engine-My_Model.gguf-")


def test_tasks_are_well_formed():
    tasks = bench.load_tasks()
    assert len(tasks) >= 2
    for t in tasks:
        lines = t["source"].splitlines()
        assert 100 <= len(lines) <= 400, t["name"]
        # the instruction's target is in the file, and the original does not pass its own check
        assert all(s in t["source"] for s in t["expect_absent"]), t["name"]
        assert not bench.edit_quality(t, t["source"], bench.fenced(t["source"]))["instruction_followed"]
        assert bench.edit_quality(t, t["source"], bench.fenced(t["source"]))["copied_fraction"] == 1.0


def test_edit_quality_recognises_a_correct_rename():
    task = next(t for t in bench.load_tasks() if t["name"] == "bisect-rename")
    edited = task["source"].replace("insort_right", "insort_after")
    q = bench.edit_quality(task, task["source"], f"Here it is:\n{bench.fenced(edited)}\nDone.")
    assert q["instruction_followed"]
    assert q["lines_copied_unchanged"] == len(task["source"].splitlines()) - 2
    assert bench.extract_code("no fence at all") == "no fence at all"
    assert bench.extract_code("```python\nx = 1\n") == "x = 1\n"  # an unterminated block (cut by max_tokens)


def test_machine_info_has_the_flags():
    info = bench.machine_info()
    assert info["cores"] >= 1
    for flag in ("avx2", "avx512f", "avx512_bf16", "bf16_hardware"):
        assert isinstance(info["flags"][flag], bool)
    assert "torch" in info


def test_summary_and_ratio():
    s = bench._summary([3.0, None, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    assert bench._summary([None])["median"] is None
    assert bench._ratio(None, 2.0) is None and bench._ratio(3.0, 2.0) == 1.5


def test_unknown_peer_is_an_error():
    from pairline.errors import PairlineError

    with pytest.raises(PairlineError, match="unknown peer"):
        bench.run_engine_bench(bench.BenchConfig(model="smollm2-135m", peers=("vllm",)))


@pytest.mark.slow
def test_bench_engine_quick_writes_json(tmp_path, smollm2_gguf):
    # passive OpenMP threads: on a CPU shared with other test processes, spinning ones slow this 10-40x
    argv = ["bench", "engine", "--model", "smollm2-135m", "--quick", "--peers", "none", "--out", str(tmp_path)]
    args = _parser().parse_args([*argv, "--omp-wait-policy", "passive"])
    assert args.func(args) == 0
    files = list(tmp_path.glob("engine-smollm2-135m-*.json"))
    assert len(files) == 1
    d = json.loads(files[0].read_text())

    assert d["kind"] == "engine" and d["schema"] == bench.SCHEMA and d["complete"] is True
    assert d["model"] == "smollm2-135m" and d["runtime"] == "torch" and d["quick"] is True
    assert d["dtype"] in ("bf16", "fp32")
    assert d["command"].startswith("pairline bench engine --model smollm2-135m")
    m = d["machine"]
    for key in ("cpu_model", "cores", "torch", "flags"):
        assert key in m
    assert {"avx2", "avx512f", "avx512_bf16"} <= set(m["flags"])

    assert d["settings"]["worker_env"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert list(d["engines"]) == ["pairline"]  # --peers none
    p = d["engines"]["pairline"]
    assert p["info"]["env"] == {"OMP_WAIT_POLICY": "PASSIVE"} and p["info"]["env_applied_before_torch"]
    assert p["load_s"] > 0 and p["peak_rss_mb"] > 0
    assert p["info"]["load_cache"] in ("warm", "cold", "n/a", "unknown")
    for size in d["settings"]["ttft_prompt_tokens"]:
        ttft = p["ttft_s"][str(size)]
        assert len(ttft["runs"]) == d["repeats"] and ttft["median"] > 0
    assert p["decode_tok_s"]["median"] > 0
    vc = p["verify_cost"]
    assert vc["context_tokens"] > 0 and set(vc["k"]) == {"1", "4"}
    assert all(v["s"] > 0 and len(v["runs"]) == d["repeats"] for v in vc["k"].values())

    tasks = d["edit"]["tasks"]
    assert len(tasks) == 1
    t = tasks[0]
    assert set(t["modes"]) == set(bench.EDIT_MODES)
    for key in ("prompt_tokens", "prediction_tokens", "max_tokens", "quality", "file_lines"):
        assert key in t
    for mode, mo in t["modes"].items():
        assert mo["completion_tokens"] > 0, mode
        assert mo["effective_tok_s"]["median"] > 0, mode
        assert mo["speedup_vs_plain"] is not None, mode
        assert isinstance(mo["identical_to_plain"], bool), mode
        for key in ("accepted_prediction_tokens", "rejected_prediction_tokens", "forward_calls", "finish_reason"):
            assert key in mo, (mode, key)
    # the copy ceiling drafts the plain output itself: some of it must be accepted
    assert t["modes"]["ceiling"]["accepted_prediction_tokens"] > 0
    assert t["modes"]["plain"]["accepted_prediction_tokens"] == 0
    assert "decode_vs_hf" not in d["goals"] and "edit_prediction_vs_plain" in d["goals"]
