"""One engine, many users: a worker thread that owns all model compute, a pool of KV caches
(engine forks) shared by WebSocket sessions and the HTTP prefix cache, and round-robin stepping.

Why one thread: the engine's compute is single-threaded and every fork shares one lock, so
requests cannot run in parallel anyway. Interleaving them token by token on one thread is what
makes N users fair: a new request waits at most one step of each running one (or one prefill),
not for whole answers. Events go to the asyncio side through each job's `sink`.

When no request waits or runs, the engine prefills ahead: a session's `Ahead` wish (its next
prompt as far as the client's draft and context tell it) one chunk per step, sessions in turn.
Real work cancels it the moment it is submitted (inside a chunk on an interruptible runtime), so
a request never waits for someone's draft more than what is left of one chunk; a session's own
request withdraws its wish first and lets the chunk under way finish (its own prefill's start)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pairline.engine.constraint import Grammar
from pairline.engine.generate import CancelToken, Engine, Generation, TokenEvent
from pairline.engine.runtime import common_prefix
from pairline.engine.sampling import SamplingParams
from pairline.errors import PairlineError
from pairline.server.metrics import Metrics

log = logging.getLogger("pairline.server")


PIECE = 512  # tokens of a long prefill run as one scheduler step (whole engine chunks, at least this many)


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


@dataclass(slots=True, eq=False)
class Slot:
    """One KV cache: an engine fork and who it currently belongs to."""

    engine: Engine
    owner: str | None = None  # session id, "http", or None (free)
    busy: bool = False
    last_used: float = 0.0
    ahead_from: int | None = None  # the first position prefilled ahead since the last request here


@dataclass(eq=False)
class Job:
    """One generation request. `make_prompt` runs on the worker (tokenizing a long history is part
    of what a request costs, and keeps the event loop free)."""

    owner: str  # session id, or "http" for the shared prefix cache
    make_prompt: Callable[[], list[int]]
    params: SamplingParams
    sink: Callable[[str, object], None]  # ("token", TokenEvent) | ("done", Generation) | ("error", Exception)
    prediction: str | None = None
    grammar: Grammar | None = None  # what the answer must match (engine/constraint.py)
    infill: bool = False  # a fill-in-the-middle completion (an editor's inline suggestion): metered apart
    cancel: CancelToken = field(default_factory=CancelToken)
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float = 0.0
    t_first: float = 0.0
    t_last: float = 0.0
    text_first: float = 0.0  # when the engine released the first / last non-empty text (what clients see)
    text_last: float = 0.0
    text_events: int = 0
    prefill_pieces: int = 0  # a long prompt's prefill, split so other sessions can step in between
    piece_s: float = 0.0
    cached_before: int | None = None
    busy_s: float = 0.0  # time inside the engine (its steps), cumulative
    busy_first_text: float = 0.0
    busy_last_text: float = 0.0
    kv_rebuilt: bool = False  # its session's KV had been evicted; the whole history was prefilled again
    prefilled_ahead: int = 0  # prompt positions the KV held because they were prefilled ahead of the request
    prompt: list[int] | None = None
    gen: Generation | None = None
    slot: Slot | None = None
    _events: Iterator[TokenEvent] | None = None

    def server_timings(self) -> dict:
        """The server's own timings (seconds): queue wait, then the engine's prefill / TTFT / decode."""
        t = self.gen.timings if self.gen else None
        prep = (self.t_first - self.t_start - t.ttft_s) if t and self.t_first else 0.0
        return {
            "queue_s": self.t_start - self.t_submit if self.t_start else time.perf_counter() - self.t_submit,
            "prepare_s": max(0.0, prep),  # tokenizing and choosing a KV cache
            "prefill_s": t.prefill_s if t else 0.0,
            "ttft_s": t.ttft_s if t else 0.0,  # engine: start of the request to the first token
            "server_ttft_s": self.t_first - self.t_submit if self.t_first else None,  # queue + prepare + engine TTFT
            "decode_s": t.decode_s if t else 0.0,
            "total_s": (self.t_last or time.perf_counter()) - self.t_submit,
            "decode_tokens_per_s": t.decode_tokens_per_s if t else 0.0,
            "forward_calls": t.forward_calls if t else 0,
            "cancel_latency_s": t.cancel_latency_s if t else None,
            "kv_rebuilt": self.kv_rebuilt,
            "prefill_pieces": self.prefill_pieces,
            # the engine's side of each text delta: mean gap between them as they left the engine
            "text_events": self.text_events,
            "emit_gap_s": (self.text_last - self.text_first) / (self.text_events - 1) if self.text_events > 1 else None,
            # of which the engine's own steps (forward, sampling, detokenizing); the rest is the server's loop
            "engine_gap_s": (self.busy_last_text - self.busy_first_text) / (self.text_events - 1)
            if self.text_events > 1 else None,
        }


class JobEvents:
    """A job's events on their way from the engine thread (`put`, the job's sink) to the asyncio
    task that streams them (`get`).

    Why not an asyncio.Queue fed by call_soon_threadsafe: that wakes the event loop once per token,
    a pipe write on the engine thread and a wakeup that then competes with the engine for the GIL.
    Here the loop is woken only when the task is waiting, and tokens that arrived meanwhile (a
    speculative step releases several at once) come out of `get` together, to go out as one delta."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._items: collections.deque[tuple[str, object]] = collections.deque()
        self._waiter: asyncio.Future | None = None  # set while the task waits for an event
        self._wake_sent = False

    def put(self, kind: str, payload: object) -> None:
        """On the engine thread. Raises RuntimeError when the loop is gone (nobody is listening)."""
        with self._lock:
            self._items.append((kind, payload))
            if self._waiter is None or self._wake_sent:  # the task will find it before it waits
                if self._loop.is_closed():
                    raise RuntimeError("the event loop is closed")
                return
            self._wake_sent = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            waiter, self._waiter, self._wake_sent = self._waiter, None, False
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> tuple[str, object]:
        """The next event: ("tokens", [TokenEvent, ...]) for every token that has arrived in a row,
        else ("done", Generation) or ("error", Exception)."""
        while True:
            with self._lock:
                if self._items:
                    kind, payload = self._items.popleft()
                    if kind != "token":
                        return kind, payload
                    batch = [payload]
                    while self._items and self._items[0][0] == "token":
                        batch.append(self._items.popleft()[1])
                    return "tokens", batch
                waiter = self._waiter = self._loop.create_future()
            await waiter


def free_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


class KVPool:
    """Resident KV caches, at most `max_slots`, least recently used evicted first. A session keeps
    its slot between turns; HTTP requests pick the free slot sharing the longest prefix with their
    prompt (the prefix cache). Only the worker thread calls this."""

    def __init__(self, base: Engine, max_slots: int, metrics: Metrics):
        self.base = base
        self.max_slots = max(1, max_slots)
        self.metrics = metrics
        self.slots: list[Slot] = [Slot(base)]  # the loaded engine's own KV is the first slot

    def drop_owner(self, owner: str) -> None:
        for s in self.slots:
            if s.owner == owner:
                s.owner = None

    def owned(self, owner: str) -> Slot | None:
        return next((s for s in self.slots if s.owner == owner), None)

    def acquire(self, owner: str, prompt: list[int]) -> Slot | None:
        """A slot for `owner`; None if every slot is busy."""
        if owner != "http":
            mine = self.owned(owner)
            if mine is not None:
                return self._take(mine, owner) if not mine.busy else None
        else:
            best, best_len = None, 0
            for s in self.slots:
                if not s.busy and s.owner in ("http", None):
                    n = common_prefix(s.engine.cached, prompt)
                    if n > best_len:
                        best, best_len = s, n
            # reuse a cache the prompt mostly extends; one it would mostly overwrite is worth more kept
            if best is not None and (best_len * 2 >= len(best.engine.cached) or len(self.slots) >= self.max_slots):
                return self._take(best, owner)
        free = [s for s in self.slots if s.owner is None and not s.busy]
        if free:  # a spare, or the cache of a session that ended
            return self._take(max(free, key=lambda s: common_prefix(s.engine.cached, prompt)), owner)
        if len(self.slots) < self.max_slots:
            return self._take(self._new_slot(), owner)
        idle = [s for s in self.slots if not s.busy]
        if not idle:
            return None
        victim = min(idle, key=lambda s: s.last_used)  # least recently used
        if victim.owner != "http":
            self.metrics.add("pairline:kv_evictions_total")
            log.info("kv: evicting session %s (least recently used)", victim.owner)
        return self._take(victim, owner)

    def ahead_slot(self, owner: str) -> Slot | None:
        """The slot a session prefills ahead on: its own, else a free one it claims. Never another
        session's (it may be typing too), never a new fork (that is the helper thread's), never busy."""
        mine = self.owned(owner)
        if mine is not None:
            return None if mine.busy else mine
        free = [s for s in self.slots if s.owner is None and not s.busy]
        if not free:
            return None
        slot = free[0]
        slot.owner, slot.last_used, slot.ahead_from = owner, time.monotonic(), None
        return slot

    def wants_spare(self) -> bool:
        return len(self.slots) < self.max_slots and not any(s.owner is None and not s.busy for s in self.slots)

    def add_spare(self, engine: Engine) -> None:
        if len(self.slots) < self.max_slots:
            self.slots.append(Slot(engine))
            self.metrics.set("pairline:kv_resident_caches", len(self.slots))

    def _new_slot(self) -> Slot:
        slot = Slot(self.base.fork())
        self.slots.append(slot)
        self.metrics.set("pairline:kv_resident_caches", len(self.slots))
        return slot

    def _take(self, slot: Slot, owner: str) -> Slot:
        slot.owner, slot.busy, slot.last_used = owner, True, time.monotonic()
        return slot

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()


class Scheduler:
    def __init__(self, engine: Engine, metrics: Metrics, max_slots: int, max_queue: int):
        self.engine = engine
        self.metrics = metrics
        self.pool = KVPool(engine, max_slots, metrics)
        self.max_queue = max_queue
        self.pending: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.cv = threading.Condition()
        self._stop = False
        self._owners_known: set[str] = set()  # sessions that have held KV (to tell a rebuild)
        self._released: list[str] = []  # owners whose slots are to be freed (set from other threads)
        self._spares: list[Engine] = []  # forks made by the helper thread, not yet in the pool
        self._forking = False
        self.ahead: dict[str, Ahead] = {}  # owner -> what to prefill ahead of its next request (under cv)
        self.thread = threading.Thread(target=self._loop, name="pairline-engine", daemon=True)

    # ------------------------------------------------------------ any thread

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cv:
            self._stop = True
            for job in [*self.pending, *self.active]:
                job.cancel.cancel()
            self.cv.notify_all()
        self.thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self.cv:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self.pending) >= self.max_queue:
                raise QueueFull(f"{len(self.pending)} requests are already waiting")
            self.pending.append(job)
            self.metrics.set("pairline:num_requests_waiting", len(self.pending))
            for wish in self.ahead.values():  # real work first: stop any prefill ahead, inside its chunk
                wish.cancel.cancel()
            self.cv.notify_all()

    def set_ahead(self, owner: str, make_tokens: Callable[[], list[int]]) -> None:
        """What `owner`'s next request will start with changed (a draft, context): prefill it when the
        engine has nothing else to do. `make_tokens` runs on the worker; each call replaces the last
        (a generation already stepping finishes its chunk, then starts over on the new tokens)."""
        with self.cv:
            wish = self.ahead.get(owner)
            if wish is None:
                wish = self.ahead[owner] = Ahead(owner, make_tokens)
            wish.make_tokens = make_tokens
            wish.version += 1
            wish.blocked = False
            self.cv.notify_all()

    def drop_ahead(self, owner: str, stop_chunk: bool = True) -> None:
        """Nothing more to prefill for `owner`. Its own request coming (`stop_chunk` False) lets a
        chunk under way finish: that is the start of the request's own prefill, not someone else's."""
        with self.cv:
            wish = self.ahead.pop(owner, None)
            if wish is not None and stop_chunk:
                wish.cancel.cancel()

    def release_owner(self, owner: str) -> None:
        """A session ended: its KV slot becomes free (done on the worker, which owns the pool)."""
        with self.cv:
            self._released.append(owner)
            wish = self.ahead.pop(owner, None)
            if wish is not None:
                wish.cancel.cancel()
            self.cv.notify_all()

    def wake(self) -> None:
        with self.cv:
            self.cv.notify_all()

    # ------------------------------------------------------------ worker thread

    def _loop(self) -> None:
        running = 0
        while True:
            with self.cv:
                while not self._stop and not self.active and not self._startable() and not self._ahead_ready():
                    self._free_released()
                    self._adopt_spares()
                    self.cv.wait(0.5)
                if self._stop and not self.active:
                    for job in self.pending:
                        self._emit(job, "error", PairlineError("the server is shutting down"))
                    self.pending.clear()
                    return
                self._free_released()
                self._adopt_spares()
                admit = self._take_pending() if self.pending else []  # the common step: nothing new
                wish = self._next_ahead() if not admit and not self.active and not self.pending else None
            for job in admit:
                self._start(job)
            for job in list(self.active):
                self._step(job)
            if wish is not None:
                self._step_ahead(wish)
            if len(self.active) != running:  # a gauge write per token would be a lock per token
                running = len(self.active)
                self.metrics.set("pairline:num_requests_running", running)

    def _adopt_spares(self) -> None:
        """Keep one free KV cache ready for the next new session. Forking takes ~0.3 s, so a helper
        thread does it (the engine thread keeps stepping); the engine thread adopts the result."""
        while self._spares:
            self.pool.add_spare(self._spares.pop())
            self._unblock_ahead()
        if not self._forking and not self._stop and self.pool.wants_spare():
            self._forking = True
            threading.Thread(target=self._fork_spare, name="pairline-fork", daemon=True).start()

    def _fork_spare(self) -> None:
        try:
            engine = self.engine.fork()
        except Exception as err:  # out of memory, say: stay at the caches we have
            log.warning("kv: cannot fork another cache (%s); keeping %d", err, len(self.pool.slots))
            engine = None
        with self.cv:
            self._forking = False
            if engine is None:
                self.pool.max_slots = len(self.pool.slots)
            else:
                self._spares.append(engine)
            self.cv.notify_all()

    @staticmethod
    def _emit(job: Job, kind: str, payload: object) -> None:
        try:
            job.sink(kind, payload)
        except Exception:  # its event loop is gone (shutdown): nobody is listening, stop the work
            job.cancel.cancel()

    def _free_released(self) -> None:
        while self._released:
            owner = self._released.pop()
            self.pool.drop_owner(owner)
            self._owners_known.discard(owner)
            self._unblock_ahead()

    def _startable(self) -> bool:
        return bool(self.pending) and len(self.active) < self.pool.max_slots

    def _take_pending(self) -> list[Job]:
        """FIFO, but a job whose session is already running waits behind it (one KV, one writer)."""
        out: list[Job] = []
        running = {j.owner for j in self.active if j.owner != "http"}
        keep: collections.deque[Job] = collections.deque()
        while self.pending:
            job = self.pending.popleft()
            if len(self.active) + len(out) < self.pool.max_slots and (job.owner == "http" or job.owner not in running):
                out.append(job)
                running.add(job.owner)
            else:
                keep.append(job)
        self.pending = keep
        self.metrics.set("pairline:num_requests_waiting", len(self.pending))
        return out

    def _start(self, job: Job) -> None:
        job.t_start = time.perf_counter()
        self.metrics.observe("queue", job.t_start - job.t_submit)
        if job.cancel.cancelled:
            self._emit(job, "error", CancelledWhileQueued())
            return
        try:
            job.prompt = job.make_prompt()
            had_kv = self.pool.owned(job.owner) is not None
            got = self.pool.acquire(job.owner, job.prompt)
            if got is None:  # cannot happen with active < max_slots; be safe: requeue
                with self.cv:
                    self.pending.appendleft(job)
                return
            job.slot = got
            self._seed(got, job.prompt)
            if job.owner != "http":
                job.kv_rebuilt = job.owner in self._owners_known and not had_kv
                self._owners_known.add(job.owner)
            if got.ahead_from is not None:  # what this request reuses of what was prefilled ahead
                reused = min(common_prefix(got.engine.cached, job.prompt), len(job.prompt) - 1)
                job.prefilled_ahead = max(0, reused - got.ahead_from)
                got.ahead_from = None
                self.metrics.add("pairline:prefill_ahead_used_tokens_total", job.prefilled_ahead)
            job.gen = job.slot.engine.generate(job.prompt, job.params, prediction=job.prediction, cancel=job.cancel,
                                               grammar=job.grammar)
            job._events = self._pieces_then_steps(job)
        except Exception as err:  # bad input that only the engine can tell (prompt too long, ...)
            self._fail(job, err)
            return
        self.active.append(job)

    def _seed(self, slot: Slot, prompt: list[int]) -> None:
        """A cache that holds little of `prompt` (a new session's, a spare) copies the head another
        idle cache already computed (every session on one file starts with the same system prompt
        and file): milliseconds, where prefilling it again takes seconds on a CPU."""
        donors = [s.engine for s in self.pool.slots if s is not slot and not s.busy]
        with slot.engine.lock:
            gained = slot.engine.copy_prefix(donors, prompt)
        if gained:
            self.metrics.add("pairline:kv_prefix_copies_total")
            self.metrics.add("pairline:kv_prefix_copied_tokens_total", gained)

    def _pieces_then_steps(self, job: Job) -> Iterator[TokenEvent | None]:
        """A long uncached prompt is prefilled in pieces of PIECE tokens, each one step (None), so other
        sessions keep streaming while it loads; then the generation's own steps. The pieces stop at
        the start of the prompt's last chunk: the chunks are cut where one prefill would cut them,
        so the KV, and the answer, are the same."""
        engine, prompt = job.gen.engine, job.prompt
        cached = min(common_prefix(engine.cached, prompt), len(prompt) - 1)
        if len(prompt) - cached > PIECE + PIECE // 2:
            t0 = time.perf_counter()
            chunk = engine.prefill_chunk
            ahead = prompt[: cached + (len(prompt) - cached - 1) // chunk * chunk]
            done = cached
            for end in engine.prefill(ahead, cancel=job.cancel):
                if end - done >= PIECE or end == len(ahead):
                    done = end
                    job.prefill_pieces += 1
                    job.piece_s = time.perf_counter() - t0
                    yield None
            job.cached_before = cached
        yield from job.gen.stepwise()

    def _step(self, job: Job) -> None:
        t0 = time.perf_counter()
        try:
            with job.gen.engine.lock:
                ev = next(job._events)
        except StopIteration:
            self._finish(job)
            return
        except Exception as err:
            if not isinstance(err, PairlineError):
                log.exception("generation failed")
            self._fail(job, err)
            return
        if ev is None:  # a prefill piece ended: let the others step
            return
        now = time.perf_counter()
        job.busy_s += now - t0
        if not job.t_first:
            job.t_first = now
            self.metrics.observe("ttft", now - job.t_submit)
            if job.infill:
                self.metrics.observe("fim_ttft", now - job.t_submit)
        elif ev.token_id >= 0:
            self.metrics.observe("itl", now - job.t_last)
        job.t_last = now
        if ev.text:
            if not job.text_events:
                job.text_first, job.busy_first_text = now, job.busy_s
            job.text_last, job.busy_last_text = now, job.busy_s
            job.text_events += 1
        self._emit(job, "token", ev)

    def _finish(self, job: Job) -> None:
        self._retire(job)
        g = job.gen
        if job.cached_before is not None:  # report the request as a whole, not its last piece
            g.usage.cached_tokens = job.cached_before
            g.timings.prefill_s += job.piece_s
            g.timings.ttft_s += job.piece_s
            g.timings.total_s += job.piece_s
        if not job.t_first:  # cancelled before the first token
            job.t_first = job.t_last = time.perf_counter()
        m = self.metrics
        m.add("pairline:prompt_tokens_total", g.usage.prompt_tokens)
        m.add("pairline:generation_tokens_total", g.usage.completion_tokens)
        m.add("pairline:prefix_cache_queries_total", g.usage.prompt_tokens)
        m.add("pairline:prefix_cache_hits_total", g.usage.cached_tokens)
        m.observe("e2e", job.t_last - job.t_submit)
        m.observe("prefill", g.timings.prefill_s)
        m.observe("decode", g.timings.decode_s)
        m.finish(g.finish_reason or "unknown")
        if job.infill:
            m.add("pairline:fim_requests_total")
            m.add("pairline:fim_requests_cancelled_total", g.finish_reason == "cancelled")
        self._emit(job, "done", g)

    def _fail(self, job: Job, err: Exception) -> None:
        self._retire(job)
        self._emit(job, "error", err)

    def _retire(self, job: Job) -> None:
        if job in self.active:
            self.active.remove(job)
        if job.slot is not None:
            self.pool.release(job.slot)
            self._unblock_ahead()

    # ------------------------------------------------------------ prefill ahead (worker thread)

    def _ahead_ready(self) -> bool:
        """Under cv: a wish could take a step now (no real work is waiting)."""
        return not self.pending and any(not w.blocked for w in self.ahead.values())

    def _unblock_ahead(self) -> None:
        with self.cv:  # re-entrant: also called with it held
            for wish in self.ahead.values():  # a slot may have come free: try again
                wish.blocked = False

    def _next_ahead(self) -> Ahead | None:
        """Under cv: the wish to step, sessions in turn (the one stepped longest ago), with a fresh
        cancel token if real work stopped its last generation."""
        ready = [w for w in self.ahead.values() if not w.blocked]
        if not ready:
            return None
        wish = min(ready, key=lambda w: w.stepped)
        if wish.cancel.cancelled:
            wish.cancel, wish.gen = CancelToken(), None
        return wish

    def _step_ahead(self, wish: Ahead) -> None:
        """One chunk of `wish`'s prefill, or the start of it."""
        t0 = time.perf_counter()
        wish.stepped = t0
        try:
            if (wish.gen is None or wish.built != wish.version) and not self._begin_ahead(wish):
                return
            with wish.slot.engine.lock:
                end = next(wish.gen)
        except StopIteration:
            wish.gen = None
            if not wish.cancel.cancelled and wish.built == wish.version:
                self._ahead_done(wish)  # the KV holds all of it: nothing more until the next change
            return
        except Exception as err:  # a bad prompt, a runtime failure: prefill ahead is an optimization
            log.warning("prefill ahead for %s failed: %s", wish.owner, err)
            wish.gen = None
            with self.cv:  # not tried again until the session changes it (a new wish)
                if self.ahead.get(wish.owner) is wish:
                    del self.ahead[wish.owner]
            return
        self.metrics.add("pairline:prefill_ahead_tokens_total", end - wish.done_to)
        self.metrics.add("pairline:prefill_ahead_seconds_total", time.perf_counter() - t0)
        wish.done_to = end
        wish.slot.last_used = time.monotonic()

    def _begin_ahead(self, wish: Ahead) -> bool:
        """A generation for the wish's current tokens on its session's slot; False when it cannot run."""
        with self.cv:
            version = wish.version
            slot = self.pool.ahead_slot(wish.owner) if self.ahead.get(wish.owner) is wish else None
            if slot is None:
                wish.blocked = True  # until a slot comes free or the wish changes
                return False
        tokens = wish.make_tokens()
        engine, wish.built = slot.engine, version
        if not tokens or len(tokens) >= engine.runtime.n_ctx:  # the request itself will say it is too long
            self._ahead_done(wish)
            return False
        keep = common_prefix(engine.cached, tokens)  # what the engine's prefill keeps
        slot.ahead_from = keep if slot.ahead_from is None else min(slot.ahead_from, keep)
        wish.slot, wish.done_to = slot, keep
        wish.gen = engine.prefill(tokens, cancel=wish.cancel)
        return True

    def _ahead_done(self, wish: Ahead) -> None:
        with self.cv:
            if self.ahead.get(wish.owner) is wish and wish.built == wish.version:
                del self.ahead[wish.owner]
            else:
                wish.gen = None  # it changed meanwhile: start over on the new tokens


@dataclass(eq=False)
class Ahead:
    """A session's wish: its KV should hold `make_tokens()` (the leading ids of its next prompt)."""

    owner: str
    make_tokens: Callable[[], list[int]]
    version: int = 0  # bumped by each set_ahead
    built: int = -1  # the version `gen` prefills
    blocked: bool = False  # no slot for it now
    stepped: float = 0.0
    done_to: int = 0  # positions cached after the last chunk
    cancel: CancelToken = field(default_factory=CancelToken)
    slot: Slot | None = None
    gen: Iterator[int] | None = None


class CancelledWhileQueued(Exception):
    """A job cancelled while it was still waiting in the queue."""
