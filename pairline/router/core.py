"""The router's core: tiers of backends, which one serves a request (its `mode`, the classifier,
affinity, load, TTFT), the attempts in order (retries on the tier, then failover to the other),
admission control and the request ledger. HTTP (pairline.router.app) and WebSocket sessions
(pairline.router.session) are both built on it. docs/scaling.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from pairline.router.backends import Backend, Retryable, check_health, start_inprocess
from pairline.router.balance import HashRing, choose
from pairline.router.classify import Route as TierRoute
from pairline.router.classify import classify_messages
from pairline.router.config import MODES, TIERS, RouterConfig
from pairline.router.metrics import RouterMetrics, labels
from pairline.wire.protocol import ProtocolError, bearer_ok
from pairline.wire.session_socket import CLOSE_GOING_AWAY

log = logging.getLogger("pairline.router")


def other_tier(tier: str) -> str:
    return "deep" if tier == "realtime" else "realtime"


def check_mode(value, param: str = "mode") -> str | None:
    if value is None:
        return None
    if value not in MODES:
        raise ProtocolError(f"{param!r} must be one of {', '.join(MODES)}, got {value!r}", code="invalid_value",
                            param=param)
    return value


@dataclass(slots=True, eq=False)
class Ledger:
    """One accepted request: it ends exactly once, as completed, errored or cancelled, so
    accepted = completed + errored + cancelled holds in /metrics at every quiet moment."""

    router: Router
    tier: str
    done: bool = False

    def finish(self, outcome: str) -> None:
        if self.done:
            return
        self.done = True
        self.router.outstanding[self.tier] -= 1
        self.router.metrics.inc("requests_finished_total", labels(tier=self.tier, outcome=outcome))


@dataclass(slots=True)
class Attempt:
    backend: Backend
    tier: str  # the tier serving it
    failover: str | None  # "realtime->deep" when the other tier serves it
    index: int  # 0 for the first attempt


class Router:
    def __init__(self, cfg: RouterConfig):
        self.cfg = cfg
        self.metrics = RouterMetrics()
        self.tiers: dict[str, list[Backend]] = {
            t: [Backend.from_config(bc, t, cfg) for bc in cfg.tiers[t].backends] for t in TIERS}
        self.rings = {t: HashRing([b.name for b in bs], cfg.affinity_vnodes) for t, bs in self.tiers.items()}
        self.outstanding = {t: 0 for t in TIERS}
        self.client: httpx.AsyncClient | None = None
        self.connections: set = set()
        self.health_task: asyncio.Task | None = None
        self.started = int(time.time())

    @property
    def backends(self) -> list[Backend]:
        return [b for bs in self.tiers.values() for b in bs]

    def load_inprocess(self) -> None:
        """Blocking: loads every in-process model (the CLI binds its port first)."""
        for t in TIERS:
            for bc, b in zip(self.cfg.tiers[t].backends, self.tiers[t], strict=True):
                if bc.kind == "inprocess":
                    start_inprocess(bc, b)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        c = self.cfg
        read = max(c.first_token_timeout_s, c.idle_timeout_s)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(read, connect=c.connect_timeout_s),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                                        trust_env=False)
        await self.check_all()
        self.health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        if self.health_task:
            self.health_task.cancel()
        await asyncio.gather(*(s.close(CLOSE_GOING_AWAY, "router shutting down") for s in list(self.connections)),
                             return_exceptions=True)
        if self.client:
            await self.client.aclose()
        for b in self.backends:
            if b.server is not None:
                await asyncio.to_thread(b.server.stop)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            with contextlib.suppress(Exception):
                await self.check_all()

    async def check_all(self) -> None:
        async def one(b: Backend) -> None:
            if not b.health_path:
                return
            ok = await check_health(self.client, b, self.cfg.health_timeout_s)
            was = b.healthy
            b.healthy = ok
            # The check is the breaker's probe too: after the cooldown a passing check closes the circuit,
            # a failing one keeps (or puts) a dead backend out without costing a client request.
            if ok and b.breaker.current() != "closed":
                if b.breaker.current() == "half_open":
                    b.breaker.success()
            elif not ok:
                b.breaker.failure()
            if ok != was:
                log.info("router: backend %s (%s) is %s", b.name, b.tier, "up" if ok else "down")
        await asyncio.gather(*(one(b) for b in self.backends))

    # ------------------------------------------------------------ choosing

    def decide(self, mode: str | None, messages: list[dict]) -> tuple[str, TierRoute]:
        """(mode, route): explicit mode wins; `auto` asks the classifier."""
        mode = mode or self.cfg.default_mode
        if mode in TIERS:
            return mode, TierRoute(mode, "mode")
        return mode, classify_messages(messages, self.cfg.classify)

    def admit(self, tier: str) -> Ledger | None:
        if self.outstanding[tier] >= self.cfg.tiers[tier].max_outstanding:
            self.metrics.inc("requests_rejected_total", labels(tier=tier, reason="rate_limited"))
            return None
        self.outstanding[tier] += 1
        self.metrics.inc("requests_accepted_total", labels(tier=tier))
        return Ledger(self, tier)

    def no_backend_error(self, last: Retryable | None, what: str) -> ProtocolError:
        """Every attempt failed: 429 when the last backend refused for load (worth a retry soon), else 503."""
        if last is not None and last.code == "rate_limit_exceeded":
            return ProtocolError(f"every backend is busy ({last}); retry shortly", code="rate_limit_exceeded",
                                 status=429, type_="rate_limit_error")
        why = f": {last}" if last else " (none is healthy)"
        return ProtocolError(f"no backend could take the {what}{why}", code="backend_unavailable", status=503,
                             type_="server_error")

    def busy_error(self, tier: str) -> ProtocolError:
        return ProtocolError(f"the {tier} tier has its maximum of {self.cfg.tiers[tier].max_outstanding} requests in "
                             "flight; retry shortly", code="rate_limit_exceeded", status=429, type_="rate_limit_error")

    async def attempts(self, tier: str, key: str | None = None,
                       prefer: Callable[[str], Backend | None] | None = None,
                       failover: bool = True) -> AsyncIterator[Attempt]:
        """Backends to try, in order: this tier's best, then others of the tier (up to `retries`
        more), then, when failover is on (and `failover`: not for writing on a cut answer, which
        only the same model can do), the other tier's. Waits an exponential backoff between
        attempts. The caller stops iterating at the first that serves."""
        order = [tier] + ([other_tier(tier)] if self.cfg.failover and failover else [])
        n = 0
        for t in order:
            tried: list[Backend] = []
            for _ in range(1 + self.cfg.retries):
                b = choose(self.tiers[t], key, self.rings[t], self.cfg.affinity_slack, tried,
                           prefer(t) if prefer else None)
                if b is None:
                    break
                if n:
                    await asyncio.sleep(self.cfg.retry_backoff_s * 2 ** (n - 1))
                    self.metrics.inc("retries_total", labels(tier=t))
                failover = f"{tier}->{t}" if t != tier else None
                if failover and not tried:
                    self.metrics.inc("failovers_total", labels(**{"from": tier, "to": t}))
                    log.info("router: failover %s", failover)
                tried.append(b)
                yield Attempt(b, t, failover, n)
                n += 1

    async def resumers(self, tier: str, key: str | None) -> AsyncIterator[Attempt]:
        """Backends that may write on an answer cut mid-stream: the tier's own that can resume, in
        `attempts` order, over up to 1 + `retries` rounds with a backoff between them. A backend may
        come round again: a Serve proxy in front of replicas is one backend whose next try lands on a
        live replica, while a dead server has been marked down (refused) and is skipped."""
        for n in range(1 + self.cfg.retries):
            if n:  # at least 0.5 s, then 1 s: the time a Serve proxy takes to learn that a replica died
                await asyncio.sleep(max(self.cfg.retry_backoff_s, 0.25) * 2 ** n)
            async with contextlib.aclosing(self.attempts(tier, key, failover=False)) as attempts:
                async for att in attempts:
                    if att.backend.resume:
                        yield att

    def begin(self, b: Backend) -> None:
        b.breaker.acquire()
        b.outstanding += 1
        self.metrics.inc("backend_requests_total", labels(tier=b.tier, backend=b.name))

    def end(self, b: Backend, ok: bool | None) -> None:
        """ok: True served, False broke (counts toward its circuit), None neither (client left, or refused
        for load)."""
        b.outstanding -= 1
        if ok:
            b.breaker.success()
        elif ok is False:
            if b.balanced:  # one replica's failure, not the balancer's: the next request finds a live one
                b.breaker.release()
            else:
                b.breaker.failure()
            self.metrics.inc("backend_errors_total", labels(tier=b.tier, backend=b.name))
        else:
            b.breaker.release()

    def failed(self, b: Backend, err: Retryable) -> None:
        log.info("router: %s failed before the first token: %s", b.name, err)
        self.end(b, False if err.broken else None)
        if err.refused:
            b.healthy = False  # refused outright: out until a health check says otherwise

    def ttft(self, b: Backend, seconds: float) -> None:
        b.observe_ttft(seconds, self.cfg.ewma_alpha)
        self.metrics.ttft.observe(labels(tier=b.tier, backend=b.name), seconds)

    def itl(self, b: Backend, seconds: float) -> None:
        self.metrics.itl.observe(labels(tier=b.tier, backend=b.name), seconds)

    def authorized(self, header: str | None) -> bool:
        return bearer_ok(header, self.cfg.api_key)


def served_by(att: Attempt, mode: str, route: TierRoute) -> dict:
    """The `pairline` object every answer carries: who served it and why."""
    return {"tier": att.tier, "backend": att.backend.name, "mode": mode, "reason": route.reason,
            "failover": att.failover, "attempts": att.index + 1}
