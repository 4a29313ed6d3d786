"""JSON nested 100,000 deep, and deep enough to pass json.loads but not json.dumps (issue 22, row 8),
sent to real servers on 127.0.0.1: the server and the router answer with an `error` event (the
WebSocket stays usable) or a 400, never a RecursionError, a dropped connection or a 500."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from websockets.sync.client import connect

from pairline.engine.tokenizer import Tokenizer
from pairline.wire.protocol import MAX_JSON_DEPTH, ProtocolError, parse_json
from tests.security_helpers import start_router, start_server

TERMINAL = ("response.completed", "response.incomplete", "response.cancelled", "response.failed")


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# raw texts: whole messages, and a valid event with a deep field (the field is echoed back if accepted)
DEEP = {
    "array-100k": nested(100_000),
    "object-100k": deep_object(100_000),
    "create-metadata-100k": '{"type": "response.create", "input": "hi", "metadata": ' + deep_object(100_000) + "}",
    "create-metadata-900": '{"type": "response.create", "input": "hi", "metadata": ' + deep_object(900) + "}",
    "create-input-100k": '{"type": "response.create", "input": ' + nested(100_000) + "}",
}
HTTP_DEEP = {
    "array-100k": nested(100_000),
    "messages-100k": '{"model": "x", "messages": [{"role": "user", "content": ' + nested(100_000) + "}]}",
    "metadata-900": '{"model": "x", "messages": [{"role": "user", "content": "hi"}], "metadata": '
                    + deep_object(900) + "}",
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.load(smollm2_gguf)


@pytest.fixture(scope="module")
def srv(tokenizer):
    s = start_server(tokenizer)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def router(srv):
    r = start_router(srv.base_url)
    yield r
    r.stop()


@pytest.fixture(params=["server", "router"])
def target(request, srv, router):
    return srv if request.param == "server" else router


@pytest.fixture
def no_tracebacks(caplog):
    """Nothing logged a traceback: pairline's loggers, and uvicorn's (which does not propagate),
    where an exception escaping the app would be reported."""
    caplog.set_level(logging.INFO)
    uv = logging.getLogger("uvicorn.error")
    uv.addHandler(caplog.handler)
    try:
        yield
    finally:
        uv.removeHandler(caplog.handler)
    for rec in caplog.records:
        assert rec.exc_info is None and "RecursionError" not in rec.getMessage(), rec.getMessage()


@pytest.mark.parametrize("name", list(DEEP))
def test_deep_json_over_websocket_is_an_error_event_and_the_session_lives(target, name, no_tracebacks):
    with connect(target.ws_url, open_timeout=10, close_timeout=5, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(DEEP[name])
        ev = json.loads(ws.recv(timeout=30))
        assert ev["type"] == "error" and ev["error"]["code"] == "invalid_json", ev
        assert "nests deeper than" in ev["error"]["message"]
        # the same connection still works: a normal turn completes
        ws.send(json.dumps({"type": "response.create", "input": "hi", "max_output_tokens": 2,
                            "metadata": {"k": "v"}}))
        while (ev := json.loads(ws.recv(timeout=60)))["type"] not in TERMINAL + ("error",):
            pass
        assert ev["type"] == "response.incomplete" and ev["response"]["metadata"] == {"k": "v"}


@pytest.mark.parametrize("name", list(HTTP_DEEP))
def test_deep_json_over_http_is_a_400(target, name, no_tracebacks):
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = httpx.post(target.base_url + path, content=HTTP_DEEP[name].encode(), timeout=30,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_json"
    ok = httpx.post(target.base_url + "/v1/chat/completions", timeout=60,
                    json={"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200


def test_parse_json_limits():
    assert parse_json(nested(MAX_JSON_DEPTH), "x") is not None
    for text in (nested(MAX_JSON_DEPTH + 1), nested(10**6), deep_object(MAX_JSON_DEPTH + 1)):
        with pytest.raises(ProtocolError, match="nests deeper") as info:
            parse_json(text, "x")
        assert info.value.code == "invalid_json" and info.value.status == 400
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse_json(b"\xff{", "x")
