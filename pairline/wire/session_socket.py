"""A WebSocket session as it talks to its client, the same at the server and at the router: events
numbered in wire order, the idle timeout, the close codes, the turn in progress that
response.cancel and response.steer act on. The protocol itself: pairline.wire.protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from starlette.websockets import WebSocket

from pairline.wire.protocol import ProtocolError

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN = 1000, 1001, 1008, 1013


class Turn:
    """One response.create on a session, until its last steered successor ends: what response.cancel
    and response.steer act on. The server's (ServerTurn: a job on the engine) and the router's
    (RouterTurn: attempts on backends) each say which response the client knows of and whether it
    still runs."""

    __slots__ = ()

    def current_response(self) -> str | None:
        """The id of the response in progress, as the client knows it (None before it is shown)."""
        raise NotImplementedError

    def in_progress(self) -> bool:
        """Whether a cancel or a steer can still act on it."""
        raise NotImplementedError


TurnT = TypeVar("TurnT", bound=Turn)


def active_turn(turn: TurnT | None, response_id: str | None, code: str) -> TurnT:
    """The turn a response.cancel or response.steer naming `response_id` (None: whichever runs) acts
    on; a ProtocolError `code` when none is in progress, or another one is."""
    if turn is None or not turn.in_progress():
        raise ProtocolError("there is no response in progress", code=code)
    if response_id is not None and response_id != turn.current_response():
        raise ProtocolError(f"response {response_id!r} is not in progress", code=code, param="response_id")
    return turn


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
        await self.send_encoded(encode_event, ev)

    async def send_encoded(self, encode: Callable[..., str], *args) -> None:
        """The event `encode(sequence_number, *args)` returns, as JSON text (DeltaEvents.encode for
        the deltas, which are most of a session's events)."""
        if self.closed:
            return
        async with self.send_lock:  # one writer at a time, so sequence numbers are in wire order
            text = encode(self.seq, *args)
            self.seq += 1
            try:
                await self.ws.send_text(text)
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


def encode_event(seq: int, ev: dict) -> str:
    """An event's JSON with `sequence_number` set to seq, second after `type` (or where ev has it)."""
    event = {"type": ev.get("type"), "sequence_number": None, **ev}
    event["sequence_number"] = seq
    return json.dumps(event)


class DeltaEvents:
    """The `response.output_text.delta` events of one content part, encoded to the very text that
    json.dumps gives for the event's dict, but with only the delta encoded per event: the fields
    around it are encoded once."""

    def __init__(self, pos: dict):
        self.pos = json.dumps(pos)[1:-1]  # "item_id": ..., "output_index": 0, "content_index": 0

    def encode(self, seq: int, text: str) -> str:
        return (f'{{"type": "response.output_text.delta", "sequence_number": {seq}, {self.pos}, '
                f'"delta": {json.dumps(text)}, "logprobs": []}}')


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
