"""A hostile web page against the server and the router (issue 22, row 6), as the browser would send
it, to real servers on 127.0.0.1: a WebSocket from a foreign `Origin`, requests carrying a rebound
`Host`, and the CORS "simple" POSTs (text/plain, form, untyped) a page can send without asking.
Each is refused before a session opens or any work starts; what a local client sends still works."""

from __future__ import annotations

import base64
import json
import os
import re
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from pairline.engine.tokenizer import Tokenizer
from pairline.router.app import RouterThread
from pairline.router.config import parse_config
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from pairline.wire.guard import WebPolicy, host_of
from tests.engine_helpers import tiny_engine
from tests.security_helpers import router_toml, start_router, start_server

FOREIGN_ORIGINS = ["http://evil.example", "https://evil.example:8765", "null", "http://localhost.evil.example",
                   "http://127.0.0.1.nip.io:8765", "file://", "chrome-extension://abcdef"]
REBOUND_HOSTS = ["evil.example", "evil.example:{port}", "localhost.evil.example:{port}", "EVIL.example."]
CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


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


def sessions(target, expect: int | None = None) -> int:
    """Open sessions per /health; with `expect`, waits (briefly) for a closing one to be gone."""
    deadline = time.monotonic() + 5
    while True:
        n = httpx.get(target.base_url + "/health", timeout=10).json()["sessions"]
        if expect is None or n == expect or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def refusals(target, code: str) -> float:
    """How many refusals with `code` the target's /metrics counts (the server's error counter, the
    router's rejected-requests counter)."""
    text = httpx.get(target.base_url + "/metrics", timeout=10).text
    pat = rf'^pairline:(?:request_errors_total\{{[^}}]*code="{code}"[^}}]*\}}|router_requests_rejected_total' \
          rf'\{{tier="none",reason="{code}"\}}) (\S+)$'
    return sum(float(m[1]) for m in re.finditer(pat, text, re.M))


def denied_handshake(target, **kw) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as info:
        connect(target.ws_url, open_timeout=10, **kw).__enter__()
    resp = info.value.response
    return resp.status_code, json.loads(resp.body)["error"]


# ---------------------------------------------------------------- Origin


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
def test_foreign_origin_websocket_gets_no_session(target, origin):
    before = refusals(target, "forbidden_origin")
    status, err = denied_handshake(target, origin=origin)
    assert status == 403 and err["code"] == "forbidden_origin" and origin in err["message"]
    assert sessions(target, 0) == 0  # no session was ever opened
    assert refusals(target, "forbidden_origin") == before + 1


@pytest.mark.parametrize("origin", [None, "http://localhost:3000", "http://127.0.0.1:8765", "https://[::1]:9"])
def test_local_pages_and_non_browser_clients_still_open_sessions(target, origin):
    with connect(target.ws_url, open_timeout=10, origin=origin) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        assert sessions(target, 1) == 1


def test_foreign_origin_http_is_refused_before_any_work(target):
    r = httpx.post(target.base_url + "/v1/chat/completions", json=CHAT, headers={"Origin": "http://evil.example"},
                   timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"
    assert httpx.get(target.base_url + "/v1/models", headers={"Origin": "https://evil.example"}).status_code == 403


# ---------------------------------------------------------------- Host (DNS rebinding)


@pytest.mark.parametrize("host", REBOUND_HOSTS)
def test_rebound_host_is_refused_over_http_and_websocket(target, host):
    host = host.format(port=target.port)
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT),
                               ("GET", "/health", None), ("GET", "/metrics", None)):
        r = httpx.request(method, target.base_url + path, json=body, headers={"Host": host}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", (method, path)
    # the WebSocket handshake a rebound page would make: same origin as far as the browser knows
    key = base64.b64encode(os.urandom(16)).decode()
    r = httpx.get(target.base_url + "/v1/responses", timeout=10, headers={
        "Host": host, "Origin": f"http://{host}", "Connection": "Upgrade", "Upgrade": "websocket",
        "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert sessions(target, 0) == 0


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST.", "10.1.2.3"])
def test_loopback_names_and_addresses_are_served(target, host):
    r = httpx.get(target.base_url + "/v1/models", headers={"Host": host.format(port=target.port)}, timeout=10)
    assert r.status_code == 200 and r.json()["object"] == "list"


# ---------------------------------------------------------------- CORS simple requests


@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", None])
def test_simple_request_posts_are_refused(target, ctype):
    before = refusals(target, "unsupported_media_type")
    headers = {"Content-Type": ctype} if ctype else {}
    for path in ("/v1/chat/completions", "/v1/completions"):
        r = httpx.post(target.base_url + path, content=json.dumps(CHAT | {"prompt": "x"}).encode(), headers=headers,
                       timeout=30)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert refusals(target, "unsupported_media_type") == before + 2


def test_the_same_post_as_json_is_served(target):
    r = httpx.post(target.base_url + "/v1/chat/completions", content=json.dumps(CHAT).encode(), timeout=60,
                   headers={"Content-Type": "application/json; charset=utf-8", "Origin": "http://localhost:5173"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


# ---------------------------------------------------------------- a deliberate remote setup


def test_allowed_hosts_and_origins_are_configurable(tokenizer):
    cfg = ServerConfig(allowed_hosts=("box.lan",), allowed_origins=("https://app.example",))
    with ServerThread(tiny_engine(tokenizer, n_ctx=256), cfg) as s:
        assert httpx.get(s.base_url + "/health", headers={"Host": f"box.lan:{s.port}"}).status_code == 200
        assert httpx.get(s.base_url + "/health", headers={"Host": "other.lan"}).status_code == 400
        with connect(s.ws_url, open_timeout=10, origin="https://app.example") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        for origin in ("https://app.example:8443", "http://app.example", "https://evil.example"):
            assert denied_handshake(s, origin=origin)[0] == 403


def test_router_takes_allowed_hosts_from_its_config(srv):
    toml = router_toml(srv.base_url, 'allowed_hosts = ["gpu-box"]\nallowed_origins = ["https://ide.example"]')
    with RouterThread(parse_config(toml, "t.toml")) as r:
        assert httpx.get(r.base_url + "/health", headers={"Host": "gpu-box:1"}).status_code == 200
        assert httpx.get(r.base_url + "/health", headers={"Host": "evil.example"}).status_code == 400
        with connect(r.ws_url, open_timeout=10, origin="https://ide.example") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        assert denied_handshake(r, origin="https://evil.example")[0] == 403
    with pytest.raises(Exception, match="allowed_hosts: must be a list of strings"):
        parse_config(toml.replace('["gpu-box"]', '"gpu-box"'), "t.toml")


def test_policy_parsing():
    assert [host_of(h) for h in ("a.b:80", "[::1]:8765", "[::1]", "LocalHost.", "a:b:c", "[::1]x", "a:")] == [
        "a.b", "::1", "::1", "localhost", None, None, "a"]
    p = WebPolicy.build("0.0.0.0", ["Box.Lan:8765"], ["HTTPS://App.Example:443/path"])
    assert p.hosts == {"box.lan"} and p.origins == {"https://app.example"}
    assert WebPolicy.build("box.lan").host_ok("box.lan:1") and not WebPolicy.build("::").host_ok("box.lan")
    assert WebPolicy.build(allow_hosts=["*"]).host_ok("anything.example")
    assert WebPolicy.build(allow_origins=["*"]).origin_ok("null")
