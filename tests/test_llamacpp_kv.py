"""llama.cpp's sequence-state blob (runtimes/llamacpp_kv.py) without llama.cpp: the layout round-trips
and anything else is refused loudly. The real blob is read in tests/test_split_runtime.py."""

from __future__ import annotations

import numpy as np
import pytest

from pairline.engine import guard
from pairline.engine.guard import Candidate
from pairline.engine.runtimes import llamacpp_kv


def _state(cells: int, v_trans: bool) -> llamacpp_kv.SeqState:
    rng = np.random.default_rng(cells)
    keys = rng.standard_normal((3, cells, 8)).astype(np.float16)
    values = rng.standard_normal((3, cells, 4)).astype(np.float16)
    return llamacpp_kv.SeqState(np.arange(cells, dtype=np.int32), keys, values, v_trans)


@pytest.mark.parametrize("v_trans", [True, False])
def test_the_blob_round_trips(v_trans):
    state = _state(5, v_trans)
    back = llamacpp_kv.parse(llamacpp_kv.build(state), 3, 8, 4)
    assert back.v_trans == v_trans and back.cells == 5
    np.testing.assert_array_equal(back.positions, state.positions)
    np.testing.assert_array_equal(back.keys, state.keys)
    np.testing.assert_array_equal(back.values, state.values)


def test_an_empty_sequence():
    assert llamacpp_kv.parse(llamacpp_kv.build(_state(0, True)), 3, 8, 4).cells == 0


@pytest.mark.parametrize("damage", ["magic", "layers", "width", "short", "long", "type"])
def test_other_layouts_are_refused(damage):
    blob = bytearray(llamacpp_kv.build(_state(4, True)))
    layers, k, v = 3, 8, 4
    if damage == "magic":
        blob[0] ^= 0xFF
    elif damage == "layers":
        layers = 2
    elif damage == "width":
        k = 16
    elif damage == "short":
        blob = blob[:-1]
    elif damage == "long":
        blob += b"\0"
    else:  # the first K type field, after magic, seq, streams, cells, 4 cells of 12 bytes, v_trans, layers
        blob[16 + 48 + 8] = 8  # q8_0
    with pytest.raises(llamacpp_kv.KVFormatError):
        llamacpp_kv.parse(bytes(blob), layers, k, v)


@pytest.mark.parametrize("flags, requested, one_shot, offered", [
    ("avx2 avx512f amx_bf16 amx_tile", None, False, True),
    ("avx2 avx512f avx512_bf16", None, False, True),
    ("avx2 avx512f", None, False, False),
    ("avx2 amx_bf16", "llamacpp", False, False),  # --runtime llamacpp means llama.cpp alone (no torch import)
    ("avx2 amx_bf16", None, True, False),  # `pairline edit`: loading torch costs more than it saves
])
def test_the_split_is_a_candidate_only_on_bf16_hardware(monkeypatch, tmp_path, flags, requested, one_shot, offered):
    from pairline.engine.load import candidates_for

    monkeypatch.setattr(guard, "cpu_description", lambda: {"model": "test", "machine": "x86_64", "flags": flags})
    monkeypatch.delenv("PAIRLINE_RUNTIME", raising=False)
    found = candidates_for("llamacpp", requested, tmp_path / "m.gguf", None, None, one_shot)
    assert (Candidate("llamacpp", repack=False, prefill="torch") in found) == offered
    assert found[:2] == [Candidate("llamacpp", repack=True), Candidate("llamacpp", repack=False)]
