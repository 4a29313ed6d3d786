"""`pairline serve --ray`: pairline's engine as a Ray Serve application (docs/scaling.md, "pairline on
Ray Serve").

Each Serve replica loads the engine as `pairline serve` does and hosts the server's own ASGI app
(`build_app`: WebSocket sessions, OpenAI HTTP, /health, /metrics) as the deployment's ingress, so
Serve's proxy carries both HTTP and WebSockets to replicas and nothing of the protocol is redone
here. Which replica gets a request is decided by `SessionAffinityRouter`, a Serve request router:
the session key (header `x-pairline-session`, which Serve's proxy puts in the request's metadata as
its `session_id`) picks its owner on a consistent-hash ring, so a session's turns find their KV
warm, unless the owner is overloaded; requests without a key go to the less loaded of two.

This module imports Ray at the top: the CLI imports it only after checking Ray is installed.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import logging
import os
import random
import signal
import time
from typing import Any

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

log = logging.getLogger("pairline.server.ray")

SESSION_HEADER = "x-pairline-session"  # what `pairline route` and pairline's clients send as the session key
REPLICA_HEADER = b"x-pairline-replica"  # on every response: which replica served it (affinity is checkable)
# Serve's proxy copies the header this variable names into the request's metadata (`session_id`),
# where a request router can see it; the variable is read by the proxy process, so it must be in the
# environment of whoever starts the Ray cluster (`ray start`, or `ray.init` here).
SESSION_ENV = "RAY_SERVE_SESSION_ID_HEADER_KEY"
APP_NAME = "pairline"


# ---------------------------------------------------------------- routing


def _point(key: str) -> int:
    # blake2b, as `pairline route`'s ring (balance.py): stable across processes, unlike hash()
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class SessionAffinityRouter(RequestRouter):
    """A session's requests go to the owner of its key on a consistent-hash ring of the replicas
    (`vnodes` points each): a replica that leaves moves only its own sessions. The owner is skipped
    when it has more than `slack` requests in flight beyond the least loaded replica (a cold KV beats
    a queue, as `affinity_slack` in `pairline route`), or when it refuses (at `max_ongoing_requests`).
    No key: power of two choices. Not FIFOMixin: Serve's base matching hands each chosen replica to
    the request it was chosen for, which is what affinity needs."""

    def initialize_state(self, vnodes: int = 64, slack: int = 4, **_: Any) -> None:
        self._vnodes, self._slack = vnodes, slack
        self._ring: list[tuple[int, ReplicaID]] = []
        self._ring_ids: frozenset[ReplicaID] = frozenset()

    def _owner(self, key: str, candidates: dict[ReplicaID, RunningReplica]) -> RunningReplica | None:
        ids = frozenset(candidates)
        if ids != self._ring_ids:  # rebuilt only when the replica set changes
            self._ring = sorted((_point(f"{rid.unique_id}#{i}"), rid) for rid in ids for i in range(self._vnodes))
            self._ring_ids = ids
        if not self._ring:
            return None
        i = bisect.bisect_left(self._ring, (_point(key),)) % len(self._ring)
        return candidates[self._ring[i][1]]

    def _load(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0  # unknown: probed by Serve, assume idle

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # all refused: back off, don't spin
        spread = random.sample(candidate_replicas, min(2, len(candidate_replicas)))  # Serve takes the less loaded
        key = pending_request.metadata.session_id if pending_request is not None else ""
        if not key:
            return [spread]
        owner = self._owner(key, {r.replica_id: r for r in candidate_replicas})
        if owner is None or self._load(owner) > min(self._load(r) for r in candidate_replicas) + self._slack:
            return [spread]
        return [[owner], spread]  # the owner first; if it refuses, the less loaded of two


# ---------------------------------------------------------------- replicas


class ReplicaTag:
    """ASGI middleware: names the replica in a response header (HTTP) and on the WebSocket handshake."""

    def __init__(self, app: Any, replica: str):
        self.app, self.tag = app, replica.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)

        async def tagged(message: dict) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", ()), (REPLICA_HEADER, self.tag)]}
            await send(message)

        await self.app(scope, receive, tagged)


class PairlineReplica:
    """One engine, served by pairline's own app (made the ingress by `deployment()`)."""

    def __init__(self, options: dict[str, Any], threads: int):
        from pairline.engine.load import load_engine
        from pairline.server.config import server_config

        os.environ["PAIRLINE_THREADS"] = str(threads)  # the replica's share of the node, not all its cores
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        if os.environ.get(SESSION_ENV, "").lower() != SESSION_HEADER:
            log.warning("ray: %s is not %s on this node: sessions are not kept on one replica "
                        "(docs/scaling.md, \"pairline on Ray Serve\")", SESSION_ENV, SESSION_HEADER)
        args = argparse.Namespace(**options)
        self.engine = load_engine(args.model, n_ctx=args.ctx, runtime=args.runtime)
        self.cfg = server_config(args)
        self.replica = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> Any:
        from pairline.server.app import build_app

        return ReplicaTag(build_app(self.engine, self.cfg), self.replica)


def replica_counts(spec: str) -> tuple[int, int]:
    """`--replicas`: "N" (fixed) or "MIN:MAX" (Serve autoscales between them)."""
    from pairline.errors import PairlineError

    try:
        lo, _, hi = spec.partition(":")
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise PairlineError(f"--replicas: N or MIN:MAX, got {spec!r}") from None
    if low < 1 or high < low:
        raise PairlineError(f"--replicas: at least 1, and MIN <= MAX, got {spec!r}")
    return low, high


def deployment(args: argparse.Namespace, cpus: float) -> Any:
    """The bound Serve application for `pairline serve`'s options: `--replicas` replicas of the
    engine, each given cpus / (most replicas) CPUs and as many threads."""
    low, high = replica_counts(args.replicas)
    per = max(1, int(cpus // high))
    options = {k: v for k, v in vars(args).items() if k != "func"}  # plain values: they travel to each replica
    scale: dict[str, Any] = ({"num_replicas": low} if low == high else
                             {"autoscaling_config": AutoscalingConfig(min_replicas=low, max_replicas=high,
                                                                      target_ongoing_requests=2)})
    cls = serve.deployment(serve.ingress()(PairlineReplica), name="PairlineEngine")
    return cls.options(
        **scale,
        ray_actor_options={"num_cpus": per},
        # an open WebSocket is an ongoing request for its whole life: Serve must not refuse what the
        # server itself takes (its sessions, plus its queue); the server answers its own 429s
        max_ongoing_requests=64 + args.max_queue,
        request_router_config=RequestRouterConfig(request_router_class=SessionAffinityRouter,
                                                  request_router_kwargs={"vnodes": 64, "slack": 4}),
        health_check_period_s=2,
    ).bind(options, per)


def start(args: argparse.Namespace) -> str:
    """Connect to (or start) the Ray cluster and run the application; returns the proxy's URL."""
    os.environ.setdefault(SESSION_ENV, SESSION_HEADER)  # effective when this call starts the cluster
    address = None if args.ray == "local" else args.ray
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(deployment(args, cpus), name=APP_NAME, route_prefix="/")
    return f"http://{args.host}:{args.port}"


def stop() -> None:
    serve.delete(APP_NAME)
    serve.shutdown()
    ray.shutdown()  # stops the cluster if `start` started it; leaves a `ray start` cluster running


def run(args: argparse.Namespace) -> int:
    """`pairline serve --ray`: until Ctrl-C or SIGTERM."""
    url = start(args)
    print(f"pairline: serving {args.model} on Ray Serve at {url} (ws{url[4:]}/v1/responses); "
          f"replicas {args.replicas}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while True:
            time.sleep(3600)
    finally:
        stop()
