"""`pairline chat`: the real-time REPL.

Each message is an edit instruction for the files in the chat (search/replace blocks, applied and
committed when the turn ends; a message ending in "?" is a question and gets a prose answer). The
answer streams while the prompt stays live:

- Ctrl-C or Esc interrupts: the cancel lands within one decode step; the partial answer stays in the
  history and nothing of the turn is written (files are written only when a turn completes);
- typing a message while an answer streams steers it: the answer is interrupted, kept, and the new
  message follows it in the same conversation. With the in-process engine the conversation's KV
  is still cached, so only the new message is prefilled (no history resend);
- /add /drop /clear /diff /undo /test /fix /deep /model /help /quit;
- while the user types, the prompt the draft would send is prefilled ahead (`ChatSession.ahead`,
  with a client that `supports_ahead`): `turn_request` builds a turn's messages, for the real turn
  and for the draft alike, so the two cannot drift. The files come before the instruction, so
  their KV does not depend on it: they are prefilled when the chat starts.

`/deep [TASK]` hands a task to the deep tier (`agent.Agent`): the agent gets the chat's files and
the recent conversation, runs in the turn's thread (its progress streams into the chat; Ctrl-C stops
it), and its result (summary, files changed, diff) comes back into the history. It edits through
the chat's workspace, so `/undo` reverts its edits one at a time.

`ChatSession` holds the logic (testable without a terminal); the `pairline chat` command and its
prompt_toolkit shell are in `chat_cmd.py`.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pairline.assistant import prompts
from pairline.assistant.client import Client, open_client
from pairline.assistant.coder import Coder, Event, FileState, TurnResult, TurnStats, answer_primer, load_file
from pairline.assistant.diffs import diff_counts, unified_diff
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
  /deep [TASK]     hand a task to the deep tier (multi-step agent: reads, edits, runs tests in a
                   sandbox); without TASK, the last instruction. Ctrl-C stops it; /undo reverts its edits
  /help            this help
  /quit            leave (Ctrl-D too)"""

ASK_SYSTEM = "You are a concise, expert programming assistant. Answer briefly and precisely."
MAX_ASK_TOKENS = 512
TEST_OUTPUT_CHARS = 6000  # the tail of the test output that goes to the model on /fix


def chat_user_message(files: str, instruction: str) -> str:
    """A chat turn's user message: the files the model has not seen as they are now (may be empty),
    then the instruction. Unlike a one-shot edit (`prompts.user_message`: the instruction before and
    after the files), the instruction comes only after them, so the files' KV does not depend on
    what the user is still typing: they are prefilled ahead."""
    said = prompts.user_message("", instruction)
    return f"{files}\n\n{said}" if files else said


def instruction_of(user_message: str) -> str:
    """The instruction part of a chat turn's user message (the whole message if it has none)."""
    if user_message.startswith("Instruction: "):
        return user_message
    _, sep, tail = user_message.rpartition("\n\nInstruction: ")
    return f"Instruction: {tail}" if sep else user_message


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """What one chat turn sends: the messages, the start of the answer already written (`prefix`,
    the primer), whether it is a question (a prose answer, no files), and every file's text as the
    model will have seen it once this is sent."""

    messages: list[dict]
    prefix: str
    asking: bool
    shown: dict[Path, str]


def turn_request(
    client: Client, states: list[FileState], shown: dict[Path, str], history: list[dict], instruction: str
) -> TurnRequest:
    """A turn's request for `instruction`, on the files as they are now (`states`), those the model
    last saw (`shown`) and the conversation so far. Pure: the real turn and the ahead prefill of a
    draft both call it, so the prefilled prompt is a prefix of what the turn sends. A message
    ending in "?" (or any, with no file in the chat) is a question."""
    if instruction.rstrip().endswith("?") or not states:
        user = {"role": "user", "content": instruction}
        return TurnRequest([{"role": "system", "content": ASK_SYSTEM}, *history, user], "", True, dict(shown))
    p = prompts.prompt_for(client.family)
    fresh = {f.shown: f.model_text for f in states if shown.get(f.real) != f.model_text}
    user = {"role": "user", "content": chat_user_message(prompts.files_message(fresh) if fresh else "", instruction)}
    messages = [{"role": "system", "content": p.system}, *(p.example or ()), *history, user]
    seen = {**shown, **{f.real: f.model_text for f in states}}
    return TurnRequest(messages, answer_primer(p, states, client.supports_prefix, client.supports_grammar), False, seen)


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
    deep_client: Client | None = None  # the deep tier's model, opened on the first /deep
    open_deep: Callable[[], Client] | None = None  # how to open it (None: the chat's own model)
    deep_options: dict = field(default_factory=dict)  # Agent keyword arguments (budgets, n_ctx, ...)
    last_instruction: str | None = None
    draft: str = ""  # what the user is typing now, as the terminal last posted it (see ahead)
    whole_lines: bool = True  # the answer is written a whole line at a time (the web app takes each piece)

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
            if turn.instruction.startswith("/deep"):
                self.write(f"\n[interrupted: the agent stopped in {ms:.0f} ms; edits it applied stay (/undo)]\n")
            else:
                self.write(f"\n[interrupted: stopped in {ms:.0f} ms; the partial answer is kept, nothing written]\n")
        return landed

    def wait(self) -> None:
        if self.turn is not None:
            self.turn.thread.join()

    def ahead(self, draft: str) -> bool:
        """The user is typing `draft`: have the client prefill, in its background, the prompt the
        turn for it would send (the files and the history are certain; the draft extends them).
        Not while a turn runs (its answer is about to join the history: the turn posts the draft
        itself when it ends), nor for a command. Returns whether anything was posted."""
        self.draft = draft
        if self.busy:
            return False
        return self._post_ahead(draft)

    def _post_ahead(self, draft: str) -> bool:
        text = draft.strip()
        if not self.client.supports_ahead or text.startswith("/"):
            return False
        states = self._file_states(quiet=True)
        with self.lock:
            request = turn_request(self.client, states, self.shown, self.history, text)
        self.client.ahead(request.messages, request.prefix)
        return True

    # ---------------------------------------------------------------- turns

    def start_turn(self, instruction: str) -> None:
        self.last_instruction = instruction
        cancel = CancelToken()
        thread = threading.Thread(target=self._turn, args=(instruction, cancel), daemon=True)
        self.turn = Turn(thread, cancel, time.perf_counter(), instruction)
        thread.start()

    def _file_states(self, quiet: bool = False) -> list[FileState]:
        """The chat's files as they are now; one that cannot be read is dropped (said, unless
        `quiet`: then it is only left out, as the turn will drop it)."""
        states = []
        for real in list(self.files):
            try:
                states.append(load_file(self.ws, real))
            except PairlineError as err:
                if not quiet:
                    self.write(f"[dropping {self.ws.rel(real)}: {err}]\n")
                    self.files.remove(real)
        return states

    def _turn(self, instruction: str, cancel: CancelToken) -> None:
        status = "error"
        try:
            status = self._run_turn(instruction, cancel)
            if not cancel.cancelled:  # interrupted or steered: the next turn starts at once
                self._post_ahead(self.draft)  # what the user typed meanwhile, on the grown history
        except PairlineError as err:
            self.fail(str(err))
        except Exception as err:  # a bug must not kill the REPL or lose the user's files
            self.fail(f"internal error: {type(err).__name__}: {err}; nothing written")
        finally:
            self.ended(instruction, status)

    def _run_turn(self, instruction: str, cancel: CancelToken) -> str:
        """One turn; returns how it ended: answered (a question), cancelled, malformed, unchanged, or
        what `deliver` made of the edit."""
        states = self._file_states()
        with self.lock:
            request = turn_request(self.client, states, self.shown, self.history, instruction)
            if not request.asking:
                self.shown.update(request.shown)
        if request.asking:
            self._ask(request, cancel)
            return "cancelled" if cancel.cancelled else "answered"
        messages, user = request.messages, request.messages[-1]
        coder = Coder(self.client, self.ws, on_event=self.on_event, whole_lines=self.whole_lines)
        result = coder.run_blocks(states, messages, prefix=request.prefix, cancel=cancel, max_tokens=self.max_tokens,
                                  instruction=instruction)
        self.write("\n" if result.answer and not result.answer.endswith("\n") else "")
        with self.lock:
            self.history += [user, {"role": "assistant", "content": result.answer}]
        status = result.status
        if status == "malformed":
            self.write("[the edit did not apply; nothing written]\n")
            for err in result.errors:
                self.write(f"  {err}\n")
        elif status == "unchanged":
            self.write("[no changes]\n")
        elif status != "cancelled":
            status = self.deliver(result, instruction)
        self.report(result.stats)
        return status

    # ---------------------------------------------------------------- hooks: what a surface shows
    # (the terminal's are here; the web app, pairline/app/session.py, overrides them)

    def deliver(self, result: TurnResult, instruction: str) -> str:
        """A turn's edit, complete and checked: write it (one undo entry), show its diff. Returns
        "applied", or "conflict" when a file changed on disk meanwhile (nothing written)."""
        writes = [(real, new, result.files[real].fingerprint) for real, new in result.new_texts.items()]
        try:
            entry = self.ws.apply(writes, instruction)
        except FileChangedError as err:
            self.write(f"[{err}; the file will be re-read and shown to the model next turn]\n")
            for real in result.new_texts:
                self.shown.pop(real, None)
            return "conflict"
        for real, new in result.new_texts.items():
            state = result.files[real]
            self._print_diff(unified_diff(state.text or "", new, state.shown))
            if real not in self.files:
                self.files.append(real)
        for note in result.notes:  # what the check after the edit repaired
            self.write(f"[{note}]\n")
        where = f" (commit {entry.commit[:10]})" if entry.commit else ""
        self.write(f"[applied to {', '.join(c.path for c in entry.changes)}{where}; /undo to revert]\n")
        return "applied"

    def report(self, stats: TurnStats) -> None:
        """The turn's numbers: TTFT, tok/s, draft tokens accepted."""
        self.readout(stats.line())

    def fail(self, message: str) -> None:
        """A turn ended in an error (nothing of it was written)."""
        self.write(f"\n[error: {message}]\n")

    def ended(self, instruction: str, status: str) -> None:
        """A turn's thread is about to end, however it ended (the terminal shows nothing more)."""

    def on_event(self, e: Event) -> None:
        """What the coder streams: answer text, actions applied, failures."""
        if e.kind == "text":
            self.write(e.text)
        elif e.kind == "rename":
            self.write(f"\n[renamed {e.text} in {e.path}, every reference]\n")
        elif e.kind == "delete":
            self.write(f"\n[deleted {e.text} from {e.path}]\n")
        elif e.kind == "error":
            self.write(f"\n[edit failed: {e.text}]\n")
        elif e.kind == "check":
            self.write(f"\n[check failed: {e.text}]\n")
        elif e.kind == "retry":
            self.write("\n[retrying once with the errors]\n")

    def _ask(self, request: TurnRequest, cancel: CancelToken) -> None:
        messages, user = request.messages, request.messages[-1]
        started = time.perf_counter()
        reply = self.client.stream(messages, max_tokens=min(MAX_ASK_TOKENS, self.max_tokens), cancel=cancel)
        for delta in reply:
            self.write(delta)
        self.write("\n")
        with self.lock:
            self.history += [user, {"role": "assistant", "content": reply.text}]
        stats = TurnStats(mode="ask")
        stats.add(reply, started)
        self.report(stats)

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

    def cmd_deep(self, args: list[str], raw: str) -> None:
        task = raw.split(None, 1)[1].strip() if args else (self.last_instruction or "")
        if not task:
            raise PairlineError("/deep needs a task: /deep TASK (or give an instruction first)")
        self.start_deep(task)

    def start_deep(self, task: str) -> None:
        """Hand `task` to the deep tier in the turn's thread (the chat's files and recent
        conversation go with it)."""
        cancel = CancelToken()
        thread = threading.Thread(target=self._deep, args=(task, cancel), daemon=True)
        self.turn = Turn(thread, cancel, time.perf_counter(), f"/deep {task}")
        thread.start()

    def _deep(self, task: str, cancel: CancelToken) -> None:
        status = "error"
        try:
            status = self._run_deep(task, cancel)
            if not cancel.cancelled:
                self._post_ahead(self.draft)
        except PairlineError as err:
            self.fail(f"deep mode: {err}")
        except Exception as err:  # a bug must not kill the REPL
            self.fail(f"internal error in deep mode: {type(err).__name__}: {err}")
        finally:
            self.ended(f"/deep {task}", status)

    def _run_deep(self, task: str, cancel: CancelToken) -> str:
        """The agent's run; returns applied (it edited files), unchanged, or cancelled."""
        from pairline.assistant.agent import Agent

        if self.deep_client is None:
            if self.open_deep is None:
                self.deep_client = self.client
            else:
                self.write("[loading the deep model…]\n")
                self.deep_client = self.open_deep()
        options = {"test_cmd": self.test_cmd, **self.deep_options}
        agent = Agent(self.deep_client, self.ws, task, context=self._deep_context(), on_event=self.on_agent_event,
                      **options)
        result = agent.run(cancel)
        if result.diff:
            self._print_diff(result.diff.rstrip("\n").splitlines())
        for line in result.report().splitlines():
            self.write(f"[{line}]\n")
        self.write(f"[trajectory: {result.path}]\n")
        if result.edits:
            self.write(f"[/undo reverts the agent's edits one at a time ({result.edits} applied)]\n")
        # what changed comes back into the conversation, so the real-time model knows it; the files
        # join the chat and are shown to the model again as they are now
        diff = result.diff if len(result.diff) <= 3000 else result.diff[:3000] + "\n[... diff cut ...]\n"
        note = result.report() + (f"\n```diff\n{diff}```" if diff else "")
        with self.lock:
            self.history += [{"role": "user", "content": f"/deep {task}"}, {"role": "assistant", "content": note}]
        for path in result.files_changed:
            real = self.ws.root / path
            self.shown.pop(real, None)
            if real.is_file() and real not in self.files:
                self.files.append(real)
        if cancel.cancelled:
            return "cancelled"
        return "applied" if result.edits else "unchanged"

    def _deep_context(self) -> str:
        """The chat's files (whole, while they are small) and the recent conversation, condensed."""
        parts = []
        budget = 6000
        for real in self.files:
            try:
                state = load_file(self.ws, real)
            except PairlineError:
                continue
            text = state.model_text
            if len(text) <= budget:
                parts.append(f"{state.shown}\n```\n{text}```")
                budget -= len(text)
            else:
                parts.append(f"{state.shown} (not shown: read it)")
        out = ["The user is working on these files:\n" + "\n\n".join(parts)] if parts else []
        recent = []
        for m in self.history[-6:]:
            text = m["content"]
            if m["role"] == "user" and "Instruction: " in text:
                text = instruction_of(text).splitlines()[0]  # the instruction, without the files shown with it
            text = " ".join(text.split())
            recent.append(f"{m['role']}: {text[:300]}{'…' if len(text) > 300 else ''}")
        if recent:
            out.append("The conversation so far (condensed):\n" + "\n".join(recent))
        return "\n\n".join(out)

    def on_agent_event(self, e: dict) -> None:
        """What the agent streams: its run, answer text, steps, tool results."""
        kind = e["type"]
        if kind == "run":
            self.write(f"[deep mode · {e['model']} · run {e['run_id']} · up to {e['budgets']['max_steps']} steps · "
                       "Ctrl-C stops it]\n")
        elif kind == "delta":
            self.write(e["text"])
        elif kind == "turn":
            self.write(f"\n[deep step {e['step']} · {e['tokens']} tokens · {e['wall_s']:.1f} s]\n")
        elif kind == "tool":
            first = (e.get("observation") or "").splitlines()[:1]
            self.write(f"[deep · {e['name']}: {first[0][:160] if first else ''}]\n")

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
