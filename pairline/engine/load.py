"""From a model name or path to a ready Engine."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pairline.engine.config import ModelConfig, RopeScaling
from pairline.engine.generate import Engine
from pairline.engine.prefix_store import PrefixStore
from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError, notice

if TYPE_CHECKING:  # torch is imported only on the torch runtimes' path: the llama.cpp path starts 1.5 s sooner
    import torch

DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto"):
        return None
    if name not in DTYPES:
        raise PairlineError(f"unknown dtype {name!r}; use one of auto, {', '.join(DTYPES)}")
    import torch

    return getattr(torch, DTYPES[name])


def converted_path(source: Path, dtype: torch.dtype, kind: str = "", ext: str = "safetensors") -> Path:
    """Dequantizing a GGUF takes seconds; the result is kept once per file, dtype and kind, keyed by
    the file's identity, so later starts map it from disk."""
    from pairline.models.fetch import cache_dir

    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    suffix = f"-{kind}" if kind else ""
    return cache_dir() / "converted" / f"{source.stem}-{key}-{str(dtype).split('.')[-1]}{suffix}.{ext}"


def load_state(path: Path, dtype: torch.dtype) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and weights; a GGUF is dequantized once, then read back from the cache."""
    from pairline.engine.weights import load_weights

    if path.is_dir():
        return load_weights(path, dtype)
    cached = converted_path(path, dtype)
    if cached.is_file():
        cfg, state = _read_cached(cached)
        if cfg is not None:
            return cfg, state
    cfg, state = load_weights(path, dtype)
    # tied weights share storage; safetensors wants each tensor once
    _write_cached(cached, cfg, {k: v for k, v in state.items() if k != "output.weight" or not cfg.tie_embeddings})
    return cfg, state


def _read_cached(path: Path) -> tuple[ModelConfig | None, dict[str, torch.Tensor]]:
    """(config, tensors) from a cache file that `_write_cached` wrote; (None, {}) for any other file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "pairline_config" not in meta:
        return None, {}
    return config_from_json(meta["pairline_config"]), load_file(str(path))


def _write_cached(path: Path, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    _save_to_cache(path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                                               metadata={"pairline_config": config_to_json(cfg)}))


def _save_to_cache(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a temporary file beside `path`, then rename it: a reader sees the old file or the new
    one, never half of one. Quietly: a full disk or a read-only cache only costs start-up time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        write(tmp)
        os.replace(tmp, path)
    except OSError:
        pass


def config_to_json(cfg: ModelConfig) -> str:
    return json.dumps(asdict(cfg))


def config_from_json(text: str) -> ModelConfig:
    data = json.loads(text)
    data["rope"] = RopeScaling(**data["rope"])
    return ModelConfig(**data)


RUNTIMES = ("auto", "torch", "llamacpp")


def add_runtime_option(parser) -> None:
    """`--runtime`, the same on every command that loads a model."""
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="auto: llama.cpp on the CPU for a GGUF when installed, else pairline's torch model")

def choose_runtime(requested: str | None, path: Path, device: str) -> str:
    """auto: llama.cpp for a GGUF on the CPU (the fastest decoder there), else torch. PAIRLINE_RUNTIME
    sets the default."""
    requested = requested or "auto"
    if requested == "auto":
        requested = os.environ.get("PAIRLINE_RUNTIME") or "auto"
    if requested not in RUNTIMES:
        raise PairlineError(f"unknown runtime {requested!r}; use one of {', '.join(RUNTIMES)}")
    if requested == "llamacpp":
        if path.is_dir():
            raise PairlineError(f"the llamacpp runtime reads GGUF files; {path} is a directory (use --runtime torch)")
        if device != "cpu":
            raise PairlineError("pairline's llamacpp runtime runs on the CPU; use --runtime torch for cuda")
        return "llamacpp"
    if requested == "auto" and device == "cpu" and path.is_file():
        from pairline.engine.runtimes import llamacpp_runtime

        if llamacpp_runtime.available():
            return "llamacpp"
        notice("llama-cpp-python is not installed, so the torch runtime runs this model (slower on CPU)")
    return "torch"


def candidates_for(chosen: str, requested: str | None, path: Path, dtype: str | None, quant: str | None,
                   one_shot: bool = False) -> list:
    """The configurations that may run this model here, best guess first. On the CPU each is checked
    in a child process before this one uses it (engine/guard.py); llama.cpp's two weight layouts
    compete on the speeds their checks measured, and torch is the fallback where auto chose llama.cpp.
    `one_shot` (a process that answers one request and exits) leaves out the split configuration:
    importing torch and loading its side cost such a process more than its short prefill saves."""
    from pairline.engine.guard import Candidate, bf16_hardware

    if quant in (None, "auto"):  # resolved here, so a check's key names the weights it ran
        quant = os.environ.get("PAIRLINE_QUANT") or None
    if chosen == "llamacpp":
        found = [Candidate("llamacpp", repack=True), Candidate("llamacpp", repack=False)]
        if (requested or "auto") == "auto" and (os.environ.get("PAIRLINE_RUNTIME") or "auto") == "auto":
            if not one_shot and bf16_hardware() and importlib.util.find_spec("torch") is not None:
                # bf16 GEMMs in hardware may prefill faster than llama.cpp's kernels: the check measures
                # it. No repack: the AMX repack is what crashes where bf16 hardware is (docs/engine.md).
                found.append(Candidate("llamacpp", repack=False, prefill="torch"))
            found.append(Candidate("torch", dtype=dtype, quant=quant))
            if quant in (None, "auto"):  # bf16 weights compete where doctor --tune measured them
                found.append(Candidate("torch", dtype=dtype, quant="none"))
        return found
    return [Candidate("torch", dtype=dtype, quant=quant)]


def load_engine(
    model: str,
    *,
    runtime: str | None = None,
    n_ctx: int | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    quant: str | None = None,
    one_shot: bool = False,
) -> Engine:
    """`model` is a registry name (pulled on first use), a .gguf file or an HF directory. `runtime`:
    auto (default), torch or llamacpp. `one_shot`: this process serves one request (candidates_for)."""
    from pairline.models.fetch import resolve

    t0 = time.perf_counter()
    path = resolve(model)
    chosen = choose_runtime(runtime, path, device)
    if device == "cpu" and path.is_file():
        from pairline.engine.guard import choose

        picked = choose(candidates_for(chosen, runtime, path, dtype, quant, one_shot), path)
        chosen, dtype, quant = picked.runtime, picked.dtype or dtype, picked.quant or quant
        repack, prefill = picked.repack, picked.prefill
    else:
        repack = prefill = None
    # The tokenizer (a 150k-token BPE built in Python, ~0.5 s) is built on a second thread while the
    # runtime loads: llama.cpp's load runs in C without the GIL, so the two overlap on two cores.
    with ThreadPoolExecutor(1, thread_name_prefix="pairline-tokenizer") as pool:
        pending_tokenizer = pool.submit(Tokenizer.load, path)
        rt = _runtime(chosen, path, n_ctx, dtype, device, quant, repack, prefill)
        tokenizer = pending_tokenizer.result()
    if rt.vocab_size < tokenizer.vocab_size:
        raise PairlineError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model {rt.vocab_size}")
    # on a GPU a 256-token prefill chunk is mostly launch overhead; cancel still lands between chunks
    engine = Engine(rt, tokenizer, model_name=model, prefill_chunk=2048 if device.startswith("cuda") else 256)
    if rt.saves_state and path.is_file():
        engine.prefix_store = PrefixStore.for_model(path, rt.state_id)
    engine.load_s = time.perf_counter() - t0
    return engine


def _runtime(chosen: str, path: Path, n_ctx: int | None, dtype: str | None, device: str, quant: str | None,
             repack: bool | None = None, prefill: str | None = None):
    if chosen == "llamacpp":
        if quant not in (None, "auto") or dtype not in (None, "auto"):
            raise PairlineError("the llamacpp runtime computes with the GGUF's own quantization; drop --dtype/--quant")
        return build_llamacpp_runtime(path, n_ctx, repack, prefill, background=True)
    if device.startswith("cuda"):
        return _cuda_runtime(path, n_ctx, dtype, device, quant)
    return build_torch_runtime(path, n_ctx, dtype, device, quant)


def build_llamacpp_runtime(path: Path, n_ctx: int | None, repack: bool | None, prefill: str | None = None,
                           background: bool = False):
    """llama.cpp's runtime; with prefill="torch", the split runtime: prefill chunks on pairline's torch
    model in bf16 with an f16 KV cache (llama.cpp's), decode and verify on llama.cpp. `background`
    loads the torch side on a thread (llama.cpp serves every call until it is ready); the crash
    guard's check waits for it, to time what it checks."""
    from pairline.engine.runtimes.llamacpp_runtime import LlamaCppRuntime

    if prefill is None:
        return LlamaCppRuntime(path, n_ctx=n_ctx, repack=repack)
    if prefill != "torch":
        raise PairlineError(f"unknown prefill runtime {prefill!r}")
    from pairline.engine.runtimes.split_runtime import LOADER, SplitRuntime

    llama = LlamaCppRuntime(path, n_ctx=n_ctx, repack=repack)

    def load_wide():
        import torch

        return build_torch_runtime(path, llama.n_ctx, "bf16", "cpu", "none", kv_dtype=torch.float16,
                                   prefill_only=True)

    return SplitRuntime(llama, LOADER.submit(load_wide) if background else load_wide())


def build_torch_runtime(path: Path, n_ctx: int | None, dtype: str | None, device: str, quant: str | None,
                        kv_dtype: torch.dtype | None = None, prefill_only: bool = False):
    """pairline's torch model on the CPU. The weights as it computes with them (fused, int8-quantized:
    5.6 s for the 0.5B model on 2 cores) are kept in the cache after the first load, so a warm
    load only maps them."""
    from pairline.engine.runtimes.torch_runtime import TorchRuntime, default_dtype, default_quant

    torch_dtype = parse_dtype(dtype) or default_dtype(device)
    if quant in (None, "auto"):
        quant = os.environ.get("PAIRLINE_QUANT") or default_quant(device, torch_dtype)
    kind = f"{quant}-prepared" + ("-prefill" if prefill_only else "")
    prepared = converted_path(path, torch_dtype, kind, "pt") if path.is_file() else None
    if prepared is not None and prepared.is_file():
        cfg, state = _read_prepared(prepared)
        if cfg is not None:
            runtime = TorchRuntime(cfg, state, n_ctx=n_ctx, dtype=torch_dtype, device=device, quant=quant,
                                   prepared=True, kv_dtype=kv_dtype)
            if prefill_only:
                runtime.prefill_only(transpose=False)  # the cache holds the transposed weights
            return runtime
    cfg, state = load_state(path, torch_dtype)
    runtime = TorchRuntime(cfg, state, n_ctx=n_ctx, dtype=torch_dtype, device=device, quant=quant, kv_dtype=kv_dtype)
    if prefill_only:
        runtime.prefill_only(transpose=True)
    if prepared is not None:
        _write_prepared(prepared, cfg, runtime.prepared_state())
    return runtime


def _read_prepared(path: Path) -> tuple[ModelConfig | None, dict[str, torch.Tensor]]:
    """Memory-mapped, not read: torch's own format keeps each tensor 64-byte aligned in the file.
    (Tensors mapped from a safetensors file sit at 8-byte offsets, and torch 2.13's int8 kernels
    segfaulted on them: the crash guard caught it. Copying them aligned cost 1.2 s for 0.5B.)"""
    import torch

    try:
        data = torch.load(path, mmap=True, weights_only=True)
        return config_from_json(data["config"]), data["state"]
    except Exception:  # a damaged or foreign file: rebuild it
        return None, {}


def _write_prepared(path: Path, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    import torch

    _save_to_cache(path, lambda tmp: torch.save({"config": config_to_json(cfg), "state": state}, tmp))


def _cuda_runtime(path: Path, n_ctx: int | None, dtype: str | None, device: str, quant: str | None):
    """bf16 weights on the GPU, CUDA-graph decode and verify (docs/gpu.md); --quant int8|int4 per model."""
    from pairline.engine.runtimes.cuda_runtime import CudaRuntime

    torch_dtype = parse_dtype(dtype) or parse_dtype("bf16")
    cfg, state = load_state(path, torch_dtype)
    if quant in (None, "auto"):
        quant = os.environ.get("PAIRLINE_QUANT") or "none"
    return CudaRuntime(cfg, state, n_ctx=n_ctx, dtype=torch_dtype, device=device, quant=quant)
