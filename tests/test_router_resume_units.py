"""A WebSocket session's response cut mid-answer, on fake backends (no model): the continuation that
fails before writing anything is not the end of the response; the tier's next try writes on, and if
none can, the open response ends as `response.failed` (never a bare `error` that leaves it open)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from pairline.router.app import RouterThread
from pairline.router.config import parse_config


class DyingPairline:
    """A pairline backend session that shows `deltas` text deltas of a response, then drops the connection."""

    def __init__(self, deltas: int = 3):
        self.deltas = deltas
        self.server = serve(self.handle, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"

    def handle(self, conn: ServerConnection) -> None:
        try:
            conn.send(json.dumps({"type": "session.created", "session": {"id": "sess_dying"}}))
            for raw in conn:
                if json.loads(raw).get("type") == "response.create":
                    conn.send(json.dumps({"type": "response.created",
                                          "response": {"id": "resp_cut", "status": "in_progress"}}))
                    for _ in range(self.deltas):
                        conn.send(json.dumps({"type": "response.output_text.delta", "item_id": "msg_cut",
                                              "delta": "x"}))
                    conn.close()  # dies mid-answer
                    return
        except ConnectionClosed:
            pass


class Continuer:
    """An OpenAI-compatible backend that takes continuations. The first `fail_first` requests get an
    SSE error chunk before any token (what a server whose engine refused the job sends); the later
    ones write "yz" and finish. Every request body is kept."""

    def __init__(self, fail_first: int):
        self.fail_first, self.bodies = fail_first, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                if len(owner.bodies) <= owner.fail_first:
                    chunks = [{"error": {"code": "server_error", "message": "the engine refused the job"}}]
                else:
                    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
                    chunks = [base | {"choices": [{"index": 0, "delta": {"content": "yz"}, "finish_reason": None}],
                                      "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}},
                              base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                              base | {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1,
                                                               "total_tokens": 10}}]
                for c in chunks:
                    self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()


def cut_response(fail_first: int) -> tuple[list[dict], Continuer]:
    """One response through the router: cut after "xxx" on the dying backend, then continued."""
    dying, cont = DyingPairline(), Continuer(fail_first)
    toml = f"""
[router]
retries = 1
retry_backoff_s = 0.05
[tiers.realtime]
backends = [{{ kind = "pairline", url = "{dying.url}", name = "dying", health_path = "" }},
            {{ kind = "openai", url = "{cont.url}", model = "m", name = "cont", resume = true, health_path = "" }}]
[tiers.deep]
backends = [{{ kind = "openai", url = "{cont.url}", model = "m", name = "deep", health_path = "" }}]
"""
    try:
        with RouterThread(parse_config(toml, "t.toml", env={})) as r:
            key = next(k for k in (f"s{i}" for i in range(1000)) if r.router.rings["realtime"].lookup(k) == "dying")
            with connect(r.ws_url, open_timeout=10, additional_headers={"x-pairline-session": key}) as ws:
                assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
                ws.send(json.dumps({"type": "response.create", "input": "hi", "mode": "realtime",
                                    "max_output_tokens": 20}))
                events = [json.loads(ws.recv(timeout=20))]
                while events[-1]["type"] not in ("response.completed", "response.incomplete", "response.failed"):
                    events.append(json.loads(ws.recv(timeout=20)))
    finally:
        dying.server.shutdown()
        cont.stop()
    return events, cont


def test_a_continuation_that_fails_before_its_first_token_is_tried_again():
    events, cont = cut_response(fail_first=1)
    assert [e["type"] for e in events].count("error") == 0, events
    assert events[-1]["type"] == "response.completed", events[-1]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == events[-1]["response"]["output_text"] == "xxxyz"
    assert {e["response"]["id"] for e in events if "response" in e} == {"resp_cut"}  # one response, still open
    assert events[-1]["pairline"]["resumed"] == [{"from": "dying", "to": "cont", "after_tokens": 3}]
    assert len(cont.bodies) == 2  # the refused continuation, then the one that wrote on
    for body in cont.bodies:
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["messages"][-1] == {"role": "assistant", "content": "xxx"} and body["max_tokens"] == 17


def test_when_no_backend_can_continue_the_open_response_fails_visibly():
    events, cont = cut_response(fail_first=99)
    err = next(e for e in events if e["type"] == "error")
    assert err["error"]["code"] == "backend_failed"
    assert "no backend of the tier could continue it" in err["error"]["message"]
    assert "server_error before the first token" in err["error"]["message"]  # why, not just that
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["id"] == "resp_cut"
    assert events[-1]["response"]["output_text"] == "xxx"  # what the client had is kept
    assert len(cont.bodies) == 2  # once per round (1 + retries)
