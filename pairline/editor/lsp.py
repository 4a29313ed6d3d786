"""`pairline lsp`: a language server on stdio for any editor (docs/editor.md).

What it serves:
- `textDocument/inlineCompletion` (LSP 3.18): the text before the cursor and after it go to the
  suggestion engine (`assistant/suggest.py`); its text is inserted at the cursor. Each request waits
  `debounce_ms` and is answered with an empty list if a newer request or change for that document
  arrived meanwhile: a suggestion is never computed, nor returned, for a stale position. A newer
  request or change cancels the older one's generation at once, and `$/cancelRequest` stops the
  model's work, not just the reply.
- code actions and the commands `pairline.editSelection` / `pairline.explain` (`editor/actions.py`).

The documents are the client's buffers (pygls keeps them, full or incremental sync): nothing here
reads or writes the user's files. Bad input (a body that is not JSON, params that do not parse, an
unknown document, a document over the size limit) is answered with a JSON-RPC error and the server
keeps serving. Everything but LSP goes to stderr (`editor/cli.py` also points fd 1 at stderr, so a
stray print from a native library cannot corrupt the stream).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument

from pairline import __version__
from pairline.editor import actions
from pairline.editor.errors import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, request_failed
from pairline.errors import PairlineError

if TYPE_CHECKING:
    from pairline.assistant.suggest import Suggester, Suggestion

log = logging.getLogger("pairline.lsp")

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LspConfig:
    """What `pairline lsp`'s options set (editor/cli.py)."""

    model: str
    server: str | None = None  # a running `pairline serve` to use instead of an in-process engine
    runtime: str | None = None
    debounce_ms: float = 30.0
    max_document_bytes: int = 2 * MIB  # a larger document is refused with an error, never sent to the model
    max_tokens: int = 64  # per inline suggestion


@dataclass(slots=True)
class _Unreadable:
    """A request whose params did not parse: answered under its own id instead of being dropped
    (pygls would only log it, and the client would wait for an answer forever)."""

    msg_id: Any
    method: str
    why: str
    jsonrpc: str = "2.0"


class PairlineProtocol(LanguageServerProtocol):
    """pygls' protocol, with every bad message answered and $/cancelRequest passed to the server."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as err:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = err.__cause__ or err
                return _Unreadable(data["id"], str(data["method"]), str(cause).splitlines()[0][:300])
            raise

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Unreadable):
            log.warning("invalid params for %s (id %r): %s", message.method, message.msg_id, message.why)
            self._send_error(message.msg_id, INVALID_PARAMS, f"invalid params for {message.method}: {message.why}")
            return
        if message is None or isinstance(message, dict | list | str | int | float | bool):
            # JSON, but not a JSON-RPC message (no "jsonrpc" member, or not an object)
            msg_id = message.get("id") if isinstance(message, dict) else None
            self._send_error(msg_id, INVALID_REQUEST, 'not a JSON-RPC 2.0 message (an object with "jsonrpc": "2.0")')
            return
        super().handle_message(message)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        # pygls cancels the request's asyncio task; a command runs in a task of its own (pygls wraps
        # it), so the server's own hook stops the model's work for those
        server = self._server
        if isinstance(server, PairlineLanguageServer):
            server.cancel_request(msg_id)
        super()._handle_cancel_notification(msg_id)

    def _send_error(self, msg_id: Any, code: int, message: str) -> None:
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


class Tickets:
    """Per document, the number of its newest inline request or change: a request whose number is
    no longer the newest is stale. Also the suggestion running for each document, to cancel it the
    moment it goes stale. Touched only on the event loop's thread."""

    def __init__(self) -> None:
        self._newest: dict[str, int] = {}
        self._running: dict[str, Suggestion] = {}

    def take(self, uri: str) -> int:
        """A new request or change for `uri`: every older one is stale, and its generation stops."""
        number = self._newest.get(uri, 0) + 1
        self._newest[uri] = number
        running = self._running.pop(uri, None)
        if running is not None:
            running.cancel()
        return number

    def is_newest(self, uri: str, number: int) -> bool:
        return self._newest.get(uri) == number

    def running(self, uri: str, suggestion: Suggestion | None) -> None:
        if suggestion is None:
            self._running.pop(uri, None)
        else:
            self._running[uri] = suggestion

    def running_now(self, uri: str) -> Suggestion | None:
        return self._running.get(uri)

    def forget(self, uri: str) -> None:
        self.take(uri)
        self._newest.pop(uri, None)

    def cancel_all(self) -> None:
        for uri in list(self._running):
            self.take(uri)


class PairlineLanguageServer(LanguageServer):
    """The server: pygls' LanguageServer with pairline's features registered (`build_server`)."""

    def __init__(self, config: LspConfig, open_suggester: Callable[[], Suggester] | None = None) -> None:
        super().__init__("pairline", __version__, protocol_cls=PairlineProtocol)
        self.config = config
        self._open_suggester = open_suggester or self._open_default
        self._loading: concurrent.futures.Future[Suggester] | None = None
        # model work (a suggestion's deltas, an edit) blocks a thread; pygls' own pool reads stdin
        self.model_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="pairline-model")
        self.tickets = Tickets()
        self.busy = 0  # edits and explanations streaming now: inline requests answer empty meanwhile
        self.cancel_hooks: dict[Any, Callable[[], None]] = {}  # request id -> stops its model work
        self.initialization_options: dict[str, Any] = {}
        self.shutdown_requested = False
        self.newest_suggestion: Suggestion | None = None  # a newer one (any document) cancels it
        self._closed = False

    # ---------------------------------------------------------------- the model

    def _open_default(self) -> Suggester:
        from pairline.assistant.suggest import open_suggester

        cfg = self.config
        return open_suggester(model=cfg.model, server=cfg.server, runtime=cfg.runtime)

    def start_loading(self) -> None:
        """Load the model on a thread of its own, now: the editor's first request should not pay it."""
        if self._loading is not None:
            return
        future: concurrent.futures.Future[Suggester] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # running: a cancelled waiter cannot cancel the load

        def load() -> None:
            try:
                suggester = self._open_suggester()
            except BaseException as err:  # noqa: BLE001 - reported to every request that needs the model
                log.error("pairline lsp: the model could not be loaded: %s", err)
                future.set_exception(err)
            else:
                log.info("pairline lsp: model ready")
                future.set_result(suggester)

        self._loading = future
        threading.Thread(target=load, name="pairline-load", daemon=True).start()

    async def suggester(self) -> Suggester:
        self.start_loading()
        assert self._loading is not None
        try:
            return await asyncio.shield(asyncio.wrap_future(self._loading))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise request_failed(f"pairline could not load the model: {err}") from None

    def loaded(self) -> Suggester | None:
        """The suggester if it has loaded, else None (never waits)."""
        future = self._loading
        if future is None or not future.done() or future.exception() is not None:
            return None
        return future.result()

    def close(self) -> None:
        """Stop every suggestion and release the model (on shutdown; again at exit does nothing)."""
        if self._closed:
            return
        self._closed = True
        self.tickets.cancel_all()
        suggester = self.loaded()
        if suggester is not None:
            suggester.close()
        self.model_pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- documents and requests

    def document(self, uri: str) -> TextDocument:
        """The client's buffer for `uri`; an LSP error if the client has not opened it or it is too large."""
        doc = self.workspace.text_documents.get(unquote(uri))
        if doc is None:
            raise JsonRpcInvalidParams(f"unknown document {uri}: open it first (textDocument/didOpen)")
        size = len(doc.source.encode("utf-8", "surrogatepass"))
        limit = self.config.max_document_bytes
        if size > limit:
            raise request_failed(
                f"{uri} is {size / MIB:.1f} MiB; pairline lsp serves documents up to {limit / MIB:.1f} MiB "
                "(--max-document-mib)"
            )
        return doc

    def cancel_request(self, msg_id: Any) -> None:
        hook = self.cancel_hooks.pop(msg_id, None)
        if hook is not None:
            log.info("request %r cancelled by the client", msg_id)
            hook()

    def report_server_error(self, error: Exception, source: Any) -> None:
        if isinstance(error, json.JSONDecodeError):
            # a body that is not JSON has no id to answer under: JSON-RPC answers it with a null id
            log.warning("a message that is not JSON: %s", error)
            self.protocol._send_data(
                {"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": f"not JSON: {error}"}}
            )
            return
        super().report_server_error(error, source)

    def show(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))


def _drain(suggestion: Suggestion) -> None:
    for _ in suggestion:
        pass


def _offset(doc: TextDocument, position: types.Position) -> int:
    lines = doc.lines
    if position.line > len(lines) or position.line < 0 or position.character < 0:
        raise JsonRpcInvalidParams(
            f"position {position.line}:{position.character} is outside {doc.uri} ({len(lines)} lines)"
        )
    return min(doc.offset_at_position(position), len(doc.source))


def build_server(config: LspConfig, open_suggester: Callable[[], Suggester] | None = None) -> PairlineLanguageServer:
    """The language server with every feature registered. `open_suggester` replaces the real
    engine (tests of the debounce policy)."""
    server = PairlineLanguageServer(config, open_suggester)

    @server.feature(types.INITIALIZE)
    def initialize(params: types.InitializeParams) -> None:
        options = params.initialization_options
        server.initialization_options = options if isinstance(options, dict) else {}
        server.start_loading()  # if the command line has not already

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None:
        uri = params.text_document.uri
        server.tickets.take(uri)
        size = len(params.text_document.text.encode("utf-8", "surrogatepass"))
        if size > config.max_document_bytes:
            # a notification has no answer: say it once, and each request on it gets the error
            server.show(
                f"pairline: {uri} is {size / MIB:.1f} MiB, over the {config.max_document_bytes / MIB:.1f} MiB "
                "limit; no suggestions or edits for it",
                types.MessageType.Warning,
            )

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        server.tickets.take(uri)  # every pending or running suggestion for this document is stale now
        suggester = server.loaded()
        last = params.content_changes[-1] if params.content_changes else None
        if suggester is None or server.busy or not isinstance(last, types.TextDocumentContentChangePartial):
            return
        doc = server.workspace.text_documents.get(unquote(uri))
        if doc is None or len(doc.source) > config.max_document_bytes:
            return
        try:
            # where the cursor most likely is: after what was just typed; prefill that ahead
            cursor = _offset(doc, last.range.start) + len(last.text)
            server.newest_suggestion = None  # warm() cancels whatever suggestion runs, in any document
            suggester.warm(doc.source[:cursor], doc.source[cursor:])
        except Exception as err:  # noqa: BLE001 - a head start only: never fail a change over it
            log.debug("warm skipped: %s", err)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams) -> None:
        server.tickets.forget(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(params: types.InlineCompletionParams) -> list[types.InlineCompletionItem]:
        return await suggest(server, params)

    @server.feature(types.SHUTDOWN)
    def shutdown(*_: Any) -> None:
        server.shutdown_requested = True
        server.close()

    actions.register(server)
    return server


async def suggest(server: PairlineLanguageServer, params: types.InlineCompletionParams) -> list[
    types.InlineCompletionItem
]:
    """One inline completion: debounced, dropped when stale, cancelled with its request."""
    config = server.config
    uri = params.text_document.uri
    server.document(uri)  # an unknown or oversized document is an error now, not after the wait
    number = server.tickets.take(uri)
    await asyncio.sleep(config.debounce_ms / 1000)
    if not server.tickets.is_newest(uri, number):
        return []  # a newer request or change arrived while this one waited
    suggester = await server.suggester()
    if not server.tickets.is_newest(uri, number) or server.busy:
        return []
    doc = server.document(uri)  # the text as of this request: no change arrived since (the ticket says so)
    # the whole text before and after the cursor: the engine cuts its own window (engine/fim.py), on
    # line steps that stay put while the user types, so that the model's cached prompt stays valid
    cursor = _offset(doc, params.position)
    prefix, suffix = doc.source[:cursor], doc.source[cursor:]
    try:
        suggestion = suggester.suggest(prefix, suffix, max_tokens=config.max_tokens)
    except PairlineError as err:  # a prompt the context cannot hold, a server that refuses
        raise request_failed(f"no suggestion: {err}") from None
    server.tickets.running(uri, suggestion)
    server.newest_suggestion = suggestion
    try:
        await asyncio.get_running_loop().run_in_executor(server.model_pool, _drain, suggestion)
    except asyncio.CancelledError:
        suggestion.cancel()  # $/cancelRequest (or shutdown): stop the model, not just the reply
        log.info("inline completion for %s cancelled after %d characters", uri, len(suggestion.text))
        raise
    except Exception as err:
        log.exception("suggestion failed")
        raise request_failed(f"the suggestion failed: {err}") from None
    finally:
        if server.tickets.running_now(uri) is suggestion:
            server.tickets.running(uri, None)
    # Stale or cut short by a newer request: an empty answer. The server's own tickets decide, since
    # a newer request for another document also cancels this one (one suggester serves them all).
    if not server.tickets.is_newest(uri, number) or server.newest_suggestion is not suggestion:
        log.debug("inline completion for %s went stale", uri)
        return []
    if not suggestion.text:
        return []
    at = types.Range(start=params.position, end=params.position)
    return [types.InlineCompletionItem(insert_text=suggestion.text, range=at)]
