"""`pairline bench engine --device cuda`: pairline's CUDA runtime on one GPU, with HF transformers
(eager, and static cache + torch.compile) as the peers, in one run on the same device.

Not yet run on a GPU: nothing here has been measured (docs/gpu.md says what to run first).

Weights are random with the real configs (speed does not depend on weight values; real weights
cannot reach the device machine). What is measured, per model config:
- bandwidth: a device-to-device copy, bytes read + written / time (the ceiling for % of limit);
- decode tok/s at contexts 1k, 8k, 32k, through the engine loop (CPU logits every step, as the
  loop does today) and through `greedy_stream` (argmax on the device, no host sync per token);
- % of the bandwidth limit: tok/s x bytes a token must read (weights + the context's KV) / bandwidth;
- TTFT for 1k, 8k, 32k prompts through the engine loop (chunked prefill, cancel between chunks);
- verify cost: seconds for one k-token forward, per k (what the draft-length policy learns);
- speculative edits at full acceptance (the prediction is the model's own greedy output: the
  ceiling), and edit traces replayed: the (drafted, accepted) sequence a real-weights CPU run of
  `pairline bench engine --phases edit` recorded, replayed at the same shapes on random weights;
- HF transformers on the same config: decode tok/s and TTFT, eager and static cache + compile.

Definitions as docs/benchmarks.md: decode tok/s = (N - 1) / (t_N - t_1) over token arrival times;
effective edit tok/s = completion tokens / (last token - request), prefill included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairline.bench.common import csv as _csv
from pairline.bench.common import fmt, median, out_path, stamp, write_json
from pairline.engine.config import ModelConfig

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: `pairline bench engine` builds its parser from this
# module's add_arguments, and no CLI command should pay for importing torch to show its help

SCHEMA = 1

# The real configs (../shared/models.md; the 7B-class one is Qwen2.5-Coder-7B's), weights random.
MODEL_CONFIGS: dict[str, ModelConfig] = {
    "qwen2.5-coder-0.5b": ModelConfig(
        arch="qwen2", vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_dim=4864,
        max_context=32768, norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, tie_embeddings=True,
    ),
    "qwen2.5-coder-1.5b": ModelConfig(
        arch="qwen2", vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, ffn_dim=8960,
        max_context=32768, norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, tie_embeddings=True,
    ),
    "qwen2.5-coder-7b": ModelConfig(
        arch="qwen2", vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, ffn_dim=18944,
        max_context=32768, norm_eps=1e-6, rope_theta=1e6, qkv_bias=True, tie_embeddings=False,
    ),
    # a smoke-test size: checks the harness end to end on a CPU in seconds
    "tiny": ModelConfig(
        arch="qwen2", vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
        max_context=4096, rope_theta=1e4, qkv_bias=True, tie_embeddings=True,
    ),
}
ALIASES = {"0.5b": "qwen2.5-coder-0.5b", "1.5b": "qwen2.5-coder-1.5b", "7b": "qwen2.5-coder-7b"}
PARTS = ("decode", "ttft", "verify", "edit", "hf")
# static-step policies: exact (lossless) or fast, each with an attention kernel suffix: none (matmul +
# masked softmax), -sdpa (fused masked SDPA) or -triton (split-KV kernel reading only the cached context)
POLICIES = ("exact", "fast", "exact-triton")


@dataclass
class GpuBenchConfig:
    models: tuple[str, ...] = ("qwen2.5-coder-1.5b",)
    device: str = "cuda"
    quants: tuple[str, ...] = ("none",)
    policies: tuple[str, ...] = POLICIES
    parts: tuple[str, ...] = PARTS
    contexts: tuple[int, ...] = (1024, 8192, 32 * 1024 - 512)  # "32k": room left for the decoded tokens
    ttft_sizes: tuple[int, ...] = (1024, 8192, 32 * 1024 - 512)
    decode_tokens: int = 256
    repeats: int = 3
    prefill_chunk: int = 2048  # the loop's chunk: a cancel lands within one chunk
    verify_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 33)
    edit_prompt: int = 1200  # tokens: an instruction plus a file, as the edit tasks have
    edit_tokens: int = 1000  # the rewritten file
    traces: str | None = None  # a `pairline bench engine --phases edit` JSON with per-step records
    hf_compile: bool = True
    graphs: bool | None = None  # None: on CUDA
    command: str = ""
    log: Callable[[str], None] | None = field(default=None, repr=False)
    checkpoint: Callable[[dict], None] | None = field(default=None, repr=False)

    @classmethod
    def quick(cls, **kw: Any) -> GpuBenchConfig:
        base = dict(contexts=(256,), ttft_sizes=(256,), decode_tokens=16, repeats=1, verify_ks=(1, 4),
                    edit_prompt=64, edit_tokens=32, prefill_chunk=128)
        base.update(kw)
        return cls(**base)


# ------------------------------------------------------------------------------------ helpers


class StubTokenizer:
    """What the loop needs from a tokenizer when prompts and predictions are token ids: text is
    streamed but meaningless (random weights), no stop tokens, so every run decodes its budget."""

    def __init__(self, vocab: int, family: str = "qwen2"):
        self.vocab_size = vocab
        self.family = family
        self.token_bytes = [b"x"] * vocab
        self.stop_ids: frozenset[int] = frozenset()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _log(cfg: GpuBenchConfig, msg: str) -> None:
    if cfg.log:
        cfg.log(msg)


def resolve_models(names: str | tuple[str, ...]) -> tuple[str, ...]:
    items = names.split(",") if isinstance(names, str) else list(names)
    out = []
    for raw in items:
        name = ALIASES.get(raw.strip(), raw.strip())
        if name == "all":
            out += [n for n in MODEL_CONFIGS if n != "tiny"]
        elif name in MODEL_CONFIGS:
            out.append(name)
        else:
            known = ", ".join([*MODEL_CONFIGS, *ALIASES])
            raise ValueError(f"no GPU bench config {raw!r}; known: {known}, all")
    return tuple(out)


def random_weights(cfg: ModelConfig, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """bf16 random weights in the runtime's fused naming (wqkv, w13), made on the device (a 7B
    config on the CPU would take minutes), scaled so activations stay in range."""
    import torch

    from pairline.engine.runtimes.cuda_model import StaticTransformer

    with torch.device("meta"):
        ref = StaticTransformer(cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, p in ref.named_parameters():
        if name == "output.weight" and cfg.tie_embeddings:
            continue
        t = torch.empty(p.shape, dtype=torch.bfloat16, device=device)
        if name.endswith("norm.weight"):
            t.fill_(1.0)
        else:
            t.normal_(0.0, 1.0 / p.shape[-1] ** 0.5, generator=gen)
        state[name] = t
    return state


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


def measure_bandwidth(device: str, nbytes: int = 2 << 30, repeats: int = 20) -> dict:
    """A device-to-device copy of random bytes; (read + written) / median time (METHOD.md)."""
    import torch

    if not device.startswith("cuda"):
        return {"bytes_per_s": None, "note": "no device copy benchmark off CUDA"}
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    t = statistics.median(times)
    del src, dst
    _free()
    return {"bytes_per_s": 2 * nbytes / t, "copy_bytes": nbytes, "median_s": t, "runs_s": times}


def bytes_per_token(rt: Any, context: int) -> dict:
    """Bytes one decode step must read: every weight a step touches (linear layers, the output
    projection, norms; not the embedding table, of which a step reads one row) plus the KV of
    `context` positions. The implementation may read more (the exact policy attends the whole
    cache); this is the floor the % of limit is measured against."""
    import torch

    from pairline.engine.runtimes.cuda_model import StaticKV

    weights = 0
    for name, module in rt.model.named_modules():
        if name == "tok_embeddings" or isinstance(module, StaticKV):
            continue
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if t is not None:
                weights += t.numel() * t.element_size()
    c = rt.cfg
    kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * context * torch.finfo(rt.dtype).bits // 8
    return {"weights": weights, "kv": kv, "total": weights + kv}


# ------------------------------------------------------------------------------------ pairline


def build_runtime(cfg: ModelConfig, state: dict, n_ctx: int, device: str, quant: str, policy: str,
                  graphs: bool | None) -> Any:
    from pairline.engine.runtimes.cuda_runtime import CudaRuntime, StepPolicy

    base, _, kernel = policy.partition("-")  # "exact", "fast", "exact-sdpa", "exact-triton", ...
    pol = StepPolicy() if base == "exact" else StepPolicy.fast()
    pol.attention = kernel or "matmul"
    return CudaRuntime(cfg, state, n_ctx=n_ctx, device=device, quant=quant, policy=pol, graphs=graphs)


def make_engine(rt: Any, prefill_chunk: int) -> Any:
    from pairline.engine.generate import Engine

    return Engine(rt, StubTokenizer(rt.vocab_size), model_name="random", prefill_chunk=prefill_chunk)


def prefill(rt: Any, ids: list[int], chunk: int = 8192) -> None:
    rt.truncate(0)
    for s in range(0, len(ids), chunk):
        part = ids[s : s + chunk]
        rt.forward(part, "last" if s + len(part) == len(ids) else "none")


def decode_loop(engine: Any, prompt: list[int], n: int) -> dict:
    """Through the engine loop, speculation off (the KV of the prompt is reused: no prefill)."""
    from pairline.engine.sampling import SamplingParams

    stamps = []
    g = engine.generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True), speculation="off")
    for ev in g:
        if ev.token_id >= 0:
            stamps.append(time.perf_counter())
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return {"tok_s": (len(stamps) - 1) / span if span > 0 else None, "tokens": len(stamps)}


def decode_device(rt: Any, first: int, n: int) -> dict:
    """greedy_stream: argmax fed back on the device, ids read asynchronously, lag steps behind."""
    _sync(str(rt.device))
    t0 = time.perf_counter()
    stamps = []
    for _ in rt.greedy_stream(first, n):
        stamps.append(time.perf_counter())
    total = stamps[-1] - t0
    return {"tok_s": len(stamps) / total if total > 0 else None, "tokens": len(stamps), "wall_s": total}


def ttft(engine: Any, prompt: list[int]) -> float:
    from pairline.engine.sampling import SamplingParams

    engine.reset()  # no prefix reuse
    _sync(str(engine.runtime.device))
    t0 = time.perf_counter()
    g = engine.generate(prompt, SamplingParams(max_tokens=1, ignore_eos=True), speculation="off")
    for ev in g:
        if ev.token_id >= 0:
            return time.perf_counter() - t0
    raise RuntimeError("no token came back")


def verify_cost(rt: Any, context: list[int], ks: tuple[int, ...], repeats: int) -> dict:
    """Median seconds of one k-token forward ("all" rows, CPU logits, as the loop verifies), and
    of the same through `argmax` (ids only), after the context; rolled back after each."""
    prefill(rt, context)
    n0 = rt.n_past
    out: dict[str, dict] = {}
    for k in ks:
        ids = context[:k]
        row: dict[str, float | None] = {}
        for how in ("logits", "argmax"):
            times = []
            for i in range(repeats + 1):  # the first one captures the graph
                _sync(str(rt.device))
                t0 = time.perf_counter()
                rt.forward(ids, "all") if how == "logits" else rt.argmax(ids, "all")
                if i:
                    times.append(time.perf_counter() - t0)
                rt.truncate(n0)
            row[how] = median(times)
        out[str(k)] = row
    return out


def replay(rt: Any, prompt_tokens: int, steps: list, chunk: int, use_argmax: bool) -> dict:
    """Replay a generation's shapes: the prompt in chunks, then per (drafted, accepted) a forward
    of 1 + drafted tokens and a rollback to the accepted ones, exactly as the loop does. Token
    values are random: on random weights only the shapes matter."""
    ids = random_ids(prompt_tokens + 1, rt.vocab_size, seed=1)
    rt.truncate(0)
    _sync(str(rt.device))
    t0 = time.perf_counter()
    for s in range(0, prompt_tokens, chunk):
        part = ids[s : min(s + chunk, prompt_tokens)]
        rt.forward(part, "last" if s + len(part) == prompt_tokens else "none")
    t_first = time.perf_counter()
    completion = 1  # the token the prefill produced
    for drafted, accepted in steps:
        if rt.n_past + 1 + drafted > rt.n_ctx:
            break
        n0 = rt.n_past
        tokens = ids[: 1 + drafted]
        rows = "all" if drafted else "last"
        rt.argmax(tokens, rows) if use_argmax else rt.forward(tokens, rows).argmax(-1)
        rt.truncate(n0 + 1 + accepted)
        completion += accepted + 1
    wall = time.perf_counter() - t0
    return {"effective_tok_s": completion / wall, "wall_s": wall, "ttft_s": t_first - t0,
            "completion_tokens": completion, "forward_calls": len(steps)}


def edit_ceiling(engine: Any, prompt: list[int], n: int) -> dict:
    """Plain greedy, then the same request with its own output as the prediction (every draft is
    accepted): the most a prediction can give. Through the engine loop as it is."""
    from pairline.engine.sampling import SamplingParams

    out = {}
    plain = None
    for mode in ("plain", "ceiling"):
        engine.reset()
        _sync(str(engine.runtime.device))
        t0 = time.perf_counter()
        g = engine.generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True),
                            prediction=plain.token_ids if mode == "ceiling" else None,
                            speculation="off" if mode == "plain" else "auto")
        last = t0
        for ev in g:
            if ev.token_id >= 0:
                last = time.perf_counter()
        wall = last - t0
        out[mode] = {"effective_tok_s": len(g.token_ids) / wall if wall > 0 else None, "wall_s": wall,
                     "completion_tokens": len(g.token_ids), "forward_calls": g.timings.forward_calls,
                     "accepted_prediction_tokens": g.usage.accepted_prediction_tokens,
                     "steps": list(getattr(g, "steps", []))}
        if mode == "plain":
            plain = g
        else:
            out[mode]["identical_to_plain"] = g.token_ids == plain.token_ids
    return out


def load_traces(path: str) -> list[dict]:
    """(task, mode, prompt_tokens, steps) from a `pairline bench engine --phases edit` JSON: the
    acceptance pattern real weights gave on the CPU, to replay on the GPU."""
    data = json.loads(Path(path).read_text())
    tasks = (data.get("edit") or {}).get("tasks") or data.get("tasks") or []
    traces = []
    for task in tasks:
        engines = task.get("engines") or {}
        # pairline's own loop ran them: "pairline-torch" (or "pairline-llamacpp", "pairline" in older files)
        name = next((e for e in ("pairline-torch", "pairline", "pairline-llamacpp") if e in engines), None)
        modes = (engines.get(name) or {}).get("modes") or {}
        for mode, mo in modes.items():
            steps = mo.get("steps")
            if not steps and mode == "plain" and mo.get("completion_tokens"):
                steps = [(0, 0)] * (mo["completion_tokens"] - 1)
            if steps:
                traces.append({"task": task["name"], "mode": mode, "engine": name,
                               "prompt_tokens": task["prompt_tokens"], "steps": [tuple(s) for s in steps]})
    return traces


def bench_pairline(cfg: GpuBenchConfig, name: str, mcfg: ModelConfig, state: dict, quant: str, policy: str,
                   bandwidth: float | None) -> dict:
    dev = cfg.device
    out: dict[str, Any] = {"quant": quant, "policy": policy}
    vocab = mcfg.vocab_size
    cap = mcfg.max_context

    def runtime(n_ctx: int) -> Any:
        return build_runtime(mcfg, state, min(n_ctx, cap), dev, quant, policy, cfg.graphs)

    if "decode" in cfg.parts:
        rows = {}
        for ctx in cfg.contexts:
            # sized to the session, as gpt-fast sizes its cache: under the exact policy a step attends it all
            rt = runtime(ctx + cfg.decode_tokens + 64)
            engine = make_engine(rt, cfg.prefill_chunk)
            prompt = random_ids(ctx, vocab)
            loop, device_loop = [], []
            for r in range(cfg.repeats + 1):  # the first round prefills, captures graphs and warms up
                # later rounds reuse the prompt's KV (the loop's prefix reuse); decode tok/s starts
                # after the first token either way
                a = decode_loop(engine, prompt, cfg.decode_tokens)
                rt.truncate(ctx)  # the loop left prompt + generated tokens; stream from the prompt's end
                b = decode_device(rt, 1, cfg.decode_tokens)
                if r:
                    loop.append(a["tok_s"])
                    device_loop.append(b["tok_s"])
            need = bytes_per_token(rt, ctx)
            row = {"loop_tok_s": median(loop), "device_tok_s": median(device_loop), "runs_loop": loop,
                   "runs_device": device_loop, "bytes_per_token": need, "graphs": rt.graphs.captures}
            for key in ("loop", "device"):
                tok_s = row[f"{key}_tok_s"]
                row[f"{key}_pct_of_limit"] = (tok_s * need["total"] / bandwidth * 100) if tok_s and bandwidth else None
            rows[str(ctx)] = row
            _log(cfg, f"{name} {quant} {policy} decode @{ctx}: loop {row['loop_tok_s']}, device {row['device_tok_s']}")
            del engine, rt
            _free()
        out["decode"] = rows

    if "ttft" in cfg.parts:
        rt = runtime(max(cfg.ttft_sizes) + 64)  # a prefill attends only what is cached: n_ctx does not matter
        engine = make_engine(rt, cfg.prefill_chunk)
        rows = {}
        for size in cfg.ttft_sizes:
            prompt = random_ids(size, vocab, seed=size)
            times = [ttft(engine, prompt) for _ in range(cfg.repeats + 1)][1:]
            rows[str(size)] = {"ttft_s": median(times), "runs": times}
            _log(cfg, f"{name} {quant} {policy} TTFT @{size}: {rows[str(size)]['ttft_s']}")
        out["ttft"] = {"prefill_chunk": cfg.prefill_chunk, "sizes": rows}
        del engine, rt
        _free()
    # verify and edits: a cache sized to an edit session (the exact policy attends all of it)
    rt = runtime(max(cfg.edit_prompt + cfg.edit_tokens, 1024 + max(cfg.verify_ks)) + 128)
    engine = make_engine(rt, cfg.prefill_chunk)
    if "verify" in cfg.parts:
        out["verify_s"] = verify_cost(rt, random_ids(min(1024, rt.n_ctx // 2), vocab), cfg.verify_ks, cfg.repeats)
    if "edit" in cfg.parts:
        prompt = random_ids(cfg.edit_prompt, vocab, seed=7)
        edit_ceiling(engine, prompt, min(32, cfg.edit_tokens))  # warm-up: graphs, draft policy
        ceiling = edit_ceiling(engine, prompt, cfg.edit_tokens)
        steps = ceiling["ceiling"].pop("steps")
        ceiling["plain"].pop("steps")
        ceiling["ceiling_replayed"] = {
            how: replay(rt, cfg.edit_prompt, steps, cfg.prefill_chunk, how == "argmax") for how in ("logits", "argmax")
        }
        out["edit_ceiling"] = ceiling
        _log(cfg, f"{name} {quant} {policy} edit ceiling: {ceiling['ceiling']['effective_tok_s']}")
        if cfg.traces:
            rows = []
            for tr in load_traces(cfg.traces):
                r = {how: replay(rt, tr["prompt_tokens"], tr["steps"], cfg.prefill_chunk, how == "argmax")
                     for how in ("logits", "argmax")}
                rows.append({"task": tr["task"], "mode": tr["mode"], "prompt_tokens": tr["prompt_tokens"], **r})
            out["edit_traces"] = {"source": cfg.traces, "replays": rows}
    del engine, rt
    _free()
    return out


# ------------------------------------------------------------------------------------ HF peers


def hf_model(mcfg: ModelConfig, device: str) -> Any:
    """HF transformers' Qwen2 with the same config, random weights, bf16, SDPA attention."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    conf = Qwen2Config(
        vocab_size=mcfg.vocab_size, hidden_size=mcfg.dim, intermediate_size=mcfg.ffn_dim,
        num_hidden_layers=mcfg.n_layers, num_attention_heads=mcfg.n_heads, num_key_value_heads=mcfg.n_kv_heads,
        max_position_embeddings=mcfg.max_context, rms_norm_eps=mcfg.norm_eps, tie_word_embeddings=mcfg.tie_embeddings,
    )
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:  # transformers 4.x names it torch_dtype
            model = AutoModelForCausalLM.from_config(conf, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.eval()


def hf_generate(model: Any, ids: list[int], n: int, static: bool) -> list[float]:
    """Greedy generate; returns when each token reached the host (the streamer's put, synced)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    stamps: list[float] = []
    device = str(model.device)

    class Stamps(BaseStreamer):
        def put(self, value):  # the first call carries the prompt, then one per token
            _sync(device)
            stamps.append(time.perf_counter())

        def end(self):
            pass

    x = torch.tensor([ids], device=model.device)
    kw = {"cache_implementation": "static"} if static else {}  # static: generate compiles its decode step
    with torch.inference_mode():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0, streamer=Stamps(), **kw)
    return stamps[1:]


def bench_hf(cfg: GpuBenchConfig, name: str, mcfg: ModelConfig) -> dict:
    import transformers

    out: dict[str, Any] = {"transformers": transformers.__version__}
    model = hf_model(mcfg, cfg.device)
    variants = [("eager", False)] + ([("static_compile", True)] if cfg.hf_compile else [])
    for label, static in variants:
        rows: dict[str, Any] = {"decode": {}, "ttft": {}}
        try:
            for ctx in cfg.contexts:
                prompt = random_ids(ctx, mcfg.vocab_size)
                runs = []
                for r in range(cfg.repeats + 1):  # the first warms up (and compiles)
                    stamps = hf_generate(model, prompt, cfg.decode_tokens, static)
                    span = stamps[-1] - stamps[0]
                    if r:
                        runs.append((len(stamps) - 1) / span if span > 0 else None)
                rows["decode"][str(ctx)] = {"tok_s": median(runs), "runs": runs}
                _log(cfg, f"{name} HF {label} decode @{ctx}: {rows['decode'][str(ctx)]['tok_s']}")
            for size in cfg.ttft_sizes:
                prompt = random_ids(size, mcfg.vocab_size, seed=size)
                times = []
                for r in range(cfg.repeats + 1):
                    _sync(cfg.device)
                    t0 = time.perf_counter()
                    hf_generate(model, prompt, 1, static)
                    if r:
                        times.append(time.perf_counter() - t0)
                rows["ttft"][str(size)] = {"ttft_s": median(times), "runs": times}
        except Exception as err:  # a peer that fails is reported, not fatal
            rows["error"] = f"{type(err).__name__}: {err}"
            _log(cfg, f"{name} HF {label} failed: {rows['error']}")
        out[label] = rows
        _free()
    del model
    _free()
    return out


# ------------------------------------------------------------------------------------ driver


def device_info(device: str) -> dict:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gb=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    return info


def run_gpu_bench(cfg: GpuBenchConfig) -> dict:
    try:
        from pairline.bench.common import git_state, machine_info

        machine, git = machine_info(), git_state()
    except Exception as err:  # the CPU bench's machine record: its extras must not stop this one
        machine, git = {"error": str(err)}, {}
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "engine-gpu",
        "command": cfg.command,
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": device_info(cfg.device),
        "machine": machine,
        "git": git,
        "config": {k: v for k, v in cfg.__dict__.items() if k not in ("log", "checkpoint")},
        "note": "random weights with the real configs; speed does not depend on weight values",
        "models": {},
    }
    bw = measure_bandwidth(cfg.device)
    result["bandwidth"] = bw
    _log(cfg, f"device copy bandwidth: {bw.get('bytes_per_s')}")
    for name in cfg.models:
        mcfg = MODEL_CONFIGS[name]
        entry: dict[str, Any] = {"n_params": mcfg.n_params, "pairline": []}
        result["models"][name] = entry
        state = random_weights(mcfg, cfg.device)
        for quant in cfg.quants:
            for policy in cfg.policies:
                _log(cfg, f"{name}: pairline {quant} {policy} ...")
                try:
                    row = bench_pairline(cfg, name, mcfg, state, quant, policy, bw.get("bytes_per_s"))
                except Exception as err:  # keep what the other variants measure
                    row = {"quant": quant, "policy": policy, "error": f"{type(err).__name__}: {err}"}
                    _log(cfg, f"{name} {quant} {policy} failed: {err}")
                    _free()
                entry["pairline"].append(row)
                if cfg.checkpoint:
                    cfg.checkpoint(result)
        del state
        _free()
        if "hf" in cfg.parts:
            _log(cfg, f"{name}: HF transformers peers ...")
            entry["hf"] = bench_hf(cfg, name, mcfg)
            if cfg.checkpoint:
                cfg.checkpoint(result)
    result["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return result


def summary_rows(result: dict) -> list[list[str]]:
    """One line per model, variant and context: the figures the issue's goals name."""

    def f(v: Any, spec: str = "{:.0f}") -> str:
        return fmt(v, spec, missing="-")

    rows = [["model", "engine", "ctx", "decode tok/s (loop / device)", "% of limit", "TTFT ms"]]
    for name, entry in result["models"].items():
        for p in entry["pairline"]:
            label = f"pairline {p['quant']} {p['policy']}"
            if "error" in p:
                rows.append([name, label, "", p["error"][:60], "", ""])
                continue
            ttft = (p.get("ttft") or {}).get("sizes", {})
            for ctx, d in (p.get("decode") or {}).items():
                t = (ttft.get(ctx) or {}).get("ttft_s")
                rows.append([name, label, ctx, f"{f(d['loop_tok_s'])} / {f(d['device_tok_s'])}",
                             f(d["device_pct_of_limit"], "{:.0f}%"), f(t and t * 1e3, "{:.1f}")])
            ce = p.get("edit_ceiling")
            if ce:
                rep = ce["ceiling_replayed"]
                rows.append([name, label, "edit", f"ceiling {f(ce['ceiling']['effective_tok_s'])} (replayed with "
                             f"device argmax {f(rep['argmax']['effective_tok_s'])})", "", ""])
        for label, h in (entry.get("hf") or {}).items():
            if not isinstance(h, dict):
                continue
            for ctx, d in (h.get("decode") or {}).items():
                t = ((h.get("ttft") or {}).get(ctx) or {}).get("ttft_s")
                rows.append([name, f"HF {label}", ctx, f(d["tok_s"]), "", f(t and t * 1e3, "{:.1f}")])
            if "error" in h:
                rows.append([name, f"HF {label}", "", h["error"][:60], "", ""])
    return rows


def print_summary(result: dict, file: Any = None) -> None:
    rows = summary_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = file or sys.stdout
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), file=out)


def add_arguments(parser: argparse.ArgumentParser, shared: bool = True) -> None:
    """The GPU bench's options. shared=False adds only those `pairline bench engine` lacks (it
    already has --model, --quant, --phases, --repeats, --quick, --out), for its --device cuda."""
    if shared:
        parser.add_argument("--model", "-m", default="1.5b", help="configs: 0.5b, 1.5b, 7b, all, tiny (comma list)")
        parser.add_argument("--device", default="cuda")
        parser.add_argument("--quant", default="none", help="comma-separated: none, int8, int4")
        parser.add_argument("--phases", default=None, help=f"comma-separated: {', '.join(PARTS)} (default: all)")
        parser.add_argument("--repeats", type=int, default=None)
        parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke test)")
        parser.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    gpu = parser if shared else parser.add_argument_group("--device cuda (pairline.bench.gpu)")
    gpu.add_argument("--policies", default=",".join(POLICIES),
                     help="static-step policies: exact (lossless), fast; a suffix picks the attention kernel: "
                     "-sdpa (fused, masked), -triton (split-KV); none: matmul + masked softmax")
    gpu.add_argument("--contexts", default=None, help="decode contexts, comma-separated tokens")
    gpu.add_argument("--ttft-sizes", default=None, help="prompt sizes for TTFT, comma-separated tokens")
    gpu.add_argument("--decode-tokens", type=int, default=None)
    gpu.add_argument("--prefill-chunk", type=int, default=None, help="the loop's prefill chunk (default 2048)")
    gpu.add_argument("--traces", default=None, help="an edit-phase JSON of `pairline bench engine` to replay")
    gpu.add_argument("--no-compile-peer", action="store_true", help="skip HF static cache + compile")
    gpu.add_argument("--no-graphs", action="store_true", help="pairline without CUDA graphs (to see what they give)")


# `pairline bench engine --phases` names for the CPU bench, mapped to this one's parts
_PHASE_ALIASES = {"engine": ("decode", "ttft", "hf")}


def config_from_args(args: argparse.Namespace) -> GpuBenchConfig:
    def arg(name: str, default: Any = None) -> Any:
        return getattr(args, name, default)

    quants = tuple("none" if q == "auto" else q for q in (_csv(arg("quant")) or ("none",)))
    kw: dict[str, Any] = {"models": resolve_models(arg("model", "1.5b")), "device": arg("device", "cuda"),
                          "quants": quants, "policies": _csv(arg("policies")) or POLICIES,
                          "hf_compile": not arg("no_compile_peer", False), "traces": arg("traces"),
                          "command": " ".join(["pairline", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"]
                          else " ".join(["python -m pairline.bench.gpu", *sys.argv[1:]])}
    if arg("no_graphs"):
        kw["graphs"] = False
    if arg("phases"):
        kw["parts"] = tuple(p for name in _csv(arg("phases")) for p in _PHASE_ALIASES.get(name, (name,)))
        unknown = set(kw["parts"]) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown phases {', '.join(sorted(unknown))}; use {', '.join(PARTS)}")
    for name in ("contexts", "ttft_sizes"):
        if arg(name):
            kw[name] = tuple(int(v) for v in _csv(arg(name)))
    for name in ("decode_tokens", "repeats", "prefill_chunk"):
        if arg(name):
            kw[name] = arg(name)
    return GpuBenchConfig.quick(**kw) if arg("quick") else GpuBenchConfig(**kw)


def cmd_gpu(args: argparse.Namespace) -> int:
    """Entry point for `pairline bench engine --device cuda` and `python -m pairline.bench.gpu`."""
    cfg = config_from_args(args)
    cfg.log = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)
    path = out_path(args.out, f"engine-gpu-{'+'.join(cfg.models)}-{stamp()}.json")

    def save(result: dict) -> None:  # after each variant: a run stopped at its time limit keeps what it measured
        write_json(result, path)

    cfg.checkpoint = save
    result = run_gpu_bench(cfg)
    save(result)
    print_summary(result)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m pairline.bench.gpu", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError):
        torch.backends.cuda.matmul.allow_tf32 = False  # bf16 throughout; no silent precision change
    return cmd_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
