"""`pairline lsp` as an editor runs it: `python -m pairline.cli lsp` in a child process, spoken to
over its stdin/stdout by the JSON-RPC client of test_lsp.py, on real weights (SmolLM2-135M for
suggestions, one process for the module; Qwen2.5-Coder-0.5B for the edit, which SmolLM2 cannot
make). Everything the child writes to stdout must be LSP; its log goes to a file, shown on failure."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_lsp import LspClient, error_code

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
URI = "file:///work/demo/calc.py"
SUGGEST_READY = importlib.util.find_spec("pairline.assistant.suggest") is not None
needs_suggester = pytest.mark.skipif(not SUGGEST_READY, reason="pairline/assistant/suggest.py is not there yet")


class Child:
    def __init__(self, model: str, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pairline.cli", "lsp", "--model", model, "--stdio"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("wb"), cwd=ROOT, env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.lsp = LspClient(self.proc.stdin, self.proc.stdout)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    child = Child("smollm2-135m", tmp_path_factory.mktemp("lsp") / "lsp.log")
    try:
        child.lsp.initialize()
        child.lsp.open(URI, "def add(a, b):\n    \n\n\nprint(add(1, 2))\n")
        yield child
    finally:
        child.stop()
        assert not child.lsp.garbage, f"non-LSP bytes on stdout: {child.lsp.garbage[:3]}\n{child.log_tail()}"


def complete(lsp: LspClient, line: int, character: int, timeout: float = 60.0) -> dict:
    return lsp.request("textDocument/inlineCompletion", lsp.inline_params(URI, line, character), timeout=timeout)


@needs_suggester
def test_round_trip_gives_a_real_suggestion(smol: Child) -> None:
    lsp = smol.lsp
    lsp.change(URI, 2, (1, 4), (1, 4), "return")
    answer = complete(lsp, 1, 10)  # the first request may wait for the model to load
    assert "result" in answer, f"{answer}\n{smol.log_tail()}"
    items = answer["result"]
    assert items and items[0]["insertText"].strip(), f"no suggestion: {answer}\n{smol.log_tail()}"
    assert items[0]["range"]["start"] == {"line": 1, "character": 10}


@needs_suggester
def test_stale_request_never_gets_a_suggestion(smol: Child) -> None:
    lsp = smol.lsp
    first, body1 = lsp.message("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 10))
    second, body2 = lsp.message("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 10))
    lsp.write_frames([body1, body2])
    stale = lsp.response(first, 60)
    assert stale.get("result") == [] or error_code(stale) == -32800, stale
    assert "result" in lsp.response(second, 60)


@needs_suggester
def test_cancel_request_is_answered_and_the_server_goes_on(smol: Child) -> None:
    lsp = smol.lsp
    msg_id, body = lsp.message("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 10))
    cancel = b'{"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": %d}}' % msg_id
    lsp.write_frames([body, cancel])
    assert error_code(lsp.response(msg_id, 60)) == -32800
    assert "result" in complete(lsp, 1, 10)


@needs_suggester
def test_explain_answers_with_text(smol: Child) -> None:
    lsp = smol.lsp
    answer = lsp.request("workspace/executeCommand", {"command": "pairline.explain", "arguments": [
        URI, {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}}, {"show": False}]},
        timeout=60)
    assert answer.get("result", {}).get("explanation", "").strip(), f"{answer}\n{smol.log_tail()}"


def test_bad_input_is_answered_with_errors(smol: Child) -> None:
    lsp = smol.lsp
    lsp.write_raw(b'{"jsonrpc": "2.0", "id": 99, "method": ')  # cut off
    parse_error = lsp._wait(lambda: lsp.unaddressed, 30, "parse error")[0]
    assert parse_error["error"]["code"] == -32700
    unknown = lsp.request("textDocument/inlineCompletion", lsp.inline_params("file:///nowhere.py", 0, 0))
    assert error_code(unknown) == -32602 and "unknown document" in unknown["error"]["message"]
    lsp.open("file:///big.py", "# " + "x" * (3 * 1024 * 1024) + "\n")
    big = lsp.request("textDocument/inlineCompletion", lsp.inline_params("file:///big.py", 0, 1))
    assert error_code(big) == -32803 and "MiB" in big["error"]["message"]
    actions = lsp.request("textDocument/codeAction", {
        "textDocument": {"uri": URI}, "context": {"diagnostics": []},
        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}}})
    assert any(a["title"] == "Explain with pairline" for a in actions["result"])  # still serving


def test_shutdown_and_exit(smol: Child) -> None:
    lsp = smol.lsp
    assert lsp.request("shutdown", None)["result"] is None
    lsp.notify("exit")
    assert smol.proc.wait(15) == 0, smol.log_tail()


@needs_suggester
def test_edit_command_on_qwen_applies_a_workspace_edit(tmp_path: Path) -> None:
    from pairline.models.fetch import is_pulled

    if not is_pulled("qwen2.5-coder-0.5b"):
        pytest.skip("qwen2.5-coder-0.5b is not in the model cache (`pairline models pull qwen2.5-coder-0.5b`): "
                    "SmolLM2 cannot make even a rename, so the edit test needs it")
    child = Child("qwen2.5-coder-0.5b", tmp_path / "lsp.log")
    try:
        lsp = child.lsp
        lsp.initialize()
        lsp.open(URI, "x = 1\ny = x + 2\nprint(x, y)\n", version=3)
        started = time.monotonic()
        answer = lsp.request("workspace/executeCommand", {"command": "pairline.editSelection", "arguments": [
            URI, None, "rename variable x to count"]}, timeout=120)
        assert answer.get("result", {}).get("status") == "applied", f"{answer}\n{child.log_tail()}"
        edit = next(r for r in lsp.server_requests if r["method"] == "workspace/applyEdit")["params"]["edit"]
        change = edit["documentChanges"][0]
        assert change["textDocument"] == {"uri": URI, "version": 3}
        new_text = change["edits"][0]["newText"]
        assert "count" in new_text and "x" not in new_text.replace("print", ""), new_text
        assert any(m["method"] == "$/progress" for m in lsp.notifications)
        assert time.monotonic() - started < 120
        assert lsp.request("shutdown", None)["result"] is None
        lsp.notify("exit")
        assert child.proc.wait(15) == 0
        assert not lsp.garbage
    finally:
        child.stop()
