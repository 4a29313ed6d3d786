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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import os
import platform
import random
import re
import shlex
import statistics
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairline.bench.peers import (
    ENGINE_EDIT_MODES,
    ENGINES,
    HF_ENGINES,
    LLAMACPP_ENGINES,
    PAIRLINE_EDIT_MODES,
    PAIRLINE_ENGINES,
    current_rss_mb,
    llamacpp_available,
    make_backend,
    peak_rss_mb,
)
from pairline.engine.guard import cpu_description
from pairline.errors import PairlineError

TASKS_DIR = Path(__file__).parent / "tasks"
SCHEMA = 2
EDIT_MODES = PAIRLINE_EDIT_MODES
PHASES = ("engine", "verify", "edit")
PEER_ENGINES = ("llamacpp", "llamacpp-lookup", "hf-fp32", "hf-bf16")
CURVE_BINS = 10
CURVE_MODES = ("prediction", "useless_prediction", "ceiling", "prompt_lookup")

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


# ---------------------------------------------------------------------------------------- workers


def _worker_main(conn, name: str, kwargs: dict, threads: int | None = None, env: dict | None = None) -> None:
    try:
        # OpenMP reads its settings when torch is first imported: apply them before that
        env_applied = "torch" not in sys.modules
        os.environ.update(env or {})
        backend = make_backend(name, kwargs)
        if threads:
            backend.set_threads(threads)
        backend.info["env"] = dict(env or {})
        backend.info["thread_env"] = {
            k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_", "PAIRLINE_"))
        }
        backend.info["env_applied_before_torch"] = env_applied
        conn.send(("ok", backend.info))
        while True:
            method, args = conn.recv()
            if method == "stop":
                conn.send(("ok", {"peak_rss_mb": peak_rss_mb()}))
                return
            if method == "rss":
                conn.send(("ok", {"peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb()}))
                continue
            conn.send(("ok", getattr(backend, method)(**args)))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))


class Worker:
    """One engine in its own process, driven one call at a time."""

    def __init__(self, name: str, kwargs: dict, threads: int | None = None, env: dict | None = None):
        import multiprocessing as mp

        self.name = name
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, name, kwargs, threads, env), daemon=True)
        self.proc.start()
        child.close()
        self.info: dict = self._recv()

    def _recv(self) -> Any:
        while not self.conn.poll(0.5):
            if not self.proc.is_alive():
                raise PairlineError(f"the {self.name} benchmark worker exited (code {self.proc.exitcode})")
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise PairlineError(f"the {self.name} benchmark worker exited (code {self.proc.exitcode})") from None
        if status == "error":
            raise PairlineError(f"the {self.name} benchmark worker failed:\n{payload}")
        return payload

    def call(self, method: str, **kwargs: Any) -> Any:
        self.conn.send((method, kwargs))
        return self._recv()

    def close(self, force: bool = False) -> dict:
        """force: do not wait for a measurement in flight (the run is being abandoned)."""
        result: dict = {}
        if self.proc.is_alive() and not force:
            try:
                self.conn.send(("stop", {}))
                result = self._recv()
            except (PairlineError, OSError, BrokenPipeError):
                pass
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        return result


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
    if name == "pairline-llamacpp":
        return {"model": cfg.model, "runtime": "llamacpp", "dtype": "auto", "n_ctx": cfg.n_ctx}
    if name == "pairline-torch":
        return {"model": cfg.model, "runtime": "torch", "dtype": cfg.dtype, "n_ctx": cfg.n_ctx, "quant": cfg.quant}
    if name in ("llamacpp", "llamacpp-lookup"):
        return {"model_path": str(path), "n_ctx": cfg.n_ctx, "threads": cfg.threads, "lookup": name.endswith("lookup")}
    return {"model_path": str(path), "dtype": name.removeprefix("hf-")}


# ----------------------------------------------------------------------------------- inputs


def code_source() -> tuple[str, str]:
    """Real code text for prompts: the source of a stdlib module (argparse, ~2.6k lines)."""
    import argparse
    import inspect

    return inspect.getsource(argparse), f"inspect.getsource(argparse), Python {platform.python_version()}"


def load_tasks() -> list[dict]:
    data = json.loads((TASKS_DIR / "tasks.json").read_text())
    tasks = []
    for t in data["tasks"]:
        t = dict(t)
        t["source"] = (TASKS_DIR / t["file"]).read_text()
        tasks.append(t)
    return tasks


def edit_messages(instruction: str, path: str, source: str) -> list[dict]:
    content = (
        f"{instruction}\n\nReply with the complete updated file `{path}` in a single ```python code block, "
        f"and nothing else.\n\n```python\n{source}```"
    )
    return [{"role": "user", "content": content}]


def fenced(source: str) -> str:
    """The prediction for an edit: the file as the reply is asked to hold it."""
    return f"```python\n{source}```"


_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> str:
    m = _FENCE.search(text)
    return m.group(1) if m else text


def edit_quality(task: dict, source: str, text: str) -> dict:
    code = extract_code(text)
    followed = all(s in code for s in task.get("expect_contains", ())) and not any(
        s in code for s in task.get("expect_absent", ())
    )
    a, b = source.splitlines(), code.splitlines()
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    same = sum(block.size for block in sm.get_matching_blocks())
    return {
        "instruction_followed": followed,
        "output_lines": len(b),
        "lines_copied_unchanged": same,
        "copied_fraction": same / max(len(a), 1),  # of the original file's lines, found unchanged
    }


def useless_prediction(tok, n_tokens: int, seed: int) -> list[int]:
    """A prediction that shares nothing with the output: seeded random lowercase words, cut to
    n_tokens tokens. It measures what speculation costs when the caller's guess is worthless."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: list[str] = []
    ids: list[int] = []
    while len(ids) < n_tokens:
        for _ in range(max(64, n_tokens)):
            words.append("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))))
            if rng.random() < 0.1:
                words.append("\n")
        ids = tok.encode(" ".join(words), add_bos=False)
    return ids[:n_tokens]


def acceptance_curve(steps: list, bins: int = CURVE_BINS) -> list[dict]:
    """Per tenth of the output (by the output position of each decode/verify call): calls, tokens
    produced, drafted tokens and accepted ones, and the draft lengths chosen. The output's first
    token comes from the prefill, not from a step: it counts as a token of the first tenth."""
    total = 1 + sum(a + 1 for _, a in steps)
    out = [
        {"from": i / bins, "to": (i + 1) / bins, "calls": 0, "tokens": 0, "drafting_calls": 0, "drafted": 0}
        | {"accepted": 0, "max_draft": 0}
        for i in range(bins)
    ]
    out[0]["tokens"] = 1 if steps else 0
    pos = 1
    for d, a in steps:
        b = out[min(bins - 1, pos * bins // total)]
        b["calls"] += 1
        b["tokens"] += a + 1
        if d:
            b["drafting_calls"] += 1
            b["drafted"] += d
            b["accepted"] += a
            b["max_draft"] = max(b["max_draft"], d)
        pos += a + 1
    for b in out:
        b["acceptance"] = b["accepted"] / b["drafted"] if b["drafted"] else None
        b["mean_draft"] = b["drafted"] / b["drafting_calls"] if b["drafting_calls"] else 0.0
        b["tokens_per_call"] = b["tokens"] / b["calls"] if b["calls"] else None
    return out


# ----------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    cpu = cpu_description()  # the crash guard's reading, which keys its checks
    info["cpu_model"] = cpu["model"]
    flags = set(cpu["flags"].split())
    info["flags"] = {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "bf16_hardware": bool({"avx512_bf16", "amx_bf16", "avx_ne_convert"} & flags),
    }
    with contextlib.suppress(OSError, ValueError):
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0]
        info["memory_gb"] = round(int(meminfo.split()[1]) / 2**20, 1)
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    with contextlib.suppress(Exception):
        import transformers

        info["transformers"] = transformers.__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["llama_cpp_python"] = version("llama_cpp_python")
    return info


def git_state() -> dict:
    """The commit measured, and the engine files that differ from it (others may be editing them)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out: dict[str, Any] = {}
    try:

        def run(*a: str) -> str:
            cmd = ["git", *a]
            return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout

        out["commit"] = run("rev-parse", "HEAD").strip()
        out["dirty"] = [line[3:] for line in run("status", "--porcelain", "--", "pairline").splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def busy_processes(top: int = 6) -> list[str]:
    """The busiest processes on the machine (other people's work shows up here)."""
    import subprocess

    try:
        out = subprocess.run(
            ["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip()[:120] for line in out.splitlines()[1 : top + 1]]


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------------- stats


def _summary(values: list[float | None]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": values}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _agree_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# ----------------------------------------------------------------------------------- the run


def _log(cfg: BenchConfig, msg: str) -> None:
    if cfg.log is not None:
        cfg.log(msg)


def _checkpoint(cfg: BenchConfig, result: dict) -> None:
    if cfg.checkpoint is not None:
        cfg.checkpoint(result)


def _load_sample(result: dict, label: str, t0: float) -> None:
    """The machine is shared: note its load as the run goes, so a reader can weigh the figures."""
    result["load_samples"].append({"at": label, "t_s": round(time.perf_counter() - t0, 1), "loadavg": _loadavg()})


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
    default_engine = default_pairline_engine(path)
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
        "loadavg_start": _loadavg(),
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
    result["loadavg_end"] = _loadavg()
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
                _log(cfg, f"[{rep + 1}/{cfg.repeats}] {n}: TTFT, {s}-token prompt: {_f(r['ttft_s'], '{:.3f}')} s")
                ttft[n][s].append(r["ttft_s"])
                engine_ttft[n][s].append(r.get("engine_ttft_s"))
        for n in order:
            r = workers[n].call("decode", ids=decode_prompt, n=cfg.decode_tokens)
            rate = _f(r["decode_tok_s"], "{:.1f}")
            _log(cfg, f"[{rep + 1}/{cfg.repeats}] {n}: decode: {rate} tok/s ({r['tokens']} tokens)")
            decode[n].append(r["decode_tok_s"])
            decode_n[n].append(r["tokens"])
            decode_tokens.setdefault(n, r["token_ids"])
    for n in names:
        e = result["engines"][n]
        e["ttft_s"] = {str(s): _summary(ttft[n][s]) for s in sizes}
        if n in PAIRLINE_ENGINES:
            e["engine_ttft_s"] = {str(s): _summary(engine_ttft[n][s]) for s in sizes}
        e["decode_tok_s"] = _summary(decode[n])
        e["decode_tokens"] = decode_n[n]
        e["decode_text_head"] = tok.decode(decode_tokens[n])[:160]
    # greedy agreement: how many leading tokens each engine's decode shares with each reference
    refs = [r for r in ("llamacpp", "hf-fp32") if r in decode_tokens]
    result["decode_agreement"] = {
        "definition": "leading greedy tokens of the decode measurement that match the reference engine's",
        **{n: {r: _agree_prefix(decode_tokens[n], decode_tokens[r]) for r in refs if r != n} for n in names},
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
            k: {"s": statistics.median(v), "x_step": _ratio(statistics.median(v), base), "runs": v}
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
                        r["first_divergence"] = _agree_prefix(r["token_ids"], base_ids)
                last = rs[-1]
                mo = {
                    "effective_tok_s": _summary([r["effective_tok_s"] for r in rs]),
                    "wall_s": _summary([r["wall_s"] for r in rs]),
                    "ttft_s": _summary([r["ttft_s"] for r in rs]),
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
        _edit_ratios(engines_out)
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


def _edit_ratios(engines_out: dict) -> None:
    """x_plain (the same engine's plain; llama.cpp lookup: raw llama.cpp's), x_llamacpp_plain and
    x_llamacpp_lookup (the raw peer's modes on the same task)."""

    def eff(e: str, m: str) -> float | None:
        return engines_out.get(e, {}).get("modes", {}).get(m, {}).get("effective_tok_s", {}).get("median")

    lc_plain, lc_lookup = eff("llamacpp", "plain"), eff("llamacpp-lookup", "prompt_lookup")
    for e, eo in engines_out.items():
        own_plain = eff(e, "plain") if "plain" in eo["modes"] else lc_plain
        for mo in eo["modes"].values():
            v = mo["effective_tok_s"]["median"]
            mo["x_plain"] = _ratio(v, own_plain)
            mo["x_llamacpp_plain"] = _ratio(v, lc_plain)
            mo["x_llamacpp_lookup"] = _ratio(v, lc_lookup)


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
            "decode_vs_llamacpp": _ratio(d, med("llamacpp", "decode_tok_s", "median")),
            "decode_vs_hf_bf16": _ratio(d, med("hf-bf16", "decode_tok_s", "median")),
            "load_vs_llamacpp": _ratio(med("llamacpp", "load_s"), med(n, "load_s")),
        }
        for s in sizes:
            t = med(n, "ttft_s", s, "median")
            r[f"ttft_{s}_vs_llamacpp"] = _ratio(med("llamacpp", "ttft_s", s, "median"), t)
            r[f"ttft_{s}_vs_hf_bf16"] = _ratio(med("hf-bf16", "ttft_s", s, "median"), t)
            r[f"ttft_{s}_vs_fastest_peer"] = _ratio(fastest[s][0], t)
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
                extra["vs_llamacpp_decode_phase"] = _ratio(statistics.median(effs), lc) if effs else None
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


# ----------------------------------------------------------------------------------- output


def default_out_path(out: str | None, model: str, label: str | None = None, kind: str = "engine") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if "/" in model else model)
    name = f"{kind}-{safe}{'-' + label if label else ''}-{stamp}.json"
    if out is None:
        return Path("bench-results") / name
    p = Path(out)
    if p.suffix.lower() == ".json" and not p.is_dir():
        return p
    return p / name


def write_json(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def print_tables(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)  # logs: keep tables readable
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
        t = Table(title=f"engines side by side (medians of {result['repeats']}; ×: above 1 = faster than the other)")
        cols = ["engine", "load s"]
        for s in sizes:
            cols += [f"TTFT {s} s", "× fastest peer"]
        cols += ["decode tok/s", "× llama.cpp", "× HF bf16", "peak RSS MB"]
        for c in cols:
            t.add_column(c, justify="left" if c == "engine" else "right")
        for n, e in engines.items():
            r = ratios.get(n, {})
            cells = [n, _f(e.get("load_s"))]
            for s in sizes:
                cells += [
                    _f(e.get("ttft_s", {}).get(s, {}).get("median"), "{:.3f}"),
                    _f(r.get(f"ttft_{s}_vs_fastest_peer"), "{:.2f}×"),
                ]
            cells += [
                _f(e.get("decode_tok_s", {}).get("median"), "{:.1f}"),
                _f(r.get("decode_vs_llamacpp"), "{:.2f}×"),
                _f(r.get("decode_vs_hf_bf16"), "{:.2f}×"),
                _f(e.get("peak_rss_mb"), "{:.0f}"),
            ]
            t.add_row(*cells)
        console.print(t)

    for n, e in engines.items():
        vc = e.get("verify_cost")
        if not vc:
            continue
        vt = Table(title=f"{n}: cost of a k-token forward (verify step) at {vc['context_tokens']} context")
        for c in ("k", "ms", "× 1-token step", "ms per token"):
            vt.add_column(c, justify="right")
        for k, v in vc["k"].items():
            vt.add_row(k, _f(v["s"] * 1e3, "{:.1f}"), _f(v["x_step"], "{:.2f}×"), _f(v["s"] * 1e3 / int(k), "{:.1f}"))
        console.print(vt)

    edit = result.get("edit", {})
    if edit.get("tasks"):
        et = Table(title=f"edit: whole-file rewrite (medians of {edit['repeats']}); effective tok/s = tokens / wall")
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
        for col in cols:
            et.add_column(col, justify="left" if col in ("task", "engine", "mode") else "right")
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
                        _f(mo["wall_s"]["median"]),
                        _f(mo["effective_tok_s"]["median"], "{:.1f}"),
                        _f(mo.get("x_plain"), "{:.2f}×"),
                        _f(mo.get("x_llamacpp_plain"), "{:.2f}×"),
                        _f(mo.get("x_llamacpp_lookup"), "{:.2f}×"),
                        acc,
                        {True: "yes", False: "NO", None: "—"}[mo["identical_to_plain"]],
                    )
        console.print(et)
        print_curves(result, console)

    goals = result.get("goals", {})
    if goals.get("items"):
        gt = Table(title=f"issue 3 goals (pairline's default CPU runtime: {goals['default_engine']})")
        for c in ("goal", "engine", "measured", "target", "result", "other runtime"):
            gt.add_column(c, justify="left" if c in ("goal", "engine", "other runtime") else "right")
        for g in goals["items"]:
            others = ", ".join(
                f"{e}: {_f(v['measured'], '{:.2f}×')}" for e, v in g["by_engine"].items() if e != g["engine"]
            )
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "not measured"}[g["pass"]]
            gt.add_row(g["goal"], g["engine"], _f(g["measured"], "{:.2f}×"), f"{g['target']}×", verdict, others)
        console.print(gt)


def print_curves(result: dict, console) -> None:
    """The acceptance curve: per tenth of the output, accepted / drafted and the mean draft length."""
    from rich.table import Table

    rows = []
    for task in result["edit"]["tasks"]:
        for e, eo in task["engines"].items():
            for mode in ("prediction", "useless_prediction"):
                curve = eo["modes"].get(mode, {}).get("acceptance_curve")
                if curve:
                    rows.append((task["name"], e, mode, curve))
    if not rows:
        return
    t = Table(title="acceptance curve: accepted/drafted per tenth of the output, mean draft length (k)")
    for c in ("task", "engine", "mode", *[f"{i * 10}%" for i in range(CURVE_BINS)]):
        t.add_column(c, justify="left" if c in ("task", "engine", "mode") else "right")
    for name, e, mode, curve in rows:
        cells = [f"{b['accepted']}/{b['drafted']}\nk{b['mean_draft']:.1f}" if b["drafted"] else "—" for b in curve]
        t.add_row(name, e, mode, *cells)
    console.print(t)


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
