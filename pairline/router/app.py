"""The router's ingress: the same WebSocket session protocol and OpenAI-compatible HTTP as
`pairline serve`, in front of two tiers of backends (the choosing: pairline.router.core; the
sessions: pairline.router.session). A request gets a tier (its `mode`, or the
classifier), then a backend (affinity, load, TTFT), retries on other backends and the other tier
while nothing has reached the client yet, and an error event or chunk, never a silent truncation,
if a backend dies after that. docs/scaling.md."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

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
    chunk_finish,
    chunk_text,
    error_code,
    send_request,
    sse_events,
)
from pairline.router.config import RouterConfig
from pairline.router.core import Ledger, Router, check_mode, served_by
from pairline.router.metrics import labels
from pairline.router.resume import Progress, continuation, for_client, resumable, upstream_options
from pairline.router.session import websocket_endpoint
from pairline.wire.asgi import UvicornThread, uvicorn_config
from pairline.wire.guard import WebGuard, WebPolicy
from pairline.wire.openai import (
    SSE_DONE,
    SSE_HEADERS,
    chat_messages,
    completion_prompt,
    error_response,
    read_json,
    sse_data,
)
from pairline.wire.protocol import ProtocolError, api_key_error

log = logging.getLogger("pairline.router")


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
                        return await self._stream(b, path, body, info, ledger, chat, key)
                    return await self._whole(b, path, b.upstream_body(body), info, ledger, key)
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

    async def _whole(self, b: Backend, path: str, body: dict, info: dict, ledger: Ledger, key: str | None) -> Response:
        resp = await send_request(self.r.client, b, path, body, stream=False, key=key)
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

    async def _open(self, b: Backend, path: str, body: dict,
                    key: str | None) -> tuple[httpx.Response, AsyncIterator | None, list]:
        """Send a streaming request and hold what comes before its first token: until then another
        backend can still take over unseen (Retryable). A status other than 200 is the caller's."""
        t0 = time.perf_counter()
        resp = await send_request(self.r.client, b, path, body, stream=True, key=key)
        if resp.status_code != 200:
            return resp, None, []
        events = sse_events(resp)
        head: list[tuple[str, dict | None]] = []
        try:
            async for kind, obj in events:
                if kind == "done":  # [DONE] with nothing before it: nothing reached the client
                    raise Retryable(f"{b.name}: the stream ended before the first token")
                head.append((kind, obj))
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
        self.r.ttft(b, time.perf_counter() - t0)
        return resp, events, head

    async def _stream(self, b: Backend, path: str, body: dict, info: dict, ledger: Ledger, chat: bool,
                      key: str | None) -> Response:
        r = self.r
        resp, events, head = await self._open(b, path, b.upstream_body(upstream_options(body, b)), key)
        if events is None:  # the client's mistake (400...): passed on as the backend said it
            data = await resp.aread()
            await resp.aclose()
            r.end(b, None)
            ledger.finish("errored")
            return Response(data, status_code=resp.status_code, headers=route_headers(info),
                            media_type=resp.headers.get("content-type", "application/json"))
        opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        progress = Progress()
        leg = {"b": b, "resp": resp, "events": events, "head": head, "id": None, "live": True}
        state = {"ok": None, "outcome": "cancelled", "closed": False}

        def close() -> None:  # idempotent; runs when the body ends or never started
            if not state["closed"]:
                state["closed"] = True
                if leg["live"]:  # a backend that broke was counted then (and a client may leave meanwhile)
                    r.end(leg["b"], state["ok"])
                ledger.finish(state["outcome"])

        def relay(obj: dict) -> bytes | None:
            progress.see(obj)
            if leg["id"] is None:
                leg["id"] = (obj.get("id"), obj.get("created"))
            elif obj.get("id") is not None:  # a continuation's chunks keep the answer's id
                obj["id"], obj["created"] = leg["id"]
            obj = for_client(obj, opts, progress)
            if obj is None:
                return None
            if chunk_finish(obj) or (not obj.get("choices") and "usage" in obj) or leg.pop("fresh", False):
                obj["pairline"] = info  # the final chunk(s), and a continuation's first: who served it
            return sse_data(obj)

        async def one_leg():
            """The current backend's stream; raises httpx.HTTPError when it breaks off."""
            finished, done, last = False, False, time.perf_counter()
            for _, obj in leg["head"]:  # (never [DONE]: _open raises on one before the first token)
                finished = finished or bool(chunk_finish(obj)) or bool(error_code(obj))
                if (out := relay(obj)) is not None:
                    yield out
            async for kind, obj in leg["events"]:
                if kind == "done":
                    done = True
                    break
                if chunk_text(obj):
                    now = time.perf_counter()
                    r.itl(leg["b"], now - last)
                    last = now
                finished = finished or bool(chunk_finish(obj)) or bool(error_code(obj))
                if (out := relay(obj)) is not None:
                    yield out
            if not (done and finished):  # checked before [DONE] goes out: after it, SSE clients stop reading
                raise httpx.RemoteProtocolError("the stream ended without its final chunk")
            yield SSE_DONE

        async def body_iter():
            try:
                while True:
                    try:
                        async for out in one_leg():
                            yield out
                        backend_error = any(kind == "data" and error_code(obj) for kind, obj in leg["head"])
                        state["ok"], state["outcome"] = True, "errored" if backend_error else "completed"
                        return
                    except httpx.HTTPError as err:
                        dead = leg["b"]
                        log.info("router: %s died mid-stream: %s", dead.name, err)
                        with contextlib.suppress(BaseException):
                            await leg["resp"].aclose()
                        r.end(dead, False)
                        leg["live"] = False
                        if not await self._continue(leg, path, body, chat, key, info, progress):
                            raise
            except httpx.HTTPError as err:
                # No backend of the tier could write on: the client is told plainly, never left hanging.
                state["outcome"] = "errored"
                dead = leg["b"]
                why = "; no backend of the tier could continue it" if dead.resume and resumable(body, chat) else ""
                failed = ProtocolError(f"backend {dead.name} ({info['tier']}) failed mid-stream: "
                                       f"{type(err).__name__}{why}; the answer is incomplete", code="backend_failed",
                                       type_="server_error")
                yield sse_data({"error": failed.to_error(), "pairline": info})
                yield SSE_DONE
            finally:
                close()
                with contextlib.suppress(BaseException):
                    await leg["resp"].aclose()

        return _Stream(body_iter(), close, media_type="text/event-stream",
                       headers={**SSE_HEADERS, **route_headers(info)})

    async def _continue(self, leg: dict, path: str, body: dict, chat: bool, key: str | None, info: dict,
                        progress: Progress) -> bool:
        """Mid-stream failover (pairline.router.resume): the next backend of the tier that takes the
        continuation becomes `leg`. False when the dead one or the request cannot be continued, or
        no backend of the tier could take it."""
        r, dead = self.r, leg["b"]
        if not (dead.resume and resumable(body, chat)):
            return False
        async with contextlib.aclosing(r.resumers(info["tier"], key)) as attempts:
            async for att in attempts:
                b = att.backend
                r.begin(b)
                try:
                    resp, events, head = await self._open(b, path, b.upstream_body(
                        upstream_options(continuation(body, chat, progress), b)), key)
                except Retryable as err:
                    r.failed(b, err)
                    continue
                if events is None:  # a status other than 200 for a request the first backend took
                    await resp.aclose()
                    r.end(b, False)
                    continue
                progress.cut(dead, b)
                info["resumed"] = progress.resumed
                r.metrics.inc("midstream_failovers_total", labels(tier=info["tier"], backend=b.name))
                log.info("router: %s continues %s's answer after %d tokens", b.name, dead.name, progress.spent)
                # its opening (role) chunk is dropped: the client had the answer's
                head = [(k, o) for k, o in head if chunk_text(o) or chunk_finish(o) or error_code(o)
                        or o.get("usage") is not None]
                leg.update(b=b, resp=resp, events=events, head=head, fresh=True, live=True)
                return True
        return False


# ---------------------------------------------------------------- the app


def build_app(router: Router) -> Starlette:
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
