"""The router's ingress: the same WebSocket session protocol and OpenAI-compatible HTTP as
`pairline serve`, in front of two tiers of backends. A request gets a tier (its `mode`, or the
classifier), then a backend (affinity, load, TTFT), retries on other backends and the other tier
while nothing has reached the client yet, and an error event or chunk, never a silent truncation,
if a backend dies after that. docs/scaling.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from pairline.router.backends import (
    RETRY_CODES,
    Backend,
    Retryable,
    check_health,
    chunk_finish,
    chunk_text,
    error_code,
    send_request,
    sse_events,
    start_inprocess,
)
from pairline.router.balance import HashRing, choose
from pairline.router.classify import Route as TierRoute
from pairline.router.classify import classify_messages
from pairline.router.config import MODES, TIERS, RouterConfig
from pairline.router.metrics import RouterMetrics, labels
from pairline.server.app import UvicornThread, uvicorn_config
from pairline.server.openai_http import (
    SSE_DONE,
    SSE_HEADERS,
    chat_messages,
    completion_prompt,
    error_response,
    read_json,
    sse_data,
)
from pairline.server.protocol import ProtocolError, api_key_error, bearer_ok
from pairline.server.web_guard import WebGuard, WebPolicy
from pairline.server.ws import CLOSE_GOING_AWAY

log = logging.getLogger("pairline.router")


def other_tier(tier: str) -> str:
    return "deep" if tier == "realtime" else "realtime"


def check_mode(value, param: str = "mode") -> str | None:
    if value is None:
        return None
    if value not in MODES:
        raise ProtocolError(f"{param!r} must be one of {', '.join(MODES)}, got {value!r}", code="invalid_value",
                            param=param)
    return value


@dataclass(slots=True, eq=False)
class Ledger:
    """One accepted request: it ends exactly once, as completed, errored or cancelled, so
    accepted = completed + errored + cancelled holds in /metrics at every quiet moment."""

    router: Router
    tier: str
    done: bool = False

    def finish(self, outcome: str) -> None:
        if self.done:
            return
        self.done = True
        self.router.outstanding[self.tier] -= 1
        self.router.metrics.inc("requests_finished_total", labels(tier=self.tier, outcome=outcome))


@dataclass(slots=True)
class Attempt:
    backend: Backend
    tier: str  # the tier serving it
    failover: str | None  # "realtime->deep" when the other tier serves it
    index: int  # 0 for the first attempt


class Router:
    def __init__(self, cfg: RouterConfig):
        self.cfg = cfg
        self.metrics = RouterMetrics()
        self.tiers: dict[str, list[Backend]] = {
            t: [Backend.from_config(bc, t, cfg) for bc in cfg.tiers[t].backends] for t in TIERS}
        self.rings = {t: HashRing([b.name for b in bs], cfg.affinity_vnodes) for t, bs in self.tiers.items()}
        self.outstanding = {t: 0 for t in TIERS}
        self.client: httpx.AsyncClient | None = None
        self.connections: set = set()
        self.health_task: asyncio.Task | None = None
        self.started = int(time.time())

    @property
    def backends(self) -> list[Backend]:
        return [b for bs in self.tiers.values() for b in bs]

    def load_inprocess(self) -> None:
        """Blocking: loads every in-process model (the CLI binds its port first)."""
        for t in TIERS:
            for bc, b in zip(self.cfg.tiers[t].backends, self.tiers[t], strict=True):
                if bc.kind == "inprocess":
                    start_inprocess(bc, b)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        c = self.cfg
        read = max(c.first_token_timeout_s, c.idle_timeout_s)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(read, connect=c.connect_timeout_s),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                                        trust_env=False)
        await self.check_all()
        self.health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        if self.health_task:
            self.health_task.cancel()
        await asyncio.gather(*(s.close(CLOSE_GOING_AWAY, "router shutting down") for s in list(self.connections)),
                             return_exceptions=True)
        if self.client:
            await self.client.aclose()
        for b in self.backends:
            if b.server is not None:
                await asyncio.to_thread(b.server.stop)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            with contextlib.suppress(Exception):
                await self.check_all()

    async def check_all(self) -> None:
        async def one(b: Backend) -> None:
            if not b.health_path:
                return
            ok = await check_health(self.client, b, self.cfg.health_timeout_s)
            was = b.healthy
            b.healthy = ok
            # The check is the breaker's probe too: after the cooldown a passing check closes the circuit,
            # a failing one keeps (or puts) a dead backend out without costing a client request.
            if ok and b.breaker.current() != "closed":
                if b.breaker.current() == "half_open":
                    b.breaker.success()
            elif not ok:
                b.breaker.failure()
            if ok != was:
                log.info("router: backend %s (%s) is %s", b.name, b.tier, "up" if ok else "down")
        await asyncio.gather(*(one(b) for b in self.backends))

    # ------------------------------------------------------------ choosing

    def decide(self, mode: str | None, messages: list[dict]) -> tuple[str, TierRoute]:
        """(mode, route): explicit mode wins; `auto` asks the classifier."""
        mode = mode or self.cfg.default_mode
        if mode in TIERS:
            return mode, TierRoute(mode, "mode")
        return mode, classify_messages(messages, self.cfg.classify)

    def admit(self, tier: str) -> Ledger | None:
        if self.outstanding[tier] >= self.cfg.tiers[tier].max_outstanding:
            self.metrics.inc("requests_rejected_total", labels(tier=tier, reason="rate_limited"))
            return None
        self.outstanding[tier] += 1
        self.metrics.inc("requests_accepted_total", labels(tier=tier))
        return Ledger(self, tier)

    def no_backend_error(self, last: Retryable | None, what: str) -> ProtocolError:
        """Every attempt failed: 429 when the last backend refused for load (worth a retry soon), else 503."""
        if last is not None and last.code == "rate_limit_exceeded":
            return ProtocolError(f"every backend is busy ({last}); retry shortly", code="rate_limit_exceeded",
                                 status=429, type_="rate_limit_error")
        why = f": {last}" if last else " (none is healthy)"
        return ProtocolError(f"no backend could take the {what}{why}", code="backend_unavailable", status=503,
                             type_="server_error")

    def busy_error(self, tier: str) -> ProtocolError:
        return ProtocolError(f"the {tier} tier has its maximum of {self.cfg.tiers[tier].max_outstanding} requests in "
                             "flight; retry shortly", code="rate_limit_exceeded", status=429, type_="rate_limit_error")

    async def attempts(self, tier: str, key: str | None = None,
                       prefer: Callable[[str], Backend | None] | None = None) -> AsyncIterator[Attempt]:
        """Backends to try, in order: this tier's best, then others of the tier (up to `retries`
        more), then, when failover is on, the other tier's. Waits an exponential backoff between
        attempts. The caller stops iterating at the first that serves."""
        order = [tier] + ([other_tier(tier)] if self.cfg.failover else [])
        n = 0
        for t in order:
            tried: list[Backend] = []
            for _ in range(1 + self.cfg.retries):
                b = choose(self.tiers[t], key, self.rings[t], self.cfg.affinity_slack, tried,
                           prefer(t) if prefer else None)
                if b is None:
                    break
                if n:
                    await asyncio.sleep(self.cfg.retry_backoff_s * 2 ** (n - 1))
                    self.metrics.inc("retries_total", labels(tier=t))
                failover = f"{tier}->{t}" if t != tier else None
                if failover and not tried:
                    self.metrics.inc("failovers_total", labels(**{"from": tier, "to": t}))
                    log.info("router: failover %s", failover)
                tried.append(b)
                yield Attempt(b, t, failover, n)
                n += 1

    def begin(self, b: Backend) -> None:
        b.breaker.acquire()
        b.outstanding += 1
        self.metrics.inc("backend_requests_total", labels(tier=b.tier, backend=b.name))

    def end(self, b: Backend, ok: bool | None) -> None:
        """ok: True served, False broke (counts toward its circuit), None neither (client left, or refused
        for load)."""
        b.outstanding -= 1
        if ok:
            b.breaker.success()
        elif ok is False:
            b.breaker.failure()
            self.metrics.inc("backend_errors_total", labels(tier=b.tier, backend=b.name))
        else:
            b.breaker.release()

    def failed(self, b: Backend, err: Retryable) -> None:
        log.info("router: %s failed before the first token: %s", b.name, err)
        self.end(b, False if err.broken else None)
        if err.refused:
            b.healthy = False  # refused outright: out until a health check says otherwise

    def ttft(self, b: Backend, seconds: float) -> None:
        b.observe_ttft(seconds, self.cfg.ewma_alpha)
        self.metrics.ttft.observe(labels(tier=b.tier, backend=b.name), seconds)

    def itl(self, b: Backend, seconds: float) -> None:
        self.metrics.itl.observe(labels(tier=b.tier, backend=b.name), seconds)

    def authorized(self, header: str | None) -> bool:
        return bearer_ok(header, self.cfg.api_key)


def served_by(att: Attempt, mode: str, route: TierRoute) -> dict:
    """The `pairline` object every answer carries: who served it and why."""
    return {"tier": att.tier, "backend": att.backend.name, "mode": mode, "reason": route.reason,
            "failover": att.failover, "attempts": att.index + 1}


def route_headers(info: dict) -> dict[str, str]:
    h = {"x-pairline-tier": info["tier"], "x-pairline-backend": info["backend"]}
    if info["failover"]:
        h["x-pairline-failover"] = info["failover"]
    return h


# ---------------------------------------------------------------- HTTP


def _classify_input(body: dict, chat: bool) -> list[dict]:
    """Just enough of the body for the classifier; the backend checks the rest (roles included), with
    its own errors."""
    if chat:
        return chat_messages(body, check_roles=False)
    return [{"role": "user", "content": completion_prompt(body)}]


class _Stream(StreamingResponse):
    """A streaming response whose bookkeeping ends even if the body never started (the client left
    before the first byte)."""

    def __init__(self, content, on_close: Callable[[], None], **kw):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class HttpIngress:
    def __init__(self, router: Router):
        self.r = router

    async def chat_completions(self, request: Request) -> Response:
        return await self.handle(request, "/chat/completions", chat=True)

    async def completions(self, request: Request) -> Response:
        return await self.handle(request, "/completions", chat=False)

    async def handle(self, request: Request, path: str, chat: bool) -> Response:
        r = self.r
        if not r.authorized(request.headers.get("authorization")):
            return error_response(api_key_error())
        try:
            body = await read_json(request, r.cfg.max_message_bytes)
            mode = check_mode(body.pop("mode", None)) or check_mode(request.headers.get("x-pairline-mode"),
                                                                    "x-pairline-mode")
            mode, route = r.decide(mode, _classify_input(body, chat))
        except ProtocolError as err:
            r.metrics.inc("requests_rejected_total", labels(tier="none", reason="invalid"))
            return error_response(err)
        ledger = r.admit(route.tier)
        if ledger is None:
            return error_response(r.busy_error(route.tier), headers={"Retry-After": "1"})
        key = request.headers.get("x-pairline-session") or (body["user"] if isinstance(body.get("user"), str)
                                                            else None)
        stream = bool(body.get("stream"))
        last: Retryable | None = None
        try:
            async for att in r.attempts(route.tier, key):
                b = att.backend
                info = served_by(att, mode, route)
                r.begin(b)
                try:
                    if stream:
                        return await self._stream(b, path, b.upstream_body(body), info, ledger, chat)
                    return await self._whole(b, path, b.upstream_body(body), info, ledger)
                except Retryable as err:
                    r.failed(b, err)
                    last = err
                except BaseException:
                    r.end(b, None)
                    raise
        except BaseException:
            ledger.finish("cancelled")
            raise
        ledger.finish("errored")
        err = r.no_backend_error(last, "request")
        return error_response(err, headers={"Retry-After": "1"} if err.status == 429 else None)

    async def _whole(self, b: Backend, path: str, body: dict, info: dict, ledger: Ledger) -> Response:
        resp = await send_request(self.r.client, b, path, body, stream=False)
        try:
            data = resp.json()
        except ValueError:
            raise Retryable(f"{b.name}: the answer is not JSON") from None
        if resp.status_code != 200:  # the client's mistake (400, 413...): passed on as the backend said it
            self.r.end(b, None)
            ledger.finish("errored")
            return JSONResponse(data, status_code=resp.status_code, headers=route_headers(info))
        ttft = (data.get("timings") or {}).get("server_ttft_s") if isinstance(data, dict) else None
        if isinstance(ttft, (int, float)):
            self.r.ttft(b, float(ttft))
        self.r.end(b, True)
        ledger.finish("completed")
        if isinstance(data, dict):
            data["pairline"] = info
        return JSONResponse(data, headers=route_headers(info))

    async def _stream(self, b: Backend, path: str, body: dict, info: dict, ledger: Ledger, chat: bool) -> Response:
        r = self.r
        t0 = time.perf_counter()
        resp = await send_request(r.client, b, path, body, stream=True)
        if resp.status_code != 200:
            data = await resp.aread()
            await resp.aclose()
            r.end(b, None)
            ledger.finish("errored")
            return Response(data, status_code=resp.status_code, headers=route_headers(info),
                            media_type=resp.headers.get("content-type", "application/json"))
        events = sse_events(resp)
        head: list[tuple[str, dict | None]] = []
        # Hold what comes before the first token: until then another backend can still take over unseen.
        try:
            async for kind, obj in events:
                head.append((kind, obj))
                if kind == "done":
                    break
                code = error_code(obj)
                if code in RETRY_CODES:
                    raise Retryable.before_first_token(b.name, code)
                if code or chunk_text(obj) or chunk_finish(obj) or not obj.get("choices"):
                    break
            else:
                raise Retryable(f"{b.name}: the stream ended before the first token")
        except httpx.HTTPError as err:
            await resp.aclose()
            raise Retryable(f"{b.name}: {type(err).__name__} before the first token") from None
        except Retryable:
            await resp.aclose()
            raise
        r.ttft(b, time.perf_counter() - t0)
        state = {"ok": None, "outcome": "cancelled", "closed": False}

        def close() -> None:  # idempotent; runs when the body ends or never started
            if not state["closed"]:
                state["closed"] = True
                r.end(b, state["ok"])
                ledger.finish(state["outcome"])

        def annotate(obj: dict) -> bytes:
            if chunk_finish(obj) or (not obj.get("choices") and "usage" in obj):
                obj["pairline"] = info  # the final chunk(s): who served it
            return sse_data(obj)

        async def body_iter():
            finished, done, last = False, False, time.perf_counter()
            try:
                for kind, obj in head:
                    if kind == "done":
                        done = True
                        yield SSE_DONE
                    else:
                        finished = finished or bool(chunk_finish(obj)) or bool(error_code(obj))
                        yield annotate(obj)
                if not done:
                    async for kind, obj in events:
                        if kind == "done":
                            done = True
                            yield SSE_DONE
                            break
                        if chunk_text(obj):
                            now = time.perf_counter()
                            r.itl(b, now - last)
                            last = now
                        finished = finished or bool(chunk_finish(obj)) or bool(error_code(obj))
                        yield annotate(obj)
                if not (done and finished):
                    raise httpx.RemoteProtocolError("the stream ended without its final chunk")
                backend_error = any(kind == "data" and error_code(obj) for kind, obj in head)
                state["ok"], state["outcome"] = True, "errored" if backend_error else "completed"
            except httpx.HTTPError as err:
                # After the first token: no retry can be invisible, so the client is told plainly.
                log.info("router: %s died mid-stream: %s", b.name, err)
                state["ok"], state["outcome"] = False, "errored"
                failed = ProtocolError(f"backend {b.name} ({info['tier']}) failed mid-stream: {type(err).__name__}; "
                                       "the answer is incomplete", code="backend_failed", type_="server_error")
                yield sse_data({"error": failed.to_error(), "pairline": info})
                yield SSE_DONE
            finally:
                close()
                with contextlib.suppress(BaseException):
                    await resp.aclose()

        return _Stream(body_iter(), close, media_type="text/event-stream",
                       headers={**SSE_HEADERS, **route_headers(info)})


# ---------------------------------------------------------------- the app


def build_app(router: Router) -> Starlette:
    from pairline.router.session import websocket_endpoint

    http = HttpIngress(router)

    async def health(request: Request) -> Response:
        tiers = {t: [{"name": b.name, "kind": b.kind, "healthy": b.healthy, "circuit": b.breaker.current(),
                      "outstanding": b.outstanding, "ewma_ttft_s": b.ewma_ttft, "model": b.model}
                     for b in bs] for t, bs in router.tiers.items()}
        up = {t: any(b.available() for b in bs) for t, bs in router.tiers.items()}
        status = "ok" if all(up.values()) else "degraded" if any(up.values()) else "down"
        return JSONResponse({"status": status, "tiers": tiers, "outstanding": router.outstanding,
                             "sessions": len(router.connections)}, status_code=200 if status != "down" else 503)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(router.metrics.render(router.backends, router.outstanding),
                                 media_type="text/plain; version=0.0.4")

    async def models(request: Request) -> Response:
        if not router.authorized(request.headers.get("authorization")):
            return error_response(ProtocolError("invalid or missing API key", code="invalid_api_key", status=401,
                                                type_="authentication_error"))
        seen: dict[str, dict] = {}
        for b in router.backends:
            if b.model:
                m = seen.setdefault(b.model, {"id": b.model, "object": "model", "created": router.started,
                                              "owned_by": "pairline", "pairline": {"tiers": [], "backends": []}})
                if b.tier not in m["pairline"]["tiers"]:
                    m["pairline"]["tiers"].append(b.tier)
                m["pairline"]["backends"].append(b.name)
        return JSONResponse({"object": "list", "data": list(seen.values())})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = Starlette(routes=[
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/chat/completions", http.chat_completions, methods=["POST"]),
        Route("/v1/completions", http.completions, methods=["POST"]),
        WebSocketRoute("/v1/responses", websocket_endpoint),
    ], lifespan=lifespan)
    app.state.router = router
    cfg = router.cfg

    def refused(code: str) -> None:
        router.metrics.inc("requests_rejected_total", labels(tier="none", reason=code))

    # outermost (added last): a foreign page's request is refused before the key check or any read
    app.add_middleware(WebGuard, policy=WebPolicy.build(cfg.host, cfg.allowed_hosts, cfg.allowed_origins),
                       count=refused)
    return app


def make_uvicorn(app: Starlette, host: str, port: int, log_level: str = "info") -> uvicorn.Server:
    # plain uvicorn: the router's lifespan closes its sessions on shutdown; there is no KV to drain
    return uvicorn.Server(uvicorn_config(app, host, port, log_level, app.state.router.cfg.max_message_bytes,
                                         graceful_s=3))


class RouterThread(UvicornThread):
    """The router on a free loopback port, in a thread (tests)."""

    what = "the router"

    def __init__(self, cfg: RouterConfig, log_level: str = "warning"):
        self.router = Router(cfg)
        self.router.load_inprocess()
        self.app = build_app(self.router)
        super().__init__(lambda host, port: make_uvicorn(self.app, host, port, log_level))
