"""`pairline bench edit`: small real edits end to end, per model and per edit mode.

Each task (pairline/bench/tasks/edit/tasks.json) is an instruction over a real Python module of
110-167 lines, plus a check run in a fresh Python process next to the edited file. A task runs the
same code path as `pairline edit` (Coder: prompt, streaming parse, apply, one retry), on a cold
KV cache, in a temporary folder, and reports:

- time to the applied edit: request to the new file text in memory (prefill, generation, retry);
- decode tok/s and effective tok/s (answer tokens / generation wall time), per mode: search/replace
  blocks versus whole-file rewrite with the file as prediction;
- well-formed: the answer parsed as blocks (or a code block) on the first try;
- applied: the edit produced a change; correct: the task's check passed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pairline.bench.common import console as make_console
from pairline.bench.common import csv, fmt, invocation, loadavg, median, out_path, stamp, stderr_log, write_json
from pairline.bench.common import table as make_table

TASKS_DIR = Path(__file__).parent / "tasks" / "edit"
MODES = ("blocks", "rewrite")

# Run before each check: load(name) imports the edited file under a private name, with the C
# accelerator of bisect blocked so that the Python code in the file is what runs.
_CHECK_PRELUDE = """\
import importlib.util, sys
sys.modules['_bisect'] = None
def load(name):
    spec = importlib.util.spec_from_file_location('edited_' + name.replace('.', '_'), name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
"""


@dataclass(slots=True)
class Task:
    name: str
    kind: str
    path: str  # the file's name in the workspace
    source: str
    instruction: str
    check: str
    reference: list[tuple[str, str]]  # search/replace pairs of a correct edit (for tests)


@dataclass(slots=True)
class TaskResult:
    model: str
    mode: str
    task: str
    kind: str
    status: str  # changed | unchanged | malformed | cancelled | error
    well_formed: bool
    retried: bool
    correct: bool
    time_to_edit_s: float
    ttft_s: float | None
    tokens: int
    decode_tok_s: float
    effective_tok_s: float
    accepted_draft_tokens: int
    check_output: str = ""
    answer: str = ""


@dataclass
class EditBenchResult:
    command: str
    machine: dict
    results: list[TaskResult] = field(default_factory=list)
    load_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "command": self.command,
            "machine": self.machine,
            "load_s": self.load_s,
            "summary": summarize(self.results),
            "results": [asdict(r) for r in self.results],
        }


def load_tasks(names: tuple[str, ...] | None = None) -> list[Task]:
    from pairline.errors import PairlineError

    data = json.loads((TASKS_DIR / "tasks.json").read_text())
    tasks = []
    for t in data["tasks"]:
        if names and t["name"] not in names:
            continue
        source = (TASKS_DIR / t["file"]).read_text()
        refs = [tuple(r) for r in t.get("reference", [])]
        tasks.append(Task(t["name"], t["kind"], t["path"], source, t["instruction"], t["check"], refs))
    if names:
        unknown = set(names) - {t.name for t in tasks}
        if unknown:
            raise PairlineError(f"unknown edit task(s): {', '.join(sorted(unknown))}")
    return tasks


def run_check(task: Task, folder: Path, timeout: float = 30.0) -> tuple[bool, str]:
    """The task's check, in a fresh Python process in `folder`; (passed, output tail)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHECK_PRELUDE + task.check],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.TimeoutExpired:
        return False, f"check timed out after {timeout:.0f} s"
    output = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, output[-500:]


def run_task(client, task: Task, mode: str, max_tokens: int | None = None) -> TaskResult:
    from pairline.assistant.coder import Coder, load_file
    from pairline.assistant.workspace import Workspace

    client.reset()  # cold: each task pays its whole prompt, as a fresh `pairline edit` would
    with tempfile.TemporaryDirectory(prefix="pairline-bench-edit-") as tmp:
        folder = Path(tmp)
        (folder / task.path).write_text(task.source)
        ws = Workspace(folder.resolve(), git=False)
        coder = Coder(client, ws)
        t0 = time.perf_counter()
        result = coder.run([load_file(ws, folder / task.path)], task.instruction, mode=mode, max_tokens=max_tokens)
        elapsed = time.perf_counter() - t0
        for real, text in result.new_texts.items():
            real.write_text(text)
        correct, output = (False, "")
        if result.status == "changed":
            correct, output = run_check(task, folder)
    s = result.stats
    return TaskResult(
        model=client.model_name,
        mode=s.mode,
        task=task.name,
        kind=task.kind,
        status=result.status,
        well_formed=s.well_formed,
        retried=s.retried,
        correct=correct,
        time_to_edit_s=elapsed,
        ttft_s=s.ttft_s,
        tokens=s.tokens,
        decode_tok_s=s.tokens_per_s,
        effective_tok_s=s.tokens / s.wall_s if s.wall_s > 0 else 0.0,
        accepted_draft_tokens=s.accepted,
        check_output=output,
        answer=result.answer[-4000:],
    )


def summarize(results: list[TaskResult]) -> list[dict]:
    """One row per (model, mode): medians and percentages over the tasks."""
    rows = []
    keys = sorted({(r.model, r.mode) for r in results})
    for model, mode in keys:
        rs = [r for r in results if (r.model, r.mode) == (model, mode)]
        n = len(rs)
        rows.append(
            {
                "model": model,
                "mode": mode,
                "tasks": n,
                "well_formed_pct": 100.0 * sum(r.well_formed for r in rs) / n,
                "applied_pct": 100.0 * sum(r.status == "changed" for r in rs) / n,
                "correct_pct": 100.0 * sum(r.correct for r in rs) / n,
                "retried": sum(r.retried for r in rs),
                "median_time_to_edit_s": median([r.time_to_edit_s for r in rs]),
                "median_ttft_s": median([r.ttft_s for r in rs]),
                "median_decode_tok_s": median([r.decode_tok_s for r in rs]),
                "median_effective_tok_s": median([r.effective_tok_s for r in rs]),
                "median_tokens": median([float(r.tokens) for r in rs]),
            }
        )
    return rows


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": loadavg(),
        "threads_env": os.environ.get("PAIRLINE_THREADS"),
    }


def run_edit_bench(
    models: list[str],
    modes: tuple[str, ...] = MODES,
    tasks: tuple[str, ...] | None = None,
    *,
    command: str = "",
    n_ctx: int = 4096,
    max_tokens: int | None = None,
    log=print,
    checkpoint=None,
    open_client=None,
) -> EditBenchResult:
    from pairline.errors import PairlineError

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise PairlineError(f"unknown mode(s) {', '.join(bad)}; use {', '.join(MODES)}")
    if open_client is None:
        from pairline.assistant.client import open_client as _open

        def open_client(name: str):
            return _open(name, n_ctx=n_ctx)

    selected = load_tasks(tasks)
    out = EditBenchResult(command, machine())
    for model in models:
        log(f"loading {model}…")
        client = open_client(model)
        out.load_s[model] = client.load_s
        for mode in modes:
            for task in selected:
                r = run_task(client, task, mode, max_tokens)
                out.results.append(r)
                log(
                    f"{model} · {mode} · {task.name}: {r.status}, well-formed {r.well_formed}, "
                    f"correct {r.correct}, {r.time_to_edit_s:.1f} s, {r.tokens} tokens, {r.decode_tok_s:.1f} tok/s"
                )
                if checkpoint:
                    checkpoint(out)
    return out


def print_summary(result: EditBenchResult, console=None) -> None:
    console = console or make_console()
    table = make_table("pairline bench edit", ("model", "mode", "tasks", "well-formed", "applied", "correct",
                                               "time to edit (median)", "TTFT", "decode tok/s", "effective tok/s",
                                               "tokens"))

    def f(v, spec="{:.1f}"):
        return fmt(v, spec, missing="–")

    for row in summarize(result.results):
        table.add_row(
            row["model"], row["mode"], str(row["tasks"]), f(row["well_formed_pct"], "{:.0f}%"),
            f(row["applied_pct"], "{:.0f}%"), f(row["correct_pct"], "{:.0f}%"),
            f(row["median_time_to_edit_s"], "{:.1f} s"),
            f(row["median_ttft_s"], "{:.1f} s"), f(row["median_decode_tok_s"]), f(row["median_effective_tok_s"]),
            f(row["median_tokens"], "{:.0f}"),
        )
    console.print(table)


# --------------------------------------------------------------------------- the command


def add_parser(sub) -> None:
    """`pairline bench edit` (registered by pairline/bench/cli.py)."""
    p = sub.add_parser(
        "edit",
        help="small real edits end to end: time to applied edit, tok/s blocks vs rewrite, %% well-formed, %% correct",
        description="Runs each edit task (rename, add a parameter, fix a bug, add a docstring; real Python files) "
        "through the same path as `pairline edit`, per model and mode, checks each result with the task's test, "
        "prints a table and writes JSON.",
    )
    p.add_argument(
        "--model", "-m", action="append", default=None, help="model (repeatable; default: the real-time one)"
    )
    p.add_argument("--modes", default="blocks,rewrite", help="blocks, rewrite, or both (default)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on each answer (default: per mode)")
    p.add_argument("--ctx", type=int, default=4096, help="context size (default 4096)")
    p.add_argument("--out", default=None, help="JSON file or folder (default: bench-results/)")
    p.set_defaults(func=cmd_edit_bench)


def cmd_edit_bench(args) -> int:
    from pairline.models.registry import DEFAULT_REALTIME

    err, log = stderr_log()
    models = args.model or [DEFAULT_REALTIME]
    path = out_path(args.out, f"edit-{stamp()}.json")
    result = run_edit_bench(
        models,
        csv(args.modes),
        csv(args.tasks),
        command=invocation(),
        n_ctx=args.ctx,
        max_tokens=args.max_tokens,
        log=log,
        checkpoint=lambda r: write_json(r, path),
    )
    write_json(result, path)
    print_summary(result)
    err.print(f"wrote {path}")
    return 0
