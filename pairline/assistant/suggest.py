"""Inline suggestions as the user types: fill-in-the-middle at the cursor, the newest request only.

`open_suggester(model)` runs the model in this process; `open_suggester(model, server=URL)` asks a
`pairline serve` (its `/v1/completions` with `suffix`). Either way:

    s = open_suggester("qwen2.5-coder-0.5b")
    sug = s.suggest(prefix, suffix)      # returns at once; cancels the suggestion still running
    for delta in sug: ...                # what to insert at the cursor, inline stop rules applied
    sug.text, sug.finish_reason          # stop | length | cancelled

The in-process suggester keeps its own KV cache (an engine fork), so the file stays prefilled across
keystrokes whatever else the model does, and the FIM prompt puts the text before the cursor last
(engine/fim.py): typing at the cursor appends to the prompt, and a keystroke prefills only its own few
tokens.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import httpx

from pairline.assistant.client import Client, InProcessClient
from pairline.engine.fim import (
    FimFormat,
    InlineRules,
    InlineStopper,
    fim_format,
    heal_grammar,
    healed_prompt,
    window,
)
from pairline.engine.generate import CancelToken, Engine, Timings
from pairline.engine.sampling import SamplingParams
from pairline.errors import PairlineError

DEFAULT_MAX_TOKENS = 64


class Suggestion:
    """One suggestion as it streams. Iterate it (once) for text deltas; afterwards `text`,
    `finish_reason`, `first_s` (suggest() to the first shown character, None if nothing was shown),
    `first_token_s` (to the model's first token) and `timings` (the engine's, in-process only) are final."""

    def __init__(self, produce: Callable[[Suggestion], Iterator[str]], cancel: CancelToken):
        self._produce = produce
        self._cancel = cancel
        self.started = time.perf_counter()
        self.text = ""
        self.finish_reason: str | None = None
        self.first_s: float | None = None
        self.first_token_s: float | None = None  # the model's first token, shown or held by the stop rules
        self.total_s: float | None = None
        self.timings = Timings()
        self.prompt_tokens = 0
        self.cached_tokens = 0

    @property
    def cancelled(self) -> bool:
        return self._cancel.cancelled

    def cancel(self) -> None:
        self._cancel.cancel()

    def __iter__(self) -> Iterator[str]:
        try:
            for delta in self._produce(self):
                if self._cancel.cancelled:
                    break  # a newer keystroke: nothing more is shown for this position
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - self.started
                if delta:
                    if self.first_s is None:
                        self.first_s = time.perf_counter() - self.started
                    self.text += delta
                    yield delta
        finally:
            if self._cancel.cancelled:
                self.finish_reason = "cancelled"
            self.total_s = time.perf_counter() - self.started

    def run(self) -> Suggestion:
        for _ in self:
            pass
        return self


class Suggester(Protocol):
    """What an editor integration needs: suggest, warm, and a chat/edit client on the same model."""

    client: Client
    model_name: str

    def suggest(self, prefix: str, suffix: str, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                rules: InlineRules | None = None) -> Suggestion: ...

    def warm(self, prefix: str, suffix: str) -> None: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


class _Latest:
    """The newest request's cancel token: a new one cancels the one before (latest wins)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: CancelToken | None = None

    def renew(self) -> CancelToken:
        token = CancelToken()
        with self._lock:
            if self._token is not None:
                self._token.cancel()
            self._token = token
        return token

    def cancel(self) -> None:
        with self._lock:
            if self._token is not None:
                self._token.cancel()


class LocalSuggester:
    """Suggestions from an Engine in this process, on a fork of it (its own KV cache). `order`: the
    FIM prompt order (engine/fim.py); "prefix" where the model has no FIM tokens."""

    def __init__(self, engine: Engine, order: str = "spm"):
        self.engine = engine.fork()
        self.client: Client = InProcessClient(engine)
        self.model_name = engine.model_name
        self.fmt: FimFormat = fim_format(engine.tokenizer, order)
        self._latest = _Latest()
        self._warm_job: tuple[list[int], CancelToken] | None = None
        self._warm_cv = threading.Condition()
        self._warm_thread: threading.Thread | None = None

    def prompt(self, prefix: str, suffix: str) -> tuple[list[int], str]:
        """The windowed, healed prompt's ids, and the healed text the answer starts with."""
        prefix, suffix = window(prefix, suffix)
        return healed_prompt(self.engine.tokenizer, self.fmt, prefix, suffix)

    def suggest(self, prefix: str, suffix: str, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                rules: InlineRules | None = None) -> Suggestion:
        cancel = self._latest.renew()
        ids, healed = self.prompt(prefix, suffix)
        if len(ids) + max_tokens >= self.engine.runtime.n_ctx:
            raise PairlineError(f"the suggestion's prompt has {len(ids)} tokens; the context holds "
                                f"{self.engine.runtime.n_ctx}")
        stopper = InlineStopper(prefix, suffix if self.fmt.uses_suffix else "", rules)
        params = SamplingParams(max_tokens=max_tokens, stop_token_ids=self.fmt.stop_ids)

        def produce(sug: Suggestion) -> Iterator[str]:
            ended = CancelToken()  # the stop rules' own end: not a cancel of the suggestion
            cancel.link(ended)
            gen = self.engine.generate(ids, params, cancel=ended, grammar=heal_grammar(healed))
            skip = len(healed)  # the healed token's text is the user's, already on screen
            for event in gen:  # holds the engine lock: a running edit finishes first
                text = event.text[skip:]
                skip = max(0, skip - len(event.text))
                if not stopper.done:
                    yield stopper.push(text)
                if stopper.done:
                    ended.cancel()  # the engine stops at this step
            yield stopper.finish() if not cancel.cancelled else ""
            sug.finish_reason = "stop" if stopper.done or gen.finish_reason == "stop" else gen.finish_reason
            sug.timings, sug.prompt_tokens = gen.timings, gen.usage.prompt_tokens
            sug.cached_tokens = gen.usage.cached_tokens

        return Suggestion(produce, cancel)

    def warm(self, prefix: str, suffix: str) -> None:
        """Prefill this position's prompt on a background thread, one chunk at a time under the
        engine lock; the next suggest() (or warm()) cancels it."""
        cancel = self._latest.renew()
        ids = self.prompt(prefix, suffix)[0]
        with self._warm_cv:
            self._warm_job = (ids, cancel)
            if self._warm_thread is None:
                self._warm_thread = threading.Thread(target=self._warm_loop, name="pairline-fim-warm", daemon=True)
                self._warm_thread.start()
            self._warm_cv.notify()

    def _warm_loop(self) -> None:
        while True:
            with self._warm_cv:
                while self._warm_job is None:
                    self._warm_cv.wait()
                ids, cancel = self._warm_job
                self._warm_job = None
            with contextlib.suppress(Exception):  # a head start: failing costs the real request nothing
                steps = self.engine.prefill(ids, cancel=cancel)
                while not cancel.cancelled:
                    with self.engine.lock:
                        if cancel.cancelled or next(steps, None) is None:
                            break

    def cancel(self) -> None:
        self._latest.cancel()

    def close(self) -> None:
        self.cancel()


class HttpSuggester:
    """Suggestions from `pairline serve` (or any server with OpenAI's `suffix` on /v1/completions),
    streamed; the inline stop rules run here and close the stream once they end the suggestion."""

    def __init__(self, server: str, api_key: str | None = None, model: str | None = None):
        self.base = server.rstrip("/").removesuffix("/v1")
        if not self.base.startswith(("http://", "https://")):
            raise PairlineError(f"the server must be http://HOST:PORT, got {server!r}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=httpx.Timeout(30.0, connect=5.0))
        self.model_name = model or ""
        self._server, self._api_key = server, api_key
        self._client: Client | None = None
        self._latest = _Latest()
        self._fim = True  # cleared once the server says its model has no FIM tokens
        self._lock = threading.Lock()
        self._open: httpx.Response | None = None  # the newest suggestion's stream

    @property
    def client(self) -> Client:
        """The server's session client, opened on first use (suggestions alone need no session)."""
        if self._client is None:
            from pairline.assistant.client import RemoteClient

            self._client = RemoteClient(self._server, api_key=self._api_key)
        return self._client

    def suggest(self, prefix: str, suffix: str, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                rules: InlineRules | None = None) -> Suggestion:
        cancel = self._latest.renew()
        self._close_open()
        prefix, suffix = window(prefix, suffix)

        def produce(sug: Suggestion) -> Iterator[str]:
            body = {"prompt": prefix, "max_tokens": max_tokens, "stream": True, "temperature": 0}
            if self._fim:
                body["suffix"] = suffix
            if self.model_name:
                body["model"] = self.model_name
            stopper = InlineStopper(prefix, suffix if self._fim else "", rules)
            finish = "length"
            try:
                with self.http.stream("POST", "/v1/completions", json=body) as resp:
                    self._track(resp, cancel)
                    if resp.status_code == 400 and self._fim and b'"suffix"' in resp.read():
                        self._fim = False  # a model with no FIM tokens: complete from the prefix alone
                        yield from produce(sug)
                        return
                    if resp.status_code != 200:
                        raise PairlineError(f"the server answered {resp.status_code}: {resp.read()[:300]!r}")
                    for line in resp.iter_lines():
                        if cancel.cancelled or stopper.done:
                            break  # leaving the block closes the stream: the server stops the model
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            raise PairlineError(f"the server failed: {chunk['error'].get('message')}")
                        choice = chunk["choices"][0]
                        yield stopper.push(choice.get("text") or "")
                        finish = choice.get("finish_reason") or finish
            except httpx.HTTPError:
                if not cancel.cancelled:
                    raise  # a newer keystroke closed the stream under the read: that is the cancel
            if not cancel.cancelled:
                yield stopper.finish()
            sug.finish_reason = "stop" if stopper.done else finish

        return Suggestion(produce, cancel)

    def _track(self, resp, cancel: CancelToken) -> None:
        """Remember the stream a suggestion reads, so that the next keystroke closes it at once:
        a request still queued or prefilling sends nothing the reader could notice a cancel between."""
        with self._lock:
            self._open = resp
            if cancel.cancelled:
                _abort(resp)

    def _close_open(self) -> None:
        with self._lock:
            if self._open is not None:
                _abort(self._open)
                self._open = None

    def warm(self, prefix: str, suffix: str) -> None:
        """Nothing here: OpenAI's completions have no prefill-only request."""

    def cancel(self) -> None:
        self._latest.cancel()
        self._close_open()

    def close(self) -> None:
        self.cancel()
        self.http.close()


def _abort(resp: httpx.Response) -> None:
    """Cut a response another thread is reading: shut its socket down, which wakes the blocked read at
    once (closing the response would wait for the read's lock) and tells the server the client left."""
    import socket

    with contextlib.suppress(Exception):
        sock = resp.extensions["network_stream"].get_extra_info("socket")
        sock.shutdown(socket.SHUT_RDWR)


def open_suggester(model: str, *, server: str | None = None, runtime: str | None = None,
                   n_ctx: int | None = None, order: str = "spm") -> Suggester:
    """The in-process suggester for `model`, or one asking `pairline serve` at `server` (the API
    key, if any, from PAIRLINE_API_KEY)."""
    if server:
        import os

        return HttpSuggester(server, api_key=os.environ.get("PAIRLINE_API_KEY"))
    from pairline.engine.load import load_engine

    return LocalSuggester(load_engine(model, runtime=runtime, n_ctx=n_ctx), order=order)
