"""`pairline bench overhead`: what transport and server-side state cost per turn.

A 10-turn coding session over a ~2k-token file, with real model calls, run three ways side by
side (turn by turn, so all three see the same machine load):
  (a) HTTP + SSE, a new connection per turn, the full history resent each turn;
  (b) HTTP + SSE on one keep-alive connection, full history each turn;
  (c) the WebSocket session: one connection, each turn sends only its new message.
The server keeps a prefix cache, so (a) and (b) are not crippled: they reuse KV too.

Definitions (../shared/design.md), client clocks plus the server's reported timings:
  TTFT                 request leaving the client -> first text at the client (connect included in (a))
  server own time      the engine's: queue wait + engine TTFT (prefill and first token)
  per-roundtrip overh. client TTFT - server own time (transport, parsing, tokenizing, state handling)
  per-token overhead   client mean gap between text pieces - the engine's own step time per piece (time
                       inside its steps between the first and last piece, measured by the server); the
                       server may send pieces released together as one delta
  e2e                  request leaving the client -> the final event at the client
Then a load run: N WebSocket sessions at once for a bounded time, p50/p99 TTFT and every error."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from websockets.sync.client import connect

from pairline.bench.common import console as make_console
from pairline.bench.common import free_port, git_state, machine_info, median, nearest_rank, start_process, table

MODES = ("a_http_new_conn", "b_http_keepalive", "c_websocket")
QUESTIONS = [
    "What does the CancelToken class do? One sentence.",
    "Which class holds the timings of a request?",
    "Name the fields of Usage.",
    "What does Engine.fork return?",
    "How is a prompt's cached prefix reused?",
    "What does _TextStream hold back, and why?",
    "Which speculation modes exist?",
    "What happens when the context fills up?",
    "Where is the cancel flag checked?",
    "Summarize the file in one sentence.",
]


@dataclass(slots=True)
class OverheadConfig:
    model: str = "smollm2-135m"
    turns: int = 10
    max_tokens: int = 48
    file_tokens: int = 2000
    n_ctx: int = 8192
    load_sessions: int = 4
    load_seconds: float = 30.0
    load_max_tokens: int = 16
    threads: int | None = None  # PAIRLINE_THREADS for the server process
    base_url: str | None = None  # an already running server: do not start one
    command: str = ""
    log: object = field(default=print)


# ---------------------------------------------------------------- the file and the conversation


def session_file(model: str, n_tokens: int) -> tuple[str, int]:
    """A real source file (pairline's generation loop), cut to about n_tokens of the model's tokenizer."""
    from pairline.engine.tokenizer import Tokenizer
    from pairline.models.fetch import resolve

    text = (Path(__file__).resolve().parents[1] / "engine" / "generate.py").read_text()
    while len(text) < 4 * n_tokens:
        text += "\n" + text
    tok = Tokenizer.load(resolve(model))
    ids = tok.encode(text, add_bos=False)[:n_tokens]
    cut = tok.decode(ids)
    return cut[: cut.rfind("\n") + 1], len(ids)


def first_message(source: str, question: str) -> str:
    return f"Here is generate.py:\n```python\n{source}```\n{question}"


# ---------------------------------------------------------------- one turn per mode


@dataclass(slots=True)
class TurnResult:
    mode: str
    turn: int
    ttft_s: float | None = None
    e2e_s: float | None = None
    server_own_s: float | None = None  # queue + engine TTFT
    roundtrip_overhead_s: float | None = None
    client_gap_s: float | None = None
    engine_per_token_s: float | None = None
    per_token_overhead_s: float | None = None
    deltas: int = 0
    text_events: int = 0  # pieces of text the engine released; more than deltas when some went out together
    output_tokens: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    request_bytes: int = 0
    text: str = ""
    error: str | None = None


def _finish(r: TurnResult, t0: float, stamps: list[float], t_end: float, timings: dict, usage_out: int) -> None:
    r.e2e_s = t_end - t0
    r.deltas = len(stamps)
    r.output_tokens = usage_out
    if stamps:
        r.ttft_s = stamps[0] - t0
    if timings:
        r.server_own_s = timings["queue_s"] + timings["ttft_s"]
        if r.ttft_s is not None:
            r.roundtrip_overhead_s = r.ttft_s - r.server_own_s
        r.text_events = timings.get("text_events", 0)
        # The same span timed at both ends: from the first piece of text to the last, as the engine
        # released them and as the client got them. Pieces released together (one speculative step)
        # may go out as one delta, so the span is divided by the engine's count of pieces; the first
        # and last deltas hold the first and last pieces, so the endpoints still pair up.
        if len(stamps) > 1 and timings.get("engine_gap_s") is not None and r.text_events >= len(stamps):
            r.engine_per_token_s = timings["engine_gap_s"]
            r.client_gap_s = (stamps[-1] - stamps[0]) / (r.text_events - 1)
            r.per_token_overhead_s = r.client_gap_s - r.engine_per_token_s


def http_turn(client: httpx.Client | None, base_url: str, messages: list[dict], cfg: OverheadConfig,
              mode: str, turn: int) -> TurnResult:
    r = TurnResult(mode, turn)
    body = json.dumps({"model": cfg.model, "messages": messages, "max_tokens": cfg.max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    r.request_bytes = len(body)
    t0 = time.perf_counter()
    own = client is None
    c = client or httpx.Client(timeout=300)  # (a): a new connection per turn, set up inside the timed span
    stamps: list[float] = []
    text, timings, usage = [], {}, {}
    try:
        with c.stream("POST", base_url + "/v1/chat/completions", content=body,
                      headers={"content-type": "application/json"}) as resp:
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {resp.read()[:200]!r}"
                return r
            for line in resp.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    r.error = chunk["error"]["message"]
                    break
                if chunk.get("choices"):
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        stamps.append(time.perf_counter())
                        text.append(delta)
                timings = chunk.get("timings") or timings
                usage = chunk.get("usage") or usage
        t_end = time.perf_counter()
    finally:
        if own:
            c.close()
    r.text = "".join(text)
    r.input_tokens = usage.get("prompt_tokens", 0)
    r.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    _finish(r, t0, stamps, t_end, timings, usage.get("completion_tokens", 0))
    return r


class WsSession:
    def __init__(self, url: str):
        self.url = url
        self.ws = None

    def open(self) -> None:
        self.ws = connect(self.url, open_timeout=60, close_timeout=5, max_size=None).__enter__()
        first = json.loads(self.ws.recv(timeout=60))
        if first["type"] != "session.created":
            raise RuntimeError(f"expected session.created, got {first}")

    def turn(self, text: str, cfg: OverheadConfig, mode: str, turn: int, max_tokens: int | None = None,
             instructions: str | None = None) -> TurnResult:
        r = TurnResult(mode, turn)
        event = {"type": "response.create", "input": text, "max_output_tokens": max_tokens or cfg.max_tokens}
        if instructions:
            event["instructions"] = instructions
        msg = json.dumps(event)
        r.request_bytes = len(msg)
        t0 = time.perf_counter()
        if self.ws is None:  # the first turn pays for the handshake
            self.open()
        self.ws.send(msg)
        stamps: list[float] = []
        while True:
            ev = json.loads(self.ws.recv(timeout=300))
            kind = ev["type"]
            if kind == "response.output_text.delta":
                stamps.append(time.perf_counter())
            elif kind in ("response.completed", "response.incomplete", "response.cancelled", "response.failed"):
                t_end = time.perf_counter()
                resp = ev["response"]
                break
            elif kind == "error":
                r.error = ev["error"]["message"]
                if ev["error"].get("code") in ("rate_limit_exceeded", "conversation_already_has_active_response"):
                    return r
        if resp.get("error"):
            r.error = resp["error"]["message"]
        u = resp.get("usage") or {}
        r.text = resp.get("output_text", "")
        r.input_tokens = u.get("input_tokens", 0)
        r.cached_tokens = (u.get("input_tokens_details") or {}).get("cached_tokens", 0)
        _finish(r, t0, stamps, t_end, resp.get("timings") or {}, u.get("output_tokens", 0))
        return r

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


def run_session(base_url: str, cfg: OverheadConfig, source: str) -> list[TurnResult]:
    """The three modes, turn by turn. Each mode's conversation starts with its own tag, so no mode
    reuses another's KV through the prefix cache."""
    ws_url = base_url.replace("http://", "ws://") + "/v1/responses"
    histories = {m: [{"role": "system", "content": f"[{m} {secrets.token_hex(4)}] You are a concise coding assistant."}]
                 for m in MODES[:2]}
    keep = httpx.Client(timeout=300)
    ws = WsSession(ws_url)
    ws_system = f"[{MODES[2]} {secrets.token_hex(4)}] You are a concise coding assistant."
    results: list[TurnResult] = []
    try:
        for i in range(cfg.turns):
            q = QUESTIONS[i % len(QUESTIONS)]
            user = first_message(source, q) if i == 0 else q
            for mode in MODES:
                if mode == MODES[2]:  # only the new message; the first turn also opens the connection
                    r = ws.turn(user, cfg, mode, i + 1, instructions=ws_system if i == 0 else None)
                else:
                    hist = histories[mode]
                    hist.append({"role": "user", "content": user})
                    r = http_turn(None if mode == MODES[0] else keep, base_url, hist, cfg, mode, i + 1)
                    hist.append({"role": "assistant", "content": r.text})
                results.append(r)
                cfg.log(f"turn {i + 1:2d} {mode:17s} ttft {_ms(r.ttft_s)} overhead {_ms(r.roundtrip_overhead_s)} "
                        f"per-token overhead {_ms(r.per_token_overhead_s, 3)} in {r.input_tokens} "
                        f"cached {r.cached_tokens} out {r.output_tokens}" + (f" ERROR {r.error}" if r.error else ""))
    finally:
        keep.close()
        ws.close()
    return results


def _ms(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{1e3 * v:.{digits}f}ms"


def summarize(results: list[TurnResult]) -> dict:
    out = {}
    for mode in MODES:
        rows = [r for r in results if r.mode == mode and r.error is None]
        out[mode] = {k: median([getattr(r, k) for r in rows]) for k in (
            "ttft_s", "e2e_s", "server_own_s", "roundtrip_overhead_s", "client_gap_s", "engine_per_token_s",
            "per_token_overhead_s")}
        out[mode]["turns_ok"] = len(rows)
        out[mode]["errors"] = sum(1 for r in results if r.mode == mode and r.error)
        out[mode]["median_request_bytes"] = median([r.request_bytes for r in rows])
        out[mode]["median_prefilled_tokens"] = median([r.input_tokens - r.cached_tokens for r in rows])
    a, c = out[MODES[0]], out[MODES[2]]
    out["c_vs_a_reduction"] = {k: _reduction(a[k], c[k]) for k in ("roundtrip_overhead_s", "per_token_overhead_s",
                                                                   "ttft_s", "e2e_s")}
    return out


def _reduction(base: float | None, new: float | None) -> float | None:
    if base is None or new is None or base <= 0:
        return None
    return 1.0 - new / base


# ---------------------------------------------------------------- load run


def load_run(base_url: str, cfg: OverheadConfig, source_head: str) -> dict:
    """N sessions at once, each running turns until the deadline. Every failure is counted, and a
    session thread that does not finish in time counts as hung."""
    ws_url = base_url.replace("http://", "ws://") + "/v1/responses"
    deadline = time.monotonic() + cfg.load_seconds
    ttfts: list[float] = []
    errors: list[str] = []
    turns = [0]
    lock = threading.Lock()

    def one(k: int) -> None:
        s = WsSession(ws_url)
        i = 0
        try:
            while time.monotonic() < deadline:
                text = f"```python\n{source_head}```\n{QUESTIONS[i % len(QUESTIONS)]}" if i == 0 else QUESTIONS[
                    i % len(QUESTIONS)]
                r = s.turn(f"[user {k}] {text}", cfg, "load", i + 1, cfg.load_max_tokens)
                with lock:
                    turns[0] += 1
                    if r.error:
                        errors.append(r.error)
                    elif r.ttft_s is not None:
                        ttfts.append(r.ttft_s)
                i += 1
        except Exception as err:  # a dropped connection or a timeout is an error, never silence
            with lock:
                errors.append(f"{type(err).__name__}: {err}")
        finally:
            s.close()

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(cfg.load_sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()) + 300)
    hung = sum(t.is_alive() for t in threads)
    ttfts.sort()
    return {"sessions": cfg.load_sessions, "seconds": cfg.load_seconds, "turns": turns[0],
            "ttft_p50_s": nearest_rank(ttfts, 0.5), "ttft_p99_s": nearest_rank(ttfts, 0.99),
            "ttft_max_s": ttfts[-1] if ttfts else None,
            "errors": len(errors) + hung, "hung_sessions": hung, "error_messages": sorted(set(errors))[:10]}


# ---------------------------------------------------------------- the server process


def start_server(cfg: OverheadConfig) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    if cfg.threads:
        env["PAIRLINE_THREADS"] = str(cfg.threads)
    cmd = [sys.executable, "-m", "pairline.cli", "serve", "--model", cfg.model, "--port", str(port), "--ctx",
           str(cfg.n_ctx), "--max-sessions", str(max(8, cfg.load_sessions + 3)), "--max-queue", "64"]
    base = f"http://127.0.0.1:{port}"
    log_path = Path("bench-results") / f"overhead-server-{port}.log"
    proc = start_process(cmd, base + "/health", "pairline serve", log_path, env=env)
    return proc, base


def run_overhead(cfg: OverheadConfig) -> dict:
    source, n_file = session_file(cfg.model, cfg.file_tokens)
    proc = None
    base = cfg.base_url
    if base is None:
        cfg.log(f"starting pairline serve --model {cfg.model}")
        proc, base = start_server(cfg)
    try:
        health = httpx.get(base + "/health", timeout=10).json()
        warm = WsSession(base.replace("http://", "ws://") + "/v1/responses")  # load lazy parts off the clock
        warm.turn("hello", cfg, "warmup", 0, 2)
        warm.close()
        results = run_session(base, cfg, source)
        summary = summarize(results)
        load = load_run(base, cfg, source[:600]) if cfg.load_sessions > 0 and cfg.load_seconds > 0 else None
        metrics_errors = [line for line in httpx.get(base + "/metrics", timeout=10).text.splitlines()
                          if line.startswith("pairline:request_errors_total")]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"bench": "overhead", "command": cfg.command, "config": {k: v for k, v in asdict(cfg).items() if k != "log"},
            "server": health, "file_tokens": n_file, "machine": machine_info(), "git": git_state(), "summary": summary,
            "load": load,
            "server_error_metrics": metrics_errors, "turns": [asdict(r) | {"text": r.text[:200]} for r in results]}


def print_summary(result: dict, console=None) -> None:
    console = console or make_console()
    s = result["summary"]
    cfg = result["config"]
    t = table(f"{cfg['model']} ({result['server'].get('runtime')} runtime): per turn, medians of "
              f"{cfg['turns']} turns ({result['file_tokens']}-token file, {cfg['max_tokens']}-token answers)",
              ("median", "(a) HTTP new conn", "(b) HTTP keep-alive", "(c) WebSocket", "(c) vs (a)"), left=("median",))
    red = s["c_vs_a_reduction"]
    rows = [("TTFT", "ttft_s", 1), ("end to end", "e2e_s", 1), ("server own (queue+engine TTFT)", "server_own_s", 1),
            ("per-roundtrip overhead", "roundtrip_overhead_s", 2), ("client gap per text piece", "client_gap_s", 3),
            ("engine time per text piece", "engine_per_token_s", 3), ("per-token overhead", "per_token_overhead_s", 3)]
    for label, key, digits in rows:
        r = red.get(key)
        t.add_row(label, *(_ms(s[m][key], digits) for m in MODES), _change(r))
    for label, key in (("tokens prefilled", "median_prefilled_tokens"), ("request bytes", "median_request_bytes")):
        t.add_row(label, *(f"{s[m][key]}" for m in MODES), "")
    t.add_row("errors", *(str(s[m]["errors"]) for m in MODES), "")
    console.print(t)
    if result.get("load"):
        ld = result["load"]
        console.print(f"load: {ld['sessions']} WebSocket sessions for {ld['seconds']:g}s: {ld['turns']} turns, "
                      f"TTFT p50 {_ms(ld['ttft_p50_s'])} p99 {_ms(ld['ttft_p99_s'])}, errors {ld['errors']} "
                      f"(hung {ld['hung_sessions']})")


def _change(reduction: float | None) -> str:
    if reduction is None:
        return ""
    return f"{100 * reduction:.0f}% lower" if reduction >= 0 else f"{-100 * reduction:.0f}% higher"
