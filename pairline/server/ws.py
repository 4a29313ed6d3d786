"""The server's WebSocket sessions at /v1/responses (docs/protocol.md): one connection is one
session; the conversation and its KV stay on the server; each turn sends only what is new. The
protocol and the socket both sides share: pairline.wire.protocol, pairline.wire.session_socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from starlette.websockets import WebSocket, WebSocketDisconnect

from pairline.engine.constraint import Grammar, compile_grammar
from pairline.engine.generate import Generation
from pairline.engine.sampling import SamplingParams
from pairline.errors import PairlineError
from pairline.server.scheduler import CancelledWhileQueued, Job, JobEvents, QueueFull
from pairline.server.sessions import Session
from pairline.wire.protocol import (
    CANCEL_FIELDS,
    FINAL_EVENT,
    SESSION_FIELDS,
    AheadLimits,
    CreateRequest,
    DraftGate,
    ProtocolError,
    ResponseState,
    Sampling,
    already_active,
    api_key_error,
    apply_context,
    check_fields,
    context_bytes,
    context_text,
    dispatch_event,
    draft_flood_error,
    opt_str,
    parse_context,
    parse_create,
    parse_draft,
    parse_sampling,
    parse_steer,
    response_status,
    session_body,
    steer_not_applied,
    usage_responses,
)
from pairline.wire.session_socket import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    DeltaEvents,
    SessionSocket,
    Turn,
    active_turn,
    client_messages,
)

log = logging.getLogger("pairline.server")

@dataclass(slots=True, eq=False)
class ServerTurn(Turn):
    """One response on the engine (a job), and what the client asked of it meanwhile. A steered
    response keeps taking steers while its final events go out (`closing`): they all start its
    successor, so a steer that races the end of a response is applied or answered, never lost."""

    job: Job
    state: ResponseState
    messages: list[dict]  # its new input
    req: CreateRequest
    sampling: Sampling
    files: str | None  # the context's message, as it was when the response was created
    events: JobEvents
    built: dict = field(default_factory=dict)  # the prompt and messages, set on the engine thread
    steer: list[dict] | None = None  # steer input for the successor
    steer_ids: list[str | None] = field(default_factory=list)  # each steer event's event_id
    closing: bool = False  # steered: its final events are going out, the successor comes next
    cancel_successor: bool = False  # a cancel arrived while closing: the successor is cancelled too
    created_extra: dict = field(default_factory=dict)  # more fields for its response.created

    def current_response(self) -> str | None:
        return self.state.id

    def in_progress(self) -> bool:
        return self.closing or not (self.job.cancel.cancelled and self.steer is None)


class Connection(SessionSocket):
    def __init__(self, ws: WebSocket, server):
        super().__init__(ws)
        self.server = server
        self.session = Session(server.engine.tokenizer, server.model_name)
        self.turn: ServerTurn | None = None
        self.turn_task: asyncio.Task | None = None
        self.limits: AheadLimits = server.cfg.ahead
        self.draft_gate = DraftGate(self.limits.draft_rate)
        self.ahead_held = False  # a draft or context change came during a response: prefill after it

    async def send_error(self, err: ProtocolError, event_id: str | None = None) -> None:
        self.server.metrics.error(err.code)
        await super().send_error(err, event_id)

    # ------------------------------------------------------------ receiving

    async def run(self) -> None:
        await self.send("session.created", session=self.session.describe())
        watchdog = asyncio.create_task(self.watch_idle(self.server.cfg.idle_timeout_s, log, f"ws {self.session.id}"))
        try:
            await self.receive_loop()
        finally:
            watchdog.cancel()

    def idle_since(self) -> float | None:
        return None if self.turn is not None else self.session.last_active

    async def receive_loop(self) -> None:
        async for raw in client_messages(self.ws):
            self.session.last_active = time.monotonic()
            await dispatch_event(self, raw, self.server.cfg.max_message_bytes)

    async def on_session_update(self, ev: dict) -> None:
        body = session_body(ev)
        check_fields(body, SESSION_FIELDS, "session")
        self.session.defaults = self.session.defaults.merged(parse_sampling(body, self.server.cfg.max_output_tokens))
        await self.send("session.updated", session=self.session.describe())
        if self.session.draft is not None or self.session.context:
            self.want_ahead()  # new instructions: a new prefix to prefill

    async def on_response_create(self, ev: dict) -> None:
        req = parse_create(ev, self.server.cfg.max_output_tokens)
        if self.turn is not None:
            raise already_active()
        self.session.check_previous(req.previous_response_id)
        if req.grammar is not None:  # compiled once, off the loop: a bad one is an error, and nothing is queued
            await check_grammar(req.grammar, "grammar", self.server.engine.tokenizer)
        sampling = self.session.defaults.merged(req.sampling)
        # the draft is consumed (the input is what was sent); the context stays for later turns.
        # Withdrawn before the request is queued, which stops other sessions' prefill ahead, not this one's
        draft, self.session.draft, self.ahead_held = self.session.draft, None, False
        self.server.scheduler.drop_ahead(self.session.id, stop_chunk=False)
        try:  # the turn exists before this returns: a steer or cancel right behind it finds it
            turn = self.submit(req.messages, sampling, req, self.session.last_response_id,
                               context_text(self.session.context))
        except ProtocolError:  # the queue is full: nothing was consumed
            self.session.draft = draft
            self.want_ahead()
            raise
        self.turn_task = asyncio.create_task(self.run_turns(turn))

    async def on_response_cancel(self, ev: dict) -> None:
        check_fields(ev, CANCEL_FIELDS, "response.cancel")
        turn = active_turn(self.turn, ev.get("response_id"), "response_cancel_not_active")
        if turn.closing:  # steered and ending: what runs next is its successor, cancelled as it starts
            turn.cancel_successor = True
            return
        turn.steer = None  # a cancel wins over a steer not yet applied
        turn.job.cancel.cancel()

    async def on_response_steer(self, ev: dict) -> None:
        messages = parse_steer(ev)
        turn = active_turn(self.turn, ev.get("response_id") or ev.get("previous_response_id"),
                           "response_steer_not_active")
        turn.steer = (turn.steer or []) + messages
        turn.steer_ids.append(opt_str(ev, "event_id"))
        turn.job.cancel.cancel()  # lands within one decode step; the turn task continues from there

    async def on_draft_update(self, ev: dict) -> None:
        text = parse_draft(ev, self.limits)
        self.session.draft = text  # only the latest matters: a flood is coalesced, never queued
        self.want_ahead()
        if self.draft_gate.flooding():
            raise draft_flood_error(self.limits.draft_rate)

    async def on_context_update(self, ev: dict) -> None:
        items = parse_context(ev, self.limits)
        self.session.context = apply_context(self.session.context, items, self.limits)
        await self.send("context.updated", event_id=opt_str(ev, "event_id"), paths=list(self.session.context),
                        bytes=context_bytes(self.session.context))
        self.want_ahead()

    def want_ahead(self) -> None:
        """Have the engine prefill the next turn's prompt as far as it is known, when it is idle.
        During a response it waits for the response to end (its KV is the response's)."""
        if self.closed or not self.server.cfg.prefill_ahead:
            return
        if self.turn is not None:
            self.ahead_held = True
            return
        session = self.session

        def make_tokens() -> list[int]:  # on the engine thread, from the session's latest state
            return session.ahead_prompt(session.draft, session.defaults.instructions, context_text(session.context))

        self.server.scheduler.set_ahead(session.id, make_tokens)

    # ------------------------------------------------------------ turns

    def submit(self, messages: list[dict], sampling: Sampling, req: CreateRequest, previous: str | None,
               files: str | None, steers: int = 0) -> ServerTurn:
        """Queue one response on the engine and make it the session's turn (synchronously)."""
        server, session = self.server, self.session
        state = ResponseState(server.model_name, sampling, previous, req.metadata)
        events = JobEvents(asyncio.get_running_loop())
        built: dict = {}

        def make_prompt() -> list[int]:  # on the engine thread
            built["prompt"], built["messages"] = session.turn_prompt(messages, sampling.instructions, files)
            return built["prompt"]

        params = _params(sampling, server.cfg.default_max_output_tokens)
        job = Job(session.id, make_prompt, params, events.put, prediction=req.prediction, grammar=req.grammar)
        try:
            server.scheduler.submit(job)
        except QueueFull as err:
            raise ProtocolError(f"the server is busy ({err}); retry shortly", code="rate_limit_exceeded", status=429,
                                type_="rate_limit_error") from None
        # a successor says how many response.steer events its input holds (a router relaying the
        # session counts on it: a steer that came too late for it steers the successor instead)
        extra = {"pairline": {"steers_applied": steers}} if steers else {}
        self.turn = ServerTurn(job, state, messages, req, sampling, files, events, built, created_extra=extra)
        return self.turn

    async def run_turns(self, turn: ServerTurn | None) -> None:
        """One response, then its successors while the client steers; then what was held."""
        try:
            while turn is not None and not self.closed:
                turn = await self.run_one(turn)
        except Exception:  # a bug must not leave the session waiting on a turn that is gone
            log.exception("ws %s: turn failed", self.session.id)
            if self.turn is not None:
                self.turn.job.cancel.cancel()
                self.turn = None
            await self.send_error(ProtocolError("internal error in the session", code="server_error", status=500,
                                                type_="server_error"))
        finally:
            if self.ahead_held and not self.closed:
                self.ahead_held = False
                self.want_ahead()

    async def run_one(self, turn: ServerTurn) -> ServerTurn | None:
        """Streams one response; returns its successor when it was steered."""
        session, state, job = self.session, turn.state, turn.job
        t_recv = time.perf_counter()
        for type_, fields in state.opening_events(**turn.created_extra):
            await self.send(type_, **fields)
        deltas = DeltaEvents(state.pos())
        while True:
            kind, payload = await turn.events.get()
            if kind == "tokens":
                text = "".join(ev.text for ev in payload)
                if text:
                    state.text += text
                    await self.send_encoded(deltas.encode, text)
                continue
            break
        # From here the outcome is decided: steered if a steer has arrived by now (a response that had
        # just finished is then cut at its end), otherwise the session is free at once: a later steer
        # gets `response_steer_not_active`, and the client may send its next turn.
        queued = kind == "error" and isinstance(payload, CancelledWhileQueued)
        if turn.steer is not None and queued:  # steered before it started: the successor takes both inputs
            turn.closing = True
            state.status, state.incomplete_reason, state.timings = "incomplete", "steered", job.server_timings()
            for type_, fields in state.closing_events():
                await self.send(type_, **fields)
            await self.send(FINAL_EVENT[state.status], response=state.to_dict())
            return self._successor(turn, turn.messages)
        if turn.steer is None or kind == "error":
            self.turn = None  # before the final event: the client may send its next turn the moment it arrives
        if kind == "error":
            await self._failed(state, job, payload, turn.req.event_id)
            for event_id in turn.steer_ids if turn.steer is not None else []:
                await self.send_error(steer_not_applied("the response failed"), event_id)
            return None
        g: Generation = payload
        session.commit(turn.built["prompt"], turn.built["messages"], g, state.id, turn.files)
        steered = turn.steer is not None
        turn.closing = steered
        state.text = g.text
        state.usage = usage_responses(g.usage.to_openai())
        state.usage["input_tokens_details"]["prefilled_ahead_tokens"] = job.prefilled_ahead  # pairline's
        state.timings = job.server_timings()
        state.status, state.incomplete_reason = response_status(g.finish_reason, steered)
        for type_, fields in state.closing_events():
            await self.send(type_, **fields)
        await self.send(FINAL_EVENT[state.status], response=state.to_dict())
        _log_response(session.id, state, g, t_recv)
        session.last_active = time.monotonic()
        return self._successor(turn, []) if steered else None

    def _successor(self, turn: ServerTurn, before: list[dict]) -> ServerTurn | None:
        """The response a steer asked for, with every steer that arrived until now (those that came
        while the steered response's final events went out included)."""
        steer, ids = turn.steer or [], turn.steer_ids
        self.turn = None
        if self.closed:
            return None
        # the successor answers the same request: under the same grammar, if it had one
        req = CreateRequest(messages=[], sampling=turn.req.sampling, metadata=turn.req.metadata,
                            grammar=turn.req.grammar)
        try:
            nxt = self.submit(before + steer, turn.sampling, req, turn.state.id, turn.files, steers=len(ids))
        except ProtocolError as err:  # the queue is full: each steer is answered, not lost
            asyncio.create_task(self._send_errors(err, ids))
            return None
        if turn.cancel_successor:
            nxt.job.cancel.cancel()
        return nxt

    async def _send_errors(self, err: ProtocolError, event_ids: list[str | None]) -> None:
        for event_id in event_ids or [None]:
            await self.send_error(err, event_id)

    async def _failed(self, state: ResponseState, job: Job, err: Exception, event_id: str | None) -> None:
        if isinstance(err, CancelledWhileQueued):  # cancelled while queued: nothing ran
            state.status, state.timings = "cancelled", job.server_timings()
            await self.send("response.cancelled", response=state.to_dict())
            return
        perr = engine_error(err)
        state.status, state.error = "failed", {"code": perr.code, "message": perr.message}
        await self.send_error(perr, event_id)
        await self.send("response.failed", response=state.to_dict())
        log.info("ws %s %s failed: %s", self.session.id, state.id, perr.message)

    # ------------------------------------------------------------ end of the session

    def cancel_active(self) -> None:
        turn = self.turn
        if turn is not None:
            if turn.closing:
                turn.cancel_successor = True
            else:
                turn.steer = None
                turn.job.cancel.cancel()

    async def close(self, code: int, reason: str, error: ProtocolError | None = None) -> None:
        """A final event (error, or the cancelled response), then the close frame."""
        if self.closed:
            return
        self.cancel_active()
        if self.turn_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.turn_task), 2.0)
        if error is not None:
            await self.send_error(error)
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


def _params(s: Sampling, default_max: int) -> SamplingParams:
    return SamplingParams(max_tokens=s.max_output_tokens or default_max, temperature=s.temperature or 0.0,
                          top_p=s.top_p if s.top_p is not None else 1.0, seed=s.seed)


def engine_error(err: Exception) -> ProtocolError:
    """An engine failure as the client is told it: an `error` event here, an error body or chunk over HTTP."""
    msg = str(err)
    if "context holds" in msg or "KV cache holds" in msg:
        return ProtocolError(msg, code="context_length_exceeded", param="input")
    if isinstance(err, PairlineError):
        return ProtocolError(msg, code="invalid_request_error")
    return ProtocolError(f"internal error: {type(err).__name__}", code="server_error", status=500, type_="server_error")


async def check_grammar(grammar: Grammar, param: str, tokenizer) -> None:
    """Compile a request's grammar once, on a thread (the first grammar of a process builds
    llguidance's view of the vocabulary, 0.2-0.8 s), so that a bad one is refused (`invalid_value`,
    naming `param`) before anything is queued or streamed. HTTP requests and sessions both use it."""
    try:
        await asyncio.to_thread(compile_grammar, grammar, tokenizer)
    except PairlineError as err:
        raise ProtocolError(str(err), code="invalid_value", param=param) from None
    except Exception as err:  # not the client's fault
        log.exception("compiling a grammar failed")
        raise ProtocolError(f"internal error compiling the grammar: {type(err).__name__}", code="server_error",
                            status=500, type_="server_error") from None


def _log_response(session_id: str, state: ResponseState, g: Generation, t_recv: float) -> None:
    t = state.timings or {}
    log.info("ws %s %s %s in=%d cached=%d out=%d queue=%.1fms ttft=%.1fms total=%.1fms", session_id, state.id,
             state.status, g.usage.prompt_tokens, g.usage.cached_tokens, g.usage.completion_tokens,
             1e3 * t.get("queue_s", 0), 1e3 * (t.get("server_ttft_s") or 0), 1e3 * (time.perf_counter() - t_recv))


async def websocket_endpoint(ws: WebSocket) -> None:
    server = ws.app.state.pairline
    await ws.accept()
    conn = Connection(ws, server)
    if not server.authorized(ws.headers.get("authorization")):
        await conn.close(CLOSE_POLICY, "invalid API key", api_key_error())
        return
    if len(server.connections) >= server.cfg.max_connections or server.shutting_down:
        await conn.close(CLOSE_TRY_AGAIN, "too many sessions",
                         ProtocolError(f"the server holds its maximum of {server.cfg.max_connections} sessions",
                                       code="session_limit_reached", status=429, type_="rate_limit_error"))
        return
    server.connections.add(conn)
    server.metrics.set("pairline:active_sessions", len(server.connections))
    log.info("ws %s open", conn.session.id)
    try:
        await conn.run()
    except WebSocketDisconnect:
        pass
    finally:
        conn.closed = True
        conn.cancel_active()  # a client that goes away stops its work
        server.connections.discard(conn)
        server.scheduler.release_owner(conn.session.id)
        server.metrics.set("pairline:active_sessions", len(server.connections))
        log.info("ws %s closed", conn.session.id)
