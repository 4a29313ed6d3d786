"""The one interface the assistant talks to a model through.

`Client.stream(messages, ...)` returns a `Reply`: iterate it for text deltas; afterwards it holds the
whole text, why it finished, usage and timings. `InProcessClient` runs an `Engine` in this process
(its prefix reuse makes a chat's history free: each turn prefills only its new tokens). A remote
client for `pairline serve` plugs in behind the same two methods (see docs/assistant.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from pairline.engine.generate import CancelToken, Timings, Usage


@dataclass(slots=True)
class Reply:
    """One answer as it streams. `deltas` yields text; the fields are final once it is exhausted."""

    deltas: Iterator[str]
    cancel: CancelToken
    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    tokens: int = 0

    def __iter__(self) -> Iterator[str]:
        for delta in self.deltas:
            self.text += delta
            yield delta

    def run(self) -> Reply:
        for _ in self:
            pass
        return self

    def close(self) -> None:
        """Stop the underlying stream (releases the engine if the caller stopped iterating early)."""
        close = getattr(self.deltas, "close", None)
        if close is not None:
            close()


class Client(Protocol):
    model_name: str
    family: str  # chat/prompt family: "qwen2", "llama", ...
    load_s: float

    def stream(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        prefix: str = "",
        prediction: str | None = None,
        stop: tuple[str, ...] = (),
        cancel: CancelToken | None = None,
    ) -> Reply:
        """Answer `messages`; `prefix` is the start of the assistant's answer, already written
        (it is not repeated in the reply's text). Greedy."""
        ...

    def count_tokens(self, text: str) -> int: ...


class InProcessClient:
    """An Engine in this process."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.family = getattr(engine.tokenizer, "family", "qwen2")
        self.load_s = engine.load_s

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer.encode(text, add_bos=False))

    def stream(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        prefix: str = "",
        prediction: str | None = None,
        stop: tuple[str, ...] = (),
        cancel: CancelToken | None = None,
    ) -> Reply:
        from pairline.engine.sampling import SamplingParams

        cancel = cancel or CancelToken()
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)
        pred = self.engine.tokenizer.encode(prediction, add_bos=False) if prediction else None
        if prefix:
            ids = self.engine.chat_prompt(messages) + self.engine.tokenizer.encode(prefix, add_bos=False)
            gen = self.engine.generate(ids, params, prediction=pred, cancel=cancel)
        else:
            gen = self.engine.chat(messages, params, prediction=pred, cancel=cancel)
        reply = Reply(iter(()), cancel)

        def deltas() -> Iterator[str]:
            try:
                for event in gen:
                    reply.tokens += event.token_id >= 0
                    if event.text:
                        yield event.text
            finally:
                reply.finish_reason = gen.finish_reason or "cancelled"
                reply.usage, reply.timings = gen.usage, gen.timings

        reply.deltas = deltas()
        return reply


def open_client(model: str, *, n_ctx: int | None = None, server: str | None = None) -> Client:
    """The in-process engine for `model`, or (not yet) a `pairline serve` session at `server`."""
    if server:
        from pairline.errors import PairlineError

        raise PairlineError(
            "--server is not available yet: the session protocol of `pairline serve` is not committed; "
            "run without --server to use the in-process engine"
        )
    from pairline.engine.load import load_engine

    return InProcessClient(load_engine(model, runtime="torch", n_ctx=n_ctx))
