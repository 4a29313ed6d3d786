"""A WebSocket session at the router: the same protocol as `pairline serve` (docs/protocol.md) plus
`mode`, in front of whichever backend serves each turn.

The router keeps the conversation as text (every turn's input and answer), so a turn can go to any
backend:
- a pairline server (or an in-process engine) gets a backend session of its own, held open per
  tier so its KV stays warm; the turn is forwarded with only what that backend session has not
  seen yet (`WsLink.synced`), and the backend's events come back re-numbered;
- an OpenAI-compatible server gets the whole conversation each turn over /v1/chat/completions
  (SSE), translated into the session's events.
Drafts and context items (draft.update, context.update) are kept here too: the context enters every
turn's messages (an OpenAI-compatible backend gets them in the request; a pairline backend session
is kept in step with context.update), and drafts are passed on, throttled, to the pairline backend
sessions held open, which prefill ahead; a session with none yet opens one for the tier its draft
would go to.
Until a turn's first token, its events are held back: a backend that fails by then is replaced
unseen (retry, then the other tier); after it, the client gets an `error` event and
`response.failed`, never a hang or a silently truncated answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import httpx
from starlette.websockets import WebSocket, WebSocketDisconnect

from pairline.router.ahead import AHEAD_EVENT_ID, PrefillAhead
from pairline.router.backends import (
    GRAMMAR_REFUSED,
    RETRY_CODES,
    TERMINAL,
    Backend,
    Retryable,
    WsLink,
    chunk_finish,
    chunk_text,
    error_code,
    send_request,
    sse_events,
)
from pairline.router.classify import Route
from pairline.router.core import Attempt, Ledger, Router, check_mode, served_by
from pairline.router.metrics import labels
from pairline.router.resume import Progress, continuation
from pairline.wire.protocol import (
    CANCEL_FIELDS,
    DEFAULT_MAX_OUTPUT_TOKENS,
    FINAL_EVENT,
    SAMPLING_FIELDS,
    SESSION_FIELDS,
    AheadLimits,
    DraftGate,
    ProtocolError,
    ResponseState,
    Sampling,
    already_active,
    api_key_error,
    apply_context,
    check_fields,
    context_bytes,
    dispatch_event,
    draft_flood_error,
    grammar_field,
    new_id,
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
    with_context,
)
from pairline.wire.session_socket import CLOSE_POLICY, DeltaEvents, SessionSocket, Turn, active_turn, client_messages

log = logging.getLogger("pairline.router")

MAX_TOKENS = 4096  # checked here like the server does; each backend applies its own limit too
_OUTCOME = {"response.completed": "completed", "response.incomplete": "completed", "response.cancelled": "cancelled",
            "response.failed": "errored"}


Steer = tuple[list[dict], str | None]  # one response.steer: its input, its event_id


@dataclass(slots=True, eq=False)
class RouterTurn(Turn):
    """One response.create at the router: one accepted request, however many backend responses
    (steers) and attempts it takes."""

    ledger: Ledger
    mode: str
    route: Route
    new_msgs: list[dict]  # the input not yet in the router's history
    sampling: dict  # instructions, max_output_tokens, temperature, top_p, seed (session defaults merged)
    prediction: dict | None
    metadata: dict
    event_id: str | None
    previous: str | None  # the response this turn continues
    context: dict[str, str] = field(default_factory=dict)  # the context items, as at response.create
    grammar: dict | None = None  # pairline's `grammar` field, forwarded as is (only to backends that take it)
    # steers, (input, event_id) each: not yet sent to a backend, and sent to a backend session that has
    # not answered yet (its successor's response.created says how many it took; an error answers one)
    steer: list[Steer] = field(default_factory=list)
    steer_pending: list[Steer] = field(default_factory=list)
    absorbed: int = 0  # steers merged into the input of the next response shown (its steers_applied)
    cancel: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # emulated turns: cut the HTTP stream
    link: WsLink | None = None
    sent: bool = False  # the current attempt's request has gone out
    backend: Backend | None = None  # the attempt in flight (begun at the router)
    response_id: str | None = None  # the response the client knows of, once shown
    concluded: bool = False

    def current_response(self) -> str | None:
        return self.response_id

    def in_progress(self) -> bool:
        return not (self.concluded or (self.cancel and not self.steer and not self.steer_pending))

    def absorb(self) -> list[dict]:
        """The steers not sent yet, taken into the next request's input."""
        self.absorbed += len(self.steer)
        steer, self.steer = self.steer, []
        return _flat(steer)

    def shown(self, info: dict, applied: int = 0) -> dict:
        """The `pairline` object of a response.created: who serves it, and the steers its input holds."""
        applied, self.absorbed = applied + self.absorbed, 0
        return {**info, "steers_applied": applied} if applied else info


class RouterSession(PrefillAhead, SessionSocket):
    def __init__(self, ws: WebSocket, router: Router):
        super().__init__(ws)
        self.r = router
        self.id = new_id("sess")
        self.key = ws.headers.get("x-pairline-session") or self.id  # affinity: a client may bring its own
        self.defaults: dict = {}
        self.model: str | None = None
        self.mode: str | None = None
        self.history: list[dict] = []  # user and assistant messages, in order
        self.last_response_id: str | None = None
        self.links: dict[str, WsLink] = {}
        self.lost: dict[str, str] = {}  # tier -> the backend whose session died holding this conversation
        self.turn: RouterTurn | None = None
        self.turn_task: asyncio.Task | None = None
        self.last_active = time.monotonic()  # the client's last event, or the end of the last turn
        # ahead of the next turn (docs/protocol.md, "Prefill ahead")
        self.limits = AheadLimits()
        self.draft: str | None = None
        self.context: dict[str, str] = {}
        self.link_context: dict[str, dict[str, str]] = {}  # tier -> the context its backend session holds
        self.draft_gate = DraftGate(self.limits.draft_rate)
        self.draft_task: asyncio.Task | None = None  # a throttled draft on its way to the backends
        self.draft_sent = 0.0
        self.opening: asyncio.Task | None = None  # a backend session opened ahead of the first turn

    # ------------------------------------------------------------ sending

    async def send_error(self, err: ProtocolError, event_id: str | None = None) -> None:
        self.r.metrics.inc("ws_errors_total", f'code="{err.code}"')
        await super().send_error(err, event_id)

    def describe(self) -> dict:
        d = self.defaults
        return {"id": self.id, "object": "realtime.session", "model": self.model, "instructions": d.get("instructions"),
                "max_output_tokens": d.get("max_output_tokens"), "temperature": d.get("temperature"),
                "top_p": d.get("top_p"), "mode": self.mode or self.r.cfg.default_mode}

    # ------------------------------------------------------------ receiving

    async def run(self) -> None:
        await self.send("session.created", session=self.describe())
        watchdog = asyncio.create_task(self.watch_idle(self.r.cfg.session_idle_timeout_s, log,
                                                       f"router: session {self.id}"))
        try:
            async for raw in client_messages(self.ws):
                self.last_active = time.monotonic()
                await dispatch_event(self, raw, self.r.cfg.max_message_bytes)
        finally:
            watchdog.cancel()

    def idle_since(self) -> float | None:
        return None if self.turn is not None else self.last_active

    async def on_session_update(self, ev: dict) -> None:
        body = session_body(ev)
        check_fields(body, SESSION_FIELDS | {"mode"}, "session")
        mode = check_mode(body.get("mode"), "session.mode")
        parse_sampling(body, MAX_TOKENS)  # the same checks as the server's, before anything is kept
        self.defaults.update({k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None})
        self.mode = mode or self.mode
        self.model = body.get("model") or self.model
        await self.send("session.updated", session=self.describe())

    async def on_response_create(self, ev: dict) -> None:
        ev = dict(ev)
        mode = check_mode(ev.pop("mode", None))
        req = parse_create(ev, MAX_TOKENS)
        if self.turn is not None:
            raise already_active()
        if req.previous_response_id is not None and req.previous_response_id != self.last_response_id:
            raise ProtocolError(f"previous_response_id {req.previous_response_id!r} is not the latest response of "
                                "this session", code="previous_response_not_found", param="previous_response_id")
        sampling = {k: ev[k] if ev.get(k) is not None else self.defaults.get(k) for k in SAMPLING_FIELDS}
        system = [{"role": "system", "content": sampling["instructions"]}] if sampling["instructions"] else []
        mode, route = self.r.decide(mode or self.mode, with_context(system, self.context, self.history + req.messages))
        ledger = self.r.admit(route.tier)
        if ledger is None:
            raise self.r.busy_error(route.tier)
        self.draft = None  # consumed, as at the backend
        if self.draft_task is not None:
            self.draft_task.cancel()
        self.turn = RouterTurn(ledger, mode, route, req.messages, sampling, ev.get("prediction"), req.metadata,
                               req.event_id, self.last_response_id, context=self.context,
                               grammar=grammar_field(req.grammar) if req.grammar is not None else None)
        self.turn_task = asyncio.create_task(self.run_turn(self.turn))

    async def on_response_cancel(self, ev: dict) -> None:
        check_fields(ev, CANCEL_FIELDS, "response.cancel")
        turn = active_turn(self.turn, ev.get("response_id"), "response_cancel_not_active")
        turn.cancel = True
        turn.steer.clear()  # a cancel wins over steers not yet applied
        if turn.link is not None and turn.sent:
            with contextlib.suppress(ConnectionError):
                await turn.link.send({"type": "response.cancel"})
        turn.stop.set()

    async def on_response_steer(self, ev: dict) -> None:
        messages = parse_steer(ev)
        turn = active_turn(self.turn, ev.get("response_id") or ev.get("previous_response_id"),
                           "response_steer_not_active")
        if turn.link is not None and turn.sent and not turn.link.closed:
            await self._send_steer(turn, (messages, opt_str(ev, "event_id")))
        else:  # not sent yet (it joins the input), or an emulated turn (its stream is cut)
            turn.steer.append((messages, opt_str(ev, "event_id")))
            turn.stop.set()

    async def _send_steer(self, turn: RouterTurn, steer_: Steer) -> None:
        turn.steer_pending.append(steer_)
        messages, event_id = steer_
        steer = {"type": "response.steer", "input": _items(messages)}
        if event_id:
            steer["event_id"] = event_id
        with contextlib.suppress(ConnectionError):
            await turn.link.send(steer)

    async def on_draft_update(self, ev: dict) -> None:
        self.draft = parse_draft(ev, self.limits)
        self._pass_draft()
        if self.draft_gate.flooding():
            raise draft_flood_error(self.limits.draft_rate)

    async def on_context_update(self, ev: dict) -> None:
        items = parse_context(ev, self.limits)
        self.context = apply_context(self.context, items, self.limits)
        await self.send("context.updated", event_id=opt_str(ev, "event_id"), paths=list(self.context),
                        bytes=context_bytes(self.context))
        for tier, link in list(self.links.items()):
            if not link.closed:
                with contextlib.suppress(ConnectionError):  # a closed one is replaced, and synced, at its next turn
                    await self._sync_context(tier, link, self.context)
        self._open_ahead()

    # ------------------------------------------------------------ turns

    def conclude(self, turn: RouterTurn, outcome: str, ok: bool | None) -> None:
        """The turn is over: counted, its backend released, the session free for the next turn.
        Runs before the final event goes out, so a client may send its next turn the moment it
        arrives (and /metrics already counts this one)."""
        if turn.concluded:
            return
        turn.concluded = True
        if turn.backend is not None:
            self.r.end(turn.backend, ok)
            turn.backend = None
        turn.ledger.finish(outcome)
        if self.turn is turn:
            self.turn = None
            self.last_active = time.monotonic()  # the idle clock starts when the answer ends, as the server's

    def prefer(self, tier: str) -> Backend | None:
        link = self.links.get(tier)
        return link.backend if link is not None and not link.closed else None

    async def run_turn(self, turn: RouterTurn) -> None:
        last: Retryable | None = None
        try:
            async for att in self.r.attempts(turn.route.tier, self.key, self.prefer):
                if turn.cancel:
                    await self._cancelled_unseen(turn)
                    return
                b = att.backend
                if turn.grammar is not None and not b.grammar:  # never answered unconstrained: another may take it
                    last = b.grammar_refused()
                    log.info("router: session %s: %s", self.id, last)
                    continue
                turn.new_msgs = turn.new_msgs + turn.absorb()
                self.r.begin(b)
                turn.backend, turn.sent = b, False
                try:
                    if b.speaks_ws:
                        await self.turn_ws(turn, att)
                    else:
                        await self.turn_http(turn, att)
                    return
                except Retryable as err:
                    turn.backend = None
                    self.r.failed(b, err)
                    last = err
                    turn.steer, turn.steer_pending = turn.steer_pending + turn.steer, []
            self.conclude(turn, "errored", None)
            if last is not None and last.code == GRAMMAR_REFUSED:
                err = ProtocolError(f"no backend that takes 'grammar' could serve the response ({last})",
                                    code="unsupported_parameter", param="grammar")
            else:
                err = self.r.no_backend_error(last, "response")
            await self.send_error(err, turn.event_id)
        except asyncio.CancelledError:
            self.conclude(turn, "cancelled", None)
            raise
        except Exception as err:  # a bug here must still end the turn, visibly
            log.exception("router: session %s: turn failed", self.id)
            self.conclude(turn, "errored", None)
            await self.send_error(ProtocolError(f"router error: {type(err).__name__}", code="server_error",
                                                status=500, type_="server_error"), turn.event_id)
        finally:
            self.conclude(turn, "cancelled", None)

    async def _cancelled_unseen(self, turn: RouterTurn) -> None:
        """Cancelled while no backend had shown anything: a response that never ran."""
        state = ResponseState(self.model or "", _sampling(turn.sampling), turn.previous, turn.metadata)
        state.status = "cancelled"
        self.conclude(turn, "cancelled", None)
        await self.send("response.created", response={**state.to_dict(), "status": "in_progress"})
        await self.send("response.cancelled", response=state.to_dict())

    def _commit(self, turn: RouterTurn, text: str, response_id: str) -> None:
        self.history += turn.new_msgs + [{"role": "assistant", "content": text}]
        self.last_response_id = response_id

    async def _broken(self, turn: RouterTurn, info: dict, response: dict | None, text: str, why: str) -> None:
        """A backend died after the client saw part of the answer: say so, end the response as failed."""
        b = info["backend"]
        log.info("router: session %s: backend %s failed mid-response: %s", self.id, b, why)
        err = ProtocolError(f"backend {b} ({info['tier']}) failed mid-response ({why}); the answer is incomplete",
                            code="backend_failed", status=502, type_="server_error")
        self.conclude(turn, "errored", False)
        await self.send_error(err, turn.event_id)
        resp = dict(response or {})
        resp.update(status="failed", output_text=text, error={"code": err.code, "message": err.message})
        await self.send("response.failed", response=resp, pairline=info)

    # -------- a pairline backend: its own session, events relayed

    async def turn_ws(self, turn: RouterTurn, att: Attempt) -> None:
        r, b = self.r, att.backend
        link = self.links.get(att.tier)
        lost = self.lost.pop(att.tier, None)  # a backend session that died, and the conversation it held
        if link is None or link.backend is not b or not link.usable():
            if link is not None:
                lost = lost or (link.backend.name if link.closed else None)
                asyncio.create_task(link.close())
            self.links.pop(att.tier, None)
            link = await WsLink.open(b, r.cfg.connect_timeout_s, self.key)
            self.links[att.tier] = link
            self.link_context[att.tier] = {}
        turn.link = link
        turn.new_msgs = turn.new_msgs + turn.absorb()  # steered while the session opened
        try:
            await self._sync_context(att.tier, link, turn.context)
        except ConnectionError:
            self.links.pop(att.tier, None)
            raise Retryable(f"{b.name}: the session closed") from None
        missed = self.history[link.synced:]  # turns served elsewhere since (all of them on a new link)
        ev = {"type": "response.create", "input": _items(missed + turn.new_msgs),
              **{k: v for k, v in turn.sampling.items() if v is not None}}
        if turn.prediction is not None and b.prediction:
            ev["prediction"] = turn.prediction
        if turn.grammar is not None:  # run_turn sends a turn with one only to a backend that takes it
            ev["grammar"] = turn.grammar
        if turn.metadata:
            ev["metadata"] = turn.metadata
        if turn.event_id:
            ev["event_id"] = turn.event_id
        info = served_by(att, turn.mode, turn.route)
        if lost and missed:  # the backend session this conversation had is gone: rebuilt from its history
            info["rebuilt"] = {"lost": lost, "replayed_messages": len(missed)}
        t0 = time.perf_counter()
        try:
            await link.send(ev)
        except ConnectionError:
            self.links.pop(att.tier, None)
            raise Retryable(f"{b.name}: the session closed") from None
        turn.sent = True
        steers, turn.steer = turn.steer, []
        for steer in steers:  # steered while the request went out: now the backend session can take them
            await self._send_steer(turn, steer)
        if turn.cancel:
            with contextlib.suppress(ConnectionError):
                await link.send({"type": "response.cancel"})
        head: list[dict] = []
        started, text, last_t, response, first, deltas, item = False, "", 0.0, None, True, 0, None
        cfg = r.cfg
        while True:
            msg = await link.recv(cfg.idle_timeout_s if started else cfg.first_token_timeout_s)
            if msg is None:
                self.links.pop(att.tier, None)
                self.lost[att.tier] = b.name
                asyncio.create_task(link.close())
                if not started:
                    raise Retryable(f"{b.name}: the session closed or went silent before the first token")
                cut = ResponseState((response or {}).get("model") or self.model or "", _sampling(turn.sampling),
                                    turn.previous, turn.metadata, **_ids(response, item), text=text)
                await self._resume(turn, att, info, cut, deltas, "its session closed or went silent")
                return
            t = msg.get("type")
            err = msg.get("error") if t == "error" else None
            err = err if isinstance(err, dict) else {}
            code = err.get("code")
            if t == "context.updated" or err.get("event_id") == AHEAD_EVENT_ID:
                if t == "error":  # the backend refused what was passed on ahead: the next turn will say why
                    log.info("router: session %s: backend %s refused a draft or context: %s", self.id, b, code)
                continue  # the router answers context.update itself
            if code == "response_steer_not_active" and not (started and turn.steer_pending):
                continue  # about a steer of an earlier response, already answered by the router
            if not started:
                if code in RETRY_CODES:
                    raise Retryable.before_first_token(b.name, code)
                if t == "error" and not head and code != "response_cancel_not_active":
                    # refused before any response began (a grammar that does not compile...): the
                    # client's to fix, and nothing ran (a cancel's answer is about an earlier response)
                    self.conclude(turn, "errored", True)
                    await self.forward(msg)
                    await self._unanswered_steers(turn)
                    return
                head.append(msg)
                if t not in ("response.output_text.delta", "error") and t not in TERMINAL:
                    continue
                started = True
                last_t = time.perf_counter()
                r.ttft(b, last_t - t0)
                batch, head = head, []
            else:
                batch = [msg]
            for m in batch:
                t = m.get("type")
                if t == "error" and (m.get("error") or {}).get("code") == "response_steer_not_active":
                    turn.steer_pending.pop(0)  # the backend answered one steer: the client gets its answer
                elif t == "response.created":
                    response = m.get("response") or {}
                    if first and response.get("previous_response_id") is None:
                        response["previous_response_id"] = turn.previous  # a fresh backend session knows none
                    turn.response_id = response.get("id")
                    n = 0
                    if not first:  # a successor: its input is the steers the backend took, in order
                        n = (m.get("pairline") or {}).get("steers_applied", len(turn.steer_pending))
                        turn.new_msgs = turn.new_msgs + _flat(turn.steer_pending[:n])
                        del turn.steer_pending[:n]
                    m["pairline"] = turn.shown(info, n)
                elif t == "response.output_text.delta":
                    text += m.get("delta") or ""
                    deltas, item = deltas + 1, m.get("item_id") or item
                    now = time.perf_counter()
                    if now > last_t:
                        r.itl(b, now - last_t)
                    last_t = now
                elif t in TERMINAL:
                    resp = m.get("response") or {}
                    if first and resp.get("previous_response_id") is None:
                        resp["previous_response_id"] = turn.previous
                    m["pairline"] = info
                    kept = resp.get("usage") is not None
                    if kept:  # the backend kept this turn: so does the router
                        self._commit(turn, resp.get("output_text") or "", resp.get("id"))
                        link.synced = len(self.history)
                    steered = (resp.get("incomplete_details") or {}).get("reason") == "steered"
                    if steered:  # a successor follows on the same backend session
                        # (steered before it ran: not kept, and the successor's input starts with this one's)
                        turn.new_msgs, text, first = turn.new_msgs if not kept else [], "", False
                        await self.forward(m)
                        continue
                    self.conclude(turn, _OUTCOME[t], True)
                    await self.forward(m)
                    await self._unanswered_steers(turn)
                    return
                await self.forward(m)

    async def _unanswered_steers(self, turn: RouterTurn) -> None:
        """The response ended, not steered, while steers were on their way to the backend: each gets
        its error now (the backend's own answers, which follow, are skipped). After a cancel, the
        cancel won, as at the backend."""
        pending, turn.steer_pending = turn.steer_pending, []
        if turn.cancel:
            return
        for _, event_id in pending:
            await self.send_error(steer_not_applied("the response ended before the steer reached it"), event_id)

    # -------- an OpenAI-compatible backend: the conversation resent, SSE translated

    async def turn_http(self, turn: RouterTurn, att: Attempt, shown: bool = False) -> None:
        """`shown`: has the client seen a response of this turn yet (then failures are visible)."""
        r, b = self.r, att.backend
        info = served_by(att, turn.mode, turn.route)
        while True:
            body = self._chat_body(turn, b)
            t0 = time.perf_counter()
            try:
                resp = await send_request(r.client, b, "/chat/completions", body, stream=True, key=self.key)
            except Retryable as err:
                if not shown:
                    raise
                await self._broken(turn, info, None, "", str(err))
                return
            turn.sent = True
            if resp.status_code != 200:  # the request itself was refused (400...): the client's to fix
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    await resp.aread()
                await resp.aclose()
                self.conclude(turn, "errored", True)
                await self.send_error(_http_error(resp), turn.event_id)
                return
            again = await self._relay_sse(turn, att, info, resp, t0, shown)
            if again is None:
                return
            shown = shown or again

    def _chat_body(self, turn: RouterTurn, b: Backend) -> dict:
        """The turn as a Chat Completions request (the conversation resent)."""
        system = [{"role": "system", "content": turn.sampling["instructions"]}] if turn.sampling.get("instructions") \
            else []
        messages = with_context(system, turn.context, self.history + turn.new_msgs)  # as a pairline session
        body = {"model": b.model or "default", "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}}
        # the session protocol's defaults where the client set none (greedy, 1024 tokens), not the backend's
        s = {"max_output_tokens": DEFAULT_MAX_OUTPUT_TOKENS, "temperature": 0.0,
             **{k: v for k, v in turn.sampling.items() if v is not None}}
        for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                             ("top_p", "top_p"), ("seed", "seed")):
            if s.get(ours) is not None:
                body[theirs] = s[ours]
        if turn.prediction is not None and b.prediction:
            body["prediction"] = turn.prediction
        if turn.grammar is not None:  # pairline's HTTP takes the same field
            body["grammar"] = turn.grammar
        return body

    async def _resume(self, turn: RouterTurn, att: Attempt, info: dict, cut: ResponseState, deltas: int,
                      why: str) -> None:
        """A pairline backend died mid-response: another backend of the tier that can continue a cut
        answer writes on from `cut.text` over HTTP, into the same response (same ids), marked
        `pairline.resumed`. With none, the response fails visibly (`_broken`)."""
        dead = att.backend
        self.r.end(dead, False)
        turn.backend, turn.link = None, None  # a cancel or steer now cuts the HTTP stream
        tries: list[str] = []  # why each backend that was tried could not write on
        if dead.resume:
            async with contextlib.aclosing(self.r.resumers(att.tier, self.key)) as attempts:
                async for nxt in attempts:
                    b = nxt.backend
                    if turn.grammar is not None and not b.grammar:
                        continue
                    # as an HTTP stream's: the cut text to write on from, the tokens left (a delta is at least one)
                    body = continuation(self._chat_body(turn, b), True, Progress(text=cut.text, spent=deltas))
                    self.r.begin(b)
                    turn.backend = b
                    try:
                        resp = await send_request(self.r.client, b, "/chat/completions", body, True, self.key)
                        if resp.status_code != 200:
                            await resp.aclose()
                            raise Retryable(f"{b.name}: HTTP {resp.status_code} for the continuation")
                        resumed = {**info, "resumed": [{"from": dead.name, "to": b.name, "after_tokens": deltas}]}
                        log.info("router: session %s: %s continues %s's answer", self.id, b.name, dead.name)
                        self.r.metrics.inc("midstream_failovers_total", labels(tier=att.tier, backend=b.name))
                        again = await self._relay_sse(turn, nxt, resumed, resp, time.perf_counter(), True, cut)
                    except Retryable as err:  # it wrote nothing: the next one may
                        turn.backend = None
                        self.r.failed(b, err)
                        tries.append(str(err))
                        continue
                    if again is None:
                        return
                    return await self.turn_http(turn, nxt, shown=True)  # steered: its successor, on b
        await self._broken(turn, info, cut.to_dict(), cut.text,
                           why + (f"; no backend of the tier could continue it ({'; '.join(tries)})" if tries else ""))

    async def _relay_sse(self, turn: RouterTurn, att: Attempt, info: dict, resp: httpx.Response, t0: float,
                         shown: bool, cut: ResponseState | None = None) -> bool | None:
        """One backend response as the session's events. Returns None when the turn is over, or
        whether the client has seen a response when a steer asks for a successor. `cut`: the
        response this one writes on (its events were shown; the text goes on in it)."""
        r, b = self.r, att.backend
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in sse_events(resp):
                    await queue.put(item)
                await queue.put(("eof", None))
            except httpx.HTTPError as err:
                await queue.put(("broken", f"{type(err).__name__}"))

        pump_task = asyncio.create_task(pump())
        state = cut or ResponseState(b.model or "", _sampling(turn.sampling), turn.previous, turn.metadata)
        deltas = DeltaEvents(state.pos())
        started, finish, usage, timings, last_t = False, None, None, None, 0.0
        try:
            while True:
                kind, obj = await self._next(queue, turn, r.cfg.idle_timeout_s if started
                                             else r.cfg.first_token_timeout_s)
                if kind == "stop":
                    break
                # nothing of this stream was shown yet: another backend may serve it (a continuation
                # too: the cut response is still open, and `_resume` tries the tier's next one)
                fresh = not started and (not shown or cut is not None)
                if kind in ("broken", "timeout", "eof") or (kind == "done" and finish is None):
                    why = obj or ("the stream ended without its final chunk" if kind != "timeout" else "silent")
                    if fresh:
                        raise Retryable(f"{b.name}: {why} before the first token")
                    await self._broken(turn, info, state.to_dict(), state.text, why)
                    return None
                if kind == "done":
                    break
                code = error_code(obj)
                if code:
                    if fresh and (code in RETRY_CODES or cut is not None):
                        raise Retryable.before_first_token(b.name, code)
                    if not started:  # refused before it began (context too long...): as the server says it
                        self.conclude(turn, "errored", True)
                        e = obj["error"]
                        await self.send_error(ProtocolError(str(e.get("message") or code), code=code,
                                                            param=e.get("param")), turn.event_id)
                        return None
                    await self._broken(turn, info, state.to_dict(), state.text, f"error {code}")
                    return None
                delta, fin = chunk_text(obj), chunk_finish(obj)
                usage = obj.get("usage") or usage
                timings = obj.get("timings") or timings
                finish = fin or finish
                if not started and (delta or fin):
                    started = True
                    last_t = time.perf_counter()
                    r.ttft(b, last_t - t0)
                    turn.response_id = state.id
                    for type_, fields in [] if cut else state.opening_events(pairline=turn.shown(info)):
                        await self.send(type_, **fields)
                if delta:
                    now = time.perf_counter()
                    r.itl(b, now - last_t)
                    last_t = now
                    state.text += delta
                    await self.send_encoded(deltas.encode, delta)
        finally:
            pump_task.cancel()
            with contextlib.suppress(BaseException):
                await resp.aclose()
        # a steer that came as the stream ended still applies: the whole answer, reported steered
        steered = bool(turn.steer) and not turn.cancel
        if kind == "stop" and not started and cut is None:  # cut before anything showed
            if steered:
                turn.new_msgs = turn.new_msgs + turn.absorb()
                turn.stop = asyncio.Event()
                return shown
            await self._cancelled_unseen(turn)
            return None
        state.usage = usage_responses(usage) if usage else None
        if cut is not None and state.usage:  # the cut text was this request's input, and the answer's output
            spent = info["resumed"][0]["after_tokens"]
            state.usage["input_tokens"] -= spent
            state.usage["output_tokens"] += spent
        state.timings = {**(timings or {}), "router_total_s": time.perf_counter() - t0}
        # a backend's finish_reason counts only as "length" or not (any other reason is a completed answer)
        reason = "cancelled" if kind == "stop" else "length" if finish == "length" else None
        state.status, state.incomplete_reason = response_status(reason, steered)
        final = FINAL_EVENT[state.status]
        if not steered:  # decided before any await: a steer from now on is told it came too late
            self.conclude(turn, _OUTCOME[final], True)
        # the router's copy keeps what was said, cut or not, as a pairline server does
        self._commit(turn, state.text, state.id)
        for type_, fields in state.closing_events():
            await self.send(type_, **fields)
        if steered:  # steers that came while these events went out join the successor's input
            await self.send(final, response=state.to_dict(), pairline=info)
            turn.new_msgs, turn.previous = turn.absorb(), state.id
            turn.stop = asyncio.Event()
            return True
        await self.send(final, response=state.to_dict(), pairline=info)
        return None

    async def _next(self, queue: asyncio.Queue, turn: RouterTurn, timeout: float) -> tuple[str, object]:
        get = asyncio.ensure_future(queue.get())
        stop = asyncio.ensure_future(turn.stop.wait())
        try:
            done, _ = await asyncio.wait({get, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if get in done:
            return get.result()
        get.cancel()
        return ("stop", None) if stop in done else ("timeout", None)

    # ------------------------------------------------------------ end of the session

    async def close(self, code: int, reason: str, error: ProtocolError | None = None) -> None:
        """Ends the session from the router's side (idle, shutdown): its turn stops, a final `error`
        event goes out if given, its backend sessions close, then the close frame."""
        if self.closed:
            return
        if self.turn_task is not None:
            self.turn_task.cancel()
        for task in (self.draft_task, self.opening):
            if task is not None:
                task.cancel()
        if error is not None:  # before the links close: a backend slow to close must not delay it
            await self.send_error(error)
        for link in self.links.values():
            await link.close()
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    async def cleanup(self) -> None:
        self.closed = True
        for task in (self.draft_task, self.opening):
            if task is not None:
                task.cancel()
        turn = self.turn
        if turn is not None and turn.link is not None and turn.sent:
            with contextlib.suppress(ConnectionError):
                await turn.link.send({"type": "response.cancel"})
        if self.turn_task is not None and not self.turn_task.done():
            self.turn_task.cancel()
            with contextlib.suppress(BaseException):
                await self.turn_task
        for link in list(self.links.values()):
            await link.close()


def _ids(response: dict | None, item_id: str | None) -> dict:
    """The ids a backend gave a response the router goes on writing (ResponseState's fields)."""
    r = response or {}
    ids = {"id": r.get("id"), "created_at": r.get("created_at"), "item_id": item_id}
    return {k: v for k, v in ids.items() if v is not None}


def _flat(steers: list[Steer]) -> list[dict]:
    return [m for messages, _ in steers for m in messages]


def _items(messages: list[dict]) -> list[dict]:
    return [{"type": "message", "role": m["role"], "content": m["content"]} for m in messages]


def _sampling(s: dict) -> Sampling:
    return Sampling(s.get("instructions"), s.get("max_output_tokens"), s.get("temperature"), s.get("top_p"),
                    s.get("seed"))


def _http_error(resp: httpx.Response) -> ProtocolError:
    try:
        e = resp.json().get("error") or {}
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        e = {}
    if not isinstance(e, dict):
        e = {"message": str(e)}
    return ProtocolError(str(e.get("message") or f"the backend answered HTTP {resp.status_code}"),
                         code=str(e.get("code") or "invalid_request_error"), param=e.get("param"),
                         status=resp.status_code)


async def websocket_endpoint(ws: WebSocket) -> None:
    router: Router = ws.app.state.router
    await ws.accept()
    sess = RouterSession(ws, router)
    if not router.authorized(ws.headers.get("authorization")):
        await sess.send_error(api_key_error())
        sess.closed = True
        with contextlib.suppress(Exception):
            await ws.close(CLOSE_POLICY, "invalid API key")
        return
    router.connections.add(sess)
    try:
        await sess.run()
    except WebSocketDisconnect:
        pass
    finally:
        router.connections.discard(sess)
        await sess.cleanup()
