"""`pairline bench engine`: pairline's torch runtime against HF transformers on the same GGUF.

Every engine runs in its own worker process (so peak RSS is per engine), and the parent drives
the workers in turn, one measurement at a time, alternating their order between repeats: peers
see the same machine state, side by side, in the same command. Both engines get the very same
token ids (pairline's tokenizer, built from the GGUF's own vocabulary).

Definitions (docs/benchmarks.md):
- load: from the start of loading to a ready model, Python imports excluded (reported apart).
- TTFT: request to the first generated token, no reused prefix (pairline: engine.reset() first;
  HF: a fresh generate of 1 token).
- decode tok/s: (N - 1) / (t_N - t_1), t_i = when token i reached the caller (pairline: the
  TokenEvent; HF: the streamer's put()).
- effective edit tok/s: completion tokens / (last token - request), prefill included.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairline.errors import PairlineError

TASKS_DIR = Path(__file__).parent / "tasks"
SCHEMA = 1
EDIT_MODES = ("plain", "prediction", "prompt_lookup", "ceiling")
PEERS = ("hf",)
PHASES = ("engine", "verify", "edit")
DECODE_TARGET = 1.2  # goal (a): torch runtime decode >= 1.2x HF transformers, same dtype
EDIT_TARGET = 2.0  # goal (b): edit with a prediction >= 2x the runtime's own plain decode


@dataclass
class BenchConfig:
    model: str
    runtime: str = "torch"
    dtype: str = "auto"
    peers: tuple[str, ...] = ("hf",)
    repeats: int = 3
    quick: bool = False
    n_ctx: int = 4096
    ttft_sizes: tuple[int, ...] = (200, 2000)
    decode_tokens: int = 128
    phases: tuple[str, ...] = ("engine", "verify", "edit")  # engine: load/TTFT/decode against the peers
    verify_context: int = 1000
    verify_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 17, 32, 33)
    edit_tasks: tuple[str, ...] | None = None  # None: all of tasks.json
    edit_modes: tuple[str, ...] = EDIT_MODES
    edit_repeats: int | None = None  # None: repeats
    edit_lines: int | None = None  # truncate task files to this many lines (quick)
    edit_max_tokens: int | None = None  # cap on max_tokens (quick)
    threads: int | None = None  # None: each engine's own default (pairline: all cores)
    omp_wait_policy: str | None = None  # None: OpenMP's default (threads spin between ops)
    quant: str | None = None  # pairline's weight quantization: None/auto = the runtime's default
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
            "edit_lines": 30,
            "edit_max_tokens": 40,
            "verify_context": 64,
            "verify_ks": (1, 4),
        }
        base.update(kw)
        return cls(model=model, **base)


# ---------------------------------------------------------------------------------------- workers


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class PairlineBackend:
    """pairline's Engine on the torch runtime, in this (worker) process."""

    name = "pairline"

    def __init__(self, model: str, runtime: str, dtype: str, n_ctx: int, quant: str | None = None):
        import warnings

        warnings.filterwarnings("ignore")
        t0 = time.perf_counter()
        import torch

        from pairline.engine.load import load_engine
        from pairline.engine.sampling import SamplingParams

        self.import_s = time.perf_counter() - t0
        self.SamplingParams = SamplingParams
        cache = _conversion_cache_state(model, dtype)
        kw = {"quant": quant} if quant and quant != "auto" else {}
        self.engine = load_engine(model, runtime=runtime, n_ctx=n_ctx, dtype=None if dtype == "auto" else dtype, **kw)
        self.info = {
            "engine": "pairline",
            "runtime": runtime,
            "dtype": str(self.engine.runtime.dtype).removeprefix("torch."),
            "quant": getattr(self.engine.runtime, "quant", None),
            "load_s": self.engine.load_s,
            "import_s": self.import_s,
            "load_cache": cache,
            "threads": torch.get_num_threads(),
            "rss_after_load_mb": _current_rss_mb(),
            "n_ctx": self.engine.runtime.n_ctx,
        }

    def _stream(self, g) -> list[float]:
        """Iterate a Generation; returns the perf_counter() at which each token arrived."""
        stamps = []
        for ev in g:
            if ev.token_id >= 0:
                stamps.append(time.perf_counter())
        return stamps

    def warmup(self, ids: list[int]) -> dict:
        self.engine.reset()
        self.engine.generate(ids, self.SamplingParams(max_tokens=8, ignore_eos=True), speculation="off").run()
        self.engine.generate(ids[:8], self.SamplingParams(max_tokens=4, ignore_eos=True), speculation="off").run()
        self.engine.reset()
        return {}

    def ttft(self, ids: list[int]) -> dict:
        self.engine.reset()  # no prefix reuse
        t0 = time.perf_counter()
        g = self.engine.generate(ids, self.SamplingParams(max_tokens=1, ignore_eos=True), speculation="off")
        stamps = self._stream(g)
        return {"ttft_s": stamps[0] - t0, "engine_ttft_s": g.timings.ttft_s, "prompt_tokens": len(ids)}

    def decode(self, ids: list[int], n: int) -> dict:
        self.engine.reset()
        t0 = time.perf_counter()
        g = self.engine.generate(ids, self.SamplingParams(max_tokens=n, ignore_eos=True), speculation="off")
        stamps = self._stream(g)
        return _decode_result(t0, stamps, g.token_ids, extra={"engine_decode_tok_s": g.timings.decode_tokens_per_s})

    def verify_cost(self, ids: list[int], ks: list[int], repeats: int) -> dict:
        """Seconds for one forward of k tokens (all rows' logits, as a verify step does) after a
        context of len(ids), for each k; the cache is rolled back after each. Interleaved repeats."""
        rt = self.engine.runtime
        self.engine.reset()
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            rt.forward(chunk, "last" if start + len(chunk) == len(ids) else "none")
        n0 = rt.n_past
        times: dict[int, list[float]] = {k: [] for k in ks}
        for _ in range(repeats + 1):  # the first round warms up each shape
            for k in ks:
                t0 = time.perf_counter()
                rt.forward(ids[n0 - k : n0] if k <= n0 else ids[:k], "all")
                times[k].append(time.perf_counter() - t0)
                rt.truncate(n0)
        self.engine.reset()
        return {str(k): v[1:] for k, v in times.items()}

    def edit(self, ids: list[int], max_tokens: int, mode: str, prediction: list[int] | None) -> dict:
        self.engine.reset()
        params = self.SamplingParams(max_tokens=max_tokens, temperature=0.0)
        speculation = {"plain": "off", "prompt_lookup": "prompt_lookup"}.get(mode, "auto")
        pred = prediction if mode in ("prediction", "ceiling") else None
        t0 = time.perf_counter()
        g = self.engine.generate(ids, params, prediction=pred, speculation=speculation)
        stamps = self._stream(g)
        t_last = stamps[-1] if stamps else time.perf_counter()
        n = len(g.token_ids)
        u, tm = g.usage, g.timings
        return {
            "wall_s": t_last - t0,
            "ttft_s": (stamps[0] - t0) if stamps else None,
            "completion_tokens": n,
            "effective_tok_s": n / (t_last - t0) if n else 0.0,
            "finish_reason": g.finish_reason,
            "accepted_prediction_tokens": u.accepted_prediction_tokens,
            "rejected_prediction_tokens": u.rejected_prediction_tokens,
            "draft_tokens": u.draft_tokens,
            "accepted_draft_tokens": u.accepted_draft_tokens,
            "forward_calls": tm.forward_calls,
            "engine_prefill_s": tm.prefill_s,
            "engine_decode_tok_s": tm.decode_tokens_per_s,
            "token_ids": list(g.token_ids),
            "text": g.text,
        }


class HFBackend:
    """HF transformers on the same GGUF (dequantized by transformers), greedy, use_cache=True."""

    name = "hf"

    def __init__(self, model_path: str, dtype: str):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        import warnings

        warnings.filterwarnings("ignore")
        t0 = time.perf_counter()
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
        from transformers.generation.streamers import BaseStreamer

        self.import_s = time.perf_counter() - t0
        transformers.utils.logging.set_verbosity_error()
        with contextlib.suppress(Exception):
            transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        self.BaseStreamer = BaseStreamer
        torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        path = Path(model_path)
        t1 = time.perf_counter()
        if path.is_dir():
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
        self.model.eval()
        load_s = time.perf_counter() - t1
        cfg = self.model.generation_config
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.model.config.eos_token_id
        self.pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
        linear = next((type(m).__name__ for m in self.model.modules() if "Linear" in type(m).__name__), None)
        self.info = {
            "engine": "hf",
            "transformers": transformers.__version__,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "load_s": load_s,
            "import_s": self.import_s,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "linear_module": linear,
            "threads": torch.get_num_threads(),
            "rss_after_load_mb": _current_rss_mb(),
        }

    def _generate(self, ids: list[int], n: int, streamer=None, min_new: int | None = None):
        torch = self.torch
        x = torch.tensor([ids], dtype=torch.long)
        kw = {"min_new_tokens": min_new} if min_new else {}
        with torch.inference_mode():
            return self.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=self.pad,
                streamer=streamer,
                **kw,
            )

    def warmup(self, ids: list[int]) -> dict:
        self._generate(ids, 8, min_new=8)
        self._generate(ids[:8], 4, min_new=4)
        return {}

    def ttft(self, ids: list[int]) -> dict:
        t0 = time.perf_counter()
        self._generate(ids, 1)
        return {"ttft_s": time.perf_counter() - t0, "prompt_tokens": len(ids)}

    def decode(self, ids: list[int], n: int) -> dict:
        stamps: list[float] = []

        class Stamps(self.BaseStreamer):
            def put(self, value):  # the first call carries the prompt, then one call per token
                stamps.append(time.perf_counter())

            def end(self):
                pass

        t0 = time.perf_counter()
        out = self._generate(ids, n, streamer=Stamps(), min_new=n)
        tokens = out[0, len(ids) :].tolist()
        return _decode_result(t0, stamps[1:], tokens)


def _decode_result(t0: float, stamps: list[float], tokens: list[int], extra: dict | None = None) -> dict:
    n = len(stamps)
    span = stamps[-1] - stamps[0] if n > 1 else 0.0
    out = {
        "tokens": n,
        "decode_tok_s": (n - 1) / span if span > 0 else None,
        "ttft_s": stamps[0] - t0 if stamps else None,
        "token_ids": tokens,
    }
    out.update(extra or {})
    return out


def _conversion_cache_state(model: str, dtype: str) -> str:
    """'warm' when pairline's dequantized copy of this GGUF already exists (load maps it), else 'cold'."""
    try:
        from pairline.engine.load import _converted_path, parse_dtype
        from pairline.engine.runtimes.torch_runtime import default_dtype
        from pairline.models.fetch import resolve

        path = resolve(model, pull_if_missing=False)
        if path.is_dir():
            return "n/a"
        return "warm" if _converted_path(path, parse_dtype(dtype) or default_dtype("cpu")).is_file() else "cold"
    except Exception:
        return "unknown"


def _worker_main(conn, kind: str, kwargs: dict, threads: int | None = None, env: dict | None = None) -> None:
    try:
        # OpenMP reads its settings when torch is first imported: apply them before that
        env_applied = "torch" not in sys.modules
        os.environ.update(env or {})
        backend = PairlineBackend(**kwargs) if kind == "pairline" else HFBackend(**kwargs)
        if threads:
            import torch

            torch.set_num_threads(threads)  # after loading: pairline's runtime sets its own count
            backend.info["threads"] = torch.get_num_threads()
        backend.info["env"] = dict(env or {})
        backend.info["thread_env"] = {
            k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_", "PAIRLINE_"))
        }
        backend.info["env_applied_before_torch"] = env_applied
        conn.send(("ok", backend.info))
        while True:
            method, args = conn.recv()
            if method == "stop":
                conn.send(("ok", {"peak_rss_mb": _peak_rss_mb()}))
                return
            if method == "rss":
                conn.send(("ok", {"peak_rss_mb": _peak_rss_mb(), "rss_mb": _current_rss_mb()}))
                continue
            conn.send(("ok", getattr(backend, method)(**args)))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))


class Worker:
    """One engine in its own process, driven one call at a time."""

    def __init__(self, kind: str, threads: int | None = None, env: dict | None = None, **kwargs: Any):
        import multiprocessing as mp

        self.kind = kind
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, kind, kwargs, threads, env), daemon=True)
        self.proc.start()
        child.close()
        self.info: dict = self._recv()

    def _recv(self) -> Any:
        while not self.conn.poll(0.5):
            if not self.proc.is_alive():
                raise PairlineError(f"the {self.kind} benchmark worker exited (code {self.proc.exitcode})")
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise PairlineError(f"the {self.kind} benchmark worker exited (code {self.proc.exitcode})") from None
        if status == "error":
            raise PairlineError(f"the {self.kind} benchmark worker failed:\n{payload}")
        return payload

    def call(self, method: str, **kwargs: Any) -> Any:
        self.conn.send((method, kwargs))
        return self._recv()

    def close(self) -> dict:
        result: dict = {}
        if self.proc.is_alive():
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


# ----------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and "cpu_model" not in info:
                info["cpu_model"] = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
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


def run_engine_bench(cfg: BenchConfig) -> dict:
    from pairline.engine.tokenizer import Tokenizer, render_chat
    from pairline.models.fetch import resolve

    if cfg.runtime != "torch":
        raise PairlineError(f"unknown runtime {cfg.runtime!r}; available: torch")
    if cfg.dtype not in ("auto", "bf16", "fp32"):
        raise PairlineError(f"unknown dtype {cfg.dtype!r}; use auto, bf16 or fp32")
    for p in cfg.peers:
        if p not in PEERS:
            raise PairlineError(f"unknown peer {p!r}; available: {', '.join(PEERS)} (or none)")
    for m in cfg.edit_modes:
        if m not in EDIT_MODES:
            raise PairlineError(f"unknown edit mode {m!r}; available: {', '.join(EDIT_MODES)}")
    for ph in cfg.phases:
        if ph not in PHASES:
            raise PairlineError(f"unknown phase {ph!r}; available: {', '.join(PHASES)}")
    if cfg.repeats < 1:
        raise PairlineError("--repeats must be at least 1")

    path = resolve(cfg.model)
    tok = Tokenizer.load(path)
    started = _dt.datetime.now(_dt.timezone.utc)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "engine",
        "model": cfg.model,
        "model_file": path.name,
        "runtime": cfg.runtime,
        "dtype_requested": cfg.dtype,
        "peers": list(cfg.peers),
        "phases": list(cfg.phases),
        "repeats": cfg.repeats,
        "quick": cfg.quick,
        "command": cfg.command,
        "argv": list(sys.argv),
        "started": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_state(),
        "loadavg_start": _loadavg(),
        "settings": {},
        "engines": {},
        "ratios": {},
        "edit": {"tasks": []},
        "goals": {},
        "complete": False,
    }

    source, source_desc = code_source()
    src_ids = tok.encode(source, add_bos=False)
    sizes = [n for n in cfg.ttft_sizes if n < cfg.n_ctx - 8]
    prompts = {n: src_ids[:n] for n in sizes}
    decode_prompt = src_ids[: min(200, max(sizes, default=200))]
    result["settings"] = {
        "prompt_source": source_desc,
        "ttft_prompt_tokens": sizes,
        "decode_tokens": cfg.decode_tokens,
        "decode_prompt_tokens": len(decode_prompt),
        "n_ctx": cfg.n_ctx,
        "rss_scope": "peak RSS (ru_maxrss) of each engine's own worker process",
        "load_scope": "one load per run, in a fresh worker process; Python imports excluded (import_s)",
        "order": "engines alternate order on every repeat; one measurement at a time",
    }

    env = {"OMP_WAIT_POLICY": cfg.omp_wait_policy.upper()} if cfg.omp_wait_policy else {}
    result["settings"]["threads"] = cfg.threads or "engine default"
    result["settings"]["worker_env"] = env
    workers: dict[str, Worker] = {}
    try:
        # ---- load, one engine at a time
        _log(cfg, f"loading pairline ({cfg.runtime}, dtype {cfg.dtype}) ...")
        workers["pairline"] = Worker(
            "pairline",
            cfg.threads,
            env,
            model=cfg.model,
            runtime=cfg.runtime,
            dtype=cfg.dtype,
            n_ctx=cfg.n_ctx,
            quant=cfg.quant,
        )
        dtype = workers["pairline"].info["dtype"]
        dtype_short = {"bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)
        result["dtype"] = dtype_short
        result["quant"] = workers["pairline"].info.get("quant")
        if "hf" in cfg.peers and "engine" in cfg.phases:
            if dtype_short not in ("bf16", "fp32"):
                raise PairlineError(f"the HF peer runs in bf16 or fp32, not {dtype}")
            _log(cfg, f"loading HF transformers ({dtype_short}) on the same GGUF ...")
            workers["hf"] = Worker("hf", cfg.threads, env, model_path=str(path), dtype=dtype_short)
        for name, w in workers.items():
            result["engines"][name] = {"info": w.info, "load_s": w.info["load_s"]}
            w.call("warmup", ids=decode_prompt)

        if "engine" in cfg.phases:
            names = list(workers)
            ttft: dict[str, dict[int, list]] = {n: {s: [] for s in sizes} for n in names}
            engine_ttft: dict[str, dict[int, list]] = {n: {s: [] for s in sizes} for n in names}
            decode: dict[str, list] = {n: [] for n in names}
            decode_tokens: dict[str, list[int]] = {}
            for rep in range(cfg.repeats):
                order = names if rep % 2 == 0 else names[::-1]
                for s in sizes:
                    for n in order:
                        _log(cfg, f"[{rep + 1}/{cfg.repeats}] {n}: TTFT, {s}-token prompt")
                        r = workers[n].call("ttft", ids=prompts[s])
                        _log(cfg, f"    {r['ttft_s']:.3f} s")
                        ttft[n][s].append(r["ttft_s"])
                        engine_ttft[n][s].append(r.get("engine_ttft_s"))
                for n in order:
                    _log(cfg, f"[{rep + 1}/{cfg.repeats}] {n}: decode {cfg.decode_tokens} tokens")
                    r = workers[n].call("decode", ids=decode_prompt, n=cfg.decode_tokens)
                    _log(cfg, f"    {_f(r['decode_tok_s'], '{:.1f}')} tok/s")
                    decode[n].append(r["decode_tok_s"])
                    decode_tokens.setdefault(n, r["token_ids"])
            for n in names:
                e = result["engines"][n]
                e["ttft_s"] = {str(s): _summary(ttft[n][s]) for s in sizes}
                if n == "pairline":
                    e["engine_ttft_s"] = {str(s): _summary(engine_ttft[n][s]) for s in sizes}
                e["decode_tok_s"] = _summary(decode[n])
                e["decode_text_head"] = tok.decode(decode_tokens[n])[:160]
            if "hf" in workers:
                p, h = result["engines"]["pairline"], result["engines"]["hf"]
                result["ratios"] = {
                    "definition": "decode: pairline tok/s / HF tok/s; ttft and load: HF seconds / pairline seconds "
                    "(above 1: pairline is faster)",
                    "decode_tok_s": _ratio(p["decode_tok_s"]["median"], h["decode_tok_s"]["median"]),
                    "load_s": _ratio(h["load_s"], p["load_s"]),
                    **{
                        f"ttft_{s}": _ratio(h["ttft_s"][str(s)]["median"], p["ttft_s"][str(s)]["median"]) for s in sizes
                    },
                    "greedy_decode_agree_prefix_tokens": _agree_prefix(decode_tokens["pairline"], decode_tokens["hf"]),
                }
                r = result["ratios"]["decode_tok_s"]
                result["goals"]["decode_vs_hf"] = {
                    "target": DECODE_TARGET,
                    "ratio": r,
                    "met": bool(r is not None and r >= DECODE_TARGET),
                }

        # ---- verify cost: a k-token forward (a speculative verify step) against a 1-token step
        if cfg.verify_ks and "verify" in cfg.phases:
            ctx_ids = src_ids[: cfg.verify_context]
            _log(cfg, f"pairline: verify cost, k = {list(cfg.verify_ks)} at {len(ctx_ids)} context")
            vc = workers["pairline"].call("verify_cost", ids=ctx_ids, ks=list(cfg.verify_ks), repeats=cfg.repeats)
            base = statistics.median(vc["1"]) if "1" in vc else None
            result["engines"]["pairline"]["verify_cost"] = {
                "context_tokens": len(ctx_ids),
                "definition": "median seconds of one forward of k tokens returning all k rows' logits; "
                "x_step = that / the median 1-token step",
                "k": {
                    k: {"s": statistics.median(v), "x_step": _ratio(statistics.median(v), base), "runs": v}
                    for k, v in vc.items()
                },
            }
            _log(
                cfg,
                "    "
                + ", ".join(
                    f"k={k}: {v['x_step']:.2f}x"
                    for k, v in result["engines"]["pairline"]["verify_cost"]["k"].items()
                    if v["x_step"]
                ),
            )
        _checkpoint(cfg, result)

        # ---- edit tasks (pairline: plain vs prediction vs prompt lookup vs copy ceiling)
        if "edit" in cfg.phases:
            _run_edits(cfg, workers["pairline"], tok, render_chat, result)
        if result["edit"]["tasks"]:
            speedups = [
                t["modes"]["prediction"]["speedup_vs_plain"]
                for t in result["edit"]["tasks"]
                if "prediction" in t["modes"] and t["modes"]["prediction"].get("speedup_vs_plain")
            ]
            ceilings = [
                t["modes"]["ceiling"]["speedup_vs_plain"]
                for t in result["edit"]["tasks"]
                if "ceiling" in t["modes"] and t["modes"]["ceiling"].get("speedup_vs_plain")
            ]
            result["goals"]["edit_prediction_vs_plain"] = {
                "target": EDIT_TARGET,
                "per_task": {
                    t["name"]: {
                        "prediction": t["modes"].get("prediction", {}).get("speedup_vs_plain"),
                        "ceiling": t["modes"].get("ceiling", {}).get("speedup_vs_plain"),
                        "copied_fraction": t["quality"]["copied_fraction"],
                    }
                    for t in result["edit"]["tasks"]
                },
                "median_prediction": statistics.median(speedups) if speedups else None,
                "median_ceiling": statistics.median(ceilings) if ceilings else None,
                "met_ceiling": bool(ceilings and statistics.median(ceilings) >= EDIT_TARGET),
            }
    finally:
        for n, w in workers.items():
            end = w.close()
            if n in result["engines"] and end:
                result["engines"][n]["peak_rss_mb"] = end.get("peak_rss_mb")
    result["loadavg_end"] = _loadavg()
    result["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["complete"] = True
    return result


def _checkpoint(cfg: BenchConfig, result: dict) -> None:
    if cfg.checkpoint is not None:
        cfg.checkpoint(result)


def _run_edits(cfg: BenchConfig, worker: Worker, tok, render_chat, result: dict) -> dict:
    tasks = load_tasks()
    if cfg.edit_tasks is not None:
        known = {t["name"] for t in tasks}
        for name in cfg.edit_tasks:
            if name not in known:
                raise PairlineError(f"unknown edit task {name!r}; known: {', '.join(sorted(known))}")
        tasks = [t for t in tasks if t["name"] in cfg.edit_tasks]
    repeats = cfg.edit_repeats or cfg.repeats
    modes = [m for m in EDIT_MODES if m in cfg.edit_modes]
    if "plain" not in modes:
        modes.insert(0, "plain")  # the baseline, and the ceiling's prediction
    out = {
        "repeats": repeats,
        "modes": modes,
        "definition": "effective tok/s = completion tokens / (last token - request), prefill included; "
        "speedup = median effective tok/s of the mode / that of plain",
        "tasks": [],
    }
    result["edit"] = out
    for task in tasks:
        source = task["source"]
        if cfg.edit_lines:
            source = "".join(source.splitlines(keepends=True)[: cfg.edit_lines])
        prompt = tok.encode(render_chat(edit_messages(task["instruction"], task["path"], source), tok.family))
        prediction = tok.encode(fenced(source), add_bos=False)
        max_tokens = len(prediction) + 64
        if cfg.edit_max_tokens:
            max_tokens = min(max_tokens, cfg.edit_max_tokens)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        plain_ids: list[int] | None = None
        for rep in range(repeats):
            for mode in modes:
                if mode == "ceiling":
                    pred = plain_ids
                elif mode == "prediction":
                    pred = prediction
                else:
                    pred = None
                _log(cfg, f"[{rep + 1}/{repeats}] edit {task['name']}: {mode}")
                r = worker.call("edit", ids=prompt, max_tokens=max_tokens, mode=mode, prediction=pred)
                _log(
                    cfg,
                    f"    {r['completion_tokens']} tokens in {r['wall_s']:.2f} s = {r['effective_tok_s']:.1f} tok/s, "
                    f"prediction {r['accepted_prediction_tokens']}/{r['rejected_prediction_tokens']}, "
                    f"drafts {r['accepted_draft_tokens']}/{r['draft_tokens']}, {r['forward_calls']} forwards",
                )
                if mode == "plain" and plain_ids is None:
                    plain_ids = r["token_ids"]
                    plain_text = r["text"]
                r["identical_to_plain"] = r["token_ids"] == plain_ids
                if not r["identical_to_plain"]:
                    r["first_divergence"] = _agree_prefix(r["token_ids"], plain_ids)
                del r["token_ids"]
                if mode != "plain" or rep > 0:
                    del r["text"]
                runs[mode].append(r)
        modes_out: dict[str, dict] = {}
        for mode in modes:
            rs = runs[mode]
            eff = _summary([r["effective_tok_s"] for r in rs])
            last = rs[-1]
            modes_out[mode] = {
                "effective_tok_s": eff,
                "wall_s": _summary([r["wall_s"] for r in rs]),
                "completion_tokens": last["completion_tokens"],
                "finish_reason": last["finish_reason"],
                "accepted_prediction_tokens": last["accepted_prediction_tokens"],
                "rejected_prediction_tokens": last["rejected_prediction_tokens"],
                "draft_tokens": last["draft_tokens"],
                "accepted_draft_tokens": last["accepted_draft_tokens"],
                "forward_calls": last["forward_calls"],
                "identical_to_plain": all(r["identical_to_plain"] for r in rs),
                "runs": rs,
            }
        base = modes_out["plain"]["effective_tok_s"]["median"]
        for mode in modes:
            modes_out[mode]["speedup_vs_plain"] = _ratio(modes_out[mode]["effective_tok_s"]["median"], base)
        out["tasks"].append(
            {
                "name": task["name"],
                "file": task["file"],
                "instruction": task["instruction"],
                "file_lines": len(source.splitlines()),
                "prompt_tokens": len(prompt),
                "prediction_tokens": len(prediction),
                "max_tokens": max_tokens,
                "quality": edit_quality(task, source, plain_text),
                "plain_text_head": plain_text[:200],
                "modes": modes_out,
            }
        )
        _checkpoint(cfg, result)
    return out


# ----------------------------------------------------------------------------------- output


def default_out_path(out: str | None, model: str, dtype: str | None = None) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if "/" in model else model)
    name = f"engine-{safe}{'-' + dtype if dtype else ''}-{stamp}.json"
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

    console = console or Console()
    engines = result["engines"]
    has_hf = "hf" in engines
    m = result["machine"]
    flags = ", ".join(k for k, v in m.get("flags", {}).items() if v) or "none"
    console.print(
        f"[bold]{result['model']}[/] ({result['model_file']}), runtime {result['runtime']}, dtype {result['dtype']}, "
        f"weights {result.get('quant') or 'as dtype'}; "
        f"{m.get('cpu_model', '?')}, {m.get('cores')} cores, flags: {flags}; torch {m.get('torch')}; "
        f"threads {result['settings'].get('threads')}, worker env {result['settings'].get('worker_env') or '{}'}; "
        f"load average {result.get('loadavg_start')} → {result.get('loadavg_end')}"
    )
    t = Table(title=f"engine: pairline vs peers (medians of {result['repeats']})")
    t.add_column("metric")
    t.add_column("pairline", justify="right")
    if has_hf:
        t.add_column("HF transformers", justify="right")
        t.add_column("ratio (>1: pairline faster)", justify="right")
    p = engines["pairline"]
    h = engines.get("hf", {})
    ratios = result.get("ratios", {})

    def row(label: str, pv: float | None, hv: float | None, r: float | None, fmt: str) -> None:
        cells = [label, _f(pv, fmt)]
        if has_hf:
            cells += [_f(hv, fmt), _f(r, "{:.2f}×")]
        t.add_row(*cells)

    row("load (s)", p["load_s"], h.get("load_s"), ratios.get("load_s"), "{:.2f}")
    for s in result["settings"]["ttft_prompt_tokens"] if "ttft_s" in p else ():
        row(
            f"TTFT, {s}-token prompt (s)",
            p["ttft_s"][str(s)]["median"],
            h.get("ttft_s", {}).get(str(s), {}).get("median"),
            ratios.get(f"ttft_{s}"),
            "{:.3f}",
        )
    row(
        f"decode tok/s ({result['settings']['decode_tokens']} tokens)",
        p.get("decode_tok_s", {}).get("median"),
        h.get("decode_tok_s", {}).get("median"),
        ratios.get("decode_tok_s"),
        "{:.1f}",
    )
    row("peak RSS (MB, per process)", p.get("peak_rss_mb"), h.get("peak_rss_mb"), None, "{:.0f}")
    console.print(t)

    vc = p.get("verify_cost")
    if vc:
        vt = Table(title=f"pairline: cost of a k-token forward (verify step) at {vc['context_tokens']} context")
        vt.add_column("k", justify="right")
        vt.add_column("ms", justify="right")
        vt.add_column("× 1-token step", justify="right")
        vt.add_column("ms per token", justify="right")
        for k, v in vc["k"].items():
            vt.add_row(k, _f(v["s"] * 1e3, "{:.1f}"), _f(v["x_step"], "{:.2f}×"), _f(v["s"] * 1e3 / int(k), "{:.1f}"))
        console.print(vt)

    edit = result.get("edit", {})
    if edit.get("tasks"):
        et = Table(title=f"edit: whole-file rewrite, pairline (medians of {edit['repeats']})")
        for col in ("task", "mode", "tokens", "wall s", "eff. tok/s", "× plain", "accepted/rejected", "= plain"):
            et.add_column(col, justify="left" if col in ("task", "mode") else "right")
        for task in edit["tasks"]:
            q = task["quality"]
            label = (
                f"{task['name']}\n{task['file_lines']} lines, {task['prompt_tokens']} prompt tok\n"
                f"followed: {'yes' if q['instruction_followed'] else 'no'}, copied {q['copied_fraction']:.0%}"
            )
            for i, (mode, mo) in enumerate(task["modes"].items()):
                acc = (
                    f"{mo['accepted_prediction_tokens']}/{mo['rejected_prediction_tokens']}"
                    if mode in ("prediction", "ceiling")
                    else (f"{mo['accepted_draft_tokens']}/{mo['draft_tokens'] - mo['accepted_draft_tokens']}")
                    if mode == "prompt_lookup"
                    else ""
                )
                et.add_row(
                    label if i == 0 else "",
                    mode,
                    str(mo["completion_tokens"]),
                    _f(mo["wall_s"]["median"]),
                    _f(mo["effective_tok_s"]["median"], "{:.1f}"),
                    _f(mo["speedup_vs_plain"], "{:.2f}×"),
                    acc,
                    "yes" if mo["identical_to_plain"] else "NO",
                )
        console.print(et)
    goals = result.get("goals", {})
    if goals:
        lines = []
        g = goals.get("decode_vs_hf")
        if g:
            lines.append(
                f"(a) decode ≥ {g['target']}× HF: {_f(g['ratio'], '{:.2f}×')} → {'met' if g['met'] else 'NOT met'}"
            )
        g = goals.get("edit_prediction_vs_plain")
        if g:
            lines.append(
                f"(b) edit with prediction ≥ {g['target']}× plain: prediction {_f(g['median_prediction'], '{:.2f}×')}, "
                f"copy ceiling {_f(g['median_ceiling'], '{:.2f}×')} (median over tasks)"
            )
        console.print("\n".join(lines))


def command_line(args: Any) -> str:
    parts = ["pairline", "bench", "engine", "--model", args.model, "--runtime", args.runtime, "--dtype", args.dtype]
    parts += ["--peers", args.peers]
    if args.repeats is not None:
        parts += ["--repeats", str(args.repeats)]
    if getattr(args, "n_ctx", None):
        parts += ["--n-ctx", str(args.n_ctx)]
    if args.out:
        parts += ["--out", args.out]
    if args.quick:
        parts.append("--quick")
    if getattr(args, "edit_tasks", None):
        parts += ["--edit-tasks", args.edit_tasks]
    if getattr(args, "edit_repeats", None):
        parts += ["--edit-repeats", str(args.edit_repeats)]
    if getattr(args, "edit_modes", None):
        parts += ["--edit-modes", args.edit_modes]
    if getattr(args, "quant", None):
        parts += ["--quant", args.quant]
    if getattr(args, "threads", None):
        parts += ["--threads", str(args.threads)]
    if getattr(args, "omp_wait_policy", None):
        parts += ["--omp-wait-policy", args.omp_wait_policy]
    if getattr(args, "phases", None):
        parts += ["--phases", args.phases]
    return shlex.join(parts)
