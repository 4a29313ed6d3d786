"""A real `pairline serve` process for tests that need one outside this process (a node client, the
process's own limits)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(model: str, ctx: int, **env: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """`pairline serve --model MODEL` on a free loopback port, healthy when yielded, killed after.
    `env` is added to this process's environment (PAIRLINE_THREADS defaults to 1)."""
    port = free_port()
    full = {"PAIRLINE_THREADS": os.environ.get("PAIRLINE_THREADS", "1"), **os.environ, **env}
    proc = subprocess.Popen([sys.executable, "-m", "pairline.cli", "serve", "--model", model, "--port", str(port),
                             "--ctx", str(ctx)], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "pairline serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield proc, port
    finally:
        proc.kill()
        proc.wait(10)
