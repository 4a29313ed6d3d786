"""A developer's probe, not a benchmark: what the server costs per streamed token, at engine steps
of a few milliseconds, where `pairline bench overhead`'s real model (17-85 ms steps on a CPU)
cannot resolve microseconds.

It starts a pairline server on a tiny random-weight model (tests/engine_helpers.py, SmolLM2's
tokenizer) in a child process, then runs N turns each of HTTP+SSE and the WebSocket session,
alternating, and prints the medians of: the client's gap between deltas, the engine's busy time
per delta, and their difference (the per-token overhead of ../shared/design.md).

    python scripts/token_overhead_probe.py [--turns 8] [--tokens 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a long story about a cat who codes in Python. " * 4


def serve(port: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from engine_helpers import tiny_engine

    from pairline.engine.tokenizer import Tokenizer
    from pairline.models.fetch import resolve
    from pairline.server.app import run_server
    from pairline.server.config import ServerConfig
    from pairline.wire.listen import bind_socket

    engine = tiny_engine(Tokenizer.load(resolve("smollm2-135m")), n_ctx=4096)
    run_server(engine, ServerConfig(port=port, prefill_ahead=False), bind_socket("127.0.0.1", port))


def sse_turn(client, base: str, tokens: int) -> tuple[list[float], dict]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "stream": True, "temperature": 1.0, "seed": 1, "stream_options": {"include_usage": True}}
    stamps, timings = [], {}
    with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    stamps.append(time.perf_counter())
                timings = chunk.get("timings") or timings
    return stamps, timings


def ws_turn(base: str, tokens: int) -> tuple[list[float], dict]:
    from websockets.sync.client import connect

    with connect(base.replace("http", "ws") + "/v1/responses", max_size=None) as ws:
        json.loads(ws.recv())
        ws.send(json.dumps({"type": "response.create", "input": PROMPT, "max_output_tokens": tokens,
                            "temperature": 1.0, "store": False}))
        stamps = []
        while True:
            ev = json.loads(ws.recv(timeout=300))
            if ev["type"] == "response.output_text.delta":
                stamps.append(time.perf_counter())
            elif ev["type"] in ("response.completed", "response.incomplete", "response.failed"):
                return stamps, ev["response"].get("timings") or {}


def main() -> None:
    import httpx

    from pairline.bench.common import free_port, machine_info

    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--json")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(1)
        rows: dict[str, list[dict]] = {"sse": [], "websocket": []}
        with httpx.Client(timeout=300) as client:
            for _ in range(args.turns):
                for mode in rows:
                    stamps, t = sse_turn(client, base, args.tokens) if mode == "sse" else ws_turn(base, args.tokens)
                    pieces = t.get("text_events", 0)  # pieces released together may share a delta
                    if len(stamps) > 1 and t.get("engine_gap_s") is not None and pieces >= len(stamps):
                        gap = (stamps[-1] - stamps[0]) / (pieces - 1)
                        rows[mode].append({"client_gap_s": gap, "engine_gap_s": t["engine_gap_s"],
                                           "overhead_s": gap - t["engine_gap_s"], "deltas": len(stamps),
                                           "pieces": pieces})
    finally:
        server.terminate()
        server.wait(10)
    out = {"machine": machine_info(), "turns": args.turns, "tokens": args.tokens, "modes": {}}
    for mode, r in rows.items():
        keys = ("client_gap_s", "engine_gap_s", "overhead_s")
        med = {k: statistics.median(x[k] for x in r) for k in keys} if r else {}
        out["modes"][mode] = med | {"turns_paired": len(r)}
        if r:
            print(f"{mode:9s} client gap {1e3 * med['client_gap_s']:.3f} ms  engine {1e3 * med['engine_gap_s']:.3f} ms"
                  f"  per-token overhead {1e6 * med['overhead_s']:.1f} us  ({len(r)} turns)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
