"""The router in front of a real third-party engine: llama.cpp's own OpenAI-compatible server
(`python -m llama_cpp.server`, from llama-cpp-python[server]) on SmolLM2-135M, as an `openai`-kind
backend of the real-time tier, with pairline's in-process engine on the same GGUF as the deep tier,
configured as docs/scaling.md says: HTTP (whole and SSE), a WebSocket session whose history the
router holds and resends, health checks (it has no /health), streams that wait their turn, a backend
that answers 429, and the server killed with SIGKILL mid-stream (failover to the deep tier). Also
llama.cpp's default, a new request ending the answer streaming, and how the router reports that.
One llama.cpp server is shared by the module; the interrupting one and the killed one are apart.
Two tests here found router bugs, since fixed: [DONE] sent before the error chunk of a cut SSE
stream, and WebSocket turns to openai backends without the protocol's sampling defaults."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from websockets.sync.client import connect

from tests.test_router_live import (
    MODEL,
    TERMINAL,
    _key_owned_by,
    assert_none_lost,
    free_port,
    router,
    sdk,
    stop,
    turn,
    until,
    ws_client,
)

pytestmark = pytest.mark.slow

ANSWERED = TERMINAL[:2]  # response.completed, response.incomplete
FINAL = ("response.completed", "response.incomplete", "response.failed")  # past an error event
KEY = "unused"  # test_router_live's router() gives the router DEEP_KEY=unused


def start_llamacpp(gguf: Path, log_dir: Path, interrupt: bool = False):
    """llama.cpp's server on a free loopback port (one thread: two shared cores), the command
    `pairline bench fim` runs it with; (process, API base). Skips, saying why, where it is not installed.
    `interrupt`: its --interrupt_requests, off as docs/scaling.md runs it behind the router. It asks
    for KEY (what the router's DEEP_KEY holds in these tests)."""
    from pairline.bench.common import start_process
    from pairline.bench.peers import llamacpp_server_command, llamacpp_server_missing

    missing = llamacpp_server_missing()
    if missing:
        pytest.skip(missing)
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    cmd = llamacpp_server_command(gguf, port, n_ctx=1024, threads=1, interrupt=interrupt) + ["--api_key", KEY]
    proc = start_process(cmd, root + "/openapi.json", "llama_cpp.server", log_dir / f"llamacpp-{port}.log",
                         timeout=60)
    return proc, root + "/v1"


def llamacpp_backend(api_base: str, name: str = "llamacpp") -> str:
    """The backend table docs/scaling.md gives for llama.cpp's server. Its /v1/models takes the model's
    lock: a check there ends the answer streaming (interrupt on) or waits for it (off: the check
    times out, the backend is marked down); its OpenAI schema is served without the lock."""
    return (f'{{ kind = "openai", url = "{api_base}", model = "{MODEL}", name = "{name}", api_key_env = "DEEP_KEY", '
            f'health_path = "/openapi.json", prediction = false }}')


@pytest.fixture(scope="module")
def llamacpp(smollm2_gguf, tmp_path_factory):
    proc, api_base = start_llamacpp(smollm2_gguf, tmp_path_factory.mktemp("llamacpp"))
    try:
        yield api_base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def routed(llamacpp, smollm2_gguf):
    """realtime: llama.cpp's server; deep: pairline's engine in-process on the same GGUF."""
    r = router(f"""
[router]
health_interval_s = 0.3
[tiers.realtime]
backends = [{llamacpp_backend(llamacpp)}]
[[tiers.deep.backends]]
kind = "inprocess"
model = "{smollm2_gguf}"
ctx = 1024
max_sessions = 4
runtime = "llamacpp"
name = "local"
""")
    try:
        yield r
    finally:
        r.stop()


def metric(r, name: str, labels: str) -> float | None:
    m = re.search(rf"^pairline:router_{name}\{{{re.escape(labels)}\}} (\S+)$",
                  httpx.get(r.base_url + "/metrics", timeout=5).text, re.M)
    return float(m[1]) if m else None


def text_of(events: list[dict]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


# ---------------------------------------------------------------- HTTP


@pytest.mark.timeout(120)
def test_http_chat_and_completions_through_llamacpp(routed):
    client = sdk(routed)
    msgs = [{"role": "user", "content": "Say hello."}]
    raw = client.chat.completions.with_raw_response.create(
        model="anything", messages=msgs, max_tokens=8, temperature=0,
        prediction={"type": "content", "content": "Hello"},  # prediction = false: not sent to llama.cpp
        extra_body={"mode": "realtime"})
    assert raw.headers["x-pairline-tier"] == "realtime" and raw.headers["x-pairline-backend"] == "llamacpp"
    assert "x-pairline-failover" not in raw.headers
    body = raw.parse()
    assert body.choices[0].message.content and body.usage.prompt_tokens > 0
    assert body.model == MODEL  # llama.cpp echoes the name it was sent: the configured one, not the client's
    assert body.model_extra["pairline"] == {"tier": "realtime", "backend": "llamacpp", "mode": "realtime",
                                            "reason": "mode", "failover": None, "attempts": 1}
    comp = client.completions.create(model="anything", prompt="def add(a, b):", max_tokens=6, temperature=0,
                                     extra_body={"mode": "realtime"})
    assert comp.choices[0].text and comp.model_extra["pairline"]["backend"] == "llamacpp"
    too_long = [{"role": "user", "content": "hi " * 1200}]  # over llama.cpp's n_ctx of 1024
    with pytest.raises(openai.BadRequestError) as info:  # llama.cpp's own 400 comes back as it said it, not retried
        client.chat.completions.create(model="anything", messages=too_long, max_tokens=4,
                                       extra_body={"mode": "realtime"})
    assert info.value.body["code"] == "context_length_exceeded"
    assert info.value.response.headers["x-pairline-backend"] == "llamacpp"
    assert_none_lost(routed)


@pytest.mark.timeout(120)
def test_sse_stream_through_llamacpp(routed):
    body = {"model": "anything", "messages": [{"role": "user", "content": "Count from 1 to 10."}],
            "max_tokens": 12, "temperature": 0, "stream": True, "mode": "realtime"}
    with httpx.stream("POST", routed.base_url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["x-pairline-backend"] == "llamacpp"
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert sum(1 for p in pieces if p) >= 2  # streamed, not one lump
    final = [c for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
    assert len(final) == 1 and final[0] is chunks[-1] and final[0]["choices"][0]["finish_reason"] == "length"
    assert final[0]["pairline"] == {"tier": "realtime", "backend": "llamacpp", "mode": "realtime", "reason": "mode",
                                    "failover": None, "attempts": 1}
    assert not any("pairline" in c for c in chunks[:-1])
    # the router measured llama.cpp's first token
    assert metric(routed, "backend_ttft_ewma_seconds", 'tier="realtime",backend="llamacpp"') > 0
    assert_none_lost(routed)


# ---------------------------------------------------------------- WebSocket


@pytest.mark.timeout(120)
def test_websocket_session_history_is_resent_to_llamacpp(routed):
    """llama.cpp speaks only HTTP: the router holds the conversation and resends it each turn. The
    second answer knows what only the first turn said; the same question in a fresh session does not."""
    before = metric(routed, "backend_requests_total", 'tier="realtime",backend="llamacpp"') or 0
    ask = {"max_output_tokens": 12, "temperature": 0, "mode": "realtime"}  # greedy
    ws = ws_client(routed)
    first = turn(ws, input="My secret word is banana. Reply with OK.", **ask)
    assert first[0]["type"] == "response.created" and first[0]["pairline"]["backend"] == "llamacpp"
    assert first[-1]["type"] in ANSWERED and first[-1]["response"]["output_text"] == text_of(first)
    r1 = first[-1]["response"]
    second = turn(ws, input="What is my secret word?", previous_response_id=r1["id"], **ask)
    assert second[-1]["type"] in ANSWERED and second[-1]["pairline"]["backend"] == "llamacpp"
    assert second[-1]["response"]["previous_response_id"] == r1["id"]
    assert "banana" in text_of(second).lower(), text_of(second)
    ws.close()
    fresh = ws_client(routed)
    alone = turn(fresh, input="What is my secret word?", **ask)
    assert alone[-1]["type"] in ANSWERED and "banana" not in text_of(alone).lower()
    fresh.close()
    assert metric(routed, "backend_requests_total", 'tier="realtime",backend="llamacpp"') == before + 3
    assert_none_lost(routed)


# ---------------------------------------------------------------- health


@pytest.mark.timeout(60)
def test_health_checks(routed, llamacpp):
    root = llamacpp.removesuffix("/v1")
    assert httpx.get(root + "/health").status_code == 404  # why the default health_path will not do
    assert httpx.get(llamacpp + "/models").status_code == 401  # it wants its key: the router's requests carry it
    assert httpx.get(root + "/openapi.json").status_code == 200  # the health check needs none
    assert metric(routed, "backend_healthy", 'tier="realtime",backend="llamacpp"') == 1
    assert metric(routed, "backend_circuit_state", 'tier="realtime",backend="llamacpp"') == 0
    health = httpx.get(routed.base_url + "/health").json()
    assert health["status"] == "ok"
    assert health["tiers"]["realtime"] == [{**health["tiers"]["realtime"][0], "name": "llamacpp", "kind": "openai",
                                            "healthy": True, "circuit": "closed", "model": MODEL}]


def stream_lines(r, max_tokens: int, out: list) -> None:
    """One SSE chat stream through the router; its `data:` lines are appended to `out`."""
    body = {"model": "anything", "messages": [{"role": "user", "content": "Write a long story about a robot."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "mode": "realtime"}
    with httpx.stream("POST", r.base_url + "/v1/chat/completions", json=body, timeout=60) as resp:
        out.extend(ln for ln in resp.iter_lines() if ln)


def whole(lines: list[str]) -> bool:
    """The stream ended with its final chunk, then [DONE], and carried no error."""
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    return (lines[-1] == "data: [DONE]" and not any("error" in c for c in chunks)
            and chunks[-1]["choices"][0]["finish_reason"] == "length")


@pytest.mark.timeout(120)
def test_streams_wait_their_turn_and_health_checks_do_not_cut_them(routed):
    """Two streams at once, while health checks run every 0.3 s: llama.cpp (--interrupt_requests
    false) serves them one after the other, each whole, and stays healthy with its circuit closed."""
    first, second = [], []
    a = threading.Thread(target=stream_lines, args=(routed, 40, first))
    a.start()
    deadline = time.monotonic() + 30
    while not first and time.monotonic() < deadline:  # the first is streaming...
        time.sleep(0.02)
    stream_lines(routed, 8, second)  # ...when the second comes
    a.join(60)
    assert whole(first) and whole(second), (first[-3:], second[-3:])
    assert metric(routed, "backend_healthy", 'tier="realtime",backend="llamacpp"') == 1
    assert metric(routed, "backend_circuit_state", 'tier="realtime",backend="llamacpp"') == 0
    assert metric(routed, "backend_errors_total", 'tier="realtime",backend="llamacpp"') is None
    assert_none_lost(routed)


# ---------------------------------------------------------------- llama.cpp's default: a new request cuts the stream


@pytest.fixture(scope="module")
def interrupting(smollm2_gguf, tmp_path_factory):
    """llama.cpp's server as it starts by default (--interrupt_requests true), behind its own router."""
    proc, api_base = start_llamacpp(smollm2_gguf, tmp_path_factory.mktemp("interrupting"), interrupt=True)
    r = None
    try:
        r = router(f"[tiers.realtime]\nbackends = [{llamacpp_backend(api_base)}]\n"
                   f"[tiers.deep]\nbackends = [{llamacpp_backend(api_base, 'deep')}]\n")
        yield r, api_base
    finally:
        if r is not None:
            r.stop()
        stop(proc)


def cut_short(api_base: str) -> None:
    """Another request to llama.cpp: it ends the answer streaming (with `[DONE]`, no final chunk)."""
    threading.Thread(target=httpx.get, args=(api_base + "/models",), daemon=True,
                     kwargs={"timeout": 30, "headers": {"Authorization": f"Bearer {KEY}"}}).start()


LONG = "Write a very long story about a robot who learns to paint."


@pytest.mark.timeout(60)
def test_an_answer_llamacpp_cuts_short_is_failed_on_websocket(interrupting):
    r, api_base = interrupting
    ws = ws_client(r)
    ws.send(json.dumps({"type": "response.create", "input": LONG, "max_output_tokens": 300, "temperature": 0,
                        "mode": "realtime"}))
    until(ws, "response.output_text.delta")
    cut_short(api_base)
    evs = until(ws, *FINAL)
    assert [e["type"] for e in evs[-2:]] == ["error", "response.failed"], evs[-2:]
    assert evs[-2]["error"]["code"] == "backend_failed" and "without its final chunk" in evs[-2]["error"]["message"]
    assert evs[-1]["response"]["output_text"]  # what came, marked failed, not "completed"
    assert turn(ws, input="Say hi.", max_output_tokens=4, temperature=0, mode="realtime")[-1]["type"] in ANSWERED
    ws.close()
    assert_none_lost(r)


@pytest.mark.timeout(60)
def test_an_answer_llamacpp_cuts_short_is_an_error_on_sse(interrupting):
    r, api_base = interrupting
    stream = sdk(r).chat.completions.create(model="anything", messages=[{"role": "user", "content": LONG}],
                                            max_tokens=300, temperature=0, stream=True,
                                            extra_body={"mode": "realtime"})
    it = iter(stream)
    while not next(it).choices[0].delta.content:
        pass
    cut_short(api_base)
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for _ in it:
            pass


# ---------------------------------------------------------------- a backend that answers 429


class Busy:
    """An OpenAI-compatible backend that answers every POST with 429 (llama.cpp's server never
    does: it queues) and keeps each request body it got."""

    def __init__(self):
        bodies: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                out = json.dumps({"error": {"message": "busy", "type": "rate_limit_error",
                                            "code": "rate_limit_exceeded"}}).encode()
                self.send_response(429)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.bodies = bodies
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def busy_first(llamacpp):
    """A router whose real-time tier tries the 429 backend first (never measured, listed first: the
    tie goes to it), then llama.cpp; the deep tier is the 429 backend alone; no failover."""
    busy = Busy()
    b = f'{{ kind = "openai", url = "{busy.url}", model = "busy-model", health_path = "", name = "%s" }}'
    r = router(f"""
[router]
failover = false
breaker_failures = 1
[tiers.realtime]
backends = [{b % "busy"}, {llamacpp_backend(llamacpp)}]
[tiers.deep]
backends = [{b % "busy-deep"}]
""")
    try:
        yield r, busy
    finally:
        r.stop()
        busy.stop()


@pytest.mark.timeout(120)
def test_429_moves_the_request_to_llamacpp_and_passes_through_when_no_one_else_can(busy_first):
    """A 429 is load, not breakage: the request goes to the next backend unseen, the 429 backend's
    circuit stays closed (one counted failure would open it here). Where every backend answers 429
    the client gets 429 rate_limit_exceeded with Retry-After. The WebSocket turns go the same way,
    and what the 429 backend was sent shows the router resending the session's history."""
    r, busy = busy_first
    client = sdk(r)
    msgs = [{"role": "user", "content": "Say hello."}]
    raw = client.chat.completions.with_raw_response.create(model="anything", messages=msgs, max_tokens=6,
                                                           extra_body={"mode": "realtime"})
    assert raw.headers["x-pairline-backend"] == "llamacpp" and "x-pairline-failover" not in raw.headers
    assert raw.parse().model_extra["pairline"]["attempts"] == 2 and len(busy.bodies) == 1
    chunks = list(client.chat.completions.create(model="anything", messages=msgs, max_tokens=6, stream=True,
                                                 extra_body={"mode": "realtime"}))
    assert chunks[-1].model_extra["pairline"]["backend"] == "llamacpp"
    assert chunks[-1].model_extra["pairline"]["attempts"] == 2 and len(busy.bodies) == 2
    with pytest.raises(openai.RateLimitError) as info:  # the deep tier: no one else to ask
        client.chat.completions.create(model="anything", messages=msgs, max_tokens=6, extra_body={"mode": "deep"})
    assert info.value.response.headers["retry-after"] == "1" and info.value.body["code"] == "rate_limit_exceeded"
    assert "busy-deep" in info.value.body["message"]

    # a WebSocket session has a key (affinity): one the ring gives to the 429 backend, so it is asked first
    ws = connect(r.ws_url, open_timeout=20, close_timeout=5,
                 additional_headers={"x-pairline-session": _key_owned_by(r, "realtime", "busy")}).__enter__()
    assert json.loads(ws.recv(timeout=20))["type"] == "session.created"
    ask = {"max_output_tokens": 8, "temperature": 0, "mode": "realtime"}
    first = turn(ws, input="My name is Ada.", **ask)
    assert first[-1]["type"] in ANSWERED and first[-1]["pairline"]["backend"] == "llamacpp"
    assert first[-1]["pairline"]["attempts"] == 2
    second = turn(ws, input="What is my name?", **ask)
    assert second[-1]["type"] in ANSWERED and second[-1]["pairline"]["attempts"] == 2
    assert busy.bodies[-1]["messages"] == [{"role": "user", "content": "My name is Ada."},
                                           {"role": "assistant", "content": text_of(first)},
                                           {"role": "user", "content": "What is my name?"}]
    err = turn(ws, input="hi", max_output_tokens=4, mode="deep")[-1]
    assert err["type"] == "error" and err["status"] == 429 and err["error"]["code"] == "rate_limit_exceeded"
    assert turn(ws, input="Still there?", **ask)[-1]["type"] in ANSWERED  # the connection stays usable
    ws.close()

    health = {b["name"]: b for b in httpx.get(r.base_url + "/health").json()["tiers"]["realtime"]}
    assert health["busy"]["circuit"] == "closed" and health["llamacpp"]["circuit"] == "closed"
    assert metric(r, "backend_errors_total", 'tier="realtime",backend="busy"') is None  # never counted as broken
    assert metric(r, "retries_total", 'tier="realtime"') == 5
    led = assert_none_lost(r)
    assert led["realtime"] == {"accepted": 5, "completed": 5} and led["deep"] == {"accepted": 2, "errored": 2}


@pytest.mark.timeout(60)
def test_websocket_turn_sends_the_protocols_sampling_defaults(busy_first):
    r, busy = busy_first
    ws = ws_client(r)
    # no temperature, no max_output_tokens: the protocol's defaults. The deep tier is the 429 backend alone,
    # which keeps what it was sent (and llama.cpp does not get an unbounded request)
    assert turn(ws, input="Say hi.", mode="deep")[-1]["error"]["code"] == "rate_limit_exceeded"
    ws.close()
    sent = busy.bodies[-1]
    assert sent.get("temperature") == 0.0 and sent.get("max_tokens") == 1024, sent


# ---------------------------------------------------------------- llama.cpp killed


@pytest.mark.timeout(120)
def test_llamacpp_killed_mid_stream_fails_over_to_the_deep_tier(routed, smollm2_gguf, tmp_path):
    """A second llama.cpp server, SIGKILLed while a WebSocket turn streams from it: the turn fails
    visibly (backend_failed, response.failed with the text so far), the router marks it down, and
    the next requests go to the deep tier (pairline, the in-process engine the module's router
    serves), marked realtime->deep; the session goes on there with its history."""
    victim, api_base = start_llamacpp(smollm2_gguf, tmp_path)
    r = None
    try:
        local = routed.router.tiers["deep"][0].root  # the in-process engine's own server
        r = router(f"""
[router]
health_interval_s = 0.3
breaker_failures = 2
retries = 1
[tiers.realtime]
backends = [{llamacpp_backend(api_base, "victim")}]
[tiers.deep]
backends = [{{ kind = "pairline", url = "{local}", name = "deep" }}]
""")
        client = sdk(r)
        ws = ws_client(r)
        ask = {"max_output_tokens": 8, "temperature": 0, "mode": "realtime"}
        assert turn(ws, input="My secret word is banana.", **ask)[-1]["pairline"]["backend"] == "victim"
        ws.send(json.dumps({"type": "response.create", "input": "Write a very long story about a robot.",
                            "max_output_tokens": 400, "temperature": 0, "mode": "realtime"}))
        until(ws, "response.output_text.delta")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        t0 = time.monotonic()
        evs = until(ws, *FINAL)
        assert [e["type"] for e in evs[-2:]] == ["error", "response.failed"], evs[-3:]
        assert evs[-2]["error"]["code"] == "backend_failed" and "victim" in evs[-2]["error"]["message"]
        assert evs[-1]["response"]["output_text"]  # what was streamed, marked failed
        assert time.monotonic() - t0 < 15  # no hang

        raw = client.chat.completions.with_raw_response.create(
            model="anything", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
            extra_body={"mode": "realtime"})
        assert raw.headers["x-pairline-failover"] == "realtime->deep" and raw.headers["x-pairline-backend"] == "deep"
        assert raw.parse().model_extra["pairline"]["failover"] == "realtime->deep"
        chunks = list(client.chat.completions.create(model="anything", messages=[{"role": "user", "content": "Hi."}],
                                                     max_tokens=4, stream=True, extra_body={"mode": "realtime"}))
        assert chunks[-1].model_extra["pairline"]["failover"] == "realtime->deep"
        evs = turn(ws, input="What is my secret word?", **ask)  # the same session goes on, deep
        assert evs[0]["pairline"]["failover"] == "realtime->deep"
        assert evs[-1]["type"] in ANSWERED and evs[-1]["pairline"]["backend"] == "deep"
        ws.close()
        fresh = ws_client(r)  # the same question without the history, for comparison
        alone = turn(fresh, input="What is my secret word?", **ask)
        fresh.close()
        # the deep backend's new session got the conversation replayed
        assert evs[-1]["response"]["usage"]["input_tokens"] > alone[-1]["response"]["usage"]["input_tokens"] + 10

        deadline = time.monotonic() + 5
        while metric(r, "backend_healthy", 'tier="realtime",backend="victim"') != 0:
            assert time.monotonic() < deadline, "the killed server is still reported healthy"
            time.sleep(0.1)
        assert httpx.get(r.base_url + "/health").json()["status"] == "degraded"
        assert metric(r, "failovers_total", 'from="realtime",to="deep"') == 4
        led = assert_none_lost(r)  # a failed-over request counts on the tier it asked for
        assert led["realtime"] == {"accepted": 6, "completed": 5, "errored": 1}
    finally:
        if r is not None:
            r.stop()
        stop(victim)
