"""The on-disk KV of shared prompt prefixes (system prompts): a new process restores instead of prefilling."""

from __future__ import annotations

import pytest

from pairline.engine.load import load_engine
from pairline.engine.prefix_store import PrefixStore
from pairline.engine.runtimes import llamacpp_runtime
from pairline.engine.sampling import SamplingParams


def test_store_round_trip_and_refusals(tmp_path):
    store = PrefixStore(tmp_path / "kv")
    assert store.load([1, 2, 3]) is None
    store.save([1, 2, 3], b"state bytes")
    assert store.load([1, 2, 3]) == b"state bytes"
    assert store.load([1, 2, 4]) is None  # another prefix
    path = next((tmp_path / "kv").glob("*.kv"))
    path.write_bytes(b"garbage")
    assert store.load([1, 2, 3]) is None  # a damaged file is a miss, never an error


def test_store_keeps_the_most_recent(tmp_path):
    store = PrefixStore(tmp_path / "kv")
    for i in range(40):
        store.save([i], b"x")
    assert len(list((tmp_path / "kv").glob("*.kv"))) == 32
    assert store.load([39]) == b"x" and store.load([0]) is None


def test_store_is_keyed_by_model_file_and_library(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"a")
    a = PrefixStore.for_model(model, "llamacpp-1")
    assert a.root == PrefixStore.for_model(model, "llamacpp-1").root
    assert a.root != PrefixStore.for_model(model, "llamacpp-2").root
    model.write_bytes(b"bb")  # the file changed: its old states must not be used
    assert a.root != PrefixStore.for_model(model, "llamacpp-1").root
    assert PrefixStore.for_model(tmp_path / "missing.gguf", "x") is None


MESSAGES = [
    {"role": "system", "content": "You are a precise code editor. Reply with the updated file only."},
    {"role": "user", "content": "Rename greet to welcome.\n\ndef greet(name):\n    return 'hi ' + name\n"},
]


@pytest.mark.slow
@pytest.mark.skipif(not llamacpp_runtime.available(), reason="llama-cpp-python is not installed")
def test_a_new_process_restores_the_system_prompt(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    params = SamplingParams(max_tokens=12, ignore_eos=True)

    first = load_engine(str(smollm2_gguf), runtime="llamacpp", n_ctx=512)
    g1 = first.chat(MESSAGES, params, speculation="off").run()
    shared = g1.keep_prefix
    assert shared > 10 and g1.usage.cached_tokens == 0
    assert len(list((tmp_path / "kv").rglob("*.kv"))) == 1

    second = load_engine(str(smollm2_gguf), runtime="llamacpp", n_ctx=512)  # as a new process would
    g2 = second.chat(MESSAGES, params, speculation="off").run()
    assert g2.usage.cached_tokens == shared
    assert g2.token_ids == g1.token_ids  # the same KV, the same chunking: the same answer

    # a state the runtime refuses: computed again, same answer, the cache left consistent
    third = load_engine(str(smollm2_gguf), runtime="llamacpp", n_ctx=512)
    monkeypatch.setattr(third.runtime, "load_state", lambda data, n: (third.runtime.truncate(0), False)[1])
    g3 = third.chat(MESSAGES, params, speculation="off").run()
    assert g3.usage.cached_tokens == 0 and g3.token_ids == g1.token_ids
    assert third.runtime.n_past == len(third.cached)
