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
    name: str
    n_ctx: int  # positions the KV cache holds
    vocab_size: int
    # True when a k-token call gives each row exactly the logits of k single steps, which makes
    # greedy speculation token-identical to plain greedy decoding; False: close, not identical.
    batch_invariant: bool

    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        ...

    def forward(self, tokens: list[int], rows: Rows = "last") -> np.ndarray | None:
        """Evaluate `tokens` at positions n_past.. and append them to the cache.
        Returns float32 logits as a numpy array: [1, V] for "last", [len(tokens), V] for "all", None for
        "none". numpy, not torch, so the loop on the llama.cpp runtime never imports torch.

        A runtime that can stop inside a call sets `interruptible = True` and also takes
        `cancel=` (a CancelToken): once it is cancelled the call raises Interrupted soon, with the
        cache as it was before the call. Others finish the call; the loop checks between calls."""
        ...

    def truncate(self, n: int) -> None:
        """Keep the first n cached positions; later ones are forgotten."""
        ...

    def fork(self) -> Runtime:
        """Another runtime on the same weights with its own empty KV cache of n_ctx positions:
        one per server session, so sessions never overwrite each other's KV."""
        ...


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
