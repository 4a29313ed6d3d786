"""Constrained decoding: a grammar that masks the sampler's choices at every step of an answer.

A request carries a `Grammar` (plain data, so it travels over the wire: a Lark grammar, a regex or
a JSON schema). The engine compiles it into a `Constraint`, one per request, over llguidance's
matcher: llguidance computes the mask of allowed tokens in Rust (a fraction of a millisecond on a
152k vocabulary), the tokens the grammar leaves no choice about ("fast-forward" tokens, appended
without a model step), and rolls back, which speculative verification needs.

The loop (generate.py) uses a constraint three ways:
- a sampled token: the greedy pick is taken as is when the grammar allows it, and only otherwise
  is the mask computed and the pick made again over the allowed tokens (the model usually agrees
  with the grammar, so the mask is rarely needed);
- a speculative draft: a draft token the grammar forbids is a mismatch like any other, so drafts
  stay lossless under the mask;
- forced tokens: emitted and fed with the next forward call, never sampled.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError

GrammarKind = Literal["lark", "regex", "json_schema"]
KINDS: tuple[str, ...] = ("lark", "regex", "json_schema")


@dataclass(slots=True, frozen=True)
class Grammar:
    """What an answer must match. `prefix`: text of the answer already written (a primed answer,
    a continued one), which the constraint consumes before the first sampled token."""

    kind: GrammarKind
    source: str
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PairlineError(f"unknown grammar kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if not isinstance(self.source, str) or not self.source:
            raise PairlineError("the grammar is empty")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "prefix": self.prefix}

    @classmethod
    def from_dict(cls, data: object) -> Grammar:
        """From the wire: {"kind", "source", "prefix"?}; a clear error for anything else."""
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise PairlineError('a grammar is an object {"kind": "lark" | "regex" | "json_schema", "source": ...}')
        source = data.get("source")
        if data["kind"] == "json_schema" and isinstance(source, dict):
            source = json.dumps(source)
        prefix = data.get("prefix", "")
        if not isinstance(source, str) or not isinstance(prefix, str):
            raise PairlineError("a grammar's source and prefix are strings (a schema may be an object)")
        return cls(data["kind"], source, prefix)  # type: ignore[arg-type]


# ---------------------------------------------------------------- llguidance's tokenizer, once per Tokenizer

_built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Tokenizer -> LLTokenizer
_building: dict[int, threading.Event] = {}
_lock = threading.Lock()


def _lltokenizer(tokenizer: Tokenizer):
    """llguidance's view of the vocabulary (0.2-0.8 s to build: once per tokenizer and process;
    `warm` builds it ahead on a thread)."""
    while True:
        with _lock:
            found = _built.get(tokenizer)
            if found is not None:
                return found
            pending = _building.get(id(tokenizer))
            if pending is None:
                _building[id(tokenizer)] = done = threading.Event()
                break
        pending.wait()  # another thread is building it
    try:
        import llguidance

        built = llguidance.LLTokenizer(
            tokenizer.backend_json(), n_vocab=tokenizer.vocab_size, eos_token=sorted(tokenizer.stop_ids)
        )
        with _lock:
            _built[tokenizer] = built
        return built
    finally:
        with _lock:
            _building.pop(id(tokenizer), None)
        done.set()


def warm(tokenizer: Tokenizer) -> None:
    """Build the grammar machinery for `tokenizer` on a background thread, so that the first
    constrained request does not wait for it. A head start only: a failure here is raised again,
    clearly, by the request that needs it."""

    def build() -> None:
        with contextlib.suppress(Exception):
            _lltokenizer(tokenizer)

    threading.Thread(target=build, name="pairline-grammar-warm", daemon=True).start()


def _to_llguidance(grammar: Grammar) -> str:
    import llguidance

    try:
        if grammar.kind == "json_schema":
            # compact JSON unless the schema asks otherwise (x-guidance): a small model left free
            # to indent can fill its whole budget with whitespace
            compact = {"whitespace_flexible": False}
            return llguidance.LLMatcher.grammar_from_json_schema(grammar.source, defaults=compact)
        return llguidance.grammar_from(grammar.kind, grammar.source)
    except ValueError as err:
        raise PairlineError(f"the {grammar.kind} grammar is invalid: {err}") from None


def compile_grammar(grammar: Grammar, tokenizer: Tokenizer) -> Constraint:
    """A fresh constraint for one request, with `grammar.prefix` consumed. PairlineError names
    what is wrong with a grammar that does not compile or a prefix it does not allow."""
    import llguidance

    lltok = _lltokenizer(tokenizer)
    matcher = llguidance.LLMatcher(lltok, _to_llguidance(grammar), log_level=0)
    if matcher.is_error():
        raise PairlineError(f"the {grammar.kind} grammar is invalid: {matcher.get_error()}")
    constraint = Constraint(matcher, tokenizer.vocab_size)
    if grammar.prefix:
        ids = tokenizer.encode_text(grammar.prefix)
        if matcher.validate_tokens(ids) < len(ids):
            raise PairlineError("the answer's start does not match its grammar")
        constraint.advance(ids)
    return constraint


class Constraint:
    """One request's grammar state. Not thread-safe: the engine's loop is its only user."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)  # llguidance's mask, 1 bit a token
        self.masks = 0  # masks computed (a measure of how often the model disagreed with the grammar)
        self.seconds = 0.0  # spent in the grammar (checks, masks, forced tokens): its cost per answer

    def allows(self, tokens: list[int]) -> int:
        """How many of `tokens`, in order, the grammar allows from here (the state is unchanged)."""
        t0 = time.perf_counter()
        n = self.matcher.validate_tokens(list(tokens))
        self.seconds += time.perf_counter() - t0
        return n

    def advance(self, tokens: list[int]) -> None:
        t0 = time.perf_counter()
        ok = not tokens or self.matcher.consume_tokens(list(tokens))
        self.seconds += time.perf_counter() - t0
        if not ok:
            raise PairlineError(f"internal: a token the grammar forbids was emitted ({self.matcher.get_error()})")

    def rollback(self, n: int) -> None:
        if n:
            self.matcher.rollback(n)

    def forced(self) -> list[int]:
        """The tokens the grammar leaves no choice about from here (may be empty)."""
        t0 = time.perf_counter()
        out = list(self.matcher.compute_ff_tokens())
        self.seconds += time.perf_counter() - t0
        return out

    @property
    def finished(self) -> bool:
        """Nothing but the end of the answer may follow."""
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.matcher.is_accepting()

    def allowed(self) -> np.ndarray:
        """A bool [V] mask of the tokens allowed next."""
        t0 = time.perf_counter()
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self.masks += 1
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self.vocab_size].astype(bool)
        self.seconds += time.perf_counter() - t0
        return bits

    def mask(self, logits) -> np.ndarray:
        """A float32 copy of `logits` ([V], or wider: a runtime may pad its vocabulary) with every
        token the grammar forbids at -inf."""
        out = np.array(logits, dtype=np.float32, copy=True)
        allowed = self.allowed()
        out[: self.vocab_size][~allowed] = -np.inf
        out[self.vocab_size :] = -np.inf
        return out
