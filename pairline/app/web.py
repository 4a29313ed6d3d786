"""The app's routes, added to a `pairline serve` app: the page at `/`, its files under
`/app/static/`, and its WebSocket at `/app/ws` (docs/app.md).

Each tab gets its own `AppSession`: its own chat over a session-protocol client (the same
WebSocket protocol as every other client; the server keeps the conversation's KV), and its own
workspace object (undo is per tab; a write refused because another tab changed the file is a
conflict like any other). The tab's messages are handled in order, in one thread: they may block
on the disk, git, or a turn's end. Events go out through a queue the socket's task drains."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import queue
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from pairline.app.session import AppChat, AppSession
from pairline.assistant.client import RemoteClient
from pairline.assistant.workspace import Workspace
from pairline.errors import PairlineError
from pairline.wire.asgi import LOOPBACK

log = logging.getLogger("pairline.app")

STATIC = Path(__file__).parent / "static"
HELLO_TIMEOUT_S = 10.0
MAX_MESSAGE_CHARS = 256 * 1024
CLOSE_UNAUTHORIZED = 4401
CLOSE_NO_WORKSPACE = 4404
# the page loads nothing from elsewhere and talks only to its own origin; no frame may embed it
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self' "
    "'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(slots=True)
class AppConfig:
    """What the app serves: the workspace root (None: the page says there is none), the token
    the launcher put in the URL, and how a tab gets its model clients."""

    root: Path | None
    token: str
    open_client: Callable[[], RemoteClient]  # the real-time tier: a session of the protocol
    open_deep: Callable[[], RemoteClient] | None = None  # the deep tier (None: the real-time model)
    commit: bool = True
    test_cmd: str = "pytest -q"


def app_routes(cfg: AppConfig) -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    async def socket(websocket: WebSocket) -> None:
        await _serve_tab(websocket, cfg)

    return [
        Route("/", index),
        Mount("/app/static", StaticFiles(directory=STATIC), name="app-static"),
        WebSocketRoute("/app/ws", socket),
    ]


async def _serve_tab(websocket: WebSocket, cfg: AppConfig) -> None:
    await websocket.accept()
    hello = await _first_message(websocket)
    token = hello.get("token") if isinstance(hello, dict) and hello.get("type") == "hello" else None
    if cfg.root is None:  # says nothing a page could use
        await _refuse(websocket, "no_workspace", "this server has no workspace: start it with `pairline app DIR` "
                      "or `pairline serve --workspace DIR`", CLOSE_NO_WORKSPACE)
        return
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), cfg.token.encode()):
        await _refuse(websocket, "unauthorized", "open the URL that `pairline app` printed (it carries the token)",
                      CLOSE_UNAUTHORIZED)
        return
    loop = asyncio.get_running_loop()
    out: asyncio.Queue = asyncio.Queue()

    def send(event: dict) -> None:
        loop.call_soon_threadsafe(out.put_nowait, event)

    try:
        session = await asyncio.to_thread(_open_session, cfg, send)
    except PairlineError as err:
        await _refuse(websocket, "internal", f"the model is not reachable: {err}", 1011)
        return
    inbox: queue.Queue = queue.Queue()
    worker = threading.Thread(target=_work, args=(session, inbox), daemon=True, name="pairline-app-tab")
    worker.start()
    writer = asyncio.create_task(_drain(websocket, out))
    try:
        send(await asyncio.to_thread(session.ready))
        while True:
            text = await websocket.receive_text()
            msg = _parse(text)
            if msg is None:
                send({"type": "error", "code": "bad_request", "message": "messages are JSON objects with a 'type', "
                      f"at most {MAX_MESSAGE_CHARS // 1024} KiB"})
            else:
                inbox.put(msg)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the tab closed
    finally:
        inbox.put(None)
        await asyncio.to_thread(worker.join, 30)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


def _open_session(cfg: AppConfig, send: Callable[[dict], None]) -> AppSession:
    opened: list[RemoteClient] = []

    def track(open_client: Callable[[], RemoteClient]) -> RemoteClient:
        opened.append(open_client())
        return opened[-1]

    client = track(cfg.open_client)
    ws = Workspace.open(cfg.root, commit=cfg.commit)
    if ws.root != cfg.root:  # a folder inside a repository: confined to the folder, still committing
        ws = Workspace(cfg.root, git=True, commit=cfg.commit)
    open_deep = cfg.open_deep
    chat = AppChat(client=client, ws=ws, write=lambda text: None, send=send, test_cmd=cfg.test_cmd,
                   open_deep=None if open_deep is None else lambda: track(open_deep), whole_lines=False)
    return AppSession(chat, client.model_name, opened)


def _work(session: AppSession, inbox: queue.Queue) -> None:
    """The tab's messages, in order, until the socket closes (None); then its turn is stopped."""
    try:
        while (msg := inbox.get()) is not None:
            try:
                session.handle(msg)
            except Exception as err:  # noqa: BLE001 - a bug answers this message, the tab lives on
                log.exception("app message %s failed", msg.get("type"))
                session.chat.send({"type": "error", "code": "internal", "message": f"{type(err).__name__}: {err}"})
    finally:
        session.close()


async def _drain(websocket: WebSocket, out: asyncio.Queue) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.send_text(json.dumps(await out.get()))


async def _first_message(websocket: WebSocket) -> object:
    try:
        return _parse(await asyncio.wait_for(websocket.receive_text(), HELLO_TIMEOUT_S))
    except (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError, KeyError):
        return None


async def _refuse(websocket: WebSocket, code: str, message: str, close: int) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_text(json.dumps({"type": "error", "code": code, "message": message}))
        await websocket.close(close)


def _parse(text: str) -> dict | None:
    if len(text) > MAX_MESSAGE_CHARS:
        return None
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) and isinstance(msg.get("type"), str) else None


# ---------------------------------------------------------------- what `pairline app` / `serve --workspace` set up


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _dialable(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host` (a wildcard: loopback)."""
    return LOOPBACK if host in ("", "0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)


def app_url(host: str, port: int, token: str) -> str:
    """The URL the launcher prints and opens: the token rides in the fragment, which no browser sends."""
    return f"http://{_dialable(host)}:{port}/#token={token}"


def workspace_root(path: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PairlineError(f"{path} is not a folder; pairline app edits the files of a folder")
    return root.resolve()


def local_client(host: str, port: int, api_key: str | None) -> Callable[[], RemoteClient]:
    """A tab's session with this very server, over the protocol every client speaks."""
    url = f"ws://{_dialable(host)}:{port}/v1/responses"
    return lambda: RemoteClient(url, api_key=api_key)


def deep_tier(deep_model: str | None, model: str, n_ctx: int, runtime: str | None) -> Callable[[], RemoteClient] | None:
    """How a tab opens the deep tier: None (the real-time model) for 'same' or the served model
    itself; else a session with a second server in this process, started on the first deep turn
    (its model loads then, once for every tab)."""
    from pairline.models.registry import DEFAULT_DEEP

    name = deep_model or DEFAULT_DEEP
    if name in ("same", model):
        return None
    lock = threading.Lock()
    started: list = []

    def open_deep() -> RemoteClient:
        with lock:
            if not started:
                from pairline.engine.load import load_engine
                from pairline.server.app import ServerThread

                engine = load_engine(name, n_ctx=max(n_ctx, 8192), runtime=runtime)
                started.append(ServerThread(engine).__enter__())
        return RemoteClient(started[0].ws_url)

    return open_deep


def run_app_only(cfg: AppConfig, sock, host: str, port: int, allowed_hosts: tuple[str, ...] = (),
                 allowed_origins: tuple[str, ...] = (), started: Callable[[], None] | None = None) -> None:
    """The app alone, its model elsewhere (`pairline app --server URL`): the page, its socket and
    the web guard, until Ctrl-C."""
    import uvicorn
    from starlette.applications import Starlette

    from pairline.wire.asgi import uvicorn_config, when_started
    from pairline.wire.guard import WebGuard, WebPolicy

    app = Starlette(routes=app_routes(cfg))
    app.add_middleware(WebGuard, policy=WebPolicy.build(host, allowed_hosts, allowed_origins))
    server = uvicorn.Server(uvicorn_config(app, host, port, "warning", MAX_MESSAGE_CHARS * 4, 5.0))
    when_started(server, started)
    server.run(sockets=[sock])


def remote_tiers(url: str, api_key: str | None) -> tuple[Callable[[], RemoteClient], Callable[[], RemoteClient]]:
    """A tab's clients on a running `pairline serve` or `pairline route` at `url`: the real-time
    tier, and the deep one (a router's deep mode; a plain server has no tiers, and its one model
    then serves deep turns too, said once)."""
    from pairline.errors import notice

    def realtime() -> RemoteClient:
        return RemoteClient(url, api_key=api_key)

    def deep() -> RemoteClient:
        try:
            return RemoteClient(url, api_key=api_key, mode="deep")
        except PairlineError as err:
            notice(f"{err}; deep turns run on the server's model")
            return realtime()

    return realtime, deep
