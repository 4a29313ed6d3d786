"""Prefill ahead (draft.update, context.update) and the steer race, on a real uvicorn server (tiny
random-weight engine on SmolLM2's tokenizer, greedy, so answers are deterministic) and through the
router: the answer after drafts is the cold session's, usage says what was prefilled ahead, limits
give error events, a draft during a response waits for it, a fuzz of every client event leaves no
session hung, and a steer that races the end of a response is applied or answered, never lost."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairline.engine.tokenizer import Tokenizer
from pairline.router.app import RouterThread
from pairline.router.config import parse_config
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from pairline.server.sessions import Session
from pairline.wire.protocol import AheadLimits, context_diff, context_text
from tests.engine_helpers import tiny_engine
from tests.ws_helpers import SessionClient

TERMINAL = ("response.completed", "response.incomplete", "response.cancelled", "response.failed")
CODE = "".join(f"def f{i}(x):\n    return x * {i} + {i % 3}\n\n\n" for i in range(24))
INSTR = "Rename f3 to g3 everywhere, then say in one line why that helps."


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.load(smollm2_gguf)


def start(tokenizer, **cfg) -> ServerThread:
    """Prefill chunks of 32 tokens: every call then takes the torch runtime's row-exact path (calls of
    at most EXACT_ROWS), whose bits do not depend on where the chunks are cut, so a session whose
    prompt was prefilled ahead in typing-sized pieces must answer bit for bit as a cold one (wider
    calls take the batched path, which differs in the last bits from the row-exact one)."""
    engine = tiny_engine(tokenizer, n_ctx=cfg.pop("n_ctx", 2048), prefill_chunk=32)
    return ServerThread(engine, ServerConfig(**cfg)).__enter__()


@pytest.fixture(scope="module")
def srv(tokenizer):
    s = start(tokenizer, max_sessions=6)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cold_srv(tokenizer):
    """The same weights, nothing prefilled ahead: what a session answers cold."""
    s = start(tokenizer, prefill_ahead=False)
    yield s
    s.stop()


class Client(SessionClient):
    def __init__(self, url: str):
        super().__init__(url)
        self.id = self.created["session"]["id"]

    def quiet(self, wait: float = 0.5) -> list[dict]:
        """Every event until none comes for `wait` seconds."""
        events = []
        while True:
            try:
                events.append(self.recv(wait))
            except TimeoutError:
                return events

    def turn(self, input, **kw) -> dict:
        self.send(type="response.create", input=input, **kw)
        return self.until(*TERMINAL, "error")[-1]

    def context(self, **files) -> dict:
        self.send(type="context.update", items=[{"path": p, "content": c} for p, c in files.items()])
        return self.until("context.updated", "error")[-1]

    def type_text(self, text: str, step: int = 4, pause: float = 0.01) -> None:
        """Drafts as a typist sends them, with a typo fixed by backspacing in the middle."""
        half = len(text) // 2
        typo = text[:half] + "xyzzy"
        for i in range(step, len(typo) + 1, step):
            self.send(type="draft.update", text=typo[:i])
            time.sleep(pause)
        for i in range(len(typo) - 1, half - 1, -1):  # the backspace burst
            self.send(type="draft.update", text=typo[:i])
        for i in range(half + step, len(text) + step, step):
            self.send(type="draft.update", text=text[: min(i, len(text))])
            time.sleep(pause)


def wait_ahead(srv, client: Client, timeout: float = 20) -> None:
    """Until the session's prefill ahead is done (its wish leaves the scheduler)."""
    deadline = time.monotonic() + timeout
    while client.id in srv.server.scheduler.ahead:
        assert time.monotonic() < deadline, "prefill ahead did not finish"
        time.sleep(0.02)


def usage(final: dict) -> dict:
    assert final["type"] in TERMINAL, final
    return final["response"]["usage"]


# ---------------------------------------------------------------- the prompt built ahead


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(draft=st.text(st.sampled_from("ab \n\t(x)=.é1_"), max_size=24), more=st.text(st.sampled_from("ab \n(1"),
       max_size=8), files=st.booleans(), history=st.booleans(), instructions=st.sampled_from([None, "Be terse."]))
def test_ahead_prompt_is_a_prefix_of_the_real_prompt(tokenizer, draft, more, files, history, instructions):
    """Whatever is typed after the draft, the ids prefilled ahead start the request's prompt: the
    same function builds both (context, history and instructions included)."""
    from pairline.engine.generate import Generation

    s = Session(tokenizer, "m")
    ctx = context_text({"a.py": "x = 1\n", "b.py": "y = 2"}) if files else None
    if history:
        prompt, msgs = s.turn_prompt([{"role": "user", "content": "hi"}], instructions, ctx)
        g = Generation(None, prompt, None)
        g.token_ids, g.text = tokenizer.encode_text("hello there"), "hello there"
        s.commit(prompt, msgs, g, "resp_1", ctx)
    ahead = s.ahead_prompt(draft, instructions, ctx)
    real, _ = s.turn_prompt([{"role": "user", "content": draft + more}], instructions, ctx)
    assert real[: len(ahead)] == ahead
    assert len(real) - len(ahead) <= len(tokenizer.encode_text(draft + more)) + 8


def test_context_diff_keeps_order_and_content():
    old = {"a": "1", "b": "2", "c": "3"}
    new = {"a": "1", "c": "3", "b": "2", "d": "4"}  # b set again (moved last), d added
    items = context_diff(old, new)
    held = dict(old)
    for it in items:
        held.pop(it["path"], None)
        if it["content"] is not None:
            held[it["path"]] = it["content"]
    assert list(held.items()) == list(new.items())
    assert context_diff(new, new) == []
    assert context_diff(old, {}) == [{"path": p, "content": None} for p in old]


# ---------------------------------------------------------------- correctness and usage


def test_drafts_and_context_give_the_cold_answer_and_usage_says_so(srv, cold_srv):
    warm, cold = Client(srv.ws_url), Client(cold_srv.ws_url)
    upd = warm.context(**{"app.py": CODE})
    assert upd["type"] == "context.updated" and upd["paths"] == ["app.py"] and upd["bytes"] == len(CODE) + 6
    warm.type_text(INSTR)
    wait_ahead(srv, warm)
    fw = warm.turn(INSTR, max_output_tokens=16)
    cold.context(**{"app.py": CODE})
    fc = cold.turn(INSTR, max_output_tokens=16)
    assert fw["response"]["output_text"] == fc["response"]["output_text"]
    uw, uc = usage(fw), usage(fc)
    assert uw["input_tokens"] == uc["input_tokens"] > 250
    # all but the last word and the turn's close were prefilled while "typing"
    assert uw["input_tokens"] - uw["input_tokens_details"]["cached_tokens"] <= 12
    assert uw["input_tokens_details"]["prefilled_ahead_tokens"] >= uw["input_tokens"] - 60
    assert uc["input_tokens_details"]["prefilled_ahead_tokens"] == 0

    # a second turn: the file changed (history re-rendered behind it), a new instruction typed
    code2 = CODE.replace("def f3", "def g3")
    warm.context(**{"app.py": code2, "notes.md": "# notes\n"})
    warm.type_text("Now add a docstring to g3.")
    wait_ahead(srv, warm)
    fw2 = warm.turn("Now add a docstring to g3.", max_output_tokens=12)
    cold.context(**{"app.py": code2, "notes.md": "# notes\n"})
    fc2 = cold.turn("Now add a docstring to g3.", max_output_tokens=12)
    assert fw2["response"]["output_text"] == fc2["response"]["output_text"]
    uw2 = usage(fw2)
    assert uw2["input_tokens"] == usage(fc2)["input_tokens"] > uw["input_tokens"]
    assert uw2["input_tokens"] - uw2["input_tokens_details"]["cached_tokens"] <= 12
    assert usage(fc2)["input_tokens_details"]["cached_tokens"] < 100  # the cold one re-prefilled its history

    # removing the items: the next turn has no files message (the cold twin does the same)
    warm.send(type="context.update", items=[{"path": "app.py", "content": None}, {"path": "notes.md",
                                                                                 "content": None}])
    assert warm.until("context.updated")[-1]["paths"] == []
    cold.context(**{"app.py": None, "notes.md": None})
    fw3, fc3 = warm.turn("Thanks.", max_output_tokens=6), cold.turn("Thanks.", max_output_tokens=6)
    assert fw3["response"]["output_text"] == fc3["response"]["output_text"]
    assert usage(fw3)["input_tokens"] == usage(fc3)["input_tokens"] < uw2["input_tokens"]
    text = srv.server.metrics.render()
    assert "pairline:prefill_ahead_tokens_total" in text and "pairline:prefill_ahead_used_tokens_total" in text
    warm.close()
    cold.close()


def test_a_real_request_cancels_prefill_ahead(tokenizer):
    """A long draft prefilling ahead on a slow chunk yields to another session's request at once."""
    s = start(tokenizer, n_ctx=4096)
    try:
        a, b = Client(s.ws_url), Client(s.ws_url)
        a.context(**{"big.py": CODE * 4})  # ~2800 tokens: many chunks of prefill ahead
        t0 = time.monotonic()
        while s.server.metrics.counters["pairline:prefill_ahead_tokens_total"] == 0:
            assert time.monotonic() - t0 < 20
            time.sleep(0.005)
        final = b.turn("hi", max_output_tokens=2)
        assert final["response"]["timings"]["queue_s"] < 0.5
        wait_ahead(s, a)  # and then it goes on where it stopped
        fa = a.turn("ok", max_output_tokens=2)
        assert usage(fa)["input_tokens"] - usage(fa)["input_tokens_details"]["cached_tokens"] <= 12
        a.close()
        b.close()
    finally:
        s.stop()


# ---------------------------------------------------------------- limits


def test_limits_are_error_events_and_the_session_stays_usable(tokenizer):
    limits = AheadLimits(max_draft_chars=200, max_context_bytes=3000, max_context_items=3, max_path_chars=50,
                         draft_rate=30)
    s = start(tokenizer, ahead=limits)
    try:
        c = Client(s.ws_url)

        def error(**event) -> dict:
            c.send(**event)
            ev = c.recv()
            assert ev["type"] == "error", ev
            return ev["error"]

        e = error(type="draft.update", text="x" * 201)
        assert e["code"] == "draft_too_large" and e["param"] == "text" and "max_draft_chars" in e["message"]
        assert error(type="draft.update")["code"] == "missing_required_parameter"
        assert error(type="draft.update", text=5)["code"] == "invalid_type"
        assert error(type="draft.update", text="x", extra=1)["code"] == "unknown_parameter"
        assert error(type="context.update", items="a.py")["code"] == "invalid_type"
        assert error(type="context.update")["code"] == "missing_required_parameter"
        assert error(type="context.update", items=[{"path": "", "content": "x"}])["param"] == "items[0].path"
        assert error(type="context.update", items=[{"path": "a\nb", "content": "x"}])["code"] == "invalid_value"
        assert error(type="context.update", items=[{"path": "a", "content": 3}])["code"] == "invalid_type"
        assert error(type="context.update", items=[{"path": "a"}])["code"] == "missing_required_parameter"
        assert error(type="context.update", items=[{"path": "a", "content": "", "mode": 1}])["code"] == \
            "unknown_parameter"
        e = error(type="context.update", items=[{"path": "p" * 51, "content": ""}])
        assert e["code"] == "context_too_large" and "max_path_chars" in e["message"]
        assert c.context(**{"a.py": "x" * 1000, "b.py": "y" * 1000})["paths"] == ["a.py", "b.py"]
        e = error(type="context.update", items=[{"path": "c.py", "content": "z" * 1200}])
        assert e["code"] == "context_too_large" and "max_context_bytes" in e["message"]
        e = error(type="context.update", items=[{"path": f"{i}.py", "content": ""} for i in range(2)])
        assert e["code"] == "context_too_large" and "max_context_items" in e["message"]
        assert c.context(**{"c.py": "z"})["paths"] == ["a.py", "b.py", "c.py"]  # unchanged by the refusals

        for i in range(80):  # a flood: told once, every draft kept (the latest wins)
            c.send(type="draft.update", text=f"draft {i}")
        flood = [ev for ev in c.quiet(0.3) if ev["type"] == "error"]
        assert 1 <= len(flood) <= 3 and all(e["error"]["code"] == "rate_limit_exceeded" for e in flood)
        assert "draft_rate" in flood[0]["error"]["message"]
        final = c.turn("draft 79 done", max_output_tokens=3)
        assert final["type"] == "response.incomplete" and usage(final)["output_tokens"] == 3
        c.close()
    finally:
        s.stop()


def test_a_context_past_the_window_is_not_prefilled_and_the_request_says_why(tokenizer):
    s = start(tokenizer, n_ctx=256)
    try:
        c = Client(s.ws_url)
        c.context(**{"big.py": CODE})  # ~700 tokens: more than the context holds
        c.send(type="draft.update", text="explain")
        wait_ahead(s, c)  # given up at once, not retried in a loop
        assert s.server.metrics.counters["pairline:prefill_ahead_tokens_total"] == 0
        final = c.turn("explain", max_output_tokens=2)
        assert final["type"] == "error" and final["error"]["code"] == "context_length_exceeded"
        c.context(**{"big.py": None})
        assert c.turn("explain", max_output_tokens=2)["type"] == "response.incomplete"
        c.close()
    finally:
        s.stop()


# ---------------------------------------------------------------- a draft during a response


def test_a_draft_during_a_response_is_held_until_it_ends(srv, cold_srv):
    c, ref = Client(srv.ws_url), Client(cold_srv.ws_url)
    c.send(type="response.create", input="tell a long story", max_output_tokens=300)
    events = c.until("response.output_text.delta")
    for i in range(1, 30):
        c.send(type="draft.update", text="and then what happened to the"[:i])
    c.send(type="context.update", items=[{"path": "story.txt", "content": "Once upon a time.\n" * 20}])
    events += c.until("context.updated")
    if not any(e["type"] in TERMINAL for e in events):  # still running: nothing was prefilled meanwhile
        assert c.id not in srv.server.scheduler.ahead
    if events[-1]["type"] not in TERMINAL:
        events += c.until(*TERMINAL)
    final = [e for e in events if e["type"] in TERMINAL][-1]
    reference = ref.turn("tell a long story", max_output_tokens=300)
    assert final["response"]["output_text"] == reference["response"]["output_text"]
    assert usage(final)["output_tokens"] == 300
    wait_ahead(srv, c)  # once it ended, the held draft and context were prefilled
    nxt = c.turn("and then what happened to the cat?", max_output_tokens=4)
    u = usage(nxt)
    assert u["input_tokens_details"]["prefilled_ahead_tokens"] > 100
    assert u["input_tokens"] - u["input_tokens_details"]["cached_tokens"] <= 12
    c.close()
    ref.close()


# ---------------------------------------------------------------- the steer race


def steer_outcome(c: Client, event_id: str) -> tuple[str, list[dict]]:
    """After a steer named `event_id` raced a response: "applied" (a successor took it) or
    "refused" (an error named it). Reads until the turn and its answers are over."""
    events = []
    while True:
        ev = c.recv()
        events.append(ev)
        if ev["type"] in TERMINAL and (ev["response"].get("incomplete_details") or {}).get("reason") != "steered":
            break
    events += c.quiet(0.3)
    applied = sum((e.get("pairline") or {}).get("steers_applied", 0) for e in events
                  if e["type"] == "response.created")
    refused = [e for e in events if e["type"] == "error" and e["error"]["event_id"] == event_id]
    assert applied + len(refused) == 1, events  # answered exactly once: never dropped, never twice
    if refused:
        assert refused[0]["error"]["code"] == "response_steer_not_active"
    return ("applied" if applied else "refused"), events


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.005, 0.01, 0.02, 0.04])
def test_a_steer_racing_the_end_is_applied_or_refused(srv, delay):
    c = Client(srv.ws_url)
    outcomes = set()
    for i in range(4):
        c.send(type="response.create", input=f"count {i}", max_output_tokens=3)
        if delay:
            time.sleep(delay * (i + 1) / 2)
        c.send(type="response.steer", input="stop and say hi", event_id=f"steer{i}")
        outcome, _ = steer_outcome(c, f"steer{i}")
        outcomes.add(outcome)
    final = c.turn("still fine?", max_output_tokens=2)
    assert final["type"] == "response.incomplete"
    c.close()


def test_steer_right_behind_create_applies(srv):
    """The turn exists as soon as response.create is read: a steer right behind it steers it."""
    c = Client(srv.ws_url)
    c.ws.send(json.dumps({"type": "response.create", "input": "write a long poem", "max_output_tokens": 400}))
    c.ws.send(json.dumps({"type": "response.steer", "input": "make it short", "event_id": "s"}))
    outcome, events = steer_outcome(c, "s")
    assert outcome == "applied"
    c.close()


def test_a_steer_on_a_queued_response_keeps_both_inputs(tokenizer):
    s = start(tokenizer, max_sessions=1)
    try:
        a, b, ref = Client(s.ws_url), Client(s.ws_url), Client(s.ws_url)
        a.send(type="response.create", input="long", max_output_tokens=900)
        a.until("response.output_text.delta")
        b.send(type="response.create", input="first question", max_output_tokens=5)
        b.until("response.created")  # waits behind a (one KV cache)
        b.send(type="response.steer", input="second question", event_id="st")
        time.sleep(0.2)
        a.send(type="response.cancel")
        a.until(*TERMINAL)
        outcome, events = steer_outcome(b, "st")
        assert outcome == "applied"
        finals = [e for e in events if e["type"] in TERMINAL]
        assert finals[0]["response"]["incomplete_details"] == {"reason": "steered"}
        assert finals[0]["response"]["usage"] is None  # it never ran
        expected = ref.turn([{"role": "user", "content": "first question"},
                             {"role": "user", "content": "second question"}], max_output_tokens=5)
        assert finals[-1]["response"]["output_text"] == expected["response"]["output_text"]
        assert usage(finals[-1])["input_tokens"] == usage(expected)["input_tokens"]
        for x in (a, b, ref):
            x.close()
    finally:
        s.stop()


# ---------------------------------------------------------------- fuzz

OPS = st.lists(st.one_of(
    st.tuples(st.just("draft"), st.text(st.sampled_from("ab c\n"), max_size=12)),
    st.tuples(st.just("context"), st.sampled_from(["a.py", "b.py"]),
              st.one_of(st.none(), st.text("xy\n", max_size=40))),
    st.tuples(st.just("create"), st.integers(1, 12)),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("steer"), st.text("st", min_size=1, max_size=4)),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.003, 0.02])),
), min_size=1, max_size=14)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=OPS)
def test_fuzz_interleaved_events_never_crash_or_hang(srv, ops):
    c = Client(srv.ws_url)
    steers = cancelled = 0
    for i, op in enumerate(ops):
        if op[0] == "draft":
            c.send(type="draft.update", text=op[1])
        elif op[0] == "context":
            c.send(type="context.update", items=[{"path": op[1], "content": op[2]}])
        elif op[0] == "create":
            c.send(type="response.create", input=f"q{i}", max_output_tokens=op[1])
        elif op[0] == "cancel":
            c.send(type="response.cancel")
            cancelled += 1
        elif op[0] == "steer":
            c.send(type="response.steer", input=op[1], event_id=f"s{i}")
            steers += 1
        else:
            time.sleep(op[1])
    events = c.quiet(1.0)
    errors = [e["error"]["code"] for e in events if e["type"] == "error"]
    assert "server_error" not in errors and "invalid_request_error" not in errors
    created = [e["response"]["id"] for e in events if e["type"] == "response.created"]
    ended = [e["response"]["id"] for e in events if e["type"] in TERMINAL]
    assert sorted(created) == sorted(ended)  # every response ended, once
    if not cancelled:  # without a cancel (which wins over steers) every steer is answered exactly once
        applied = sum((e.get("pairline") or {}).get("steers_applied", 0) for e in events
                      if e["type"] == "response.created")
        assert applied + errors.count("response_steer_not_active") == steers
    final = c.turn("are you there?", max_output_tokens=2)  # not hung
    assert final["type"] == "response.incomplete"
    c.close()
    deadline = time.monotonic() + 10
    while srv.server.scheduler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not srv.server.scheduler.active


# ---------------------------------------------------------------- through the router


@pytest.fixture(scope="module")
def routed(srv):
    """A router whose real-time tier is the pairline server's sessions and whose deep tier is the same
    server over Chat Completions (an OpenAI-compatible backend)."""
    toml = f"""
[router]
health_interval_s = 0.5
[tiers.realtime]
backends = [{{ kind = "pairline", url = "{srv.base_url}", name = "rt" }}]
[tiers.deep]
backends = [{{ kind = "openai", url = "{srv.base_url}/v1", model = "tiny", name = "deep" }}]
"""
    r = RouterThread(parse_config(toml, "test.toml", env={})).__enter__()
    yield r
    r.stop()


def routed_client(r: RouterThread, mode: str) -> Client:
    c = Client(r.ws_url)
    c.send(type="session.update", session={"mode": mode})
    assert c.until("session.updated")[-1]["session"]["mode"] == mode
    return c


@pytest.mark.parametrize("mode", ["realtime", "deep"])
def test_router_passes_drafts_and_context_on(srv, cold_srv, routed, mode):
    c, cold = routed_client(routed, mode), Client(cold_srv.ws_url)
    assert c.context(**{"app.py": CODE})["paths"] == ["app.py"]
    c.type_text(INSTR)
    time.sleep(0.3)
    deadline = time.monotonic() + 20
    while srv.server.scheduler.ahead and time.monotonic() < deadline:
        time.sleep(0.02)
    fr = c.turn(INSTR, max_output_tokens=12)
    cold.context(**{"app.py": CODE})
    fc = cold.turn(INSTR, max_output_tokens=12)
    assert fr["response"]["output_text"] == fc["response"]["output_text"]  # the context is in both prompts
    assert usage(fr)["input_tokens"] == usage(fc)["input_tokens"]
    if mode == "realtime":  # a backend session opened ahead, kept in step, prefilled while typing
        u = usage(fr)
        assert u["input_tokens_details"]["prefilled_ahead_tokens"] > 200
        assert u["input_tokens"] - u["input_tokens_details"]["cached_tokens"] <= 12
    # a second turn after the file changed: still the cold session's answer
    c.context(**{"app.py": CODE + "# end\n"})
    cold.context(**{"app.py": CODE + "# end\n"})
    fr2, fc2 = c.turn("And now?", max_output_tokens=8), cold.turn("And now?", max_output_tokens=8)
    assert fr2["response"]["output_text"] == fc2["response"]["output_text"]
    c.close()
    cold.close()


@pytest.mark.parametrize("mode", ["realtime", "deep"])
def test_router_steer_race_is_applied_or_refused(routed, mode):
    c = routed_client(routed, mode)
    for i, delay in enumerate([0.0, 0.004, 0.01, 0.03, 0.08]):
        c.send(type="response.create", input=f"count {i}", max_output_tokens=3)
        time.sleep(delay)
        c.send(type="response.steer", input="say hi", event_id=f"r{i}")
        steer_outcome(c, f"r{i}")
    final = c.turn("fine?", max_output_tokens=2)
    assert final["type"] in ("response.incomplete", "response.completed")
    c.close()


# ---------------------------------------------------------------- pairline bench typeahead


def test_typing_timeline_types_a_typo_and_deletes_it():
    from pairline.bench.typeahead import typing_timeline

    line = typing_timeline("abcdefghi", chars_per_s=10, pause_s=1.0, typo="xy")
    drafts = [d for _, d in line]
    assert drafts[-1] == "abcdefghi" and "abcxy" in drafts and drafts.count("abc") == 2
    times = [t for t, _ in line]
    assert times == sorted(times) and times[-1] > 0.9 + 1.0


@pytest.mark.slow
def test_bench_typeahead_runs_and_writes_json(smollm2_gguf, tmp_path):
    from pairline.bench.common import write_json
    from pairline.bench.typeahead import TypeaheadConfig, bench_result
    from pairline.engine.load import load_engine

    engine = load_engine(str(smollm2_gguf), runtime="torch", n_ctx=1024)
    cfg = TypeaheadConfig(model="smollm2-135m", repeats=1, file_lines=12, instruction="Rename it.", chars_per_s=20,
                          pause_s=0.05, typo="q", max_tokens=2, log=lambda _msg: None)
    path = write_json(bench_result(engine, cfg), tmp_path / "typeahead.json")
    result = json.loads(path.read_text())
    assert set(result["variants"]) == {"http", "ws", "ws-ahead"}
    for v in result["variants"].values():
        assert v["ttft_s"]["median"] > 0 and v["runs"][0]["input_tokens"] > 100
    ahead = result["variants"]["ws-ahead"]
    assert ahead["runs"][0]["prefilled_ahead_tokens"] > 0 and ahead["ahead_engine_s"]["median"] > 0
    # the same prompt three ways
    assert len({v["runs"][0]["input_tokens"] for v in result["variants"].values()}) == 1
