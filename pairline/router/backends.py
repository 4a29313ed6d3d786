"""Backends: where a backend lives (URLs, key), what the balancer knows about it, and the two ways
of talking to it: a WebSocket session (pairline servers, in-process engines) or HTTP Chat
Completions with SSE (any OpenAI-compatible server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect

from pairline.errors import PairlineError
from pairline.router.balance import CircuitBreaker, Target
from pairline.router.config import BackendConfig, RouterConfig

log = logging.getLogger("pairline.router")

# Error codes a backend may answer before the first token that another backend could do better on.
RETRY_CODES = frozenset({"rate_limit_exceeded", "server_shutting_down", "session_limit_reached", "server_error",
                         "session_expired"})
GRAMMAR_REFUSED = "grammar_unsupported"  # a Retryable's code: the backend does not take `grammar`
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.cancelled", "response.failed"})


class Retryable(Exception):
    """The attempt failed before any of the answer reached the client: another backend may serve it.
    `broken`: counts against the backend's circuit (a refusal for load does not)."""

    def __init__(self, message: str, broken: bool = True, code: str = "backend_unavailable", refused: bool = False):
        super().__init__(message)
        self.broken, self.code, self.refused = broken, code, refused

    @classmethod
    def before_first_token(cls, backend: str, code: str) -> Retryable:
        """A backend answered error `code` before the first token (one of RETRY_CODES; any, for a
        continuation: the client has its response open). Only a server error counts against its
        circuit; a refusal for load keeps its own code for the client."""
        return cls(f"{backend}: {code} before the first token", broken=code == "server_error",
                   code="rate_limit_exceeded" if code == "rate_limit_exceeded" else "backend_unavailable")


@dataclass(slots=True, eq=False)
class Backend(Target):
    tier: str = ""
    kind: str = "pairline"  # pairline | openai | inprocess (served like pairline, on a loopback port)
    root: str = ""  # scheme://host:port
    api_base: str = ""  # where /chat/completions lives
    model: str | None = None  # openai: sent as `model`; pairline: what its /health reports
    api_key: str | None = None
    health_path: str = "/health"
    prediction: bool = True
    grammar: bool = True  # takes pairline's `grammar`; if not, a request with one is refused, never run unconstrained
    balanced: bool = False  # a balancer in front of replicas: a failed request does not open its circuit
    resume: bool = True  # can continue a cut answer (continue_final_message, continuous usage): pairline.router.resume
    server: object | None = None  # inprocess: its ServerThread

    @classmethod
    def from_config(cls, bc: BackendConfig, tier: str, cfg: RouterConfig) -> Backend:
        b = cls(name=bc.name or tier, tier=tier, kind=bc.kind, model=bc.model, api_key=bc.api_key,
                health_path=bc.health_path, prediction=bc.prediction, grammar=bc.grammar, resume=bc.resume,
                balanced=bc.balanced,
                breaker=CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s))
        if bc.url:
            b.set_url(bc.url)
        return b

    def set_url(self, url: str) -> None:
        parts = urlsplit(url)
        self.root = f"{parts.scheme}://{parts.netloc}"
        self.api_base = url if self.kind == "openai" else self.root + "/v1"

    @property
    def speaks_ws(self) -> bool:
        return self.kind != "openai"

    @property
    def ws_url(self) -> str:
        return "ws" + self.root[4:] + "/v1/responses"

    def headers(self, key: str | None = None) -> dict[str, str]:
        """The backend's key, and the session key for a pairline backend: a Serve deployment of
        pairline (server/ray_serve.py) routes on it, so a session's requests find their KV."""
        h = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if key and self.kind != "openai":
            h["x-pairline-session"] = key
        return h

    def upstream_body(self, body: dict) -> dict:
        """The client's body as this backend should get it: an OpenAI-compatible server gets its
        own model name, and no `prediction` where it does not take one. A `grammar` goes through
        as it is; to a backend that does not take one, the request is not sent (Retryable: another
        backend may take it), since dropping it would answer unconstrained."""
        if body.get("grammar") is not None and not self.grammar:
            raise self.grammar_refused()
        out = dict(body)
        if self.kind == "openai" and self.model:
            out["model"] = self.model
        if not self.prediction:
            out.pop("prediction", None)
        return out

    def grammar_refused(self) -> Retryable:
        """This backend cannot take a request with a `grammar`: not a failure of the backend (its
        circuit is untouched), and another backend may serve it."""
        return Retryable(f"{self.name} does not take 'grammar' (grammar = false in the router's config)",
                         broken=False, code=GRAMMAR_REFUSED)


# ---------------------------------------------------------------- HTTP


async def send_request(client: httpx.AsyncClient, b: Backend, path: str, body: dict, stream: bool,
                       key: str | None = None) -> httpx.Response:
    """POST `path` under the backend's API base. Not reaching it, or an answer another backend might
    do better on (429, 5xx), is Retryable; any other status is the caller's to pass on."""
    req = client.build_request("POST", b.api_base + path, json=body, headers=b.headers(key))
    try:
        resp = await client.send(req, stream=stream)
    except httpx.HTTPError as err:
        raise Retryable(f"{b.name}: {type(err).__name__}: {err}", refused=isinstance(err, httpx.ConnectError)) from None
    if resp.status_code == 429 or resp.status_code >= 500:
        with contextlib.suppress(httpx.HTTPError):
            await resp.aread()
        await resp.aclose()
        raise Retryable(f"{b.name}: HTTP {resp.status_code}", broken=resp.status_code != 429,
                        code="rate_limit_exceeded" if resp.status_code == 429 else "backend_unavailable")
    return resp


async def sse_events(resp: httpx.Response) -> AsyncIterator[tuple[str, dict | None]]:
    """('data', parsed) for each SSE data line, ('done', None) for [DONE]."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield "done", None
            return
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield "data", obj


def chunk_text(obj: dict) -> str:
    choices = obj.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    c = choices[0]
    delta = c.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else c.get("text")
    return text if isinstance(text, str) else ""


def chunk_finish(obj: dict) -> str | None:
    choices = obj.get("choices") or []
    return choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None


def error_code(obj: dict) -> str | None:
    err = obj.get("error")
    if isinstance(err, dict):
        return str(err.get("code") or err.get("type") or "error")
    return "error" if err else None


async def check_health(client: httpx.AsyncClient, b: Backend, timeout: float) -> bool:
    try:
        r = await client.get(b.root + b.health_path, headers=b.headers(), timeout=timeout)
    except httpx.HTTPError:
        return False
    if r.status_code != 200:
        return False
    if b.kind != "openai":  # pairline's /health names its model
        with contextlib.suppress(ValueError, AttributeError):
            b.model = r.json().get("model") or b.model
    return True


# ---------------------------------------------------------------- WebSocket


class WsLink:
    """One session on a pairline backend, held for one router session and one tier. A reader task
    moves the backend's events into a queue (None when the socket closes), so a dead or expired
    link is noticed before the next turn is sent on it. `synced`: how much of the router's copy of
    the conversation this backend session holds."""

    def __init__(self, backend: Backend, conn: ClientConnection):
        self.backend, self.conn = backend, conn
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.synced = 0
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, b: Backend, timeout: float, key: str | None = None) -> WsLink:
        try:
            conn = await connect(b.ws_url, additional_headers=b.headers(key), open_timeout=timeout, max_size=1 << 24,
                                 close_timeout=2, proxy=None)
        except Exception as err:  # refused, timed out, handshake rejected
            raise Retryable(f"{b.name}: cannot open a session ({type(err).__name__}: {err})",
                            refused=isinstance(err, OSError)) from None
        try:
            first = json.loads(await asyncio.wait_for(conn.recv(), timeout))
        except Exception as err:
            await conn.close()
            raise Retryable(f"{b.name}: no session.created ({type(err).__name__})") from None
        if first.get("type") != "session.created":
            await conn.close()
            code = (first.get("error") or {}).get("code", "") if isinstance(first.get("error"), dict) else ""
            raise Retryable(f"{b.name}: refused the session ({code or first.get('type')})",
                            broken=code not in ("session_limit_reached",))
        return cls(b, conn)

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                with contextlib.suppress(ValueError):
                    ev = json.loads(raw)
                    if isinstance(ev, dict):
                        self.queue.put_nowait(ev)
        except Exception:  # the connection died: the None below says so
            pass
        finally:
            self.closed = True
            self.queue.put_nowait(None)

    def usable(self) -> bool:
        """Drops what arrived between turns; False if the backend closed the session meanwhile."""
        while not self.queue.empty():
            ev = self.queue.get_nowait()
            if ev is None:
                self.closed = True
        return not self.closed

    async def send(self, ev: dict) -> None:
        try:
            await self.conn.send(json.dumps(ev))
        except Exception as err:
            self.closed = True
            raise ConnectionError(str(err)) from None

    async def recv(self, timeout: float) -> dict | None:
        """The next event, or None when the socket closed or stayed silent for `timeout`."""
        try:
            ev = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            ev = None
        if ev is None:
            self.closed = True
        return ev

    async def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            await self.conn.close()
        self.reader.cancel()


# ---------------------------------------------------------------- in-process engines


def start_inprocess(bc: BackendConfig, b: Backend) -> None:
    """Load the model and serve it with the server's own scheduler on a loopback port; from then
    on the router talks to it like to any pairline server (same protocol, same code path)."""
    from pairline.engine.load import load_engine
    from pairline.server.app import ServerThread
    from pairline.server.config import ServerConfig

    try:
        engine = load_engine(bc.model, n_ctx=bc.ctx, runtime=bc.runtime)
    except PairlineError as err:
        raise PairlineError(f"backend {bc.name}: {err}") from None
    server = ServerThread(engine, ServerConfig(max_sessions=bc.max_sessions))
    server.__enter__()
    b.server = server
    b.model = engine.model_name
    b.set_url(server.base_url)
    log.info("router: %s serves %s in-process on %s", b.name, engine.model_name, server.base_url)
