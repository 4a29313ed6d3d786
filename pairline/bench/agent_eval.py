"""`pairline eval agent`: both tiers on the same small repositories with a failing test.

For each task (`agent_tasks.py`, pairline/bench/tasks/agent/) and each tier asked for:

1. the task's repository is written into a fresh temporary folder and committed (git), its hidden
   tests and reference left out;
2. the visible tests run once as a user would run them (`failing_output`): the real-time tier gets
   that output with the instruction, the way a user pastes it; the deep tier does not (it runs the
   tests itself);
3. the tier works on the folder:
   - realtime: one turn through the same path as `pairline edit` (the Coder over the repository's
     source files, search/replace blocks under the edit grammar, or a whole-file rewrite for one
     file of up to 60 lines; one retry on malformed blocks or a failed check), written through the
     workspace; it runs no tests;
   - deep: `pairline agent`'s loop (`Agent`) with its budgets of steps, time and tokens; it reads,
     edits, runs the tests in the sandbox and calls done;
4. the visible tests are put back as the task has them, the hidden tests are copied in, and both run
   in a fresh pytest process in the sandbox under a time limit (`agent_tasks.score`). A task passes
   when every visible and every hidden test passes.

Timing: `wall_s` is the tier's own time in the task (the model's and, for deep, the commands'), not
the model load, the context test run or the scoring. Each task starts on a cold KV cache (no prompt
state from an earlier task, none restored from disk). The result JSON holds per-task records per tier
and a summary per tier; `pairline eval plot` draws it beside HumanEval runs.
"""

from __future__ import annotations

import datetime as _dt
import gc
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pairline.bench.agent_tasks import KINDS, AgentTask, changed_files, failing_output, load_tasks, score, write_repo
from pairline.bench.common import console as make_console
from pairline.bench.common import git_state, loadavg, machine_info, quantile, wilson
from pairline.bench.common import table as make_table
from pairline.errors import PairlineError

TIERS = ("realtime", "deep")


def tier_model(tier: str) -> str:
    from pairline.models.registry import DEFAULT_DEEP, DEFAULT_REALTIME

    if tier not in TIERS:
        raise PairlineError(f"unknown tier {tier!r}; use realtime, deep or both")
    return DEFAULT_REALTIME if tier == "realtime" else DEFAULT_DEEP


def parse_tiers(value: str) -> tuple[str, ...]:
    if value == "both":
        return TIERS
    tier_model(value)
    return (value,)


# --------------------------------------------------------------------------- one attempt


@dataclass(slots=True)
class Attempt:
    """What a tier did in one task's folder."""

    status: str  # realtime: changed | unchanged | malformed | cancelled | error; deep: the agent's end reason
    steps: int = 0  # realtime: 1 turn, 2 with its retry; deep: the agent's steps (model turns)
    requests: int = 0  # model requests (realtime: a grammar's forced dividers and the retry each count)
    tokens: int = 0  # generated
    prompt_tokens: int = 0
    edits: int = 0
    test_runs: list[dict] = field(default_factory=list)  # the tests the tier itself ran: command, exit code
    commands: int = 0  # other commands it ran
    message: str = ""  # an error, or the agent's summary
    answer: str = ""  # the real-time model's text (its end)
    mode: str | None = None  # realtime: blocks | rewrite
    trajectory: str | None = None  # deep: the run's JSONL


@dataclass
class EvalConfig:
    tiers: tuple[str, ...] = ("realtime",)
    model: str | None = None  # overrides every tier's model
    runtime: str | None = None
    tasks: list[str] | None = None
    limit: int | None = None
    n_ctx: int = 8192
    max_steps: int | None = None  # the deep tier's budgets (None: the agent's defaults)
    max_time_s: float | None = None
    max_tokens: int | None = None
    turn_tokens: int = 1024
    cmd_timeout: float = 120.0
    realtime_max_tokens: int | None = None  # None: what `pairline edit` allows
    example: bool = True  # the agent's worked example in its prompt
    timeout_s: float = 60.0  # for each test run of the harness
    allow_weak_sandbox: bool = False
    command: str = ""
    log: Callable[[str], None] = print
    checkpoint: Callable[[dict], object] | None = None  # called with the result after each task
    open_client: Callable[[str], object] | None = None  # tests: a ready client per model name
    runners: dict[str, Callable] = field(default_factory=dict)  # tests: a tier's runner replaced

    def budgets(self):
        from pairline.assistant.agent import Budgets

        given = {"max_steps": self.max_steps, "max_time_s": self.max_time_s, "max_tokens": self.max_tokens}
        return Budgets(**{k: v for k, v in given.items() if v is not None})


def realtime_instruction(task: AgentTask, failing: str) -> str:
    return f"{task.instruction}\n\nThe tests fail like this:\n```\n{failing}\n```"


def run_realtime(client, task: AgentTask, root: Path, failing: str, cfg: EvalConfig) -> Attempt:
    """One turn of `pairline edit`'s path over the repository's source files; written if it changed them."""
    from pairline.assistant.coder import Coder, choose_mode, load_file, max_tokens_for
    from pairline.assistant.workspace import Workspace

    ws = Workspace.open(root)
    files = [load_file(ws, root / p) for p in task.sources]
    instruction = realtime_instruction(task, failing)
    mode = choose_mode("auto", files, instruction)
    coder = Coder(client, ws)
    budget = cfg.realtime_max_tokens or max_tokens_for(client, files, mode)
    result = coder.run(files, instruction, mode=mode, max_tokens=budget)
    s = result.stats
    edits = 0
    if result.status == "changed":
        ws.apply([(real, new, result.files[real].fingerprint) for real, new in result.new_texts.items()],
                 task.instruction)
        edits = 1
    return Attempt(status=result.status, steps=1 + s.retried, requests=s.requests, tokens=s.tokens, edits=edits,
                   message="; ".join(result.errors)[:500], answer=result.answer[-4000:], mode=s.mode)


def run_deep(client, task: AgentTask, root: Path, failing: str, cfg: EvalConfig) -> Attempt:
    """`pairline agent "INSTRUCTION"` in the folder, with the configured budgets."""
    from pairline.assistant.agent import Agent
    from pairline.assistant.workspace import Workspace

    tests: list[dict] = []
    commands = [0]
    end: dict = {}

    def on_event(e: dict) -> None:
        if e["type"] == "tool" and e["name"] in ("test", "run"):
            command = e.get("command") or str(e.get("args", {}).get("command", ""))
            if e["name"] == "test" or "pytest" in command or "unittest" in command:
                tests.append({"step": e["step"], "command": command, "exit_code": e.get("exit_code")})
            else:
                commands[0] += 1
            cfg.log(f"  step {e['step']}: {e['name']} `{command[:60]}` -> exit {e.get('exit_code')}")
        elif e["type"] == "tool":
            cfg.log(f"  step {e['step']}: {e['name']}{'' if e.get('ok') else ' (failed)'}")
        elif e["type"] == "end":
            end.update(e)

    agent = Agent(client, Workspace.open(root), task.instruction, budgets=cfg.budgets(), n_ctx=cfg.n_ctx,
                  turn_tokens=cfg.turn_tokens, cmd_timeout=cfg.cmd_timeout, on_event=on_event,
                  example=cfg.example, info={"eval": "agent", "task": task.name},
                  allow_weak_sandbox=cfg.allow_weak_sandbox)
    r = agent.run()
    if r.reason == "interrupted":
        raise KeyboardInterrupt
    return Attempt(status=r.reason, steps=r.steps, requests=r.steps, tokens=r.tokens,
                   prompt_tokens=end.get("prompt_tokens", 0),
                   edits=r.edits, test_runs=tests, commands=commands[0], message=r.summary[:500],
                   trajectory=str(r.path))


RUNNERS: dict[str, Callable] = {"realtime": run_realtime, "deep": run_deep}
TESTS_RUN = {"realtime": "none (one shot; the visible tests' output given once)",
             "deep": "its own: the test tool and any pytest command it ran (listed per task)"}


# --------------------------------------------------------------------------- one task


@dataclass(slots=True)
class TaskRecord:
    task: str
    kind: str
    files: int  # source files in the repository
    fix_files: int  # files the reference changes
    tier: str
    passed: bool  # visible and hidden tests all pass
    visible_passed: bool
    hidden_passed: bool
    visible: list[int]  # [tests passed, tests defined]
    hidden: list[int]
    status: str
    wall_s: float
    steps: int
    requests: int
    tokens: int
    prompt_tokens: int
    edits: int
    tier_tests: list[dict]  # the test runs the tier made itself
    commands: int
    harness_tests: list[str]  # what the scoring ran: visible + hidden test files
    tests_restored: list[str]  # visible tests the tier changed (put back before scoring)
    changed: list[str]  # the repository's files the tier changed
    check_s: float
    loadavg_1m: float | None
    message: str
    diff: str
    answer: str = ""
    mode: str | None = None
    trajectory: str | None = None


def _diff(task: AgentTask, root: Path, changed: list[str], limit: int = 4000) -> str:
    from pairline.assistant.diffs import unified_diff

    lines: list[str] = []
    for path in changed:
        try:
            now = (root / path).read_text()
        except (OSError, UnicodeDecodeError):
            now = ""
        lines += unified_diff(task.repo[path], now, path)
    text = "\n".join(lines)
    return text if len(text) <= limit else text[:limit] + "\n[... cut]"


def run_task(client, task: AgentTask, tier: str, runner: Callable, cfg: EvalConfig) -> TaskRecord:
    with tempfile.TemporaryDirectory(prefix="pairline-eval-agent-") as tmp:
        root = Path(tmp) / task.name
        write_repo(task, root)
        failing, _ = failing_output(task, root, cfg.timeout_s, allow_weak=cfg.allow_weak_sandbox)
        client.reset()  # cold: no prompt state from the task before
        la = loadavg()
        t0 = time.perf_counter()
        try:
            attempt = runner(client, task, root, failing, cfg)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001  a prompt too long, or a bug: the task fails, named; the run goes on
            attempt = Attempt(status="error", message=f"{type(err).__name__}: {err}"[:500])
        wall = time.perf_counter() - t0
        changed = changed_files(task, root)
        diff = _diff(task, root, changed)
        sc = score(task, root, cfg.timeout_s, allow_weak=cfg.allow_weak_sandbox)
    return TaskRecord(
        task=task.name, kind=task.kind, files=task.files, fix_files=len(task.fix), tier=tier, passed=sc.passed,
        visible_passed=sc.visible_passed, hidden_passed=sc.hidden_passed, visible=list(sc.visible),
        hidden=list(sc.hidden),
        status=attempt.status, wall_s=wall, steps=attempt.steps, requests=attempt.requests, tokens=attempt.tokens,
        prompt_tokens=attempt.prompt_tokens, edits=attempt.edits, tier_tests=attempt.test_runs,
        commands=attempt.commands, harness_tests=sc.files_run, tests_restored=sc.tests_restored, changed=changed,
        check_s=sc.check_s, loadavg_1m=la[0] if la else None, message=attempt.message, diff=diff,
        answer=attempt.answer, mode=attempt.mode, trajectory=attempt.trajectory,
    )


# --------------------------------------------------------------------------- a run


def check_model(name: str) -> None:
    """A registry name (pulled on first use) or an existing .gguf file or model folder; else one line."""
    from pairline.models.fetch import resolve
    from pairline.models.registry import MODELS

    if name not in MODELS:
        resolve(name, pull_if_missing=False)


def validate(cfg: EvalConfig) -> list[AgentTask]:
    """Every argument checked before a model loads; returns the tasks to run."""
    from pairline.assistant.sandbox import Sandbox
    from pairline.engine.load import RUNTIMES

    if not cfg.tiers:
        raise PairlineError("no tier to run; use --tier realtime, deep or both")
    for tier in cfg.tiers:
        tier_model(tier)
    if cfg.runtime not in (None, *RUNTIMES):
        raise PairlineError(f"unknown runtime {cfg.runtime!r}; use one of {', '.join(RUNTIMES)}")
    if cfg.timeout_s <= 0:
        raise PairlineError(f"--timeout must be positive, got {cfg.timeout_s:g}")
    if cfg.n_ctx < 2048:
        raise PairlineError(f"--ctx must be at least 2048, got {cfg.n_ctx}")
    cfg.budgets().check()
    tasks = load_tasks(cfg.tasks, cfg.limit)
    for tier in cfg.tiers:
        if tier not in cfg.runners:
            check_model(cfg.model or tier_model(tier))
    box = Sandbox(Path(tempfile.gettempdir()), allow_weak=cfg.allow_weak_sandbox)
    if box.missing and not cfg.allow_weak_sandbox:
        raise PairlineError(box.weakness() or "the sandbox is weak here")
    return tasks


def _open(model: str, cfg: EvalConfig):
    from pairline.assistant.client import InProcessClient, open_client

    client = open_client(model, n_ctx=cfg.n_ctx, runtime=cfg.runtime)
    if isinstance(client, InProcessClient):
        client.engine.prefix_store = None  # cold and reproducible: no KV an earlier task left on disk
    return client


def machine() -> dict:
    info = machine_info()
    info["label"] = f"{info.get('cpu_model') or 'CPU'}, {info.get('cores')} cores"
    return info


def run_eval(cfg: EvalConfig) -> dict:
    from pairline.assistant.sandbox import available_protections

    tasks = validate(cfg)
    b = cfg.budgets()
    result: dict = {
        "kind": "agent",
        "command": cfg.command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_state(),
        "loadavg_start": loadavg(),
        "settings": {
            "tiers": list(cfg.tiers), "n_ctx": cfg.n_ctx, "timeout_s": cfg.timeout_s,
            "deep_budgets": {"max_steps": b.max_steps, "max_time_s": b.max_time_s, "max_tokens": b.max_tokens},
            "turn_tokens": cfg.turn_tokens, "cmd_timeout_s": cfg.cmd_timeout, "example": cfg.example,
            "realtime_max_tokens": cfg.realtime_max_tokens, "temperature": 0.0,
            "selection": ", ".join(cfg.tasks) if cfg.tasks else (f"first {len(tasks)}" if cfg.limit else "all"),
            "sandbox": list(available_protections()), "tests_run": {t: TESTS_RUN[t] for t in cfg.tiers},
            "harness_tests": "visible + hidden, put back / copied in after the tier, one pytest process in the sandbox",
        },
        "tasks": [{"name": t.name, "kind": t.kind, "files": t.files, "fix_files": len(t.fix)} for t in tasks],
        "tiers": [],
        "complete": False,
    }
    for tier in cfg.tiers:
        model = cfg.model or tier_model(tier)
        cfg.log(f"{tier}: loading {model}…")
        client = cfg.open_client(model) if cfg.open_client else _open(model, cfg)
        describe = client.describe()
        entry = {"tier": tier, "model": model, "model_name": client.model_name, "load_s": round(client.load_s, 2),
                 "runtime": describe["runtime"] or "remote", "threads": describe["threads"], "server": None,
                 "records": [], "summary": {"n": 0}, "complete": False}
        result["tiers"].append(entry)
        runner = cfg.runners.get(tier) or RUNNERS[tier]
        records: list[TaskRecord] = []
        for i, task in enumerate(tasks, 1):
            cfg.log(f"{tier} {i}/{len(tasks)}: {task.name} ({task.kind}, {task.files} file{'s' * (task.files > 1)})…")
            rec = run_task(client, task, tier, runner, cfg)
            records.append(rec)
            entry["records"].append(asdict(rec))
            entry["summary"] = summarize(records)
            done = sum(r.passed for r in records)
            cfg.log(f"{tier} {i}/{len(tasks)}: {task.name}: {'PASS' if rec.passed else 'fail'} (visible "
                    f"{rec.visible[0]}/{rec.visible[1]}, hidden {rec.hidden[0]}/{rec.hidden[1]}), {rec.status}, "
                    f"{rec.wall_s:.1f} s, {rec.steps} steps, {rec.tokens} tokens, {len(rec.tier_tests)} test runs; "
                    f"{done}/{i} passed")
            if cfg.checkpoint:
                cfg.checkpoint(result)
        entry["complete"] = True
        del client  # free the model before the next tier's loads
        gc.collect()
    result["loadavg_end"] = loadavg()
    result["complete"] = True
    return result


# --------------------------------------------------------------------------- summary and tables


def summarize(records: list[TaskRecord]) -> dict:
    n = len(records)
    if not n:
        return {"n": 0}
    passed = sum(r.passed for r in records)
    lo, hi = wilson(passed, n) or (0.0, 0.0)
    walls = [r.wall_s for r in records]
    multi = [r for r in records if r.files > 1]
    return {
        "n": n,
        "passed": passed,
        "pass_rate": 100.0 * passed / n,
        "pass_at_1": 100.0 * passed / n,  # the name `pairline eval plot` reads
        "interval_95": [100.0 * lo, 100.0 * hi],
        "visible_passed": sum(r.visible_passed for r in records),
        "hidden_passed": sum(r.hidden_passed for r in records),
        "median_wall_s": statistics.median(walls),
        "p25_wall_s": quantile(walls, 0.25),
        "p75_wall_s": quantile(walls, 0.75),
        "mean_wall_s": statistics.fmean(walls),
        "total_wall_s": sum(walls),
        "median_steps": statistics.median([r.steps for r in records]),
        "steps": sum(r.steps for r in records),
        "median_tokens": statistics.median([r.tokens for r in records]),
        "tokens": sum(r.tokens for r in records),
        "tier_test_runs": sum(len(r.tier_tests) for r in records),
        "tasks_with_test_runs": sum(bool(r.tier_tests) for r in records),
        "tests_restored": sum(bool(r.tests_restored) for r in records),
        "statuses": dict(Counter(r.status for r in records)),
        "by_kind": {k: [sum(r.passed for r in records if r.kind == k), sum(r.kind == k for r in records)]
                    for k in KINDS if any(r.kind == k for r in records)},
        "multi_file": [sum(r.passed for r in multi), len(multi)],
    }


def print_tables(result: dict, console=None) -> None:
    console = console or make_console(piped_width=160)
    tiers = [t for t in result.get("tiers", []) if t.get("records")]
    per_task = make_table("pairline eval agent: per task (pass = visible and hidden tests; v/h = tests passed)",
                          ["task", "kind", "files", *[f"{t['tier']}" for t in tiers]], left={"task", "kind"})
    by_task: dict[str, dict[str, dict]] = {}
    for t in tiers:
        for r in t["records"]:
            by_task.setdefault(r["task"], {})[t["tier"]] = r
    for task in result.get("tasks", []):
        cells = []
        for t in tiers:
            r = by_task.get(task["name"], {}).get(t["tier"])
            if r is None:
                cells.append("–")
                continue
            v, h = r["visible"], r["hidden"]
            cells.append(f"{'PASS' if r['passed'] else 'fail'} v{v[0]}/{v[1]} h{h[0]}/{h[1]}\n"
                         f"{r['wall_s']:.1f} s · {r['steps']} st · {r['tokens']} tok · {len(r['tier_tests'])} tests"
                         f"\n{r['status']}")
        per_task.add_row(task["name"], task["kind"], str(task["files"]), *cells)
    console.print(per_task)
    summary = make_table("pairline eval agent: summary per tier", (
        "tier · model", "N", "pass (95% CI)", "visible", "hidden", "wall median (p25–p75)", "steps", "tokens",
        "tier test runs", "multi-file", "statuses"))
    for t in tiers:
        s = t["summary"]
        lo, hi = s["interval_95"]
        summary.add_row(
            f"{t['tier']} · {t['model']}\n{t['runtime']} ×{t['threads']}", str(s["n"]),
            f"{s['pass_rate']:.1f}% ({s['passed']}/{s['n']})\n[{lo:.1f}, {hi:.1f}]",
            str(s["visible_passed"]), str(s["hidden_passed"]),
            f"{s['median_wall_s']:.1f} s\n({s['p25_wall_s']:.1f}–{s['p75_wall_s']:.1f})",
            f"{s['median_steps']:g} med\n{s['steps']} all", f"{s['median_tokens']:g} med\n{s['tokens']} all",
            f"{s['tier_test_runs']} in {s['tasks_with_test_runs']} tasks",
            f"{s['multi_file'][0]}/{s['multi_file'][1]}",
            ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items())),
        )
    console.print(summary)

