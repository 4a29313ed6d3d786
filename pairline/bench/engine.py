"""`pairline bench engine`: pairline on each runtime against its CPU peers, side by side, in one run.

Engines (pairline/bench/peers.py): pairline-llamacpp, pairline-torch, the raw llama.cpp peer
(llama-cpp-python's own create_completion, plain and with its prompt lookup), HF transformers fp32
and bf16. Every engine runs in its own worker process (so peak RSS is per engine), and the parent
drives the workers in turn, one measurement at a time, alternating their order between repeats:
the engines see the same machine state, in the same command. All of them get the very same token
ids (pairline's tokenizer, built from the GGUF's own vocabulary).

Definitions (docs/benchmarks.md):
- load: from the start of loading to a ready model, Python imports excluded (reported apart).
- TTFT: request to the first generated token, no reused prefix.
- decode tok/s: (N - 1) / (t_N - t_1), t_i = when token i reached the caller.
- effective edit tok/s: completion tokens / (last token - request), prefill included.
- acceptance curve: over each tenth of an output, drafted tokens accepted / drafted, and the
  draft lengths the policy chose (from Generation.steps).

This module holds the configuration and the run (engines, phases, command line); the worker
processes are engine_workers.py, the prompts and the scoring of answers engine_tasks.py, the
ratios, goals and printed tables engine_report.py, and what every bench shares common.py.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairline.bench.common import (
    busy_processes,
    fmt,
    git_state,
    load_tasks,
    loadavg,
    machine_info,
    ratio,
    summary,
)
from pairline.bench.engine_report import compute_goals, compute_ratios, edit_ratios
from pairline.bench.engine_tasks import (
    acceptance_curve,
    code_source,
    edit_messages,
    edit_quality,
    fenced,
    useless_prediction,
)
from pairline.bench.engine_workers import Worker
from pairline.bench.peers import (
    ENGINE_EDIT_MODES,
    ENGINES,
    HF_ENGINES,
    LLAMACPP_ENGINES,
    PAIRLINE_EDIT_MODES,
    PAIRLINE_ENGINES,
    llamacpp_available,
)
from pairline.engine.runtime import common_prefix
from pairline.errors import PairlineError

SCHEMA = 2
EDIT_MODES = PAIRLINE_EDIT_MODES
PHASES = ("engine", "verify", "edit")


@dataclass(slots=True)
class BenchConfig:
    model: str
    engines: tuple[str, ...] | None = None  # None: every engine that can run here
    edit_engines: tuple[str, ...] | None = None  # None: every chosen engine that edits (not HF)
    dtype: str = "auto"  # pairline-torch's activations: auto = the runtime's default (bf16 on CPU)
    quant: str | None = None  # pairline-torch's weights: None/auto = the runtime's default (int8 on CPU)
    repeats: int = 3
    quick: bool = False
    n_ctx: int = 4096
    ttft_sizes: tuple[int, ...] = (200, 2000)
    decode_tokens: int = 128
    phases: tuple[str, ...] = PHASES  # engine: load/TTFT/decode; verify: k-token forward cost; edit
    verify_context: int = 1000
    verify_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 17, 32, 33)
    edit_tasks: tuple[str, ...] | None = None  # None: all of tasks.json
    edit_modes: tuple[str, ...] = EDIT_MODES  # pairline's; the llama.cpp peers always run theirs
    edit_repeats: int | None = None  # None: repeats
    edit_lines: int | None = None  # truncate task files to this many lines (quick)
    edit_max_tokens: int | None = None  # cap on max_tokens (quick)
    threads: int | None = None  # None: each engine's own default (all cores)
    omp_wait_policy: str | None = None  # None: OpenMP's default (threads spin between ops)
    useless_seed: int = 0  # the random text of useless_prediction
    command: str = ""
    log: Any = field(default=None, repr=False)
    checkpoint: Any = field(default=None, repr=False)  # called with the partial result after each phase

    @classmethod
    def quick_config(cls, model: str, **kw: Any) -> BenchConfig:
        base = {
            "repeats": 1,
            "quick": True,
            "n_ctx": 1024,
            "ttft_sizes": (64,),
            "decode_tokens": 16,
            "edit_tasks": ("bisect-rename",),
            "edit_lines": 15,
            "edit_max_tokens": 32,
            "verify_context": 64,
            "verify_ks": (1, 4),
        }
        base.update(kw)
        return cls(model=model, **base)


# ----------------------------------------------------------------------------------- engines


def resolve_engines(cfg: BenchConfig) -> tuple[list[str], list[str], dict[str, str]]:
    """(engines to load, engines that run the edit tasks, engines skipped and why)."""
    have_llamacpp = llamacpp_available()
    skipped: dict[str, str] = {}
    if cfg.engines is None:
        names = []
        for e in ENGINES:
            if e in LLAMACPP_ENGINES and not have_llamacpp:
                skipped[e] = "llama-cpp-python does not import here"
            else:
                names.append(e)
    else:
        names = []
        for e in cfg.engines:
            if e not in ENGINES:
                raise PairlineError(f"unknown engine {e!r}; available: {', '.join(ENGINES)}")
            if e in LLAMACPP_ENGINES and not have_llamacpp:
                raise PairlineError(f"engine {e} needs llama-cpp-python, which does not import here")
            if e not in names:
                names.append(e)
    if "engine" not in cfg.phases:  # HF only takes part in load/TTFT/decode
        for e in HF_ENGINES:
            if e in names:
                names.remove(e)
                skipped[e] = "runs only in the engine phase"
    editors = [e for e in names if e in ENGINE_EDIT_MODES]
    if cfg.edit_engines is not None:
        for e in cfg.edit_engines:
            if e not in ENGINE_EDIT_MODES:
                raise PairlineError(f"engine {e!r} runs no edit tasks; those that do: {', '.join(ENGINE_EDIT_MODES)}")
            if e not in names:
                raise PairlineError(f"edit engine {e!r} is not among the engines of this run ({', '.join(names)})")
        editors = [e for e in editors if e in cfg.edit_engines]
    if not names:
        raise PairlineError("no engine to run")
    return names, editors, skipped


def default_pairline_engine(path: Path) -> str:
    """The engine pairline itself would use here: load_engine's runtime="auto" choice on the CPU."""
    try:
        from pairline.engine.load import choose_runtime

        return f"pairline-{choose_runtime('auto', path, 'cpu')}"
    except Exception:
        return "pairline-llamacpp" if llamacpp_available() else "pairline-torch"


def _engine_kwargs(name: str, cfg: BenchConfig, path: Path) -> dict:
    if name == "pairline":
        return {"model": cfg.model, "runtime": "auto", "dtype": "auto", "n_ctx": cfg.n_ctx}
    if name == "pairline-llamacpp":
        return {"model": cfg.model, "runtime": "llamacpp", "dtype": "auto", "n_ctx": cfg.n_ctx}
    if name == "pairline-torch":
        return {"model": cfg.model, "runtime": "torch", "dtype": cfg.dtype, "n_ctx": cfg.n_ctx, "quant": cfg.quant}
    if name in ("llamacpp", "llamacpp-lookup"):
        return {"model_path": str(path), "n_ctx": cfg.n_ctx, "threads": cfg.threads, "lookup": name.endswith("lookup")}
    return {"model_path": str(path), "dtype": name.removeprefix("hf-")}


# ----------------------------------------------------------------------------------- the run


def _log(cfg: BenchConfig, msg: str) -> None:
    if cfg.log is not None:
        cfg.log(msg)


def _checkpoint(cfg: BenchConfig, result: dict) -> None:
    if cfg.checkpoint is not None:
        cfg.checkpoint(result)


def _load_sample(result: dict, label: str, t0: float) -> None:
    """The machine is shared: note its load as the run goes, so a reader can weigh the figures."""
    result["load_samples"].append({"at": label, "t_s": round(time.perf_counter() - t0, 1), "loadavg": loadavg()})


def _validate(cfg: BenchConfig) -> None:
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise PairlineError(f"unknown dtype {cfg.dtype!r}; use auto, bf16 or fp32")
    for m in cfg.edit_modes:
        if m not in EDIT_MODES:
            raise PairlineError(f"unknown edit mode {m!r}; available: {', '.join(EDIT_MODES)}")
    for ph in cfg.phases:
        if ph not in PHASES:
            raise PairlineError(f"unknown phase {ph!r}; available: {', '.join(PHASES)}")
    if cfg.repeats < 1:
        raise PairlineError("--repeats must be at least 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise PairlineError("--threads must be at least 1")


def run_engine_bench(cfg: BenchConfig) -> dict:
    from pairline.engine.tokenizer import Tokenizer, encode_chat
    from pairline.models.fetch import resolve

    _validate(cfg)
    names, editors, skipped = resolve_engines(cfg)
    path = resolve(cfg.model)
    tok = Tokenizer.load(path)
    default_engine = "pairline" if "pairline" in names else default_pairline_engine(path)
    started = _dt.datetime.now(_dt.timezone.utc)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "engine",
        "model": cfg.model,
        "model_file": path.name,
        "engines_requested": list(cfg.engines) if cfg.engines else "all available",
        "engine_names": names,
        "edit_engines": editors,
        "skipped_engines": skipped,
        "default_engine": default_engine,
        "phases": list(cfg.phases),
        "repeats": cfg.repeats,
        "quick": cfg.quick,
        "command": cfg.command,
        "argv": list(sys.argv),
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_state(),
        "loadavg_start": loadavg(),
        "busy_processes_start": busy_processes(),
        "load_samples": [],
        "settings": {},
        "engines": {},
        "ratios": {},
        "decode_agreement": {},
        "edit": {"tasks": []},
        "goals": {},
        "complete": False,
    }

    source, source_desc = code_source()
    src_ids = tok.encode(source, add_bos=False)
    sizes = [n for n in cfg.ttft_sizes if n < cfg.n_ctx - 8]
    prompts = {n: src_ids[:n] for n in sizes}
    decode_prompt = src_ids[: min(200, max(sizes, default=200))]
    env: dict[str, str] = {}
    if cfg.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = cfg.omp_wait_policy.upper()
    if cfg.threads:
        env["PAIRLINE_THREADS"] = str(cfg.threads)  # the llamacpp runtime reads its count from here
    result["settings"] = {
        "prompt_source": source_desc,
        "ttft_prompt_tokens": sizes,
        "decode_tokens": cfg.decode_tokens,
        "decode_prompt_tokens": len(decode_prompt),
        "n_ctx": cfg.n_ctx,
        "threads": cfg.threads or "engine default",
        "worker_env": env,
        "pairline_torch": {"dtype": cfg.dtype, "quant": cfg.quant or "auto"},
        "rss_scope": "peak RSS (ru_maxrss) of each engine's own worker process",
        "load_scope": "one load per run, in a fresh worker process; Python imports excluded (import_s)",
        "order": "engines alternate order on every repeat; one measurement at a time",
        "decode_modes": {
            n: ("prompt lookup (its draft model is always on)" if n == "llamacpp-lookup" else "plain greedy")
            for n in names
        },
    }

    workers: dict[str, Worker] = {}

    def close(n: str, force: bool = False) -> None:
        end = workers.pop(n).close(force)
        if n in result["engines"] and end:
            result["engines"][n]["peak_rss_mb"] = end.get("peak_rss_mb")

    try:
        # ---- load, one engine at a time
        for n in names:
            _log(cfg, f"loading {n} ...")
            workers[n] = Worker(n, _engine_kwargs(n, cfg, path), cfg.threads, env)
            result["engines"][n] = {"info": workers[n].info, "load_s": workers[n].info["load_s"]}
            _log(cfg, f"    {workers[n].info['load_s']:.2f} s")
        for w in workers.values():
            w.call("warmup", ids=decode_prompt)
        _load_sample(result, "loaded", t_start)

        if "engine" in cfg.phases:
            _engine_phase(cfg, workers, result, tok, sizes, prompts, decode_prompt)
            _load_sample(result, "engine phase done", t_start)
            for n in [n for n in workers if n in HF_ENGINES]:
                close(n)  # HF's part is over: free its memory for the rest
        _checkpoint(cfg, result)

        if cfg.verify_ks and "verify" in cfg.phases:
            for n in [n for n in workers if n in PAIRLINE_ENGINES]:
                _verify_phase(cfg, n, workers[n], result, src_ids)
            _load_sample(result, "verify phase done", t_start)
        _checkpoint(cfg, result)

        if "edit" in cfg.phases and editors:
            _run_edits(cfg, {n: workers[n] for n in editors}, tok, encode_chat, result, t_start)
    finally:
        failed = sys.exc_info()[0] is not None  # e.g. Ctrl-C: stop the workers now, mid-measurement
        for n in list(workers):
            close(n, force=failed)
    result["ratios"] = compute_ratios(result)
    result["goals"] = compute_goals(result)
    result["loadavg_end"] = loadavg()
    result["busy_processes_end"] = busy_processes()
    result["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["complete"] = True
    return result


def _engine_phase(cfg: BenchConfig, workers: dict, result: dict, tok, sizes, prompts, decode_prompt) -> None:
    names = list(workers)
    ttft: dict[str, dict[int, list]] = {n: {s: [] for s in sizes} for n in names}
    engine_ttft: dict[str, dict[int, list]] = {n: {s: [] for s in sizes} for n in names}
    decode: dict[str, list] = {n: [] for n in names}
    decode_n: dict[str, list] = {n: [] for n in names}
    decode_tokens: dict[str, list[int]] = {}
    for rep in range(cfg.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for s in sizes:
            for n in order:
                r = workers[n].call("ttft", ids=prompts[s])
                _log(cfg, f"[{rep + 1}/{cfg.repeats}] {n}: TTFT, {s}-token prompt: {fmt(r['ttft_s'], '{:.3f}')} s")
                ttft[n][s].append(r["ttft_s"])
                engine_ttft[n][s].append(r.get("engine_ttft_s"))
        for n in order:
            r = workers[n].call("decode", ids=decode_prompt, n=cfg.decode_tokens)
            rate = fmt(r["decode_tok_s"], "{:.1f}")
            _log(cfg, f"[{rep + 1}/{cfg.repeats}] {n}: decode: {rate} tok/s ({r['tokens']} tokens)")
            decode[n].append(r["decode_tok_s"])
            decode_n[n].append(r["tokens"])
            decode_tokens.setdefault(n, r["token_ids"])
    for n in names:
        e = result["engines"][n]
        e["ttft_s"] = {str(s): summary(ttft[n][s]) for s in sizes}
        if n in PAIRLINE_ENGINES:
            e["engine_ttft_s"] = {str(s): summary(engine_ttft[n][s]) for s in sizes}
        e["decode_tok_s"] = summary(decode[n])
        e["decode_tokens"] = decode_n[n]
        e["decode_text_head"] = tok.decode(decode_tokens[n])[:160]
    # greedy agreement: how many leading tokens each engine's decode shares with each reference
    refs = [r for r in ("llamacpp", "hf-fp32") if r in decode_tokens]
    result["decode_agreement"] = {
        "definition": "leading greedy tokens of the decode measurement that match the reference engine's",
        **{n: {r: common_prefix(decode_tokens[n], decode_tokens[r]) for r in refs if r != n} for n in names},
    }


def _verify_phase(cfg: BenchConfig, name: str, worker: Worker, result: dict, src_ids: list[int]) -> None:
    ctx_ids = src_ids[: cfg.verify_context]
    _log(cfg, f"{name}: verify cost, k = {list(cfg.verify_ks)} at {len(ctx_ids)} context")
    vc = worker.call("verify_cost", ids=ctx_ids, ks=list(cfg.verify_ks), repeats=cfg.repeats)
    base = statistics.median(vc["1"]) if "1" in vc else None
    result["engines"][name]["verify_cost"] = {
        "context_tokens": len(ctx_ids),
        "definition": "median seconds of one forward of k tokens returning all k rows' logits; "
        "x_step = that / the median 1-token step",
        "k": {
            k: {"s": statistics.median(v), "x_step": ratio(statistics.median(v), base), "runs": v}
            for k, v in vc.items()
        },
    }
    cost = result["engines"][name]["verify_cost"]["k"]
    _log(cfg, "    " + ", ".join(f"k={k}: {v['x_step']:.2f}x" for k, v in cost.items() if v["x_step"]))


def _edit_plan(cfg: BenchConfig, editors: list[str]) -> list[tuple[str, str]]:
    plan = []
    for e in editors:
        modes = ENGINE_EDIT_MODES[e]
        if e in PAIRLINE_ENGINES:
            modes = tuple(m for m in modes if m in cfg.edit_modes or m == "plain")  # plain: the baseline
        plan += [(e, m) for m in modes]
    return plan


def _select_tasks(cfg: BenchConfig) -> list[dict]:
    tasks = load_tasks()
    if cfg.edit_tasks is not None:
        known = {t["name"] for t in tasks}
        for name in cfg.edit_tasks:
            if name not in known:
                raise PairlineError(f"unknown edit task {name!r}; known: {', '.join(sorted(known))}")
        tasks = [t for t in tasks if t["name"] in cfg.edit_tasks]
    return tasks


def _run_edits(cfg: BenchConfig, workers: dict[str, Worker], tok, encode_chat, result: dict, t_start: float) -> dict:
    tasks = _select_tasks(cfg)
    repeats = cfg.edit_repeats or cfg.repeats
    plan = _edit_plan(cfg, list(workers))
    out = {
        "repeats": repeats,
        "plan": [f"{e}:{m}" for e, m in plan],
        "definition": "effective tok/s = completion tokens / (last token - request), prefill included; "
        "x_plain = median effective tok/s of the mode / that of the same engine's plain (llamacpp-lookup: "
        "raw llamacpp's plain); x_llamacpp_plain / x_llamacpp_lookup = / the raw peer's on the same task",
        "useless_prediction": f"seeded random lowercase words, as many tokens as the file's prediction (seed from "
        f"--useless-seed {cfg.useless_seed} and the task name)",
        "tasks": [],
    }
    result["edit"] = out
    for task in tasks:
        source = task["source"]
        if cfg.edit_lines:
            source = "".join(source.splitlines(keepends=True)[: cfg.edit_lines])
        prompt = encode_chat(edit_messages(task["instruction"], task["path"], source), tok)
        prediction = tok.encode(fenced(source), add_bos=False)
        seed = cfg.useless_seed * 1_000_003 + zlib.crc32(task["name"].encode())
        useless = useless_prediction(tok, len(prediction), seed)
        max_tokens = len(prediction) + 64
        if cfg.edit_max_tokens:
            max_tokens = min(max_tokens, cfg.edit_max_tokens)
        runs: dict[tuple[str, str], list[dict]] = {em: [] for em in plan}
        first: dict[tuple[str, str], dict] = {}
        for rep in range(repeats):
            for e, mode in plan if rep % 2 == 0 else plan[::-1]:
                pred = {"prediction": prediction, "useless_prediction": useless}.get(mode)
                if mode == "ceiling":
                    pred = first[(e, "plain")]["token_ids"]  # plain runs first in the first repeat
                r = workers[e].call("edit", ids=prompt, max_tokens=max_tokens, mode=mode, prediction=pred)
                _log(
                    cfg,
                    f"[{rep + 1}/{repeats}] edit {task['name']}, {e} {mode}: {r['completion_tokens']} tokens in "
                    f"{r['wall_s']:.2f} s = {r['effective_tok_s']:.1f} tok/s"
                    + (
                        f", drafts {r['accepted_draft_tokens']}/{r['draft_tokens']}, {r['forward_calls']} calls"
                        if r.get("draft_tokens")
                        else ""
                    ),
                )
                first.setdefault((e, mode), r)
                runs[(e, mode)].append(r)
        engines_out: dict[str, dict] = {}
        for e in workers:
            base_key = (e, "plain") if (e, "plain") in first else ("llamacpp", "plain")
            base_ids = first[base_key]["token_ids"] if base_key in first else None
            own_first = next(first[(e, m)] for m in ENGINE_EDIT_MODES[e] if (e, m) in first)
            eo = {
                "quality": edit_quality(task, source, own_first["text"]),
                "text_head": own_first["text"][:200],
                "modes": {},
            }
            for (e2, mode), rs in runs.items():
                if e2 != e:
                    continue
                for r in rs:
                    r["identical_to_plain"] = r["token_ids"] == base_ids if base_ids is not None else None
                    if r["identical_to_plain"] is False:
                        r["first_divergence"] = common_prefix(r["token_ids"], base_ids)
                last = rs[-1]
                mo = {
                    "effective_tok_s": summary([r["effective_tok_s"] for r in rs]),
                    "wall_s": summary([r["wall_s"] for r in rs]),
                    "ttft_s": summary([r["ttft_s"] for r in rs]),
                    "completion_tokens": last["completion_tokens"],
                    "finish_reason": last["finish_reason"],
                    "identical_to_plain": (None if base_ids is None else all(r["identical_to_plain"] for r in rs)),
                }
                for key in (
                    "accepted_prediction_tokens",
                    "rejected_prediction_tokens",
                    "draft_tokens",
                    "accepted_draft_tokens",
                    "forward_calls",
                ):
                    mo[key] = last.get(key)
                if last.get("steps"):
                    mo["acceptance_curve"] = acceptance_curve(last["steps"])
                    mo["steps"] = last["steps"]  # (drafted, accepted) per call, of the last run
                mo["runs"] = [{k: v for k, v in r.items() if k not in ("token_ids", "text", "steps")} for r in rs]
                eo["modes"][mode] = mo
            engines_out[e] = eo
        edit_ratios(engines_out)
        out["tasks"].append(
            {
                "name": task["name"],
                "kind": task.get("kind"),
                "file": task["file"],
                "instruction": task["instruction"],
                "file_lines": len(source.splitlines()),
                "prompt_tokens": len(prompt),
                "prediction_tokens": len(prediction),
                "useless_prediction_seed": seed,
                "max_tokens": max_tokens,
                "engines": engines_out,
            }
        )
        _load_sample(result, f"edit {task['name']} done", t_start)
        _checkpoint(cfg, result)
    return out


def command_line(args: Any) -> str:
    parts = ["pairline", "bench", "engine", "--model", args.model]
    for flag, attr in (
        ("--engines", "engines"),
        ("--edit-engines", "edit_engines"),
        ("--dtype", "dtype"),
        ("--quant", "quant"),
        ("--repeats", "repeats"),
        ("--n-ctx", "n_ctx"),
        ("--threads", "threads"),
        ("--omp-wait-policy", "omp_wait_policy"),
        ("--phases", "phases"),
        ("--edit-tasks", "edit_tasks"),
        ("--edit-modes", "edit_modes"),
        ("--edit-repeats", "edit_repeats"),
        ("--useless-seed", "useless_seed"),
        ("--out", "out"),
    ):
        v = getattr(args, attr, None)
        if v is not None and not (attr == "dtype" and v == "auto"):
            parts += [flag, str(v)]
    if getattr(args, "quick", False):
        parts.append("--quick")
    return shlex.join(parts)
