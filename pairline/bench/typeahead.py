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
prefilled ahead the request did not use (wasted on the typo, and on the last word)."""

from __future__ import annotations

import contextlib
import json
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
    command: str = ""
    log: object = field(default=print)


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


def add_parser(sub) -> None:
    """`pairline bench typeahead` (registered by pairline/bench/cli.py)."""
    from pairline.engine.load import add_runtime_option

    p = sub.add_parser(
        "typeahead",
        help="TTFT after Enter when the file and the typing were prefilled ahead (draft.update, context.update)",
        description="A 150-line file opened, an instruction typed at 6 chars/s (a pause, a backspace burst), "
        "Enter: TTFT from Enter for OpenAI HTTP with the prefix cache, a WebSocket session without drafts, and one "
        "with drafts and context; also the engine time spent ahead and how much was wasted. Writes JSON.",
    )
    p.add_argument("--model", "-m", default="qwen2.5-coder-0.5b", help="registry name or path")
    add_runtime_option(p)
    p.add_argument("--repeats", type=int, default=3, help="rounds of the three variants (default 3)")
    p.add_argument("--ctx", type=int, default=4096, help="context size (default 4096)")
    p.add_argument("--chars-per-s", type=float, default=6.0, help="typing speed (default 6)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (default 16)")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    p.set_defaults(func=cmd_typeahead)


def cmd_typeahead(args) -> int:
    from pairline.bench.common import csv, default_out_path, invocation, stderr_log, write_json
    from pairline.engine.load import load_engine
    from pairline.errors import PairlineError

    variants = csv(args.variants) or VARIANTS
    if bad := [v for v in variants if v not in VARIANTS]:
        raise PairlineError(f"unknown variant {bad[0]!r}; use {', '.join(VARIANTS)}")
    err, log = stderr_log()
    cfg = TypeaheadConfig(model=args.model, runtime=args.runtime, n_ctx=args.ctx, repeats=args.repeats,
                          chars_per_s=args.chars_per_s, max_tokens=args.max_tokens, variants=variants,
                          command=invocation(), log=log)
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
    variants = run_typeahead(engine, cfg)
    return {"bench": "typeahead", "command": cfg.command, "started": started, "model": cfg.model,
            "runtime": engine.runtime.name, "prefill_chunk": engine.prefill_chunk,
            "scene": {"file_lines": cfg.file_lines, "instruction": cfg.instruction, "chars_per_s": cfg.chars_per_s,
                      "pause_s": cfg.pause_s, "typo": cfg.typo, "max_tokens": cfg.max_tokens,
                      "repeats": cfg.repeats},
            "machine": machine_info(), "git": git_state(), "loadavg": loadavg(), "variants": variants}


def print_summary(result: dict) -> None:
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
