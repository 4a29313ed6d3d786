"""The remote client: a `pairline serve` session (real uvicorn server, tiny random-weight engine)
behind the same Client interface as the in-process engine."""

from __future__ import annotations

import threading

import pytest

from pairline.assistant.client import RemoteClient, open_client
from pairline.assistant.coder import Coder
from pairline.engine.generate import CancelToken
from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError
from tests.engine_helpers import tiny_engine

pytest.importorskip("websockets")


@pytest.fixture(scope="module")
def server(smollm2_gguf):
    from pairline.server.app import ServerThread
    from pairline.server.config import ServerConfig

    engine = tiny_engine(Tokenizer.load(smollm2_gguf), n_ctx=2048)
    srv = ServerThread(engine, ServerConfig(max_sessions=4)).__enter__()
    yield srv
    srv.stop()


def test_streams_and_sends_only_new_messages(server):
    client = open_client("ignored", server=server.ws_url.removesuffix("/v1/responses"))
    assert isinstance(client, RemoteClient) and not client.supports_prefix
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    first = client.stream(history, max_tokens=8)
    deltas = list(first)
    assert "".join(deltas) == first.text and first.finish_reason in {"stop", "length"}
    ws = client.ws
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "and again"}]
    second = client.stream(history, max_tokens=8).run()
    assert client.ws is ws  # same session: the history was not sent again
    assert second.usage.cached_tokens > 0 and second.usage.prompt_tokens > second.usage.cached_tokens
    client.close()


def test_the_first_turn_uses_the_session_already_open(server):
    """A session that holds nothing yet takes the turn's system prompt as it is: no new session
    (a handshake on the way to the first token) for the first turn, whatever its instructions."""
    client = RemoteClient(server.ws_url)
    ws = client.ws
    reply = client.stream([{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}],
                          max_tokens=4).run()
    assert client.ws is ws and reply.finish_reason in {"stop", "length"}
    other = client.stream([{"role": "system", "content": "be verbose"}, {"role": "user", "content": "one"}],
                          max_tokens=4).run()
    assert client.ws is not ws and other.finish_reason  # instructions changed under a held history: a new one
    client.close()


def test_diverging_history_opens_a_new_session(server):
    client = RemoteClient(server.ws_url)
    history = [{"role": "user", "content": "one"}]
    reply = client.stream(history, max_tokens=4).run()
    ws = client.ws
    other = [{"role": "user", "content": "something else entirely"}]
    again = client.stream(other, max_tokens=4).run()
    assert client.ws is not ws and reply.finish_reason and again.finish_reason  # a new session, both answered
    client.close()


def test_cancel_stops_the_answer(server):
    client = RemoteClient(server.ws_url)
    cancel = CancelToken()
    reply = client.stream([{"role": "user", "content": "write a lot"}], max_tokens=1500, cancel=cancel)
    got = []
    for delta in reply:
        got.append(delta)
        if len(got) == 3:
            cancel.cancel()
    assert reply.finish_reason == "cancelled" and reply.usage.completion_tokens < 1500
    # the session stays usable and continues after the cut answer
    follow = client.stream(
        [{"role": "user", "content": "write a lot"}, {"role": "assistant", "content": reply.text},
         {"role": "user", "content": "more"}],
        max_tokens=4,
    ).run()
    assert follow.finish_reason in {"stop", "length"}
    client.close()


def test_a_cancel_from_another_thread_reaches_the_server_while_the_reader_waits(server):
    """The reader blocks on the socket (it does not poll): a cancel from another thread (a Stop
    button, Ctrl-C) is sent by that thread, and a cancel after the answer ended reaches nothing."""
    client = RemoteClient(server.ws_url)
    cancel = CancelToken()
    reply = client.stream([{"role": "user", "content": "write a lot"}], max_tokens=1500, cancel=cancel)
    it = iter(reply)
    next(it)  # streaming; the reader now waits in recv between tokens
    threading.Thread(target=cancel.cancel).start()
    rest = list(it)
    assert reply.finish_reason == "cancelled" and 1 + len(rest) == reply.tokens < 1500
    done = CancelToken()
    short = client.stream([{"role": "user", "content": "write a lot"}, {"role": "assistant", "content": reply.text},
                           {"role": "user", "content": "more"}], max_tokens=3, cancel=done).run()
    done.cancel()  # after its end: no response.cancel goes out, so the next turn sees no stray error
    follow = client.stream([{"role": "user", "content": "write a lot"}, {"role": "assistant", "content": reply.text},
                            {"role": "user", "content": "more"}, {"role": "assistant", "content": short.text},
                            {"role": "user", "content": "again"}], max_tokens=3).run()
    assert short.finish_reason in {"stop", "length"} and follow.finish_reason in {"stop", "length"}
    client.close()


def test_coder_does_not_prime_a_remote_client(server, tmp_path):
    from pairline.assistant.workspace import Workspace

    client = RemoteClient(server.ws_url)
    coder = Coder(client, Workspace(tmp_path.resolve()))
    assert coder.search_cap is None and not coder.can_prefix
    with pytest.raises(PairlineError, match="cannot continue a started answer"):
        client.stream([{"role": "user", "content": "x"}], max_tokens=2, prefix="a.py\n")
    client.close()


def test_bad_url_and_unreachable_server():
    with pytest.raises(PairlineError, match="http://HOST:PORT or ws://HOST:PORT"):
        RemoteClient("localhost:1")
    with pytest.raises(PairlineError, match="cannot reach pairline serve"):
        RemoteClient("ws://127.0.0.1:9")


def test_http_address_and_something_else_at_the_url(server):
    """`pairline serve` prints its http:// address: that works as --server too. A URL where
    something other than a session answers (here the server's own /health) is a one-line error."""
    base = server.ws_url.removesuffix("/v1/responses").replace("ws://", "http://")
    client = RemoteClient(base)
    assert client.url == server.ws_url and client.model_name
    client.close()
    with pytest.raises(PairlineError, match="no pairline serve session at"):
        RemoteClient(base + "/health/v1/responses")


def test_ahead_sends_the_draft_and_the_server_prefills_it(server):
    import time

    client = RemoteClient(server.ws_url)
    assert client.supports_ahead
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    first = client.stream(history, max_tokens=4).run()
    long = " ".join(f"word{i}" for i in range(200))
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": f"now this: {long}"}]
    client.ahead(history)
    time.sleep(2.0)  # the server prefills a draft while nothing else runs (a tiny model: milliseconds)
    second = client.stream(history, max_tokens=4).run()
    assert second.usage.prompt_tokens - second.usage.cached_tokens <= 16  # only the draft's tail after Enter
    client.close()
