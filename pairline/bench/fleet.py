"""`pairline bench fleet`: a load and fault test of `pairline route` in front of several engines.

N WebSocket sessions (default 8) talk to the router for a bounded time (`--duration`, and at least
`--after` seconds once the victim is back), turn after turn (a session starts afresh every few
turns, so contexts stay small). Part-way through, one backend is killed with
SIGKILL while it streams, and brought back. Every request is sorted by how it ended:

- completed: its final event came (`response.completed` or `incomplete` at its token limit);
- continued: completed, written on by another backend after its own died mid-answer (`pairline.resumed`);
- failed over: completed elsewhere than planned (another tier, a retry, or a rebuilt backend session);
- failed: ended with a named error (`error` / `response.failed`): visible, not lost;
- hung: no event for `--hang-s` seconds (must be 0);
- lost: the connection closed with no final event (must be 0).

KV reused: of the sessions' later turns that the fault did not touch (neither continued nor failed
over), the share with at least half their input cached (affinity: the turn
found its session's KV).

TTFT (request sent -> first delta, at the client) is reported before the kill, while the victim is
down, and after it is back. Topologies:

- `serve`: the real-time tier is two `pairline serve` processes; the victim is one of them;
- `ray`: the real-time tier is one Ray Serve application of two replicas (`pairline serve --ray`); the
  victim is one replica (`ray.kill`; Serve replaces it).

Both have llama.cpp's own server (`python -m llama_cpp.server`) as the deep tier: the fleet's third
engine, the failover target if the whole real-time tier goes. Everything is on loopback, bounded in
count and time; the router's ledger (accepted = completed + errored + cancelled) is checked at the end."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from pairline.bench.common import (
    console,
    default_out_path,
    free_port,
    machine_info,
    nearest_rank,
    start_process,
    table,
    write_json,
)

TOPOLOGIES = ("serve", "ray")
PHASES = ("before", "during", "after")
TOPICS = ("a stack", "a queue", "binary search", "a linked list", "memoization", "a hash map", "merge sort",
          "a trie", "a heap", "recursion")


@dataclass(slots=True)
class FleetConfig:
    model: str = "smollm2-135m"
    topology: str = "serve"
    sessions: int = 8
    duration_s: float = 60.0
    kill_at_s: float = 20.0
    down_s: float = 5.0
    after_s: float = 10.0  # load kept up this long once the victim is back (the load lasts at least duration_s)
    max_tokens: int = 48
    turns_per_session: int = 6
    hang_s: float = 30.0
    threads: int = 1  # per engine process: several share the machine's cores


@dataclass(slots=True)
class Request:
    session: int
    turn: int  # in its WebSocket session: from the second on, the session's KV should be reused
    sent_s: float  # since the load started
    ended_s: float | None = None
    ttft_s: float | None = None
    outcome: str = "hung"  # completed | failed | hung | lost
    backend: str | None = None
    continued: bool = False
    failed_over: bool = False
    error: str | None = None  # the error's code
    error_message: str | None = None  # and what it said: a failed request's JSON says why
    input_tokens: int | None = None  # from the final event's usage
    cached_tokens: int | None = None  # of those, found in the KV
    phase: str = ""


@dataclass(slots=True)
class Fault:
    victim: str = ""
    killed_s: float | None = None  # since the load started
    back_s: float | None = None  # when the router saw it healthy again
    outstanding_at_kill: int = 0


# ----------------------------------------------------------------------------------- the fleet


def _serve(model: str, port: int, threads: int, log: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PAIRLINE_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "pairline.cli", "serve", "--model", model, "--port", str(port), "--runtime", "torch",
           "--ctx", "4096", "--max-sessions", "16", *extra]
    return start_process(cmd, f"http://127.0.0.1:{port}/health", f"pairline serve :{port}", log, env=env)


class Fleet:
    """The engines and the router; `kill()` and `revive()` act on the victim."""

    def __init__(self, cfg: FleetConfig, logs: Path, stack: ExitStack):
        from pairline.bench.peers import llamacpp_server_command, llamacpp_server_missing
        from pairline.models.fetch import resolve

        if (why := llamacpp_server_missing()) is not None:
            raise RuntimeError(why)
        self.cfg, self.logs, self.procs = cfg, logs, {}
        stack.callback(self.stop)
        gguf = resolve(cfg.model)
        deep_port = free_port()
        self.procs["llamacpp"] = start_process(
            llamacpp_server_command(gguf, deep_port, 4096, cfg.threads, interrupt=False),
            f"http://127.0.0.1:{deep_port}/v1/models", "llama.cpp server", logs / "fleet-llamacpp.log")
        deep = (f'{{ kind = "openai", url = "http://127.0.0.1:{deep_port}/v1", model = "fleet", '
                f'health_path = "/openapi.json", prediction = false, name = "llamacpp" }}')
        if cfg.topology == "serve":
            self.ports = {"a": free_port(), "b": free_port()}
            for name, port in self.ports.items():
                self.procs[name] = _serve(cfg.model, port, cfg.threads, logs / f"fleet-serve-{name}.log")
            realtime = ", ".join(f'{{ kind = "pairline", url = "http://127.0.0.1:{p}", name = "{n}" }}'
                                 for n, p in self.ports.items())
            self.victim = "a"
        else:
            port = free_port()
            self.procs["ray"] = _serve(cfg.model, port, cfg.threads * 2, logs / "fleet-ray.log",
                                       ("--ray", "--replicas", "2"))
            realtime = f'{{ kind = "pairline", url = "http://127.0.0.1:{port}", name = "ray", balanced = true }}'
            self.victim = "ray"
        toml = (f"[router]\nhealth_interval_s = 0.5\nretries = 2\n[tiers.realtime]\nbackends = [{realtime}]\n"
                f"[tiers.deep]\nbackends = [{deep}]\n")
        from pairline.router.app import RouterThread
        from pairline.router.config import parse_config

        # the router runs in this process: its log (failovers, continuations and why one failed) is kept too
        handler = logging.FileHandler(logs / "fleet-router.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        router_log = logging.getLogger("pairline.router")
        router_log.addHandler(handler)
        router_log.setLevel(logging.INFO)
        stack.callback(handler.close)
        stack.callback(router_log.removeHandler, handler)
        self.router = RouterThread(parse_config(toml, "fleet.toml", env={})).__enter__()

    def health(self) -> dict:
        return httpx.get(self.router.base_url + "/health", timeout=5).json()

    def victim_state(self) -> dict:
        return next(b for b in self.health()["tiers"]["realtime"] if b["name"] == self.victim)

    def kill(self) -> int:
        """SIGKILL the victim (a replica, for Ray) once it has a request in flight; its count then."""
        deadline = time.monotonic() + 10
        while (n := self.victim_state()["outstanding"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.cfg.topology == "serve":
            self.procs[self.victim].send_signal(signal.SIGKILL)
            self.procs[self.victim].wait(10)
        else:
            _kill_ray_replica()
        return n

    def revive(self) -> None:
        if self.cfg.topology == "serve":
            port = self.ports[self.victim]
            self.procs[self.victim] = _serve(self.cfg.model, port, self.cfg.threads,
                                             self.logs / f"fleet-serve-{self.victim}-revived.log")
        # Ray Serve starts a replacement replica by itself
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s = self.victim_state()
            if s["healthy"] and s["circuit"] == "closed":
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.victim} did not come back within 120 s")

    def ledger(self) -> dict:
        text = httpx.get(self.router.base_url + "/metrics", timeout=5).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            for name in ("requests_accepted_total", "requests_finished_total", "midstream_failovers_total"):
                if line.startswith(f"pairline:router_{name}"):
                    out[name] = out.get(name, 0) + float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if getattr(self, "router", None) is not None:
            self.router.stop()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc is self.procs.get("ray") else signal.SIGKILL)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _kill_ray_replica() -> None:
    """One replica of the Serve app `pairline serve --ray` started, killed as a crash would (Serve
    replaces it)."""
    import ray

    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    try:
        replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith("SERVE_REPLICA::"))
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------------- the load


async def _session(i: int, url: str, cfg: FleetConfig, t0: float, deadline: list[float],
                   out: list[Request]) -> None:
    """`deadline[0]`: when to stop sending (it moves once the victim is back)."""
    from websockets.asyncio.client import connect

    turn, n = 0, 0
    while time.monotonic() < deadline[0]:
        async with connect(url, open_timeout=30, max_size=1 << 24,
                           additional_headers={"x-pairline-session": f"fleet-{i}-{turn}"}) as ws:
            await asyncio.wait_for(ws.recv(), 30)  # session.created
            for n in range(cfg.turns_per_session):
                if time.monotonic() >= deadline[0]:
                    return
                topic = TOPICS[(i + turn) % len(TOPICS)]
                req = Request(i, n, time.monotonic() - t0)
                out.append(req)
                await ws.send(json.dumps({"type": "response.create", "mode": "realtime", "temperature": 0,
                                          "max_output_tokens": cfg.max_tokens,
                                          "input": f"In three sentences, explain {topic} to a new programmer."}))
                if not await _answer(ws, req, cfg.hang_s, t0):
                    return  # hung or lost: this session stops, as a client would give up
                turn += 1


async def _answer(ws, req: Request, hang_s: float, t0: float) -> bool:
    """Reads one turn's events into `req`; False when the session is unusable (hung, lost)."""
    from websockets.exceptions import ConnectionClosed

    while True:
        try:
            ev = json.loads(await asyncio.wait_for(ws.recv(), hang_s))
        except asyncio.TimeoutError:
            req.outcome = "hung"
            return False
        except ConnectionClosed:
            req.outcome = "lost"
            return False
        kind, info = ev.get("type"), ev.get("pairline") or {}
        if kind == "response.output_text.delta" and req.ttft_s is None:
            req.ttft_s = time.monotonic() - t0 - req.sent_s
        if kind == "error":
            err = ev.get("error") or {}
            req.error, req.error_message = err.get("code"), err.get("message")
            if req.error != "backend_failed":  # refused before anything ran: no response events follow
                req.outcome, req.ended_s = "failed", time.monotonic() - t0
                return True
            continue  # response.failed follows
        if kind in ("response.completed", "response.incomplete", "response.failed", "response.cancelled"):
            req.backend = info.get("backend")
            req.continued = bool(info.get("resumed"))
            req.failed_over = bool(info.get("failover") or info.get("rebuilt") or (info.get("attempts") or 1) > 1)
            req.outcome = "failed" if kind in ("response.failed", "response.cancelled") else "completed"
            usage = (ev.get("response") or {}).get("usage") or {}
            req.input_tokens = usage.get("input_tokens")
            req.cached_tokens = (usage.get("input_tokens_details") or {}).get("cached_tokens")
            req.ended_s = time.monotonic() - t0
            return True


async def _load(fleet: Fleet, cfg: FleetConfig, fault: Fault) -> list[Request]:
    out: list[Request] = []
    t0 = time.monotonic()
    deadline = [float("inf")]  # until the victim is back
    tasks = [asyncio.create_task(_session(i, fleet.router.ws_url, cfg, t0, deadline, out))
             for i in range(cfg.sessions)]
    await asyncio.sleep(cfg.kill_at_s)
    fault.outstanding_at_kill = await asyncio.to_thread(fleet.kill)
    fault.killed_s = time.monotonic() - t0
    await asyncio.sleep(cfg.down_s)
    await asyncio.to_thread(fleet.revive)
    fault.back_s = time.monotonic() - t0
    deadline[0] = max(t0 + cfg.duration_s, time.monotonic() + cfg.after_s)
    await asyncio.gather(*tasks, return_exceptions=True)
    return out


# ----------------------------------------------------------------------------------- the report


def _phase(r: Request, fault: Fault) -> str:
    """before: over before the kill; during: in flight at the kill or sent while the victim was down;
    after: sent once it was back."""
    if fault.killed_s is not None and r.ended_s is not None and r.ended_s < fault.killed_s:
        return "before"
    return "during" if fault.back_s is None or r.sent_s < fault.back_s else "after"


def summarize(requests: list[Request], fault: Fault) -> dict:
    for r in requests:
        r.phase = _phase(r, fault)
    out = {}
    for phase in (*PHASES, "all"):
        rs = [r for r in requests if phase in ("all", r.phase)]
        ttft = sorted(r.ttft_s for r in rs if r.ttft_s is not None)
        later = [r for r in rs if r.turn > 0 and r.outcome == "completed" and r.cached_tokens is not None
                 and not (r.continued or r.failed_over)]  # the fault's own turns are counted apart
        out[phase] = {
            "sent": len(rs),
            "completed": sum(r.outcome == "completed" for r in rs),
            "continued": sum(r.continued for r in rs),
            "failed_over": sum(r.failed_over for r in rs),
            "failed": sum(r.outcome == "failed" for r in rs),
            "hung": sum(r.outcome == "hung" for r in rs),
            "lost": sum(r.outcome == "lost" for r in rs),
            # affinity: a session's later turns that found its KV (at least half their input cached: the
            # earlier turns; a shared system prompt alone is less)
            "kv_reused": round(sum(2 * r.cached_tokens >= (r.input_tokens or 0) for r in later) / len(later), 3)
            if later else None,
            "ttft_p50_s": nearest_rank(ttft, 0.5),
            "ttft_p99_s": nearest_rank(ttft, 0.99),
        }
    return out


def run_fleet(cfg: FleetConfig, logs: Path) -> dict:
    fault = Fault()
    with ExitStack() as stack:
        fleet = Fleet(cfg, logs, stack)
        fault.victim = fleet.victim
        requests = asyncio.run(_load(fleet, cfg, fault))
        time.sleep(1.0)  # requests whose clients just left are still being closed
        ledger = fleet.ledger()
    return {"bench": "fleet", "config": asdict(cfg), "fault": asdict(fault), "phases": summarize(requests, fault),
            "router_ledger": ledger, "requests": [asdict(r) for r in requests], "machine": machine_info()}


def print_report(result: dict) -> None:
    f = result["fault"]
    t = table(f"bench fleet: {result['config']['topology']}, {result['config']['sessions']} sessions; "
              f"{f['victim']} killed at {f['killed_s']:.1f} s ({f['outstanding_at_kill']} in flight), "
              f"back at {f['back_s']:.1f} s", ("phase", "sent", "completed", "continued", "failed over", "failed",
                                              "hung", "lost", "KV reused", "TTFT p50 ms", "TTFT p99 ms"),
              left={"phase"})
    for phase, s in result["phases"].items():
        t.add_row(phase, *(str(s[k]) for k in ("sent", "completed", "continued", "failed_over", "failed", "hung",
                                                "lost")),
                  "—" if s["kv_reused"] is None else f"{100 * s['kv_reused']:.0f}%",
                  *("—" if s[k] is None else f"{1e3 * s[k]:.0f}" for k in ("ttft_p50_s", "ttft_p99_s")))
    console(piped_width=150).print(t)
    led = result["router_ledger"]
    accepted, finished, resumed = (led.get(k, 0) for k in ("requests_accepted_total", "requests_finished_total",
                                                           "midstream_failovers_total"))
    print(f"router ledger: accepted {accepted:g}, finished {finished:g}, mid-stream failovers {resumed:g}")
    for q in result["requests"]:
        if q["outcome"] != "completed":
            print(f"{q['outcome']}: session {q['session']} turn {q['turn']} (sent at {q['sent_s']:.1f} s): "
                  f"{q['error'] or '-'}: {q['error_message'] or '-'}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="load and fault test: N sessions over the router, one backend killed mid-stream",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    d = FleetConfig()
    p.add_argument("--model", "-m", default=d.model, help=f"every engine's model (default {d.model}: the fleet "
                   "has three or four engines on this machine)")
    p.add_argument("--topology", choices=TOPOLOGIES, default=d.topology, help="see above (default serve)")
    p.add_argument("--sessions", type=int, default=d.sessions, help=f"concurrent sessions (default {d.sessions})")
    p.add_argument("--duration", type=float, default=d.duration_s, help=f"seconds of load (default {d.duration_s:g})")
    p.add_argument("--kill-at", type=float, default=d.kill_at_s, help=f"seconds in (default {d.kill_at_s:g})")
    p.add_argument("--down", type=float, default=d.down_s, help=f"seconds the victim stays down (default {d.down_s:g})")
    p.add_argument("--after", type=float, default=d.after_s,
                   help=f"seconds of load once the victim is back (default {d.after_s:g})")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help=f"per answer (default {d.max_tokens})")
    p.add_argument("--hang-s", type=float, default=d.hang_s,
                   help=f"a session silent this long is counted hung (default {d.hang_s:g})")
    p.add_argument("--threads", type=int, default=d.threads, help=f"per engine process (default {d.threads})")
    p.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    p.set_defaults(func=cmd_fleet)


def cmd_fleet(args: argparse.Namespace) -> int:
    cfg = FleetConfig(model=args.model, topology=args.topology, sessions=args.sessions, duration_s=args.duration,
                      kill_at_s=args.kill_at, down_s=args.down, after_s=args.after, max_tokens=args.max_tokens,
                      threads=args.threads, hang_s=args.hang_s)
    problems = [msg for bad, msg in (
        (cfg.sessions < 1, "--sessions must be at least 1"),
        (not 0 < cfg.kill_at_s < cfg.duration_s, "--kill-at must be between 0 and --duration"),
        (cfg.down_s < 0 or cfg.after_s < 0, "--down and --after must be 0 or more"),
        (cfg.max_tokens < 1, "--max-tokens must be at least 1")) if bad]
    if problems:
        print(f"pairline: error: {problems[0]}", file=sys.stderr)
        return 2
    path = default_out_path(args.out, cfg.model, cfg.topology, kind="fleet")
    try:
        result = run_fleet(cfg, Path("bench-results"))  # the engines' logs: never next to a JSON kept in docs/
    except RuntimeError as err:
        print(f"pairline: error: {err}", file=sys.stderr)
        return 1
    print_report(result)
    print(f"saved {write_json(result, path)}")
    return 0
