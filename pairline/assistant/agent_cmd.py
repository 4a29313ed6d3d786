"""`pairline agent "task"`: the command around deep mode's loop (`agent.Agent`): its options, the
run off the main thread (so Ctrl-C only asks it to stop), and the terminal printer."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from pairline.assistant.agent import DEFAULT_TEST_CMD, Agent, AgentResult, Budgets
from pairline.assistant.trajectory import find_run, load_trajectory
from pairline.assistant.workspace import Workspace
from pairline.engine.generate import CancelToken
from pairline.errors import PairlineError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pairline.engine.load import add_runtime_option
    from pairline.models.registry import DEFAULT_DEEP

    b = Budgets()
    parser = subparsers.add_parser(
        "agent",
        help="deep mode: a multi-step agent that reads, edits, runs tests (sandboxed) and reports a diff",
        description="Work on TASK in the repository for several steps on the deep-tier model: read and search "
        "files, edit them (one git commit per edit), run commands and tests in a sandbox. Ends with a summary "
        "and the combined diff. Every run leaves a JSONL trajectory; --resume goes on from one.",
        epilog="exit codes: 0 the model finished, 1 stopped by a budget or the context, 2 usage error, "
        "130 interrupted. docs/agent.md says what the sandbox does and does not protect against.",
    )
    parser.add_argument("task", nargs="?", default=None, help="what to do (omit with --resume)")
    parser.add_argument("--repo", default=None, metavar="DIR", help="the repository (default: the current folder's)")
    parser.add_argument("--model", default=DEFAULT_DEEP, help=f"model name or path (default: {DEFAULT_DEEP})")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="a `pairline serve` or `pairline route` (http://HOST:PORT or ws://...)")
    parser.add_argument("--mode", default=None, choices=["deep", "realtime", "auto"],
                        help="with --server on a router: the tier to ask for")
    add_runtime_option(parser)
    parser.add_argument("--max-steps", type=int, default=None, metavar="N", help=f"model turns (default {b.max_steps})")
    parser.add_argument("--max-time", type=float, default=None, metavar="S",
                        help=f"wall-clock seconds (default {b.max_time_s:.0f})")
    parser.add_argument("--max-tokens", type=int, default=None, metavar="N",
                        help=f"tokens the model may generate in all (default {b.max_tokens})")
    parser.add_argument("--turn-tokens", type=int, default=1024, metavar="N", help="cap on one reply (default 1024)")
    parser.add_argument("--test-cmd", default=None, metavar="CMD", help=f"the test tool's command ({DEFAULT_TEST_CMD})")
    parser.add_argument("--cmd-timeout", type=float, default=120.0, metavar="S", help="limit for one command")
    parser.add_argument("--ctx", type=int, default=8192, metavar="N", help="context size in tokens (default 8192)")
    parser.add_argument("--resume", default=None, metavar="RUN", help="go on with a run (its id or trajectory path)")
    parser.add_argument("--json", action="store_true", help="print the trajectory's events as JSONL on stdout")
    parser.add_argument("--allow-weak-sandbox", action="store_true",
                        help="run commands even where this kernel lacks a sandbox protection (docs/agent.md)")
    parser.add_argument("--no-first-test", action="store_true",
                        help="do not run the tests before the first step (nor show the failing tests' files)")
    parser.add_argument("--no-mask", action="store_true",
                        help="decode replies without the grammar that masks repeated looks (repeats are "
                        "still refused, after the model wrote them)")
    parser.set_defaults(func=cmd_agent)
    return parser


def cmd_agent(args: argparse.Namespace) -> int:
    from pairline.assistant.client import open_client

    overrides = {"max_steps": args.max_steps, "max_time_s": args.max_time, "max_tokens": args.max_tokens}
    if args.mode and not args.server:
        raise PairlineError("--mode picks a tier on a router; it needs --server")
    if args.turn_tokens < 16:
        raise PairlineError(f"--turn-tokens must be at least 16, got {args.turn_tokens}")
    if args.ctx < 1024:
        raise PairlineError(f"--ctx must be at least 1024, got {args.ctx}")
    if args.repo is not None and not Path(args.repo).is_dir():
        raise PairlineError(f"--repo {args.repo}: no such directory")
    info = {"server": args.server, "mode": args.mode, "runtime": args.runtime}
    if args.resume is not None:
        if args.task:
            raise PairlineError("give either a task or --resume, not both (a resumed run keeps its task)")
        find_run(args.resume)  # fail fast, before loading a model
        load_trajectory(find_run(args.resume))
    else:
        if args.task is None or not args.task.strip():
            raise PairlineError('the task is empty; say what the agent should do: pairline agent "TASK"')
        Budgets(**{k: v for k, v in overrides.items() if v is not None}).check()
    out = Printer(args.json)
    out.note(f"loading {args.server or args.model}…")
    client = open_client(args.model, n_ctx=args.ctx, server=args.server, runtime=args.runtime, mode=args.mode)
    common = {"n_ctx": args.ctx, "cmd_timeout": args.cmd_timeout, "on_event": out.event, "info": info,
              "allow_weak_sandbox": args.allow_weak_sandbox, "first_test": not args.no_first_test,
              "mask": not args.no_mask}
    if args.resume is not None:
        agent = Agent.resume(args.resume, client, budgets=overrides, test_cmd=args.test_cmd, repo=args.repo, **common)
    else:
        ws = Workspace.open(args.repo or None)
        budgets = Budgets(**{k: v for k, v in overrides.items() if v is not None})
        agent = Agent(client, ws, args.task, budgets=budgets, test_cmd=args.test_cmd or DEFAULT_TEST_CMD,
                      turn_tokens=args.turn_tokens, **common)
    if weak := agent.sandbox.weakness():
        out.note(weak)
    result = run_in_thread(agent)
    out.final(result)
    return result.exit_code


def run_in_thread(agent: Agent) -> AgentResult:
    """Run the agent off the main thread, so Ctrl-C only asks it to stop: the model's answer is
    cancelled within a step, a command's process group is killed, and the trajectory gets its end."""
    cancel = CancelToken()
    box: dict = {}
    finished = threading.Event()

    def work() -> None:
        try:
            box["result"] = agent.run(cancel)
        except BaseException as err:  # re-raised in the main thread
            box["error"] = err
        finally:
            finished.set()

    threading.Thread(target=work, daemon=True).start()
    # an Event, not Thread.join: a join interrupted by Ctrl-C can leave is_alive() False while the
    # thread still runs (a CPython bug), and the result would be read before it exists
    while not finished.is_set():
        try:
            finished.wait(0.2)
        except KeyboardInterrupt:
            cancel.cancel()
            print("\npairline: stopping the agent…", file=sys.stderr)
    if "error" in box:
        raise box["error"]
    return box["result"]


class Printer:
    """The run on the terminal: the model's text as it streams, one line per tool, then the report
    and the colored diff. With --json, the trajectory's events instead."""

    def __init__(self, as_json: bool):
        from rich.console import Console

        self.json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.max_steps = 0

    def note(self, text: str) -> None:
        self.err.print(text, markup=False, style="dim")

    def event(self, e: dict) -> None:
        kind = e["type"]
        if self.json:
            if kind != "delta":
                sys.stdout.write(json.dumps(e, ensure_ascii=False, default=str) + "\n")
                sys.stdout.flush()
            return
        if kind in ("run", "resume"):
            self.max_steps = e["budgets"]["max_steps"]
            if kind == "run":
                self.note(f"run {e['run_id']} · {e['model']} · {e['repo']} · sandbox: {', '.join(e['sandbox'])}")
            else:
                self.note(f"resuming run {e['run_id']} after {e['used_steps']} steps")
            self.note(f"trajectory: {e['trajectory']}")
        elif kind == "delta":
            self.out.file.write(e["text"])
            self.out.file.flush()
        elif kind == "turn":
            self.out.print(f"\n[step {e['step']}/{self.max_steps} · {e['tokens']} tokens · {e['wall_s']:.1f} s]",
                           style="dim", markup=False)
        elif kind == "tool":
            first = (e.get("observation") or "").splitlines()[:1]
            self.out.print(f"[{e['name']}] {first[0] if first else ''}", style="cyan" if e["ok"] else "yellow",
                           markup=False)
        elif kind == "mask_off":
            self.note(f"[the engine cannot use the repeat mask ({e['error'][:200]}); repeats are refused instead]")
        elif kind == "condense":
            self.note(f"[context: {e['observations']} older results shortened]")

    def final(self, r: AgentResult) -> None:
        if self.json:
            return
        from pairline.assistant.diffs import print_diff

        if r.diff:
            self.out.print()
            print_diff(self.out, r.diff.splitlines())
        self.out.print("\n" + r.report(), markup=False)
        tail = f"trajectory: {r.path}"
        if r.reason != "done":
            tail += f"\nto go on: pairline agent --resume {r.run_id} (raise the budget that stopped it)"
        self.note(tail)
