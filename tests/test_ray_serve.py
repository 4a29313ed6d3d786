"""`pairline serve --ray`: the engine as a Ray Serve application (SmolLM2-135M, 2 replicas on a local
Ray cluster of 2 CPUs). Through Serve's proxy: Chat Completions, a WebSocket session, session affinity
(the same x-pairline-session lands on the same replica, and its second request reuses the KV), a
replica killed (Serve routes around it) and, with `pairline route` in front, a WebSocket session whose
replica was killed answered on the other replica with its history replayed. Without Ray: one line."""

from __future__ import annotations

import json
import os
import sys
import time

import httpx
import pytest
from websockets.sync.client import connect

from pairline.cli import build_parser, main
from tests.test_router_live import MODEL, TERMINAL, assert_none_lost, free_port, router, turn, ws_client


def test_without_ray_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    assert main(["serve", "--ray", "--model", MODEL]) == 2
    err = capsys.readouterr().err
    assert err == "pairline: error: --ray needs Ray Serve: pip install 'pairline[ray]'\n"


@pytest.fixture(scope="module")
def app():
    try:
        import ray
        from ray import serve

        from pairline.server import ray_serve
    except ImportError as err:
        pytest.skip(f"ray[serve] is not installed ({err}): pip install -e '.[ray]' to run the Ray Serve tests")
    os.environ[ray_serve.SESSION_ENV] = ray_serve.SESSION_HEADER  # before the cluster starts: its proxy reads it
    port = free_port()
    args = build_parser().parse_args(["serve", "--ray", "--replicas", "2", "--model", MODEL, "--runtime", "torch",
                                      "--ctx", "1024", "--max-sessions", "4", "--port", str(port)])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        url = ray_serve.start(args)
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def chat(url: str, messages: list[dict], session: str | None = None) -> httpx.Response:
    headers = {"x-pairline-session": session} if session else {}
    r = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 8,
                                                       "temperature": 0}, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r


def replica_keys(url: str) -> dict[str, str]:
    """A session key owned by each replica (replica id -> key), found through the affinity itself."""
    owners: dict[str, str] = {}
    for i in range(40):
        r = httpx.get(url + "/health", headers={"x-pairline-session": f"probe-{i}"}, timeout=10)
        owners.setdefault(r.headers["x-pairline-replica"], f"probe-{i}")
    return owners


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_http_websocket_and_affinity(app):
    url = app
    # a session's requests stay on one replica, and the second reuses its KV (cached prompt tokens)
    msgs = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    first = chat(url, msgs, "alice")
    replica = first.headers["x-pairline-replica"]
    msgs += [{"role": "assistant", "content": first.json()["choices"][0]["message"]["content"]},
             {"role": "user", "content": "Now make it subtract."}]
    again = chat(url, msgs, "alice")
    assert again.headers["x-pairline-replica"] == replica
    assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    for _ in range(3):
        assert chat(url, msgs[:1], "alice").headers["x-pairline-replica"] == replica
    # keys spread over both replicas (the ring), and requests without a key are served too
    assert len(replica_keys(url)) == 2
    assert chat(url, msgs[:1]).json()["choices"][0]["message"]["content"]

    # a WebSocket session straight through Serve's proxy: routed once, two turns on one KV
    with connect(url.replace("http", "ws") + "/v1/responses", open_timeout=30) as ws:
        assert ws.response.headers["x-pairline-replica"]
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        one = turn(ws, input="Say hello.", max_output_tokens=6)[-1]
        assert one["type"] in TERMINAL[:2], one
        two = turn(ws, input="And goodbye.", max_output_tokens=6, previous_response_id=one["response"]["id"])[-1]
        assert two["type"] in TERMINAL[:2], two
        assert two["response"]["usage"]["input_tokens_details"]["cached_tokens"] > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_replica_killed_mid_session(app):
    import ray

    url = app
    r = router(f"""
[router]
health_interval_s = 0.3
retries = 2
[tiers.realtime]
backends = [{{ kind = "pairline", url = "{url}", name = "ray" }}]
[tiers.deep]
backends = [{{ kind = "pairline", url = "{url}", name = "ray-deep" }}]
""")
    try:
        ws = ws_client(r)
        first = turn(ws, input="My name is Ada. Say hi.", max_output_tokens=6, mode="realtime")[-1]
        assert first["type"] in TERMINAL[:2], first
        # which replica holds the router's backend session: each replica's /health, reached by its key
        held = {}
        for rid, key in replica_keys(url).items():
            held[rid] = httpx.get(url + "/health", headers={"x-pairline-session": key}, timeout=10).json()["sessions"]
        victim = max(held, key=held.get)
        assert held[victim] == 1 and sum(held.values()) == 1, held
        names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith("#" + victim)]
        assert len(names) == 1, names
        ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)

        # the next turn of that session: answered on the other replica, the conversation replayed
        evs = turn(ws, input="What is my name?", max_output_tokens=6, mode="realtime",
                   previous_response_id=first["response"]["id"])
        final = evs[-1]
        assert final["type"] in TERMINAL[:2], evs[-3:]
        assert final["response"]["previous_response_id"] == first["response"]["id"]
        # the backend session is new: it was given the first turn and its answer again (more input).
        # Sent at once after the kill, the turn finds the dead session itself: the router retries it
        # (`attempts` 2, here on the deep tier, so `failover` too); a turn sent after the router saw the
        # session close is rebuilt unmarked (docs/scaling.md, "pairline on Ray Serve")
        assert final["response"]["usage"]["input_tokens"] > first["response"]["usage"]["input_tokens"] + 10
        # direct HTTP requests keep being served (Serve routes around the dead replica, then replaces it)
        for i in range(4):
            assert chat(url, [{"role": "user", "content": f"Say {i}."}], f"after-{i}").headers["x-pairline-replica"]
        ws.close()
        assert_none_lost(r)
    finally:
        r.stop()
