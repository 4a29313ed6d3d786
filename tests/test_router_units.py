"""The router's pure parts: the auto-mode classifier, consistent hashing, backend choice, the
circuit breaker (on a fake clock), config validation and admission control; and the idle timeout
of its WebSocket sessions, in front of a fake pairline backend."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from pairline.errors import PairlineError
from pairline.router.app import RouterThread
from pairline.router.backends import Retryable
from pairline.router.balance import CircuitBreaker, HashRing, Target, choose
from pairline.router.classify import classify, classify_messages, count_files
from pairline.router.config import ClassifyConfig, parse_config
from pairline.router.core import Router
from pairline.router.metrics import RouterMetrics

pytestmark = pytest.mark.timeout(30)

# ---------------------------------------------------------------- classifier


@pytest.mark.parametrize("instruction", [
    "Refactor the session handling into its own module",
    "Rename Config to Settings across files",
    "Fix the failing import, then run the tests",
    "Update the license header in all files",
    "Migrate the settings loader from configparser to tomllib",
    "Implement a retry helper and write tests for it",
    "Apply black to the whole codebase",
])
def test_deep_cues(instruction):
    assert classify(instruction, len(instruction), 0).tier == "deep"


@pytest.mark.parametrize("instruction", [
    "rename greet to welcome",
    "fix this line",
    "add a docstring to parse_config",
    "There is a typo in the error message",
    "What does greet return?",
])
def test_targeted_edits_stay_realtime(instruction):
    assert classify(instruction, len(instruction), 1).tier == "realtime"


def test_size_and_files_decide_when_no_cue_does():
    cfg = ClassifyConfig(deep_context_chars=1000, deep_files=3)
    assert classify("explain this", 5000, 0, cfg) == classify("explain this", 5000, 0, cfg)  # pure
    assert classify("explain this", 5000, 0, cfg).tier == "deep"
    assert classify("explain this", 5000, 0, cfg).reason.startswith("context")
    assert classify("explain these", 100, 3, cfg).tier == "deep"
    assert classify("explain these", 100, 2, cfg).tier == "realtime"
    # a targeted-edit cue beats the file count (a rename with three files open is still one edit),
    # but not a context too long for the real-time tier
    assert classify("rename foo to bar", 100, 5, cfg).tier == "realtime"
    assert classify("rename foo to bar", 5000, 0, cfg).tier == "deep"


def test_files_are_counted_from_paths_and_fences():
    assert count_files("change a.py and pkg/b.py, then docs/c.md; a.py again") == 3
    assert count_files("```python\nx = 1\n```\n```js\ny\n```") == 2
    assert count_files("version 1.2 and e.g. this") == 0
    route = classify_messages([{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "see a.py b.py c.py d.py"},
                               {"role": "assistant", "content": "ok"},
                               {"role": "user", "content": "now explain"}])
    assert route.tier == "deep" and route.reason == "4 files"


# ---------------------------------------------------------------- consistent hashing


def test_ring_is_stable_and_moves_only_the_removed_nodes_keys():
    nodes = ["a", "b", "c", "d"]
    ring = HashRing(nodes, vnodes=64)
    keys = [f"sess_{i}" for i in range(2000)]
    before = {k: ring.lookup(k) for k in keys}
    assert before == {k: HashRing(list(reversed(nodes)), 64).lookup(k) for k in keys}  # order-independent
    share = {n: sum(1 for v in before.values() if v == n) / len(keys) for n in nodes}
    assert all(0.15 < s < 0.35 for s in share.values()), share  # virtual nodes spread the load
    after = {k: HashRing(["a", "b", "d"], 64).lookup(k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "c" for k in moved)  # only c's sessions moved
    # skipping an unavailable node is the same as removing it
    assert all(ring.lookup(k, lambda n: n != "c") == after[k] for k in keys)


# ---------------------------------------------------------------- choice


def test_least_outstanding_weighted_by_ttft():
    fast, slow = Target("fast", ewma_ttft=0.1), Target("slow", ewma_ttft=1.0)
    assert choose([slow, fast]) is fast
    fast.outstanding = 12  # 13 * 0.1 > 1 * 1.0
    assert choose([slow, fast]) is slow
    fresh = Target("fresh")  # never measured: scored at the tier's best TTFT, so it gets tried
    assert choose([slow, fast, fresh]) is fresh
    slow.healthy = False
    assert choose([slow]) is None
    assert choose([slow, fast], exclude=[fast]) is None


def test_affinity_sticks_until_the_backend_is_much_busier():
    ts = [Target(n, ewma_ttft=0.2) for n in "abc"]
    ring = HashRing([t.name for t in ts])
    home = choose(ts, "sess_42", ring, slack=2)
    assert all(choose(ts, "sess_42", ring, slack=2) is home for _ in range(5))
    home.outstanding = 2
    assert choose(ts, "sess_42", ring, slack=2) is home
    home.outstanding = 3  # three more in flight than the idlest: the session moves
    assert choose(ts, "sess_42", ring, slack=2) is not home
    home.outstanding = 0
    home.breaker.failure(), home.breaker.failure(), home.breaker.failure()  # circuit open
    other = choose(ts, "sess_42", ring, slack=2)
    assert other is not home and other.name == ring.lookup("sess_42", lambda n: n != home.name)


# ---------------------------------------------------------------- circuit breaker


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_balanced_backend_keeps_its_circuit_when_requests_fail():
    """`balanced = true` (a Serve proxy in front of replicas): one replica's failed requests are
    counted as errors but do not open the balancer's circuit; a refused connection still takes it out."""
    r = Router(parse_config("""
[tiers.realtime]
backends = [{ kind = "pairline", url = "http://127.0.0.1:9", name = "ray", balanced = true },
            { kind = "pairline", url = "http://127.0.0.1:10", name = "plain" }]
[tiers.deep]
backends = [{ kind = "pairline", url = "http://127.0.0.1:11" }]
""", "t.toml", env={}))
    ray, plain = r.tiers["realtime"]
    for _ in range(5):
        for b in (ray, plain):
            r.begin(b)
            r.end(b, False)  # a stream that broke mid-answer
    assert ray.breaker.current() == "closed" and plain.breaker.current() == "open"
    assert r.metrics.get("backend_errors_total", 'tier="realtime",backend="ray"') == 5
    r.begin(ray)
    r.failed(ray, Retryable("ray: ConnectError", refused=True))
    assert not ray.healthy

def test_breaker_state_machine():
    clock = Clock()
    br = CircuitBreaker(failures_to_open=3, cooldown_s=10, clock=clock)
    br.failure(), br.failure()
    assert br.current() == "closed" and br.available()
    br.success()  # a success resets the count: failures must be consecutive
    br.failure(), br.failure()
    assert br.current() == "closed"
    br.failure()
    assert br.current() == "open" and not br.available() and br.gauge() == 2
    clock.t = 9.9
    assert br.current() == "open"
    clock.t = 10.0
    assert br.current() == "half_open" and br.available()
    assert br.acquire()  # the one probe
    assert not br.available() and not br.acquire()
    br.failure()  # the probe failed: open again for a full cooldown
    assert br.current() == "open"
    clock.t = 20.0
    assert br.acquire()
    br.release()  # the probe's client left: another may probe
    assert br.acquire()
    br.success()
    assert br.current() == "closed" and br.failures == 0 and br.gauge() == 0


# ---------------------------------------------------------------- config


GOOD = """
[router]
port = 8780
default_mode = "auto"

[tiers.realtime]
max_outstanding = 16
backends = [{ kind = "pairline", url = "http://127.0.0.1:8765" }]

[tiers.deep]
backends = [{ kind = "openai", url = "http://gpu-box:8000/v1/", model = "Qwen/Coder-7B", api_key_env = "VLLM_KEY" },
            { kind = "inprocess", model = "qwen2.5-coder-1.5b" }]
"""


def test_config_parses():
    cfg = parse_config(GOOD, "tiers.toml", env={"VLLM_KEY": "secret"})
    rt, deep = cfg.tiers["realtime"], cfg.tiers["deep"]
    assert rt.max_outstanding == 16 and rt.backends[0].name == "realtime-0"
    assert deep.backends[0].url == "http://gpu-box:8000/v1" and deep.backends[0].api_key == "secret"
    assert deep.backends[1].kind == "inprocess" and cfg.default_mode == "auto"
    assert cfg.session_idle_timeout_s == 600.0  # the server's --idle-timeout default
    assert "secret" not in repr(cfg)  # the key never shows in logs


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('default_mode = "auto"', 'default_mode = "fast"'),
     "tiers.toml:4: router.default_mode: must be one of realtime, deep, auto, got 'fast'"),
    (lambda s: s.replace("port = 8780", 'port = "8780"'), "tiers.toml:3: router.port: must be an integer"),
    (lambda s: s.replace("max_outstanding = 16", "max_outstandin = 16"),
     "tiers.toml:7: tiers.realtime.max_outstandin: unknown key"),
    (lambda s: s.replace('{ kind = "inprocess"', '{ kind = "vllm"'),
     "tiers.toml:12: tiers.deep.backends[1].kind: must be one of pairline, openai, inprocess, got 'vllm'"),
    (lambda s: s.replace('model = "qwen2.5-coder-1.5b"', 'modle = "x"'),
     "tiers.toml:12: tiers.deep.backends[1].modle: unknown key"),
    (lambda s: s.replace('url = "http://127.0.0.1:8765"', 'url = "127.0.0.1:8765"'),
     "tiers.toml:8: tiers.realtime.backends[0].url: must be an http:// or https:// URL"),
    (lambda s: s.replace("[tiers.deep]", "[tiers.deeper]"), "tiers.deeper: unknown tier"),
    (lambda s: s.replace("[router]", "[routr]"), "tiers.toml:2: routr: unknown table"),
    (lambda s: s.replace("port = 8780", "port = 8780 8781"), "tiers.toml: not valid TOML"),
    (lambda s: s.replace('"VLLM_KEY"', '"NO_SUCH_KEY"'),
     "tiers.toml:11: tiers.deep.backends[0].api_key_env: the environment variable NO_SUCH_KEY is not set"),
    (lambda s: s.replace('"VLLM_KEY"', '"sk-123 secret"'), "must name an environment variable"),
    (lambda s: s.replace('default_mode = "auto"', 'default_mode = "auto"\nsession_idle_timeout_s = -1'),
     "tiers.toml:5: router.session_idle_timeout_s: must be greater than 0, got -1.0"),
    (lambda s: s.replace('default_mode = "auto"', 'default_mode = "auto"\nsession_idle_timeout_s = nan'),
     "tiers.toml:5: router.session_idle_timeout_s: must be greater than 0, got nan"),
    (lambda s: s.replace('default_mode = "auto"', 'default_mode = "auto"\nsession_idle_timeout_s = "10m"'),
     "tiers.toml:5: router.session_idle_timeout_s: must be a number, got a string ('10m')"),
])
def test_config_errors_name_the_key_and_line(edit, message):
    with pytest.raises(PairlineError) as info:
        parse_config(edit(GOOD), "tiers.toml", env={"VLLM_KEY": "k"})
    assert message in str(info.value)
    assert "\n" not in str(info.value)  # one line, no traceback


def test_config_needs_both_tiers():
    with pytest.raises(PairlineError, match=r"missing \[tiers.deep\]"):
        parse_config('[tiers.realtime]\nbackends = [{kind = "pairline", url = "http://h:1"}]\n', "t.toml")
    with pytest.raises(PairlineError, match="needs a non-empty `backends`"):
        parse_config("[tiers.realtime]\nbackends = []\n[tiers.deep]\n", "t.toml")


# ---------------------------------------------------------------- admission


def test_admission_and_the_request_ledger():
    cfg = parse_config(GOOD.replace("max_outstanding = 16", "max_outstanding = 2"), "t.toml", env={"VLLM_KEY": "k"})
    r = Router(cfg)
    a, b = r.admit("realtime"), r.admit("realtime")
    assert a and b and r.admit("realtime") is None  # the third waits for a slot: 429 / rate_limit_exceeded
    assert r.busy_error("realtime").status == 429
    a.finish("completed")
    a.finish("errored")  # a request ends once
    c = r.admit("realtime")
    assert c is not None
    b.finish("cancelled"), c.finish("errored")
    m: RouterMetrics = r.metrics
    accepted = m.get("requests_accepted_total", 'tier="realtime"')
    finished = sum(m.get("requests_finished_total", f'tier="realtime",outcome="{o}"')
                   for o in ("completed", "errored", "cancelled"))
    assert accepted == finished == 3 and r.outstanding["realtime"] == 0
    assert m.get("requests_rejected_total", 'tier="realtime",reason="rate_limited"') == 1
    text = m.render(r.backends, r.outstanding)
    assert 'pairline:router_requests_accepted_total{tier="realtime"} 3' in text
    assert 'pairline:router_backend_circuit_state{tier="deep",backend="deep-0"} 0' in text


# ---------------------------------------------------------------- the command


def test_cli_errors_are_one_line(tmp_path, capsys):
    from pairline.cli import main

    bad = tmp_path / "tiers.toml"
    bad.write_text(GOOD.replace('kind = "pairline"', 'kind = "pairlin"'))
    assert main(["route", "-c", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (f"pairline: error: {bad}:8: tiers.realtime.backends[0].kind: must be "
                                               "one of pairline, openai, inprocess, got 'pairlin'")
    assert main(["route", "-c", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read the router config" in capsys.readouterr().err
    good = tmp_path / "ok.toml"
    good.write_text(GOOD.replace('api_key_env = "VLLM_KEY"', 'name = "vllm"').replace(
        '{ kind = "inprocess", model = "qwen2.5-coder-1.5b" }', '{ kind = "pairline", url = "http://127.0.0.1:9" }'))
    with socket.socket() as taken:  # a taken port fails at once, before anything loads or serves
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        t0 = time.monotonic()
        assert main(["route", "-c", str(good), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in err and "Traceback" not in err and time.monotonic() - t0 < 10


def test_auth_and_nothing_to_route_to():
    """No backend is up (nothing listens on their ports): requests are refused clearly and counted."""
    import json

    import httpx
    from websockets.sync.client import connect

    from pairline.router.app import RouterThread

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cfg = parse_config(f"""
[router]
api_key_env = "ROUTER_KEY"
[tiers.realtime]
backends = [{{ kind = "pairline", url = "http://127.0.0.1:{ports[0]}" }}]
[tiers.deep]
backends = [{{ kind = "openai", url = "http://127.0.0.1:{ports[1]}/v1", model = "m" }}]
""", "t.toml", env={"ROUTER_KEY": "s3cret"})
    with RouterThread(cfg) as r:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        res = httpx.post(r.base_url + "/v1/chat/completions", json=body)
        assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"
        auth = {"Authorization": "Bearer s3cret"}
        res = httpx.post(r.base_url + "/v1/chat/completions", json=body, headers=auth)
        assert res.status_code == 503 and res.json()["error"]["code"] == "backend_unavailable"
        health = httpx.get(r.base_url + "/health")  # no key needed
        assert health.status_code == 503 and health.json()["status"] == "down"
        with connect(r.ws_url, open_timeout=10) as ws:
            ev = json.loads(ws.recv(timeout=10))
            assert ev["type"] == "error" and ev["error"]["code"] == "invalid_api_key"
        with connect(r.ws_url, open_timeout=10, additional_headers=auth) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
            ws.send(json.dumps({"type": "response.create", "input": "hi", "mode": "deep"}))
            ev = json.loads(ws.recv(timeout=10))
            assert ev["type"] == "error" and ev["error"]["code"] == "backend_unavailable"
        m = r.router.metrics
        assert m.get("requests_accepted_total", 'tier="realtime"') == 1
        assert m.get("requests_finished_total", 'tier="realtime",outcome="errored"') == 1
        assert m.get("requests_finished_total", 'tier="deep",outcome="errored"') == 1


# ---------------------------------------------------------------- idle WebSocket sessions


class FakePairline:
    """A pairline backend without a model: each backend session answers response.create with
    `deltas` text deltas, `gap` seconds apart, and is counted when it opens and when it closes."""

    def __init__(self, deltas: int = 1, gap: float = 0.0):
        self.deltas, self.gap = deltas, gap
        self.opened, self.closed = 0, threading.Semaphore(0)
        self.server = serve(self.handle, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"

    def handle(self, conn: ServerConnection) -> None:
        self.opened += 1
        try:
            conn.send(json.dumps({"type": "session.created", "session": {"id": "sess_fake"}}))
            for n, raw in enumerate(conn):
                if json.loads(raw).get("type") != "response.create":
                    continue
                rid = f"resp_fake{n}"
                conn.send(json.dumps({"type": "response.created", "response": {"id": rid, "status": "in_progress"}}))
                for _ in range(self.deltas):
                    time.sleep(self.gap)
                    conn.send(json.dumps({"type": "response.output_text.delta", "delta": "x"}))
                usage = {"input_tokens": 1, "output_tokens": self.deltas, "total_tokens": 1 + self.deltas}
                conn.send(json.dumps({"type": "response.completed", "response": {
                    "id": rid, "status": "completed", "output_text": "x" * self.deltas, "usage": usage}}))
        except ConnectionClosed:
            pass
        finally:
            self.closed.release()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def fake_backend():
    fake = FakePairline(deltas=10, gap=0.1)
    yield fake
    fake.stop()


def idle_router(backend: FakePairline, idle_s: float) -> RouterThread:
    tier = f'backends = [{{ kind = "pairline", url = "{backend.url}", health_path = "" }}]'
    cfg = parse_config(f"[router]\nsession_idle_timeout_s = {idle_s}\n[tiers.realtime]\n{tier}\n[tiers.deep]\n{tier}\n",
                       "t.toml")
    return RouterThread(cfg)


def recv(ws, timeout: float = 10) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def expect_expired(ws, idle_s: float) -> None:
    """The router's last word on an idle session: session_expired, then a normal close."""
    ev = recv(ws)
    assert ev["type"] == "error" and ev["status"] == 408, ev
    assert ev["error"]["code"] == "session_expired"
    assert ev["error"]["message"] == f"session closed after {idle_s:g}s without a client event"
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000


def wait_for(cond, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def test_idle_router_session_expires(fake_backend):
    with idle_router(fake_backend, 0.2) as r, connect(r.ws_url, open_timeout=10) as ws:
        assert recv(ws)["type"] == "session.created"
        expect_expired(ws, 0.2)
        assert wait_for(lambda: not r.router.connections)  # the router let go of it
        assert r.router.metrics.get("ws_errors_total", 'code="session_expired"') == 1


def test_router_session_is_not_expired_while_a_response_runs(fake_backend):
    """A response streaming for longer than the idle timeout is not cut; the clock starts again
    when it ends, and the expiry releases the backend session the router held."""
    with idle_router(fake_backend, 0.4) as r, connect(r.ws_url, open_timeout=10) as ws:
        assert recv(ws)["type"] == "session.created"
        t0 = time.monotonic()
        ws.send(json.dumps({"type": "response.create", "input": "hi", "mode": "realtime"}))
        events = [recv(ws)]
        while events[-1]["type"] not in ("response.completed", "error"):
            events.append(recv(ws))
        assert time.monotonic() - t0 > 0.4  # the fake takes 10 x 0.1 s: longer than the timeout
        assert [e["type"] for e in events].count("response.output_text.delta") == 10
        assert events[-1]["type"] == "response.completed" and events[-1]["response"]["output_text"] == "x" * 10
        assert fake_backend.opened == 1
        expect_expired(ws, 0.4)
        assert fake_backend.closed.acquire(timeout=10)  # the backend session went with it
        assert wait_for(lambda: not r.router.connections)


def test_client_events_reset_the_router_idle_clock(fake_backend):
    idle = 0.5
    with idle_router(fake_backend, idle) as r, connect(r.ws_url, open_timeout=10) as ws:
        assert recv(ws)["type"] == "session.created"
        t_start = time.monotonic()
        for _ in range(12):  # 1.2 s and more of a session that keeps talking: longer than the timeout
            time.sleep(0.1)
            t_sent = time.monotonic()
            ws.send(json.dumps({"type": "session.update", "session": {"temperature": 0}}))
            assert recv(ws)["type"] == "session.updated"
        assert time.monotonic() - t_start > 2 * idle
        expect_expired(ws, idle)
        assert time.monotonic() - t_sent >= idle  # counted from the last client event
        assert wait_for(lambda: not r.router.connections)
