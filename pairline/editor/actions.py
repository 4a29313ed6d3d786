"""Code actions and commands of `pairline lsp`: edit a selection, explain it.

`pairline.editSelection` [uri, range, instruction] runs the same edit turn as `pairline edit`
(`assistant/coder.py`, checked by `assistant/check.py`) on the text the client holds: the buffer may
be unsaved, so the Coder gets a temporary copy, and the user's file is never read or written here.
The change goes back to the editor as a `workspace/applyEdit` whose `TextDocumentEdit` names the
document version the edit was made on: the editor refuses it if the buffer changed meanwhile (the
LSP form of `pairline edit`'s "never write if the file changed under us").

`pairline.explain` [uri, range] answers with {"explanation": text} as the command's result, and also
shows it with `window/showMessage` (editors such as Neovim and Helix drop a command's result); a
third argument {"show": false} leaves the message out.

LSP has no request that asks the user for text, so the instruction is the command's third argument.
A client that can prompt (the VS Code extension) says so with the initialization option
`promptForInstruction: true`; it is then offered "Edit selection with pairline…" without an
instruction and fills it in before `workspace/executeCommand`. Every client is offered the
`editPresets` instructions (initialization option; a default pair otherwise) and "Explain".
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.workspace import TextDocument

from pairline.editor.errors import request_failed
from pairline.engine.generate import CancelToken

if TYPE_CHECKING:
    from pairline.assistant.client import Client
    from pairline.editor.lsp import PairlineLanguageServer

log = logging.getLogger("pairline.lsp")
T = TypeVar("T")

EDIT_COMMAND = "pairline.editSelection"
EXPLAIN_COMMAND = "pairline.explain"
DEFAULT_PRESETS = ("Add type hints", "Add docstrings")
EXPLAIN_MAX_TOKENS = 320
PROGRESS_EVERY_S = 0.25  # how often an edit's token count is reported while it streams
EXPLAIN_SYSTEM = "You are a concise programming assistant. Explain code plainly, in a short paragraph."


# ---------------------------------------------------------------- arguments


def _position(value: Any) -> types.Position:
    if not isinstance(value, dict):
        raise ValueError("a position is {line, character}")
    line, character = value.get("line"), value.get("character")
    if not isinstance(line, int) or not isinstance(character, int) or line < 0 or character < 0:
        raise ValueError("a position's line and character are integers >= 0")
    return types.Position(line=line, character=character)


def parse_range(value: Any) -> types.Range | None:
    """A range given as JSON ({start, end}), or None for none (the whole document)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise JsonRpcInvalidParams("the range must be {start: {line, character}, end: {line, character}} or null")
    try:
        return types.Range(start=_position(value.get("start")), end=_position(value.get("end")))
    except ValueError as err:
        raise JsonRpcInvalidParams(f"bad range: {err}") from None


def range_json(rng: types.Range) -> dict:
    """A range as plain JSON, for a command's arguments (which the client sends back as they are)."""
    return {"start": {"line": rng.start.line, "character": rng.start.character},
            "end": {"line": rng.end.line, "character": rng.end.character}}


def parse_arguments(command: str, args: tuple[Any, ...], most: int) -> tuple[str, types.Range | None, list[Any]]:
    if not args or not isinstance(args[0], str) or len(args) > most:
        usage = "[uri, range, instruction]" if command == EDIT_COMMAND else "[uri, range, {\"show\": bool}]"
        raise JsonRpcInvalidParams(f"{command} takes the arguments {usage}")
    rng = parse_range(args[1]) if len(args) > 1 else None
    return args[0], rng, list(args[2:])


# ---------------------------------------------------------------- progress


class Progress:
    """`$/progress` for one command: begin, a report of the tokens so far at most every
    PROGRESS_EVERY_S, end. Nothing is sent where the client does not support work-done progress.
    `on_text` is called from the model's thread; the notifications go out from the event loop."""

    def __init__(self, server: PairlineLanguageServer, token: str | None, count: Callable[[str], int]) -> None:
        self.server = server
        self.token = token
        self.count = count
        self.loop = asyncio.get_running_loop()
        self.text = ""
        self._reported_at = 0.0

    @classmethod
    async def start(cls, server: PairlineLanguageServer, title: str, count: Callable[[str], int],
                    cancel: CancelToken) -> Progress:
        window = server.client_capabilities.window
        if window is None or not window.work_done_progress:
            return cls(server, None, count)
        token = f"pairline-{uuid.uuid4().hex[:12]}"
        try:
            await server.work_done_progress.create_async(token)
        except Exception as err:  # noqa: BLE001 - progress is a courtesy: the edit goes on without it
            log.info("no progress bar: %s", err)
            return cls(server, None, count)
        server.cancel_hooks[("progress", token)] = cancel.cancel  # the progress bar's own cancel button
        server.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, cancellable=True,
                                                                            message="0 tokens"))
        return cls(server, token, count)

    def on_text(self, delta: str) -> None:
        self.text += delta
        now = time.monotonic()
        if self.token is None or now - self._reported_at < PROGRESS_EVERY_S:
            return
        self._reported_at = now
        message = f"{self.count(self.text)} tokens"
        self.loop.call_soon_threadsafe(self._report, message)

    def _report(self, message: str) -> None:
        if self.token is not None:
            self.server.work_done_progress.report(self.token, types.WorkDoneProgressReport(message=message))

    def end(self, message: str) -> None:
        if self.token is not None:
            self.server.cancel_hooks.pop(("progress", self.token), None)
            self.server.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
            self.token = None


# ---------------------------------------------------------------- the edit, on a copy of the buffer


@dataclass(slots=True)
class EditOutcome:
    status: str  # changed | unchanged | malformed | cancelled | failed
    new_text: str | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: str = ""


def buffer_name(uri: str) -> str:
    """The file name the model sees: the document's own (its suffix tells the check it is Python),
    reduced to safe characters; `buffer.txt` for a document without one (an unsaved buffer)."""
    name = Path(unquote(urlsplit(uri).path)).name
    name = re.sub(r"[^\w.+-]", "_", name).lstrip(".")
    return name or "buffer.txt"


def edit_buffer(client: Client, text: str, name: str, instruction: str, cancel: CancelToken,
                on_text: Callable[[str], None]) -> EditOutcome:
    """One `pairline edit` turn on `text` (the client's buffer), in a temporary workspace holding a
    copy of it; the new text, or why there is none. Runs on a worker thread; never raises."""
    from pairline.assistant.coder import Coder, Event, FileState
    from pairline.assistant.workspace import Workspace

    def on_event(event: Event) -> None:
        if event.kind == "text":
            on_text(event.text)

    try:
        with tempfile.TemporaryDirectory(prefix="pairline-lsp-") as tmp:
            root = Path(tmp).resolve()
            real = root / name
            real.write_text(text, encoding="utf-8", newline="")  # byte-exact: no newline translation
            state = FileState(real, name, text, None)
            coder = Coder(client, Workspace(root, git=False, commit=False), on_event=on_event)
            result = coder.run([state], instruction, cancel=cancel)
    except Exception as err:  # noqa: BLE001 - an edit that fails is a message to the user, never a crash
        log.exception("edit failed")
        return EditOutcome("failed", errors=[str(err) or type(err).__name__])
    outcome = EditOutcome(result.status, errors=list(result.errors), notes=list(result.notes),
                          stats=result.stats.line())
    others = [p for p in result.new_texts if p != real]
    if others:  # the edit is of this document only: a block for another file is not applied
        outcome.notes.append(f"ignored changes to other files: {', '.join(p.name for p in others)}")
    if result.status == "changed":
        outcome.new_text = result.new_texts.get(real)
        if outcome.new_text is None:
            outcome.status = "unchanged"
    return outcome


def position_at(doc: TextDocument, offset: int) -> types.Position:
    """The LSP position of a character offset of the document: lines end at LF, CRLF or CR (as in
    LSP, unlike str.splitlines), columns in the position encoding agreed with the client."""
    before = doc.source[:offset]
    line = before.count("\n") + before.count("\r") - before.count("\r\n")
    line_start = max(before.rfind("\n"), before.rfind("\r")) + 1
    return types.Position(line=line, character=doc.position_codec.client_num_units(before[line_start:]))


def minimal_edit(doc: TextDocument, new: str) -> types.TextEdit:
    """The change from the document's text to `new` as one TextEdit over whole lines: the lines
    before and after the change stay untouched in the editor (its cursor and marks with them), and
    no position falls inside a line (nor between a CR and its LF)."""
    old = doc.source
    shortest = min(len(old), len(new))
    start = 0
    while start < shortest and old[start] == new[start]:
        start += 1
    start = old.rfind("\n", 0, start) + 1  # back to the start of its line (same text in both)
    same_tail = 0
    while same_tail < shortest - start and old[-1 - same_tail] == new[-1 - same_tail]:
        same_tail += 1
    end = len(old) - same_tail
    if end > 0 and old[end - 1] != "\n":  # forward to the start of the next line
        newline = old.find("\n", end)
        end = len(old) if newline < 0 else newline + 1
    new_end = len(new) - (len(old) - end)
    return types.TextEdit(range=types.Range(start=position_at(doc, start), end=position_at(doc, end)),
                          new_text=new[start:new_end])


def workspace_edit(server: PairlineLanguageServer, doc: TextDocument, new: str) -> types.WorkspaceEdit:
    edit = minimal_edit(doc, new)
    caps = server.client_capabilities.workspace
    versioned = caps is not None and caps.workspace_edit is not None and bool(caps.workspace_edit.document_changes)
    if versioned:
        ident = types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version)
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(text_document=ident, edits=[edit])])
    # a client without versioned edits: the server's own version check (run_edit) is all there is
    return types.WorkspaceEdit(changes={doc.uri: [edit]})


def _selection_note(doc: TextDocument, rng: types.Range | None, name: str) -> str:
    """Where the selection is, for the model: a partial selection says which lines to change."""
    if rng is None or rng.start == rng.end:
        return ""
    first, last = rng.start.line, rng.end.line - (1 if rng.end.character == 0 and rng.end.line > rng.start.line else 0)
    if first == 0 and last >= len(doc.lines) - 1:
        return ""  # the whole document
    return f" (in lines {first + 1}-{last + 1} of {name})"


async def on_the_model(server: PairlineLanguageServer, title: str, client: Client, cancel: CancelToken,
                       work: Callable[[Callable[[str], None]], T]) -> T:
    """Run `work(on_text)` (an edit, an explanation) on a model thread: running suggestions stop
    first, inline requests answer empty until it ends, $/cancelRequest and the progress bar's
    cancel set `cancel`, and `$/progress` reports the tokens streamed so far."""
    msg_id = server.protocol.msg_id
    if msg_id is not None:
        server.cancel_hooks[msg_id] = cancel.cancel
    server.tickets.cancel_all()  # the model is needed now
    server.busy += 1
    progress: Progress | None = None
    status = "cancelled"
    try:
        progress = await Progress.start(server, title, client.count_tokens, cancel)
        result = await asyncio.get_running_loop().run_in_executor(server.model_pool, work, progress.on_text)
        status = "cancelled" if cancel.cancelled else "done"
        return result
    except asyncio.CancelledError:
        cancel.cancel()  # the request was cancelled: stop the model's work, not just the reply
        raise
    finally:
        server.busy -= 1
        server.cancel_hooks.pop(msg_id, None)
        if progress is not None:
            progress.end(status)


async def run_edit(server: PairlineLanguageServer, uri: str, rng: types.Range | None, instruction: str) -> dict:
    """The `pairline.editSelection` command: the result says what happened ({"status", "applied",
    "message"}); a failure is also shown with window/showMessage."""
    doc = server.document(uri)
    if not instruction.strip():
        raise JsonRpcInvalidParams(f"{EDIT_COMMAND} needs an instruction: arguments [uri, range, instruction]")
    name = buffer_name(uri)
    # a snapshot: pygls updates the live document in place as changes arrive
    snapshot = TextDocument(uri, source=doc.source, version=doc.version, position_codec=doc.position_codec)
    client = (await server.suggester()).client
    cancel = CancelToken()
    note = _selection_note(snapshot, rng, name)
    outcome = await on_the_model(server, f"pairline: {instruction[:40]}", client, cancel, lambda on_text: edit_buffer(
        client, snapshot.source, name, instruction + note, cancel, on_text))
    return await _deliver(server, uri, snapshot, outcome, cancel)


async def _deliver(server: PairlineLanguageServer, uri: str, snapshot: TextDocument, outcome: EditOutcome,
                   cancel: CancelToken) -> dict:
    def answer(status: str, message: str, kind: types.MessageType | None, applied: bool = False) -> dict:
        if kind is not None:
            server.show(f"pairline: {message}", kind)
        return {"status": status, "applied": applied, "message": message, "errors": outcome.errors,
                "notes": outcome.notes, "stats": outcome.stats}

    if cancel.cancelled or outcome.status == "cancelled":
        return answer("cancelled", "edit cancelled", None)
    if outcome.status in ("malformed", "failed"):
        detail = "; ".join(outcome.errors) or "no usable answer"
        return answer(outcome.status, f"the edit failed: {detail}", types.MessageType.Error)
    if outcome.new_text is None:
        return answer("unchanged", "the model changed nothing", types.MessageType.Info)
    live = server.workspace.text_documents.get(unquote(uri))
    if live is None or live.version != snapshot.version:
        return answer("stale", "the document changed while pairline was editing it; nothing was applied",
                      types.MessageType.Warning)
    params = types.ApplyWorkspaceEditParams(edit=workspace_edit(server, snapshot, outcome.new_text),
                                            label="pairline edit")
    try:
        reply = await server.workspace_apply_edit_async(params)
    except Exception as err:  # noqa: BLE001 - the client answered with an error
        return answer("refused", f"the editor did not apply the edit: {err}", types.MessageType.Warning)
    if not reply.applied:
        why = reply.failure_reason or "the document changed meanwhile"
        return answer("refused", f"the editor refused the edit: {why}", types.MessageType.Warning)
    return answer("applied", f"edited ({outcome.stats})", None, applied=True)


# ---------------------------------------------------------------- explain


def explain_text(client: Client, code: str, name: str, cancel: CancelToken, on_text: Callable[[str], None]) -> str:
    messages = [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": f"Explain what this code from {name} does.\n\n```\n{code}\n```"},
    ]
    reply = client.stream(messages, max_tokens=EXPLAIN_MAX_TOKENS, cancel=cancel)
    try:
        for delta in reply:
            on_text(delta)
    finally:
        reply.close()
    return reply.text.strip()


async def run_explain(server: PairlineLanguageServer, uri: str, rng: types.Range | None, show: bool) -> dict:
    doc = server.document(uri)
    source = doc.source
    if rng is None:
        code = source
    elif rng.start == rng.end:  # no selection: the line at the cursor
        lines = doc.lines
        code = lines[rng.start.line] if rng.start.line < len(lines) else ""
    else:
        code = source[doc.offset_at_position(rng.start): doc.offset_at_position(rng.end)]
    if not code.strip():
        raise JsonRpcInvalidParams("nothing to explain: the selection is empty")
    client = (await server.suggester()).client
    cancel = CancelToken()
    try:
        text = await on_the_model(server, "pairline: explain", client, cancel,
                                  lambda on_text: explain_text(client, code, buffer_name(uri), cancel, on_text))
    except Exception as err:  # noqa: BLE001 - the model failed: an error answer, the server stays up
        log.exception("explain failed")
        raise request_failed(f"pairline could not explain: {err}") from None
    if show and text:
        server.show(text)
    return {"explanation": text}


# ---------------------------------------------------------------- registration


def code_actions(server: PairlineLanguageServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    uri = params.text_document.uri
    server.document(uri)  # an unknown or oversized document is an error, as for every request
    where = range_json(params.range)
    options = server.initialization_options
    actions = []
    if options.get("promptForInstruction"):
        title = "Edit selection with pairline…"
        actions.append(types.CodeAction(title=title, kind=types.CodeActionKind.RefactorRewrite,
                                        command=types.Command(title=title, command=EDIT_COMMAND,
                                                              arguments=[uri, where])))
    presets = options.get("editPresets")
    if not isinstance(presets, list):
        presets = [] if options.get("promptForInstruction") else list(DEFAULT_PRESETS)
    for instruction in presets:
        if isinstance(instruction, str) and instruction.strip():
            title = f"pairline: {instruction}"
            actions.append(types.CodeAction(title=title, kind=types.CodeActionKind.RefactorRewrite,
                                            command=types.Command(title=title, command=EDIT_COMMAND,
                                                                  arguments=[uri, where, instruction])))
    title = "Explain with pairline"
    actions.append(types.CodeAction(title=title, command=types.Command(title=title, command=EXPLAIN_COMMAND,
                                                                       arguments=[uri, where])))
    return actions


def register(server: PairlineLanguageServer) -> None:
    kinds = [types.CodeActionKind.RefactorRewrite]

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(code_action_kinds=kinds))
    def code_action(params: types.CodeActionParams) -> list[types.CodeAction]:
        return code_actions(server, params)

    # pygls hands the server to a first parameter named `ls`, and a command's arguments, untouched,
    # to `*args` (they are checked here, with errors that say what is expected)
    @server.command(EDIT_COMMAND)
    async def edit_selection(ls: LanguageServer, *args: object) -> dict:
        uri, rng, rest = parse_arguments(EDIT_COMMAND, args, 3)
        instruction = rest[0] if rest else None
        if not isinstance(instruction, str):
            raise JsonRpcInvalidParams(
                f"{EDIT_COMMAND} needs an instruction as its third argument (a client that can prompt asks the "
                "user first; see docs/editor.md)"
            )
        return await run_edit(server, uri, rng, instruction)

    @server.command(EXPLAIN_COMMAND)
    async def explain(ls: LanguageServer, *args: object) -> dict:
        uri, rng, rest = parse_arguments(EXPLAIN_COMMAND, args, 3)
        show = not (rest and isinstance(rest[0], dict) and rest[0].get("show") is False)
        return await run_explain(server, uri, rng, show)

    @server.feature(types.WINDOW_WORK_DONE_PROGRESS_CANCEL)
    def progress_cancel(params: types.WorkDoneProgressCancelParams) -> None:
        hook = server.cancel_hooks.pop(("progress", params.token), None)
        if hook is not None:
            hook()

