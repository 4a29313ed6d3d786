"""`pairline eval ...`: accuracy against wall time.

`humaneval` runs HumanEval problems on one tier's model and writes a JSON of per-task records;
`agent` runs one or both tiers on small repositories with failing tests (bench/agent_eval.py);
`plot` draws saved results as accuracy against wall time (one point per run and tier)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pairline.bench.common import csv, default_out_path, invocation, out_path, stamp, stderr_log, write_json
from pairline.errors import PairlineError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from pairline.engine.load import add_runtime_option

    parser = subparsers.add_parser("eval", help="accuracy against wall time: HumanEval pass@1 per tier, plots")
    sub = parser.add_subparsers(dest="eval_command", metavar="EVAL")
    sub.required = True

    he = sub.add_parser(
        "humaneval",
        help="HumanEval pass@1 and wall time per task, for the real-time or the deep tier",
        description="Asks the model for each HumanEval problem (greedy, the prompt as prediction), runs the "
        "problem's test on the first Python block of the answer in pairline's sandbox, prints a table and "
        "writes JSON.",
    )
    he.add_argument("--tier", default="realtime",
                    help="realtime (Qwen2.5-Coder-0.5B) or deep (Qwen2.5-Coder-1.5B); default realtime "
                    "(with --server: only the run's label, unless --mode names the tier)")
    he.add_argument("--model", "-m", default=None, help="registry name or path; overrides the tier's model")
    he.add_argument("--server", default=None,
                    help="a running `pairline serve` or `pairline route` (http://HOST:PORT or ws://HOST:PORT) "
                    "instead of a local model; the model is the server's")
    he.add_argument("--mode", default=None, choices=["realtime", "deep", "auto"],
                    help="with --server on a `pairline route` router: the tier to ask for (default: none sent)")
    add_runtime_option(he)
    he.add_argument("--limit", type=int, default=None, help="the first N problems (default: all 164)")
    he.add_argument("--problems", default=None, help="comma-separated indexes or ids, e.g. 0,5,HumanEval/12")
    he.add_argument("--max-tokens", type=int, default=512, help="cap on each answer (default 512)")
    he.add_argument("--n-ctx", type=int, default=2048, help="context size (default 2048)")
    he.add_argument("--timeout", type=float, default=10.0, help="seconds per check before it counts as a fail")
    he.add_argument("--speculation", default="prediction",
                    help="prediction (default: the prompt as prediction), lookup (the engine's prompt lookup "
                    "only) or off (no drafts; local models only): to measure what the prediction saves")
    he.add_argument("--canonical", action="store_true",
                    help="no model: run the dataset's own solutions through the checker (all must pass)")
    he.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    he.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                    help="also draw the run (default: next to the JSON)")
    he.set_defaults(func=cmd_humaneval)

    ag = sub.add_parser(
        "agent",
        help="both tiers on small repositories with a failing test: pass rate (visible + held-out tests), time",
        description="For each task (a small repository with a failing test, pairline/bench/tasks/agent/), runs "
        "the tier in a fresh copy, then the visible tests and held-out tests the tier never saw, in a fresh "
        "sandboxed pytest process. realtime: one shot through `pairline edit`'s path, with the failing tests' "
        "output given once, no test runs. deep: `pairline agent`'s loop with its budgets. Prints a table per "
        "task and per tier and writes JSON.",
        epilog="docs/agent.md, `pairline eval agent`, lists the tasks by kind.",
    )
    ag.add_argument("--tier", default="realtime", choices=["realtime", "deep", "both"],
                    help="realtime (Qwen2.5-Coder-0.5B, one shot), deep (the agent on Qwen2.5-Coder-1.5B) or both; "
                    "default realtime")
    ag.add_argument("--model", "-m", default=None, help="registry name or path; overrides every tier's model")
    add_runtime_option(ag)
    ag.add_argument("--tasks", default=None, help="comma-separated task names (default: all; --list shows them)")
    ag.add_argument("--limit", type=int, default=None, help="the first N tasks (by name)")
    ag.add_argument("--list", action="store_true", help="list the tasks and exit (no model)")
    ag.add_argument("--max-steps", type=int, default=None, metavar="N", help="deep: model turns per task (default 20)")
    ag.add_argument("--max-time", type=float, default=None, metavar="S", help="deep: seconds per task (default 600)")
    ag.add_argument("--max-tokens", type=int, default=None, metavar="N",
                    help="deep: generated tokens per task (default 20000)")
    ag.add_argument("--ctx", type=int, default=8192, metavar="N", help="context size in tokens (default 8192)")
    ag.add_argument("--timeout", type=float, default=60.0, help="seconds for each scoring test run (default 60)")
    ag.add_argument("--allow-weak-sandbox", action="store_true",
                    help="run the agent's commands and the scoring where this kernel lacks a sandbox protection")
    ag.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    ag.set_defaults(func=cmd_agent)

    rs = sub.add_parser("rescore", help="check saved answers again with this version's extractor and checker")
    rs.add_argument("result", help="a JSON file written by `pairline eval humaneval`")
    rs.add_argument("--out", "-o", default=None, help="JSON to write (default: RESULT-rescored.json)")
    rs.set_defaults(func=cmd_rescore)

    pl = sub.add_parser("plot", help="accuracy against wall time from saved humaneval or agent results "
                        "(one point per humaneval file, one per tier of an agent file)")
    pl.add_argument("results", nargs="+",
                    help="JSON files written by `pairline eval humaneval` or `pairline eval agent`")
    pl.add_argument("--out", "-o", default="humaneval.png", help="PNG to write (default humaneval.png)")
    pl.add_argument("--title", default=None)
    pl.set_defaults(func=cmd_plot)


def _problems(value: str | None) -> list[str] | None:
    items = csv(value)
    if items is None:
        return None
    if not items:
        raise PairlineError("--problems is empty")
    return list(items)


def cmd_humaneval(args: argparse.Namespace) -> int:
    from pairline.bench import humaneval as he

    err, log = stderr_log("eval")
    command = invocation()
    if args.canonical:
        problems = he.select(he.load_problems(), args.limit, _problems(args.problems))
        result = he.run_canonical(problems, args.timeout, log)
        result["command"] = command
        path = Path(args.out) if args.out and args.out.endswith(".json") else None
        if path:
            write_json(result, path)
            err.print(f"wrote {path}")
        print(f"canonical solutions: {result['passed']}/{result['n']} passed in {result['wall_s']} s")
        return 0 if result["passed"] == result["n"] else 1

    cfg = he.EvalConfig(
        tier=args.tier, model=args.model, runtime=args.runtime, server=args.server, mode=args.mode,
        n_ctx=args.n_ctx,
        max_tokens=args.max_tokens, limit=args.limit, problems=_problems(args.problems),
        speculation=args.speculation, timeout_s=args.timeout, command=command, log=log,
    )
    he.validate(cfg)  # every argument, before the model loads
    paths: list[Path] = []

    def checkpoint(result: dict) -> Path:
        # named once the model is known (a server's model only once connected), then kept for the run
        if not paths:
            paths.append(default_out_path(args.out, result["model"], kind=f"humaneval-{result['tier']}"))
        return write_json(result, paths[0])

    cfg.checkpoint = checkpoint  # a run stopped halfway keeps its tasks
    result = he.run_eval(cfg)
    path = checkpoint(result)
    he.print_table([result])
    err.print(f"wrote {path}")
    if args.plot is not None:
        from pairline.bench.plot import plot

        png = plot([result], args.plot or path.with_suffix(".png"))
        err.print(f"wrote {png}")
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from pairline.bench import agent_eval as ae
    from pairline.bench.agent_tasks import load_tasks

    if args.list:
        tasks = load_tasks(list(csv(args.tasks) or ()) or None, args.limit)
        for t in tasks:
            print(f"{t.name:28} {t.kind:16} {t.files} file{'s' if t.files > 1 else ' '}  {t.instruction}")
        return 0
    from rich.markup import escape

    err, markup_log = stderr_log("eval agent")

    def log(message: str) -> None:  # task names, commands and errors are not markup
        markup_log(escape(message))

    picks = csv(args.tasks)
    if picks is not None and not picks:
        raise PairlineError("--tasks is empty")
    cfg = ae.EvalConfig(
        tiers=ae.parse_tiers(args.tier), model=args.model, runtime=args.runtime,
        tasks=list(picks) if picks else None, limit=args.limit, n_ctx=args.ctx, max_steps=args.max_steps,
        max_time_s=args.max_time, max_tokens=args.max_tokens, timeout_s=args.timeout,
        allow_weak_sandbox=args.allow_weak_sandbox, command=invocation(), log=log,
    )
    ae.validate(cfg)  # every argument, before a model loads
    path = out_path(args.out, f"agent-{'+'.join(cfg.tiers)}-{stamp()}.json")
    cfg.checkpoint = lambda result: write_json(result, path)  # a run stopped halfway keeps its tasks
    result = ae.run_eval(cfg)
    write_json(result, path)
    ae.print_tables(result)
    err.print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pairline.bench.agent_eval import print_tables
    from pairline.bench.humaneval import print_table
    from pairline.bench.plot import load_results, plot, read_result

    results = load_results(args.results, kinds=("humaneval", "agent"))
    humaneval = [r for r in results if r.get("kind") == "humaneval"]
    if humaneval:
        print_table(humaneval)
    for path in args.results:  # an agent run's own tables
        data = read_result(path)
        if data.get("kind") == "agent":
            print_tables(data)
    png = plot(results, args.out, args.title)
    Console(stderr=True).print(f"wrote {png}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pairline.bench import humaneval as he
    from pairline.bench.plot import load_results

    (result,) = load_results([args.result])
    out = he.rescore(result, command=invocation())
    src = Path(args.result)
    path = write_json(out, Path(args.out) if args.out else src.with_name(src.stem + "-rescored.json"))
    he.print_table([out])
    err = Console(stderr=True)
    for line in out["rescored"][-1]["changed"] or ["no task changed outcome"]:
        err.print(line, highlight=False)
    err.print(f"wrote {path}")
    return 0
