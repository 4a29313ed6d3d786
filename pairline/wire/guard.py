"""What keeps a web page in the user's browser from driving a server or router bound to this
machine (docs/server.md, "Threat model"); the options that widen it: pairline.wire.listen.

A page can send requests to http://127.0.0.1:PORT without the user knowing. The browser then tells
us where they come from, and we refuse:
- a WebSocket (or any request) whose `Origin` is not this machine: a page cannot open a session;
- a `Host` that names another site: DNS rebinding (a page's own name, re-pointed at 127.0.0.1,
  would make its requests same-origin and read the answers);
- a POST whose body is not declared `application/json`: the only bodies a page can send without
  asking the server first (a CORS preflight, which we never grant) are text/plain, form data and
  untyped blobs.
Clients that are not browsers send no `Origin`, and every HTTP/1.1 client sends the `Host` it
dialled, so they pass untouched.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pairline.wire.openai import error_response
from pairline.wire.protocol import ProtocolError

log = logging.getLogger("pairline.server")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def host_of(value: str) -> str | None:
    """The host name in a `Host` header ("name[:port]", "[v6]:port"), lowercased, without the port,
    the brackets or a final dot; None when it cannot be one."""
    value = value.strip().lower()
    if value.startswith("["):
        inner, sep, rest = value[1:].partition("]")
        return inner if sep and (not rest or rest[:1] == ":" and rest[1:].isdigit()) else None
    name, _, port = value.partition(":")
    if ":" in port or (port and not port.isdigit()):
        return None
    return name.rstrip(".") or None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _origin_key(origin: str) -> str | None:
    """An origin as "scheme://host[:port]", lowercased, for comparing with --allow-origin entries."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)  # a browser leaves the default port out
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


@dataclass(frozen=True, slots=True)
class WebPolicy:
    """Which `Host` names and which `Origin`s are let in, besides this machine's loopback names.

    Host: an IP address always passes (DNS rebinding needs a name the attacker controls, so a
    client that dialled an address is not a rebound page); a name passes when it is a loopback
    name, the name the server was told to bind, or listed (`--allow-host`; "*" lets any in).
    Origin: absent passes (not a browser); otherwise an http(s) page on a loopback name, any port,
    or a listed origin (`--allow-origin https://app.example:8443`; "*" lets any in). "null" (a
    sandboxed frame, a file:// page) never passes unless "*" is listed.
    """

    hosts: frozenset[str] = frozenset()
    origins: frozenset[str] = frozenset()

    @classmethod
    def build(cls, bind_host: str = "127.0.0.1", allow_hosts: Iterable[str] = (),
              allow_origins: Iterable[str] = ()) -> WebPolicy:
        hosts = {h for h in (host_of(x) if x != "*" else "*" for x in allow_hosts) if h}
        bound = host_of(bind_host) if ":" not in bind_host else bind_host.strip("[]").lower()
        if bound and bound not in _WILDCARD_BINDS:
            hosts.add(bound)  # `--host box.lan`: the name asked for is the name clients will use
        origins = {o for o in (_origin_key(x) if x != "*" else "*" for x in allow_origins) if o}
        return cls(frozenset(hosts), frozenset(origins))

    def host_ok(self, header: str | None) -> bool:
        if header is None:  # HTTP/1.0 without a Host: not a browser
            return True
        host = host_of(header)
        if host is None:
            return False
        return host in LOOPBACK_NAMES or _is_ip(host) or host in self.hosts or "*" in self.hosts

    def origin_ok(self, header: str | None) -> bool:
        if header is None:
            return True
        if "*" in self.origins:
            return True
        key = _origin_key(header)
        if key is None:
            return False
        scheme, _, rest = key.partition("://")
        if scheme in ("http", "https") and host_of(rest) in LOOPBACK_NAMES:
            return True
        return key in self.origins


class WebGuard:
    """ASGI middleware, outermost: refuses what only a hostile web page would send (see the module
    docstring) before any route, key check or body read. `count(code)` tallies each refusal."""

    def __init__(self, app, policy: WebPolicy, count: Callable[[str], None] | None = None):
        self.app = app
        self.policy = policy
        self.count = count

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            err = self.refusal(scope)
            if err is not None:
                if self.count is not None:
                    self.count(err.code)
                log.warning("refused %s %s from %s: %s", scope.get("method", "WEBSOCKET"), scope.get("path"),
                            _client(scope), err.message)
                return await self.refuse(err, scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope) -> ProtocolError | None:
        headers = _headers(scope)
        host, origin = headers.get(b"host"), headers.get(b"origin")
        if not self.policy.host_ok(host):
            return ProtocolError(f"Host {host!r} is not this server (a DNS-rebinding page?); a server meant to be "
                                 "reached by that name is started with --allow-host", code="invalid_host",
                                 status=400, type_="invalid_request_error")
        if not self.policy.origin_ok(origin):
            return ProtocolError(f"requests from the web page at {origin!r} are refused; a page meant to use this "
                                 "server is allowed with --allow-origin", code="forbidden_origin", status=403,
                                 type_="permission_error")
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            ctype = (headers.get(b"content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return ProtocolError(f"the body must be sent as Content-Type: application/json, not {ctype or 'none'}",
                                     code="unsupported_media_type", status=415)
        return None

    async def refuse(self, err: ProtocolError, scope, receive, send) -> None:
        """The error as a JSON response: over HTTP, or for a WebSocket handshake through the ASGI
        denial response where the server offers it (uvicorn does), else a bare 403 close."""
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        await error_response(err)(scope, receive, send)


def _headers(scope) -> dict[bytes, str]:
    # the first of each name: a repeated Host or Origin is malformed, and the first is what
    # uvicorn and starlette read too
    out: dict[bytes, str] = {}
    for k, v in scope.get("headers", ()):
        out.setdefault(k, v.decode("latin-1"))
    return out


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
