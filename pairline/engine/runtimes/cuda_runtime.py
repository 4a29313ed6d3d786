"""The CUDA runtime: cuda_model.StaticTransformer under the Runtime contract, with decode and
verify steps replayed as CUDA graphs and greedy sampling on the device.

Not yet run on a GPU (docs/gpu.md). Everything but the graph capture also runs on the CPU
(device="cpu", graphs off), which is how tests/test_cuda_runtime.py checks it.

How a call runs:
- A call of at most `StepPolicy.static_rows` tokens is a *static step*: its tokens, positions and
  KV write slots go into one device buffer (one host-to-device copy), and the graph for its shape
  (rows, kv_len) is replayed, captured the first time that shape is used. Logits and their argmax
  land in static output buffers.
- Wider calls (prefill chunks) run eagerly through SDPA, in sub-chunks of `prefill_max` tokens.
  The loop's own chunking (Engine.prefill_chunk) is what lets a cancel land between chunks.

Lossless speculation needs each row of a k-token verify step to equal, bit for bit, the one-token
decode step at that position. GPU kernels are chosen per shape (cuBLAS picks another algorithm for
M=1 than for M=33), so the default policy runs *every* static step at one shape: padded to
`pad_rows` rows over an attention length of the whole cache (kv="full"; the triton kernel still
loads only the cached keys). Then decode and verify are the same computation and one graph serves
both. `exact_rows` tells the loop the widest call that stays exact (drafts of at most
exact_rows - 1 tokens). The fast policy (pad_rows=None, kv="pow2") keeps one graph per width
actually used and per power-of-two attention length: fewer bytes per step, but rows may differ in
the last bit, so a greedy speculative run can, rarely, take another token at a near-tie.

Contract extensions (optional for a runtime; the loop may use them when present):
- `argmax(tokens, rows)`: as forward, but returns the greedy token ids (CPU int64) instead of logits:
  one small copy instead of rows x vocab float32.
- `greedy_stream(first, max_new)`: plain greedy decode with no host sync per token: each step's
  argmax is fed to the next step on the device, ids come back through asynchronous copies, and the
  host reads them `lag` steps behind. Closing the generator rolls the cache back to what was read.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pairline.engine.config import ModelConfig
from pairline.engine.runtime import ContextFull, Rows, RuntimeDefaults, check_forward
from pairline.engine.runtimes.cuda_model import StaticTransformer, quantize
from pairline.engine.runtimes.torch_model import Linear, fuse_state_dict
from pairline.engine.runtimes.torch_runtime import TorchRuntime, native_bf16_cpu
from pairline.errors import PairlineError

QUANTS = ("none", "int8", "int4")


@dataclass(slots=True)
class StepPolicy:
    """Which shape a static step runs at. The defaults make speculation exactly lossless."""

    # every static step runs at this many rows (None: at its own width). 33 = the loop's longest
    # draft (Engine draft_max, 32) + 1: a wider verify would run as a prefill chunk, inexactly
    pad_rows: int | None = 33
    max_rows: int = 32  # with pad_rows=None, calls up to this wide are static steps
    kv: str = "full"  # "full": attend all n_ctx positions; "pow2": the smallest power of two that covers
    kv_min: int = 256  # the smallest attention length under "pow2"
    # static-step attention: "matmul" (+ masked softmax), "sdpa" (fused, masked) or "triton" (split-KV,
    # reads only the keys up to each row block's furthest position): cuda_model.StaticAttention
    attention: str = "matmul"

    @property
    def static_rows(self) -> int:
        return self.pad_rows or self.max_rows

    @property
    def exact_rows(self) -> int:
        """The widest call whose rows are bit-identical to one-token steps (0: none guaranteed)."""
        return self.pad_rows if self.kv == "full" and self.pad_rows else 0

    @classmethod
    def fast(cls) -> StepPolicy:
        return cls(pad_rows=None, kv="pow2")


def plan_step(n_past: int, n: int, n_ctx: int, policy: StepPolicy) -> tuple[int, int] | None:
    """(rows, kv_len) of the static step that evaluates n tokens after n_past, or None when the call
    is too wide for a static step (it then runs as a prefill chunk)."""
    if n > policy.static_rows:
        return None
    rows = policy.pad_rows or n
    if policy.kv == "full":
        return rows, n_ctx
    need = n_past + n
    kv_len = max(policy.kv_min, 1 << max(need - 1, 0).bit_length())
    return rows, min(kv_len, n_ctx)


class Replayable:
    """What a capture returns: replay() reruns the captured step."""

    def replay(self) -> None: ...


def capture_cuda_graph(step: Callable[[], None], pool: Any) -> tuple[Replayable, Any]:
    """Capture `step` as a CUDA graph sharing `pool` with earlier captures (graphs of one runtime
    never run at once, and their outputs live outside the pool, so one pool serves them all)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: cuBLAS handles, compile, autotuning
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a server thread touching CUDA meanwhile (another session's copy) must not void the capture
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        step()
    return graph, graph.pool()


class StepGraphs:
    """Static input and output buffers of the static steps, and one graph per (rows, kv_len) shape,
    captured lazily. With `capture=None` every step runs eagerly on the same buffers (the CPU path)."""

    def __init__(
        self,
        step_fn: Callable[..., torch.Tensor],
        max_rows: int,
        vocab: int,
        device: torch.device | str,
        capture: Callable[[Callable[[], None], Any], tuple[Replayable, Any]] | None = None,
    ):
        self.step_fn = step_fn  # (ids [R], pos [R], slot [R], kv_len) -> logits [R, V] float32
        self.capture = capture
        self.inputs = torch.zeros(3, max_rows, dtype=torch.long, device=device)  # ids, pos, slot
        self.logits = torch.zeros(max_rows, vocab, dtype=torch.float32, device=device)
        self.best = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.graphs: dict[tuple[int, int], Replayable] = {}
        self.pool: Any = None
        self.captures = 0
        self.replays = 0

    @property
    def ids(self) -> torch.Tensor:
        return self.inputs[0]

    @property
    def pos(self) -> torch.Tensor:
        return self.inputs[1]

    @property
    def slot(self) -> torch.Tensor:
        return self.inputs[2]

    def _step(self, rows: int, kv_len: int) -> None:
        logits = self.step_fn(self.ids[:rows], self.pos[:rows], self.slot[:rows], kv_len)  # [rows, V]
        self.logits[:rows].copy_(logits)
        self.best[:rows].copy_(logits.argmax(dim=-1))  # first maximum, as the loop's argmax on the CPU

    def run(self, rows: int, kv_len: int) -> None:
        if self.capture is None:
            self._step(rows, kv_len)
            return
        key = (rows, kv_len)
        graph = self.graphs.get(key)
        if graph is None:
            graph, self.pool = self.capture(lambda: self._step(rows, kv_len), self.pool)
            self.graphs[key] = graph
            self.captures += 1
        graph.replay()
        self.replays += 1


class CudaRuntime(RuntimeDefaults):
    name = "cuda"
    has_argmax = True  # logits and their argmax are computed on the device (argmax())

    def __init__(
        self,
        cfg: ModelConfig,
        state: dict[str, torch.Tensor],
        n_ctx: int | None = None,
        dtype: torch.dtype | None = None,
        device: str = "cuda",
        quant: str = "none",
        graphs: bool | None = None,
        policy: StepPolicy | None = None,
        compile: bool | None = None,
        prefill_max: int = 8192,
        int4_group: int = 128,
        capture: Callable[[Callable[[], None], Any], tuple[Replayable, Any]] | None = None,
        lag: int = 4,
    ):
        if quant not in QUANTS:
            raise PairlineError(f"unknown quantization {quant!r}; use one of {', '.join(QUANTS)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise PairlineError("the cuda runtime needs a CUDA device; none is visible to torch")
        self.cfg = cfg
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self.dtype = dtype or torch.bfloat16
        self.n_ctx = min(n_ctx or cfg.max_context, cfg.max_context)
        self.vocab_size = cfg.vocab_size
        self.quant = quant
        self.policy = policy or StepPolicy()
        self.prefill_max = prefill_max
        self.lag = lag
        self.model = self._load(cfg, state, int4_group)
        # graphs on CUDA unless told otherwise; a test may pass its own capture to mock them
        use_graphs = self.on_cuda if graphs is None else graphs
        if use_graphs and capture is None and not self.on_cuda:
            raise PairlineError("CUDA graphs need device='cuda'")
        self._capture = (capture or capture_cuda_graph) if use_graphs else None
        # int8 is written as dequantize-then-matmul, which only pays once torch.compile fuses it
        self.compiled = (quant != "none" and self.on_cuda) if compile is None else compile
        self.graphs = self._new_graphs(self.model)
        self._n_past = 0
        # for the loop's draft-length policy (Engine.step_costs): under the exact policy a verify
        # step replays the very graph a decode step does, so extra drafted tokens cost ~nothing
        self.verify_slope_hint = 0.0 if self.policy.pad_rows else 0.05

    @property
    def batch_invariant(self) -> bool:
        """The Runtime contract's flag: exact under the padded policy, for calls up to exact_rows."""
        return self.policy.exact_rows > 0

    @property
    def exact_rows(self) -> int:
        """The widest call whose rows equal one-token steps bit for bit (0: none guaranteed); the
        loop keeps drafts under this so greedy speculation stays lossless."""
        return self.policy.exact_rows

    def _load(self, cfg: ModelConfig, state: dict[str, torch.Tensor], int4_group: int) -> StaticTransformer:
        with torch.device("meta"):
            model = StaticTransformer(cfg)
        state = fuse_state_dict(state)
        if cfg.tie_embeddings:
            state.pop("output.weight", None)
        model.load_state_dict(
            {k: v.to(device=self.device, dtype=self.dtype) for k, v in state.items()}, strict=False, assign=True
        )
        if cfg.tie_embeddings:
            model.output.weight = model.tok_embeddings.weight
        missing = [n for n, p in model.named_parameters() if p.is_meta]
        if missing:
            raise PairlineError(f"model weights incomplete: {missing[0]} is missing")
        model.eval()
        if self.quant != "none":
            if self.dtype != torch.bfloat16:
                raise PairlineError(f"{self.quant} weights run with bf16 activations; use --dtype bf16")
            quantize(model, self.quant, int4_group)
        model.setup_cache(self.n_ctx, self.dtype)
        model.set_static_kernel(self.policy.attention)
        if not self.on_cuda and self.dtype == torch.bfloat16 and not native_bf16_cpu():
            # the CPU path (tests): prefill chunks in float32 where bf16 is emulated, as TorchRuntime does
            for m in model.modules():
                if isinstance(m, Linear):
                    m.upcast_rows = self.policy.static_rows
        return model

    def _new_graphs(self, model: StaticTransformer) -> StepGraphs:
        step = model.forward_static
        if self.compiled:
            # shapes are static per graph; the graphs are ours, so inductor must not add its own. Each
            # (rows, kv_len) is one specialization: raise dynamo's limit (8), past which it would run eagerly
            import torch._dynamo.config as dynamo_config

            for knob in ("cache_size_limit", "recompile_limit"):
                if hasattr(dynamo_config, knob):
                    setattr(dynamo_config, knob, max(getattr(dynamo_config, knob), 256))
            step = torch.compile(step, fullgraph=True, dynamic=False, mode="max-autotune-no-cudagraphs")
        return StepGraphs(step, self.policy.static_rows, self.vocab_size, self.device, self._capture)

    # ------------------------------------------------------------------------------ contract

    @property
    def n_past(self) -> int:
        return self._n_past

    kv_bytes = TorchRuntime.kv_bytes  # the same cfg, n_ctx and dtype make the same cache

    def describe(self) -> dict:
        return {**TorchRuntime.describe(self), "threads": None}  # a device: its CPU threads say nothing

    def truncate(self, n: int) -> None:
        """Positions from n on are forgotten: the masks are built from positions, so stale KV past
        n_past (and in the trash slot) is never attended, and captured graphs stay valid."""
        if not 0 <= n <= self._n_past:
            raise ValueError(f"cannot truncate {self._n_past} cached positions to {n}")
        self._n_past = n

    def fork(self) -> CudaRuntime:
        """Same weights, own KV cache, own static buffers and graphs (a graph bakes in the addresses
        of the cache it was captured on)."""
        other = copy.copy(self)
        other.model = self.model.fork()
        other.graphs = other._new_graphs(other.model)
        other._n_past = 0
        return other

    @torch.inference_mode()
    def forward(self, tokens: list[int], rows: Rows = "last") -> np.ndarray | None:
        plan = self._check(tokens)
        n = len(tokens)
        if plan is None:
            logits = self._prefill(tokens, rows)
            return None if logits is None else logits.float().cpu().numpy()
        self._static(tokens, plan)
        if rows == "none":
            return None
        out = self.graphs.logits[n - 1 : n] if rows == "last" else self.graphs.logits[:n]
        return out.float().to("cpu", copy=True).numpy()  # a copy: the buffer belongs to the next step

    @torch.inference_mode()
    def argmax(self, tokens: list[int], rows: Rows = "last") -> np.ndarray:
        """As forward, but returns greedy token ids (int64 on the host): [1] for "last", [n] for "all"."""
        if rows == "none":
            raise ValueError("argmax needs rows 'last' or 'all'")
        plan = self._check(tokens)
        n = len(tokens)
        if plan is None:
            return self._prefill(tokens, rows).argmax(dim=-1).cpu().numpy()
        self._static(tokens, plan)
        best = self.graphs.best[n - 1 : n] if rows == "last" else self.graphs.best[:n]
        return best.to("cpu", copy=True).numpy()

    @torch.inference_mode()
    def greedy_stream(self, first: int, max_new: int) -> Iterator[int]:
        """Greedy decode from `first` (sampled, not yet cached): yields the argmax of each step, the
        host reading `lag` steps behind the device. When the generator is closed or exhausted, the
        cache holds exactly the inputs whose outputs were yielded (first and every yielded token
        but the last), as after the same steps one at a time."""
        n0 = self._n_past
        steps = min(max_new, self.n_ctx - n0)
        if steps <= 0:
            raise ContextFull(f"{n0 + 1} positions needed, the KV cache holds {self.n_ctx}")
        g = self.graphs
        self._stage([first], n0, plan_step(n0, 1, self.n_ctx, self.policy)[0])
        lag = self.lag if self.on_cuda else 0
        ring = torch.zeros(lag + 2, dtype=torch.long, pin_memory=self.on_cuda)  # host side of the async copies
        pending: deque[tuple[int, Any]] = deque()
        yielded = 0
        try:
            for i in range(steps):
                rows, kv_len = plan_step(n0 + i, 1, self.n_ctx, self.policy)
                g.run(rows, kv_len)
                # the next step's input is this step's output, one position on: all on the device
                g.ids[:1].copy_(g.best[:1])
                g.inputs[1:, :1].add_(1)  # pos and slot of row 0
                k = i % ring.numel()
                ring[k : k + 1].copy_(g.best[:1], non_blocking=True)
                event = torch.cuda.Event() if self.on_cuda else None
                if event is not None:
                    event.record()
                pending.append((k, event))
                while len(pending) > lag:
                    k, event = pending.popleft()
                    if event is not None:
                        event.synchronize()
                    yielded += 1
                    yield int(ring[k])
            while pending:
                k, event = pending.popleft()
                if event is not None:
                    event.synchronize()
                yielded += 1
                yield int(ring[k])
        finally:
            self._n_past = n0 + yielded

    # ------------------------------------------------------------------------------ internals

    def _check(self, tokens: list[int]) -> tuple[int, int] | None:
        n = len(tokens)
        check_forward(self._n_past, n, self.n_ctx)
        return plan_step(self._n_past, n, self.n_ctx, self.policy)

    def _stage(self, tokens: list[int], start: int, rows: int) -> None:
        """Fill the static inputs: real rows at start.., pad rows (token 0 at position 0) writing the
        trash slot n_ctx. One small host-to-device copy from pageable memory: the copy has read the
        host tensor when copy_ returns, so the next step can build its own at once."""
        n = len(tokens)
        host = torch.empty(3, rows, dtype=torch.long)
        host[0, :n] = torch.tensor(tokens, dtype=torch.long)
        host[1, :n] = torch.arange(start, start + n)
        host[2, :n] = host[1, :n]
        host[0, n:], host[1, n:], host[2, n:] = 0, 0, self.n_ctx
        self.graphs.inputs[:, :rows].copy_(host, non_blocking=True)

    def _static(self, tokens: list[int], plan: tuple[int, int]) -> None:
        rows, kv_len = plan
        self._stage(tokens, self._n_past, rows)
        self.graphs.run(rows, kv_len)
        self._n_past += len(tokens)

    def _prefill(self, tokens: list[int], rows: Rows) -> torch.Tensor | None:
        """A wide call, eagerly, in sub-chunks of prefill_max (bounds the activations' memory)."""
        ids = torch.tensor(tokens, dtype=torch.long).to(self.device, non_blocking=True)
        outs = []
        n = len(tokens)
        for s in range(0, n, self.prefill_max):
            chunk = ids[s : s + self.prefill_max]
            last = s + chunk.shape[0] == n
            want = slice(None) if rows == "all" else (slice(-1, None) if last and rows == "last" else None)
            logits = self.model.forward_prefill(chunk, self._n_past, want)
            self._n_past += chunk.shape[0]
            if logits is not None:
                outs.append(logits)
        return torch.cat(outs) if outs else None
