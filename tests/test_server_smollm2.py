"""The server on real weights (SmolLM2-135M): sessions, cancel, steer, eviction, the OpenAI SDK with
a prediction, and SIGTERM on a real `pairline serve` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pairline.engine.load import load_engine
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig

pytestmark = pytest.mark.slow

TERMINAL = ("response.completed", "response.incomplete", "response.cancelled", "response.failed", "error")
CODE = "def greet(name):\n    return 'Hello, ' + name\n\n\ndef main():\n    print(greet('world'))\n"


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    return load_engine(str(smollm2_gguf), n_ctx=2048)


@pytest.fixture(scope="module")
def srv(engine):
    s = ServerThread(engine, ServerConfig(max_sessions=1)).__enter__()
    yield s
    s.stop()


def ws_client(url: str):
    ws = connect(url, open_timeout=20, close_timeout=5).__enter__()
    assert json.loads(ws.recv(timeout=20))["type"] == "session.created"
    return ws


def turn(ws, **event) -> list[dict]:
    ws.send(json.dumps({"type": "response.create", **event}))
    return until(ws, *TERMINAL)


def until(ws, *types) -> list[dict]:
    out = []
    while True:
        out.append(json.loads(ws.recv(timeout=120)))
        if out[-1]["type"] in types:
            return out


def test_session_turns_reuse_kv_and_survive_eviction(srv):
    a = ws_client(srv.ws_url)
    first = turn(a, input=f"Here is app.py:\n```python\n{CODE}```\nWhat does greet return?", max_output_tokens=24)
    r1 = first[-1]["response"]
    assert first[-1]["type"] in ("response.completed", "response.incomplete") and r1["output_text"].strip()
    second = turn(a, input="Answer in three words.", max_output_tokens=12)[-1]["response"]
    assert second["usage"]["input_tokens_details"]["cached_tokens"] >= r1["usage"]["input_tokens"]
    assert not second["timings"]["kv_rebuilt"]
    # a second session takes the only KV cache; the first is rebuilt from its stored ids, exactly
    b = ws_client(srv.ws_url)
    turn(b, input="Say hi.", max_output_tokens=4)
    third = turn(a, input="Thanks.", max_output_tokens=8)[-1]["response"]
    assert third["timings"]["kv_rebuilt"] is True
    assert third["usage"]["input_tokens_details"]["cached_tokens"] < 40  # at most the shared system prompt
    a.close()
    b.close()


def test_a_new_session_copies_the_head_another_session_computed(smollm2_gguf):
    """Two sessions on the same file: the second does not prefill what the first computed (its KV
    is copied from the idle cache that holds it, where the runtime saves states)."""
    engine = load_engine(str(smollm2_gguf), n_ctx=2048)
    if not engine.runtime.saves_state:
        pytest.skip(f"the {type(engine.runtime).__name__} runtime does not save states: nothing to copy")
    ask = f"Here is app.py:\n```python\n{CODE * 4}```\nWhat does greet return?"
    with ServerThread(engine, ServerConfig(max_sessions=4)) as s:
        a, b = ws_client(s.ws_url), ws_client(s.ws_url)
        first = turn(a, input=ask, max_output_tokens=6, temperature=0)[-1]["response"]
        second = turn(b, input=ask, max_output_tokens=6, temperature=0)[-1]["response"]
        n = first["usage"]["input_tokens"]
        assert n > 100 and first["usage"]["input_tokens_details"]["cached_tokens"] < 40  # computed here
        assert second["usage"]["input_tokens"] == n
        assert second["usage"]["input_tokens_details"]["cached_tokens"] == n - 1  # all but the one run for logits
        assert second["output_text"].strip()
        counts = {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                  for line in httpx.get(s.base_url + "/metrics").text.splitlines() if "kv_prefix_cop" in line
                  and not line.startswith("#")}
        assert counts == {"pairline:kv_prefix_copies_total": 1, "pairline:kv_prefix_copied_tokens_total": n - 1}
        a.close()
        b.close()


def test_cancel_and_steer_on_real_weights(srv):
    ws = ws_client(srv.ws_url)
    ws.send(json.dumps({"type": "response.create", "input": "Write a long essay about compilers.",
                        "max_output_tokens": 400}))
    until(ws, "response.output_text.delta")
    ws.send(json.dumps({"type": "response.cancel"}))
    cancelled = until(ws, *TERMINAL)[-1]
    assert cancelled["type"] == "response.cancelled" and cancelled["response"]["usage"]["output_tokens"] < 400
    ws.send(json.dumps({"type": "response.create", "input": "Write a long story about a dog.",
                        "max_output_tokens": 300}))
    until(ws, "response.output_text.delta")
    ws.send(json.dumps({"type": "response.steer", "input": "Stop. Just say the dog's name."}))
    steered = until(ws, "response.incomplete", "response.completed")[-1]["response"]
    assert steered["incomplete_details"] == {"reason": "steered"}
    successor = until(ws, *TERMINAL)
    assert successor[0]["type"] == "response.created"
    usage = successor[-1]["response"]["usage"]
    assert usage["input_tokens"] - usage["input_tokens_details"]["cached_tokens"] < 40  # only the instruction ran
    assert successor[-1]["response"]["output_text"].strip()
    ws.close()


def test_openai_sdk_stream_with_prediction(srv, engine, monkeypatch):
    # This test must exercise verification: drafts are sized by the cost hint, not by the timings the
    # earlier tests taught the engine (on a busy or slow CPU those made it draft nothing: 0 accepted).
    # (forks share the engine's StepCosts object, so it is changed in place)
    monkeypatch.setattr(engine.step_costs, "learn", False)
    monkeypatch.setattr(engine.step_costs, "seconds", {})
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", timeout=120, max_retries=0)
    ask = f"Rename greet to welcome. Reply with the whole file.\n```python\n{CODE}```"
    messages = [{"role": "user", "content": ask}]
    # Two plain runs first: the second, like the predicted one after it, reuses the prompt's KV. (A cold and a
    # KV-reusing run of the same prompt may differ in the last bits, so compare like with like.)
    client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=80)
    plain = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=80)
    chunks = list(client.chat.completions.create(
        model="smollm2-135m", messages=messages, max_tokens=80, stream=True, stream_options={"include_usage": True},
        prediction={"type": "content", "content": f"```python\n{CODE}```"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text and usage.completion_tokens > 0
    d = usage.completion_tokens_details
    assert d.accepted_prediction_tokens > 0 and d.rejected_prediction_tokens >= 0
    answer = plain.choices[0].message.content
    if engine.runtime.batch_invariant:
        assert answer == text  # the prediction changes speed, never the answer
    else:  # llama.cpp: verify rows may part from single steps at a near-tie (tests/test_llamacpp.py bounds it)
        assert answer[:10] == text[:10]


def test_continue_final_message_resumes_a_cut_answer_on_real_weights(srv, engine):
    """What the router's mid-stream failover relies on: an answer cut after any streamed chunk and
    sent back as the last assistant message is written on to the answer the model was giving."""
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", timeout=120, max_retries=0)
    messages = [{"role": "user", "content": f"Explain this code in two sentences.\n```python\n{CODE}```"}]
    client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=40, temperature=0)
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2-135m", messages=messages, max_tokens=40, temperature=0, stream=True) if c.choices]
    whole = "".join(pieces)
    cut = "".join(pieces[: len(pieces) // 2])
    assert 0 < len(cut) < len(whole)
    rest = client.chat.completions.create(
        model="smollm2-135m", messages=[*messages, {"role": "assistant", "content": cut}], max_tokens=40,
        temperature=0, extra_body={"continue_final_message": True, "add_generation_prompt": False})
    resumed = cut + rest.choices[0].message.content
    if engine.runtime.batch_invariant:
        assert resumed[: len(whole)] == whole
    else:  # llama.cpp: a prefill may part from single steps at a near-tie (tests/test_llamacpp.py bounds it)
        assert resumed[: len(cut) + 10] == whole[: len(cut) + 10]

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_closes_sessions_with_a_final_event(smollm2_gguf):
    port = _free_port()
    env = {**os.environ, "PAIRLINE_THREADS": os.environ.get("PAIRLINE_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "pairline.cli", "serve", "--model", str(smollm2_gguf), "--port",
                             str(port), "--ctx", "1024", "--max-sessions", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        ws = ws_client(f"ws://127.0.0.1:{port}/v1/responses")
        ws.send(json.dumps({"type": "response.create", "input": "Tell a long story.", "max_output_tokens": 500}))
        until(ws, "response.output_text.delta")
        proc.send_signal(signal.SIGTERM)
        events = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                events.append(json.loads(ws.recv(timeout=30)))
        assert info.value.rcvd.code == 1001
        assert [e["type"] for e in events][-2:] == ["response.cancelled", "error"]
        assert events[-1]["error"]["code"] == "server_shutting_down"
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "POST" not in out and "ws sess_" in out  # one log line per request: the WS response was logged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
