"""The on-disk KV of shared prompt prefixes (system prompts): a new process restores instead of prefilling."""

from __future__ import annotations

import threading

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


def test_longest_shared_head_wins_and_only_exact_ids_count(tmp_path):
    store = PrefixStore(tmp_path / "kv")
    assert store.longest([1, 2, 3]) is None
    store.save([1, 2], b"two")
    store.save([1, 2, 3, 4, 5], b"five")
    store.save([9, 9, 9, 9, 9, 9], b"other")
    assert store.longest([1, 2, 3, 4, 7, 8]) == ([1, 2, 3, 4, 5], b"five")  # shares 4: the longest head
    assert store.longest([1, 2, 8]) in (([1, 2], b"two"), ([1, 2, 3, 4, 5], b"five"))  # both share 2
    assert store.longest([5, 1, 2]) is None  # no shared head at all
    for path in (tmp_path / "kv").glob("*.kv"):
        path.write_bytes(path.read_bytes()[:12])  # cut short: a damaged file is a miss, never an error
    assert store.longest([1, 2, 3, 4, 5]) is None


def test_store_is_bounded_by_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_KV_STORE_MB", "0.01")  # ~10 KB
    store = PrefixStore(tmp_path / "kv")
    for i in range(4):
        store.save([i], b"x" * 4000)
    kept = list((tmp_path / "kv").glob("*.kv"))
    assert 1 <= len(kept) <= 3 and sum(p.stat().st_size for p in kept) <= 10_486
    assert store.load([3]) == b"x" * 4000  # the newest stays


FILE = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(60))


def _edit_messages(source: str) -> list[dict]:
    return [MESSAGES[0], {"role": "user", "content": f"Rename f59 to last.\n\n{source}"}]


@pytest.mark.slow
@pytest.mark.skipif(not llamacpp_runtime.available(), reason="llama-cpp-python is not installed")
def test_a_new_process_restores_the_head_of_the_same_file(smollm2_gguf, tmp_path, monkeypatch):
    """The one-shot CLI's second edit of a file changed near its end prefills from the change on."""
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    first = load_engine(str(smollm2_gguf), runtime="llamacpp", n_ctx=2048)
    g1 = first.chat(_edit_messages(FILE), params, speculation="off").run()
    assert len(g1.prompt) > 2 * first.prefill_chunk
    for t in threading.enumerate():  # the whole prompt's state is written on a thread
        if t.name == "pairline-kv-save":
            t.join()

    changed = FILE.replace("return x + 58", "return x - 58")
    second = load_engine(str(smollm2_gguf), runtime="llamacpp", n_ctx=2048)  # as a new process would
    g2 = second.chat(_edit_messages(changed), params, speculation="off").run()
    head = next(i for i, (a, b) in enumerate(zip(g1.prompt, g2.prompt, strict=False)) if a != b)
    assert head > len(g2.prompt) - 40  # the change is near the end
    assert g2.usage.cached_tokens == head  # restored up to the first differing token, not past it

    cold = load_engine(str(smollm2_gguf), runtime="llamacpp", n_ctx=2048)
    cold.prefix_store = None
    g3 = cold.chat(_edit_messages(changed), params, speculation="off").run()
    assert g3.usage.cached_tokens == 0
    # the restored head is the same KV: the answer agrees (llama.cpp's chunking differs, so within
    # its documented bound: the first tokens)
    assert g2.token_ids[:4] == g3.token_ids[:4]
