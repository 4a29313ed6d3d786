"""The server's WebSocket sessions at /v1/responses (docs/protocol.md): one connection is one
session; the conversation and its KV stay on the server; each turn sends only what is new. The
protocol and the socket both sides share: pairline.wire.protocol, pairline.wire.session_socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from pairline.engine.generate import Generation
from pairline.engine.sampling import SamplingParams
from pairline.errors import PairlineError
from pairline.server.scheduler import CancelledWhileQueued, Job, QueueFull
from pairline.server.sessions import Session
from pairline.wire.protocol import (
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
from pairline.wire.session_socket import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    SessionSocket,
    Turn,
    active_turn,
    client_messages,
)

log = logging.getLogger("pairline.server")

@dataclass(slots=True)
class ServerTurn(Turn):
    """The response being generated, and what the client asked of it meanwhile."""

    job: Job
    state: ResponseState
    steer: list[dict] | None = None

    def current_response(self) -> str | None:
        return self.state.id

    def in_progress(self) -> bool:
        return not (self.job.cancel.cancelled and self.steer is None)


class Connection(SessionSocket):
    def __init__(self, ws: WebSocket, server):
        super().__init__(ws)
        self.server = server
        self.session = Session(server.engine.tokenizer, server.model_name)
        self.turn: ServerTurn | None = None
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
        turn = active_turn(self.turn, ev.get("response_id"), "response_cancel_not_active")
        turn.job.cancel.cancel()

    async def on_response_steer(self, ev: dict) -> None:
        messages = parse_steer(ev)
        turn = active_turn(self.turn, ev.get("response_id") or ev.get("previous_response_id"),
                           "response_steer_not_active")
        turn.steer = (turn.steer or []) + messages
        turn.job.cancel.cancel()  # lands within one decode step; the turn task continues from there

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
        self.turn = ServerTurn(job, state)
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


def engine_error(err: Exception) -> ProtocolError:
    """An engine failure as the client is told it: an `error` event here, an error body or chunk over HTTP."""
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
