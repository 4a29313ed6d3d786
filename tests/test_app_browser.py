"""The web app in a real browser (Debian's chromium, driven by Playwright), on `pairline app` started
as a user starts it, with the real-time default model (Qwen2.5-Coder-0.5B): open the app, make an
edit and see its diff, accept a hunk, undo to the exact bytes, a conflict, stop a long answer, a
deep turn, and paths and pages that must be refused.

Each main state's screenshot goes to docs/app/ when PAIRLINE_UPDATE_SCREENSHOTS=1; otherwise the
state must still be reached and its committed screenshot must exist. Where chromium or Playwright
is missing, every test here skips with the reason (scripts/install-browser.sh installs chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pairline.bench.app import CHROMIUM_ARGS
from tests.serve_helpers import free_port

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "app"
UPDATE = os.environ.get("PAIRLINE_UPDATE_SCREENSHOTS") == "1"
CHROMIUM = os.environ.get("PAIRLINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SRC = '''"""Shapes and their areas."""

import math


def circle_area(r):
    return math.pi * r * r


def square_area(side):
    return side * side


def describe(name, area):
    return f"{name}: {area:.2f}"
'''


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the web app's browser tests need Playwright: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"the web app's browser tests need chromium ({CHROMIUM} not found): run scripts/install-browser.sh")
    return sync_playwright


@pytest.fixture(scope="module")
def launched(tmp_path_factory, qwen05_gguf):
    """`pairline app DIR` as a user runs it (a git repository), and the URL it printed."""
    sync_playwright = _browser_or_skip()
    root = tmp_path_factory.mktemp("shapes").resolve()
    (root / "shapes.py").write_text(SRC)
    (root / "README.md").write_text("# shapes\n")
    for cmd in (["init", "-q"], ["config", "user.email", "t@e.com"], ["config", "user.name", "T"], ["add", "."],
                ["commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, capture_output=True)
    port = free_port()
    env = {**os.environ, "PAIRLINE_THREADS": os.environ.get("PAIRLINE_THREADS", "2")}
    cmd = [sys.executable, "-m", "pairline.cli", "app", str(root), "--no-browser", "--port", str(port),
           "--model", str(qwen05_gguf), "--deep-model", "same", "--ctx", "4096"]
    proc = subprocess.Popen(cmd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = None
    deadline = time.monotonic() + 180
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/#token=\S+)", line)
        url = found.group(1) if found else None
    if url is None:
        proc.kill()
        pytest.fail(f"pairline app printed no URL: {proc.stderr.read()[-3000:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipes drained
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser, url, root, port
        finally:
            browser.close()
            proc.terminate()
            proc.wait(20)


@pytest.fixture
def page(launched):
    browser, url, _root, _port = launched
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    page.wait_for_selector('#tree [data-path="shapes.py"]', timeout=30_000)
    yield page
    context.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    """The state is reached: record it (or check that its committed picture exists)."""
    path = SHOTS / f"{name}.png"
    if UPDATE:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
    else:
        assert path.is_file(), f"{path} is missing: run with PAIRLINE_UPDATE_SCREENSHOTS=1 and commit it"


def open_file(page, path: str) -> None:
    page.click(f'#tree [data-path="{path}"]')
    page.wait_for_function("p => document.querySelector('#current-path').textContent.includes(p)", arg=path)
    page.wait_for_function("() => document.querySelector('#editor').textContent.includes('def')")


def ask(page, instruction: str, tier: str = "realtime") -> None:
    page.select_option("#tier", tier)
    page.fill("#instruction", instruction)
    page.press("#instruction", "Enter")


def wait_turn_done(page, n: int, timeout: float = 240_000) -> dict:
    page.wait_for_function("n => window.pairlineStats.turns.length >= n", arg=n, timeout=timeout)
    return page.evaluate("n => window.pairlineStats.turns[n - 1]", n)


def test_an_edit_shows_as_a_diff_a_hunk_is_accepted_and_undo_restores_the_bytes(page, launched):
    _browser, _url, root, _port = launched
    shot(page, "1-open")
    open_file(page, "shapes.py")
    before = (root / "shapes.py").read_bytes()
    ask(page, "Rename the function square_area to area_of_square.")
    page.wait_for_selector("#diff .hunk", timeout=240_000)
    turn = wait_turn_done(page, 1)
    assert turn["status"] == "proposed" and turn["ttft_ms"] > 0 and turn["server_ttft_ms"] > 0
    assert page.text_content("#ttft") not in ("", "–")
    assert "area_of_square" in page.text_content("#diff")
    assert (root / "shapes.py").read_bytes() == before  # shown, not written
    shot(page, "2-proposal")

    page.click("#diff .hunk button.accept")
    page.wait_for_selector("#diff .hunk.accepted")
    after = (root / "shapes.py").read_text()
    assert "def area_of_square(side):" in after and "def square_area" not in after
    page.wait_for_function("() => document.querySelector('#editor').textContent.includes('area_of_square')")
    log = subprocess.run(["git", "log", "--format=%s"], cwd=root, capture_output=True, text=True).stdout
    assert log.startswith("pairline: shapes.py: hunk 0")
    shot(page, "3-accepted")

    page.click("#undo")
    page.wait_for_function("() => /undone/.test(document.querySelector('#status').textContent)")
    assert (root / "shapes.py").read_bytes() == before
    assert subprocess.run(["git", "log", "--format=%s"], cwd=root, capture_output=True, text=True).stdout == "init\n"


def test_a_file_changed_on_disk_is_refused_shown_and_the_answer_kept(page, launched):
    _browser, _url, root, _port = launched
    open_file(page, "shapes.py")
    ask(page, "Rename the function circle_area to area_of_circle.")
    page.wait_for_selector("#diff .hunk", timeout=240_000)
    wait_turn_done(page, 1)
    mine = "# edited by the user meanwhile\n" + (root / "shapes.py").read_text()
    (root / "shapes.py").write_text(mine)
    page.click("#diff .hunk button.accept")
    page.wait_for_selector("#conflict:not([hidden])")
    assert (root / "shapes.py").read_text() == mine  # nothing written
    page.wait_for_function("() => document.querySelector('#editor').textContent.includes('edited by the user')")
    shot(page, "4-conflict")
    page.click("#diff .hunk:not(.accepted) button.accept")  # the kept answer, on the new text
    page.wait_for_selector("#diff .hunk.accepted")
    now = (root / "shapes.py").read_text()
    assert now.startswith("# edited by the user meanwhile\n") and "area_of_circle" in now
    page.click("#undo")
    page.wait_for_function("() => /undone/.test(document.querySelector('#status').textContent)")
    assert (root / "shapes.py").read_text() == mine
    (root / "shapes.py").write_text(SRC)


def test_stop_quiets_a_long_answer(page, launched):
    open_file(page, "shapes.py")
    ask(page, "Rewrite the whole file: add a long docstring to every function, with examples.")
    page.wait_for_function("() => document.querySelector('#answer').textContent.length > 20", timeout=240_000)
    page.click("#stop")
    page.wait_for_function("() => /stopped in/.test(document.querySelector('#status').textContent)", timeout=30_000)
    turn = wait_turn_done(page, 1)
    time.sleep(0.5)  # anything still in flight would be drawn by now
    stats = page.evaluate("() => window.pairlineStats")
    quiet_ms = max(0.0, stats["lastDeltaAt"] - stats["stopClickedAt"])
    # a measurement, not a pass mark (timings are asserted nowhere): `pairline bench app` reports it
    print(f"stop to quiet in the browser: {quiet_ms:.1f} ms; turn status {turn['status']}")
    assert turn["status"] in ("cancelled", "proposed", "malformed", "unchanged")
    shot(page, "5-stopped")


def test_a_deep_turn_shows_its_steps_and_esc_stops_it(page, launched):
    open_file(page, "shapes.py")
    ask(page, "Add a function triangle_area(base, height) and a test for it.", tier="deep")
    page.wait_for_function("() => document.querySelector('#answer').textContent.length > 10", timeout=240_000)
    page.keyboard.press("Escape")
    page.wait_for_function("() => /stopped in/.test(document.querySelector('#status').textContent)", timeout=60_000)
    assert wait_turn_done(page, 1)["status"] in ("cancelled", "applied", "unchanged")


def test_paths_outside_the_workspace_are_refused_from_the_page(page, launched):
    _browser, _url, root, _port = launched
    secret = root.parent / "secret-outside.txt"
    secret.write_text("top secret\n")
    (root / "escape-link").unlink(missing_ok=True)
    (root / "escape-link").symlink_to(secret)
    probes = ["../secret-outside.txt", str(secret), "escape-link", "%2e%2e/secret-outside.txt",
              "..%2fsecret-outside.txt", "shapes.py/../../secret-outside.txt", ".git/config", "a\\..\\..\\x"]
    answers = page.evaluate("""async probes => {
        const token = sessionStorage.getItem('pairline.token');
        const ws = new WebSocket(`ws://${location.host}/app/ws`);
        const got = [];
        await new Promise(ok => ws.onopen = ok);
        ws.onmessage = e => got.push(JSON.parse(e.data));
        ws.send(JSON.stringify({type: 'hello', token}));
        for (const p of probes) ws.send(JSON.stringify({type: 'open', path: p}));
        const t0 = Date.now();
        const replies = () => got.filter(e => e.type === 'error' || e.type === 'file').length;
        while (replies() < probes.length && Date.now() - t0 < 20000) await new Promise(r => setTimeout(r, 50));
        ws.close();
        return got;
    }""", probes)
    replies = [e for e in answers if e["type"] in ("error", "file")]
    assert len(replies) == len(probes), answers
    assert all(e["type"] == "error" and e["code"] in ("bad_path", "not_found") for e in replies), replies
    assert "top secret" not in json.dumps(answers)


class _Evil(BaseHTTPRequestHandler):
    """A page on another site that tries to drive the app on 127.0.0.1."""

    target = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        body = f"""<script>
            window.result = new Promise(done => {{
                const ws = new WebSocket('ws://127.0.0.1:{self.target}/app/ws');
                ws.onopen = () => {{ ws.send(JSON.stringify({{type: 'hello', token: 'guess'}})); }};
                ws.onmessage = e => done('message: ' + e.data);
                ws.onerror = () => done('refused');
                ws.onclose = e => done('closed ' + e.code);
            }});
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_page_on_another_site_cannot_open_the_apps_socket(launched):
    browser, _url, _root, port = launched
    _Evil.target = port
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        # a real browser on a foreign origin (evil.example resolves here, as DNS rebinding would make it)
        context = browser.new_context()
        page = context.new_page()
        page.route("http://evil.example/**", lambda route: route.continue_(url=f"http://127.0.0.1:{evil.server_port}/"))
        page.goto("http://evil.example/")
        result = page.evaluate("() => window.result")
        context.close()
    finally:
        evil.shutdown()
    assert result == "refused" or result.startswith("closed"), result  # no message ever reached the page
