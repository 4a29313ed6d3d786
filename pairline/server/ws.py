"""The WebSocket session protocol at /v1/responses (docs/protocol.md): one connection is one
session; the conversation and its KV stay on the server; each turn sends only what is new."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from pairline.engine.generate import Generation
from pairline.engine.sampling import SamplingParams
from pairline.errors import PairlineError
from pairline.server.protocol import (
    CANCEL_FIELDS,
    FINAL_EVENT,
    SESSION_FIELDS,
    CreateRequest,
    ProtocolError,
    ResponseState,
    Sampling,
    already_active,
    api_key_error,
    check_fields,
    dispatch_event,
    parse_create,
    parse_sampling,
    parse_steer,
    response_status,
    session_body,
    usage_responses,
)
from pairline.server.scheduler import Job, QueueFull
from pairline.server.sessions import Session

log = logging.getLogger("pairline.server")

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN = 1000, 1001, 1008, 1013


@dataclass(slots=True)
class Turn:
    """The response being generated, and what the client asked of it meanwhile."""

    job: Job
    state: ResponseState
    steer: list[dict] | None = None


class SessionSocket:
    """The client's WebSocket as a session writes to it: events numbered in wire order. A server
    session (Connection) and a router session (RouterSession) are both one, so their events are
    stamped and shaped alike."""

    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.seq = 0
        self.send_lock = asyncio.Lock()
        self.closed = False

    async def send(self, type_: str, **fields) -> None:
        await self.forward({"type": type_, **fields})

    async def forward(self, ev: dict) -> None:
        """Any event to the client (the router relays a backend's), stamped with this session's own
        sequence number: second after `type`, or where a relayed event had its backend's."""
        if self.closed:
            return
        async with self.send_lock:  # one writer at a time, so sequence numbers are in wire order
            event = {"type": ev.get("type"), "sequence_number": None, **ev}
            event["sequence_number"] = self.seq
            self.seq += 1
            try:
                await self.ws.send_text(json.dumps(event))
            except Exception:  # the peer went away; the receive loop notices and cleans up
                self.closed = True

    async def send_error(self, err: ProtocolError, event_id: str | None = None) -> None:
        body = err.to_error()
        body["event_id"] = event_id
        await self.send("error", status=err.status, error=body)

    def idle_since(self) -> float | None:
        """When the client's last event arrived (time.monotonic()), or None while a response runs:
        a session waiting on its own answer is never idle."""
        raise NotImplementedError

    async def close(self, code: int, reason: str, error: ProtocolError | None = None) -> None:
        """A final `error` event if given, then the close frame."""
        raise NotImplementedError

    async def watch_idle(self, idle_s: float, logger: logging.Logger, name: str) -> None:
        """Runs beside the receive loop: once the session has gone `idle_s` without a client event
        while no response runs, an `error` event `session_expired` (408) and a normal close, so an
        abandoned connection does not hold its session (and what it pins) forever."""
        while not self.closed:
            await asyncio.sleep(min(idle_s / 4, 1.0))
            since = self.idle_since()
            if since is not None and time.monotonic() - since > idle_s:
                logger.info("%s idle for %.0fs: closing", name, idle_s)
                await self.close(CLOSE_NORMAL, "idle timeout", ProtocolError(
                    f"session closed after {idle_s:g}s without a client event", code="session_expired", status=408))
                return


class Connection(SessionSocket):
    def __init__(self, ws: WebSocket, server):
        super().__init__(ws)
        self.server = server
        self.session = Session(server.engine.tokenizer, server.model_name)
        self.turn: Turn | None = None
        self.turn_task: asyncio.Task | None = None

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

    async def on_response_create(self, ev: dict) -> None:
        req = parse_create(ev, self.server.cfg.max_output_tokens)
        if self.turn is not None:
            raise already_active()
        self.session.check_previous(req.previous_response_id)
        self.start_turn(req)

    async def on_response_cancel(self, ev: dict) -> None:
        check_fields(ev, CANCEL_FIELDS, "response.cancel")
        turn = self._active(ev.get("response_id"), "response_cancel_not_active")
        turn.job.cancel.cancel()

    async def on_response_steer(self, ev: dict) -> None:
        messages = parse_steer(ev)
        turn = self._active(ev.get("response_id") or ev.get("previous_response_id"), "response_steer_not_active")
        turn.steer = (turn.steer or []) + messages
        turn.job.cancel.cancel()  # lands within one decode step; the turn task continues from there

    def _active(self, response_id, code: str) -> Turn:
        turn = self.turn
        if turn is None or turn.job.cancel.cancelled and turn.steer is None:
            raise ProtocolError("there is no response in progress", code=code)
        if response_id is not None and response_id != turn.state.id:
            raise ProtocolError(f"response {response_id!r} is not in progress", code=code, param="response_id")
        return turn

    # ------------------------------------------------------------ turns

    def start_turn(self, req: CreateRequest) -> None:
        sampling = self.session.defaults.merged(req.sampling)
        self.turn_task = asyncio.create_task(self.run_turns(req, sampling))

    async def run_turns(self, req: CreateRequest, sampling: Sampling) -> None:
        """One response, then its successors while the client steers."""
        messages, previous = req.messages, self.session.last_response_id
        while messages is not None and not self.closed:
            steer = await self.run_one(messages, sampling, req, previous)
            messages, previous = steer, self.session.last_response_id
            req = CreateRequest(messages=[], sampling=req.sampling)  # a successor carries no prediction

    async def run_one(self, messages: list[dict], sampling: Sampling, req: CreateRequest,
                      previous: str | None) -> list[dict] | None:
        server, session = self.server, self.session
        state = ResponseState(server.model_name, sampling, previous, req.metadata)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        built: dict = {}

        def make_prompt() -> list[int]:  # on the engine thread
            built["prompt"], built["messages"] = session.turn_prompt(messages, sampling.instructions)
            return built["prompt"]

        params = _params(sampling, server.cfg.default_max_output_tokens)
        job = Job(session.id, make_prompt, params, lambda k, v: loop.call_soon_threadsafe(queue.put_nowait, (k, v)),
                  prediction=req.prediction)
        t_recv = time.perf_counter()
        self.turn = Turn(job, state)
        try:
            server.scheduler.submit(job)
        except QueueFull as err:
            self.turn = None
            await self.send_error(ProtocolError(f"the server is busy ({err}); retry shortly",
                                                code="rate_limit_exceeded", status=429, type_="rate_limit_error"),
                                  req.event_id)
            return None
        for type_, fields in state.opening_events():
            await self.send(type_, **fields)
        pos = state.pos()
        while True:
            kind, payload = await queue.get()
            if kind == "token":
                if payload.text:
                    state.text += payload.text
                    await self.send("response.output_text.delta", **pos, delta=payload.text, logprobs=[])
                continue
            break
        steer = self.turn.steer if self.turn else None
        if steer is None or kind == "error":
            self.turn = None  # before the final event: the client may send its next turn the moment it arrives
        if kind == "error":
            await self._failed(state, job, payload, req.event_id)
            return None
        g: Generation = payload
        session.commit(built["prompt"], built["messages"], g, state.id)
        state.text = g.text
        state.usage = usage_responses(g.usage.to_openai())
        state.timings = job.server_timings()
        state.status, state.incomplete_reason = response_status(g.finish_reason, steer is not None)
        for type_, fields in state.closing_events():
            await self.send(type_, **fields)
        await self.send(FINAL_EVENT[state.status], response=state.to_dict())
        _log_response(session.id, state, g, t_recv)
        session.last_active = time.monotonic()
        return steer

    async def _failed(self, state: ResponseState, job: Job, err: Exception, event_id: str | None) -> None:
        from pairline.server.scheduler import _Cancelled

        if isinstance(err, _Cancelled):  # cancelled while queued: nothing ran
            state.status, state.timings = "cancelled", job.server_timings()
            await self.send("response.cancelled", response=state.to_dict())
            return
        perr = _engine_error(err)
        state.status, state.error = "failed", {"code": perr.code, "message": perr.message}
        await self.send_error(perr, event_id)
        await self.send("response.failed", response=state.to_dict())
        log.info("ws %s %s failed: %s", self.session.id, state.id, perr.message)

    # ------------------------------------------------------------ end of the session

    def cancel_active(self) -> None:
        if self.turn is not None:
            self.turn.steer = None
            self.turn.job.cancel.cancel()

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


def _engine_error(err: Exception) -> ProtocolError:
    msg = str(err)
    if "context holds" in msg or "KV cache holds" in msg:
        return ProtocolError(msg, code="context_length_exceeded", param="input")
    if isinstance(err, PairlineError):
        return ProtocolError(msg, code="invalid_request_error")
    return ProtocolError(f"internal error: {type(err).__name__}", code="server_error", status=500, type_="server_error")


def _log_response(session_id: str, state: ResponseState, g: Generation, t_recv: float) -> None:
    t = state.timings or {}
    log.info("ws %s %s %s in=%d cached=%d out=%d queue=%.1fms ttft=%.1fms total=%.1fms", session_id, state.id,
             state.status, g.usage.prompt_tokens, g.usage.cached_tokens, g.usage.completion_tokens,
             1e3 * t.get("queue_s", 0), 1e3 * (t.get("server_ttft_s") or 0), 1e3 * (time.perf_counter() - t_recv))


async def client_messages(ws: WebSocket) -> AsyncIterator[str]:
    """Each message the client sends, as text (a binary frame decoded as UTF-8, leniently), until it disconnects."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        raw = msg.get("text")
        if raw is None and msg.get("bytes") is not None:
            raw = msg["bytes"].decode("utf-8", errors="replace")
        yield raw or ""


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
