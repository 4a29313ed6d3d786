"""`pairline lsp` without model weights: the server runs in this process over pipes, spoken to by a
real JSON-RPC client (Content-Length framing, as an editor does), with a scripted suggestion engine
whose timing the tests control. The debounce and stale-request policy, $/cancelRequest reaching the
engine, edits as versioned WorkspaceEdits, and bad input answered with errors. test_lsp_real.py
runs the same client against `python -m pairline.cli lsp` on real weights."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pytest

from pairline.editor.actions import EDIT_COMMAND, EXPLAIN_COMMAND, buffer_name, minimal_edit
from pairline.editor.lsp import LspConfig, build_server
from tests.assistant_helpers import ScriptedClient

URI = "file:///work/demo/app.py"
TIMEOUT = 20.0


class LspClient:
    """A small LSP client over two byte streams. A reader thread files every message: responses by
    id, notifications in order, and the server's own requests, which it answers (applyEdit with
    `apply_result`, anything else with null). Anything on the stream that is not a framed JSON
    message lands in `garbage`: the server must write nothing but LSP."""

    def __init__(self, to_server: BinaryIO, from_server: BinaryIO) -> None:
        self._out = to_server
        self._in = from_server
        self._next_id = 0
        self._cv = threading.Condition()
        self._write_lock = threading.Lock()
        self.responses: dict[Any, dict] = {}
        self.unaddressed: list[dict] = []  # error responses with a null id (a body that was not JSON)
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.garbage: list[bytes] = []
        self.apply_result: dict = {"applied": True}
        self.closed = False
        threading.Thread(target=self._read_loop, daemon=True).start()

    # ------------------------------------------------------------ reading

    def _read_loop(self) -> None:
        try:
            while True:
                length = None
                while True:
                    line = self._in.readline()
                    if not line:
                        return
                    if line == b"\r\n":
                        break
                    name, _, value = line.decode("ascii", "replace").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                    elif name.strip().lower() != "content-type":
                        self.garbage.append(line)
                if length is None:
                    continue
                body = self._in.read(length)
                try:
                    message = json.loads(body)
                except ValueError:
                    self.garbage.append(body)
                    continue
                self._file(message)
        finally:
            with self._cv:
                self.closed = True
                self._cv.notify_all()

    def _file(self, message: dict) -> None:
        if "method" in message and "id" in message:
            with self._cv:
                self.server_requests.append(message)
                self._cv.notify_all()
            result = self.apply_result if message["method"] == "workspace/applyEdit" else None
            self._write({"jsonrpc": "2.0", "id": message["id"], "result": result})
            return
        with self._cv:
            if "method" in message:
                self.notifications.append(message)
            elif message.get("id") is None:
                self.unaddressed.append(message)
            else:
                self.responses[message["id"]] = message
            self._cv.notify_all()

    def _wait(self, ready: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cv:
            while not (found := ready()):
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"no {what} within {timeout} s (server closed: {self.closed})")
                self._cv.wait(left)
            return found

    def response(self, msg_id: int, timeout: float = TIMEOUT) -> dict:
        return self._wait(lambda: self.responses.get(msg_id), timeout, f"response to request {msg_id}")

    def notification(self, method: str, where: Callable[[dict], bool] = lambda m: True,
                     timeout: float = TIMEOUT) -> dict:
        def found() -> dict | None:
            return next((m for m in self.notifications if m["method"] == method and where(m)), None)

        return self._wait(found, timeout, f"{method} notification")

    # ------------------------------------------------------------ writing

    def _write(self, message: dict) -> None:
        self.write_raw(json.dumps(message).encode())

    @staticmethod
    def frame(body: bytes) -> bytes:
        return b"Content-Length: %d\r\n\r\n" % len(body) + body

    def write_raw(self, body: bytes) -> None:
        self.write_frames([body])

    def write_frames(self, bodies: list[bytes]) -> None:
        """Several messages in one write: the server reads them back to back, as fast as it can."""
        with self._write_lock:
            self._out.write(b"".join(self.frame(b) for b in bodies))
            self._out.flush()

    def message(self, method: str, params: Any = None) -> tuple[int, bytes]:
        self._next_id += 1
        return self._next_id, json.dumps({"jsonrpc": "2.0", "id": self._next_id, "method": method,
                                          "params": params}).encode()

    def send(self, method: str, params: Any = None) -> int:
        msg_id, body = self.message(method, params)
        self.write_raw(body)
        return msg_id

    def request(self, method: str, params: Any = None, timeout: float = TIMEOUT) -> dict:
        return self.response(self.send(method, params), timeout)

    def notify(self, method: str, params: Any = None) -> None:
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    # ------------------------------------------------------------ LSP conveniences

    def initialize(self, options: dict | None = None) -> dict:
        capabilities = {"window": {"workDoneProgress": True},
                        "workspace": {"workspaceEdit": {"documentChanges": True}, "applyEdit": True}}
        answer = self.request("initialize", {"processId": None, "rootUri": None, "capabilities": capabilities,
                                             "initializationOptions": options or {}})
        self.notify("initialized", {})
        return answer

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                              "version": version, "text": text}})

    def change(self, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        rng = {"start": {"line": start[0], "character": start[1]}, "end": {"line": end[0], "character": end[1]}}
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [{"range": rng, "text": text}]})

    @staticmethod
    def inline_params(uri: str, line: int, character: int) -> dict:
        return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                "context": {"triggerKind": 2}}


def error_code(response: dict) -> int | None:
    return (response.get("error") or {}).get("code")


# ---------------------------------------------------------------- a scripted suggestion engine


class FakeSuggestion:
    """Yields its text a character at a time, `delay` apart, until cancelled."""

    def __init__(self, text: str, delay: float) -> None:
        self._full = text
        self._delay = delay
        self._cancelled = threading.Event()
        self.text = ""
        self.finish_reason: str | None = None
        self.done = threading.Event()  # the worker stopped iterating: the "model" is idle again

    def __iter__(self) -> Iterator[str]:
        try:
            for ch in self._full:
                if self._cancelled.wait(self._delay):
                    self.finish_reason = "cancelled"
                    return
                self.text += ch
                yield ch
            self.finish_reason = "stop"
        finally:
            self.done.set()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class FakeSuggester:
    def __init__(self, text: str = "return a + b\n", delay: float = 0.0, client: Any = None) -> None:
        self.text = text
        self.delay = delay
        self.client = client
        self.calls: list[tuple[str, str, int]] = []
        self.suggestions: list[FakeSuggestion] = []
        self.warmed: list[tuple[str, str]] = []
        self.closed = False

    def suggest(self, prefix: str, suffix: str, max_tokens: int = 64) -> FakeSuggestion:
        for older in self.suggestions:  # the contract: a new suggestion cancels any still running
            older.cancel()
        self.calls.append((prefix, suffix, max_tokens))
        self.suggestions.append(FakeSuggestion(self.text, self.delay))
        return self.suggestions[-1]

    def warm(self, prefix: str, suffix: str) -> None:
        self.warmed.append((prefix, suffix))

    def close(self) -> None:
        self.closed = True


@contextlib.contextmanager
def in_process(suggester: FakeSuggester, **config: Any) -> Iterator[LspClient]:
    """The real server (build_server) on pipes in a thread of this process, its engine scripted."""
    to_server_r, to_server_w = os.pipe()
    from_server_r, from_server_w = os.pipe()
    server = build_server(LspConfig(model="scripted", **config), open_suggester=lambda: suggester)
    thread = threading.Thread(target=server.start_io,
                              args=(os.fdopen(to_server_r, "rb"), os.fdopen(from_server_w, "wb")), daemon=True)
    thread.start()
    out = os.fdopen(to_server_w, "wb")
    client = LspClient(out, os.fdopen(from_server_r, "rb"))
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.request("shutdown", None, timeout=5)
            client.notify("exit")
        thread.join(5)
        with contextlib.suppress(OSError):
            out.close()
        assert not client.garbage, f"the server wrote non-LSP bytes: {client.garbage[:3]}"


DOC = "def add(a, b):\n    \n\nprint(add(1, 2))\n"


# ---------------------------------------------------------------- inline completion


def test_inline_completion_sends_prefix_and_suffix_after_an_incremental_change() -> None:
    fake = FakeSuggester(text="return a + b")
    with in_process(fake, debounce_ms=10) as lsp:
        caps = lsp.initialize()["result"]["capabilities"]
        assert caps["inlineCompletionProvider"] is not None
        assert EDIT_COMMAND in caps["executeCommandProvider"]["commands"]
        lsp.open(URI, "def add(a, b):\n    \n")
        lsp.change(URI, 2, (1, 4), (1, 4), "re")  # the user typed "re"
        lsp.change(URI, 3, (1, 6), (1, 6), "t")
        answer = lsp.request("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 7))
        items = answer["result"]
        assert [i["insertText"] for i in items] == ["return a + b"]
        assert items[0]["range"] == {"start": {"line": 1, "character": 7}, "end": {"line": 1, "character": 7}}
        assert fake.calls == [("def add(a, b):\n    ret", "\n", 64)]
        lsp.change(URI, 4, (1, 7), (1, 7), "u")  # the model is loaded now: a change prefills ahead
        lsp.request("textDocument/codeAction", {"textDocument": {"uri": URI}, "context": {"diagnostics": []},
                                                "range": {"start": {"line": 0, "character": 0},
                                                          "end": {"line": 0, "character": 0}}})
        assert fake.warmed[-1] == ("def add(a, b):\n    retu", "\n")


def test_back_to_back_requests_only_the_newest_reaches_the_model() -> None:
    fake = FakeSuggester(text="x = 1")
    with in_process(fake, debounce_ms=50) as lsp:
        lsp.initialize()
        lsp.open(URI, DOC)
        first, body1 = lsp.message("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 4))
        second, body2 = lsp.message("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 4))
        lsp.write_frames([body1, body2])
        assert lsp.response(first)["result"] == []  # stale: never a suggestion for it
        assert [i["insertText"] for i in lsp.response(second)["result"]] == ["x = 1"]
        assert len(fake.calls) == 1  # the stale one never started a generation


def test_a_change_during_generation_cancels_it_and_the_answer_is_empty() -> None:
    fake = FakeSuggester(text="0123456789" * 5, delay=0.02)  # a second of "generation"
    with in_process(fake, debounce_ms=0) as lsp:
        lsp.initialize()
        lsp.open(URI, DOC)
        msg_id = lsp.send("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 4))
        deadline = time.monotonic() + TIMEOUT
        while not (fake.suggestions and fake.suggestions[0].text) and time.monotonic() < deadline:
            time.sleep(0.005)
        lsp.change(URI, 2, (1, 4), (1, 4), "r")
        assert lsp.response(msg_id)["result"] == []
        sug = fake.suggestions[0]
        assert sug.cancelled and sug.done.wait(2) and sug.finish_reason == "cancelled"
        assert len(sug.text) < 50


def test_cancel_request_stops_the_generation_not_just_the_reply() -> None:
    fake = FakeSuggester(text="0123456789" * 5, delay=0.02)
    with in_process(fake, debounce_ms=0) as lsp:
        lsp.initialize()
        lsp.open(URI, DOC)
        msg_id = lsp.send("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 4))
        deadline = time.monotonic() + TIMEOUT
        while not (fake.suggestions and fake.suggestions[0].text) and time.monotonic() < deadline:
            time.sleep(0.005)
        lsp.notify("$/cancelRequest", {"id": msg_id})
        assert error_code(lsp.response(msg_id)) == -32800  # RequestCancelled
        sug = fake.suggestions[0]
        assert sug.done.wait(2), "the generation kept running after $/cancelRequest"
        assert sug.finish_reason == "cancelled" and len(sug.text) < 50
        # and the server goes on answering
        assert lsp.request("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 4))["result"]


# ---------------------------------------------------------------- bad input


def test_bad_input_gets_errors_and_the_server_keeps_answering() -> None:
    fake = FakeSuggester(text="pass")
    with in_process(fake, debounce_ms=0, max_document_bytes=2 * 1024 * 1024) as lsp:
        lsp.initialize()
        lsp.write_raw(b"{this is not json")
        assert lsp._wait(lambda: lsp.unaddressed, TIMEOUT, "parse error")[0]["error"]["code"] == -32700
        lsp.write_raw(b'{"id": 77, "method": "textDocument/inlineCompletion"}')  # no "jsonrpc"
        assert error_code(lsp.response(77)) == -32600
        lsp.write_raw(b"[1, 2]")
        assert lsp._wait(lambda: lsp.unaddressed[1:], TIMEOUT, "invalid request")[0]["error"]["code"] == -32600
        bad = lsp.request("textDocument/inlineCompletion", {"textDocument": {"uri": URI}, "position": "nowhere"})
        assert error_code(bad) == -32602 and "inlineCompletion" in bad["error"]["message"]
        unknown = lsp.request("textDocument/inlineCompletion", lsp.inline_params("file:///nope.py", 0, 0))
        assert error_code(unknown) == -32602 and "unknown document" in unknown["error"]["message"]
        big = "x = 1\n" * (3 * 1024 * 1024 // 6 + 1)  # just over 3 MiB
        lsp.open("file:///big.py", big)
        warning = lsp.notification("window/showMessage", lambda m: "big.py" in m["params"]["message"])
        assert "limit" in warning["params"]["message"]
        huge = lsp.request("textDocument/inlineCompletion", lsp.inline_params("file:///big.py", 0, 0))
        assert error_code(huge) == -32803 and "MiB" in huge["error"]["message"]
        lsp.open(URI, DOC)
        off = lsp.request("textDocument/inlineCompletion", lsp.inline_params(URI, 99, 0))
        assert error_code(off) == -32602
        assert error_code(lsp.request("workspace/executeCommand", {"command": EDIT_COMMAND, "arguments": [URI]})) \
            == -32602  # no instruction
        assert error_code(lsp.request("pairline/unknownMethod", {})) == -32601
        ok = lsp.request("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 4))
        assert [i["insertText"] for i in ok["result"]] == ["pass"]
        assert fake.calls[-1] == (DOC[: DOC.index("\n") + 5], DOC[DOC.index("\n") + 5:], 64)


# ---------------------------------------------------------------- edits and explanations


def test_edit_command_applies_a_versioned_workspace_edit_with_progress() -> None:
    text = "x = 1\ny = x + 2\nprint(x, y)\n"
    client = ScriptedClient(["```python\ncount = 1\ny = count + 2\nprint(count, y)\n```\n"], delay=0.002)
    fake = FakeSuggester(client=client)
    with in_process(fake) as lsp:
        lsp.initialize()
        lsp.open(URI, text, version=7)
        actions = lsp.request("textDocument/codeAction", {
            "textDocument": {"uri": URI}, "context": {"diagnostics": []},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 3, "character": 0}}})["result"]
        titles = [a["title"] for a in actions]
        assert "Explain with pairline" in titles and "Edit selection with pairline…" not in titles
        rng = actions[0]["command"]["arguments"][1]
        answer = lsp.request("workspace/executeCommand",
                             {"command": EDIT_COMMAND, "arguments": [URI, rng, "use the word count instead of x"]})
        assert answer["result"]["status"] == "applied", answer
        edit_request = next(r for r in lsp.server_requests if r["method"] == "workspace/applyEdit")
        change = edit_request["params"]["edit"]["documentChanges"][0]
        assert change["textDocument"] == {"uri": URI, "version": 7}  # the editor refuses it if the buffer moved on
        (edit,) = change["edits"]
        assert edit["range"] == {"start": {"line": 0, "character": 0}, "end": {"line": 3, "character": 0}}
        assert edit["newText"] == "count = 1\ny = count + 2\nprint(count, y)\n"
        kinds = [m["params"]["value"]["kind"] for m in lsp.notifications if m["method"] == "$/progress"]
        assert kinds[0] == "begin" and kinds[-1] == "end"
        # the model saw the buffer, never the (nonexistent) file on disk
        assert "print(x, y)" in json.dumps(client.calls[0]["messages"])


def test_edit_that_fails_the_check_is_a_message_not_a_crash() -> None:
    broken = "```python\ncount = 1\ny = x + 2\nprint(count, y)\n```\n"  # x is left undefined
    client = ScriptedClient([broken, broken])
    with in_process(FakeSuggester(client=client)) as lsp:
        lsp.initialize()
        lsp.open(URI, "x = 1\ny = x + 2\nprint(x, y)\n")
        answer = lsp.request("workspace/executeCommand",
                             {"command": EDIT_COMMAND, "arguments": [URI, None, "use the word count instead of x"]})
        assert answer["result"]["status"] == "malformed" and not answer["result"]["applied"]
        shown = lsp.notification("window/showMessage", lambda m: m["params"]["type"] == 1)
        assert "the edit failed" in shown["params"]["message"]
        assert not any(r["method"] == "workspace/applyEdit" for r in lsp.server_requests)
        assert lsp.request("textDocument/inlineCompletion", lsp.inline_params(URI, 0, 0))["result"]


def test_edit_refused_by_the_editor_is_reported() -> None:
    client = ScriptedClient(["```python\ncount = 1\nprint(count)\n```\n"])
    with in_process(FakeSuggester(client=client)) as lsp:
        lsp.apply_result = {"applied": False, "failureReason": "version mismatch"}
        lsp.initialize({"promptForInstruction": True})
        lsp.open(URI, "x = 1\nprint(x)\n")
        actions = lsp.request("textDocument/codeAction", {
            "textDocument": {"uri": URI}, "context": {"diagnostics": []},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 5}}})["result"]
        prompt = next(a for a in actions if a["title"] == "Edit selection with pairline…")
        assert prompt["command"]["arguments"] == [URI, actions[0]["command"]["arguments"][1]]  # no instruction
        answer = lsp.request("workspace/executeCommand",
                             {"command": EDIT_COMMAND, "arguments": [*prompt["command"]["arguments"], "count, not x"]})
        assert answer["result"]["status"] == "refused" and "version mismatch" in answer["result"]["message"]


def test_buffer_changed_during_the_edit_is_not_edited() -> None:
    client = ScriptedClient(["```python\ncount = 1\nprint(count)\n```\n"], chunk=1, delay=0.02)
    with in_process(FakeSuggester(client=client)) as lsp:
        lsp.initialize()
        lsp.open(URI, "x = 1\nprint(x)\n")
        msg_id = lsp.send("workspace/executeCommand",
                          {"command": EDIT_COMMAND, "arguments": [URI, None, "use the word count instead of x"]})
        lsp.notification("$/progress", lambda m: m["params"]["value"]["kind"] == "begin")
        lsp.change(URI, 2, (1, 0), (1, 0), "# typed meanwhile\n")
        answer = lsp.response(msg_id)
        assert answer["result"]["status"] == "stale" and not answer["result"]["applied"]
        assert not any(r["method"] == "workspace/applyEdit" for r in lsp.server_requests)


def test_cancelling_an_edit_stops_the_model() -> None:
    client = ScriptedClient(["```python\n" + "count = 1\n" * 200 + "```\n"], chunk=1, delay=0.01)
    with in_process(FakeSuggester(client=client)) as lsp:
        lsp.initialize()
        lsp.open(URI, "x = 1\nprint(x)\n")
        msg_id = lsp.send("workspace/executeCommand",
                          {"command": EDIT_COMMAND, "arguments": [URI, None, "use the word count instead of x"]})
        lsp.notification("$/progress", lambda m: m["params"]["value"]["kind"] == "begin")
        lsp.notify("$/cancelRequest", {"id": msg_id})
        cancelled_at = time.monotonic()
        assert error_code(lsp.response(msg_id)) == -32800
        # the scripted answer takes 20 s to stream: an end this soon means the model's work stopped
        end = lsp.notification("$/progress", lambda m: m["params"]["value"]["kind"] == "end", timeout=5)
        assert end["params"]["value"]["message"] == "cancelled" and time.monotonic() - cancelled_at < 5
        assert not any(r["method"] == "workspace/applyEdit" for r in lsp.server_requests)


def test_a_model_that_cannot_load_is_an_error_per_request() -> None:
    def broken() -> FakeSuggester:
        raise RuntimeError("no such model: nope")

    to_server_r, to_server_w = os.pipe()
    from_server_r, from_server_w = os.pipe()
    server = build_server(LspConfig(model="nope", debounce_ms=0), open_suggester=broken)
    thread = threading.Thread(target=server.start_io,
                              args=(os.fdopen(to_server_r, "rb"), os.fdopen(from_server_w, "wb")), daemon=True)
    thread.start()
    out = os.fdopen(to_server_w, "wb")
    lsp = LspClient(out, os.fdopen(from_server_r, "rb"))
    lsp.initialize()
    lsp.open(URI, DOC)
    answer = lsp.request("textDocument/inlineCompletion", lsp.inline_params(URI, 1, 4))
    assert error_code(answer) == -32803 and "no such model" in answer["error"]["message"]
    assert lsp.request("shutdown")["result"] is None
    lsp.notify("exit")
    thread.join(5)
    out.close()


def test_explain_returns_the_text_and_shows_it() -> None:
    client = ScriptedClient(["It adds two numbers."])
    with in_process(FakeSuggester(client=client)) as lsp:
        lsp.initialize()
        lsp.open(URI, DOC)
        answer = lsp.request("workspace/executeCommand", {"command": EXPLAIN_COMMAND, "arguments": [
            URI, {"start": {"line": 0, "character": 0}, "end": {"line": 2, "character": 0}}]})
        assert answer["result"] == {"explanation": "It adds two numbers."}
        assert lsp.notification("window/showMessage", lambda m: "two numbers" in m["params"]["message"])
        assert "def add(a, b):" in client.calls[0]["messages"][-1]["content"]


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("old", "new", "start", "end", "text"), [
    ("a\nb\nc\n", "a\nB\nc\n", (1, 0), (2, 0), "B\n"),
    ("a\r\nb\r\nc\r\n", "a\r\nbb\r\nc\r\n", (1, 0), (1, 0), "b"),  # never between a CR and its LF
    ("a\r\nb\r\nc\r\n", "a\r\nB\r\nc\r\n", (1, 0), (2, 0), "B\r\n"),
    ("a\nb", "a\nb\nc", (1, 0), (1, 1), "b\nc"),
    ("", "x\n", (0, 0), (0, 0), "x\n"),
    ("same\n", "same\n", (1, 0), (1, 0), ""),
    ("a\U0001F600b", "a\U0001F600c", (0, 0), (0, 4), "a\U0001F600c"),  # UTF-16 columns: the emoji is two
])
def test_minimal_edit_starts_and_ends_at_line_starts(old: str, new: str, start: tuple, end: tuple, text: str) -> None:
    from pygls.workspace import TextDocument

    edit = minimal_edit(TextDocument(URI, source=old, version=1), new)
    assert (edit.range.start.line, edit.range.start.character) == start
    assert (edit.range.end.line, edit.range.end.character) == end
    assert edit.new_text == text


def test_buffer_names() -> None:
    assert buffer_name("file:///home/me/my%20app.py") == "my_app.py"
    assert buffer_name("untitled:Untitled-1") == "Untitled-1"
    assert buffer_name("file:///") == "buffer.txt"


def test_command_line_takes_the_agreed_options() -> None:
    from pairline.cli import build_parser

    args = build_parser().parse_args(["lsp", "--stdio", "--model", "smollm2-135m", "--server", "http://127.0.0.1:8765",
                                      "--runtime", "torch", "--debounce-ms", "50", "--max-document-mib", "1"])
    assert (args.command, args.model, args.server, args.runtime) == ("lsp", "smollm2-135m", "http://127.0.0.1:8765",
                                                                      "torch")
    assert (args.stdio, args.debounce_ms, args.max_document_mib) == (True, 50.0, 1.0)
