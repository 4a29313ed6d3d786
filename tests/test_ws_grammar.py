"""pairline's `grammar` over the WebSocket session protocol, end to end: a pairline server's
session (tiny random-weight engine, greedy), `pairline route` in front of it (relayed as a session,
and as Chat Completions to an OpenAI-compatible backend), a backend that does not take a grammar,
and the assistant's RemoteClient."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from pairline.assistant.client import RemoteClient
from pairline.engine.constraint import Grammar
from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError
from pairline.router.app import RouterThread
from pairline.router.config import parse_config
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from tests.engine_helpers import tiny_engine
from tests.ws_helpers import SessionClient

pytestmark = pytest.mark.timeout(120)

TERMINAL = ("response.completed", "response.incomplete", "response.cancelled", "response.failed")
REGEX = r"[a-z]{1,8}-[0-9]{2}"
RE_GRAMMAR = {"kind": "regex", "source": REGEX}
LARK = 'start: WORD (", " WORD)~2\nWORD: "alpha" | "beta" | "gamma"\n'
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["colour", "n"],
          "properties": {"colour": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "minimum": 0,
                                                                            "maximum": 99}}}
ASK = "Describe a traffic light."


@pytest.fixture(scope="module")
def srv(smollm2_gguf):
    s = ServerThread(tiny_engine(Tokenizer.load(smollm2_gguf), n_ctx=1024),
                     ServerConfig(max_sessions=6, max_message_bytes=64 * 1024)).__enter__()
    yield s
    s.stop()


class Client(SessionClient):
    def turn(self, input, **kw) -> list[dict]:
        """Every event of one response.create, up to its final event or an error before any response."""
        self.send(type="response.create", input=input, **kw)
        events = self.until(*TERMINAL, "error")
        if events[-1]["type"] == "error" and events[0]["type"] == "response.created":
            events.append(self.recv())  # a response that had started ends with response.failed
        return events


def answer(events: list[dict]) -> str:
    final = events[-1]
    assert final["type"] == "response.completed", final
    text = final["response"]["output_text"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
    return text


# ---------------------------------------------------------------- a server's session


def test_session_answers_match_their_grammar(srv):
    c = Client(srv.ws_url)
    plain = answer_or_cut(c.turn(ASK, max_output_tokens=12))
    assert not re.fullmatch(REGEX, plain)  # so what follows measures the grammar, not the model
    first = c.turn(ASK, max_output_tokens=40, grammar=RE_GRAMMAR)
    assert re.fullmatch(REGEX, answer(first)), first[-1]["response"]["output_text"]
    # later turns of the same session: each under its own grammar, the history reused
    lark = c.turn("Three words:", max_output_tokens=40, grammar={"kind": "lark", "source": LARK},
                  previous_response_id=first[-1]["response"]["id"])
    assert re.fullmatch(r"(alpha|beta|gamma)(, (alpha|beta|gamma)){2}", answer(lark))
    assert lark[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] > 0
    schema = c.turn("JSON:", max_output_tokens=60, grammar={"kind": "json_schema", "source": SCHEMA})
    value = json.loads(answer(schema))
    assert set(value) == {"colour", "n"} and value["colour"] in ("red", "green", "blue")
    # and a turn without one is free again
    again = c.turn(ASK, max_output_tokens=12)
    assert not re.fullmatch(REGEX, answer_or_cut(again))
    c.close()


def test_a_steered_responses_successor_keeps_its_grammar(srv):
    c = Client(srv.ws_url)
    long = {"kind": "regex", "source": "[a-z]{400}"}  # no early end: long enough to be steered
    c.send(type="response.create", input=ASK, max_output_tokens=600, grammar=long)
    c.until("response.output_text.delta")
    c.send(type="response.steer", input="Shorter.")
    steered = c.until(*TERMINAL)[-1]["response"]
    assert steered["incomplete_details"] == {"reason": "steered"} and re.fullmatch("[a-z]*", steered["output_text"])
    successor = c.until(*TERMINAL)
    assert successor[0]["response"]["previous_response_id"] == steered["id"]
    assert re.fullmatch("[a-z]{400}", answer(successor))
    c.close()


def answer_or_cut(events: list[dict]) -> str:
    assert events[-1]["type"] in ("response.completed", "response.incomplete"), events[-1]
    return events[-1]["response"]["output_text"]


@pytest.mark.parametrize("grammar, code, needle", [
    ({"kind": "regex", "source": "(a"}, "invalid_value", "regex grammar is invalid"),
    ({"kind": "lark", "source": "start: undefined_rule\n"}, "invalid_value", "undefined_rule"),
    ({"kind": "yaml", "source": "a: b"}, "invalid_value", "yaml"),
    ({"kind": "regex", "source": ""}, "invalid_value", "empty"),
    ({"kind": "regex", "source": "a", "prefix": "a"}, "unknown_parameter", "prefix"),
    ("start: /a/", "invalid_type", "grammar"),
])
def test_bad_grammar_is_an_error_event_and_nothing_runs(srv, grammar, code, needle):
    c = Client(srv.ws_url)
    c.send(type="response.create", input=ASK, grammar=grammar, event_id="ev_bad")
    err = c.recv()
    assert err["type"] == "error" and err["status"] == 400, err
    e = err["error"]
    assert e["type"] == "invalid_request_error" and e["code"] == code and e["event_id"] == "ev_bad"
    assert e["param"] == ("prefix" if code == "unknown_parameter" else "grammar")
    assert needle in e["message"] and "Traceback" not in e["message"]
    # nothing was queued: the next event is the next request's, and the session works as before
    events = c.turn(ASK, max_output_tokens=40, grammar=RE_GRAMMAR)
    assert events[0]["type"] == "response.created" and events[0]["response"]["previous_response_id"] is None
    assert re.fullmatch(REGEX, answer(events))
    c.close()


# ---------------------------------------------------------------- through `pairline route`


def route(srv: ServerThread, realtime: str = "", deep: str = "", deep_kind: str = "pairline") -> RouterThread:
    deep_url = srv.base_url + ("/v1" if deep_kind == "openai" else "")
    cfg = parse_config(f"""
[tiers.realtime]
backends = [{{ kind = "pairline", url = "{srv.base_url}", name = "rt" {realtime} }}]
[tiers.deep]
backends = [{{ kind = "{deep_kind}", url = "{deep_url}", model = "m", name = "deep" {deep} }}]
""", "t.toml")
    return RouterThread(cfg).__enter__()


def test_router_relays_the_grammar_to_pairline_backends(srv):
    # deep: the same server, spoken to as Chat Completions (an `openai` backend takes no grammar
    # unless its config says so: this one is pairline's)
    r = route(srv, deep=", grammar = true", deep_kind="openai")
    try:
        c = Client(r.ws_url)
        for mode in ("realtime", "deep"):  # a relayed session, then an emulated one (HTTP body)
            events = c.turn(ASK, max_output_tokens=40, grammar=RE_GRAMMAR, mode=mode)
            assert re.fullmatch(REGEX, answer(events)), events[-1]
            assert events[-1]["pairline"]["backend"] == ("rt" if mode == "realtime" else "deep")
        # a grammar the backend cannot compile: its error, and the router's session goes on
        for mode in ("realtime", "deep"):
            c.send(type="response.create", input=ASK, mode=mode, event_id="ev_bad",
                   grammar={"kind": "lark", "source": "start: undefined_rule\n"})
            err = c.recv()
            assert err["type"] == "error" and err["error"]["code"] == "invalid_value", err
            assert err["error"]["param"] == "grammar" and "undefined_rule" in err["error"]["message"]
            assert err["error"]["event_id"] == "ev_bad"
            assert re.fullmatch(REGEX, answer(c.turn(ASK, max_output_tokens=40, grammar=RE_GRAMMAR, mode=mode)))
        c.close()
        # HTTP through the router: the body goes through with its grammar
        res = httpx.post(r.base_url + "/v1/chat/completions", timeout=60, json={
            "model": "x", "messages": [{"role": "user", "content": ASK}], "max_tokens": 40, "grammar": RE_GRAMMAR})
        assert res.status_code == 200 and re.fullmatch(REGEX, res.json()["choices"][0]["message"]["content"])
        assert r.router.outstanding == {"realtime": 0, "deep": 0}
    finally:
        r.stop()


def test_openai_backends_take_no_grammar_unless_told():
    from pairline.router.config import parse_config as parse

    cfg = parse("""
[tiers.realtime]
backends = [{ kind = "openai", url = "http://127.0.0.1:9/v1", model = "m" }]
[tiers.deep]
backends = [{ kind = "pairline", url = "http://127.0.0.1:9" }]
""", "t.toml")
    assert cfg.tiers["realtime"].backends[0].grammar is False  # vLLM would ignore it: never unconstrained
    assert cfg.tiers["deep"].backends[0].grammar is True


def test_backend_without_grammar_refuses_clearly(srv):
    # the real-time backend does not take a grammar: the deep one serves the turn (failover)
    r = route(srv, realtime=", grammar = false")
    try:
        c = Client(r.ws_url)
        events = c.turn(ASK, max_output_tokens=40, grammar=RE_GRAMMAR, mode="realtime")
        assert re.fullmatch(REGEX, answer(events))
        assert events[-1]["pairline"]["backend"] == "deep" and events[-1]["pairline"]["failover"] == "realtime->deep"
        assert answer_or_cut(c.turn(ASK, max_output_tokens=6, mode="realtime"))  # no grammar: served as before
        c.close()
    finally:
        r.stop()
    # no backend takes one: an error, never an unconstrained answer
    r = route(srv, realtime=", grammar = false", deep=", grammar = false")
    try:
        c = Client(r.ws_url)
        c.send(type="response.create", input=ASK, max_output_tokens=40, grammar=RE_GRAMMAR, event_id="ev_g",
               mode="realtime")
        err = c.recv()
        assert err["type"] == "error" and err["status"] == 400, err
        e = err["error"]
        assert e["code"] == "unsupported_parameter" and e["param"] == "grammar" and e["event_id"] == "ev_g"
        assert "grammar = false" in e["message"]
        events = c.turn(ASK, max_output_tokens=6, mode="realtime")  # the session goes on: served without one
        assert events[0]["type"] == "response.created" and answer_or_cut(events)
        c.close()
        res = httpx.post(r.base_url + "/v1/chat/completions", timeout=60, json={
            "model": "x", "messages": [{"role": "user", "content": ASK}], "max_tokens": 8, "grammar": RE_GRAMMAR,
            "mode": "realtime"})
        assert res.status_code >= 400 and "grammar = false" in res.json()["error"]["message"], res.text
        m = r.router.metrics
        assert m.get("requests_finished_total", 'tier="realtime",outcome="errored"') == 2
        assert r.router.outstanding == {"realtime": 0, "deep": 0}
    finally:
        r.stop()


# ---------------------------------------------------------------- the assistant's RemoteClient


def test_remote_client_streams_a_constrained_answer(srv):
    client = RemoteClient(srv.ws_url)
    assert client.supports_grammar
    messages = [{"role": "user", "content": ASK}]
    reply = client.stream(messages, max_tokens=40, grammar=Grammar("regex", REGEX))
    deltas = list(reply)
    assert re.fullmatch(REGEX, reply.text) and "".join(deltas) == reply.text and reply.finish_reason == "stop"
    # the next turn continues the same session, under another grammar
    ws = client.ws
    messages += [{"role": "assistant", "content": reply.text}, {"role": "user", "content": "Three words:"}]
    second = client.stream(messages, max_tokens=40, grammar=Grammar("lark", LARK)).run()
    assert client.ws is ws and re.fullmatch(r"(alpha|beta|gamma)(, (alpha|beta|gamma)){2}", second.text)
    # a prefix cannot be sent; a grammar that does not compile is the server's one-line error
    with pytest.raises(PairlineError, match="no assistant prefix"):
        client.stream(messages, max_tokens=4, grammar=Grammar("regex", REGEX, prefix="ab"))
    with pytest.raises(PairlineError, match="invalid_value.*regex grammar is invalid"):
        client.stream([{"role": "user", "content": ASK}], max_tokens=4, grammar=Grammar("regex", "(a")).run()
    again = client.stream([{"role": "user", "content": ASK}], max_tokens=40, grammar=Grammar("regex", REGEX)).run()
    assert re.fullmatch(REGEX, again.text)
    client.close()
