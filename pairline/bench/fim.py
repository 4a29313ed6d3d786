"""`pairline bench fim`: inline suggestions while typing (issue 17), pairline against llama.cpp's server.

The scene: a 300-line module of the standard library is open; at a few places in it, one line of its
real code is missing and the user types it, one keystroke every 120 ms. Every keystroke asks for a
suggestion at the new cursor and makes the one before it stale. Three ways to serve it, one after
the other on the same GGUF:

- `pairline`: the suggester `pairline lsp` runs in-process (its own KV cache; an SPM prompt, so a
  keystroke appends to the prompt);
- `pairline-serve`: the same requests over HTTP to `pairline serve` (`/v1/completions` with `suffix`);
- `llamacpp-server`: llama.cpp's own OpenAI server (`python -m llama_cpp.server`), same requests, the
  peer an editor plugin such as llama.vscode would talk to.

All three use one client-side rule set (engine/fim.py) and one clock. Each place is opened first
(one untimed request, as an editor does when the cursor lands), then typed. Reported per keystroke:
the time from the keystroke to the first suggestion character shown (censored at the next keystroke
where nothing came before it), the time to the whole suggestion, and stale text: characters shown
for a position after a newer keystroke (must be 0)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pairline.bench.common import free_port, nearest_rank, start_process

ENGINES = ("pairline", "pairline-serve", "llamacpp-server")
MODULE = "textwrap"  # a real module of the standard library


@dataclass
class FimBenchConfig:
    model: str = "qwen2.5-coder-0.5b"
    engines: tuple[str, ...] = ENGINES
    runtime: str | None = None
    n_ctx: int = 4096
    file_lines: int = 300
    places: int = 3  # lines typed, each at its own place in the file
    keystroke_s: float = 0.12
    max_tokens: int = 48
    order: str = "spm"
    log: object = field(default=print)


@dataclass
class Place:
    line: int  # 0-based line typed
    prefix: str  # the file before the line, with the line's indentation
    typed: str  # the rest of the line, typed one character at a time
    suffix: str  # the line's newline and the rest of the file


def scene(cfg: FimBenchConfig) -> tuple[str, list[Place]]:
    """The file and the places typed in it: code lines spread over its second half (each with at
    least 25 characters, so there is typing to measure)."""
    import importlib

    path = Path(importlib.import_module(MODULE).__file__)
    lines = path.read_text().splitlines(keepends=True)[: cfg.file_lines]
    text = "".join(lines)
    picks: list[Place] = []
    start = len(lines) // 2
    step = max(1, (len(lines) - start) // (cfg.places + 1))
    for k in range(cfg.places):
        i = start + k * step
        while i < len(lines) - 1 and (len(lines[i].strip()) < 25 or lines[i].lstrip().startswith(("#", '"', "'"))):
            i += 1
        body = lines[i].rstrip("\n")
        indent = body[: len(body) - len(body.lstrip())]
        prefix = "".join(lines[:i]) + indent
        picks.append(Place(i, prefix, body.strip(), "\n" + "".join(lines[i + 1:])))
    return text, picks


# --------------------------------------------------------------------------- engines


def open_engine(name: str, cfg: FimBenchConfig, gguf: Path):
    """(suggester, server process or None) for one engine."""
    from pairline.assistant.suggest import HttpSuggester, LocalSuggester

    if name == "pairline":
        from pairline.engine.load import load_engine

        return LocalSuggester(load_engine(cfg.model, runtime=cfg.runtime, n_ctx=cfg.n_ctx), order=cfg.order), None
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if name == "pairline-serve":
        cmd = [sys.executable, "-m", "pairline.cli", "serve", "--model", cfg.model, "--port", str(port),
               "--ctx", str(cfg.n_ctx), "--fim-order", cfg.order]
        if cfg.runtime:
            cmd += ["--runtime", cfg.runtime]
    elif name == "llamacpp-server":
        from pairline.bench.peers import llamacpp_server_command, llamacpp_server_missing

        missing = llamacpp_server_missing()
        if missing:
            raise RuntimeError(missing)
        cmd = llamacpp_server_command(gguf, port, cfg.n_ctx)
    else:
        raise ValueError(f"unknown engine {name!r}; one of {', '.join(ENGINES)}")
    # /v1/models: llama.cpp's server has no /health
    proc = start_process(cmd, base + "/v1/models", name, Path("bench-results") / f"fim-{name}.log")
    try:
        return HttpSuggester(base), proc
    except Exception:
        proc.kill()
        raise


# --------------------------------------------------------------------------- typing


def type_place(suggester, place: Place, cfg: FimBenchConfig) -> list[dict]:
    """Type `place.typed` at `cfg.keystroke_s` a character; a suggestion is asked at each keystroke
    and read on its own thread. Returns one record per keystroke."""
    suggester.suggest(place.prefix, place.suffix, max_tokens=cfg.max_tokens).run()  # the cursor lands
    records: list[dict] = []
    readers: list[threading.Thread] = []
    t0 = time.perf_counter()
    for k in range(len(place.typed) + 1):
        time.sleep(max(0.0, t0 + k * cfg.keystroke_s - time.perf_counter()))
        pressed = time.perf_counter()
        sug = suggester.suggest(place.prefix + place.typed[:k], place.suffix, max_tokens=cfg.max_tokens)
        rec = {"keystroke": k, "pressed": pressed, "first_s": None, "first_token_s": None, "done_s": None,
               "stale_chars": 0, "text": "", "empty": False}
        records.append(rec)

        def read(sug=sug, rec=rec, k=k) -> None:
            with contextlib.suppress(Exception):
                for delta in sug:
                    now = time.perf_counter()
                    newer = k + 1 < len(records) and records[k + 1]["pressed"] <= now
                    if newer:
                        rec["stale_chars"] += len(delta)  # shown for a position that is gone
                    elif rec["first_s"] is None:
                        rec["first_s"] = now - rec["pressed"]
                rec["done_s"] = None if sug.finish_reason == "cancelled" else time.perf_counter() - rec["pressed"]
                rec["text"] = sug.text
                rec["first_token_s"] = sug.first_token_s  # the model's, even where the rules held the text back
                rec["empty"] = rec["done_s"] is not None and not sug.text  # finished with nothing to show

        th = threading.Thread(target=read, daemon=True)
        th.start()
        readers.append(th)
    for th in readers:
        th.join(120)
    for rec in records:
        rec.pop("pressed")
    return records


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile where missing values (censored: nothing came before the next keystroke) rank
    above every measured one; None when the quantile falls among them."""
    v = nearest_rank(sorted(v if v is not None else float("inf") for v in values), q)
    return None if v == float("inf") else v


def summarize(records: list[dict]) -> dict:
    """Percentiles over the keystrokes that had something to show: a suggestion that finished empty
    (the model had nothing to add there) has no first character to time."""
    firsts = [r["first_s"] for r in records if not r["empty"]]
    dones = [r["done_s"] for r in records]
    return {
        "keystrokes": len(records),
        "empty_suggestions": sum(r["empty"] for r in records),
        "with_suggestion_before_next_keystroke": sum(v is not None for v in firsts),
        "first_p50_s": percentile(firsts, 0.5),
        "first_p95_s": percentile(firsts, 0.95),
        "done_p50_s": percentile(dones, 0.5),
        "first_token_p50_s": percentile([r["first_token_s"] for r in records], 0.5),
        "stale_chars": sum(r["stale_chars"] for r in records),
    }


def _runtime_of(suggester) -> str | None:
    """Which runtime served the suggestions: the in-process engine's, or `pairline serve`'s (its
    /health says); None for a peer that does not say."""
    from pairline.assistant.suggest import HttpSuggester, LocalSuggester

    if isinstance(suggester, LocalSuggester):
        return suggester.engine.runtime.name
    if isinstance(suggester, HttpSuggester):
        with contextlib.suppress(Exception):
            return suggester.http.get("/health", timeout=5).json().get("runtime")
    return None


def run_fim_latency(cfg: FimBenchConfig) -> dict:
    from pairline.bench.common import machine_info
    from pairline.models.fetch import resolve

    gguf = resolve(cfg.model)
    _, places = scene(cfg)
    result: dict = {"config": {k: v for k, v in vars(cfg).items() if k != "log"}, "machine": machine_info(),
                    "places": [{"line": p.line + 1, "typed": p.typed} for p in places], "engines": {}}
    for name in cfg.engines:
        cfg.log(f"{name}: loading")
        try:
            suggester, proc = open_engine(name, cfg, gguf)
        except Exception as err:  # a peer that cannot run here is reported, not fatal
            cfg.log(f"{name}: skipped ({err})")
            result["engines"][name] = {"skipped": str(err)}
            continue
        try:
            records = []
            for i, place in enumerate(places):
                cfg.log(f"{name}: typing line {place.line + 1} ({len(place.typed)} characters)")
                records += [r | {"place": i} for r in type_place(suggester, place, cfg)]
            result["engines"][name] = {"summary": summarize(records), "records": records,
                                       "runtime": _runtime_of(suggester)}
        finally:
            suggester.close()
            if proc is not None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(20)
    base = result["engines"].get("llamacpp-server", {}).get("summary", {}).get("first_p50_s")
    for data in result["engines"].values():
        if "summary" in data:
            mine = data["summary"]["first_p50_s"]
            data["summary"]["first_p50_vs_llamacpp_server"] = mine / base if mine and base else None
    return result


# --------------------------------------------------------------------------- command


def print_latency(result: dict) -> None:
    from pairline.bench.common import console, fmt, table

    t = table("inline suggestions while typing (keystroke to first suggestion character)",
              ["engine", "keystrokes", "shown in time", "first p50 ms", "first p95 ms", "whole p50 ms",
               "stale chars", "p50 vs llama.cpp server"], left=["engine"])
    for name, data in result["engines"].items():
        if "skipped" in data:
            t.add_row(name, "skipped: " + data["skipped"][:60], *[""] * 6)
            continue
        s = data["summary"]

        def ms(v):
            return fmt(v * 1e3 if v is not None else None, "{:.0f}", missing="> gap")

        t.add_row(name, str(s["keystrokes"]), str(s["with_suggestion_before_next_keystroke"]), ms(s["first_p50_s"]),
                  ms(s["first_p95_s"]), ms(s["done_p50_s"]), str(s["stale_chars"]),
                  fmt(s["first_p50_vs_llamacpp_server"], "{:.2f}x"))
    console().print(t)


def add_parser(sub) -> None:
    """`pairline bench fim` (registered by pairline/bench/cli.py)."""
    from pairline.bench.fim_quality import add_quality_args
    from pairline.engine.load import add_runtime_option

    p = sub.add_parser(
        "fim",
        help="inline suggestions: latency while typing vs llama.cpp's server, and infill accuracy on real code",
        description="Latency: lines of a 300-line stdlib module typed at one keystroke every 120 ms, a suggestion "
        "asked at each, served by pairline in-process, by pairline serve, and by llama.cpp's own server on the same "
        "GGUF. With --quality (instead): exact match, parse rate and edit similarity of masked lines and blocks of "
        "real code. Writes JSON.",
    )
    p.add_argument("--model", "-m", default="qwen2.5-coder-0.5b", help="registry name or path")
    add_runtime_option(p)
    p.add_argument("--engines", default=None, help=f"comma-separated, from {', '.join(ENGINES)} (default: all)")
    p.add_argument("--places", type=int, default=3, help="lines typed (default 3)")
    p.add_argument("--keystroke-ms", type=float, default=120.0, help="time between keystrokes (default 120)")
    p.add_argument("--order", default="spm", choices=["spm", "psm"], help="pairline's FIM prompt order (default spm)")
    p.add_argument("--ctx", type=int, default=4096, help="context size (default 4096)")
    p.add_argument("--quality", action="store_true", help="measure infill accuracy instead of latency")
    add_quality_args(p)
    p.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    p.set_defaults(func=cmd_fim)


def cmd_fim(args) -> int:
    from pairline.bench.common import csv, default_out_path, invocation, stderr_log, write_json
    from pairline.errors import PairlineError

    _, log = stderr_log("fim")
    if args.quality:
        from pairline.bench.fim_quality import print_quality, run_quality

        result = run_quality(args.model, orders=csv(args.orders) or ("spm", "psm"), lines=args.lines,
                             blocks=args.blocks, runtime=args.runtime, seed=args.seed, log=log,
                             prefix_chars=args.prefix_chars, suffix_chars=args.suffix_chars, n_ctx=args.ctx)
        print_quality(result)
        kind = "fim-quality"
    else:
        engines = csv(args.engines) or ENGINES
        if bad := [e for e in engines if e not in ENGINES]:
            raise PairlineError(f"unknown engine {bad[0]!r}; use {', '.join(ENGINES)}")
        if args.places < 1 or args.keystroke_ms <= 0:
            raise PairlineError("--places must be at least 1 and --keystroke-ms positive")
        cfg = FimBenchConfig(model=args.model, engines=engines, runtime=args.runtime, n_ctx=args.ctx,
                             places=args.places, keystroke_s=args.keystroke_ms / 1e3, order=args.order, log=log)
        result = run_fim_latency(cfg)
        print_latency(result)
        kind = "fim"
    result["command"] = invocation()
    path = write_json(result, default_out_path(args.out, args.model, kind=kind))
    log(f"wrote {path}")
    return 0
