"""`pairline chat`: the real-time REPL.

Each message is an edit instruction for the files in the chat (search/replace blocks, applied and
committed when the turn ends; a message ending in "?" is a question and gets a prose answer). The
answer streams while the prompt stays live:

- Ctrl-C or Esc interrupts: the cancel lands within one decode step; the partial answer stays in the
  history and nothing of the turn is written (files are written only when a turn completes);
- typing a message while an answer streams steers it: the answer is interrupted, kept, and the new
  message follows it in the same conversation. With the in-process engine the conversation's KV
  is still cached, so only the new message is prefilled (no history resend);
- /add /drop /clear /diff /undo /test /fix /deep /model /help /quit.

`ChatSession` holds the logic (testable without a terminal); `run_repl` is the prompt_toolkit shell.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pairline.assistant import prompts
from pairline.assistant.client import Client, open_client
from pairline.assistant.coder import Coder, Event, FileState, load_file
from pairline.assistant.edit_cmd import diff_counts, unified_diff
from pairline.assistant.workspace import FileChangedError, Workspace
from pairline.engine.generate import CancelToken
from pairline.errors import PairlineError

HELP = """\
Type an instruction to edit the files in the chat; end it with "?" to ask a question instead.
While an answer streams: Ctrl-C or Esc interrupts it; typing a new message steers it.
  /add FILE...     add files to the chat
  /drop [FILE...]  remove files (all if none named)
  /clear           forget the conversation (the files stay in the chat)
  /diff            the diff of the last applied edit
  /undo            undo the last applied edit (exact bytes; in git, drops or reverts its commit)
  /test [CMD]      run the tests (only ever when you ask); default command: {test_cmd}
  /fix [NOTE]      send the last /test output to the model and ask for a fix
  /model [NAME]    show the model, or switch to another
  /deep            hand the task to the deep tier
  /help            this help
  /quit            leave (Ctrl-D too)"""

ASK_SYSTEM = "You are a concise, expert programming assistant. Answer briefly and precisely."
MAX_ASK_TOKENS = 512
TEST_OUTPUT_CHARS = 6000  # the tail of the test output that goes to the model on /fix


@dataclass(slots=True)
class Turn:
    thread: threading.Thread
    cancel: CancelToken
    started: float
    instruction: str


@dataclass
class ChatSession:
    """A chat over some files: history, the turn in flight, commands. `write` receives all output
    (text, already newline-terminated or streamed deltas); `style` colours a line for the terminal."""

    client: Client
    ws: Workspace
    write: Callable[[str], None]
    test_cmd: str = "pytest -q"
    max_tokens: int = 1024  # per answer
    files: list[Path] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # the conversation after the system prompt and example
    shown: dict[Path, str] = field(default_factory=dict)  # the text of each file as the model last saw it
    last_test: str | None = None
    turn: Turn | None = None
    open_client: Callable[[str], Client] = field(default=lambda name: open_client(name))
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------- input

    @property
    def busy(self) -> bool:
        return self.turn is not None and self.turn.thread.is_alive()

    def submit(self, line: str) -> None:
        """A line typed at the prompt: a command, a new instruction, or (while busy) a steer."""
        text = line.strip()
        if not text:
            return
        if text.startswith("/"):
            self.command(text)
            return
        if self.busy:
            self.write("\n[steering]\n")
            self.interrupt(quiet=True)
        self.start_turn(text)

    def interrupt(self, quiet: bool = False) -> float | None:
        """Cancel the turn in flight and wait for it; returns the seconds the cancel took to land."""
        turn = self.turn
        if turn is None or not turn.thread.is_alive():
            return None
        t0 = time.perf_counter()
        turn.cancel.cancel()
        turn.thread.join()
        landed = time.perf_counter() - t0
        if not quiet:
            ms = landed * 1000
            self.write(f"\n[interrupted: stopped in {ms:.0f} ms; the partial answer is kept, nothing written]\n")
        return landed

    def wait(self) -> None:
        if self.turn is not None:
            self.turn.thread.join()

    # ---------------------------------------------------------------- turns

    def start_turn(self, instruction: str) -> None:
        cancel = CancelToken()
        thread = threading.Thread(target=self._turn, args=(instruction, cancel), daemon=True)
        self.turn = Turn(thread, cancel, time.perf_counter(), instruction)
        thread.start()

    def _file_states(self) -> list[FileState]:
        states = []
        for real in list(self.files):
            try:
                states.append(load_file(self.ws, real))
            except PairlineError as err:
                self.write(f"[dropping {self.ws.rel(real)}: {err}]\n")
                self.files.remove(real)
        return states

    def _user_message(self, states: list[FileState], instruction: str) -> str:
        """The files the model has not seen as they are now, then the instruction."""
        fresh = {f.shown: f.model_text for f in states if self.shown.get(f.real) != f.model_text}
        for f in states:
            self.shown[f.real] = f.model_text
        return prompts.user_message(prompts.files_message(fresh) if fresh else "", instruction)

    def base_messages(self) -> list[dict]:
        p = prompts.prompt_for(self.client.family)
        return [{"role": "system", "content": p.system}, *(p.example or ())]

    def _turn(self, instruction: str, cancel: CancelToken) -> None:
        try:
            self._run_turn(instruction, cancel)
        except PairlineError as err:
            self.write(f"\n[error: {err}]\n")
        except Exception as err:  # a bug must not kill the REPL or lose the user's files
            self.write(f"\n[internal error: {type(err).__name__}: {err}; nothing written]\n")

    def _run_turn(self, instruction: str, cancel: CancelToken) -> None:
        states = self._file_states()
        asking = instruction.rstrip().endswith("?") or not states
        if asking:
            self._ask(instruction, cancel)
            return
        user = {"role": "user", "content": self._user_message(states, instruction)}
        messages = [*self.base_messages(), *self.history, user]
        coder = Coder(self.client, self.ws, on_event=self._on_event)
        result = coder.run_blocks(states, messages, cancel=cancel, max_tokens=self.max_tokens)
        self.write("\n" if result.answer and not result.answer.endswith("\n") else "")
        with self.lock:
            self.history += [user, {"role": "assistant", "content": result.answer}]
        stats = result.stats
        if result.status == "cancelled":
            self.readout(stats.line())
            return
        if result.status == "malformed":
            self.write("[the edit did not apply; nothing written]\n")
            for err in result.errors:
                self.write(f"  {err}\n")
        elif result.status == "unchanged":
            self.write("[no changes]\n")
        else:
            self._write_result(result, instruction)
        self.readout(stats.line())

    def _write_result(self, result, instruction: str) -> None:
        writes = [(real, new, result.files[real].fingerprint) for real, new in result.new_texts.items()]
        try:
            entry = self.ws.apply(writes, instruction)
        except FileChangedError as err:
            self.write(f"[{err}; the file will be re-read and shown to the model next turn]\n")
            for real in result.new_texts:
                self.shown.pop(real, None)
            return
        for real, new in result.new_texts.items():
            state = result.files[real]
            self._print_diff(unified_diff(state.text or "", new, state.shown))
            if real not in self.files:
                self.files.append(real)
        where = f" (commit {entry.commit[:10]})" if entry.commit else ""
        self.write(f"[applied to {', '.join(c.path for c in entry.changes)}{where}; /undo to revert]\n")

    def _ask(self, question: str, cancel: CancelToken) -> None:
        user = {"role": "user", "content": question}
        messages = [{"role": "system", "content": ASK_SYSTEM}, *self.history, user]
        reply = self.client.stream(messages, max_tokens=min(MAX_ASK_TOKENS, self.max_tokens), cancel=cancel)
        for delta in reply:
            self.write(delta)
        self.write("\n")
        with self.lock:
            self.history += [user, {"role": "assistant", "content": reply.text}]
        t = reply.timings
        ttft = f"{t.ttft_s:.2f} s" if t.ttft_s else "–"
        self.readout(
            f"TTFT {ttft} · {t.decode_tokens_per_s:.0f} tok/s · {reply.usage.accepted_draft_tokens} draft tokens "
            f"accepted · {reply.tokens} tokens"
        )

    def _on_event(self, e: Event) -> None:
        if e.kind == "text":
            self.write(e.text)
        elif e.kind == "error":
            self.write(f"\n[edit failed: {e.text}]\n")
        elif e.kind == "retry":
            self.write("\n[retrying once with the errors]\n")

    def readout(self, line: str) -> None:
        self.write(f"[{line}]\n")

    def _print_diff(self, lines: list[str]) -> None:
        self.write("\n".join(lines) + "\n")

    # ---------------------------------------------------------------- commands

    def command(self, text: str) -> None:
        try:
            parts = shlex.split(text)
        except ValueError as err:
            self.write(f"[{err}]\n")
            return
        name, args = parts[0].lower(), parts[1:]
        handler = COMMANDS.get(name)
        if handler is None:
            self.write(f"[unknown command {name}; /help lists them]\n")
            return
        if self.busy and name not in ("/help", "/diff", "/model"):
            self.interrupt()
        try:
            handler(self, args, text)
        except PairlineError as err:
            self.write(f"[{err}]\n")

    def cmd_add(self, args: list[str], _raw: str) -> None:
        if not args:
            raise PairlineError("/add needs file names")
        for name in args:
            state = load_file(self.ws, name)
            if state.text is None:
                raise PairlineError(f"{name} does not exist (to create a file, ask for it in a message)")
            if state.real not in self.files:
                self.files.append(state.real)
            self.write(f"[added {state.shown}]\n")

    def cmd_drop(self, args: list[str], _raw: str) -> None:
        if not args:
            self.files.clear()
            self.write("[dropped all files]\n")
            return
        for name in args:
            real = self.ws.resolve(name)
            if real in self.files:
                self.files.remove(real)
                self.write(f"[dropped {self.ws.rel(real)}]\n")
            else:
                self.write(f"[{name} is not in the chat]\n")

    def cmd_clear(self, _args: list[str], _raw: str) -> None:
        with self.lock:
            self.history.clear()
            self.shown.clear()
        self.write("[conversation cleared]\n")

    def cmd_diff(self, _args: list[str], _raw: str) -> None:
        if not self.ws.history:
            self.write("[no edits yet]\n")
            return
        for c in self.ws.history[-1].changes:
            before = c.before.decode("utf-8", "replace") if c.before is not None else ""
            lines = unified_diff(before, c.after.decode("utf-8", "replace"), c.path)
            added, removed = diff_counts(lines)
            self._print_diff(lines)
            self.write(f"[{c.path}: +{added} -{removed}]\n")

    def cmd_undo(self, _args: list[str], _raw: str) -> None:
        entry = self.ws.undo()
        how = f"; dropped commit {entry.commit[:10]}" if entry.commit else ""
        for c in entry.changes:
            self.shown.pop(self.ws.root / c.path, None)
        self.write(f"[undid the edit of {', '.join(c.path for c in entry.changes)}{how}]\n")

    def cmd_test(self, args: list[str], raw: str) -> None:
        cmd = raw.split(None, 1)[1] if args else self.test_cmd
        self.write(f"[running: {cmd}]\n")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, shell=True, cwd=self.ws.root, capture_output=True, text=True, timeout=600)
            output = (proc.stdout + proc.stderr).rstrip()
            code = proc.returncode
        except subprocess.TimeoutExpired:
            output, code = "(timed out after 600 s)", -1
        self.last_test = f"$ {cmd}\n{output}\n(exit code {code})"
        tail = "\n".join(output.splitlines()[-30:])
        verdict = "passed" if code == 0 else "failed"
        self.write(f"{tail}\n[tests {verdict} (exit {code}) in {time.perf_counter() - t0:.1f} s")
        self.write("; /fix sends this output to the model]\n" if code != 0 else "]\n")

    def cmd_fix(self, args: list[str], _raw: str) -> None:
        if self.last_test is None:
            raise PairlineError("no test output yet; run /test first")
        note = " ".join(args)
        output = self.last_test[-TEST_OUTPUT_CHARS:]
        ask = f"The tests fail with this output:\n```\n{output}\n```\nFix the code so they pass. {note}"
        self.start_turn(ask.strip())

    def cmd_model(self, args: list[str], _raw: str) -> None:
        if not args:
            self.write(f"[model: {self.client.model_name}]\n")
            return
        self.write(f"[loading {args[0]}…]\n")
        self.client = self.open_client(args[0])
        self.shown.clear()  # a new model has seen nothing
        self.write(f"[model: {self.client.model_name}, loaded in {self.client.load_s:.1f} s]\n")

    def cmd_deep(self, _args: list[str], _raw: str) -> None:
        self.write(
            "[the deep tier is not available yet: it arrives with the two-tier router (`pairline route`). "
            f"Staying on the real-time model, {self.client.model_name}.]\n"
        )

    def cmd_help(self, _args: list[str], _raw: str) -> None:
        self.write(HELP.format(test_cmd=self.test_cmd) + "\n")

    def cmd_quit(self, _args: list[str], _raw: str) -> None:
        raise EOFError


COMMANDS: dict[str, Callable[[ChatSession, list[str], str], None]] = {
    "/add": ChatSession.cmd_add,
    "/drop": ChatSession.cmd_drop,
    "/clear": ChatSession.cmd_clear,
    "/diff": ChatSession.cmd_diff,
    "/undo": ChatSession.cmd_undo,
    "/test": ChatSession.cmd_test,
    "/fix": ChatSession.cmd_fix,
    "/model": ChatSession.cmd_model,
    "/deep": ChatSession.cmd_deep,
    "/help": ChatSession.cmd_help,
    "/quit": ChatSession.cmd_quit,
    "/exit": ChatSession.cmd_quit,
}


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

        style = ""
        if line.startswith("[") and line.endswith("]"):
            style = "dim"
        elif line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("@@"):
            style = "cyan"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        self.console.print(Text(line, style=style), soft_wrap=True, highlight=False)


async def run_repl(session: ChatSession, writer: LineWriter) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("escape", eager=True)
    def _(event) -> None:
        if session.busy:
            threading.Thread(target=session.interrupt, daemon=True).start()

    prompt = PromptSession(key_bindings=keys)
    while True:
        try:
            line = await prompt.prompt_async("pairline> ")
        except KeyboardInterrupt:
            if session.busy:
                await asyncio.to_thread(session.interrupt)
                writer.flush()
            continue
        except EOFError:
            break
        try:
            if line.strip().startswith("/") or session.busy:
                await asyncio.to_thread(session.submit, line)
            else:
                session.submit(line)
        except EOFError:
            break
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
    from pairline.models.registry import DEFAULT_REALTIME

    parser = subparsers.add_parser(
        "chat",
        help="real-time REPL: streamed edits, interrupt (Ctrl-C/Esc), steer, /undo, /test",
        description="Chat with the model about FILE(s); each message is an edit instruction (end it with ? to "
        "ask a question). Ctrl-C or Esc interrupts; typing while it answers steers it. /help inside.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="files to put in the chat")
    parser.add_argument("--model", default=DEFAULT_REALTIME, help=f"model name or path (default: {DEFAULT_REALTIME})")
    parser.add_argument("--server", default=None, metavar="URL", help="a running `pairline serve` (ws://...)")
    parser.add_argument(
        "--runtime", default="auto", choices=["auto", "torch", "llamacpp"],
        help="auto: llama.cpp on the CPU for a GGUF when installed, else pairline's torch model",
    )
    parser.add_argument("--no-commit", action="store_true", help="in a git repository, do not commit edits")
    parser.add_argument("--root", default=None, metavar="DIR", help="workspace root (default: git repo or cwd)")
    parser.add_argument("--test-cmd", default="pytest -q", metavar="CMD", help="what /test runs (default: pytest -q)")
    parser.add_argument("--max-tokens", type=int, default=1024, metavar="N", help="cap on each answer (default 1024)")
    parser.add_argument("--ctx", type=int, default=8192, metavar="N", help="context size in tokens (default 8192)")
    parser.set_defaults(func=cmd_chat)
    return parser


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
    console.print(f"[dim]loading {args.model}…[/]")
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
