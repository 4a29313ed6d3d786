"""`pairline bench typeahead`: time to first token after Enter, when the engine had the user's typing
time to prefill ahead (issue 20; docs/protocol.md, "Prefill ahead").

The scene: a 150-line file is opened, then an instruction of 60-80 characters is typed at 6
characters a second (with a pause, and a typo deleted by a backspace burst), then Enter. Three ways
to serve it, each repeat in turn on a fresh file (its first line names the repeat, so no cache holds
it but the system prompt's):

- `http`: OpenAI Chat Completions (streamed) at Enter; the server's prefix cache finds what it can;
- `ws`: a WebSocket session, everything sent at Enter (the file as the turn's first message);
- `ws-ahead`: a WebSocket session told of the file (context.update) when it is opened and of each
  draft (draft.update) as it is typed; at Enter only what was not prefilled ahead is left.

All three send the same prompt tokens. Reported: TTFT from Enter to the first text, the prompt
tokens prefilled after Enter, and for ws-ahead the engine time spent ahead and how much of what was
prefilled ahead the request did not use (wasted on the typo, and on the last word).

`--contention` (issue 20's other goals): two sessions on one server, a typist whose drafts keep the
engine prefilling ahead and an asker sending short real requests; the asker's TTFT and decode speed
with the typist typing and with it idle, in alternate blocks of the same run, beside the time of one
prefill chunk (a request should never wait more than one chunk for someone else's drafts)."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

FILE_TASK = "genericpath-rename"  # a real module of the standard library, 155 lines
INSTRUCTION = "Rename the function commonprefix to common_prefix and update its callers."
VARIANTS = ("http", "ws", "ws-ahead")


@dataclass
class TypeaheadConfig:
    model: str = "qwen2.5-coder-0.5b"
    runtime: str = "auto"
    n_ctx: int = 4096
    repeats: int = 3
    file_lines: int = 150
    instruction: str = INSTRUCTION
    chars_per_s: float = 6.0
    pause_s: float = 1.5  # once, two thirds in
    typo: str = "xqzv"  # typed and then deleted, a third in
    max_tokens: int = 16
    variants: tuple[str, ...] = VARIANTS
    contention: ContentionConfig | None = None  # None: the contention scenario is not run
    command: str = ""
    log: object = field(default=print)


ASK = "Explain in two sentences what Python's str.partition returns."
TYPIST_INSTRUCTIONS = (
    INSTRUCTION,
    "Add type hints to exists, isfile and isdir, and keep their docstrings as they are.",
    "Explain what _splitext does with leading dots in a file name, in one short paragraph.",
    "Make samestat compare st_dev before st_ino and say why the order does not matter.",
    "Write a docstring for commonprefix that shows an example with two absolute paths.",
)


@dataclass
class ContentionConfig:
    """The contention scenario: the asker's requests, `asks` with the typist typing and as many with it
    idle, in alternate blocks of `block` (idle-typing, typing-idle, ...); the typist types at the
    bench's `chars_per_s` (its pause and typo too), a fresh instruction each time it reaches the end."""

    asks: int = 20  # per condition
    block: int = 5
    ask_tokens: int = 32
    question: str = ASK
    gap_s: tuple[float, float] = (0.3, 0.9)  # the asker's think time before each request (uniform, seeded)
    reopen: bool = False  # the typist also opens a fresh file with each instruction (a whole file prefilled ahead)
    seed: int = 0


def typing_timeline(text: str, chars_per_s: float, pause_s: float, typo: str) -> list[tuple[float, str]]:
    """(seconds after the file opened, the draft then) for each keystroke: the text typed at
    `chars_per_s`, `typo` typed a third in and deleted again (backspaces twice as fast), a pause of
    `pause_s` two thirds in. The last draft is `text`."""
    out: list[tuple[float, str]] = []
    t, step = 0.0, 1.0 / chars_per_s
    typo_at, pause_at = len(text) // 3, 2 * len(text) // 3
    for i in range(1, len(text) + 1):
        t += step
        out.append((t, text[:i]))
        if i == typo_at and typo:
            for j in range(1, len(typo) + 1):
                t += step
                out.append((t, text[:i] + typo[:j]))
            for j in range(len(typo) - 1, -1, -1):
                t += step / 2
                out.append((t, text[:i] + typo[:j]))
        if i == pause_at:
            t += pause_s
    return out


def file_text(lines: int, repeat: int) -> str:
    from pairline.bench.common import load_tasks

    source = next(t["source"] for t in load_tasks() if t["name"] == FILE_TASK)
    body = source.splitlines(keepends=True)
    while len(body) < lines:
        body += body
    return f"# typeahead repeat {repeat}\n" + "".join(body[: lines - 1])


@contextlib.contextmanager
def _session(url: str) -> Iterator:
    """A WebSocket session, past its session.created."""
    from websockets.sync.client import connect

    with connect(url, open_timeout=30, close_timeout=5, max_size=1 << 24) as ws:
        first = json.loads(ws.recv(timeout=30))
        if first["type"] != "session.created":
            raise RuntimeError(f"the server refused the session: {first}")
        yield ws


def _answer(ws, t_enter: float) -> dict:
    """Read a response's events: TTFT from Enter, and its final response."""
    first = None
    while True:
        ev = json.loads(ws.recv(timeout=600))
        kind = ev["type"]
        if kind == "response.output_text.delta" and first is None:
            first = time.perf_counter() - t_enter
        if kind == "error":
            raise RuntimeError(f"the server answered an error: {ev['error']}")
        if kind in ("response.completed", "response.incomplete", "response.cancelled", "response.failed"):
            return {"ttft_s": first, "response": ev["response"]}


def run_http(base_url: str, path: str, code: str, cfg: TypeaheadConfig) -> dict:
    import httpx

    from pairline.wire.protocol import context_text

    messages = [{"role": "user", "content": context_text({path: code})}, {"role": "user", "content": cfg.instruction}]
    body = {"model": "bench", "messages": messages, "max_tokens": cfg.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    first, usage = None, {}
    t_enter = time.perf_counter()
    with httpx.Client(timeout=600, trust_env=False) as client, \
            client.stream("POST", base_url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            choices = chunk.get("choices") or []
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - t_enter
            usage = chunk.get("usage") or usage
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"ttft_s": first, "input_tokens": usage.get("prompt_tokens"), "after_enter_tokens":
            (usage.get("prompt_tokens") or 0) - cached}


def run_ws(ws_url: str, path: str, code: str, cfg: TypeaheadConfig) -> dict:
    from pairline.wire.protocol import context_text

    items = [{"role": "user", "content": context_text({path: code})}, {"role": "user", "content": cfg.instruction}]
    with _session(ws_url) as ws:
        t_enter = time.perf_counter()
        ws.send(json.dumps({"type": "response.create", "input": items, "max_output_tokens": cfg.max_tokens}))
        got = _answer(ws, t_enter)
    return _from_usage(got)


def run_ws_ahead(ws_url: str, path: str, code: str, cfg: TypeaheadConfig, metrics) -> dict:
    before = _ahead_counters(metrics)
    with _session(ws_url) as ws:
        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "context.update", "items": [{"path": path, "content": code}]}))
        for at, draft in typing_timeline(cfg.instruction, cfg.chars_per_s, cfg.pause_s, cfg.typo):
            wait = t0 + at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            ws.send(json.dumps({"type": "draft.update", "text": draft}))
        time.sleep(max(0.0, 1.0 / cfg.chars_per_s - (time.perf_counter() - t0 - at)))  # Enter: one keystroke later
        t_enter = time.perf_counter()
        ws.send(json.dumps({"type": "response.create", "input": cfg.instruction, "max_output_tokens": cfg.max_tokens}))
        got = _answer(ws, t_enter)
        typing_s = t_enter - t0
    after = _ahead_counters(metrics)
    out = _from_usage(got)
    computed = after["tokens"] - before["tokens"]
    used = out["prefilled_ahead_tokens"]
    out.update(typing_s=typing_s, ahead_engine_s=after["seconds"] - before["seconds"], ahead_tokens=computed,
               ahead_wasted_tokens=max(0, computed - used),
               ahead_wasted_fraction=(computed - used) / computed if computed else None)
    return out


def _from_usage(got: dict) -> dict:
    u = got["response"].get("usage") or {}
    details = u.get("input_tokens_details") or {}
    return {"ttft_s": got["ttft_s"], "input_tokens": u.get("input_tokens"),
            "after_enter_tokens": (u.get("input_tokens") or 0) - details.get("cached_tokens", 0),
            "prefilled_ahead_tokens": details.get("prefilled_ahead_tokens", 0),
            "server_timings": got["response"].get("timings")}


def _ahead_counters(metrics) -> dict:
    c = metrics.counters
    return {"tokens": c["pairline:prefill_ahead_tokens_total"], "seconds": c["pairline:prefill_ahead_seconds_total"]}


def _idle(server, timeout: float = 120.0) -> None:
    """Until the engine has nothing to do (no request, nothing left to prefill ahead)."""
    deadline = time.monotonic() + timeout
    sched = server.scheduler
    while (sched.active or sched.pending or sched.ahead) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_typeahead(engine, cfg: TypeaheadConfig) -> dict:
    """The bench on a loaded engine: a server in this process, the variants in turn, each repeat."""
    from pairline.bench.common import summary
    from pairline.server.app import ServerThread
    from pairline.server.config import ServerConfig

    log = cfg.log
    runs: dict[str, list[dict]] = {v: [] for v in cfg.variants}
    with ServerThread(engine, ServerConfig(max_sessions=4)) as srv:
        server = srv.server
        warm = TypeaheadConfig(instruction="Say hi.", max_tokens=2)  # first calls are slow: not measured
        run_http(srv.base_url, "warmup.py", "x = 1\n", warm)
        for r in range(cfg.repeats):
            for v in cfg.variants:
                code = file_text(cfg.file_lines, r * len(VARIANTS) + VARIANTS.index(v))  # cold for each
                _idle(server)
                if v == "http":
                    res = run_http(srv.base_url, "genericpath.py", code, cfg)
                elif v == "ws":
                    res = run_ws(srv.ws_url, "genericpath.py", code, cfg)
                else:
                    res = run_ws_ahead(srv.ws_url, "genericpath.py", code, cfg, server.metrics)
                runs[v].append(res)
                ahead = f", {res['prefilled_ahead_tokens']} prefilled ahead" if v == "ws-ahead" else ""
                ttft = "—" if res["ttft_s"] is None else f"{res['ttft_s']:.3f} s"
                log(f"[{r + 1}/{cfg.repeats}] {v}: TTFT {ttft}, {res['input_tokens']} prompt tokens, "
                    f"{res['after_enter_tokens']} prefilled after Enter{ahead}")
        _idle(server)
    out = {v: {"ttft_s": summary([x["ttft_s"] for x in rs]),
               "after_enter_tokens": summary([x["after_enter_tokens"] for x in rs]), "runs": rs}
           for v, rs in runs.items()}
    if "ws-ahead" in runs and runs["ws-ahead"]:
        rs = runs["ws-ahead"]
        out["ws-ahead"].update(ahead_engine_s=summary([x["ahead_engine_s"] for x in rs]),
                               ahead_wasted_fraction=summary([x["ahead_wasted_fraction"] for x in rs]),
                               typing_s=summary([x["typing_s"] for x in rs]))
    return out


# ----------------------------------------------------------------------------------- contention


def percentile(values: list[float | None], q: float) -> float | None:
    """The q-th percentile of the measured values, interpolated between ranks (numpy's default)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    k = (len(vals) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def spread(values: list[float | None]) -> dict:
    """p50, p99, max and mean of the measured values, and every run as measured."""
    vals = [v for v in values if v is not None]
    return {"p50": percentile(vals, 50), "p99": percentile(vals, 99), "max": max(vals) if vals else None,
            "mean": sum(vals) / len(vals) if vals else None, "runs": values}


def time_chunks(engine, lines: int, tag: int) -> list[float]:
    """Seconds of each whole prefill chunk of a fresh `lines`-line file's prompt (what the typist's
    context costs), on the engine's own KV while no server runs on it; the engine is left empty."""
    from pairline.wire.protocol import context_text

    chunk = engine.prefill_chunk
    code = file_text(lines, tag)
    prompt = engine.chat_prompt([{"role": "user", "content": context_text({"genericpath.py": code})}])
    prompt = prompt[: engine.runtime.n_ctx - 1]
    engine.reset()
    for _ in engine.prefill(prompt[:chunk]):  # a first call may be slow: not timed
        pass
    engine.reset()
    out: list[float] = []
    done, t = 0, time.perf_counter()
    gen = engine.prefill(prompt)
    while True:
        with engine.lock:
            end = next(gen, None)
        now = time.perf_counter()
        if end is None:
            break
        if end - done == chunk:
            out.append(now - t)
        done, t = end, now
    engine.reset()
    return out


class Typist(threading.Thread):
    """Session T: opens a file (context.update), then types instructions (draft.update) at the bench's
    rate, a fresh one each time it reaches the end, for as long as it is resumed. Once pause()
    returns it sends nothing more until resume()."""

    def __init__(self, ws_url: str, cfg: TypeaheadConfig):
        super().__init__(name="bench-typist", daemon=True)
        self.url, self.cfg = ws_url, cfg
        self.lock = threading.Lock()
        self.active = False
        self.stopping = False
        self.opened = threading.Event()
        self.drafts = self.cycles = self.opens = 0
        self.errors: list[str] = []
        self.failed: str | None = None

    def pause(self) -> None:
        with self.lock:
            self.active = False

    def resume(self) -> None:
        with self.lock:
            self.active = True

    def stop(self) -> None:
        with self.lock:
            self.active, self.stopping = False, True
        self.join(30)

    def run(self) -> None:
        try:
            with _session(self.url) as ws:
                self._open(ws)
                while json.loads(ws.recv(timeout=60))["type"] != "context.updated":
                    pass
                self.opened.set()
                while not self.stopping:
                    if not self.active:
                        time.sleep(0.02)
                        self._drain(ws)
                        continue
                    self._type_one(ws)
        except Exception as err:  # the bench reports it and fails
            self.failed = repr(err)
        finally:
            self.opened.set()

    def _open(self, ws) -> None:
        code = file_text(self.cfg.file_lines, 1000 + self.opens)  # a file no cache holds
        ws.send(json.dumps({"type": "context.update", "items": [{"path": "genericpath.py", "content": code}]}))
        self.opens += 1

    def _type_one(self, ws) -> None:
        """One instruction, keystroke by keystroke, until its end or a pause."""
        c = self.cfg.contention
        text = TYPIST_INSTRUCTIONS[self.cycles % len(TYPIST_INSTRUCTIONS)]
        self.cycles += 1
        if c is not None and c.reopen and self.cycles > 1:
            with self.lock:
                if not self.active:
                    return
                self._open(ws)
        t0 = time.perf_counter()
        for at, draft in typing_timeline(text, self.cfg.chars_per_s, self.cfg.pause_s, self.cfg.typo):
            while (wait := t0 + at - time.perf_counter()) > 0:
                if not self.active:
                    return
                time.sleep(min(wait, 0.02))
            with self.lock:
                if not self.active:
                    return
                ws.send(json.dumps({"type": "draft.update", "text": draft}))
                self.drafts += 1
            self._drain(ws)
        time.sleep(1.0 / self.cfg.chars_per_s)  # the next instruction's first key, one keystroke later

    def _drain(self, ws) -> None:
        """The server's answers (context.updated; an error such as a flood warning is kept)."""
        while True:
            try:
                ev = json.loads(ws.recv(timeout=0))
            except TimeoutError:
                return
            if ev.get("type") == "error":
                self.errors.append(str(ev.get("error")))


def ask(ws_url: str, question: str, max_tokens: int, gap_s: float, server=None) -> dict:
    """Session A's request on a session of its own: think `gap_s`, send, read the answer. TTFT and the
    decode rate on the client's clock, the server's timings, and whether someone's prefill ahead was
    pending as it was sent (`server`: the in-process server, to look)."""
    with _session(ws_url) as ws:
        time.sleep(gap_s)
        pending = bool(server.scheduler.ahead) if server is not None else None
        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "response.create", "input": question, "max_output_tokens": max_tokens,
                            "temperature": 0}))
        first = last = None
        while True:
            ev = json.loads(ws.recv(timeout=600))
            kind = ev["type"]
            if kind == "response.output_text.delta" and ev.get("delta"):
                last = time.perf_counter()
                first = first or last
            if kind == "error":
                raise RuntimeError(f"the server answered an error: {ev['error']}")
            if kind in ("response.completed", "response.incomplete", "response.cancelled", "response.failed"):
                break
    resp = ev["response"]
    usage, timings = resp.get("usage") or {}, resp.get("timings") or {}
    tokens = usage.get("output_tokens") or 0
    return {"ttft_s": first - t0 if first else None, "queue_s": timings.get("queue_s"),
            "server_ttft_s": timings.get("server_ttft_s"), "prefill_s": timings.get("prefill_s"),
            "decode_tokens_per_s": timings.get("decode_tokens_per_s"),
            "client_tokens_per_s": (tokens - 1) / (last - first) if first and last and last > first and tokens > 1
            else None,
            "input_tokens": usage.get("input_tokens"),
            "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
            "output_tokens": tokens, "status": resp.get("status"), "gap_s": gap_s, "ahead_pending": pending}


def block_plan(asks: int, block: int) -> list[tuple[str, int]]:
    """(condition, requests) per block: idle-typing, typing-idle, ... (ABBA, so a drift over the run
    weighs on both), `asks` requests each."""
    plan: list[tuple[str, int]] = []
    left, k = asks, 0
    while left > 0:
        n = min(block, left)
        pair = ("idle", "typing") if k % 2 == 0 else ("typing", "idle")
        plan += [(pair[0], n), (pair[1], n)]
        left, k = left - n, k + 1
    return plan


def run_contention(engine, cfg: TypeaheadConfig) -> dict:
    """Sessions T (typing) and A (asking) on one server; A's requests with T typing and with T idle,
    and the time of one prefill chunk, before and after (the chunks of a fresh file like T's).
    The typist's ahead tokens and engine time count the steps that ended: a chunk that a request
    interrupts is thrown away, and counted nowhere."""
    from pairline.bench.common import median
    from pairline.server.app import ServerThread
    from pairline.server.config import ServerConfig

    c, log = cfg.contention, cfg.log
    chunks = time_chunks(engine, cfg.file_lines, 900)
    rng = {"idle": random.Random(c.seed), "typing": random.Random(c.seed)}  # the same think times in both
    runs: dict[str, list[dict]] = {"idle": [], "typing": []}
    ahead = {"tokens": 0.0, "seconds": 0.0, "wall_s": 0.0}
    with ServerThread(engine, ServerConfig(max_sessions=4)) as srv:
        server = srv.server
        typist = Typist(srv.ws_url, cfg)
        typist.start()
        typist.opened.wait(60)
        if typist.failed:
            raise RuntimeError(f"the typist's session failed: {typist.failed}")
        _idle(server)
        ask(srv.ws_url, c.question, c.ask_tokens, 0.0)  # first calls are slow: not measured
        try:
            for cond, n in block_plan(c.asks, c.block):
                if cond == "typing":
                    typist.resume()
                    before, t_block = _ahead_counters(server.metrics), time.perf_counter()
                else:
                    typist.pause()
                    _idle(server)
                for _ in range(n):
                    i = sum(len(r) for r in runs.values())
                    q = f"Q{i:03d}. {c.question}"  # its own words: a real prefill, not one token from a cache
                    res = ask(srv.ws_url, q, c.ask_tokens, rng[cond].uniform(*c.gap_s), server)
                    res["condition"] = cond
                    runs[cond].append(res)
                    ttft = "—" if res["ttft_s"] is None else f"{res['ttft_s']:.3f} s"
                    log(f"[{i + 1}/{2 * c.asks}] typist {cond}: TTFT {ttft}, queue {res['queue_s']:.3f} s, "
                        f"{res['decode_tokens_per_s']:.1f} tok/s{', ahead pending' if res['ahead_pending'] else ''}")
                if cond == "typing":
                    after = _ahead_counters(server.metrics)
                    ahead["tokens"] += after["tokens"] - before["tokens"]
                    ahead["seconds"] += after["seconds"] - before["seconds"]
                    ahead["wall_s"] += time.perf_counter() - t_block
                if typist.failed:
                    raise RuntimeError(f"the typist's session failed: {typist.failed}")
        finally:
            typist.stop()
        _idle(server)
    after_chunks = time_chunks(engine, cfg.file_lines, 901)
    chunk_s = median(chunks + after_chunks)
    out: dict = {
        "scene": {"asks": c.asks, "block": c.block, "ask_tokens": c.ask_tokens, "question": c.question,
                  "gap_s": list(c.gap_s), "reopen": c.reopen, "seed": c.seed, "chars_per_s": cfg.chars_per_s,
                  "file_lines": cfg.file_lines, "typist_instructions": list(TYPIST_INSTRUCTIONS)},
        "prefill_chunk": {"tokens": engine.prefill_chunk, "median_s": chunk_s, "median_before_s": median(chunks),
                          "median_after_s": median(after_chunks), "runs": chunks + after_chunks,
                          "interruptible": engine.runtime.interruptible},
        "typist": {"drafts": typist.drafts, "instructions": typist.cycles, "files_opened": typist.opens,
                   "errors": typist.errors, "ahead_tokens": ahead["tokens"], "ahead_engine_s": ahead["seconds"],
                   "typing_wall_s": ahead["wall_s"],
                   "ahead_busy_fraction": ahead["seconds"] / ahead["wall_s"] if ahead["wall_s"] else None},
    }
    for cond, rs in runs.items():
        out[cond] = {k: spread([r[k] for r in rs]) for k in ("ttft_s", "queue_s", "server_ttft_s")}
        out[cond].update({k: median([r[k] for r in rs]) for k in ("decode_tokens_per_s", "client_tokens_per_s")})
        out[cond]["ahead_pending"] = sum(1 for r in rs if r["ahead_pending"])  # sent while prefill ahead waited
        out[cond]["runs"] = rs
    idle, typing = out["idle"], out["typing"]

    def diff(a, b):
        return None if a is None or b is None else a - b

    p99_delay = diff(typing["ttft_s"]["p99"], idle["ttft_s"]["p99"])
    out["delay"] = {
        "ttft_p50_s": diff(typing["ttft_s"]["p50"], idle["ttft_s"]["p50"]),
        "ttft_p99_s": p99_delay,
        "server_ttft_p99_s": diff(typing["server_ttft_s"]["p99"], idle["server_ttft_s"]["p99"]),
        "queue_max_s": typing["queue_s"]["max"],
        "ttft_p99_in_chunks": p99_delay / chunk_s if p99_delay is not None and chunk_s else None,
        "ttft_p99_within_one_chunk": p99_delay <= chunk_s if p99_delay is not None and chunk_s else None,
        "decode_ratio": typing["decode_tokens_per_s"] / idle["decode_tokens_per_s"]
        if typing["decode_tokens_per_s"] and idle["decode_tokens_per_s"] else None,
    }
    return out


def print_contention(result: dict) -> None:
    from pairline.bench.common import console, fmt, table

    c = result["contention"]
    ch = c["prefill_chunk"]
    t = table(f"typeahead contention: {result['model']} ({result['runtime']}), the asker's requests with the "
              f"typist idle and typing", ["typist", "requests", "TTFT p50 s", "p99", "max", "queue p99 s", "max",
                                          "server TTFT p99", "decode tok/s", "client tok/s"], left={"typist"})
    for cond in ("idle", "typing"):
        r = c[cond]
        t.add_row(cond, str(len(r["runs"])), fmt(r["ttft_s"]["p50"], "{:.3f}"), fmt(r["ttft_s"]["p99"], "{:.3f}"),
                  fmt(r["ttft_s"]["max"], "{:.3f}"), fmt(r["queue_s"]["p99"], "{:.3f}"),
                  fmt(r["queue_s"]["max"], "{:.3f}"), fmt(r["server_ttft_s"]["p99"], "{:.3f}"),
                  fmt(r["decode_tokens_per_s"], "{:.1f}"), fmt(r["client_tokens_per_s"], "{:.1f}"))
    d = c["delay"]
    t.add_row("typing − idle", "", fmt(d["ttft_p50_s"], "{:+.3f}"), fmt(d["ttft_p99_s"], "{:+.3f}"), "", "", "",
              fmt(d["server_ttft_p99_s"], "{:+.3f}"), fmt(d["decode_ratio"], "×{:.3f}"), "")
    out = console(140)
    out.print(t)
    ty = c["typist"]
    out.print(f"one prefill chunk ({ch['tokens']} tokens): {fmt(ch['median_s'], '{:.3f}')} s median "
              f"({'interruptible' if ch['interruptible'] else 'not interruptible'}); TTFT p99 delay "
              f"{fmt(d['ttft_p99_in_chunks'], '{:.2f}')} chunks; typist: {ty['drafts']} drafts, "
              f"{ty['instructions']} instructions, {ty['files_opened']} files, engine ahead "
              f"{fmt(ty['ahead_busy_fraction'], '{:.0%}')} of its typing time; {c['typing']['ahead_pending']} of "
              f"{len(c['typing']['runs'])} requests sent while prefill ahead was pending", highlight=False)


def add_parser(sub) -> None:
    """`pairline bench typeahead` (registered by pairline/bench/cli.py)."""
    from pairline.engine.load import add_runtime_option

    p = sub.add_parser(
        "typeahead",
        help="TTFT after Enter when the file and the typing were prefilled ahead (draft.update, context.update)",
        description="A 150-line file opened, an instruction typed at 6 chars/s (a pause, a backspace burst), "
        "Enter: TTFT from Enter for OpenAI HTTP with the prefix cache, a WebSocket session without drafts, and one "
        "with drafts and context; also the engine time spent ahead and how much was wasted. With --contention, "
        "a second session's requests while another types, against the same with it idle. Writes JSON.",
    )
    p.add_argument("--model", "-m", default="qwen2.5-coder-0.5b", help="registry name or path")
    add_runtime_option(p)
    p.add_argument("--repeats", type=int, default=3, help="rounds of the three variants (default 3)")
    p.add_argument("--ctx", type=int, default=4096, help="context size (default 4096)")
    p.add_argument("--chars-per-s", type=float, default=6.0, help="typing speed (default 6)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} (default: all; "
                   "none with --contention unless given)")
    p.add_argument("--contention", action="store_true", help="two sessions, one typing (drafts prefilled ahead) and "
                   "one asking: the asker's TTFT p50/p99 and decode tok/s with the typist typing vs idle, beside one "
                   "prefill chunk's time (JSON key \"contention\")")
    p.add_argument("--asks", type=int, default=20, help="contention: the asker's requests per condition (default 20)")
    p.add_argument("--ask-tokens", type=int, default=32, help="contention: tokens per answer (default 32)")
    p.add_argument("--ask-block", type=int, default=5, help="contention: requests per block, typing and idle "
                   "blocks alternating (default 5)")
    p.add_argument("--reopen", action="store_true", help="contention: the typist also opens a fresh file with each "
                   "instruction (a whole file prefilled ahead each time)")
    p.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    p.set_defaults(func=cmd_typeahead)


def cmd_typeahead(args) -> int:
    from pairline.bench.common import csv, default_out_path, invocation, stderr_log, write_json
    from pairline.engine.load import load_engine
    from pairline.errors import PairlineError

    variants = () if args.contention and args.variants is None else csv(args.variants) or VARIANTS
    if bad := [v for v in variants if v not in VARIANTS]:
        raise PairlineError(f"unknown variant {bad[0]!r}; use {', '.join(VARIANTS)}")
    if not 0 < args.chars_per_s < 100:
        raise PairlineError("--chars-per-s must be above 0 and below 100 (the server's draft rate limit)")
    contention = None
    if args.contention:
        if args.asks < 1 or args.ask_block < 1 or args.ask_tokens < 1:
            raise PairlineError("--asks, --ask-block and --ask-tokens must be at least 1")
        contention = ContentionConfig(asks=args.asks, block=args.ask_block, ask_tokens=args.ask_tokens,
                                      reopen=args.reopen)
    err, log = stderr_log()
    cfg = TypeaheadConfig(model=args.model, runtime=args.runtime, n_ctx=args.ctx, repeats=args.repeats,
                          chars_per_s=args.chars_per_s, max_tokens=args.max_tokens, variants=variants,
                          contention=contention, command=invocation(), log=log)
    engine = load_engine(args.model, runtime=args.runtime, n_ctx=args.ctx)
    result = bench_result(engine, cfg)
    path = default_out_path(args.out, args.model, kind="typeahead")
    write_json(result, path)
    print_summary(result)
    err.print(f"wrote {path}")
    return 0


def bench_result(engine, cfg: TypeaheadConfig) -> dict:
    from pairline.bench.common import git_state, loadavg, machine_info

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    variants = run_typeahead(engine, cfg) if cfg.variants else {}
    out = {"bench": "typeahead", "command": cfg.command, "started": started, "model": cfg.model,
           "runtime": engine.runtime.name, "prefill_chunk": engine.prefill_chunk,
           "scene": {"file_lines": cfg.file_lines, "instruction": cfg.instruction, "chars_per_s": cfg.chars_per_s,
                     "pause_s": cfg.pause_s, "typo": cfg.typo, "max_tokens": cfg.max_tokens,
                     "repeats": cfg.repeats},
           "machine": machine_info(), "git": git_state(), "loadavg": loadavg(), "variants": variants}
    if cfg.contention is not None:
        out["contention"] = run_contention(engine, cfg)
        out["loadavg"] = loadavg()
    return out


def print_summary(result: dict) -> None:
    if result["variants"]:
        _print_variants(result)
    if result.get("contention"):
        print_contention(result)


def _print_variants(result: dict) -> None:
    from pairline.bench.common import console, fmt, table

    t = table(f"typeahead: {result['model']} ({result['runtime']}), TTFT from Enter",
              ["variant", "TTFT median s", "min", "max", "prefilled after Enter", "engine s ahead", "wasted ahead"],
              left={"variant"})
    for v, r in result["variants"].items():
        ttft = r["ttft_s"]
        t.add_row(v, fmt(ttft["median"], "{:.3f}"), fmt(ttft["min"], "{:.3f}"), fmt(ttft["max"], "{:.3f}"),
                  fmt(r["after_enter_tokens"]["median"], "{:.0f}"),
                  fmt((r.get("ahead_engine_s") or {}).get("median"), "{:.2f}"),
                  fmt((r.get("ahead_wasted_fraction") or {}).get("median"), "{:.0%}"))
    console(120).print(t)
