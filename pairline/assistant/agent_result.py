"""What a deep-mode run is held to and what it returns: its budgets, what it used, the
conversation's messages, and its result (agent.py runs the loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pairline.errors import PairlineError

EXIT_DONE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 130

REASONS = {
    "done": "the model finished",
    "max_steps": "the step budget is used up",
    "max_time": "the time budget is used up",
    "max_tokens": "the token budget is used up",
    "context_full": "the conversation no longer fits the model's context",
    "interrupted": "interrupted",
    "git_tampered": "a command replaced .git",
    "error": "an error stopped it",
}


@dataclass(slots=True)
class Budgets:
    max_steps: int = 20  # model turns, malformed ones included
    max_time_s: float = 600.0  # wall time, model and commands together, across resumes
    max_tokens: int = 20_000  # tokens the model generates

    def check(self) -> None:
        if self.max_steps < 1:
            raise PairlineError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.max_time_s <= 0:
            raise PairlineError(f"--max-time must be positive, got {self.max_time_s}")
        if self.max_tokens < 16:
            raise PairlineError(f"--max-tokens must be at least 16, got {self.max_tokens}")


@dataclass(slots=True)
class Used:
    steps: int = 0
    tokens: int = 0  # generated
    prompt_tokens: int = 0
    time_s: float = 0.0  # spent in earlier sessions of the run (resume)


@dataclass(slots=True)
class Msg:
    role: str
    content: str
    short: str | None = None  # what an observation shrinks to when the context fills up
    condensed: bool = False
    tokens: int = -1  # counted lazily
    short_tokens: int = -1
    step: int = 0  # the step whose result it is (an observation's)

    @property
    def text(self) -> str:
        return self.short if self.condensed and self.short is not None else self.content


@dataclass(slots=True)
class AgentResult:
    run_id: str
    path: Path
    reason: str
    summary: str
    diff: str
    files_changed: list[str]
    commits: list[str]
    steps: int
    tokens: int
    wall_s: float
    edits: int
    last_test: dict | None = None
    uncommitted: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"done": EXIT_DONE, "interrupted": EXIT_INTERRUPTED}.get(self.reason, EXIT_STOPPED)

    def report(self) -> str:
        """The summary as text (the CLI prints it, the chat keeps it in the history)."""
        lines = [f"Deep mode ended: {REASONS.get(self.reason, self.reason)} ({self.reason}). {self.summary}".strip(),
                 f"{self.steps} steps, {self.tokens} tokens, {self.wall_s:.0f} s; {self.edits} edits applied."]
        if self.files_changed:
            lines.append(f"Files changed: {', '.join(self.files_changed)}.")
        if self.commits:
            lines.append(f"Commits: {', '.join(c[:10] for c in self.commits)}.")
        if self.last_test:
            lines.append(f"Last test run: `{self.last_test['command']}` exit {self.last_test['exit_code']}.")
        if self.uncommitted:
            lines.append(f"Changed by commands, not committed: {', '.join(self.uncommitted[:20])}.")
        return "\n".join(lines)
