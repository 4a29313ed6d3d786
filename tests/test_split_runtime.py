"""The split runtime (torch prefill, llama.cpp decode) and llama.cpp's state blob, on real weights:
SmolLM2 is a llama-arch model (llama.cpp interleaves its rotary K dims), Qwen2.5 a NEOX one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pairline.engine.runtimes import llamacpp_kv, llamacpp_runtime

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not llamacpp_runtime.available(), reason="llama-cpp-python is not installed"),
]

IDS = [(i * 7919) % 4000 + 3 for i in range(300)]


def _split(path, n_ctx: int = 512):
    from pairline.engine.load import build_llamacpp_runtime

    return build_llamacpp_runtime(path, n_ctx, repack=False, prefill="torch")


def _llama(path, n_ctx: int = 512):
    return llamacpp_runtime.LlamaCppRuntime(path, n_ctx=n_ctx, repack=False)


@pytest.fixture(scope="module", params=["smollm2_gguf", "qwen05_gguf"])
def gguf(request):
    return request.getfixturevalue(request.param)


def test_state_blob_round_trips_byte_for_byte(smollm2_gguf):
    rt = _llama(smollm2_gguf)
    rt.forward(IDS[:40], "none")
    blob = rt.save_state()
    state = llamacpp_kv.parse(blob, 30, 192, 192)  # SmolLM2-135M: 30 layers, 3 KV heads of 64
    assert state.cells == 40 and list(state.positions) == list(range(40))
    assert state.v_trans  # flash attention is off: llama.cpp stores V transposed
    assert np.isfinite(state.keys.astype(np.float32)).all() and state.keys.any()
    assert llamacpp_kv.build(state) == blob
    with pytest.raises(llamacpp_kv.KVFormatError):
        llamacpp_kv.parse(blob, 29, 192, 192)
    with pytest.raises(llamacpp_kv.KVFormatError):
        llamacpp_kv.parse(blob[:-2], 30, 192, 192)


def test_kv_crosses_to_torch_and_back_exactly(gguf):
    """llama.cpp's K/V, copied into torch's f16 cache (rotary dims reordered for the llama arch) and
    rebuilt from there, is llama.cpp's own state again, bit for bit."""
    rt = _split(gguf)
    rt.forward(IDS[:30], "none")  # narrow: llama.cpp computes these
    before = rt.llama.save_state()
    rt._llama_to_torch()
    assert rt.wide.n_past == 30
    rt.llama.truncate(0)
    rt._torch_to_llama()
    assert rt.llama.save_state() == before


def test_torch_prefill_hands_llamacpp_a_kv_it_decodes_from(gguf):
    """A wide prompt prefilled on torch, then decoded on llama.cpp, gives the next tokens a plain
    llama.cpp run gives (the prefill's numerics differ a little: bf16 weights against Q4 kernels,
    so the logits are compared for closeness and the greedy choice, not bits). A wrong hand-off
    (a rotary order or a V layout mixed up) puts the logits far off."""
    split, plain = _split(gguf), _llama(gguf)
    prompt, follow = IDS[:200], IDS[200:206]
    assert split.forward(prompt, "none") is None
    assert split.wide.n_past == 200 and split.llama.n_past == 0
    got = split.forward(follow, "all")  # a verify-shaped call: llama.cpp, after the hand-off
    assert split.llama.n_past == 206 and split.n_past == 206
    plain.forward(prompt, "none")
    want = plain.forward(follow, "all")
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 5 / 6
    corr = [np.corrcoef(g, w)[0, 1] for g, w in zip(got, want, strict=True)]
    assert min(corr) > 0.97, corr


def test_turns_alternate_sides_and_truncate(gguf):
    """A session's life: a wide prompt, decode steps, a rollback, a second wide turn that needs
    what llama.cpp decoded, and decode again; the logits stay those of plain llama.cpp (close)."""
    split, plain = _split(gguf), _llama(gguf)
    calls = [(IDS[:100], "none"), (IDS[100:101], "last"), (IDS[101:105], "all"), ("truncate", 102),
             (IDS[102:180], "none"), (IDS[180:182], "all")]
    for tokens, rows in calls:
        if tokens == "truncate":
            split.truncate(rows)
            plain.truncate(rows)
            continue
        got, want = split.forward(tokens, rows), plain.forward(tokens, rows)
        assert split.n_past == plain.n_past
        if rows != "none":
            assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.5
            assert min(np.corrcoef(g, w)[0, 1] for g, w in zip(got, want, strict=True)) > 0.97


def test_forks_have_their_own_caches(smollm2_gguf):
    a = _split(smollm2_gguf)
    b = a.fork()
    a.forward(IDS[:60], "none")
    assert b.n_past == 0 and b.wide.n_past == 0
    assert b.wide.model.layers[0].attention.kv_cache.k.dtype == torch.float16
    first = a.forward(IDS[60:61], "last")
    b.forward(IDS[:60], "none")
    np.testing.assert_array_equal(first, b.forward(IDS[60:61], "last"))


def test_state_saves_and_restores_through_llamacpp(smollm2_gguf):
    a = _split(smollm2_gguf)
    a.forward(IDS[:80], "none")  # on torch: saving hands it to llama.cpp first
    blob = a.save_state()
    b = _split(smollm2_gguf)
    assert b.load_state(blob, 80) and b.n_past == 80
    np.testing.assert_array_equal(a.forward(IDS[80:81], "last"), b.forward(IDS[80:81], "last"))
    # and a wide call after a restore fetches the restored KV into torch
    b.forward(IDS[81:140], "none")
    assert b.wide.n_past == 140


def _torch_side(path):
    from pairline.engine.load import build_torch_runtime

    return build_torch_runtime(path, 512, "bf16", "cpu", "none", kv_dtype=torch.float16, prefill_only=True)


def test_llamacpp_serves_until_the_torch_side_has_loaded(smollm2_gguf):
    """load_engine loads the torch side in the background: wide calls run on llama.cpp until it is
    ready, then on torch, which first fetches what llama.cpp computed. A fork made while it loads
    gets its own torch side once the load is done."""
    from concurrent.futures import Future

    from pairline.engine.runtimes.split_runtime import SplitRuntime

    pending: Future = Future()
    split, plain = SplitRuntime(_llama(smollm2_gguf), pending), _llama(smollm2_gguf)
    assert split.forward(IDS[:60], "none") is None
    assert split.llama.n_past == 60 and split.describe()["prefill"] == "torch, loading"
    forked = split.fork()
    pending.set_result(_torch_side(smollm2_gguf))
    split.forward(IDS[60:120], "none")
    assert split.wide.n_past == 120 and split.llama.n_past == 60
    got = split.forward(IDS[120:121], "last")
    plain.forward(IDS[:120], "none")
    want = plain.forward(IDS[120:121], "last")
    # close, not equal: the torch side's bf16 prefill is not llama.cpp's Q4_K one, so two tokens whose
    # logits are tenths apart can swap places (seen on an AVX2-only EPYC: 21.32 against 21.07)
    assert want.argmax() in np.argsort(got[0])[-3:] and np.corrcoef(got[0], want[0])[0, 1] > 0.97
    assert forked.wide is not split.wide and forked.wide.n_past == 0


def test_a_torch_side_that_fails_to_load_leaves_llamacpp_serving(smollm2_gguf, capsys):
    from concurrent.futures import Future

    from pairline.engine.runtimes.split_runtime import SplitRuntime

    pending: Future = Future()
    pending.set_exception(MemoryError("no room for the bf16 weights"))
    split = SplitRuntime(_llama(smollm2_gguf), pending)
    split.forward(IDS[:60], "none")
    assert split.llama.n_past == 60 and split.n_past == 60
    assert "did not load" in capsys.readouterr().err
    other = split.fork()
    other.forward(IDS[:70], "none")
    assert other.llama.n_past == 70
