"""The torch runtime: pairline's own model code (runtimes/torch_model.py) under the Runtime contract."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pairline.engine.config import ModelConfig
from pairline.engine.runtime import Rows, RuntimeDefaults, check_forward, cpu_threads, kv_cache_bytes
from pairline.engine.runtimes.torch_model import (
    EXACT_ROWS,
    Int8Linear,
    Linear,
    Transformer,
    fuse_state_dict,
    quantize_int8,
)
from pairline.errors import PairlineError

if TYPE_CHECKING:
    from pairline.engine.generate import CancelToken

_ROWS = {"none": None, "last": slice(-1, None), "all": slice(None)}


def default_dtype(device: str) -> torch.dtype:
    """bf16 everywhere: half the bytes per token of float32, and on CPU its matmuls give each row
    the same bits whatever the batch size (float32's do not), which is what makes greedy
    speculation token-identical to plain decoding. Measured: docs/benchmarks.md."""
    return torch.bfloat16


def native_bf16_cpu() -> bool:
    """True where the CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Inputs wider than this many rows (prefill chunks) run in float32 where bf16 is emulated;
# decode and verify steps (at most draft length + 1 rows) stay in bf16.
UPCAST_ROWS = 32


QUANTS = ("none", "int8")


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MB (its ceiling) for reuse instead of
    returning them to the kernel. By default a block past a dynamic threshold is a fresh mmap at
    every call, and a prefill chunk's temporaries (activations, attention scores) then page-fault
    on every first touch: measured on a 2-core Xeon with AMX, one layer's attention over 2048 keys
    took 59 ms that way and 22 ms with the blocks kept. The cost: the process keeps its peak heap.
    Once per process; False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def default_quant(device: str, dtype: torch.dtype) -> str:
    """int8 weights on CPU: decode reads half of bf16's bytes, and on CPUs without bf16 hardware
    the int8 kernel verifies a 17-token draft ~4x faster than a bf16 GEMM (docs/benchmarks.md)."""
    return "int8" if device == "cpu" and dtype == torch.bfloat16 else "none"


PROBE_ROWS = (3, 17)  # verify widths the probe tries: a small draft and one past 16-row kernel blocks


@torch.inference_mode()
def rows_independent(model: torch.nn.Module) -> bool:
    """Whether each linear layer shape of `model` gives a row of a k-row input exactly what it gives
    that row alone, for k in PROBE_ROWS (random inputs; one layer of each kind and shape)."""
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for module in model.modules():
        if not isinstance(module, Linear | Int8Linear):
            continue
        kind = (type(module), tuple(module.weight.shape))
        if kind in seen:
            continue
        seen.add(kind)
        for k in PROBE_ROWS:
            x = torch.randn(k, module.weight.shape[1], generator=gen).to(torch.bfloat16)
            if not torch.equal(module(x), torch.cat([module(x[i : i + 1]) for i in range(k)])):
                return False
    return True


def _transposed(t: torch.Tensor) -> bool:
    return t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()


class TorchRuntime(RuntimeDefaults):
    name = "torch"
    exact_rows = EXACT_ROWS  # wider calls (prefill chunks) take the batched path
    interruptible = True  # a cancel stops forward between layers
    verify_slope_hint = 0.6  # until measured: a 17-token verify costs ~11x a step here (docs/benchmarks.md)

    def __init__(
        self,
        cfg: ModelConfig,
        state: dict[str, torch.Tensor],
        n_ctx: int | None = None,
        dtype: torch.dtype | None = None,
        device: str = "cpu",
        quant: str = "none",
        prepared: bool = False,
        kv_dtype: torch.dtype | None = None,
    ):
        """`state` holds the loader's names and dtype, or, with `prepared`, this runtime's own
        weights as `prepared_state()` returned them (fused, quantized): no work left but mapping them.
        `kv_dtype` overrides the cache's dtype (the split runtime keeps llama.cpp's f16 KV exactly)."""
        self.cfg = cfg
        self.device = device
        self.dtype = dtype or default_dtype(device)
        self.n_ctx = min(n_ctx or cfg.max_context, cfg.max_context)
        self.vocab_size = cfg.vocab_size
        if device == "cpu":
            torch.set_num_threads(cpu_threads())
            keep_freed_memory()
        if quant not in QUANTS:
            raise PairlineError(f"unknown quantization {quant!r}; use one of {', '.join(QUANTS)}")
        if quant == "int8" and (self.dtype != torch.bfloat16 or device != "cpu"):
            raise PairlineError("int8 weights run with bf16 activations on the CPU; use --dtype bf16")
        with torch.device("meta"):
            model = Transformer(cfg)
            if prepared and quant == "int8":
                quantize_int8(model, UPCAST_ROWS)  # on meta tensors: only the modules' shapes
        if not prepared:
            state = {k: v.to(self.dtype) for k, v in fuse_state_dict(state).items()}
        tied = cfg.tie_embeddings and not (prepared and quant == "int8")
        if tied:
            state.pop("output.weight", None)
        model.load_state_dict(state, strict=False, assign=True)
        if tied:
            model.output.weight = model.tok_embeddings.weight
        missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
        if missing:
            raise PairlineError(f"model weights incomplete: {missing[0]} is missing")
        self.model = model.to(device).eval()
        emulated_bf16 = device == "cpu" and self.dtype == torch.bfloat16 and not native_bf16_cpu()
        self.model.setup_cache(self.n_ctx, self.dtype, kv_dtype or (torch.float32 if emulated_bf16 else None))
        if emulated_bf16:
            self.model.set_upcast_rows(UPCAST_ROWS)
        if quant == "int8" and not prepared:
            quantize_int8(self.model, UPCAST_ROWS)
        self.quant = quant
        self._n_past = 0

    def prepared_state(self) -> dict[str, torch.Tensor]:
        """The weights as this runtime computes with them, each tensor once (a tied output
        projection is the embedding table), for `TorchRuntime(..., prepared=True)`. Strides are
        kept: torch.save stores a transposed layout (`store_transposed`) as it is."""
        tied = self.model.output.weight is self.model.tok_embeddings.weight
        return {k: v if _transposed(v) else v.contiguous() for k, v in self.model.state_dict().items()
                if not (tied and k == "output.weight")}

    def prefill_only(self, transpose: bool) -> None:
        """Tune a runtime that only prefills (the split runtime's torch side). Where the CPU has bf16
        hardware, prefill attention multiplies in bf16 (2-3x faster than float32 there; the torch
        runtime alone keeps float32, whose prefill then matches its decode path more closely).
        `transpose` keeps each projection's weight in [in, out] storage (a transposed view of it
        serves as [out, in]), the layout oneDNN's GEMM reads fastest: on the AMX Xeon a 200-token
        prefill of Qwen2.5-Coder-0.5B took 0.55 s instead of 0.72 s. The tied output projection,
        which only ever sees one row, keeps its layout. (A prepared cache keeps the transposition.)"""
        if self.dtype == torch.bfloat16 and native_bf16_cpu():
            self.model.set_wide_attention(torch.bfloat16)
        if not transpose:
            return
        for module in self.model.modules():
            if isinstance(module, Linear) and module.weight is not self.model.tok_embeddings.weight:
                module.weight = torch.nn.Parameter(module.weight.t().contiguous().t(), requires_grad=False)

    @functools.cached_property
    def batch_invariant(self) -> bool:
        """Measured, not assumed: attention takes each verify row on its own (the decode path), but
        whether a k-row matmul gives each row the bits of a one-row matmul depends on the kernels this
        CPU gets. oneDNN's bf16 GEMMs on avx512_bf16 hardware do not; its emulated bf16 (AVX2) and the
        int8 kernel did (tests/test_runtime_contract.py). Probed on this model's own layers at first use."""
        return rows_independent(self.model)

    @property
    def n_past(self) -> int:
        return self._n_past

    @property
    def kv_bytes(self) -> int:
        c = self.cfg
        return kv_cache_bytes(c.n_layers, c.n_kv_heads, c.head_dim, self.n_ctx, self.dtype.itemsize)

    def describe(self) -> dict:
        return {"runtime": self.name, "quant": self.quant, "dtype": str(self.dtype).removeprefix("torch."),
                "threads": torch.get_num_threads()}

    @torch.inference_mode()
    def forward(self, tokens: list[int], rows: Rows = "last", cancel: CancelToken | None = None) -> np.ndarray | None:
        n = len(tokens)
        check_forward(self._n_past, n, self.n_ctx)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        logits = self.model(ids, self._n_past, _ROWS[rows], cancel)
        self._n_past += n
        return None if logits is None else logits.float().cpu().numpy()

    def read_kv(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached K and V of positions [start, end): each [layers, kv_heads, end - start, head_dim]."""
        if not 0 <= start <= end <= self._n_past:
            raise ValueError(f"positions [{start}, {end}) are not all cached ({self._n_past})")
        caches = [layer.attention.kv_cache for layer in self.model.layers]
        return (torch.stack([c.k[:, start:end] for c in caches]), torch.stack([c.v[:, start:end] for c in caches]))

    def write_kv(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put K and V computed elsewhere (shapes as `read_kv` returns) at positions start.., which
        then become the end of the cache."""
        end = start + keys.shape[2]
        check_forward(start, keys.shape[2], self.n_ctx)
        if start > self._n_past:
            raise ValueError(f"a gap: writing at {start} with {self._n_past} positions cached")
        for layer, k, v in zip(self.model.layers, keys, values, strict=True):
            layer.attention.kv_cache.write(start, k, v)
        self._n_past = end

    def fork(self) -> TorchRuntime:
        """Another runtime on the same weights with its own empty KV cache (one per session)."""
        other = copy.copy(self)
        other.model = self.model.fork()
        other._n_past = 0
        return other

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self._n_past:
            raise ValueError(f"cannot truncate {self._n_past} cached positions to {n}")
        self._n_past = n
