"""Running an ASGI app under uvicorn, as the server and the router both do: the uvicorn settings
they share, and a uvicorn server on a free loopback port in a thread (tests, benchmarks,
in-process backends)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from starlette.applications import Starlette

from pairline.wire.listen import bind_socket

LOOPBACK = "127.0.0.1"
_T = TypeVar("_T", bound="UvicornThread")


def uvicorn_config(app: Starlette, host: str, port: int, log_level: str, max_message_bytes: int,
                   graceful_s: float) -> uvicorn.Config:
    """uvicorn as the server and the router both run it: no access log (each logs its own lines),
    WebSocket frames allowed well past the message limit (so an oversized message is answered with
    the protocol's message_too_large error, not a dropped connection), no pings (sessions have their
    own idle timeout), and no permessage-deflate: compressing each small delta frame was two thirds
    of the event loop's time per WebSocket delta (py-spy, docs/benchmarks.md "per-token overhead"),
    time that then competes with the engine thread for the GIL."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                          ws_max_size=max(max_message_bytes * 4, 1 << 20), ws_ping_interval=None,
                          ws_per_message_deflate=False,
                          timeout_graceful_shutdown=graceful_s)


class UvicornThread:
    """A uvicorn server on a free loopback port, in a daemon thread: the base of the server's
    ServerThread and the router's RouterThread. `make(host, port)` builds the server."""

    what = "the server"  # named in the error when it does not start

    def __init__(self, make: Callable[[str, int], uvicorn.Server]):
        self.sock = bind_socket(LOOPBACK, 0)  # port 0: the OS picks a free port, and it stays ours from now on
        self.port = self.sock.getsockname()[1]
        self.uv = make(LOOPBACK, self.port)
        self.thread = threading.Thread(target=lambda: self.uv.run(sockets=[self.sock]), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/v1/responses"

    def __enter__(self: _T) -> _T:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uv.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{self.what} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """What SIGTERM does to the process, then wait for the thread. (uvicorn re-raises a signal it
        was handed only in the main thread, which this is not.)"""
        self.uv.handle_exit(signal.SIGTERM, None)
        self.thread.join(15)

    def __exit__(self, *exc) -> None:
        self.stop()


def when_started(server: uvicorn.Server, callback: Callable[[], None] | None) -> None:
    """Call `callback` (in a thread) once `server` accepts connections; never if it fails to start."""
    if callback is None:
        return

    def wait() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            callback()

    threading.Thread(target=wait, daemon=True).start()
