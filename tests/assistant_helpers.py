"""A scripted model client for the assistant's tests: canned answers, streamed in small chunks,
honouring cancel between chunks like the engine does between decode steps."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pairline.assistant.client import Reply
from pairline.engine.generate import CancelToken, Timings, Usage


class ScriptedClient:
    """Each `stream` call takes the next answer. An answer is the whole assistant text; a call with
    a `prefix` gets the part after it (the answer must start with the prefix)."""

    supports_prefix = True
    supports_stop = True  # takes stop strings (and ignores them: the answers are scripted)
    supports_ahead = True  # records each ahead() call (nothing to prefill)
    # the scripted answers are not decoded under a grammar; a test that sets this True gets the
    # grammar recorded in `calls` (and the coder's grammar-mode behaviour: no primer)
    supports_grammar = False
    model_name = "scripted"
    family = "qwen2"
    load_s = 0.0
    n_ctx = None

    def __init__(self, answers: list[str], chunk: int = 3, delay: float = 0.0):
        self.answers = list(answers)
        self.chunk = chunk
        self.delay = delay
        self.calls: list[dict] = []
        self.aheads: list[dict] = []

    def ahead(self, messages, prefix="") -> None:
        self.aheads.append({"messages": messages, "prefix": prefix})

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    def reset(self) -> None:
        pass

    def describe(self) -> dict:
        return {"runtime": None, "threads": None}

    def stream(self, messages, *, max_tokens, prefix="", prediction=None, stop=(), cancel=None,
               speculation="auto", grammar=None) -> Reply:
        cancel = cancel or CancelToken()
        self.calls.append({"messages": messages, "prefix": prefix, "prediction": prediction, "max_tokens": max_tokens,
                           "grammar": grammar})
        answer = self.answers.pop(0) if self.answers else ""
        if prefix and answer.startswith(prefix):
            answer = answer[len(prefix) :]  # else the answer is scripted as the continuation itself
        reply = Reply(iter(()), cancel, prediction_tokens=self.count_tokens(prediction) if prediction else 0)

        def deltas() -> Iterator[str]:
            t0 = time.perf_counter()
            reply.finish_reason = "stop"
            for i in range(0, len(answer), self.chunk):
                if cancel.cancelled:
                    reply.finish_reason = "cancelled"
                    return
                if self.delay:
                    time.sleep(self.delay)
                reply.tokens += 1
                if reply.timings.ttft_s == 0:
                    reply.timings.ttft_s = time.perf_counter() - t0
                yield answer[i : i + self.chunk]
            reply.timings.decode_tokens_per_s = 100.0

        reply.deltas = deltas()
        reply.usage = Usage()
        reply.timings = Timings()
        return reply


def git(root: Path, *args: str) -> str:
    """git's output in `root`; a failing git fails the test."""
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def git_repo(parent: Path, files: dict[str, bytes]) -> Path:
    """parent/repo: a new git repository whose one commit ("init") holds `files`."""
    root = parent / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "T")
    for name, data in files.items():
        (root / name).write_bytes(data)
    git(root, "add", *files)
    git(root, "commit", "-q", "-m", "init")
    return root
