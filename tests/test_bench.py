"""`pairline bench engine`: the parser, the helpers, and a --quick run that writes the JSON.
No test here asserts a timing: they check that the fields are there and well formed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pairline.bench import cli as bench_cli
from pairline.bench import common, engine_report, engine_tasks
from pairline.bench import engine as bench
from pairline.errors import PairlineError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairline")
    sub = parser.add_subparsers(dest="command")
    bench_cli.add_parser(sub)
    return parser


def test_parser_registers_bench_engine():
    argv = ["bench", "engine", "--model", "smollm2-135m", "--engines", "pairline-torch,hf-bf16", "--threads", "2"]
    args = _parser().parse_args(argv)
    assert args.func is bench_cli.cmd_engine
    assert (args.model, args.engines, args.dtype, args.threads) == ("smollm2-135m", "pairline-torch,hf-bf16", "auto", 2)
    assert args.repeats is None and not args.quick and args.edit_engines is None
    cmd = bench.command_line(args)
    assert cmd == "pairline bench engine --model smollm2-135m --engines pairline-torch,hf-bf16 --threads 2"
    with pytest.raises(SystemExit):  # the old single-peer flags are gone
        _parser().parse_args(["bench", "engine", "--model", "m", "--peers", "hf"])


def test_parser_needs_a_subcommand():
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench"])


def test_default_out_path(tmp_path):
    p = common.default_out_path(None, "smollm2-135m", "quick")
    assert p.parent == Path("bench-results") and p.name.startswith("engine-smollm2-135m-quick-")
    assert p.suffix == ".json"
    assert common.default_out_path(str(tmp_path), "smollm2-135m").parent == tmp_path
    assert common.default_out_path(str(tmp_path / "x.json"), "m") == tmp_path / "x.json"
    assert common.default_out_path("/tmp/a/b/", "/models/My Model.gguf").name.startswith("engine-My_Model.gguf-")


def test_tasks_are_well_formed():
    tasks = common.load_tasks()
    assert {t["kind"] for t in tasks} == {"one_line", "rename", "new_function"}  # issue 3's three kinds of change
    for t in tasks:
        lines = t["source"].splitlines()
        assert 100 <= len(lines) <= 400, t["name"]
        # the instruction's target is in the file, and the original does not pass its own check
        assert all(s in t["source"] for s in t["expect_absent"]), t["name"]
        assert not engine_tasks.edit_quality(t, t["source"], engine_tasks.fenced(t["source"]))["instruction_followed"]
        assert engine_tasks.edit_quality(t, t["source"], engine_tasks.fenced(t["source"]))["copied_fraction"] == 1.0


def test_edit_quality_recognises_a_correct_rename():
    task = next(t for t in common.load_tasks() if t["name"] == "bisect-rename")
    edited = task["source"].replace("insort_right", "insort_after")
    q = engine_tasks.edit_quality(task, task["source"], f"Here it is:\n{engine_tasks.fenced(edited)}\nDone.")
    assert q["instruction_followed"]
    assert q["lines_copied_unchanged"] == len(task["source"].splitlines()) - 2
    assert engine_tasks.extract_code("no fence at all") == "no fence at all"
    assert engine_tasks.extract_code("```python\nx = 1\n") == "x = 1\n"  # an unterminated block (cut by max_tokens)


def test_machine_info_has_the_flags():
    info = common.machine_info()
    assert info["cores"] >= 1
    for flag in ("avx2", "avx512f", "avx512_bf16", "bf16_hardware"):
        assert isinstance(info["flags"][flag], bool)
    assert "torch" in info


def test_summary_and_ratio():
    s = common.summary([3.0, None, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    assert common.summary([None])["median"] is None
    assert common.ratio(None, 2.0) is None and common.ratio(3.0, 2.0) == 1.5


def test_unknown_engine_is_an_error():
    with pytest.raises(PairlineError, match="unknown engine"):
        bench.run_engine_bench(bench.BenchConfig(model="smollm2-135m", engines=("vllm",)))
    with pytest.raises(PairlineError, match="unknown edit mode"):
        bench.run_engine_bench(bench.BenchConfig(model="smollm2-135m", edit_modes=("telepathy",)))


def test_engines_without_llama_cpp(monkeypatch):
    monkeypatch.setattr(bench, "llamacpp_available", lambda: False)
    names, editors, skipped = bench.resolve_engines(bench.BenchConfig(model="m"))
    assert names == ["pairline", "pairline-torch", "hf-fp32", "hf-bf16"]  # pairline: what `auto` runs
    assert editors == ["pairline", "pairline-torch"]  # HF takes no part in the edit tasks
    assert set(skipped) == {"pairline-llamacpp", "llamacpp", "llamacpp-lookup"}
    with pytest.raises(PairlineError, match="needs llama-cpp-python"):
        bench.resolve_engines(bench.BenchConfig(model="m", engines=("llamacpp",)))


def test_engines_with_llama_cpp(monkeypatch):
    monkeypatch.setattr(bench, "llamacpp_available", lambda: True)
    names, editors, skipped = bench.resolve_engines(bench.BenchConfig(model="m"))
    assert names == list(bench.ENGINES) and not skipped
    assert editors == ["pairline", "pairline-llamacpp", "pairline-torch", "llamacpp", "llamacpp-lookup"]
    cfg = bench.BenchConfig(model="m", engines=("llamacpp", "pairline-torch"), edit_engines=("pairline-torch",))
    assert bench.resolve_engines(cfg)[:2] == (["llamacpp", "pairline-torch"], ["pairline-torch"])
    with pytest.raises(PairlineError, match="runs no edit tasks"):
        bench.resolve_engines(bench.BenchConfig(model="m", edit_engines=("hf-bf16",)))
    with pytest.raises(PairlineError, match="not among the engines"):
        bench.resolve_engines(bench.BenchConfig(model="m", engines=("llamacpp",), edit_engines=("pairline-torch",)))
    # without the engine phase, HF has nothing to do
    names, _, skipped = bench.resolve_engines(bench.BenchConfig(model="m", phases=("edit",)))
    assert "hf-bf16" not in names and "hf-bf16" in skipped


def test_edit_plan_runs_plain_first_and_peers_their_own_mode():
    cfg = bench.BenchConfig(model="m", edit_modes=("prediction", "useless_prediction"))
    plan = bench._edit_plan(cfg, ["pairline-llamacpp", "llamacpp", "llamacpp-lookup"])
    assert plan == [
        ("pairline-llamacpp", "plain"),
        ("pairline-llamacpp", "prediction"),
        ("pairline-llamacpp", "useless_prediction"),
        ("llamacpp", "plain"),
        ("llamacpp-lookup", "prompt_lookup"),
    ]


def test_acceptance_curve():
    # 100 output tokens: the prefill's, 9 plain steps, drafts of 9 fully accepted, then rejected drafts
    steps = [(0, 0)] * 9 + [(9, 9)] * 8 + [(8, 0)] * 10
    curve = engine_tasks.acceptance_curve(steps)
    assert len(curve) == engine_tasks.CURVE_BINS
    assert sum(b["tokens"] for b in curve) == 100 and sum(b["calls"] for b in curve) == len(steps)
    assert curve[0]["drafted"] == 0 and curve[0]["acceptance"] is None and curve[0]["tokens"] == 10
    assert curve[1]["acceptance"] == 1.0 and curve[1]["mean_draft"] == 9.0 and curve[1]["max_draft"] == 9
    assert curve[-1]["acceptance"] == 0.0 and curve[-1]["drafting_calls"] == 10
    assert engine_tasks.acceptance_curve([])[0]["calls"] == 0


def test_useless_prediction_is_seeded_text_of_the_right_length(smollm2_gguf):
    from pairline.engine.tokenizer import Tokenizer

    tok = Tokenizer.load(smollm2_gguf)
    a = engine_tasks.useless_prediction(tok, 500, seed=7)
    assert len(a) == 500 and a == engine_tasks.useless_prediction(tok, 500, seed=7)
    assert a != engine_tasks.useless_prediction(tok, 500, seed=8)
    task = next(t for t in common.load_tasks() if t["name"] == "bisect-rename")
    pred = tok.encode(engine_tasks.fenced(task["source"]), add_bos=False)
    shared = {tuple(a[i : i + 3]) for i in range(len(a) - 2)} & {tuple(pred[i : i + 3]) for i in range(len(pred) - 2)}
    assert len(shared) < 5  # nothing for the drafter to realign on


def _fake_result() -> dict:
    def eng(decode: float, ttft: float) -> dict:
        return {"load_s": 1.0, "decode_tok_s": {"median": decode}, "ttft_s": {"2000": {"median": ttft}}}

    def mode(eff: float) -> dict:
        return {"effective_tok_s": {"median": eff}}

    engines_out = {
        "pairline-llamacpp": {"modes": {"plain": mode(100), "prediction": mode(300), "useless_prediction": mode(85)}},
        "pairline-torch": {"modes": {"plain": mode(20), "prediction": mode(40), "useless_prediction": mode(19)}},
        "llamacpp": {"modes": {"plain": mode(110)}},
        "llamacpp-lookup": {"modes": {"prompt_lookup": mode(150)}},
    }
    engine_report.edit_ratios(engines_out)
    return {
        "default_engine": "pairline-llamacpp",
        "settings": {"ttft_prompt_tokens": [2000]},
        "engines": {
            "pairline-llamacpp": eng(150, 4.0),
            "pairline-torch": eng(40, 3.0),
            "llamacpp": eng(155, 4.2),
            "llamacpp-lookup": eng(60, 6.0),
            "hf-fp32": eng(20, 5.0),
            "hf-bf16": eng(25, 2.0),
        },
        "edit": {"tasks": [{"name": "t", "engines": engines_out}]},
    }


def test_ratios_and_goals():
    result = _fake_result()
    result["ratios"] = engine_report.compute_ratios(result)
    r = result["ratios"]["engines"]
    assert r["pairline-llamacpp"]["decode_vs_llamacpp"] == pytest.approx(150 / 155)
    assert r["pairline-llamacpp"]["decode_vs_hf_bf16"] == pytest.approx(6.0)
    assert result["ratios"]["fastest_peer_ttft"]["2000"] == {"engine": "hf-bf16", "s": 2.0}
    assert r["pairline-torch"]["ttft_2000_vs_fastest_peer"] == pytest.approx(2.0 / 3.0)
    goals = {g["id"]: g for g in engine_report.compute_goals(result)["items"]}
    assert set(goals) == {gid for gid, _, _ in engine_report.GOALS}
    assert goals["decode_vs_llamacpp"]["measured"] == pytest.approx(150 / 155) and goals["decode_vs_llamacpp"]["pass"]
    assert goals["decode_vs_hf_bf16"]["pass"] is True
    assert goals["torch_decode_vs_hf_bf16"]["engine"] == "pairline-torch"
    assert (
        goals["torch_decode_vs_hf_bf16"]["measured"] == pytest.approx(1.6) and goals["torch_decode_vs_hf_bf16"]["pass"]
    )
    assert (
        goals["ttft_vs_fastest_peer"]["measured"] == pytest.approx(0.5)
        and goals["ttft_vs_fastest_peer"]["pass"] is False
    )
    assert goals["edit_prediction_vs_llamacpp_plain"]["measured"] == pytest.approx(300 / 110)
    assert goals["edit_prediction_vs_llamacpp_lookup"]["measured"] == pytest.approx(2.0)
    useless = goals["edit_useless_vs_plain"]
    assert useless["measured"] == pytest.approx(0.85) and useless["pass"] is False
    assert useless["by_engine"]["pairline-torch"]["measured"] == pytest.approx(0.95)
    # a goal whose engines did not run is reported as not measured, not as failed
    del result["engines"]["hf-bf16"]
    result["ratios"] = engine_report.compute_ratios(result)
    goals = {g["id"]: g for g in engine_report.compute_goals(result)["items"]}
    assert goals["decode_vs_hf_bf16"]["measured"] is None and goals["decode_vs_hf_bf16"]["pass"] is None


@pytest.mark.slow
def test_bench_engine_quick_writes_json(tmp_path, smollm2_gguf):
    # Every engine that can run here but hf-bf16 (HF's loader is the slow part of this test; hf-fp32
    # runs the same code). One thread and passive OpenMP: on a CPU shared with other test processes,
    # spinning threads slow this 10-40x.
    have_llamacpp = bench.llamacpp_available()
    engines = [e for e in bench.ENGINES if e != "hf-bf16" and (have_llamacpp or e not in bench.LLAMACPP_ENGINES)]
    argv = ["bench", "engine", "--model", "smollm2-135m", "--quick", "--engines", ",".join(engines)]
    argv += ["--out", str(tmp_path), "--threads", "1", "--omp-wait-policy", "passive"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    files = list(tmp_path.glob("engine-smollm2-135m-*.json"))
    assert len(files) == 1
    d = json.loads(files[0].read_text())

    assert d["kind"] == "engine" and d["schema"] == bench.SCHEMA and d["complete"] is True
    assert d["model"] == "smollm2-135m" and d["quick"] is True
    assert d["command"].startswith("pairline bench engine --model smollm2-135m --engines ")
    assert d["default_engine"] == "pairline"  # the engine that runs what load_engine's auto picks
    m = d["machine"]
    for key in ("cpu_model", "cores", "torch", "flags"):
        assert key in m
    assert d["loadavg_start"] and d["load_samples"] and "busy_processes_start" in d

    assert d["settings"]["worker_env"] == {"OMP_WAIT_POLICY": "PASSIVE", "PAIRLINE_THREADS": "1"}
    assert list(d["engines"]) == engines
    sizes = [str(s) for s in d["settings"]["ttft_prompt_tokens"]]
    for name, e in d["engines"].items():
        assert e["info"]["env"]["PAIRLINE_THREADS"] == "1", name
        assert e["load_s"] > 0 and e["peak_rss_mb"] > 0, name
        for size in sizes:
            assert len(e["ttft_s"][size]["runs"]) == d["repeats"] and e["ttft_s"][size]["median"] > 0, name
        assert e["decode_tok_s"]["median"] > 0 and min(e["decode_tokens"]) > 1, name  # every engine made tokens
        r = d["ratios"]["engines"][name]
        assert r["decode_vs_hf_bf16"] is None  # hf-bf16 was left out
        assert (r["decode_vs_llamacpp"] is not None) == have_llamacpp, name
    for name in ("pairline-llamacpp", "pairline-torch"):
        if name not in engines:
            continue
        vc = d["engines"][name]["verify_cost"]
        assert vc["context_tokens"] > 0 and set(vc["k"]) == {"1", "4"}
        assert all(v["s"] > 0 and len(v["runs"]) == d["repeats"] for v in vc["k"].values())

    tasks = d["edit"]["tasks"]
    assert len(tasks) == 1
    t = tasks[0]
    for key in ("prompt_tokens", "prediction_tokens", "max_tokens", "file_lines", "kind", "useless_prediction_seed"):
        assert key in t
    editors = [e for e in engines if not e.startswith("hf-")]
    assert list(t["engines"]) == d["edit_engines"] == editors
    for name, eo in t["engines"].items():
        assert set(eo["modes"]) == set(bench.ENGINE_EDIT_MODES[name]), name
        assert "instruction_followed" in eo["quality"]
        for mode, mo in eo["modes"].items():
            assert mo["completion_tokens"] > 0 and mo["effective_tok_s"]["median"] > 0, (name, mode)
            assert mo["x_plain"] is not None, (name, mode)
            assert mo["identical_to_plain"] in (True, False), (name, mode)
            assert (mo["x_llamacpp_plain"] is not None) == have_llamacpp, (name, mode)
    for name in ("pairline-llamacpp", "pairline-torch"):
        if name not in t["engines"]:
            continue
        modes = t["engines"][name]["modes"]
        # greedy speculation is lossless on pairline's runtimes
        assert all(mo["identical_to_plain"] for mo in modes.values()), name
        # the copy ceiling drafts the plain output itself: some of it must be accepted
        assert modes["ceiling"]["accepted_prediction_tokens"] > 0, name
        assert modes["plain"]["accepted_prediction_tokens"] == 0 and "acceptance_curve" not in modes["plain"]
        pred = modes["prediction"]
        curve = pred["acceptance_curve"]
        # the curve counts the stop token where the output ended on one
        assert len(curve) == engine_tasks.CURVE_BINS
        assert sum(b["tokens"] for b in curve) - pred["completion_tokens"] in (0, 1)
        assert sum(b["drafted"] for b in curve) == pred["draft_tokens"]

    goals = {g["id"]: g for g in d["goals"]["items"]}
    assert set(goals) == {gid for gid, _, _ in engine_report.GOALS}
    for g in goals.values():
        assert g["pass"] in (True, False, None) and g["target"] > 0
    assert goals["decode_vs_hf_bf16"]["pass"] is None  # not measured: no hf-bf16 in this run
    assert goals["edit_useless_vs_plain"]["measured"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["llamacpp", "torch"])
def test_bench_cancel_writes_json(tmp_path, smollm2_gguf, runtime):
    """`pairline bench cancel` on SmolLM2: every cancel lands inside the prefill (both CPU runtimes
    stop mid-chunk), the chunks done before it stay cached, and the JSON says so."""
    if runtime == "llamacpp" and not bench.llamacpp_available():
        pytest.skip("llama-cpp-python is not installed")
    argv = ["bench", "cancel", "--model", "smollm2-135m", "--runtime", runtime, "--prompt-tokens", "600",
            "--repeats", "2", "--out", str(tmp_path)]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    files = list(tmp_path.glob("cancel-smollm2-135m-*.json"))
    assert len(files) == 1
    d = json.loads(files[0].read_text())
    assert d["bench"] == "cancel" and d["runtime"] == runtime and d["interruptible"] is True
    assert d["prompt_tokens"] == 600 and d["uncancelled_prefill_s"] > 0 and len(d["runs"]) == 2
    for run in d["runs"]:
        assert run["finish_reason"] == "cancelled" and run["latency_s"] is not None
        if run["landed_in"] == "prefill":  # else the prefill ran faster than the timed one
            assert run["tokens_cached_after"] % d["prefill_chunk"] == 0 and run["tokens_cached_after"] < 600
        else:
            assert run["tokens_cached_after"] >= 600
    assert d["median_latency_s"] <= d["max_latency_s"]


def test_bench_cancel_refuses_bad_sizes():
    args = _parser().parse_args(["bench", "cancel", "--prompt-tokens", "1"])
    with pytest.raises(PairlineError, match="--prompt-tokens"):
        args.func(args)
