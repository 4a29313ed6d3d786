"""Prefill ahead in the chat: while the user types, the prompt the draft would send is prefilled
(InProcessClient.ahead through Engine.prefill), so Enter leaves only the last tokens to compute.

On the tiny random torch engine with SmolLM2's tokenizer: the turn reuses the ahead KV and answers
exactly as a cold run; a newer ahead and a real request cancel the older work; the ahead prompt is
a token prefix of the real turn's (the drift guard); the REPL's debouncer posts off its thread."""

from __future__ import annotations

import threading
import time

import pytest

from pairline.assistant import prompts
from pairline.assistant.chat import ChatSession, turn_request
from pairline.assistant.chat_cmd import DraftPoster
from pairline.assistant.client import InProcessClient
from pairline.assistant.coder import load_file
from pairline.assistant.edits import DIVIDER, TAIL
from pairline.assistant.workspace import Workspace
from pairline.engine.runtime import common_prefix
from pairline.engine.tokenizer import Tokenizer, encode_chat
from tests.assistant_helpers import ScriptedClient

from .engine_helpers import tiny_engine

SRC = "".join(f"def f{i}(x):\n    return x * {i} + total({i})\n\n\n" for i in range(12))
HISTORY = [{"role": "user", "content": "Instruction: what does f3 do?"},
           {"role": "assistant", "content": "It multiplies x by 3 and adds total(3)."}]


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / ".cache"))
    root = tmp_path / "proj"
    root.mkdir()
    (root / "mod.py").write_text(SRC)
    monkeypatch.chdir(root)
    return Workspace.open(root, commit=False)


def until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def holds(engine, ids: list[int]) -> bool:
    with engine.lock:
        return engine.cached == ids


def recording_prefill(monkeypatch, engine, chunk_s: float = 0.0) -> list[dict]:
    """Engine.prefill, recording each call's tokens, cancel token and the times its chunks ended
    (`chunk_s` makes every chunk that much slower: a big model's chunk on a small one)."""
    calls: list[dict] = []
    real = engine.prefill

    def prefill(tokens, *, cancel=None, **kw):
        call = {"tokens": tokens, "cancel": cancel, "ends": []}
        calls.append(call)
        for end in real(tokens, cancel=cancel, **kw):
            time.sleep(chunk_s)
            call["ends"].append(time.perf_counter())
            yield end

    monkeypatch.setattr(engine, "prefill", prefill)
    return calls


# --------------------------------------------------------------------------- (a) reuse, same answer


def test_ahead_prefill_is_reused_and_the_answer_is_a_cold_runs(tokenizer, ws):
    # chunks of 32: the torch runtime is bit-exact across chunkings up to its exact_rows (32), so a
    # prompt prefilled ahead in other chunks than a cold one computes the same logits
    engine = tiny_engine(tokenizer, n_ctx=4096, prefill_chunk=32)
    client = InProcessClient(engine)
    states = [load_file(ws, "mod.py")]
    draft, final = "rename total to", "rename total to basket_total everywhere"
    ahead = turn_request(client, states, {}, HISTORY, draft)
    real = turn_request(client, states, {}, HISTORY, final)
    # an edit; not primed: the in-process client decodes it under the edit grammar, which forces
    # what the primer wrote and leaves the choice between a block and a RENAME to the model
    assert not real.asking and real.prefix == ""
    ahead_ids, real_ids = client.prompt_ids(ahead.messages, ahead.prefix), client.prompt_ids(real.messages, real.prefix)
    certain = common_prefix(client.prompt_ids(*_req(client, states, "")), real_ids)
    assert tokenizer.decode(real_ids[:certain]).count("def f11(x)") == 1  # the files are in the certain part
    common = common_prefix(ahead_ids, real_ids)
    assert common > certain  # and so is the draft's common part

    client.ahead(ahead.messages, ahead.prefix)  # returns at once; the worker prefills
    until(lambda: holds(engine, ahead_ids))
    warm = client.stream(real.messages, max_tokens=12, prefix=real.prefix).run()
    assert warm.usage.cached_tokens >= common
    assert warm.usage.prompt_tokens == len(real_ids)

    client.reset()
    cold = client.stream(real.messages, max_tokens=12, prefix=real.prefix).run()
    assert cold.usage.cached_tokens == 0
    assert (warm.text, warm.tokens, warm.finish_reason) == (cold.text, cold.tokens, cold.finish_reason)
    assert warm.tokens > 0


def _req(client, states, instruction):
    r = turn_request(client, states, {}, HISTORY, instruction)
    return r.messages, r.prefix


# --------------------------------------------------------------------------- (b) cancels


def test_a_newer_ahead_cancels_the_older(tokenizer, ws, monkeypatch):
    engine = tiny_engine(tokenizer, n_ctx=4096, prefill_chunk=16)
    client = InProcessClient(engine)
    calls = recording_prefill(monkeypatch, engine, chunk_s=0.02)
    states = [load_file(ws, "mod.py")]
    first = turn_request(client, states, {}, HISTORY, "add a docstring to f1")
    client.ahead(first.messages, first.prefix)
    until(lambda: calls and calls[0]["ends"])
    second = turn_request(client, states, {}, [], "add a docstring to f2")  # no history: diverges early
    client.ahead(second.messages, second.prefix)
    assert calls[0]["cancel"].cancelled  # at once, by the call itself
    want = client.prompt_ids(second.messages, second.prefix)
    until(lambda: holds(engine, want))
    assert len(calls) == 2 and not calls[1]["cancel"].cancelled
    assert len(calls[0]["ends"]) < len(range(0, len(calls[0]["tokens"]), 16))  # the first never finished


def test_stream_cancels_ahead_work_promptly_and_ahead_waits_for_it(tokenizer, ws, monkeypatch):
    engine = tiny_engine(tokenizer, n_ctx=4096, prefill_chunk=16)
    client = InProcessClient(engine)
    calls = recording_prefill(monkeypatch, engine, chunk_s=0.05)
    states = [load_file(ws, "mod.py")]
    ahead = turn_request(client, states, {}, HISTORY, "rename f1")
    client.ahead(ahead.messages, ahead.prefix)
    until(lambda: calls and calls[0]["ends"])
    other = turn_request(client, states, {}, [], "what is this?")  # a question: another system prompt
    t0 = time.perf_counter()
    reply = client.stream(other.messages, max_tokens=6)
    assert calls[0]["cancel"].cancelled
    first = next(iter(reply))
    waited = time.perf_counter() - t0
    # the request waited for the chunk in flight at most: no ahead chunk started after the stream
    assert len([t for t in calls[0]["ends"] if t > t0]) <= 1
    assert waited < 5.0 and first is not None
    # an ahead posted while an answer streams is stale (the conversation is about to grow): dropped
    client.ahead(ahead.messages, ahead.prefix)
    for _ in reply:
        pass
    time.sleep(0.1)
    assert len(calls) == 1
    assert reply.usage.prompt_tokens == len(client.prompt_ids(other.messages))


# --------------------------------------------------------------------------- (c) the drift guard


def answer(search: str, replace: str, path: str = "mod.py") -> str:
    return prompts.primer(prompts.prompt_for("qwen2"), path) + f"{search}{DIVIDER}\n{replace}{TAIL}\n```\n"


def test_the_ahead_prompt_is_a_token_prefix_of_the_turns(tokenizer, ws):
    edit = answer("def f0(x):\n", "def g0(x):\n")
    client = ScriptedClient([edit, answer("def f1(x):\n", "def g1(x):\n")])
    out = []
    session = ChatSession(client, ws, out.append, files=[ws.resolve("mod.py")])
    assert session.ahead("")  # the chat's start: the files, with an empty draft
    session.submit("rename f0 to g0")
    session.wait()
    assert (ws.root / "mod.py").read_text().startswith("def g0(x):")  # applied: the file is shown again next
    final = "rename f1 to g1 as well"

    def ids(call: dict) -> list[int]:
        return encode_chat(call["messages"], tokenizer) + tokenizer.encode_text(call["prefix"])

    session.ahead("rename f1 to")
    partial = client.aheads[-1]
    session.ahead(final)
    whole = client.aheads[-1]
    session.submit(final)
    session.wait()
    sent = client.calls[-1]
    assert len(session.history) == 4 and sent["messages"][-3]["role"] == "user"  # files, history and all
    assert "def g0(x):" in sent["messages"][-1]["content"]  # the edited file, shown again
    assert ids(whole) == ids(sent)  # the draft that is the instruction: exactly the prompt sent
    # a draft the instruction extends: all of its prompt is shared up to the draft's last token
    # (which BPE may merge with what follows); only the end of the turn and the primer differ
    ahead_ids, sent_ids = ids(partial), ids(sent)
    content = tokenizer.encode_text(partial["messages"][-1]["content"])
    start = next(i for i in range(len(ahead_ids)) if ahead_ids[i : i + len(content)] == content)
    assert "def g0(x):" in tokenizer.decode(ahead_ids[start : start + len(content)])
    assert common_prefix(ahead_ids, sent_ids) >= start + len(content) - 1


def test_no_ahead_for_commands_or_while_a_turn_runs_and_the_turn_posts_the_draft(ws):
    client = ScriptedClient([answer("def f0(x):\n", "def g0(x):\n" + "    # more\n" * 60)], delay=0.01)
    session = ChatSession(client, ws, lambda text: None, files=[ws.resolve("mod.py")])
    assert not session.ahead("/undo") and not session.ahead("  /add x.py")
    assert client.aheads == []
    session.submit("rename f0 to g0")
    assert session.busy and not session.ahead("then rename f1")  # typed while it streams: kept for later
    session.wait()
    posted = client.aheads[-1]["messages"]
    assert posted[-1]["content"].endswith("Instruction: then rename f1") and posted[-2]["role"] == "assistant"
    assert session.ahead("why is f2 here?")  # a question: the ask prompt, no files, no primer
    asked = client.aheads[-1]
    assert asked["messages"][-1] == {"role": "user", "content": "why is f2 here?"} and asked["prefix"] == ""


def test_a_client_without_ahead_gets_nothing(ws):
    client = ScriptedClient([])
    client.supports_ahead = False
    session = ChatSession(client, ws, lambda text: None, files=[ws.resolve("mod.py")])
    assert not session.ahead("rename f0") and client.aheads == []


# --------------------------------------------------------------------------- (d) the REPL's debouncer


def test_the_debouncer_posts_the_last_draft_off_the_typing_thread():
    posted: list[tuple[str, threading.Thread]] = []
    poster = DraftPoster(lambda text: posted.append((text, threading.current_thread())), delay=0.04)
    try:
        t0 = time.perf_counter()
        for text in ("r", "re", "ren", "rename"):
            poster.changed(text)
        assert time.perf_counter() - t0 < 0.03  # typing only records the text
        assert posted == []  # not before the text has been still for the delay
        until(lambda: posted, timeout=5)
        time.sleep(0.1)
        assert [text for text, _ in posted] == ["rename"]
        assert posted[0][1] is not threading.current_thread()
        poster.changed("rename f0")
        time.sleep(0.01)
        assert len(posted) == 1
        until(lambda: len(posted) == 2, timeout=5)
        assert posted[1][0] == "rename f0"
    finally:
        poster.close()


def test_the_debouncer_survives_a_failing_post():
    seen = []

    def post(text):
        seen.append(text)
        raise RuntimeError("boom")

    poster = DraftPoster(post, delay=0.0)
    try:
        poster.changed("a")
        until(lambda: seen == ["a"], timeout=5)
        poster.changed("b")
        until(lambda: seen == ["a", "b"], timeout=5)
    finally:
        poster.close()
