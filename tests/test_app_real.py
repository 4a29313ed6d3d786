"""The web app over a real `pairline serve` (SmolLM2-135M): the page and its headers, the token and
Origin checks on /app/ws, paths that try to leave the workspace, and a real turn through the session
protocol (streamed, stopped)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pairline.app.web import AppConfig, app_routes, local_client
from pairline.engine.load import load_engine
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from tests.serve_helpers import free_port

TOKEN = "test-token-not-secret"


@pytest.fixture(scope="module")
def app(smollm2_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("ws").resolve()
    (root / "calc.py").write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(6)))
    (root / "sub").mkdir()
    (root / "sub" / "notes.md").write_text("# notes\n")
    outside = root.parent / "outside-secret.txt"
    outside.write_text("secret\n")
    (root / "link.txt").symlink_to(outside)
    cfg = ServerConfig(max_sessions=4)
    holder: dict = {}
    routes = app_routes(AppConfig(root, TOKEN, lambda: holder["open"](), open_deep=None, commit=False))
    with ServerThread(load_engine(str(smollm2_gguf), n_ctx=2048), cfg, routes=routes) as srv:
        holder["open"] = local_client("127.0.0.1", srv.port, None)
        yield srv, root


@contextlib.contextmanager
def tab(srv, token=TOKEN):
    with connect(f"ws://127.0.0.1:{srv.port}/app/ws", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "token": token}))
        yield ws


def recv(ws, kind: str, timeout: float = 60) -> tuple[dict, list[dict]]:
    """Events until one of `kind` (returned with everything before it)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        ev = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        seen.append(ev)
        if ev["type"] == kind:
            return ev, seen


def test_the_page_is_served_with_a_strict_policy(app):
    srv, _root = app
    page = httpx.get(f"http://127.0.0.1:{srv.port}/")
    assert page.status_code == 200 and "/app/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    js = httpx.get(f"http://127.0.0.1:{srv.port}/app/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    for probe in ("/app/static/../web.py", "/app/static/%2e%2e/web.py", "/app/static/..%2fweb.py"):
        r = httpx.get(f"http://127.0.0.1:{srv.port}{probe}")
        assert r.status_code == 404 and "AppConfig" not in r.text, probe


def test_a_wrong_token_or_a_foreign_page_is_refused(app):
    srv, _root = app
    with tab(srv, token="wrong") as ws:
        ev = json.loads(ws.recv(timeout=10))
        assert ev["type"] == "error" and ev["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4401
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{srv.port}/app/ws", open_timeout=10, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    # DNS rebinding: a foreign name pointed at 127.0.0.1 makes the page same-origin; its Host gives it away
    host = f"evil.example:{srv.port}"
    upgrade = {"Host": host, "Origin": f"http://{host}", "Connection": "Upgrade", "Upgrade": "websocket",
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert httpx.get(f"http://127.0.0.1:{srv.port}/app/ws", headers=upgrade).status_code in (400, 403)
    assert httpx.get(f"http://127.0.0.1:{srv.port}/", headers={"Host": host}).status_code == 400


def test_the_workspace_is_the_only_thing_it_reads(app):
    srv, root = app
    with tab(srv) as ws:
        ready, _ = recv(ws, "ready")
        assert ready["files"] == ["calc.py", "sub/notes.md"] and ready["workspace"] == root.name
        ws.send(json.dumps({"type": "open", "path": "sub/notes.md"}))
        assert recv(ws, "file")[0]["text"] == "# notes\n"
        escapes = ["../outside-secret.txt", str(root.parent / "outside-secret.txt"), "link.txt", "sub/../../x",
                   "%2e%2e/outside-secret.txt", "..%2Foutside-secret.txt", "sub\\..\\..\\x", ".git/config", "a\x00b"]
        for path in escapes:
            ws.send(json.dumps({"type": "open", "path": path}))
            ev, seen = recv(ws, "error")
            assert ev["code"] in ("bad_path", "not_found"), (path, ev)
            assert not any("secret" in json.dumps(e) for e in seen if e["type"] != "error"), path
        ws.send(json.dumps({"type": "edit", "path": "../outside-secret.txt", "instruction": "x"}))
        assert recv(ws, "error")[0]["code"] == "bad_path"
        ws.send("not json")
        assert recv(ws, "error")[0]["code"] == "bad_request"


def test_a_real_turn_streams_over_the_session_protocol_and_stops(app):
    srv, root = app
    before = (root / "calc.py").read_bytes()
    with tab(srv) as ws:
        recv(ws, "ready")
        ws.send(json.dumps({"type": "draft", "text": "rewrite the whole file with", "path": "calc.py"}))
        ws.send(json.dumps({"type": "edit", "path": "calc.py", "tier": "realtime",
                            "instruction": "rewrite the whole file with a docstring on every function"}))
        _, seen = recv(ws, "delta", timeout=120)
        assert seen[0]["type"] == "turn.started" and seen[1]["type"] == "file" and seen[1]["text"] == before.decode()
        ws.send(json.dumps({"type": "stop"}))
        done, _ = recv(ws, "turn.done", timeout=60)
        assert done["turn"] == 1 and done["stats"]["tokens"] > 0 and done["stats"]["ttft_ms"] > 0
        if done["status"] == "cancelled":  # else the answer ended by itself before the stop landed
            stopped, seen = recv(ws, "stopped", timeout=10)
            assert stopped["turn"] == 1 and stopped["ms"] < 2000 and seen == [stopped]  # no delta after its end
        else:
            assert done["status"] in ("proposed", "malformed", "unchanged")
    assert (root / "calc.py").read_bytes() == before  # proposals only: nothing written without an accept


def test_the_app_alone_runs_its_tabs_on_another_server(app, tmp_path):
    """`pairline app DIR --server URL`: no model here; a tab's turn is a session of that server."""
    srv, _root = app
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pairline.cli", "app", str(tmp_path), "--no-browser", "--port",
                             str(port), "--server", f"http://127.0.0.1:{srv.port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        token = re.search(r"#token=(\S+)", line)
        assert token, (line, proc.stderr.read() if proc.poll() is not None else "")
        with connect(f"ws://127.0.0.1:{port}/app/ws", open_timeout=10) as ws:
            ws.send(json.dumps({"type": "hello", "token": token.group(1)}))
            ready, _ = recv(ws, "ready")
            assert ready["files"] == ["calc.py"]
            ws.send(json.dumps({"type": "edit", "path": "calc.py", "instruction": "make add subtract",
                                "tier": "realtime"}))
            done, seen = recv(ws, "turn.done", timeout=180)
            assert any(e["type"] == "delta" for e in seen) and done["stats"]["tokens"] > 0
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 404  # no model API of its own
    finally:
        proc.terminate()
        proc.wait(20)
