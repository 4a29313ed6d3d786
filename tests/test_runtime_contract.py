"""The Runtime contract. Every runtime must pass these; add a runtime to RUNTIMES to enroll it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pairline.engine.generate import CancelToken
from pairline.engine.runtime import ContextFull, Interrupted, Runtime
from pairline.engine.runtimes.torch_runtime import TorchRuntime

from .engine_helpers import random_state, tiny_config


def _torch_tiny(quant: str, n_ctx: int = 64):
    cfg = tiny_config("qwen2", vocab=512)
    return TorchRuntime(cfg, random_state(cfg), n_ctx=n_ctx, dtype=torch.bfloat16, quant=quant)


def _torch_smollm2(quant: str, n_ctx: int = 64):
    from pairline.engine.load import load_state
    from pairline.models.fetch import pull

    cfg, state = load_state(pull("smollm2-135m", progress=False), torch.bfloat16)
    return TorchRuntime(cfg, state, n_ctx=n_ctx, dtype=torch.bfloat16, quant=quant)


def _llamacpp_smollm2(n_ctx: int = 64):
    from pairline.engine.runtimes.llamacpp_runtime import LlamaCppRuntime, available
    from pairline.models.fetch import pull

    if not available():
        pytest.skip("llama-cpp-python is not installed")
    return LlamaCppRuntime(pull("smollm2-135m", progress=False), n_ctx=n_ctx)


def _split_smollm2(n_ctx: int = 64):
    """llama.cpp decoding, torch prefilling calls of WIDE_ROWS+ tokens (runtimes/split_runtime.py)."""
    from pairline.engine.load import build_llamacpp_runtime
    from pairline.engine.runtimes.llamacpp_runtime import available
    from pairline.models.fetch import pull

    if not available():
        pytest.skip("llama-cpp-python is not installed")
    return build_llamacpp_runtime(pull("smollm2-135m", progress=False), n_ctx, repack=False, prefill="torch")


RUNTIMES = [
    pytest.param(lambda **kw: _torch_tiny("none", **kw), id="torch-tiny-bf16"),
    pytest.param(lambda **kw: _torch_tiny("int8", **kw), id="torch-tiny-int8"),
    pytest.param(lambda **kw: _torch_smollm2("none", **kw), id="torch-smollm2-bf16", marks=pytest.mark.slow),
    pytest.param(lambda **kw: _torch_smollm2("int8", **kw), id="torch-smollm2-int8", marks=pytest.mark.slow),
    pytest.param(_llamacpp_smollm2, id="llamacpp-smollm2", marks=pytest.mark.slow),
    pytest.param(_split_smollm2, id="split-smollm2", marks=pytest.mark.slow),
]

TOKENS = [5, 17, 300, 42, 7, 99, 256, 3, 11, 64, 128, 200]


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> Runtime:
    return request.param()


@pytest.fixture(params=RUNTIMES)
def long_runtime(request) -> Runtime:
    return request.param(n_ctx=1024)


def test_verify_rows_at_long_context(long_runtime):
    """As below, past 512 cached positions, where some kernels change their path."""
    ids = [(i * 7919) % 250 + 3 for i in range(617)]
    _check_verify_rows(long_runtime, ids[:600], ids[600:])


def test_an_interrupted_call_leaves_the_cache_as_it_was(runtime):
    if not getattr(runtime, "interruptible", False):
        pytest.skip(f"{runtime.name} finishes its calls; the loop cancels between them")
    runtime.forward(TOKENS[:4], "none")
    stopped = CancelToken()
    stopped.cancel()
    with pytest.raises(Interrupted):
        runtime.forward(TOKENS[4:], "all", cancel=stopped)
    assert runtime.n_past == 4
    after = runtime.forward(TOKENS[4:], "all", cancel=CancelToken())  # a live token does not stop it
    runtime.truncate(4)
    np.testing.assert_allclose(after, runtime.forward(TOKENS[4:], "all"), atol=1e-3)


def test_is_a_runtime(runtime):
    assert isinstance(runtime, Runtime)
    assert runtime.n_past == 0 and runtime.n_ctx == 64 and runtime.vocab_size > 0


def test_rows_and_shapes(runtime):
    assert runtime.forward(TOKENS[:4], "none") is None
    assert runtime.n_past == 4
    last = runtime.forward(TOKENS[4:6], "last")
    assert last.shape == (1, runtime.vocab_size) and last.dtype == np.float32
    every = runtime.forward(TOKENS[6:9], "all")
    assert every.shape == (3, runtime.vocab_size)
    assert runtime.n_past == 9


def test_truncate_rolls_back_exactly(runtime):
    runtime.forward(TOKENS[:6], "none")
    first = runtime.forward(TOKENS[6:9], "all")
    runtime.truncate(6)
    runtime.forward([1, 2, 3, 4], "all")  # overwrite the rolled-back positions with other tokens
    runtime.truncate(6)
    again = runtime.forward(TOKENS[6:9], "all")
    assert np.array_equal(first, again)
    with pytest.raises(ValueError):
        runtime.truncate(runtime.n_past + 1)


def test_chunked_equals_whole(runtime):
    whole = runtime.forward(TOKENS, "last")
    runtime.truncate(0)
    for i in range(0, len(TOKENS), 5):
        out = runtime.forward(TOKENS[i : i + 5], "last")
    np.testing.assert_allclose(out, whole, atol=2e-2, rtol=0)


def test_verify_rows_equal_decode_steps(runtime):
    """What makes greedy speculation lossless: a k-token forward gives each row the same logits,
    bit for bit, as k one-token steps."""
    _check_verify_rows(runtime, TOKENS[:5], TOKENS[5:10])


def _check_verify_rows(runtime: Runtime, context: list[int], drafts: list[int]) -> None:
    runtime.forward(context, "none")
    batched = runtime.forward(drafts, "all")
    runtime.truncate(len(context))
    stepped = np.concatenate([runtime.forward([t], "last") for t in drafts])
    if runtime.batch_invariant:
        assert np.array_equal(batched, stepped)
    else:
        _assert_near_tie_only(batched, stepped)


def _assert_near_tie_only(batched: np.ndarray, stepped: np.ndarray, margin: float = 1.0) -> None:
    """A runtime that says it is not batch-invariant still computes the same function: rows close,
    and the greedy choice the same wherever it is clear (top-2 margin >= `margin` logits)."""
    assert np.abs(batched - stepped).max() < margin
    top2 = -np.sort(-stepped, axis=-1)[:, :2]
    clear = (top2[:, 0] - top2[:, 1]) >= margin
    assert np.array_equal(batched.argmax(-1)[clear], stepped.argmax(-1)[clear])


def test_context_full(runtime):
    runtime.forward(list(range(1, 61)), "none")
    with pytest.raises(ContextFull):
        runtime.forward([1] * 5, "last")
    assert runtime.n_past == 60  # a refused call leaves the cache as it was
    runtime.forward([1] * 4, "last")
    assert runtime.n_past == 64


def test_fork_has_its_own_kv(runtime):
    """A fork shares the weights, not the cache: each session keeps its KV while others run."""
    expect = runtime.forward(TOKENS[:8], "last")
    other = runtime.fork()
    assert other.n_past == 0 and other.n_ctx == runtime.n_ctx
    other.forward([9, 8, 7, 6, 5, 4, 3, 2, 1], "none")
    runtime.truncate(7)
    assert np.array_equal(runtime.forward(TOKENS[7:8], "last"), expect)  # untouched by the fork's work
    other.truncate(0)
    assert np.array_equal(other.forward(TOKENS[:8], "last"), expect)
