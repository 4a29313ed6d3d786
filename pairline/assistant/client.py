"""The one interface the assistant talks to a model through.

`Client.stream(messages, ...)` returns a `Reply`: iterate it for text deltas; afterwards it holds the
whole text, why it finished, usage and timings. `InProcessClient` runs an `Engine` in this process
(its prefix reuse makes a chat's history free: each turn prefills only its new tokens). A remote
client for `pairline serve` plugs in behind the same two methods (see docs/assistant.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from pairline.engine.constraint import Grammar
from pairline.engine.constraint import warm as warm_grammar
from pairline.engine.generate import CancelToken, Timings, Usage
from pairline.errors import PairlineError


@dataclass(slots=True)
class Reply:
    """One answer as it streams. `deltas` yields text; the fields are final once it is exhausted."""

    deltas: Iterator[str]
    cancel: CancelToken
    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    tokens: int = 0
    # the tokens the request's prediction came to (0 without one), counted by the client from the
    # one tokenization it does anyway (an estimate where it has no tokenizer: a remote client)
    prediction_tokens: int = 0

    def __iter__(self) -> Iterator[str]:
        for delta in self.deltas:
            self.text += delta
            yield delta

    def run(self) -> Reply:
        for _ in self:
            pass
        return self

    def close(self) -> None:
        """Stop the underlying stream (releases the engine if the caller stopped iterating early).
        `deltas` may be any iterator (a placeholder before the stream is set up has no close)."""
        close = getattr(self.deltas, "close", None)
        if close is not None:
            close()


class Client(Protocol):
    """What the assistant needs of a model. Every client declares each capability as a field, so
    nothing probes for one with getattr."""

    supports_prefix: bool  # stream() takes `prefix=`: continues an answer already started (priming, forced dividers)
    supports_stop: bool  # stream() takes `stop=` strings and ends the answer at one
    model_name: str
    family: str  # chat/prompt family: "qwen2", "llama", ...
    load_s: float  # seconds it took to load the model (or to open the session)
    n_ctx: int | None  # the context window in tokens; None where it is not known here (a server's)
    supports_ahead: bool  # ahead() prefills a prompt before it is sent (else ahead() does nothing)
    supports_grammar: bool  # stream() takes `grammar=`: the answer is decoded under it (else it is refused)

    def stream(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        prefix: str = "",
        prediction: str | None = None,
        stop: tuple[str, ...] = (),
        cancel: CancelToken | None = None,
        speculation: str = "auto",
        grammar: Grammar | None = None,
    ) -> Reply:
        """Answer `messages`; `prefix` is the start of the assistant's answer, already written
        (it is not repeated in the reply's text). Greedy. `speculation="off"` turns drafting off
        (to measure what it gives; in-process only). `grammar`: what the whole answer, `prefix`
        included, must match (only where `supports_grammar`)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def ahead(self, messages: list[dict], prefix: str = "") -> None:
        """Prefill, off the caller's thread, the prompt `messages` (and `prefix`, as stream() would
        continue it) will make, so that a later stream() whose prompt extends it prefills only the
        rest. A newer call replaces (cancels) the older one; stream() and reset() cancel it too.
        Returns at once. A head start only: it may be dropped at any time."""
        ...

    def reset(self) -> None:
        """Forget the prompt state the model caches here, so the next answer pays its whole prompt
        (benchmarks measure cold requests). A server's cache is not this client's: nothing to do."""
        ...

    def describe(self) -> dict:
        """Where the model runs, for a benchmark's record: {"runtime": the runtime's name, "threads":
        the CPU threads it uses}; both None for a server (it does not say)."""
        ...


class InProcessClient:
    """An Engine in this process. `ahead` prefills on one background thread (started on first use)
    through `Engine.prefill`, taking the engine's lock one chunk at a time, so a real request waits
    for at most the chunk in flight (less: the CPU runtimes stop inside a chunk on cancel)."""

    supports_prefix = True
    supports_stop = True
    supports_ahead = True
    supports_grammar = True

    def __init__(self, engine) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.family = engine.tokenizer.family
        self.load_s = engine.load_s
        self.n_ctx = engine.runtime.n_ctx
        self._ahead_cv = threading.Condition()  # guards the three fields below
        self._ahead_job: tuple[list[dict], str, CancelToken] | None = None  # posted, not yet picked up
        self._ahead_cancel: CancelToken | None = None  # the newest ahead work's
        self._requests = 0  # answers streaming now: ahead work posted meanwhile would be stale
        self._ahead_thread: threading.Thread | None = None
        # llguidance's vocabulary takes 0.2-0.8 s to build (once per process): build it now, so the
        # first edit's grammar is ready by the end of its prefill
        warm_grammar(engine.tokenizer)

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer.encode_text(text))

    def reset(self) -> None:
        self._cancel_ahead()
        self.engine.reset()

    def prompt_ids(self, messages: list[dict], prefix: str = "") -> list[int]:
        """The token ids stream() sends for `messages` and `prefix` (the model's own answer so far,
        plain text after the rendered conversation)."""
        ids = self.engine.chat_prompt(messages)
        if prefix:
            ids += self.engine.tokenizer.encode_text(prefix)
        return ids

    # ---------------------------------------------------------------- prefill ahead

    def ahead(self, messages: list[dict], prefix: str = "") -> None:
        with self._ahead_cv:
            if self._ahead_cancel is not None:
                self._ahead_cancel.cancel()
            if self._requests:
                self._ahead_job = self._ahead_cancel = None
                return  # an answer is streaming: the conversation is about to grow past this prompt
            self._ahead_cancel = CancelToken()
            self._ahead_job = (messages, prefix, self._ahead_cancel)
            if self._ahead_thread is None:
                self._ahead_thread = threading.Thread(target=self._ahead_loop, name="pairline-ahead", daemon=True)
                self._ahead_thread.start()
            self._ahead_cv.notify()

    def _cancel_ahead(self) -> None:
        with self._ahead_cv:
            if self._ahead_cancel is not None:
                self._ahead_cancel.cancel()
            self._ahead_job = self._ahead_cancel = None

    def _ahead_loop(self) -> None:
        while True:
            with self._ahead_cv:
                while self._ahead_job is None:
                    self._ahead_cv.wait()
                messages, prefix, cancel = self._ahead_job
                self._ahead_job = None
            with contextlib.suppress(Exception):  # a head start: failing costs the real request nothing
                self._prefill_ahead(messages, prefix, cancel)

    def _prefill_ahead(self, messages: list[dict], prefix: str, cancel: CancelToken) -> None:
        if cancel.cancelled:
            return
        ids = self.prompt_ids(messages, prefix)  # tokenized here, off the caller's thread
        if len(ids) >= self.n_ctx:
            return  # the request itself will say the prompt does not fit
        steps = self.engine.prefill(ids, cancel=cancel, keep_prefix=self.engine.system_prefix(messages, ids))
        while not cancel.cancelled:
            with self.engine.lock:  # one chunk at a time: a real request waits for one at most
                if cancel.cancelled or next(steps, None) is None:
                    return

    def _begin_request(self) -> None:
        with self._ahead_cv:  # a re-entrant lock: _cancel_ahead takes it too
            self._cancel_ahead()
            self._requests += 1

    def _end_request(self) -> None:
        with self._ahead_cv:
            self._requests -= 1

    def describe(self) -> dict:
        said = self.engine.runtime.describe()
        return {"runtime": said["runtime"], "threads": said["threads"]}

    def stream(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        prefix: str = "",
        prediction: str | None = None,
        stop: tuple[str, ...] = (),
        cancel: CancelToken | None = None,
        speculation: str = "auto",
        grammar: Grammar | None = None,
    ) -> Reply:
        from pairline.engine.sampling import SamplingParams

        self._cancel_ahead()  # the real request goes first: ahead work stops within a chunk
        cancel = cancel or CancelToken()
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)
        pred = self.engine.tokenizer.encode_text(prediction) if prediction else None
        if grammar is not None:
            grammar = dataclasses.replace(grammar, prefix=prefix)  # the answer's written start comes first
        if prefix:
            ids = self.prompt_ids(messages, prefix)
            shared = self.engine.system_prefix(messages, ids)  # Engine.chat marks it itself
            gen = self.engine.generate(ids, params, prediction=pred, cancel=cancel, keep_prefix=shared,
                                       speculation=speculation, grammar=grammar)
        else:
            gen = self.engine.chat(messages, params, prediction=pred, cancel=cancel, speculation=speculation,
                                   grammar=grammar)
        reply = Reply(iter(()), cancel, prediction_tokens=len(pred) if pred else 0)

        def deltas() -> Iterator[str]:
            self._begin_request()  # no ahead work while it streams (nor posted meanwhile)
            try:
                for event in gen:
                    reply.tokens += event.token_id >= 0
                    if event.text:
                        yield event.text
            finally:
                self._end_request()
                reply.finish_reason = gen.finish_reason or "cancelled"
                reply.usage, reply.timings = gen.usage, gen.timings

        reply.deltas = deltas()
        return reply


def open_client(
    model: str,
    *,
    n_ctx: int | None = None,
    server: str | None = None,
    runtime: str | None = None,
    mode: str | None = None,
    one_shot: bool = False,
) -> Client:
    """The in-process engine for `model`, or a `pairline serve` session at `server` (its model is
    the server's; the API key, if any, comes from PAIRLINE_API_KEY). `mode` (deep, realtime, auto)
    asks a `pairline route` router for a tier; None sends nothing, as a plain server expects.
    `one_shot`: the process answers one request and exits (load_engine)."""
    if server:
        import os

        return RemoteClient(server, api_key=os.environ.get("PAIRLINE_API_KEY"), mode=mode)
    from pairline.engine.load import load_engine

    return InProcessClient(load_engine(model, runtime=runtime, n_ctx=n_ctx, one_shot=one_shot))


# --------------------------------------------------------------------------- remote: a `pairline serve` session


def session_url(url: str) -> str:
    """`--server` as the session's WebSocket URL. `pairline serve` prints its http:// address first,
    so http(s):// is taken too, and an OpenAI-style base URL ending in /v1."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise PairlineError(f"--server takes http://HOST:PORT or ws://HOST:PORT, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/responses"):
        path = path.removesuffix("/v1") + "/v1/responses"
    return f"{scheme}://{parts.netloc}{path}"


class RemoteClient:
    """A session of `pairline serve` over its WebSocket protocol (docs/protocol.md). The server keeps
    the conversation and its KV; each call sends only the messages the session has not seen yet.
    When the caller's history no longer extends the session's (a retry rewrote it, say), a new
    session is opened and the whole history is sent once.

    The protocol has no way to start the assistant's answer for it, so `supports_prefix` is False:
    the coder then neither primes the answer nor caps SEARCH parts (both need a prefix). Nor has it
    stop strings (`supports_stop` False): the agent cancels the stream itself once its action is
    complete. It does carry a grammar (`supports_grammar`): `grammar=` goes out as pairline's
    `grammar` field of response.create and the server decodes the answer under it (a router passes
    it on, or refuses the turn, never answering unconstrained); a grammar's `prefix` cannot be sent,
    for want of an assistant prefix. The server's context size is not part of the session, so
    `n_ctx` is None."""

    supports_prefix = False
    supports_stop = False
    supports_ahead = True  # draft.update: the server prefills the draft into the session's KV
    supports_grammar = True  # response.create's `grammar` (docs/protocol.md)
    n_ctx = None

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 600.0,
                 mode: str | None = None) -> None:
        self.url = session_url(url)
        self.api_key = api_key
        self.timeout = timeout
        self.mode = mode  # a router's tier, sent in session.update; None: not sent at all
        self.ws = None
        self.session: list[dict] = []  # the conversation the server holds, as messages
        self.instructions: str | None = None
        self.model_name = "remote"
        self.family = "qwen2"
        self.load_s = 0.0
        self._connect()

    def _connect(self) -> None:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        self.close()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        t0 = time.perf_counter()
        try:
            self.ws = connect(self.url, open_timeout=10, close_timeout=2, additional_headers=headers).__enter__()
            created = json.loads(self.ws.recv(timeout=10))
        except (OSError, TimeoutError) as err:
            raise PairlineError(f"cannot reach pairline serve at {self.url}: {err}") from None
        except (WebSocketException, json.JSONDecodeError) as err:
            # something answers there, but not a pairline session: another HTTP server, a wrong path
            self.close()
            raise PairlineError(f"no pairline serve session at {self.url}: {err}") from None
        if not isinstance(created, dict):
            self.close()
            raise PairlineError(f"no pairline serve session at {self.url}: it sent {str(created)[:80]}")
        if created.get("type") != "session.created":
            raise PairlineError(f"pairline serve refused the session: {created.get('error', created)}")
        if self.mode is not None:
            self._send_mode()
        self.load_s = time.perf_counter() - t0
        model = created["session"].get("model") or "remote"
        self.model_name = model
        try:
            from pairline.models.registry import get_spec

            self.family = get_spec(model).family
        except PairlineError:
            self.family = "llama" if "smol" in model.lower() or "llama" in model.lower() else "qwen2"
        self.session, self.instructions = [], None

    def _send(self, event: dict) -> None:
        """One client event; a connection that broke is a one-line error, and the next call reconnects."""
        from websockets.exceptions import WebSocketException

        try:
            self.ws.send(json.dumps(event))
        except (OSError, WebSocketException) as err:
            self.ws = None
            raise PairlineError(f"lost the connection to pairline serve: {err}") from None

    def _send_mode(self) -> None:
        from websockets.exceptions import WebSocketException

        self._send({"type": "session.update", "session": {"mode": self.mode}})
        try:
            answer = json.loads(self.ws.recv(timeout=10))
        except (OSError, TimeoutError, WebSocketException, json.JSONDecodeError) as err:
            self.close()
            raise PairlineError(f"{self.url} did not answer the mode request: {err}") from None
        if answer.get("type") != "session.updated":
            err = answer.get("error") or {}
            self.close()
            raise PairlineError(f"{self.url} does not take mode {self.mode!r} ({err.get('message', answer)}); "
                                "--mode needs a `pairline route` router")

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1  # no tokenizer on this side; code runs 3-4 characters a token

    def reset(self) -> None:
        pass  # the server's KV is the session's, not ours to drop

    def ahead(self, messages: list[dict], prefix: str = "") -> None:
        """Send the next user message as the session's draft (`draft.update`), which the server
        prefills while nothing else runs. Only where the turn will extend this session by that one
        message: a turn that opens a new session, or sends more, has nothing here to prefill into."""
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        convo = [m for m in messages if m["role"] != "system"]
        new = convo[len(self.session) :]
        if self.ws is None or prefix or system != self.instructions or convo[: len(self.session)] != self.session \
                or not self.session or len(new) != 1 or new[0]["role"] != "user":
            return
        with contextlib.suppress(PairlineError):  # a broken link is reported by the turn itself
            self._send({"type": "draft.update", "text": new[0]["content"]})

    def describe(self) -> dict:
        return {"runtime": None, "threads": None}

    def stream(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        prefix: str = "",
        prediction: str | None = None,
        stop: tuple[str, ...] = (),
        cancel: CancelToken | None = None,
        speculation: str = "auto",
        grammar: Grammar | None = None,
    ) -> Reply:
        if prefix:
            raise PairlineError("pairline serve cannot continue a started answer (no assistant prefix)")
        if grammar is not None and grammar.prefix:
            raise PairlineError("pairline serve cannot continue a started answer under a grammar (its prefix "
                                "cannot be sent: the session protocol has no assistant prefix)")
        if stop:
            raise PairlineError("pairline serve's session protocol has no stop strings")
        if speculation != "auto":
            raise PairlineError("pairline serve chooses its own speculation; drafting turns off in-process only")
        cancel = cancel or CancelToken()
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        convo = [m for m in messages if m["role"] != "system"]
        # the history diverged: a fresh session gets all of it once. A session that holds nothing yet
        # takes any system prompt as it is (`instructions` goes with the request): opening another
        # there put a handshake, 5-50 ms, between a web app tab's first Enter and its request
        if convo[: len(self.session)] != self.session or (self.session and system != self.instructions) \
                or self.ws is None:
            self._connect()
        new = convo[len(self.session) :]
        event = {
            "type": "response.create",
            "input": [{"type": "message", "role": m["role"], "content": m["content"]} for m in new],
            "max_output_tokens": max(1, min(max_tokens, 4096)),
            "temperature": 0,
        }
        if system is not None:
            event["instructions"] = system
        if prediction:
            event["prediction"] = {"type": "content", "content": prediction}
        if grammar is not None:
            event["grammar"] = {"kind": grammar.kind, "source": grammar.source}
        reply = Reply(iter(()), cancel, prediction_tokens=self.count_tokens(prediction) if prediction else 0)
        self._send(event)
        self.instructions = system

        def deltas() -> Iterator[str]:
            t0 = time.perf_counter()
            ws, lock = self.ws, threading.Lock()
            cancel_sent, over = threading.Event(), threading.Event()

            def send_cancel() -> None:  # on the cancelling thread: the reader below blocks, never polls
                with lock:
                    if over.is_set() or cancel_sent.is_set():
                        return
                    cancel_sent.set()
                    with contextlib.suppress(Exception):  # a closed link ends the read below anyway
                        ws.send(json.dumps({"type": "response.cancel"}))

            forget = cancel.on_cancel(send_cancel)
            try:
                while True:
                    try:
                        raw = ws.recv(timeout=max(0.0, t0 + self.timeout - time.perf_counter()))
                    except TimeoutError:
                        raise PairlineError("pairline serve did not answer in time") from None
                    ev = json.loads(raw)
                    kind = ev.get("type")
                    if kind == "response.output_text.delta":
                        if not reply.timings.ttft_s:
                            reply.timings.ttft_s = time.perf_counter() - t0
                        reply.tokens += 1
                        yield ev["delta"]
                    elif kind == "error":
                        err = ev.get("error", {})
                        if cancel_sent.is_set() and err.get("code") == "response_cancel_not_active":
                            continue  # the answer ended before our cancel arrived
                        self.close()  # the server's conversation is now unknown: the next call starts over
                        raise PairlineError(f"pairline serve: {err.get('code')}: {err.get('message')}")
                    elif kind in ("response.completed", "response.incomplete", "response.cancelled", "response.failed"):
                        self._finish(reply, ev, kind)
                        return
            except Exception as err:
                if isinstance(err, PairlineError):
                    raise
                self.ws = None
                raise PairlineError(f"lost the connection to pairline serve: {err}") from None
            finally:
                forget()
                with lock:  # a cancel from now on is about nothing: it must not reach the next turn
                    over.set()
                if reply.finish_reason is None:
                    reply.finish_reason = "cancelled"
                # the session recorded the answer as far as it went (cancelled answers too)
                if self.ws is not None:
                    self.session = [*convo, {"role": "assistant", "content": reply.text}]

        reply.deltas = deltas()
        return reply

    def _finish(self, reply: Reply, ev: dict, kind: str) -> None:
        resp = ev.get("response", {})
        reason = (resp.get("incomplete_details") or {}).get("reason")
        reply.finish_reason = {
            "response.completed": "stop",
            "response.cancelled": "cancelled",
            "response.failed": "error",
        }.get(kind, "length" if reason == "max_output_tokens" else "cancelled")
        u = resp.get("usage") or {}
        details = u.get("output_tokens_details") or {}
        reply.usage = Usage(
            prompt_tokens=u.get("input_tokens", 0),
            completion_tokens=u.get("output_tokens", 0),
            cached_tokens=(u.get("input_tokens_details") or {}).get("cached_tokens", 0),
            accepted_prediction_tokens=details.get("accepted_prediction_tokens", 0),
            rejected_prediction_tokens=details.get("rejected_prediction_tokens", 0),
        )
        t = resp.get("timings") or {}
        reply.timings.decode_tokens_per_s = t.get("decode_tokens_per_s") or 0.0
        reply.timings.prefill_s = t.get("prefill_s") or 0.0
        reply.tokens = max(reply.tokens, reply.usage.completion_tokens)
