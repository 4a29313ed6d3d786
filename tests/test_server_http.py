"""OpenAI-compatible HTTP against a real uvicorn server, with the `openai` SDK and httpx."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from pairline.engine.tokenizer import Tokenizer
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from tests.engine_helpers import tiny_engine

MSGS = [{"role": "system", "content": "You are a coder."}, {"role": "user", "content": "def f(x):\n    return x\n"}]


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.load(smollm2_gguf)


@pytest.fixture(scope="module")
def srv(tokenizer):
    s = ServerThread(tiny_engine(tokenizer, n_ctx=1024), ServerConfig(max_message_bytes=64 * 1024)).__enter__()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", timeout=60, max_retries=0)


def test_chat_completion_fields_and_usage(client, srv):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=7)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.created > 0
    assert r.system_fingerprint.startswith("fp_") and r.model == "tiny"
    ch = r.choices[0]
    assert ch.index == 0 and ch.finish_reason == "length" and ch.message.role == "assistant" and ch.message.content
    u = r.usage
    assert u.completion_tokens == 7 and u.total_tokens == u.prompt_tokens + 7
    assert u.completion_tokens_details.accepted_prediction_tokens == 0
    assert u.completion_tokens_details.rejected_prediction_tokens == 0
    assert u.prompt_tokens_details.cached_tokens >= 0
    assert r.model_extra["timings"]["ttft_s"] > 0


def test_streaming_with_usage_chunk(client):
    whole = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6).choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_ends_with_done(srv):
    body = {"model": "x", "messages": MSGS, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", srv.base_url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert '"usage"' not in "".join(lines[:-1])


def test_prediction_is_accepted_and_output_unchanged(client):
    plain = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=40)
    text = plain.choices[0].message.content
    pred = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=40,
                                          prediction={"type": "content", "content": text})
    assert pred.choices[0].message.content == text  # greedy speculation is lossless
    d = pred.usage.completion_tokens_details
    assert d.accepted_prediction_tokens > 10
    assert pred.usage.completion_tokens == plain.usage.completion_tokens


def test_prefix_cache_reuses_kv_across_requests(client):
    first = [{"role": "user", "content": "A long shared prefix. " * 30}]
    r1 = client.chat.completions.create(model="tiny", messages=first, max_tokens=4)
    follow = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "more"}]
    r2 = client.chat.completions.create(model="tiny", messages=follow, max_tokens=4)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 1


def test_completions_models_health_metrics(client, srv):
    c = client.completions.create(model="tiny", prompt="def fib(n):", max_tokens=5)
    assert c.id.startswith("cmpl-") and c.object == "text_completion" and c.choices[0].text
    assert c.usage.completion_tokens == 5
    chunks = list(client.completions.create(model="tiny", prompt="def fib(n):", max_tokens=5, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == c.choices[0].text
    models = client.models.list()
    assert [m.id for m in models.data] == [srv.server.model_name]
    assert httpx.get(srv.base_url + "/health").json()["status"] == "ok"
    text = httpx.get(srv.base_url + "/metrics").text
    for name in ("pairline:time_to_first_token_seconds_bucket", "pairline:inter_token_latency_seconds_count",
                 "pairline:e2e_request_latency_seconds_sum", "pairline:request_queue_time_seconds_count",
                 "pairline:prompt_tokens_total", "pairline:generation_tokens_total", "pairline:active_sessions",
                 "pairline:prefix_cache_hits_total", "pairline:num_requests_running"):
        assert name in text


@pytest.mark.parametrize("content, status, code", [
    (b"{nope", 400, "invalid_json"),
    (b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}', 400, "unknown_parameter"),
    (b'{"model": "x", "messages": []}', 400, "invalid_value"),
    (b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "unsupported_parameter"),
    (b'{"model": "x", "messages": [{"role": "user", "content": "' + b"y" * 70000 + b'"}]}', 413, "request_too_large"),
    (b'{"model": "x", "messages": [{"role": "user", "content": "' + b"word " * 3000 + b'"}]}', 400,
     "context_length_exceeded"),
])
def test_bad_requests_get_openai_errors(srv, client, content, status, code):
    r = httpx.post(srv.base_url + "/v1/chat/completions", content=content, timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if code == "unknown_parameter":
        assert err["param"] == "frobnicate" and "frobnicate" in err["message"]
    # the server is fine afterwards
    assert client.chat.completions.create(model="x", messages=MSGS, max_tokens=2).usage.completion_tokens == 2


def test_sdk_raises_on_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="x", messages=MSGS, max_tokens=2, extra_body={"bogus": True})
    assert "bogus" in str(info.value)


def test_bad_api_key_is_401(tokenizer):
    with ServerThread(tiny_engine(tokenizer, n_ctx=256), ServerConfig(api_key="k1")) as s:
        bad = openai.OpenAI(base_url=s.base_url + "/v1", api_key="nope", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=s.base_url + "/v1", api_key="k1", max_retries=0, timeout=30)
        assert good.chat.completions.create(model="x", messages=MSGS[1:], max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(s.base_url + "/health").status_code == 200  # health needs no key


def test_queue_full_is_429_with_retry_after(tokenizer):
    with ServerThread(tiny_engine(tokenizer, n_ctx=1024), ServerConfig(max_sessions=1, max_queue=1)) as s:
        url = s.base_url + "/v1/chat/completions"
        long = {"model": "x", "messages": MSGS, "max_tokens": 700, "stream": True}
        started = threading.Event()
        results: dict = {}

        def stream_long():
            with httpx.stream("POST", url, json=long, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        started.set()
                results["long"] = r.status_code

        t = threading.Thread(target=stream_long)
        t.start()
        assert started.wait(30)
        waiting = threading.Thread(target=lambda: results.setdefault(
            "queued", httpx.post(url, json={"model": "x", "messages": MSGS, "max_tokens": 2}, timeout=60).status_code))
        waiting.start()
        deadline = time.monotonic() + 10
        while not s.server.scheduler.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(url, json={"model": "x", "messages": MSGS, "max_tokens": 2}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        t.join(60)
        waiting.join(60)
        assert results == {"long": 200, "queued": 200}


def test_serve_on_a_taken_port_fails_with_one_line(capsys):
    import socket

    from pairline import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = cli.main(["serve", "--model", "smollm2-135m", "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err
    assert code == 2 and "cannot listen on 127.0.0.1" in err and "Traceback" not in err


@pytest.mark.parametrize("stream", [False, True])
def test_client_that_hangs_up_stops_its_work(srv, stream):
    body = {"model": "x", "messages": MSGS, "max_tokens": 900, "stream": stream}
    before = srv.server.metrics.finished.get("cancelled", 0)
    url = srv.base_url + "/v1/chat/completions"
    if stream:
        with httpx.stream("POST", url, json=body, timeout=30) as r:
            for _ in r.iter_lines():
                break  # hang up after the first chunk
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=1.0)
    deadline = time.monotonic() + 20
    while srv.server.metrics.finished.get("cancelled", 0) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.server.metrics.finished.get("cancelled", 0) == before + 1


def test_continue_final_message_prompt_is_the_fresh_prompt_then_the_text(tokenizer):
    """The open answer is split as a fresh one is (generation prompt, then its text), so an answer
    cut after a token resumes on the very ids it was being written on when its text encodes back to
    them (docs/scaling.md, "Mid-stream failover")."""
    from pairline.engine.tokenizer import encode_chat

    cut = "def f(x):\n    return"
    fresh = encode_chat(MSGS, tokenizer)
    assert encode_chat([*MSGS, {"role": "assistant", "content": cut}], tokenizer, continue_final=True) == \
        fresh + tokenizer.encode_text(cut)

@pytest.mark.parametrize("extra, param", [
    ({"continue_final_message": True}, "add_generation_prompt"),  # vLLM: both true is an error
    ({"add_generation_prompt": False}, "add_generation_prompt"),
    ({"continue_final_message": "yes", "add_generation_prompt": False}, "continue_final_message"),
    ({"continue_final_message": True, "add_generation_prompt": False, "_last": "user"}, "messages"),
])
def test_continue_final_message_bad_values_are_400s(srv, extra, param):
    body = {"model": "tiny", "max_tokens": 2, **{k: v for k, v in extra.items() if k != "_last"},
            "messages": MSGS if extra.get("_last") == "user" else [*MSGS, {"role": "assistant", "content": "x"}]}
    r = httpx.post(srv.base_url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_continuous_usage_stats_counts_tokens_on_every_chunk(client):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=6, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    counted = [c.usage.completion_tokens for c in chunks if c.choices and c.choices[0].delta.content]
    assert counted and counted == sorted(counted) and counted[-1] <= 6
    assert chunks[-1].usage.completion_tokens == 6
    assert all(c.usage.prompt_tokens == chunks[-1].usage.prompt_tokens for c in chunks if c.usage)
