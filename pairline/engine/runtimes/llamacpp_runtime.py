"""The llama.cpp runtime: llama.cpp's CPU kernels (through llama-cpp-python's low-level C API)
under pairline's Runtime contract, so the loop above it (speculation, predicted outputs, cancel,
sessions) is the same as on the torch runtime.

One llama_model holds the weights; each runtime is one llama_context (its own KV cache, sequence
0), so `fork()` is a new context on the same model."""

from __future__ import annotations

import collections
import ctypes
import threading
import time
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pairline.engine.runtime import (
    ContextFull,
    Interrupted,
    Rows,
    RuntimeDefaults,
    check_forward,
    cpu_threads,
    kv_cache_bytes,
)
from pairline.errors import PairlineError

if TYPE_CHECKING:
    from pairline.engine.generate import CancelToken

# The largest batch one llama_decode call takes; longer inputs are fed in pieces. Prefill chunks
# (256) and verify steps fit in one call.
MAX_BATCH = 512


def available() -> bool:
    """True when llama-cpp-python is installed and its shared library loads."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # a missing or broken build raises all sorts of errors at import
        return False
    return True


def _lib():
    try:
        import llama_cpp
    except Exception as err:
        raise PairlineError(
            f"the llamacpp runtime needs llama-cpp-python ({type(err).__name__}: {err}); "
            "install it (README.md) or use --runtime torch"
        ) from None
    _quiet_logs(llama_cpp)
    return llama_cpp


@cache
def _abort_callbacks(lib) -> tuple | None:
    """(poll, off) for llama_set_abort_callback. poll is libc's strlen as a ggml abort callback,
    `bool (*)(void *)`: over a CancelToken's flag ("" or "\x01") it returns 0 until the token is
    cancelled, then 1. off is the NULL callback. None where no C library with strlen is found."""
    try:
        try:
            libc = ctypes.CDLL(None)  # POSIX: the C library the process already has
        except TypeError:  # Windows has no CDLL(None)
            libc = ctypes.cdll.msvcrt
        poll = lib.ggml_abort_callback(ctypes.cast(libc.strlen, ctypes.c_void_p).value)
    except (AttributeError, OSError):
        return None
    return poll, lib.ggml_abort_callback()


_log_lock = threading.Lock()
_log_callback = None  # kept alive for as long as llama.cpp may call it
_errors: collections.deque[str] = collections.deque(maxlen=8)  # llama.cpp's latest error lines


def _llama_errors() -> str:
    lines = [line for line in _errors if line]
    _errors.clear()
    return f" (llama.cpp: {' | '.join(lines[-3:])})" if lines else ""


def _quiet_logs(llama_cpp) -> None:
    """llama.cpp prints pages of load information to stderr, and some GGUFs make it log harmless
    "errors" (Qwen2.5's files: a token type). Keep its error lines, quietly, and show them only
    when a load or a call fails (`_llama_errors`)."""
    global _log_callback
    with _log_lock:
        if _log_callback is not None:
            return

        @llama_cpp.llama_log_callback
        def on_log(level: int, text: bytes, user_data) -> None:
            if level == 3:  # GGML_LOG_LEVEL_ERROR
                _errors.append(text.decode("utf-8", "replace").strip())

        _log_callback = on_log
        llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()


class ThreadTuner:
    """How many threads a decode step should use, measured rather than assumed. On a quiet machine
    all cores are fastest; when other work competes for them, every thread must be scheduled at
    each of the step's barriers, and a 2-thread step on a busy 2-core machine was measured 2-30x
    slower than a 1-thread step (docs/benchmarks.md). So single-token steps are timed per thread
    count and the fastest serves. The others are re-probed one step at a time, at intervals that
    double while probes keep losing, so a bad probe costs little."""

    def __init__(self, counts: list[int], first_probe: int = 2, max_interval: int = 2048, smoothing: float = 0.3):
        self.counts = counts  # best guess first
        self.first_probe, self.max_interval, self.smoothing = first_probe, max_interval, smoothing
        self.seconds: dict[int, float] = {}
        self.steps = 0
        self.interval = first_probe
        self.next_probe = first_probe
        self.probes = 0
        self._best = counts[0]
        self.calibrated = len(counts) < 2

    def best(self) -> int:
        return self._best

    def choose(self) -> int:
        others = [c for c in self.counts if c != self._best]
        if not others or self.steps < self.next_probe:
            return self._best
        unmeasured = [c for c in others if c not in self.seconds]
        return unmeasured[0] if unmeasured else others[self.probes % len(others)]

    def calibrate(self, seconds: dict[int, float], next_probe: int = 16) -> None:
        """Start from measured step times (the fastest of a few per count) instead of a guess."""
        self.calibrated = True
        self.seconds.update(seconds)
        self._best = min(self.seconds, key=self.seconds.get)
        self.interval = next_probe
        self.next_probe = self.steps + next_probe

    def record(self, count: int, seconds: float) -> None:
        self.steps += 1
        if count == self._best:
            old = self.seconds.get(count)
            self.seconds[count] = seconds if old is None else old + self.smoothing * (seconds - old)
            return
        self.seconds[count] = seconds  # a probe: its last figure is stale, this one is news
        self.probes += 1
        best = min(self.seconds, key=self.seconds.get)
        if best != self._best:  # the machine changed: serve the winner, probe again soon
            self._best, self.interval = best, self.first_probe
        else:
            self.interval = min(self.interval * 2, self.max_interval)
        self.next_probe = self.steps + self.interval


class _Model:
    """A loaded GGUF, shared by every context made from it; freed when the last one goes."""

    def __init__(self, path: Path, repack: bool):
        self.lib = _lib()
        params = self.lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_mmap = True
        params.use_extra_bufts = repack
        self.repack = repack
        self.ptr = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise PairlineError(f"llama.cpp could not load {path}: not a GGUF it supports?{_llama_errors()}")
        vocab = self.lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(vocab))
        self.n_ctx_train = int(self.lib.llama_model_n_ctx_train(self.ptr))
        self.tuner: ThreadTuner | None = None  # made by the first context: forks share the cores and what was measured

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.llama_model_free(self.ptr)
            self.ptr = None


class LlamaCppRuntime(RuntimeDefaults):
    """llama.cpp's kernels are not batch-invariant: a k-token verify call gives its rows slightly
    other logits than k single steps (up to ~1 logit on SmolLM2), because single steps take other
    code paths (flash attention splits a lone query's keys across threads past 512 positions;
    repacked K-quant weights use a gemv for one row and a gemm for several; llamafile's sgemm
    serves n >= 2). Greedy speculation here is exact with respect to the verify path, and may
    part from plain greedy decoding where two tokens nearly tie; tests/test_llamacpp.py bounds it.
    Building without those paths was measured and still not invariant (docs/engine.md).

    Flash attention is off by default (as in llama-cpp-python's `Llama`): on this AVX2 CPU at 1500
    positions it made a decode step 34 ms instead of 29-32 and a 17-token verify 386-421 ms instead
    of 254-341 (Qwen2.5-Coder-0.5B, 2 threads)."""

    name = "llamacpp"
    batch_invariant = False
    interruptible = True  # forward(cancel=...) stops mid-call (_watch)
    verify_slope_hint = 0.35  # until measured: 12-token verify ~4.4x a step (shared/cpu-measurements.md)
    saves_state = True  # llama.cpp serialises a sequence's KV (the prefix store)

    def __init__(
        self,
        path: str | Path,
        n_ctx: int | None = None,
        threads: int | None = None,
        *,
        flash_attn: bool = False,
        repack: bool | None = None,
        _model: _Model | None = None,
    ):
        if _model is None and repack is None:  # as checked in a child on this machine (engine/guard.py)
            from pairline.engine.guard import preferred_repack

            repack = preferred_repack(Path(path))
        self.model = _model or _Model(Path(path), bool(repack))
        self.flash_attn = flash_attn
        self.repack = self.model.repack  # llama.cpp's extra buffer types (CPU_REPACK; AMX where built)
        self.path = Path(path)
        lib = self.lib = self.model.lib
        self.vocab_size = self.model.n_vocab
        self.n_ctx = min(n_ctx or self.model.n_ctx_train, self.model.n_ctx_train)
        self.threads = threads or cpu_threads()
        self._applied_threads = self.threads
        params = lib.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = MAX_BATCH
        params.n_ubatch = MAX_BATCH
        params.n_seq_max = 1
        params.n_threads = self.threads
        params.n_threads_batch = self.threads
        params.no_perf = True
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lib.llama_init_from_model(self.model.ptr, params)
        if not self.ctx:
            raise PairlineError(
                f"llama.cpp could not make a context of {self.n_ctx} positions: out of memory?{_llama_errors()}"
            )
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(MAX_BATCH, 0, 1)
        self._n_past = 0
        if self.model.tuner is None:
            self.model.tuner = ThreadTuner(sorted({self.threads, max(1, self.threads // 2), 1}, reverse=True))
        self.tuner = self.model.tuner

    def _calibrate(self, rounds: int = 2) -> None:
        """Time one-token steps at each thread count before the first call, so a prefill or a
        verify call on a busy machine (they use the winner and are not timed) is right from the
        start: with one of two cores busy, the main job's 144-token prefill took 2.4-2.9 s on 2
        threads and 1.3-1.5 s on 1. Done at the first call rather than at load, when the tokenizer
        is no longer being built on the other core; at the end of the cache, which it leaves as it was."""
        base = self._n_past
        times: dict[int, list[float]] = {c: [] for c in sorted(self.tuner.counts)}  # the cheap count first
        for _ in range(rounds):
            for count in times:
                t0 = time.perf_counter()
                self._decode([0], "last", threads=count)
                times[count].append(time.perf_counter() - t0)
                self.truncate(base)
            best = sorted(min(t) for t in times.values())
            if len(best) < 2 or best[1] > 1.5 * best[0]:  # a clear winner: one round is enough
                break
        self.tuner.calibrate({c: min(t) for c, t in times.items()})

    def __del__(self) -> None:
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "batch", None) is not None:
            lib.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            lib.llama_free(self.ctx)
            self.ctx = None

    @property
    def n_past(self) -> int:
        return self._n_past

    def forward(self, tokens: list[int], rows: Rows = "last", cancel: CancelToken | None = None) -> np.ndarray | None:
        n = len(tokens)
        check_forward(self._n_past, n, self.n_ctx)
        if any(not 0 <= t < self.vocab_size for t in tokens):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        before = self._n_past
        out = []
        watching = cancel is not None and self._watch(cancel)
        try:
            for start in range(0, n, MAX_BATCH):
                piece = tokens[start : start + MAX_BATCH]
                last_piece = start + len(piece) == n
                want = "all" if rows == "all" else ("last" if rows == "last" and last_piece else "none")
                logits = self._decode(piece, want)
                if logits is not None:
                    out.append(logits)
        except Interrupted:
            self.truncate(before)  # pieces that finished before the one stopped go too
            raise
        finally:
            if watching:
                self._watch(None)
        return np.concatenate(out) if len(out) > 1 else (out[0] if out else None)

    def _watch(self, cancel: CancelToken | None) -> bool:
        """Have ggml poll `cancel` after every graph node, so a cancel stops a long prefill chunk
        within milliseconds instead of at its end (a 256-token chunk of the 1.5B model takes
        seconds on a laptop CPU). The poll is libc's strlen over the token's flag byte, not a Python
        callback: ggml calls it from its worker thread hundreds of times per call, and a Python
        callback would need the GIL each time, waiting on whichever thread holds it. `None` stops
        the polling. False where libc offers no strlen: calls then run to their end."""
        callbacks = _abort_callbacks(self.lib)
        if callbacks is None:
            return False
        poll, off = callbacks
        if cancel is None:
            self.lib.llama_set_abort_callback(self.ctx, off, None)
        else:
            self.lib.llama_set_abort_callback(self.ctx, poll, ctypes.addressof(cancel.flag))
        return True

    def _decode(self, tokens: list[int], rows: Rows, threads: int | None = None) -> np.ndarray | None:
        if threads is None and not self.tuner.calibrated:
            self._calibrate()  # before the batch is filled: calibration uses it too
        b, n, base = self.batch, len(tokens), self._n_past
        b.n_tokens = n
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = base + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = rows == "all"
        if rows == "last":
            b.logits[n - 1] = 1
        timed = threads is None and n == 1
        if threads is None:
            threads = self.tuner.best() if n > 1 else self.tuner.choose()
        if threads != self._applied_threads:
            self.lib.llama_set_n_threads(self.ctx, threads, threads)
            self._applied_threads = threads
        t0 = time.perf_counter()
        status = self.lib.llama_decode(self.ctx, b)
        if timed:
            self.tuner.record(threads, time.perf_counter() - t0)
        if status != 0:
            # a failed call may leave some of its positions in the cache: drop them
            self.lib.llama_memory_seq_rm(self.memory, 0, base, -1)
            if status == 2:  # the abort callback: the cancel token was set
                raise Interrupted(f"cancelled during a {n}-token call at position {base}")
            if status == 1:
                raise ContextFull(f"llama.cpp found no KV slot for {n} tokens at position {base}")
            raise RuntimeError(f"llama_decode failed with status {status}{_llama_errors()}")
        self._n_past = base + n
        if rows == "none":
            return None
        n_out = n if rows == "all" else 1
        ptr = self.lib.llama_get_logits(self.ctx)
        logits = np.ctypeslib.as_array(ptr, shape=(n_out, self.vocab_size))
        return logits.copy()  # the buffer belongs to the next call

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self._n_past:
            raise ValueError(f"cannot truncate {self._n_past} cached positions to {n}")
        if n < self._n_past:
            self.lib.llama_memory_seq_rm(self.memory, 0, n, -1)
        self._n_past = n

    @cached_property
    def kv_bytes(self) -> int:
        """The KV cache's size from the GGUF's shapes; llama.cpp keeps it in f16."""
        from pairline.engine.tokenizer import read_gguf_metadata

        try:
            md = read_gguf_metadata(self.path)
            arch = md["general.architecture"]
            heads = int(md[f"{arch}.attention.head_count"])
            kv_heads = int(md.get(f"{arch}.attention.head_count_kv", heads))
            head_dim = int(md.get(f"{arch}.attention.key_length") or int(md[f"{arch}.embedding_length"]) // heads)
            return kv_cache_bytes(int(md[f"{arch}.block_count"]), kv_heads, head_dim, self.n_ctx, 2)
        except (KeyError, ValueError, OSError, PairlineError):
            return 0

    def describe(self) -> dict:
        return {"runtime": self.name, "quant": "gguf", "dtype": None, "threads": self.threads}

    # ------------------------------------------------------------ KV states (the prefix store)

    @property
    def state_id(self) -> str:
        """What a saved state depends on besides the model file: the library that wrote it."""
        import llama_cpp

        return f"llamacpp-{llama_cpp.__version__}"

    def save_state(self) -> bytes:
        """The KV of every cached position, as llama.cpp serialises a sequence."""
        size = self.lib.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = self.lib.llama_state_seq_get_data(self.ctx, buf, size, 0)
        return bytes(buf[:n])

    def load_state(self, data: bytes, n_past: int) -> bool:
        """Replace the cache with a saved state of `n_past` positions; False (cache empty) when
        llama.cpp refuses it or it does not hold exactly that many positions."""
        self.truncate(0)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self.lib.llama_state_seq_set_data(self.ctx, buf, len(data), 0) != len(data) or \
                self.lib.llama_memory_seq_pos_max(self.memory, 0) != n_past - 1:
            self.lib.llama_memory_seq_rm(self.memory, 0, 0, -1)
            return False
        self._n_past = n_past
        return True

    def fork(self) -> LlamaCppRuntime:
        return LlamaCppRuntime(self.path, self.n_ctx, self.threads, flash_attn=self.flash_attn, _model=self.model)
