"""Choosing a backend inside a tier: session affinity on a consistent-hash ring, least outstanding
requests weighted by a moving average of TTFT, and a circuit breaker per backend."""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def _hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing with virtual nodes. A key maps to the first node clockwise from its hash
    that is eligible; removing (or skipping) a node moves only the keys that were on it, and every
    router replica with the same node list computes the same mapping (no shared state)."""

    def __init__(self, nodes: Iterable[str], vnodes: int = 64):
        self.points: list[tuple[int, str]] = sorted((_hash(f"{n}#{i}"), n) for n in nodes for i in range(vnodes))
        self.hashes = [h for h, _ in self.points]

    def lookup(self, key: str, eligible: Callable[[str], bool] | None = None) -> str | None:
        if not self.points:
            return None
        start = bisect.bisect(self.hashes, _hash(key))
        seen: set[str] = set()
        for k in range(len(self.points)):
            node = self.points[(start + k) % len(self.points)][1]
            if node in seen:
                continue
            if eligible is None or eligible(node):
                return node
            seen.add(node)
        return None


CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


@dataclass(slots=True)
class CircuitBreaker:
    """closed --N consecutive failures--> open --cooldown--> half_open: one probe (a request or a
    health check) --success--> closed / --failure--> open again. Keeps a dead backend out of every
    choice for the cooldown instead of making each request rediscover that it is dead."""

    failures_to_open: int = 3
    cooldown_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False  # half-open: the one probe is out

    def current(self) -> str:
        if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self.state, self.probing = HALF_OPEN, False
        return self.state

    def available(self) -> bool:
        """Could take a request now (no side effect)."""
        st = self.current()
        return st == CLOSED or (st == HALF_OPEN and not self.probing)

    def acquire(self) -> bool:
        """Take a request; in half-open this is the probe, and nobody else gets one until it ends."""
        if not self.available():
            return False
        if self.state == HALF_OPEN:
            self.probing = True
        return True

    def release(self) -> None:
        """A probe that ended with neither success nor failure (the client left): let another try."""
        self.probing = False

    def success(self) -> None:
        self.state, self.failures, self.probing = CLOSED, 0, False

    def failure(self) -> None:
        self.failures += 1
        if self.current() == HALF_OPEN or self.failures >= self.failures_to_open:
            self.state, self.opened_at, self.probing = OPEN, self.clock(), False

    def gauge(self) -> int:
        return {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}[self.current()]


@dataclass(slots=True, eq=False)
class Target:
    """What the balancer knows about one backend."""

    name: str
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    healthy: bool = True  # the last health check (or connection attempt) succeeded
    outstanding: int = 0  # requests in flight through this router replica
    ewma_ttft: float | None = None  # seconds

    def available(self) -> bool:
        return self.healthy and self.breaker.available()

    def observe_ttft(self, seconds: float, alpha: float = 0.3) -> None:
        self.ewma_ttft = seconds if self.ewma_ttft is None else alpha * seconds + (1 - alpha) * self.ewma_ttft


def score(t: Target, prior: float) -> float:
    """Expected wait: requests ahead (plus this one) times the backend's recent TTFT. A backend
    never measured gets the best TTFT seen in its tier, so it is tried rather than starved."""
    return (t.outstanding + 1) * (t.ewma_ttft if t.ewma_ttft is not None else prior)


def choose(targets: list[Target], key: str | None = None, ring: HashRing | None = None, slack: int = 4,
           exclude: Iterable[Target] = (), prefer: Target | None = None) -> Target | None:
    """The backend for the next request, or None when none is available.

    - `prefer` (the backend a WebSocket session already has open) wins while it is available;
    - with a session `key`, the ring's backend for it, unless it has `slack` more requests in flight
      than the least loaded (then the session moves: a cold KV beats a long queue);
    - otherwise the lowest `score`."""
    excluded = set(map(id, exclude))
    cands = [t for t in targets if id(t) not in excluded and t.available()]
    if not cands:
        return None
    known = [t.ewma_ttft for t in targets if t.ewma_ttft is not None]
    prior = min(known) if known else 1.0
    best = min(cands, key=lambda t: score(t, prior))
    pick = None
    if prefer is not None and prefer in cands:
        pick = prefer
    elif key is not None and ring is not None:
        by_name = {t.name: t for t in cands}
        name = ring.lookup(key, by_name.__contains__)
        pick = by_name.get(name) if name else None
    if pick is not None and pick.outstanding <= best.outstanding + slack:
        return pick
    return best
