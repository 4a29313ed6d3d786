"""The contract between pairline's generation loop and a runtime that evaluates a model.

A runtime owns one model and one static KV cache of `n_ctx` positions. The loop only ever
appends tokens at the end of what is cached (`n_past`) and rolls back with `truncate`."""

from __future__ import annotations

import os
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from pairline.errors import PairlineError

Rows = Literal["none", "last", "all"]


@runtime_checkable
class Runtime(Protocol):
    """What the loop needs of a runtime, capabilities included: a runtime declares each one as a
    field (RuntimeDefaults holds the defaults), so nothing probes for them with getattr."""

    name: str
    n_ctx: int  # positions the KV cache holds
    vocab_size: int
    # True when a k-token call gives each row exactly the logits of k single steps, which makes
    # greedy speculation token-identical to plain greedy decoding; False: close, not identical.
    batch_invariant: bool
    # The widest call whose rows are exact (drafts of at most exact_rows - 1 tokens); 0: any width.
    exact_rows: int
    # forward() takes `cancel=` (a CancelToken) and stops inside a call once it is set.
    interruptible: bool
    # A first guess at what each extra row of a verify call costs, as a fraction of a one-token
    # step; the loop's StepCosts replaces it with measurements as it runs.
    verify_slope_hint: float
    # save_state / load_state work (the prefix store keeps a system prompt's KV on disk); a saved
    # state is valid only for the same model file and the same `state_id` (the library that wrote it).
    saves_state: bool
    state_id: str
    # argmax() returns greedy ids without shipping full-vocabulary logits to the host.
    has_argmax: bool

    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        ...

    @property
    def kv_bytes(self) -> int:
        """Bytes of this runtime's KV cache (K and V, every layer, n_ctx positions); 0 if unknown."""
        ...

    def forward(self, tokens: list[int], rows: Rows = "last") -> np.ndarray | None:
        """Evaluate `tokens` at positions n_past.. and append them to the cache.
        Returns float32 logits as a numpy array: [1, V] for "last", [len(tokens), V] for "all", None for
        "none". numpy, not torch, so the loop on the llama.cpp runtime never imports torch.

        An `interruptible` runtime also takes `cancel=` (a CancelToken): once it is cancelled the
        call raises Interrupted soon, with the cache as it was before the call. Others finish the
        call; the loop checks between calls."""
        ...

    def argmax(self, tokens: list[int], rows: Rows = "last") -> np.ndarray:
        """As forward, but the greedy token ids (int64): [1] for "last", [len(tokens)] for "all".
        Only where `has_argmax`."""
        ...

    def truncate(self, n: int) -> None:
        """Keep the first n cached positions; later ones are forgotten."""
        ...

    def fork(self) -> Runtime:
        """Another runtime on the same weights with its own empty KV cache of n_ctx positions:
        one per server session, so sessions never overwrite each other's KV."""
        ...

    def save_state(self) -> bytes:
        """The KV of every cached position, serialised. Only where `saves_state`."""
        ...

    def load_state(self, data: bytes, n_past: int) -> bool:
        """Replace the cache with a saved state of `n_past` positions; False (cache empty) if it
        does not fit. Only where `saves_state`."""
        ...

    def describe(self) -> dict:
        """What a benchmark records of this runtime: name, quantization, dtype, threads."""
        ...


class RuntimeDefaults:
    """The contract's defaults, for a runtime that lacks a capability: inherit it and declare
    only what differs."""

    batch_invariant = False
    exact_rows = 0
    interruptible = False
    verify_slope_hint = 0.35
    saves_state = False
    state_id = ""
    has_argmax = False
    kv_bytes = 0

    def argmax(self, tokens: list[int], rows: Rows = "last") -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no argmax; check has_argmax")

    def save_state(self) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} does not save states; check saves_state")

    def load_state(self, data: bytes, n_past: int) -> bool:
        raise NotImplementedError(f"{type(self).__name__} does not load states; check saves_state")

    def describe(self) -> dict:
        return {"runtime": self.name, "quant": None, "dtype": None, "threads": None}


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, n_ctx: int, itemsize: int) -> int:
    """K and V for every layer and position."""
    return 2 * n_layers * n_kv_heads * head_dim * n_ctx * itemsize


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share (what a KV cache of `a` can keep for `b`)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ContextFull(Exception):
    """The request does not fit in the runtime's KV cache."""


class Interrupted(Exception):
    """forward() stopped because its cancel token was set; the cache is as it was before the call."""


def check_forward(n_past: int, n: int, n_ctx: int) -> None:
    """What every runtime's forward checks before touching its cache: a refused call changes nothing."""
    if n == 0:
        raise ValueError("forward needs at least one token")
    if n_past + n > n_ctx:
        raise ContextFull(f"{n_past + n} positions needed, the KV cache holds {n_ctx}")


def cpu_threads() -> int:
    """All cores unless PAIRLINE_THREADS says otherwise (on a busy 2-core machine, 1 is steadier)."""
    want = os.environ.get("PAIRLINE_THREADS", "")
    if want:
        try:
            return max(1, int(want))
        except ValueError:
            raise PairlineError(f"PAIRLINE_THREADS must be a number, got {want!r}") from None
    return os.cpu_count() or 1


def threads_beside_a_browser() -> int:
    """The engine's threads when the user's browser runs on the same machine (`pairline app`): all
    cores but one. llama.cpp's threads meet at a barrier every step, so one that loses its core to
    the browser stalls them all: on a 2-core machine the server's TTFT for a cached prompt went from
    ~45 ms to 200-300 ms whenever the page handled a keystroke (docs/benchmarks.md, issue 16)."""
    return max(1, (os.cpu_count() or 1) - 1)
