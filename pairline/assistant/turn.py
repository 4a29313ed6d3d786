"""One edit turn's data: the files it works on, the events it reports as it goes, its statistics
and its result (coder.py runs the turn; edit, chat, the app and the editor read these)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pairline.assistant.client import Reply
from pairline.assistant.edits import EditBlock
from pairline.assistant.rewrite import for_model
from pairline.assistant.workspace import Fingerprint, Workspace, read_text_file
from pairline.engine.generate import CancelToken


class LinkedCancel(CancelToken):
    """A request's own cancel that is also set when the turn's is: the coder can stop one request
    (to force a divider) without cancelling the turn, and the user's Ctrl-C reaches the engine."""

    def __init__(self, parent: CancelToken) -> None:
        self.parent = parent
        self._own_at: float | None = None
        super().__init__()
        parent.link(self)  # so that a runtime polling this token's flag sees the turn's cancel too

    @property
    def requested_at(self) -> float | None:  # type: ignore[override]
        return self._own_at if self._own_at is not None else self.parent.requested_at

    @requested_at.setter
    def requested_at(self, value: float | None) -> None:
        self._own_at = value

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or self.parent.cancelled


@dataclass(slots=True)
class FileState:
    real: Path
    shown: str  # the name the model sees (relative to the workspace root)
    text: str | None  # None: does not exist yet
    fingerprint: Fingerprint | None

    @property
    def model_text(self) -> str:
        return for_model(self.text or "")

    @property
    def old_model_text(self) -> str | None:
        """What an edit of this file is checked against: None for a file the edit creates."""
        return None if self.text is None else self.model_text


def load_file(ws: Workspace, path: str | Path) -> FileState:
    real = ws.resolve(path)
    if not real.exists():
        return FileState(real, ws.rel(real), None, None)
    text, fp = read_text_file(real)
    return FileState(real, ws.rel(real), text, fp)


@dataclass(slots=True)
class Event:
    """What the caller shows: kind is text | block | rename, delete (an action was applied) | error (a
    block or an action failed) | check (the check after the edit failed) | retry | rewrite_line | status
    (a repair, said once) | focus (a focused edit's view of the file, focus.py: its lines are what the
    rewrite_line events that follow rewrite)."""

    kind: str
    text: str = ""
    path: str = ""
    block: EditBlock | None = None


@dataclass(slots=True)
class TurnStats:
    mode: str = "blocks"
    ttft_s: float | None = None
    tokens: int = 0
    tokens_per_s: float = 0.0
    accepted: int = 0  # prediction (or prompt-lookup) draft tokens accepted
    predicted: int = 0
    wall_s: float = 0.0
    requests: int = 0
    blocks: int = 0
    well_formed: bool = True
    retried: bool = False  # any retry: failed blocks, or a failed check
    check_retried: bool = False  # the check after the edit failed and went back to the model
    repaired: bool = False  # a rewrite that stopped early got the original's tail back
    region_ended: bool = False  # a rewrite's region was stopped where it rejoined the file (region.py)
    regions: int = 0  # code blocks (regions) in a rewrite's answer
    renames: int = 0  # RENAME actions the model wrote (rope did the renaming)
    deletes: int = 0  # DELETE actions the model wrote
    decode_s: float = 0.0  # first token to the end, summed over the turn's requests
    constraint_s: float = 0.0  # of which in the grammar (masks, checks, forced tokens)
    forced: int = 0  # tokens the grammar appended without a model step

    def add(self, reply: Reply, started: float) -> None:
        self.requests += 1
        if self.ttft_s is None and reply.timings.ttft_s:
            self.ttft_s = reply.timings.ttft_s
        self.tokens += reply.tokens
        self.accepted += reply.usage.accepted_prediction_tokens or reply.usage.accepted_draft_tokens
        if reply.timings.decode_tokens_per_s:
            self.tokens_per_s = reply.timings.decode_tokens_per_s
        self.decode_s += reply.timings.decode_s
        self.constraint_s += reply.timings.constraint_s
        self.forced += reply.usage.forced_tokens
        self.wall_s += time.perf_counter() - started

    def line(self) -> str:
        ttft = f"{self.ttft_s:.2f} s" if self.ttft_s is not None else "–"
        drafts = f"{self.accepted}/{self.predicted} prediction" if self.predicted else f"{self.accepted} draft"
        return f"TTFT {ttft} · {self.tokens_per_s:.0f} tok/s · {drafts} tokens accepted · {self.tokens} tokens"


@dataclass(slots=True)
class TurnResult:
    status: str  # applied-in-memory: changed | unchanged | malformed | cancelled
    new_texts: dict[Path, str] = field(default_factory=dict)  # real path -> full new text (original layout)
    files: dict[Path, FileState] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    answer: str = ""  # the model's text (primer included), for the chat history
    stats: TurnStats = field(default_factory=TurnStats)
    notes: list[str] = field(default_factory=list)  # what the check repaired, for the user
