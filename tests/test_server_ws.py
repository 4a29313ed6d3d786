"""The WebSocket session protocol against a real uvicorn server (tiny random-weight engine,
greedy, so outputs are deterministic) and the `websockets` client."""

from __future__ import annotations

import time

import pytest
from websockets.exceptions import ConnectionClosed

from pairline.engine.tokenizer import Tokenizer
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from tests.engine_helpers import tiny_engine
from tests.ws_helpers import SessionClient

TERMINAL = ("response.completed", "response.incomplete", "response.cancelled", "response.failed")


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.load(smollm2_gguf)


def start(tokenizer, **cfg) -> ServerThread:
    return ServerThread(tiny_engine(tokenizer, n_ctx=cfg.pop("n_ctx", 1024)), ServerConfig(**cfg)).__enter__()


@pytest.fixture(scope="module")
def srv(tokenizer):
    s = start(tokenizer, max_sessions=4, max_message_bytes=64 * 1024)
    yield s
    s.stop()


class Client(SessionClient):
    def turn(self, input, **kw) -> tuple[list[dict], dict]:
        self.send(type="response.create", input=input, **kw)
        events = self.until(*TERMINAL, "error")
        if events[-1]["type"] == "error" and events[0]["type"] == "response.created":
            failed = self.recv()  # a response that had started ends with response.failed
            assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
        return events, events[-1]


def test_session_created_and_one_turn_event_order(srv):
    c = Client(srv.ws_url)
    assert c.created["type"] == "session.created" and c.created["sequence_number"] == 0
    assert c.created["session"]["id"].startswith("sess_")
    events, final = c.turn("write a haiku", max_output_tokens=8)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    seqs = [c.created["sequence_number"]] + [e["sequence_number"] for e in events]
    assert seqs == list(range(len(seqs)))
    resp = final["response"]
    assert resp["id"].startswith("resp_") and resp["object"] == "response"
    assert resp["incomplete_details"] == {"reason": "max_output_tokens"}
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == resp["output_text"] == events[-4]["text"]
    assert resp["usage"]["output_tokens"] == 8
    assert set(resp["timings"]) >= {"queue_s", "prefill_s", "ttft_s", "decode_s"}
    c.close()


def test_second_turn_prefills_only_new_tokens(srv):
    c = Client(srv.ws_url)
    _, first = c.turn("def add(a, b):\n    return a + b\n\nExplain this function.", max_output_tokens=6)
    u1 = first["response"]["usage"]
    _, second = c.turn("Now in one word.", max_output_tokens=6, previous_response_id=first["response"]["id"])
    u2 = second["response"]["usage"]
    # everything of turn 1 (its prompt and answer) was in the KV; only the new message ran
    assert u2["input_tokens_details"]["cached_tokens"] >= u1["input_tokens"] + u1["output_tokens"] - 1
    assert u2["input_tokens"] - u2["input_tokens_details"]["cached_tokens"] < 20
    assert second["response"]["previous_response_id"] == first["response"]["id"]
    c.close()


def test_cancel_stops_and_session_stays_usable(srv):
    c = Client(srv.ws_url)
    c.send(type="response.create", input="count to a thousand", max_output_tokens=800)
    c.until("response.output_text.delta")
    c.send(type="response.cancel")
    events = c.until(*TERMINAL)
    resp = events[-1]["response"]
    assert events[-1]["type"] == "response.cancelled" and resp["status"] == "cancelled"
    assert resp["usage"]["output_tokens"] < 800
    assert resp["timings"]["cancel_latency_s"] is not None
    _, final = c.turn("and now?", max_output_tokens=4)
    assert final["type"] == "response.incomplete" and final["response"]["usage"]["output_tokens"] == 4
    c.send(type="response.cancel")  # nothing to cancel now
    assert c.recv()["error"]["code"] == "response_cancel_not_active"
    c.close()


def test_steer_cuts_appends_and_continues_on_same_kv(srv):
    c = Client(srv.ws_url)
    c.send(type="response.create", input="write a long story", max_output_tokens=600)
    created = c.until("response.output_text.delta")[0]
    c.send(type="response.steer", input="make it about a cat")
    events = c.until("response.incomplete", "response.completed", "response.cancelled")
    steered = events[-1]["response"]
    assert steered["status"] == "incomplete" and steered["incomplete_details"] == {"reason": "steered"}
    assert steered["id"] == created["response"]["id"]
    cut = steered["usage"]["output_tokens"]
    assert 0 < cut < 600
    events = c.until(*TERMINAL)
    successor = events[0]
    assert successor["type"] == "response.created"
    assert successor["response"]["previous_response_id"] == steered["id"]
    final = events[-1]["response"]
    # the history (first prompt + the cut answer) was not prefilled again
    usage = final["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] >= steered["usage"]["input_tokens"] + cut - 1
    assert usage["input_tokens"] - usage["input_tokens_details"]["cached_tokens"] < 20
    c.close()


def test_parallel_sessions_are_interleaved(srv):
    a, b = Client(srv.ws_url), Client(srv.ws_url)
    a.send(type="response.create", input="long answer please", max_output_tokens=300)
    a.until("response.output_text.delta")
    _, fb = b.turn("short", max_output_tokens=3)  # served while a is still generating
    assert fb["response"]["usage"]["output_tokens"] == 3
    events = a.until(*TERMINAL)
    assert events[-1]["response"]["usage"]["output_tokens"] == 300
    a.close()
    b.close()


@pytest.mark.parametrize("payload, code, param", [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    ('{"type": "response.explode"}', "unknown_event_type", "type"),
    ('{"type": "response.create", "input": "hi", "tools": []}', "unknown_parameter", "tools"),
    ('{"type": "response.create"}', "missing_required_parameter", "input"),
    ('{"type": "response.create", "input": "hi", "temperature": "hot"}', "invalid_value", "temperature"),
    ('{"type": "response.create", "input": "hi", "max_output_tokens": 100000}', "invalid_value", "max_output_tokens"),
    ('{"type": "response.create", "input": [{"role": "wizard", "content": "x"}]}', "invalid_value", "input[0].role"),
    ('{"type": "session.update", "session": {"voice": "alloy"}}', "unknown_parameter", "voice"),
    ('{"type": "response.create", "input": "hi", "previous_response_id": "resp_nope"}',
     "previous_response_not_found", "previous_response_id"),
])
def test_bad_messages_get_error_events_and_disturb_nobody(srv, payload, code, param):
    other = Client(srv.ws_url)
    other.send(type="response.create", input="keep going", max_output_tokens=40)
    c = Client(srv.ws_url)
    c.ws.send(payload)
    err = c.recv()
    assert err["type"] == "error" and err["error"]["code"] == code and err["error"]["param"] == param
    assert err["error"]["message"]
    if param:
        assert param.split(".")[-1].split("[")[0] in err["error"]["message"]
    _, ok = c.turn("still here?", max_output_tokens=3)  # the same connection stays usable
    assert ok["response"]["usage"]["output_tokens"] == 3
    done = other.until(*TERMINAL)[-1]  # the other session was not disturbed
    assert done["response"]["usage"]["output_tokens"] == 40
    c.close()
    other.close()


def test_oversized_message_and_too_many_tokens(srv):
    other = Client(srv.ws_url)
    other.send(type="response.create", input="keep going", max_output_tokens=60)
    c = Client(srv.ws_url)
    c.send(type="response.create", input="x" * (70 * 1024))
    assert c.recv()["error"]["code"] == "message_too_large"
    _, err = c.turn("word " * 3000, max_output_tokens=4)  # > n_ctx of 1024 tokens
    assert err["type"] == "error" and err["error"]["code"] == "context_length_exceeded"
    _, ok = c.turn("fine", max_output_tokens=2)
    assert ok["response"]["usage"]["output_tokens"] == 2
    assert other.until(*TERMINAL)[-1]["response"]["usage"]["output_tokens"] == 60  # undisturbed
    c.close()
    other.close()


def test_active_response_rejects_a_second_create(srv):
    c = Client(srv.ws_url)
    c.send(type="response.create", input="long", max_output_tokens=200)
    c.until("response.created")
    c.send(type="response.create", input="again")
    errs = c.until("error")
    assert errs[-1]["error"]["code"] == "conversation_already_has_active_response"
    c.send(type="response.cancel")
    assert c.until(*TERMINAL)[-1]["type"] == "response.cancelled"
    c.close()


def test_session_update_sets_defaults(srv):
    c = Client(srv.ws_url)
    c.send(type="session.update", session={"max_output_tokens": 5, "instructions": "Be terse."})
    upd = c.recv()
    assert upd["type"] == "session.updated" and upd["session"]["max_output_tokens"] == 5
    _, final = c.turn("hello")
    assert final["response"]["usage"]["output_tokens"] == 5 and final["response"]["instructions"] == "Be terse."
    c.close()


def test_disconnect_cancels_the_work(srv):
    c = Client(srv.ws_url)
    c.send(type="response.create", input="go on forever", max_output_tokens=900)
    c.until("response.output_text.delta")
    c.close()
    deadline = time.monotonic() + 20
    while srv.server.scheduler.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv.server.scheduler.active
    assert 'finished_reason="cancelled"' in srv.server.metrics.render()


def test_bad_api_key_closes_with_a_clear_error(tokenizer):
    s = start(tokenizer, api_key="sekret")
    try:
        other = Client(s.ws_url, additional_headers={"Authorization": "Bearer sekret"})
        other.send(type="response.create", input="keep going", max_output_tokens=60)
        c = Client(s.ws_url, additional_headers={"Authorization": "Bearer wrong"})
        assert c.created["type"] == "error" and c.created["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as info:
            c.recv(10)
        assert info.value.rcvd.code == 1008
        good = Client(s.ws_url, additional_headers={"Authorization": "Bearer sekret"})
        assert good.created["type"] == "session.created"
        assert good.turn("hi", max_output_tokens=2)[1]["type"] == "response.incomplete"
        assert other.until(*TERMINAL)[-1]["response"]["usage"]["output_tokens"] == 60  # undisturbed
        good.close()
        other.close()
    finally:
        s.stop()


def test_idle_timeout_closes_the_session(tokenizer):
    s = start(tokenizer, idle_timeout_s=0.4)
    try:
        c = Client(s.ws_url)
        err = c.recv(10)
        assert err["type"] == "error" and err["error"]["code"] == "session_expired"
        with pytest.raises(ConnectionClosed):
            c.recv(10)
    finally:
        s.stop()


def test_evicted_session_is_rebuilt_exactly(tokenizer):
    """One resident KV cache for two sessions: each turn evicts the other. The evicted session's
    next turn prefills its stored ids again and answers exactly as an unevicted one does."""
    small, big = start(tokenizer, max_sessions=1), start(tokenizer, max_sessions=4)
    try:
        a, b, ref = Client(small.ws_url), Client(small.ws_url), Client(big.ws_url)
        turns = ["first question", "second question", "third question"]
        for i, text in enumerate(turns):
            _, fa = a.turn(text, max_output_tokens=6)
            _, fb = b.turn("noise " + text, max_output_tokens=6)
            _, fr = ref.turn(text, max_output_tokens=6)
            assert fa["response"]["output_text"] == fr["response"]["output_text"]
            if i > 0:
                assert fa["response"]["timings"]["kv_rebuilt"] is True
                assert fa["response"]["usage"]["input_tokens"] == fr["response"]["usage"]["input_tokens"]
                assert not fr["response"]["timings"]["kv_rebuilt"]
        assert "pairline:kv_evictions_total" in small.server.metrics.render()
        for c in (a, b, ref):
            c.close()
    finally:
        small.stop()
        big.stop()


def test_queue_full_gets_an_error_event(tokenizer):
    s = start(tokenizer, max_sessions=1, max_queue=1)
    try:
        a, b, c = Client(s.ws_url), Client(s.ws_url), Client(s.ws_url)
        a.send(type="response.create", input="long", max_output_tokens=900)
        a.until("response.output_text.delta")
        b.send(type="response.create", input="queued", max_output_tokens=2)
        b.until("response.created")  # waits behind a (one KV cache)
        c.send(type="response.create", input="rejected", max_output_tokens=2)
        err = c.recv()
        assert err["type"] == "error" and err["error"]["code"] == "rate_limit_exceeded" and err["status"] == 429
        a.send(type="response.cancel")
        assert a.until(*TERMINAL)[-1]["type"] == "response.cancelled"
        assert b.until(*TERMINAL)[-1]["response"]["usage"]["output_tokens"] == 2
        for x in (a, b, c):
            x.close()
    finally:
        s.stop()


def test_shutdown_gives_open_sessions_a_final_event(tokenizer):
    s = start(tokenizer)
    c = Client(s.ws_url)
    c.send(type="response.create", input="long", max_output_tokens=900)
    c.until("response.output_text.delta")
    s.stop()  # what SIGTERM does
    events = []
    with pytest.raises(ConnectionClosed) as info:
        while True:
            events.append(c.recv(10))
    kinds = [e["type"] for e in events]
    assert "response.cancelled" in kinds
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "server_shutting_down"
    assert info.value.rcvd.code == 1001


def test_idle_engine_forks_a_spare_cache_for_the_next_session(tokenizer):
    s = start(tokenizer, max_sessions=3)
    try:
        pool = s.server.scheduler.pool
        a = Client(s.ws_url)
        a.turn("take the first cache", max_output_tokens=2)
        deadline = time.monotonic() + 20
        while len(pool.slots) < 2 and time.monotonic() < deadline:  # made while the engine idles
            time.sleep(0.05)
        assert len(pool.slots) == 2 and any(slot.owner is None for slot in pool.slots)
        b = Client(s.ws_url)
        b.turn("take the spare", max_output_tokens=2)
        owners = {slot.owner for slot in pool.slots}
        assert {a.created["session"]["id"], b.created["session"]["id"]} <= owners
        a.close()
        b.close()
    finally:
        s.stop()


def test_long_prompt_prefills_in_pieces_with_the_same_answer(tokenizer):
    """A ~1500-token prompt is prefilled in 512-token scheduler steps while another session streams;
    its answer and usage are those of one whole prefill on the same weights."""
    from pairline.engine.sampling import SamplingParams

    long_input = "def f(x):\n    return x * 2\n" * 120
    ref = tiny_engine(tokenizer, n_ctx=2048).chat([{"role": "user", "content": long_input}],
                                                   SamplingParams(max_tokens=8)).run()
    s = start(tokenizer, n_ctx=2048)
    try:
        other = Client(s.ws_url)
        other.send(type="response.create", input="stream a while", max_output_tokens=400)
        other.until("response.output_text.delta")
        a = Client(s.ws_url)
        _, fa = a.turn(long_input, max_output_tokens=8)
        resp = fa["response"]
        assert resp["timings"]["prefill_pieces"] >= 2
        assert resp["output_text"] == ref.text
        assert resp["usage"]["input_tokens"] == ref.usage.prompt_tokens > 1400
        assert resp["usage"]["input_tokens_details"]["cached_tokens"] == ref.usage.cached_tokens == 0
        done = other.until(*TERMINAL)[-1]["response"]
        assert done["usage"]["output_tokens"] == 400
        other.close()
        a.close()
    finally:
        s.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's own use of `websockets`
def test_openai_sdk_responses_websocket_client(srv):
    """OpenAI's own client for Responses WebSocket mode (`client.responses.connect`) parses every event."""
    import openai

    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", timeout=60)
    with client.responses.connect(max_retries=0) as conn:
        results = []
        for text in ("hello", "and again"):
            conn.send({"type": "response.create", "model": "tiny", "input": text, "max_output_tokens": 4})
            deltas = []
            for ev in conn:
                if ev.type == "response.output_text.delta":
                    deltas.append(ev.delta)
                if ev.type in ("response.completed", "response.incomplete", "error"):
                    break
            assert ev.type == "response.incomplete" and ev.response.output_text == "".join(deltas)
            results.append(ev.response)
    assert results[0].usage.output_tokens == 4
    assert results[1].usage.input_tokens_details.cached_tokens >= results[0].usage.input_tokens
    assert results[1].previous_response_id == results[0].id
