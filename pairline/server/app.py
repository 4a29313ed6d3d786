"""The ASGI app and its process: routes, auth, one log line per request, and a clean SIGTERM
(open sessions get a final event before the process exits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from pairline.engine.constraint import warm as warm_grammar
from pairline.engine.fim import fim_format
from pairline.engine.generate import Engine
from pairline.server.config import ServerConfig
from pairline.server.metrics import Metrics
from pairline.server.openai_http import HttpApi
from pairline.server.scheduler import Scheduler, free_ram
from pairline.server.ws import websocket_endpoint
from pairline.wire.asgi import UvicornThread, uvicorn_config, when_started
from pairline.wire.guard import WebGuard, WebPolicy
from pairline.wire.openai import error_response
from pairline.wire.protocol import ProtocolError, api_key_error, bearer_ok
from pairline.wire.session_socket import CLOSE_GOING_AWAY

log = logging.getLogger("pairline.server")


class PairlineServer:
    """Everything a request handler needs: the engine, limits, scheduler, metrics, open sessions."""

    def __init__(self, engine: Engine, cfg: ServerConfig):
        self.engine = engine
        self.cfg = cfg
        self.model_name = engine.model_name
        self.started = int(time.time())
        self.metrics = Metrics(self.model_name)
        per_fork = engine.runtime.kv_bytes
        budget = cfg.kv_budget_bytes if cfg.kv_budget_bytes is not None else free_ram() // 4
        self.max_slots = max(1, min(cfg.max_sessions, budget // per_fork if per_fork else cfg.max_sessions))
        self.scheduler = Scheduler(engine, self.metrics, self.max_slots, cfg.max_queue)
        self.connections: set = set()
        self.shutting_down = False
        self.runtime = engine.runtime.name
        self.fim = fim_format(engine.tokenizer, cfg.fim_order)  # how completions with a suffix are prompted
        # llguidance's view of the vocabulary (0.2-0.8 s, GIL held): built now, not by the first
        # structured-output request
        warm_grammar(engine.tokenizer)
        log.info("server: %s on the %s runtime, n_ctx %d, at most %d KV caches resident (%s each)", self.model_name,
                 self.runtime, engine.runtime.n_ctx, self.max_slots,
                 f"{per_fork / 2**20:.0f} MiB" if per_fork else "size unknown")

    def authorized(self, header: str | None) -> bool:
        return bearer_ok(header, self.cfg.api_key)

    async def close_sessions(self) -> None:
        """SIGTERM: every open session gets its final event (its response cancelled, then an error
        naming the shutdown) and a 1001 close."""
        self.shutting_down = True
        err = ProtocolError("the server is shutting down", code="server_shutting_down", status=503,
                            type_="server_error")
        await asyncio.gather(*(c.close(CLOSE_GOING_AWAY, "server shutting down", err) for c in list(self.connections)),
                             return_exceptions=True)


# ---------------------------------------------------------------- HTTP plumbing


class AccessLog:
    """One log line per HTTP request (WebSocket responses log their own, one per response)."""

    def __init__(self, app, server: PairlineServer):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 0}

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if scope["path"].startswith("/v1/") and not self.server.authorized(_header(scope, b"authorization")):
            self.server.metrics.error("invalid_api_key")
            response = error_response(api_key_error())
            await response(scope, receive, send_wrapped)
        else:
            try:
                await self.app(scope, receive, send_wrapped)
            finally:
                pass
        extra = scope.get("state", {}).get("log", "")
        log.info("%s %s %d %.1fms %s", scope["method"], scope["path"], status["code"],
                 1e3 * (time.perf_counter() - t0), extra)


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def build_app(engine: Engine, cfg: ServerConfig | None = None, routes: list[BaseRoute] | None = None) -> Starlette:
    """The server's app; `routes` are added to its own (the web app's page and socket: the caller
    composes them, the server knows nothing of them)."""
    server = PairlineServer(engine, cfg or ServerConfig())
    api = HttpApi(server)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": server.model_name, "runtime": server.runtime,
                             "n_ctx": server.engine.runtime.n_ctx, "sessions": len(server.connections)})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.scheduler.start()
        try:
            yield
        finally:
            await server.close_sessions()
            await asyncio.to_thread(server.scheduler.stop)

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/models", api.models),
            Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            WebSocketRoute("/v1/responses", websocket_endpoint),
            *(routes or ()),
        ],
        lifespan=lifespan,
    )
    app.state.pairline = server
    app.add_middleware(AccessLog, server=server)
    # outermost (added last): a foreign page's request is refused before the key check or any read
    policy = WebPolicy.build(server.cfg.host, server.cfg.allowed_hosts, server.cfg.allowed_origins)
    app.add_middleware(WebGuard, policy=policy, count=server.metrics.error)
    return app


# ---------------------------------------------------------------- processes


class UvicornServer(uvicorn.Server):
    """uvicorn, with SIGTERM first giving open sessions their final event."""

    def __init__(self, config: uvicorn.Config, server: PairlineServer):
        super().__init__(config)
        self.pairline = server
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.pairline.shutting_down or self.loop is None:
            return super().handle_exit(sig, frame)
        self.pairline.shutting_down = True
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain()))

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.pairline.close_sessions(), self.pairline.cfg.shutdown_grace_s)
        except (asyncio.TimeoutError, Exception):
            pass
        finally:
            self.should_exit = True


def make_uvicorn(app: Starlette, host: str, port: int, log_level: str = "info") -> UvicornServer:
    cfg = app.state.pairline.cfg
    config = uvicorn_config(app, host, port, log_level, cfg.max_message_bytes, cfg.shutdown_grace_s + 1)
    return UvicornServer(config, app.state.pairline)


def run_server(engine: Engine, cfg: ServerConfig, sock, routes: list[BaseRoute] | None = None,
               started: Callable[[], None] | None = None) -> None:
    """`pairline serve` (and `pairline app`) until SIGTERM or Ctrl-C, on a socket already bound;
    `started` is called (in a thread) once it accepts connections."""
    server = make_uvicorn(build_app(engine, cfg, routes), cfg.host, cfg.port)
    log.info("serving %s on http://%s:%d (ws://%s:%d/v1/responses), loaded in %.1fs", engine.model_name, cfg.host,
             cfg.port, cfg.host, cfg.port, engine.load_s)
    when_started(server, started)
    server.run(sockets=[sock])


class ServerThread(UvicornThread):
    """A real pairline server on a free loopback port, in a thread (tests, benchmarks, in-process backends)."""

    what = "the test server"

    def __init__(self, engine: Engine, cfg: ServerConfig | None = None, log_level: str = "warning",
                 routes: list[BaseRoute] | None = None):
        self.app = build_app(engine, cfg, routes)
        super().__init__(lambda host, port: make_uvicorn(self.app, host, port, log_level))

    @property
    def server(self) -> PairlineServer:
        return self.app.state.pairline
