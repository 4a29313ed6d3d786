"""`pairline chat`: the command, and the terminal it runs in (prompt_toolkit, or a pipe). The
session's logic is `chat.ChatSession`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable

from pairline.assistant.chat import ChatSession
from pairline.assistant.client import Client, open_client
from pairline.assistant.coder import load_file
from pairline.assistant.diffs import diff_line_style
from pairline.assistant.workspace import Workspace
from pairline.errors import PairlineError

# --------------------------------------------------------------------------- the terminal


class LineWriter:
    """Streams text to the terminal a line at a time: prompt_toolkit redraws the prompt under
    each complete line, so partial lines would tear. Colours diff lines."""

    def __init__(self, console) -> None:
        self.console = console
        self.partial = ""
        self.lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self.lock:
            self.partial += text
            while "\n" in self.partial:
                line, self.partial = self.partial.split("\n", 1)
                self._line(line)

    def flush(self) -> None:
        with self.lock:
            if self.partial:
                line, self.partial = self.partial, ""
                self._line(line)

    def _line(self, line: str) -> None:
        from rich.text import Text

        style = "dim" if line.startswith("[") and line.endswith("]") else diff_line_style(line)
        self.console.print(Text(line, style=style), soft_wrap=True, highlight=False)


class DraftPoster:
    """Hands what the user is typing to `post` (`ChatSession.ahead`, which has it prefilled) once
    the text has been still for `delay` seconds, on its own thread: the terminal's thread only
    records the text, so typing never waits for a file read, a tokenization or a prefill. A newer
    text replaces one not yet posted."""

    def __init__(self, post: Callable[[str], object], delay: float = 0.04) -> None:
        self.post = post
        self.delay = delay
        self._cv = threading.Condition()
        self._text: str | None = None  # waiting to be posted
        self._due = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pairline-draft", daemon=True)
        self._thread.start()

    def changed(self, text: str) -> None:
        """The draft is now `text` (called on the terminal's thread: returns at once)."""
        with self._cv:
            self._text = text
            self._due = time.monotonic() + self.delay
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=2)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed:
                    if self._text is None:
                        self._cv.wait()
                        continue
                    left = self._due - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if self._closed:
                    return
                text, self._text = self._text, None
            with contextlib.suppress(Exception):  # a head start only: never worth breaking the chat
                self.post(text)


async def run_repl(session: ChatSession, writer: LineWriter) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("escape", eager=True)
    def _(event) -> None:
        if session.busy:
            threading.Thread(target=session.interrupt, daemon=True).start()

    prompt = PromptSession(key_bindings=keys)
    # prefill ahead: the files now (an empty draft), then the draft as the user types it
    drafts = DraftPoster(session.ahead)
    prompt.default_buffer.on_text_changed += lambda buffer: drafts.changed(buffer.text)
    drafts.changed("")
    try:
        while True:
            try:
                line = await prompt.prompt_async("pairline> ")
            except KeyboardInterrupt:
                drafts.changed("")  # the line was dropped (the buffer's reset says nothing)
                if session.busy:
                    await asyncio.to_thread(session.interrupt)
                    writer.flush()
                continue
            except EOFError:
                break
            drafts.changed("")  # the line is taken: the draft starts over (a pending one is not posted)
            try:
                if line.strip().startswith("/") or session.busy:
                    await asyncio.to_thread(session.submit, line)
                else:
                    session.submit(line)
            except EOFError:
                break
    finally:
        drafts.close()
    if session.busy:
        session.interrupt(quiet=True)
    writer.flush()


def run_plain(session: ChatSession, writer: LineWriter) -> None:
    """No terminal (a pipe): one line at a time, each turn to the end."""
    for line in sys.stdin:
        try:
            session.submit(line)
        except EOFError:
            break
        session.wait()
        writer.flush()


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pairline.engine.load import add_runtime_option
    from pairline.models.registry import DEFAULT_DEEP, DEFAULT_REALTIME

    parser = subparsers.add_parser(
        "chat",
        help="real-time REPL: streamed edits, interrupt (Ctrl-C/Esc), steer, /undo, /test",
        description="Chat with the model about FILE(s); each message is an edit instruction (end it with ? to "
        "ask a question). Ctrl-C or Esc interrupts; typing while it answers steers it. /help inside.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="files to put in the chat")
    parser.add_argument("--model", default=DEFAULT_REALTIME, help=f"model name or path (default: {DEFAULT_REALTIME})")
    parser.add_argument("--server", default=None, metavar="URL", help="a running `pairline serve` (http://HOST:PORT or ws://...)")
    add_runtime_option(parser)
    parser.add_argument("--no-commit", action="store_true", help="in a git repository, do not commit edits")
    parser.add_argument("--root", default=None, metavar="DIR", help="workspace root (default: git repo or cwd)")
    parser.add_argument("--test-cmd", default="pytest -q", metavar="CMD", help="what /test runs (default: pytest -q)")
    parser.add_argument("--max-tokens", type=int, default=1024, metavar="N", help="cap on each answer (default 1024)")
    parser.add_argument("--ctx", type=int, default=8192, metavar="N", help="context size in tokens (default 8192)")
    parser.add_argument("--deep-model", default=DEFAULT_DEEP, metavar="NAME",
                        help=f"the model /deep runs on (default: {DEFAULT_DEEP}; with --server: the deep tier)")
    parser.set_defaults(func=cmd_chat)
    return parser


def _open_deep(args: argparse.Namespace, chat_client: Client) -> Client:
    """The deep tier for /deep: a router's deep mode with --server (a plain `pairline serve` has no
    tiers: its one model then), else the deep model in this process (the chat's own if the same)."""
    from pairline.errors import notice

    if args.server:
        try:
            return open_client(args.deep_model, server=args.server, mode="deep")
        except PairlineError as err:
            notice(f"{err}; /deep runs on the server's model")
            return open_client(args.deep_model, server=args.server)
    if args.deep_model == args.model:
        return chat_client
    return open_client(args.deep_model, n_ctx=max(args.ctx, 8192), runtime=args.runtime)


def cmd_chat(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.max_tokens < 1:
        raise PairlineError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.ctx < 1024:
        raise PairlineError(f"--ctx must be at least 1024, got {args.ctx}")
    ws = Workspace.open(args.root, commit=not args.no_commit)
    states = [load_file(ws, f) for f in args.files]
    missing = [s.shown for s in states if s.text is None]
    if missing:
        raise PairlineError(f"{', '.join(missing)} does not exist")
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[dim]loading {args.server or args.model}…[/]")
    client = open_client(args.model, n_ctx=args.ctx, server=args.server, runtime=args.runtime)
    writer = LineWriter(console)
    session = ChatSession(
        client,
        ws,
        writer,
        test_cmd=args.test_cmd,
        max_tokens=args.max_tokens,
        files=[s.real for s in states],
        open_client=lambda name: open_client(name, n_ctx=args.ctx, server=args.server, runtime=args.runtime),
        open_deep=lambda: _open_deep(args, client),
    )
    where = f"git repository {ws.root}" if ws.git else f"{ws.root} (not git: backups kept for /undo)"
    names = ", ".join(s.shown for s in states) or "none (/add FILE)"
    console.print(
        f"[dim]pairline chat · {client.model_name} (loaded in {client.load_s:.1f} s) · {where}\n"
        f"files: {names} · /help for commands · Ctrl-C or Esc interrupts · type to steer[/]"
    )
    if not sys.stdin.isatty():
        run_plain(session, writer)
        return 0
    from prompt_toolkit.patch_stdout import patch_stdout

    with patch_stdout(raw=True):
        asyncio.run(run_repl(session, writer))
    return 0
