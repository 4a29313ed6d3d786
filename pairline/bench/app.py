"""`pairline bench app`: what the web app adds to latency, measured in a real browser (issue 16's goals).

One `pairline serve --workspace` process; Debian's chromium driven by Playwright. Side by side, in
one run, on the same server and the same turn (the same file and instruction, so the same prompt):

- **TTFT.** `pairline chat`'s number (its chat session over the session protocol: request sent to
  the first token received) against the browser's (Enter to the first delta drawn on the page).
  Each run is a fresh session on both sides, in alternating order, after one warm-up of each; each
  answer is stopped once its first text is shown.
- **Stop to quiet.** A long answer is stopped by a click once it streams; quiet is the time from
  the click to the last delta the page drew (0 when none came after it), and `stopped` is the time
  from the click to the server's answer arriving.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pairline.bench.common import (
    console,
    default_out_path,
    fmt,
    free_port,
    invocation,
    machine_info,
    median,
    nearest_rank,
    start_process,
    stderr_log,
    summary,
    table,
    write_json,
)
from pairline.engine.runtime import threads_beside_a_browser

FILE = "inventory.py"
SOURCE = "".join(
    f'''def {name}(items):
    """{doc}"""
    total = 0
    for item in items:
        total += item["{field}"]
    return total


''' for name, doc, field in [
        ("total_weight", "The summed weight of the items.", "weight"),
        ("total_price", "What the items cost together.", "price"),
        ("total_count", "How many units there are.", "count"),
        ("total_volume", "The space the items take.", "volume"),
        ("total_tax", "The tax due on the items.", "tax"),
        ("total_discount", "The discounts granted.", "discount"),
    ]
)
RENAME = "Rename the function total_price to basket_price."
LONG = "Rewrite the whole file: give every function a long docstring with two usage examples each."
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pairline.models.registry import DEFAULT_REALTIME

    p = sub.add_parser(
        "app",
        help="the web app in a real browser: TTFT against pairline chat's on the same turn, stop to quiet",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", "-m", default=DEFAULT_REALTIME, help=f"default {DEFAULT_REALTIME}")
    p.add_argument("--repeats", type=int, default=5, help="TTFT pairs measured (after one warm-up each; default 5)")
    p.add_argument("--stops", type=int, default=5, help="long answers stopped (default 5)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the browser (scripts/install-browser.sh)")
    p.add_argument("--threads", type=int, default=None,
                   help="PAIRLINE_THREADS for the server (default: what `pairline app` takes, all cores but one, "
                   "since the browser shares the machine)")
    p.add_argument("--out", default=None, help="JSON file or folder (default bench-results/)")
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    from pairline.errors import PairlineError

    if args.repeats < 1 or args.stops < 0:
        raise PairlineError("--repeats must be at least 1 and --stops at least 0")
    if not Path(args.chromium).exists():
        raise PairlineError(f"{args.chromium} not found: run scripts/install-browser.sh, or pass --chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise PairlineError("pairline bench app needs Playwright: pip install playwright") from None
    _err, log = stderr_log("bench app")
    with tempfile.TemporaryDirectory(prefix="pairline-bench-app-") as tmp:
        root = Path(tmp) / "ws"
        root.mkdir()
        (root / FILE).write_text(SOURCE)
        port = free_port()
        server_log = Path(tmp) / "serve.log"
        cmd = [sys.executable, "-m", "pairline.cli", "serve", "--workspace", str(root), "--port", str(port),
               "--model", args.model]
        log(f"starting {' '.join(cmd[2:])}")
        args.threads = args.threads or threads_beside_a_browser()  # as `pairline app` starts its server
        env = dict(os.environ, PAIRLINE_THREADS=str(args.threads))
        proc = start_process(cmd, f"http://127.0.0.1:{port}/health", "pairline serve", server_log, env=env)
        try:
            url = _printed_url(server_log)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
                try:
                    result = _measure(browser, url, port, root, args, log)
                finally:
                    browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
        result["runtime"] = _runtime(port) or _runtime_from_log(server_log)
        kept = Path("bench-results") / "app-serve.log"  # the server's per-request lines (prompt, cached, TTFT)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(server_log, kept)
    path = write_json(result, default_out_path(args.out, args.model, kind="app"))
    _print(result)
    console().print(f"saved {path}")
    return 0


def _measure(browser, url: str, port: int, root: Path, args: argparse.Namespace, log) -> dict:
    pairs = []
    for i in range(args.repeats + 1):
        order = ("chat", "browser") if i % 2 == 0 else ("browser", "chat")
        got = {}
        for side in order:
            got[side] = _chat_turn(port, root) if side == "chat" else _browser_turn(browser, url)
            (root / FILE).write_text(SOURCE)  # proposals write nothing; the chat's turn applied its edit
        if i == 0:
            log(f"warm-up: chat {fmt(got['chat']['ttft_ms'], '{:.0f}')} ms, browser "
                f"{fmt(got['browser']['ttft_ms'], '{:.0f}')} ms")
            continue
        pairs.append({"order": list(order), **{f"{k}_{side}": v for side, d in got.items() for k, v in d.items()}})
        log(f"pair {i}: chat {fmt(got['chat']['ttft_ms'], '{:.0f}')} ms, browser "
            f"{fmt(got['browser']['ttft_ms'], '{:.0f}')} ms")
    stops = []
    for j in range(args.stops):
        stops.append(_browser_stop(browser, url))
        last = stops[-1]
        log(f"stop {j + 1}: quiet {last['quiet_ms']:.1f} ms, stopped after {fmt(last['stopped_ms'], '{:.0f}')} ms")
    gaps = [p["ttft_ms_browser"] - p["ttft_ms_chat"] for p in pairs
            if p["ttft_ms_browser"] is not None and p["ttft_ms_chat"] is not None]
    quiet = sorted(s["quiet_ms"] for s in stops)
    return {
        "bench": "app",
        "command": invocation(),
        "model": args.model,
        "server_threads": args.threads,
        "machine": machine_info(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ttft": {
            "chat_ms": summary([p["ttft_ms_chat"] for p in pairs]),
            "browser_ms": summary([p["ttft_ms_browser"] for p in pairs]),
            "app_client_ms": summary([p["server_ttft_ms_browser"] for p in pairs]),
            "browser_minus_chat_ms": summary(gaps),
            "goal_ms": 30,
            "met": (median(gaps) or 1e9) <= 30,
        },
        "stop": {
            "quiet_ms": {"p50": median(quiet), "max": quiet[-1] if quiet else None, "p90": nearest_rank(quiet, 0.9),
                         "runs": [s["quiet_ms"] for s in stops]},
            "stopped_ms": summary([s["stopped_ms"] for s in stops]),
            "server_ms": summary([s["server_ms"] for s in stops]),
            "goal_ms": 100,
            "met": bool(quiet) and quiet[-1] <= 100,
        },
        "pairs": pairs,
        "stops": stops,
    }


def _chat_turn(port: int, root: Path) -> dict:
    """What `pairline chat --server` does for one turn, in a fresh session: its TTFT readout."""
    from pairline.assistant.chat import ChatSession
    from pairline.assistant.client import RemoteClient
    from pairline.assistant.workspace import Workspace

    class Measured(ChatSession):
        def report(self, stats) -> None:
            self.last = stats

    def first_text(text: str) -> None:
        if text and chat.turn is not None:
            chat.turn.cancel.cancel()  # its TTFT is taken: the rest of the answer is not measured

    client = RemoteClient(f"ws://127.0.0.1:{port}/v1/responses")
    try:
        chat = Measured(client=client, ws=Workspace(root, git=False, commit=False), write=first_text)
        chat.last = None
        chat.files.append(root / FILE)
        chat.start_turn(RENAME)
        chat.wait()
        stats = chat.last
    finally:
        client.close()
    if stats is None:
        return {"ttft_ms": None, "tokens": None, "server_ttft_ms": None}
    return {"ttft_ms": None if stats.ttft_s is None else stats.ttft_s * 1000, "tokens": stats.tokens,
            "server_ttft_ms": None}


def _open_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector(f'#tree [data-path="{FILE}"]', timeout=30_000)
    page.click(f'#tree [data-path="{FILE}"]')
    page.wait_for_function("() => document.querySelector('#editor').textContent.includes('def ')")
    return context, page


def _browser_turn(browser, url: str) -> dict:
    context, page = _open_page(browser, url)
    try:
        # the instruction appears and Enter comes in one go: no draft is prefilled ahead (the chat
        # side has none), so both sides send the same cold turn
        page.evaluate("""text => {
            const box = document.querySelector('#instruction');
            box.value = text;
            box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true, cancelable: true}));
        }""", RENAME)
        _await_answer(page, 0)
        page.click("#stop")  # its TTFT is taken: the rest of the answer is not measured
        page.wait_for_function("() => window.pairlineStats.turns.length >= 1", timeout=300_000)
        turn = page.evaluate("() => window.pairlineStats.turns[0]")
    finally:
        context.close()
    return {"ttft_ms": turn.get("ttft_ms"), "tokens": None, "server_ttft_ms": turn.get("server_ttft_ms")}


def _await_answer(page, chars: int, timeout_ms: int = 300_000) -> None:
    """Until the answer pane holds more than `chars` characters. A MutationObserver wakes on the
    page's own changes: Playwright's wait_for_function would run its check every animation frame,
    load on the one core the engine leaves that the chat side's measurement does not have."""
    page.evaluate("""([chars, timeout]) => new Promise((resolve, reject) => {
        const pane = document.querySelector('#answer');
        if (pane.textContent.length > chars) return resolve();
        const timer = setTimeout(() => { seen.disconnect(); reject(new Error('no answer in time')); }, timeout);
        const seen = new MutationObserver(() => {
            if (pane.textContent.length > chars) { clearTimeout(timer); seen.disconnect(); resolve(); }
        });
        seen.observe(pane, {childList: true, characterData: true, subtree: true});
    })""", [chars, timeout_ms])


def _browser_stop(browser, url: str) -> dict:
    context, page = _open_page(browser, url)
    try:
        page.fill("#instruction", LONG)
        page.press("#instruction", "Enter")
        _await_answer(page, 40)
        page.click("#stop")
        page.wait_for_function("() => window.pairlineStats.stoppedAt !== null", timeout=60_000)
        time.sleep(0.3)  # a delta still in flight would be drawn by now
        s = page.evaluate("() => window.pairlineStats")
        server_ms = page.evaluate("() => window.pairlineStats.turns.map(t => t.stopped_ms).find(x => x != null)")
    finally:
        context.close()
    clicked = s["stopClickedAt"]
    return {"quiet_ms": max(0.0, s["lastDeltaAt"] - clicked), "stopped_ms": s["stoppedAt"] - clicked,
            "server_ms": server_ms}


def _printed_url(server_log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"(http://127\.0\.0\.1:\d+/#token=\S+)", server_log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise RuntimeError(f"pairline serve --workspace printed no URL; see {server_log}")


def _runtime(port: int) -> str | None:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json().get("runtime")
    except (httpx.HTTPError, ValueError):
        return None


def _runtime_from_log(server_log: Path) -> str | None:
    found = re.search(r"on the (\S+) runtime", server_log.read_text())
    return found.group(1) if found else None


def _print(result: dict) -> None:
    t, s = result["ttft"], result["stop"]
    title = f"pairline bench app · {result['model']} · {result['runtime']} runtime"
    out = table(title, ["measure", "p50", "min", "max", "goal"], left={"measure"})
    for name, row, goal in [("TTFT, pairline chat (ms)", t["chat_ms"], ""),
                            ("TTFT, browser: Enter → first delta drawn (ms)", t["browser_ms"], ""),
                            ("browser − chat, per pair (ms)", t["browser_minus_chat_ms"], "≤ 30"),
                            ("stop: click → server's answer (ms)", s["stopped_ms"], "")]:
        out.add_row(name, fmt(row["median"], "{:.1f}"), fmt(row["min"], "{:.1f}"), fmt(row["max"], "{:.1f}"), goal)
    q = s["quiet_ms"]
    out.add_row("stop to quiet: click → last delta drawn (ms)", fmt(q["p50"], "{:.1f}"),
                fmt(min(q["runs"]) if q["runs"] else None, "{:.1f}"), fmt(q["max"], "{:.1f}"), "≤ 100")
    console(140).print(out)
