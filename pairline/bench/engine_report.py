"""The report of `pairline bench engine`: ratios between the engines, issue 3's goals, and the
tables printed at the end of a run (also from a saved JSON)."""

from __future__ import annotations

import statistics
from typing import Any

from pairline.bench.common import console as make_console
from pairline.bench.common import fmt, ratio, table
from pairline.bench.engine_tasks import CURVE_BINS
from pairline.bench.peers import PAIRLINE_ENGINES

PEER_ENGINES = ("llamacpp", "llamacpp-lookup", "hf-fp32", "hf-bf16")

# Issue 3's goals: (id, what, target). Ratios above the target pass.
GOALS = (
    ("decode_vs_llamacpp", "plain decode, pairline's default CPU runtime ≥ 0.95× raw llama.cpp", 0.95),
    ("decode_vs_hf_bf16", "plain decode, pairline's default CPU runtime ≥ 4× HF bf16", 4.0),
    ("torch_decode_vs_hf_bf16", "plain decode, pairline's torch runtime ≥ 1.5× HF bf16", 1.5),
    ("ttft_vs_fastest_peer", "TTFT, 2000-token prompt, default runtime ≤ the fastest peer's (peer s / ours)", 1.0),
    ("edit_prediction_vs_llamacpp_plain", "edit with a prediction ≥ 2.5× raw llama.cpp plain (eff. tok/s)", 2.5),
    ("edit_prediction_vs_llamacpp_lookup", "edit with a prediction ≥ 1.5× llama.cpp's prompt lookup", 1.5),
    ("edit_useless_vs_plain", "edit with a useless (random) prediction ≥ 0.9× plain", 0.9),
)


def edit_ratios(engines_out: dict) -> None:
    """x_plain (the same engine's plain; llama.cpp lookup: raw llama.cpp's), x_llamacpp_plain and
    x_llamacpp_lookup (the raw peer's modes on the same task)."""

    def eff(e: str, m: str) -> float | None:
        return engines_out.get(e, {}).get("modes", {}).get(m, {}).get("effective_tok_s", {}).get("median")

    lc_plain, lc_lookup = eff("llamacpp", "plain"), eff("llamacpp-lookup", "prompt_lookup")
    for e, eo in engines_out.items():
        own_plain = eff(e, "plain") if "plain" in eo["modes"] else lc_plain
        for mo in eo["modes"].values():
            v = mo["effective_tok_s"]["median"]
            mo["x_plain"] = ratio(v, own_plain)
            mo["x_llamacpp_plain"] = ratio(v, lc_plain)
            mo["x_llamacpp_lookup"] = ratio(v, lc_lookup)


def compute_ratios(result: dict) -> dict:
    """Every engine against raw llama.cpp plain decode and against HF bf16. Above 1: faster."""
    engines = result["engines"]

    def med(n: str, *keys: str) -> float | None:
        v: Any = engines.get(n, {})
        for k in keys:
            v = v.get(k, {}) if isinstance(v, dict) else {}
        return v if isinstance(v, (int, float)) else None

    sizes = [str(s) for s in result["settings"].get("ttft_prompt_tokens", [])]
    fastest = {}
    for s in sizes:
        peers = [(med(p, "ttft_s", s, "median"), p) for p in PEER_ENGINES if med(p, "ttft_s", s, "median")]
        fastest[s] = min(peers) if peers else (None, None)
    out: dict[str, Any] = {
        "definition": "decode: engine tok/s / reference tok/s; TTFT and load: reference s / engine s "
        "(above 1: the engine is faster); fastest_peer: the lowest TTFT among llama.cpp and HF",
        "fastest_peer_ttft": {s: {"engine": p, "s": v} for s, (v, p) in fastest.items()},
        "engines": {},
    }
    for n in engines:
        d = med(n, "decode_tok_s", "median")
        r = {
            "decode_vs_llamacpp": ratio(d, med("llamacpp", "decode_tok_s", "median")),
            "decode_vs_hf_bf16": ratio(d, med("hf-bf16", "decode_tok_s", "median")),
            "load_vs_llamacpp": ratio(med("llamacpp", "load_s"), med(n, "load_s")),
        }
        for s in sizes:
            t = med(n, "ttft_s", s, "median")
            r[f"ttft_{s}_vs_llamacpp"] = ratio(med("llamacpp", "ttft_s", s, "median"), t)
            r[f"ttft_{s}_vs_hf_bf16"] = ratio(med("hf-bf16", "ttft_s", s, "median"), t)
            r[f"ttft_{s}_vs_fastest_peer"] = ratio(fastest[s][0], t)
        out["engines"][n] = r
    return out


def _task_ratios(result: dict, engine: str, mode: str, key: str) -> list[float]:
    vals = []
    for t in result["edit"]["tasks"]:
        v = t["engines"].get(engine, {}).get("modes", {}).get(mode, {}).get(key)
        if v is not None:
            vals.append(v)
    return vals


def compute_goals(result: dict) -> dict:
    """Issue 3's goals: measured ratio against target, pass/fail, for pairline's default CPU
    runtime (the goal) and, for reference, for the other runtime. None: not measured in this run."""
    default = result["default_engine"]
    ratios = result["ratios"].get("engines", {})
    sizes = result["settings"].get("ttft_prompt_tokens", [])
    ttft_size = "2000" if 2000 in sizes else (str(max(sizes)) if sizes else None)
    goals: dict[str, Any] = {"default_engine": default, "items": []}

    def edit_median(engine: str, mode: str, key: str) -> tuple[float | None, dict]:
        vals = _task_ratios(result, engine, mode, key)
        return (statistics.median(vals) if vals else None), {
            "tasks": len(vals),
            "min": min(vals) if vals else None,
            "max": max(vals) if vals else None,
        }

    for gid, text, target in GOALS:
        by_engine: dict[str, Any] = {}
        for e in PAIRLINE_ENGINES:
            if e not in result["engines"]:
                continue
            extra: dict = {}
            if gid == "decode_vs_llamacpp":
                v = ratios.get(e, {}).get("decode_vs_llamacpp")
            elif gid in ("decode_vs_hf_bf16", "torch_decode_vs_hf_bf16"):
                v = ratios.get(e, {}).get("decode_vs_hf_bf16")
            elif gid == "ttft_vs_fastest_peer":
                v = ratios.get(e, {}).get(f"ttft_{ttft_size}_vs_fastest_peer") if ttft_size else None
                extra = {"prompt_tokens": ttft_size, **result["ratios"].get("fastest_peer_ttft", {}).get(ttft_size, {})}
            elif gid == "edit_prediction_vs_llamacpp_plain":
                v, extra = edit_median(e, "prediction", "x_llamacpp_plain")
                lc = result["engines"].get("llamacpp", {}).get("decode_tok_s", {}).get("median")
                preds = _task_ratios(result, e, "prediction", "effective_tok_s")
                effs = [p["median"] for p in preds if p.get("median")]
                extra["vs_llamacpp_decode_phase"] = ratio(statistics.median(effs), lc) if effs else None
            elif gid == "edit_prediction_vs_llamacpp_lookup":
                v, extra = edit_median(e, "prediction", "x_llamacpp_lookup")
            else:
                v, extra = edit_median(e, "useless_prediction", "x_plain")
            by_engine[e] = {"measured": v, "pass": None if v is None else bool(v >= target), **extra}
        subject = "pairline-torch" if gid == "torch_decode_vs_hf_bf16" else default
        main = by_engine.get(subject, {"measured": None, "pass": None})
        if gid == "ttft_vs_fastest_peer" and ttft_size:
            text = text.replace("2000-token", f"{ttft_size}-token")  # quick runs use a shorter prompt
        goals["items"].append(
            {
                "id": gid,
                "goal": text,
                "target": target,
                "engine": subject,
                "measured": main["measured"],
                "pass": main["pass"],
                "by_engine": by_engine,
            }
        )
    return goals


def print_tables(result: dict, console=None) -> None:
    console = console or make_console(piped_width=200)  # logs: keep tables readable
    engines = result["engines"]
    ratios = result.get("ratios", {}).get("engines", {})
    m = result["machine"]
    flags = ", ".join(k for k, v in m.get("flags", {}).items() if v) or "none"
    console.print(
        f"[bold]{result['model']}[/] ({result['model_file']}); {m.get('cpu_model', '?')}, {m.get('cores')} cores, "
        f"flags: {flags}; torch {m.get('torch')}, llama-cpp-python {m.get('llama_cpp_python') or '—'}; "
        f"threads {result['settings'].get('threads')}, worker env {result['settings'].get('worker_env') or '{}'}; "
        f"load average {result.get('loadavg_start')} → {result.get('loadavg_end')}; "
        f"default runtime: {result.get('default_engine')}"
    )
    if result.get("skipped_engines"):
        console.print("skipped: " + ", ".join(f"{k} ({v})" for k, v in result["skipped_engines"].items()))
    sizes = [str(s) for s in result["settings"].get("ttft_prompt_tokens", [])]
    if any("decode_tok_s" in e for e in engines.values()):
        cols = ["engine", "load s"]
        for s in sizes:
            cols += [f"TTFT {s} s", "× fastest peer"]
        cols += ["decode tok/s", "× llama.cpp", "× HF bf16", "peak RSS MB"]
        title = f"engines side by side (medians of {result['repeats']}; ×: above 1 = faster than the other)"
        t = table(title, cols, left=("engine",))
        for n, e in engines.items():
            r = ratios.get(n, {})
            cells = [n, fmt(e.get("load_s"))]
            for s in sizes:
                cells += [
                    fmt(e.get("ttft_s", {}).get(s, {}).get("median"), "{:.3f}"),
                    fmt(r.get(f"ttft_{s}_vs_fastest_peer"), "{:.2f}×"),
                ]
            cells += [
                fmt(e.get("decode_tok_s", {}).get("median"), "{:.1f}"),
                fmt(r.get("decode_vs_llamacpp"), "{:.2f}×"),
                fmt(r.get("decode_vs_hf_bf16"), "{:.2f}×"),
                fmt(e.get("peak_rss_mb"), "{:.0f}"),
            ]
            t.add_row(*cells)
        console.print(t)

    for n, e in engines.items():
        vc = e.get("verify_cost")
        if not vc:
            continue
        title = f"{n}: cost of a k-token forward (verify step) at {vc['context_tokens']} context"
        vt = table(title, ("k", "ms", "× 1-token step", "ms per token"), left=())
        for k, v in vc["k"].items():
            ms = v["s"] * 1e3
            vt.add_row(k, fmt(ms, "{:.1f}"), fmt(v["x_step"], "{:.2f}×"), fmt(ms / int(k), "{:.1f}"))
        console.print(vt)

    edit = result.get("edit", {})
    if edit.get("tasks"):
        title = f"edit: whole-file rewrite (medians of {edit['repeats']}); effective tok/s = tokens / wall"
        cols = (
            "task",
            "engine",
            "mode",
            "tokens",
            "wall s",
            "eff. tok/s",
            "× plain",
            "× llama.cpp",
            "× lc lookup",
            "accepted/drafted",
            "= plain",
        )
        et = table(title, cols, left=("task", "engine", "mode"))
        for task in edit["tasks"]:
            first_row = True
            for e, eo in task["engines"].items():
                q = eo["quality"]
                for i, (mode, mo) in enumerate(eo["modes"].items()):
                    label = ""
                    if first_row:
                        label = f"{task['name']}\n{task['file_lines']} lines, {task['prompt_tokens']} prompt tok"
                        first_row = False
                    acc = f"{mo['accepted_draft_tokens']}/{mo['draft_tokens']}" if mo.get("draft_tokens") else ""
                    et.add_row(
                        label,
                        (
                            f"{e}\nfollowed: {'yes' if q['instruction_followed'] else 'no'}, "
                            f"copied {q['copied_fraction']:.0%}"
                        )
                        if i == 0
                        else "",
                        mode,
                        str(mo["completion_tokens"]),
                        fmt(mo["wall_s"]["median"]),
                        fmt(mo["effective_tok_s"]["median"], "{:.1f}"),
                        fmt(mo.get("x_plain"), "{:.2f}×"),
                        fmt(mo.get("x_llamacpp_plain"), "{:.2f}×"),
                        fmt(mo.get("x_llamacpp_lookup"), "{:.2f}×"),
                        acc,
                        {True: "yes", False: "NO", None: "—"}[mo["identical_to_plain"]],
                    )
        console.print(et)
        print_curves(result, console)

    goals = result.get("goals", {})
    if goals.get("items"):
        gt = table(
            f"issue 3 goals (pairline's default CPU runtime: {goals['default_engine']})",
            ("goal", "engine", "measured", "target", "result", "other runtime"),
            left=("goal", "engine", "other runtime"),
        )
        for g in goals["items"]:
            others = ", ".join(
                f"{e}: {fmt(v['measured'], '{:.2f}×')}" for e, v in g["by_engine"].items() if e != g["engine"]
            )
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "not measured"}[g["pass"]]
            gt.add_row(g["goal"], g["engine"], fmt(g["measured"], "{:.2f}×"), f"{g['target']}×", verdict, others)
        console.print(gt)


def print_curves(result: dict, console) -> None:
    """The acceptance curve: per tenth of the output, accepted / drafted and the mean draft length."""
    rows = []
    for task in result["edit"]["tasks"]:
        for e, eo in task["engines"].items():
            for mode in ("prediction", "useless_prediction"):
                curve = eo["modes"].get(mode, {}).get("acceptance_curve")
                if curve:
                    rows.append((task["name"], e, mode, curve))
    if not rows:
        return
    t = table(
        "acceptance curve: accepted/drafted per tenth of the output, mean draft length (k)",
        ("task", "engine", "mode", *[f"{i * 10}%" for i in range(CURVE_BINS)]),
        left=("task", "engine", "mode"),
    )
    for name, e, mode, curve in rows:
        cells = [f"{b['accepted']}/{b['drafted']}\nk{b['mean_draft']:.1f}" if b["drafted"] else "—" for b in curve]
        t.add_row(name, e, mode, *cells)
    console.print(t)
