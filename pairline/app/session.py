"""One browser tab's session: the app's protocol (docs/app.md) over a chat session.

`AppChat` is the REPL's `ChatSession` with its surface hooks turned into events: the answer streams
as `delta`, a completed edit is staged as a `proposal` (nothing written until the user accepts a
hunk) instead of being written, and the numbers go out with `turn.done`. `AppSession` handles the
client's messages; `send` (any thread) delivers an event to the browser."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pairline.app.hunks import Proposal
from pairline.app.paths import BadPath, confined, list_files
from pairline.assistant.chat import ChatSession
from pairline.assistant.client import RemoteClient
from pairline.assistant.coder import Event, TurnResult, TurnStats, load_file
from pairline.assistant.edit_grammar import warm as warm_grammar
from pairline.assistant.workspace import FileChangedError, Fingerprint, read_text_file
from pairline.errors import PairlineError

MAX_INSTRUCTION = 20_000  # characters
TIERS = ("realtime", "deep")
Send = Callable[[dict], None]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_event(kind: str, path: str, text: str, **extra) -> dict:
    """An event that carries a file's text (file, applied, conflict): the text and its sha256."""
    return {"type": kind, "path": path, "text": text, "sha": sha(text), **extra}


class ClientError(PairlineError):
    """A message the app answers with an `error` event of this code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Staged:
    """A proposal and where its file stood when it was last read: writes are refused if the file
    changed since (FileChangedError), and the user is shown the new text."""

    proposal: Proposal
    real: Path
    fingerprint: Fingerprint
    disk: str  # the text that fingerprint is of


@dataclass
class AppChat(ChatSession):
    """The chat session behind one tab; `send` gets its events, `number` is the running turn's."""

    send: Send = field(default=lambda event: None)
    number: int = 0
    staged: dict[str, Staged] = field(default_factory=dict)  # by relative path
    proposed: list[str] = field(default_factory=list)  # the paths the running turn staged
    stats: TurnStats | None = None
    history_mark: int = 0  # len(ws.history) when the turn started: the agent's edits come after
    errors: list[str] = field(default_factory=list)  # the running turn's

    def __post_init__(self) -> None:
        self.write = self.delta  # everything the chat would print is the turn's answer text

    def delta(self, text: str) -> None:
        if text:
            self.send({"type": "delta", "turn": self.number, "text": text})

    def begin(self, instruction: str, deep: bool) -> int:
        """Start a turn. Called only once the last turn's thread has ended (it was interrupted or
        done), so nothing else reads these fields meanwhile."""
        self.number += 1
        self.proposed, self.stats, self.history_mark, self.errors = [], None, len(self.ws.history), []
        if deep:
            self.start_deep(instruction)
        else:
            self.start_turn(instruction)
        return self.number

    # ---------------------------------------------------------------- the chat's surface hooks

    def deliver(self, result: TurnResult, instruction: str) -> str:
        for real, new in result.new_texts.items():
            state = result.files[real]
            if state.text is None or state.fingerprint is None:
                self.fail(f"{state.shown} does not exist yet; the app edits existing files")
                continue
            proposal = Proposal.of(state.shown, state.text, new)
            self.staged[state.shown] = Staged(proposal, real, state.fingerprint, state.text)
            self.proposed.append(state.shown)
            self.send({"type": "proposal", "turn": self.number, "path": state.shown, "base_sha": sha(state.text),
                       "hunks": [{"id": h.id, "header": h.header, "lines": h.lines} for h in proposal.hunks]})
        for note in result.notes:
            self.write(f"\n[{note}]\n")
        return "proposed" if self.proposed else "unchanged"

    def report(self, stats: TurnStats) -> None:
        self.stats = stats

    def fail(self, message: str) -> None:
        self.errors.append(message)
        self.send({"type": "error", "code": "turn_failed", "message": message})

    def ended(self, instruction: str, status: str) -> None:
        if instruction.startswith("/deep "):
            for path in self._changed_since_mark():
                self.send(self.file_event("applied", path, hunks=[], commit=None))
        s = self.stats or TurnStats()
        self.send({"type": "turn.done", "turn": self.number, "status": status,
                   "stats": {"ttft_ms": None if s.ttft_s is None else round(s.ttft_s * 1000, 1),
                             "tokens_per_s": round(s.tokens_per_s, 1), "accepted": s.accepted,
                             "predicted": s.predicted, "tokens": s.tokens, "wall_ms": round(s.wall_s * 1000, 1)},
                   "errors": list(self.errors)})

    def on_event(self, e: Event) -> None:
        if e.kind == "block" and e.block is not None:
            self.send({"type": "block", "turn": self.number, "path": e.path,
                       "search": "\n".join(e.block.search), "replace": "\n".join(e.block.replace)})
        else:
            super().on_event(e)

    def on_agent_event(self, e: dict) -> None:
        if e["type"] == "delta":
            self.write(e["text"])
        elif e["type"] == "turn":
            self.send({"type": "step", "turn": self.number,
                       "text": f"step {e['step']} · {e['tokens']} tokens · {e['wall_s']:.1f} s"})
        elif e["type"] == "tool":
            first = (e.get("observation") or "").splitlines()[:1]
            self.send({"type": "step", "turn": self.number, "text": f"{e['name']}: {first[0][:200] if first else ''}"})

    # ---------------------------------------------------------------- files

    def file_event(self, kind: str, path: str, **extra) -> dict:
        text, _fp = read_text_file(confined(self.ws, path))
        return text_event(kind, path, text, **extra)

    def _changed_since_mark(self) -> list[str]:
        paths = []
        for entry in self.ws.history[self.history_mark:]:
            paths += [c.path for c in entry.changes if c.path not in paths]
        return [p for p in paths if (self.ws.root / p).is_file()]


class AppSession:
    """Dispatches a tab's messages (docs/app.md). Every handler runs off the event loop, so one may
    block on the disk, git or a turn's end."""

    def __init__(self, chat: AppChat, model_name: str, clients: list[RemoteClient]):
        self.chat = chat
        self.model_name = model_name
        self.clients = clients  # the sessions this tab opened (the deep tier's joins on first use)

    @property
    def ws(self):
        return self.chat.ws

    def ready(self) -> dict:
        model = Path(self.model_name).name if "/" in self.model_name else self.model_name  # a GGUF's path: its file
        return {"type": "ready", "workspace": self.ws.root.name, "git": self.ws.git, "model": model,
                "tiers": list(TIERS), "files": list_files(self.ws)}

    def handle(self, msg: dict) -> None:
        """One client message; errors go back as `error` events, never up."""
        try:
            kind = msg.get("type")
            handler = HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ClientError("bad_request", f"unknown message type {kind!r}")
            handler(self, msg)
        except ClientError as err:
            self.chat.send({"type": "error", "code": err.code, "message": str(err)})
        except BadPath as err:
            self.chat.send({"type": "error", "code": "bad_path", "message": str(err)})
        except PairlineError as err:
            self.chat.send({"type": "error", "code": "not_found" if "does not exist" in str(err) else "bad_request",
                            "message": str(err)})

    def on_open(self, msg: dict) -> None:
        path = _text(msg, "path")
        state = load_file(self.ws, confined(self.ws, path))
        if state.text is None:
            raise ClientError("not_found", f"{path} does not exist")
        self.chat.send(text_event("file", path, state.text))
        warm_grammar(path, state.model_text)

    def on_draft(self, msg: dict) -> None:
        draft = _text(msg, "text", empty=True)
        self._focus(msg.get("path"))
        self.chat.ahead(draft[:MAX_INSTRUCTION])

    def on_edit(self, msg: dict) -> None:
        instruction = _text(msg, "instruction")[:MAX_INSTRUCTION]
        tier = msg.get("tier", "realtime")
        if tier not in TIERS:
            raise ClientError("bad_request", f"tier must be one of {', '.join(TIERS)}")
        path = _text(msg, "path")
        if self._focus(path) is None:
            raise ClientError("not_found", f"{path} does not exist")
        if self.chat.busy:
            self.chat.interrupt(quiet=True)  # a steer: the cut answer stays in the conversation
        shown = self.chat.file_event("file", path)  # the text this turn reads: the page shows the same
        number = self.chat.begin(instruction, deep=tier == "deep")
        self.chat.send({"type": "turn.started", "turn": number, "tier": tier, "instruction": instruction,
                        "path": path})
        self.chat.send(shown)

    def on_stop(self, _msg: dict) -> None:
        t0 = time.perf_counter()
        number = self.chat.number
        if self.chat.interrupt(quiet=True) is not None:
            self.chat.send({"type": "stopped", "turn": number, "ms": round((time.perf_counter() - t0) * 1000, 1)})

    def on_accept(self, msg: dict) -> None:
        staged, hunks = self._hunks(msg)
        chat = self.chat
        current = staged.disk
        text = staged.proposal.apply(current, hunks)
        if text is None:
            raise ClientError("conflict", "those hunks no longer fit the file; ask again")
        message = f"{staged.proposal.path}: hunk {', '.join(str(h.id) for h in hunks)}"
        try:
            entry = self.ws.apply([(staged.real, text, staged.fingerprint)], message)
        except FileChangedError as err:
            disk, fp = read_text_file(staged.real)
            staged.disk, staged.fingerprint = disk, fp  # shown to the user now: the next accept goes on it
            chat.shown.pop(staged.real, None)  # the model sees the new text next turn
            chat.send(text_event("conflict", staged.proposal.path, disk, message=str(err)))
            return
        for h in hunks:
            h.state = "accepted"
        staged.disk, staged.fingerprint = read_text_file(staged.real)
        chat.shown.pop(staged.real, None)
        chat.send(text_event("applied", staged.proposal.path, staged.disk, hunks=[h.id for h in hunks],
                             commit=entry.commit))

    def on_reject(self, msg: dict) -> None:
        staged, hunks = self._hunks(msg)
        for h in hunks:
            h.state = "rejected"
        self.chat.send({"type": "rejected", "path": staged.proposal.path, "hunks": [h.id for h in hunks]})

    def on_undo(self, _msg: dict) -> None:
        if not self.ws.history:
            raise ClientError("nothing_to_undo", "nothing to undo")
        entry = self.ws.undo()
        files = []
        for c in entry.changes:
            real = self.ws.root / c.path
            self.chat.shown.pop(real, None)
            text, fp = read_text_file(real) if real.is_file() else (None, None)
            files.append({"path": c.path, "text": text, "sha": None if text is None else sha(text)})
            staged = self.chat.staged.get(c.path)
            if staged is not None and text is not None:
                staged.disk, staged.fingerprint = text, fp
                for h in staged.proposal.hunks:  # undone hunks may be accepted again
                    if h.state == "accepted" and staged.proposal.apply(text, [h]) is not None:
                        h.state = "pending"
        self.chat.send({"type": "undone", "files": files, "commit": entry.commit})

    def close(self) -> None:
        """The tab closed: its turn stops, its sessions end."""
        self.chat.interrupt(quiet=True)
        for client in self.clients:
            client.close()

    # ---------------------------------------------------------------- helpers

    def _focus(self, path: object) -> Path | None:
        """The turn's file is the open one: the chat's files are just it. Returns its real path
        (None, and the files unchanged, when it is no file)."""
        if not isinstance(path, str) or not path:
            return None
        real = confined(self.ws, path)
        if not real.is_file():
            return None
        self.chat.files[:] = [real]
        return real

    def _hunks(self, msg: dict):
        path = _text(msg, "path")
        staged = self.chat.staged.get(path)
        if staged is None:
            raise ClientError("no_proposal", f"no pending proposal for {path}")
        ids = msg.get("hunks")
        if not isinstance(ids, list) or not ids:
            raise ClientError("bad_request", "hunks must be a non-empty list of hunk ids")
        try:
            hunks = [staged.proposal.hunk(i) for i in dict.fromkeys(ids)]
        except (KeyError, TypeError):
            raise ClientError("bad_request", f"unknown hunk id in {ids!r}") from None
        decided = [h.id for h in hunks if h.state != "pending"]
        if decided:
            raise ClientError("bad_request", f"hunks {decided} were already decided")
        return staged, hunks


def _text(msg: dict, key: str, empty: bool = False) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ClientError("bad_request", f"'{key}' must be a{'' if empty else ' non-empty'} string")
    return value


HANDLERS: dict[str, Callable[[AppSession, dict], None]] = {
    "open": AppSession.on_open,
    "draft": AppSession.on_draft,
    "edit": AppSession.on_edit,
    "stop": AppSession.on_stop,
    "accept": AppSession.on_accept,
    "reject": AppSession.on_reject,
    "undo": AppSession.on_undo,
}
