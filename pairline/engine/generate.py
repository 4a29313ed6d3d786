"""pairline's generation loop, written once over any Runtime: prefix reuse, chunked prefill,
cancel, streaming, sampling, stop conditions, lossless speculation and timings."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from pairline.engine.constraint import Constraint, Grammar, compile_grammar
from pairline.engine.prefix_store import PrefixStore
from pairline.engine.runtime import Interrupted, Runtime, common_prefix
from pairline.engine.sampling import Sampler, SamplingParams
from pairline.engine.speculative import DraftPolicy, PredictionDraft, PromptLookup, StepCosts
from pairline.engine.tokenizer import IncrementalDecoder, Tokenizer, encode_chat
from pairline.errors import PairlineError

Speculation = Literal["auto", "off", "prompt_lookup"]
RESTORE_MIN = 16  # tokens a stored state must save over the cache to be worth loading


class CancelToken:
    """Set from any thread. The loop checks it between prefill chunks and between decode steps; an
    interruptible runtime (llama.cpp) also polls `flag` from native code inside a call."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.requested_at: float | None = None
        # A NUL-terminated byte string, "" until cancelled and "\x01" after: C can poll it without
        # the GIL (llamacpp_runtime reads it with strlen).
        self.flag = ctypes.create_string_buffer(2)
        self._linked: weakref.WeakSet[CancelToken] = weakref.WeakSet()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        self._cancel(time.perf_counter())

    def _cancel(self, at: float | None) -> None:
        if not self._event.is_set():
            self.requested_at = at
            self._event.set()
        self.flag[0] = b"\x01"
        with self._lock:
            children, callbacks, self._callbacks = list(self._linked), self._callbacks, []
        for fn in callbacks:
            fn()
        for child in children:
            child._cancel(at)  # a linked token was cancelled when its parent was

    def on_cancel(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call `fn` once, on the cancelling thread, when this token is cancelled (now, if it already
        is), so a waiter need not poll. Returns what unregisters it (a no-op once it has run)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return lambda: self._forget(fn)
        fn()
        return lambda: None

    def _forget(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._callbacks:
                self._callbacks.remove(fn)

    def link(self, child: CancelToken) -> None:
        """Cancel `child` too when this token is cancelled (now, if it already is)."""
        with self._lock:
            self._linked.add(child)
        if self.cancelled:
            child._cancel(self.requested_at)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(slots=True)
class TokenEvent:
    token_id: int
    text: str  # the newly released text; "" while a character or a possible stop string is incomplete
    index: int  # position in the completion
    time: float  # seconds since the request started


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused from the previous request
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0  # drafted from the prediction, computed, and thrown away
    draft_tokens: int = 0  # all drafted tokens, either source
    accepted_draft_tokens: int = 0
    forced_tokens: int = 0  # appended by a grammar without a model step (a pairline extension)

    def to_openai(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {
                "accepted_prediction_tokens": self.accepted_prediction_tokens,
                "rejected_prediction_tokens": self.rejected_prediction_tokens,
            },
        }


@dataclass(slots=True)
class Timings:
    prefill_s: float = 0.0  # prompt evaluation, up to the first logits
    ttft_s: float = 0.0  # request start to the first sampled token
    decode_s: float = 0.0  # first token to the end
    total_s: float = 0.0
    decode_tokens_per_s: float = 0.0  # tokens after the first / time after the first
    forward_calls: int = 0  # decode and verify steps
    cancel_latency_s: float | None = None  # cancel() to the loop stopping
    constraint_s: float = 0.0  # in the grammar (checks, masks, forced tokens), part of decode_s

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """One request. Iterate it for TokenEvents; afterwards text, finish_reason, usage, timings are set."""

    engine: Engine
    prompt: list[int]
    params: SamplingParams
    prediction: list[int] | None = None
    speculation: Speculation = "auto"
    cancel: CancelToken = field(default_factory=CancelToken)
    draft_max: int = 32
    keep_prefix: int = 0  # leading prompt tokens every request shares (a system prompt): KV kept on disk
    constraint: Constraint | None = None  # the grammar the answer must match (constraint.py)

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    steps: list[tuple[int, int]] = field(default_factory=list)  # (drafted, accepted) per decode/verify call
    _started: bool = False

    def __iter__(self) -> Iterator[TokenEvent]:
        with self.engine.lock:
            yield from self.stepwise()

    def stepwise(self) -> Iterator[TokenEvent]:
        """The events, without holding the engine's lock for the whole answer: the caller takes
        `engine.lock` around each `next()`. A scheduler uses this to interleave requests on forks."""
        if self._started:
            raise RuntimeError("a Generation can be iterated once")
        self._started = True
        return self.engine._run(self)

    def run(self) -> Generation:
        for _ in self:
            pass
        return self


class _TextStream:
    """Turns tokens into released text: UTF-8-safe, holding back what could start a stop string."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # everything decoded so far
        self.released = 0  # chars already given to the caller
        self.stopped = False

    def push(self, token_id: int) -> str:
        self.text += self.decoder.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        if not self.stopped:
            self.text += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stops and not self.stopped:
            start = max(0, self.released - self.hold)
            cuts = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
            if cuts:
                self.text = self.text[: min(cuts)]
                self.stopped = True
        end = len(self.text) if (final or self.stopped) else max(self.released, len(self.text) - self.hold)
        delta = self.text[self.released : end]
        self.released = end
        return delta


class Engine:
    """A model ready to generate: a Runtime plus its tokenizer. One request runs at a time; the KV of
    the previous request is kept, so a request that extends it prefills only the new tokens."""

    def __init__(self, runtime: Runtime, tokenizer: Tokenizer, model_name: str = "model", prefill_chunk: int = 256):
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.prefill_chunk = prefill_chunk
        self.lock = threading.Lock()
        self.cached: list[int] = []  # exactly the tokens whose KV the runtime holds
        self.load_s = 0.0
        # what verify calls cost on this runtime, learned as it runs; shared by forks (same cores)
        self.step_costs = StepCosts(runtime.verify_slope_hint)
        self.prefix_store: PrefixStore | None = None  # set by load_engine where the runtime saves states

    # ---------------------------------------------------------------- public API

    def chat_prompt(self, messages: list[dict], continue_final: bool = False) -> list[int]:
        """The conversation's ids: control tokens by id, content as plain text, so a file or a message
        holding `<|im_end|>` cannot forge a turn. `continue_final`: write on from the last (assistant)
        message instead of starting a new answer."""
        return encode_chat(messages, self.tokenizer, continue_final=continue_final)

    def system_prefix(self, messages: list[dict], prompt: list[int]) -> int:
        """How many leading tokens of `prompt` are the rendered system turn (0 without one): the part
        every request of a tool shares, worth keeping on disk."""
        if not messages or messages[0].get("role") != "system":
            return 0
        head = encode_chat(messages[:1], self.tokenizer, add_generation_prompt=False)
        return len(head) if prompt[: len(head)] == head else 0

    def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        *,
        prediction: str | list[int] | None = None,
        speculation: Speculation = "auto",
        cancel: CancelToken | None = None,
        draft_max: int = 32,
        keep_prefix: int = 0,
        grammar: Grammar | None = None,
    ) -> Generation:
        """One request. `grammar`: what the answer must match; its `prefix` is the part of the answer
        already at the end of `prompt` (checked against the grammar before anything runs)."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise PairlineError("the prompt is empty")
        if isinstance(prediction, str):
            # predicted output is content: `<|im_end|>` in it is text, as the model would write it
            prediction = self.tokenizer.encode_text(prediction) if prediction else None
        if len(ids) >= self.runtime.n_ctx:
            raise PairlineError(
                f"the prompt has {len(ids)} tokens; the context holds {self.runtime.n_ctx} (raise --ctx)"
            )
        return Generation(
            self,
            ids,
            params or SamplingParams(),
            prediction or None,
            speculation,
            cancel or CancelToken(),
            draft_max,
            keep_prefix,
            compile_grammar(grammar, self.tokenizer) if grammar is not None else None,
        )

    def chat(self, messages: list[dict], params: SamplingParams | None = None, **kw) -> Generation:
        prompt = self.chat_prompt(messages)
        return self.generate(prompt, params, keep_prefix=self.system_prefix(messages, prompt), **kw)

    def prefill(self, tokens: list[int], *, cancel: CancelToken | None = None, keep_prefix: int = 0) -> Iterator[int]:
        """Make the KV cache hold `tokens`, reusing the longest prefix it already holds, one chunk of
        `prefill_chunk` tokens per step: yields how many positions are cached after each chunk.
        Without holding the lock: the caller takes `engine.lock` around each `next()`, so a
        scheduler steps other work in between and a server can prefill ahead of a request. Once
        `cancel` is set it stops at the next chunk's edge (inside a chunk where the runtime is
        interruptible), the cache holding the chunks done. A later request for these tokens then
        prefills nothing but its last position (which it needs logits for). `keep_prefix` as in
        `generate`: the shared head is restored from the prefix store where it is kept."""
        if not tokens:
            return
        keep, shared = self._reuse(tokens, keep_prefix, need_logits=False)
        for end, _ in self._chunks(tokens, keep, shared, cancel or CancelToken(), last="none"):
            yield end

    def fork(self) -> Engine:
        """An engine on the same weights with its own KV cache (a server session's). Forks share
        one lock: they compete for the same cores, so their requests run one at a time."""
        other = Engine(self.runtime.fork(), self.tokenizer, self.model_name, self.prefill_chunk)
        other.lock = self.lock
        other.step_costs = self.step_costs
        other.load_s = self.load_s
        other.prefix_store = self.prefix_store
        return other

    def copy_prefix(self, donors: list[Engine], tokens: list[int]) -> int:
        """Take the KV of `tokens`' head from the donor (a fork, idle) that holds the most of it, where
        that is RESTORE_MIN or more positions beyond this cache: a new session whose system prompt and
        file another session already computed copies a few MB instead of prefilling them (seconds on
        a CPU). Only where the runtime saves states. Returns the positions gained (0: none copied)."""
        limit = len(tokens) - 1  # the last one runs for its logits
        have = common_prefix(self.cached, tokens)
        if not self.runtime.saves_state or limit - have < RESTORE_MIN:
            return 0  # nothing to copy with, or no donor could hold enough more (the usual next turn)
        n, donor = max(((min(common_prefix(d.cached, tokens), limit), d) for d in donors), key=lambda c: c[0],
                       default=(0, None))
        if donor is None or n < have + RESTORE_MIN:
            return 0
        return max(0, self._load(donor.runtime.save_state(), donor.cached, n) - have)

    def reset(self) -> None:
        with self.lock:
            self.runtime.truncate(0)
            self.cached = []

    # ---------------------------------------------------------------- the loop

    def _truncate(self, n: int) -> None:
        self.runtime.truncate(n)
        del self.cached[n:]

    def _forward(self, tokens: list[int], rows, cancel: CancelToken | None = None, ids: bool = False):
        """Logits for `rows` ([1, V] or [n, V], None for "none"), or with `ids` the greedy ids ([1] or
        [n]) from the runtime's own argmax, which spares a device runtime shipping logits to the host."""
        try:
            if ids and rows != "none":
                out = self.runtime.argmax(tokens, rows)
            elif cancel is not None and self.runtime.interruptible:
                out = self.runtime.forward(tokens, rows, cancel=cancel)
            else:
                out = self.runtime.forward(tokens, rows)
        except Interrupted:
            raise  # the runtime left its cache as it was before the call
        except BaseException:
            # a failed or interrupted forward leaves the cache in an unknown state: forget it
            self.runtime.truncate(0)
            self.cached = []
            raise
        self.cached.extend(tokens)
        return out

    def _prefill(self, g: Generation, ids: bool) -> np.ndarray | None:
        """Evaluate the prompt's uncached suffix in chunks; returns the last position's logits (its
        greedy id, with `ids`), None when cancelled."""
        keep, shared = self._reuse(g.prompt, g.keep_prefix, need_logits=True)
        g.usage.cached_tokens = keep
        end, out = keep, None
        for step in self._chunks(g.prompt, keep, shared, g.cancel, "last", ids):
            end, out = step
        return out[-1] if end == len(g.prompt) else None  # short of the end: cancelled

    def _reuse(self, tokens: list[int], keep_prefix: int, need_logits: bool) -> tuple[int, int]:
        """Keep the cached prefix `tokens` starts with, or, for a request that marks a shared prefix
        (`keep_prefix`), restore the stored state sharing a longer head with it. Returns (positions
        kept, the shared prefix's length where it is still to be computed and saved, else 0)."""
        limit = len(tokens) - 1 if need_logits else len(tokens)  # logits need one token run
        keep = min(common_prefix(self.cached, tokens), limit)
        self._truncate(keep)
        shared = keep_prefix if 0 < keep_prefix < len(tokens) and self.prefix_store else 0
        if shared and limit - keep >= RESTORE_MIN:
            keep = self._restore(tokens, limit, keep)
        return keep, shared if keep < shared else 0

    def _restore(self, tokens: list[int], limit: int, keep: int) -> int:
        """Load the stored state that shares the longest head with `tokens` where that beats the
        `keep` positions cached; only the shared positions stay. Returns the positions cached."""
        found = self.prefix_store.longest(tokens)
        if found is None:
            return keep
        stored, state = found
        n = min(common_prefix(stored, tokens), limit)
        if n < keep + RESTORE_MIN:
            return keep
        return self._load(state, stored, n)

    def _load(self, state: bytes, stored: list[int], n: int) -> int:
        """Replace the cache with `state` (the KV of `stored`) and keep its first `n` positions.
        Returns the positions cached: `n`, or 0 when the runtime refused the state."""
        if not self.runtime.load_state(state, len(stored)):
            self.cached = []  # refused: the runtime's cache is empty now
            return 0
        self.cached = list(stored)
        self._truncate(n)
        return n

    def _store(self, g: Generation) -> None:
        """Keep the whole prompt's KV (and the answer's) for a later process whose prompt shares its
        head: the same files edited again. Only where it holds a chunk or more beyond what the store
        has (whether this request or a prefill ahead of it computed them); the state is copied here
        (the cache is ours now) and written on a thread (tens of MB)."""
        if not (g.keep_prefix and self.prefix_store and self.cached):
            return
        if len(g.prompt) - self.prefix_store.longest_head(g.prompt) < self.prefill_chunk:
            return
        tokens, state = list(self.cached), self.runtime.save_state()
        threading.Thread(target=self.prefix_store.save, args=(tokens, state), name="pairline-kv-save").start()

    def _chunks(self, tokens: list[int], keep: int, shared: int, cancel: CancelToken, last: str,
                ids: bool = False) -> Iterator[tuple[int, np.ndarray | None]]:
        """Run tokens[keep:] in chunks (cut at `shared` too, to save its KV); yields (end, output) per
        chunk, `last` rows for the final one. Stops early, quietly, once `cancel` is set."""
        if keep >= len(tokens):
            return  # all cached already
        cuts = sorted({*range(keep, len(tokens), self.prefill_chunk), *([shared] if shared else [])})
        for start, end in zip(cuts, [*cuts[1:], len(tokens)], strict=True):
            if cancel.cancelled:
                return
            try:
                out = self._forward(tokens[start:end], last if end == len(tokens) else "none", cancel, ids)
            except Interrupted:
                return
            if end == shared:
                self.prefix_store.save(tokens[:shared], self.runtime.save_state())
            yield end, out

    def _drafter(self, g: Generation):
        """The draft source and the policy that sizes its drafts. The priors are per-token acceptance
        guesses: a prediction is usually right; prompt lookup must prove itself."""
        if g.speculation == "off" or g.draft_max <= 0:
            return None, None
        if g.prediction:
            drafter = PredictionDraft(g.prediction, context=list(g.prompt))
            return drafter, DraftPolicy(self.step_costs, prior=0.9, max_len=g.draft_max)
        if g.speculation == "prompt_lookup" or (g.speculation == "auto" and g.params.greedy):
            return PromptLookup(list(g.prompt)), DraftPolicy(self.step_costs, prior=0.5, max_len=g.draft_max)
        return None, None

    def _draft_cap(self) -> int:
        """A batch-invariant runtime is exact only for calls up to its `exact_rows` tokens."""
        exact = self.runtime.exact_rows
        return exact - 1 if exact else 1 << 30

    @staticmethod
    def _pick(sampler: Sampler, logits: np.ndarray, c: Constraint | None) -> int:
        """The next token from one row of logits. Under a grammar, the greedy pick stands when the
        grammar allows it; only otherwise is the mask computed (the model mostly agrees with it)."""
        if c is None:
            return sampler.sample(logits)
        if sampler.params.greedy:
            best = int(np.argmax(logits))
            return best if c.allows([best]) == 1 else int(np.argmax(c.mask(logits)))
        return sampler.sample(c.mask(logits))

    def _verify_constrained(
        self, sampler: Sampler, drafts: list[int], logits: np.ndarray, c: Constraint
    ) -> tuple[int, int]:
        """`_verify` under a grammar: row i is masked by the grammar's state after drafts[:i], so a
        draft the grammar forbids is rejected like any other mismatch (still lossless)."""
        if sampler.params.greedy:
            best = np.argmax(logits, axis=-1).tolist()
            n = 0
            while n < len(drafts) and drafts[n] == best[n]:
                n += 1
            picked = [*drafts[:n], best[n]]
            k = c.allows(picked)
            if k == len(picked):
                return n, best[n]
            # picked[k] is forbidden: drafts before it stand; row k's masked argmax comes next
            c.advance(drafts[:k])
            try:
                return k, int(np.argmax(c.mask(logits[k])))
            finally:
                c.rollback(k)
        advanced = 0
        try:
            for i, d in enumerate(drafts):
                p = sampler.probs(c.mask(logits[i]))
                if sampler.uniform() < float(p[d]):
                    c.advance([d])
                    advanced += 1
                    continue
                p[d] = 0.0
                if float(p.sum()) <= 0.0:
                    return i, d
                return i, sampler.draw(p / p.sum())
            return len(drafts), sampler.sample(c.mask(logits[len(drafts)]))
        finally:
            c.rollback(advanced)

    def _verify(self, sampler: Sampler, drafts: list[int], logits: np.ndarray, ids: bool) -> tuple[int, int]:
        """logits[i] predicts the token after drafts[:i] (with `ids`, it is that row's greedy id).
        Returns (accepted drafts, next token). Greedy: accept while the draft is the argmax.
        Sampling: a draft is one certain proposal, so accept it with probability p(draft), else
        draw from p without it (lossless)."""
        if sampler.params.greedy:
            best = [int(t) for t in logits] if ids else np.argmax(logits, axis=-1).tolist()
            n = 0
            while n < len(drafts) and drafts[n] == best[n]:
                n += 1
            return n, best[n]
        for i, d in enumerate(drafts):
            p = sampler.probs(logits[i])
            if sampler.uniform() < float(p[d]):
                continue
            p[d] = 0.0
            if float(p.sum()) <= 0.0:  # the draft held all the mass; can only happen with rounding
                return i, d
            return i, sampler.draw(p / p.sum())
        return len(drafts), sampler.sample(logits[len(drafts)])

    def _run(self, g: Generation) -> Iterator[TokenEvent]:
        t0 = time.perf_counter()
        p = g.params
        tok = self.tokenizer
        stop_ids = set(p.stop_token_ids) | (set() if p.ignore_eos else set(tok.stop_ids))
        stream = _TextStream(tok, p.stop)
        sampler = Sampler(p)
        c = g.constraint
        g.usage.prompt_tokens = len(g.prompt)
        # greedy ids come from the runtime, not its logits (a grammar needs the logits to mask them)
        ids = p.greedy and self.runtime.has_argmax and c is None

        def finish(reason: str) -> Iterator[TokenEvent]:
            g.finish_reason = reason
            tail = stream.finish()
            g.text = stream.text
            if tail:
                yield TokenEvent(-1, tail, len(g.token_ids), time.perf_counter() - t0)

        def emit(tokens: list[int]):
            """Release decided tokens, stopping at a stop token, a stop string or the budget;
            returns True once the answer is over."""
            for t in tokens:
                if t in stop_ids:
                    g.usage.completion_tokens += 1
                    yield from finish("stop")
                    return True
                if c is not None:
                    c.advance([t])
                g.token_ids.append(t)
                g.usage.completion_tokens += 1
                delta = stream.push(t)
                yield TokenEvent(t, delta, len(g.token_ids) - 1, time.perf_counter() - t0)
                if stream.stopped:
                    yield from finish("stop")
                    return True
                if len(g.token_ids) >= p.max_tokens:
                    yield from finish("length")
                    return True
            return False

        logits = self._prefill(g, ids)
        t_prefill = time.perf_counter()
        g.timings.prefill_s = t_prefill - t0
        if logits is None:
            yield from self._cancelled(g, finish)
            return
        drafter, policy = self._drafter(g)
        next_tok = int(logits) if ids else self._pick(sampler, logits, c)
        t_first = time.perf_counter()
        g.timings.ttft_s = t_first - t0
        pending = [next_tok]  # decided this round; only the last is not in the KV yet
        try:
            while True:
                if (yield from emit(pending)):
                    return
                forced: list[int] = []
                if c is not None:
                    if c.finished:  # nothing but the end may follow: no model step for it
                        yield from finish("stop")
                        return
                    forced = c.forced()[: self._draft_cap()]
                    if forced:
                        g.usage.forced_tokens += len(forced)
                        if (yield from emit(forced)):
                            return
                        if c.finished:
                            yield from finish("stop")
                            return
                if drafter is not None:
                    drafter.accept([*pending, *forced])
                if g.cancel.cancelled:
                    yield from self._cancelled(g, finish)
                    return
                feed = [pending[-1], *forced]  # decided, not yet in the KV
                room = min(p.max_tokens - len(g.token_ids) - 1, self.runtime.n_ctx - self.runtime.n_past - len(feed))
                if room < 0:
                    yield from finish("length")
                    return
                drafts = []
                if drafter is not None:
                    offered = drafter.draft(min(policy.max_len, room, self._draft_cap() - len(forced)))
                    drafts = offered[: policy.choose(len(offered))]
                n_before = self.runtime.n_past
                t_step = time.perf_counter()
                width = len(feed) + len(drafts)
                try:
                    out = self._forward([*feed, *drafts], "all" if width > 1 else "last", g.cancel, ids)
                except Interrupted:
                    yield from self._cancelled(g, finish)
                    return
                self.step_costs.record(width, time.perf_counter() - t_step)
                g.timings.forward_calls += 1
                logits = out[len(feed) - 1 :] if width > 1 else out  # row i follows drafts[:i]
                if c is not None:
                    accepted, next_tok = self._verify_constrained(sampler, drafts, logits, c)
                else:
                    accepted, next_tok = self._verify(sampler, drafts, logits, ids)
                g.steps.append((len(drafts), accepted))
                if drafts:
                    self._truncate(n_before + len(feed) + accepted)
                    policy.update(len(drafts), accepted)
                    g.usage.draft_tokens += len(drafts)
                    g.usage.accepted_draft_tokens += accepted
                    if drafter.source == "prediction":
                        g.usage.accepted_prediction_tokens += accepted
                        g.usage.rejected_prediction_tokens += len(drafts) - accepted
                pending = [*drafts[:accepted], next_tok]
        finally:
            with contextlib.suppress(Exception):  # a cache: failing to keep it costs time later, not this answer
                self._store(g)
            t_end = time.perf_counter()
            g.timings.constraint_s = c.seconds if c is not None else 0.0
            g.timings.total_s = t_end - t0
            g.timings.decode_s = t_end - t_first
            if len(g.token_ids) > 1 and g.timings.decode_s > 0:
                g.timings.decode_tokens_per_s = (len(g.token_ids) - 1) / g.timings.decode_s

    def _cancelled(self, g: Generation, finish) -> Iterator[TokenEvent]:
        if g.cancel.requested_at is not None:
            g.timings.cancel_latency_s = time.perf_counter() - g.cancel.requested_at
        yield from finish("cancelled")
