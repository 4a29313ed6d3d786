"""Runtimes for the crash-guard tests, built in the guard's child process (tests/test_guard.py).
They fail as native code fails: a real NULL dereference, not an exception that pretends to be one."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from pairline.engine.runtime import RuntimeDefaults


class TinyRuntime(RuntimeDefaults):
    """Finite logits from a fixed table: the configuration that passes."""

    name = "tiny"
    vocab_size = 32
    n_ctx = 4096

    def __init__(self, poison: bool = False):
        self.poison = poison
        self._n_past = 0

    @property
    def n_past(self) -> int:
        return self._n_past

    def forward(self, tokens: list[int], rows: str = "last", cancel=None) -> np.ndarray | None:
        self._n_past += len(tokens)
        n = len(tokens) if rows == "all" else 1
        out = np.tile(np.arange(self.vocab_size, dtype=np.float32), (n, 1))
        if self.poison:
            out[0, 3] = np.nan
        return None if rows == "none" else out

    def truncate(self, n: int) -> None:
        self._n_past = n


def segfaulting(path: Path, options: dict, n_ctx: int):
    """Loads, then faults at the first call, as llama.cpp's AMX repack did."""
    runtime = TinyRuntime()

    def forward(tokens, rows="last", cancel=None):
        return ctypes.string_at(0)  # reads address 0: SIGSEGV

    runtime.forward = forward
    return runtime


def poisoned(path: Path, options: dict, n_ctx: int):
    return TinyRuntime(poison=True)


def healthy(path: Path, options: dict, n_ctx: int):
    return TinyRuntime()


def aborting(path: Path, options: dict, n_ctx: int):
    import os

    os.abort()  # SIGABRT at load, as a failed GGML_ASSERT ends
