"""A real `pairline serve` process (SmolLM2-135M) on 127.0.0.1 against oversized bodies (issue 22,
row 7) and with its API key in the environment (row 11): concurrent 50 MB POSTs, with a
Content-Length and chunked, are refused without being read (the process's RSS, sampled during the
attack, stays flat), and the key is required while no `ps` shows it."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from tests.serve_helpers import serve_process

KEY = "s3cret-key-from-the-environment"
BIG = 50 << 20  # each attack body
PIECE = 1 << 20


@pytest.fixture(scope="module")
def serve():
    # llama.cpp alone: on a bf16 CPU the auto runtime is the split one, whose torch side loads in
    # the background and could land during the attack below, growing the RSS that test samples
    with serve_process("smollm2-135m", 512, PAIRLINE_API_KEY=KEY, PAIRLINE_RUNTIME="llamacpp") as (proc, port):
        yield proc, port


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def blind_post(port: int, size: int, chunked: bool, key: str | None) -> int | None:
    """What an attacker does: the whole body, whatever the server says meanwhile, then read the
    answer. Returns its status (None if the connection died without one)."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            + (f"Authorization: Bearer {key}\r\n" if key else "")
            + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n") + "\r\n")
    piece = b'{"model": "x", "messages": [' + b"1," * (PIECE // 2 - 20)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        try:
            s.sendall(head.encode())
            for _ in range(size // len(piece)):
                s.sendall(frame)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may hang up on us; its answer, if any, is already here
        data = b""
        while b"\r\n" not in data and select.select([s], [], [], 30)[0]:
            try:
                more = s.recv(65536)
            except OSError:
                break
            if not more:
                break
            data += more
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None


def test_api_key_comes_from_the_environment_and_stays_out_of_ps(serve):
    proc, port = serve
    with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
        assert KEY.encode() not in f.read()  # what `ps` shows every local user
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    with connect(f"ws://127.0.0.1:{port}/v1/responses", open_timeout=10) as ws:
        ev = json.loads(ws.recv(timeout=10))
        assert ev["type"] == "error" and ev["error"]["code"] == "invalid_api_key"
    with connect(f"ws://127.0.0.1:{port}/v1/responses", open_timeout=10,
                 additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"


def test_help_says_to_prefer_the_environment_variable():
    out = subprocess.run([sys.executable, "-m", "pairline.cli", "serve", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    text = " ".join(out.split())
    assert "PAIRLINE_API_KEY" in text and "Prefer the PAIRLINE_API_KEY environment variable" in text and "ps" in text


@pytest.mark.timeout(300)
def test_concurrent_oversized_bodies_are_refused_unread(serve):
    proc, port = serve
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    ok = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(url, json=ok, headers=auth, timeout=120).status_code == 200  # warm: lazy allocations done
    base, peak, done = rss(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    attacks = [(False, KEY)] * 4 + [(True, KEY)] * 4 + [(False, None), (True, None)]
    try:
        with ThreadPoolExecutor(len(attacks)) as pool:
            statuses = list(pool.map(lambda a: blind_post(port, BIG, *a), attacks))
    finally:
        done.set()
        sampler.join()
    assert statuses == [413] * 8 + [401, 401]
    growth = peak[0] - base
    # read whole, the eight authorized bodies alone would be 400 MB; refused unread, at most the 1 MiB
    # limit of each is held (plus uvicorn's 64 KiB read-ahead)
    assert growth < 32 << 20, f"RSS grew by {growth >> 20} MiB during the attack"
    assert httpx.post(url, json=ok, headers=auth, timeout=120).status_code == 200  # still serving
