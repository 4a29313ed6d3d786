"""The split runtime: prefill on pairline's torch model in bf16, decode and verify on llama.cpp.

Why: on CPUs with bf16 hardware (AMX tiles, AVX512-BF16) oneDNN's bf16 GEMMs prefill several times
faster than llama.cpp's quantized kernels (2000 tokens of Qwen2.5-Coder-0.5B on a 2-core Sapphire
Rapids: HF transformers bf16 2.6-3.4 s, llama.cpp 12.8-13.5 s), while llama.cpp's Q4_K weights read
a third of bf16's bytes per decoded token. Which side wins where is measured per machine by the
crash guard's check (engine/guard.py), not assumed.

How: a call of at least `WIDE_ROWS` tokens runs on torch; narrower ones (decode steps and verify
calls) on llama.cpp. Each side keeps its own KV cache; every position is computed by exactly one
of them and copied to the other only when the other needs it (llama.cpp's cache is reached
through its sequence-state blob, runtimes/llamacpp_kv.py). torch's cache is f16, llama.cpp's type,
so a copy either way loses nothing. Speculation stays as lossless as on llama.cpp alone: every
decode step and every verify row is computed there.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import numpy as np

from pairline.engine.runtime import Rows, RuntimeDefaults, check_forward
from pairline.engine.runtimes import llamacpp_kv

if TYPE_CHECKING:
    from pairline.engine.generate import CancelToken
    from pairline.engine.runtimes.llamacpp_runtime import LlamaCppRuntime
    from pairline.engine.runtimes.torch_runtime import TorchRuntime

# Calls this wide or wider are prefill chunks and go to torch. Verify calls (a draft of at most 32
# tokens and the bonus row) stay below it, on llama.cpp, with decode.
WIDE_ROWS = 48

# Loads torch sides in the background (runtimes/../load.py), one at a time.
LOADER = ThreadPoolExecutor(1, thread_name_prefix="pairline-prefill-load")


class SplitRuntime(RuntimeDefaults):
    """`wide` is the torch runtime, or a Future of it: while it loads (importing torch and mapping
    the weights take a second or two) wide calls run on llama.cpp, so a short first turn (the
    one-shot CLI's) never waits for it."""

    name = "split"
    interruptible = True  # both sides stop mid-call

    def __init__(self, llama: LlamaCppRuntime, wide: TorchRuntime | Future[TorchRuntime] | None):
        self.llama = llama
        self._wide, self._pending = (None, wide) if isinstance(wide, Future) else (wide, None)
        self.n_ctx = llama.n_ctx
        self.vocab_size = llama.vocab_size
        # the narrow calls are llama.cpp's: its declarations hold for speculation
        self.batch_invariant = llama.batch_invariant
        self.exact_rows = llama.exact_rows
        self.verify_slope_hint = llama.verify_slope_hint
        self.saves_state, self.state_id = llama.saves_state, llama.state_id
        self.kv_bytes = 2 * llama.kv_bytes  # torch's cache is f16 too, of the same positions
        self._n_past = 0

    @property
    def wide(self) -> TorchRuntime:
        """The torch side, waiting for it to load if it is still loading."""
        if self._wide is None:
            if self._pending is None:
                raise RuntimeError("this split runtime has no torch side (its load failed)")
            wide = self._pending.result()
            if wide.vocab_size > self.llama.vocab_size or wide.n_ctx < self.n_ctx:
                raise ValueError("llama.cpp and torch read different models")
            self._wide = wide
        return self._wide

    def wait_ready(self) -> None:
        """Block until the torch side has loaded (or failed to): for measurements of the steady state."""
        if self._pending is not None:
            wait([self._pending])
        self._wide_ready()

    def _wide_ready(self) -> TorchRuntime | None:
        """The torch side if it has loaded; None while it loads, or for good if its load failed
        (llama.cpp then serves every call, as it would alone)."""
        if self._wide is None and self._pending is not None and self._pending.done():
            try:
                return self.wide
            except Exception as err:  # noqa: BLE001 - any failure leaves llama.cpp serving alone
                from pairline.errors import notice

                notice(f"the torch prefill side did not load ({type(err).__name__}: {err}); llama.cpp prefills")
                self._pending = None
        return self._wide

    @property
    def cfg(self):
        return self.wide.cfg

    @property
    def n_past(self) -> int:
        return self._n_past

    def describe(self) -> dict:
        wide = self._wide_ready()
        return {**self.llama.describe(), "runtime": self.name,
                "prefill": wide.describe() if wide is not None else "torch, loading"}

    def forward(self, tokens: list[int], rows: Rows = "last", cancel: CancelToken | None = None) -> np.ndarray | None:
        n = len(tokens)
        check_forward(self._n_past, n, self.n_ctx)
        side = (self._wide_ready() if n >= WIDE_ROWS else None) or self.llama
        self._catch_up(side)
        logits = side.forward(tokens, rows, cancel=cancel)
        self._n_past += n
        return logits

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self._n_past:
            raise ValueError(f"cannot truncate {self._n_past} cached positions to {n}")
        for side in (self.llama, self._wide_ready()):
            if side is not None:
                side.truncate(min(side.n_past, n))
        self._n_past = n

    def fork(self) -> SplitRuntime:
        wide = self._wide_ready()
        if wide is None and self._pending is not None:  # still loading: the fork's torch side follows it
            return SplitRuntime(self.llama.fork(), LOADER.submit(lambda: self.wide.fork()))
        return SplitRuntime(self.llama.fork(), wide.fork() if wide is not None else None)

    # ------------------------------------------------------------ KV states (the prefix store)

    def save_state(self) -> bytes:
        self._catch_up(self.llama)
        return self.llama.save_state()

    def load_state(self, data: bytes, n_past: int) -> bool:
        wide = self._wide_ready()
        if wide is not None:
            wide.truncate(0)
        ok = self.llama.load_state(data, n_past)
        self._n_past = n_past if ok else 0
        return ok

    # ------------------------------------------------------------ the hand-off

    def _catch_up(self, side) -> None:
        """Copy the positions `side` lacks from the other side, which holds them: every position
        below n_past lives on at least one side, and one side always holds them all."""
        if side.n_past == self._n_past or self._wide is None:  # nothing to copy while torch has not served
            return
        if side is self.wide:
            self._llama_to_torch()
        else:
            self._torch_to_llama()

    def _llama_state(self) -> llamacpp_kv.SeqState:
        c = self.cfg
        kv = c.n_kv_heads * c.head_dim
        state = llamacpp_kv.parse(self.llama.save_state(), c.n_layers, kv, kv)
        order = np.argsort(state.positions, kind="stable")  # cells are in slot order, not position order
        if not np.array_equal(state.positions[order], np.arange(state.cells)):
            raise llamacpp_kv.KVFormatError("llama.cpp's cache does not hold positions 0..n-1")
        return llamacpp_kv.SeqState(state.positions[order], state.keys[:, order], state.values[:, order],
                                    state.v_trans)

    def _llama_to_torch(self) -> None:
        import torch  # here, not at the top: the split runtime loads torch in the background

        start, end = self.wide.n_past, self._n_past
        state = self._llama_state()
        c = self.cfg
        # [layers, cells, kv_heads * head_dim] -> [layers, kv_heads, cells, head_dim]
        k = torch.from_numpy(state.keys[:, start:end].copy()).view(c.n_layers, end - start, c.n_kv_heads, c.head_dim)
        v = torch.from_numpy(state.values[:, start:end].copy()).view(c.n_layers, end - start, c.n_kv_heads,
                                                                         c.head_dim)
        if self.cfg.arch == "llama":  # llama.cpp interleaves K's rotary halves (weights.py): pairs -> halves
            k = k.unflatten(-1, (c.head_dim // 2, 2)).transpose(-1, -2).flatten(-2)
        self.wide.write_kv(start, k.transpose(1, 2), v.transpose(1, 2))

    def _torch_to_llama(self) -> None:
        """torch holds every position (those llama.cpp computed came over as exact f16 copies), so
        llama.cpp's whole sequence is rebuilt from torch's cache in one blob."""
        import torch

        end = self._n_past
        k, v = self.wide.read_kv(0, end)  # [layers, kv_heads, n, head_dim]
        if self.cfg.arch == "llama":  # halves (i, i + D/2) -> llama.cpp's pairs (2i, 2i + 1)
            k = k.unflatten(-1, (2, self.cfg.head_dim // 2)).transpose(-1, -2).flatten(-2)
        k = k.transpose(1, 2).flatten(2).to(torch.float16).numpy()  # [layers, n, kv_heads * head_dim]
        v = v.transpose(1, 2).flatten(2).to(torch.float16).numpy()
        state = llamacpp_kv.SeqState(np.arange(end, dtype=np.int32), k, v, v_trans=not self.llama.flash_attn)
        if not self.llama.load_state(llamacpp_kv.build(state), end):
            raise RuntimeError(f"llama.cpp refused the KV of {end} positions handed over from torch")
