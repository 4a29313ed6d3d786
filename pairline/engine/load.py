"""From a model name or path to a ready Engine."""

from __future__ import annotations

import hashlib
import json
import os
import time
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


def _converted_path(source: Path, dtype: torch.dtype) -> Path:
    """Dequantizing a GGUF takes seconds; the result is kept once per file and dtype, keyed by the
    file's identity, so later starts map it from disk."""
    from pairline.models.fetch import cache_dir

    st = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{source.stem}-{key}-{str(dtype).split('.')[-1]}.safetensors"


def load_state(path: Path, dtype: torch.dtype) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and weights; a GGUF is dequantized once, then read back from the cache."""
    from pairline.engine.weights import load_weights

    if path.is_dir():
        return load_weights(path, dtype)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cached = _converted_path(path, dtype)
    if cached.is_file():
        with safe_open(str(cached), "pt") as f:
            meta = f.metadata() or {}
        if "pairline_config" in meta:
            return config_from_json(meta["pairline_config"]), load_file(str(cached))
    cfg, state = load_weights(path, dtype)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        # tied weights share storage; safetensors wants each tensor once
        unique = {k: v.contiguous() for k, v in state.items() if k != "output.weight" or not cfg.tie_embeddings}
        save_file(unique, str(tmp), metadata={"pairline_config": config_to_json(cfg)})
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache only costs start-up time
    return cfg, state


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


def load_engine(
    model: str,
    *,
    runtime: str | None = None,
    n_ctx: int | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    quant: str | None = None,
) -> Engine:
    """`model` is a registry name (pulled on first use), a .gguf file or an HF directory. `runtime`:
    auto (default), torch or llamacpp."""
    from pairline.models.fetch import resolve

    t0 = time.perf_counter()
    path = resolve(model)
    chosen = choose_runtime(runtime, path, device)
    # The tokenizer (a 150k-token BPE built in Python, ~0.5 s) is built on a second thread while the
    # runtime loads: llama.cpp's load runs in C without the GIL, so the two overlap on two cores.
    with ThreadPoolExecutor(1, thread_name_prefix="pairline-tokenizer") as pool:
        pending_tokenizer = pool.submit(Tokenizer.load, path)
        rt = _runtime(chosen, path, n_ctx, dtype, device, quant)
        tokenizer = pending_tokenizer.result()
    if rt.vocab_size < tokenizer.vocab_size:
        raise PairlineError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model {rt.vocab_size}")
    # on a GPU a 256-token prefill chunk is mostly launch overhead; cancel still lands between chunks
    engine = Engine(rt, tokenizer, model_name=model, prefill_chunk=2048 if device.startswith("cuda") else 256)
    if hasattr(rt, "save_state") and path.is_file():
        engine.prefix_store = PrefixStore.for_model(path, rt.state_id)
    engine.load_s = time.perf_counter() - t0
    return engine


def _runtime(chosen: str, path: Path, n_ctx: int | None, dtype: str | None, device: str, quant: str | None):
    if chosen == "llamacpp":
        if quant not in (None, "auto") or dtype not in (None, "auto"):
            raise PairlineError("the llamacpp runtime computes with the GGUF's own quantization; drop --dtype/--quant")
        from pairline.engine.runtimes.llamacpp_runtime import LlamaCppRuntime

        return LlamaCppRuntime(path, n_ctx=n_ctx)
    if device.startswith("cuda"):
        return _cuda_runtime(path, n_ctx, dtype, device, quant)
    return _torch_runtime(path, n_ctx, dtype, device, quant)


def _torch_runtime(path: Path, n_ctx: int | None, dtype: str | None, device: str, quant: str | None):
    from pairline.engine.runtimes.torch_runtime import TorchRuntime, default_dtype, default_quant

    torch_dtype = parse_dtype(dtype) or default_dtype(device)
    cfg, state = load_state(path, torch_dtype)
    if quant in (None, "auto"):
        quant = os.environ.get("PAIRLINE_QUANT") or default_quant(device, torch_dtype)
    return TorchRuntime(cfg, state, n_ctx=n_ctx, dtype=torch_dtype, device=device, quant=quant)


def _cuda_runtime(path: Path, n_ctx: int | None, dtype: str | None, device: str, quant: str | None):
    """bf16 weights on the GPU, CUDA-graph decode and verify (docs/gpu.md); --quant int8|int4 per model."""
    from pairline.engine.runtimes.cuda_runtime import CudaRuntime

    torch_dtype = parse_dtype(dtype) or parse_dtype("bf16")
    cfg, state = load_state(path, torch_dtype)
    if quant in (None, "auto"):
        quant = os.environ.get("PAIRLINE_QUANT") or "none"
    return CudaRuntime(cfg, state, n_ctx=n_ctx, dtype=torch_dtype, device=device, quant=quant)
