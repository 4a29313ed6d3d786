"""`pairline bench edit`: small real edits end to end, per model and per edit mode.

Each task (pairline/bench/tasks/edit/, loaded by edit_tasks.py) is an instruction over one or two
real Python files of 50-400 lines (CPython standard-library modules, and a few small modules written
for the bench that import them), of a kind: rename, add-parameter, fix-bug, change-return,
add-docstring, add-type-hints, extract-helper, delete-dead-code or two-file (one edit across two
files). Each has a check run in a fresh Python process next to the edited files. A task runs the same
code path as `pairline edit` (Coder: prompt, streaming parse, apply, one retry; every file of the
task in one turn), on a cold KV cache, in a temporary folder. Per task, and summed up per mode and
per kind (the medians are over the tasks), it reports:

- applied: the edit produced a change (status "changed"); correct: the task's check passed on it;
  well-formed: the answer parsed as blocks (or a code block) on the first try;
- time to the applied edit: from the request to the new file texts in memory (prefill, generation,
  retry), over the tasks whose edit applied ("time to edit" counts every task);
- TTFT, decode tok/s, and effective tok/s (answer tokens / generation wall time);
- tokens: the tokens the model generated in the turn (a retry's included), and that number divided
  by
  - file tokens: the tokens of the task's files as given (`client.count_tokens`, summed): about 1 for
    a whole-file rewrite, far less for search/replace blocks;
  - reference tokens: the size of the task's reference edit, `client.count_tokens` of the lines a
    line diff of each file against its reference-edited text removes, plus those it adds (a changed
    line counts on both sides; summed over the files). This is the least an answer that quotes the
    old lines and writes the new ones can cost, so tokens / reference tokens is the answer's
    overhead over the change itself;
- accepted: prediction (rewrite) or prompt-lookup draft (blocks) tokens accepted, and the share of
  the generated tokens they make up.

A rewrite takes exactly one file, so the two-file tasks run in blocks mode only. A task whose request
fails (its prompt does not fit the context, say) counts as status "error" and the run goes on.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pairline.bench.common import console as make_console
from pairline.bench.common import csv, fmt, invocation, loadavg, median, out_path, stamp, stderr_log, write_json
from pairline.bench.common import table as make_table
from pairline.bench.edit_tasks import (
    KINDS,
    TASKS_DIR,
    Task,
    TaskFile,
    load_tasks,
    reference_texts,
    reference_tokens,
    run_check,
    write_files,
)

__all__ = ["KINDS", "TASKS_DIR", "Task", "TaskFile", "load_tasks", "reference_texts", "run_check", "write_json"]

# auto: what `pairline edit` chooses per task (coder.choose_mode); each result records the mode it ran
MODES = ("blocks", "rewrite", "auto")


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
    files: int = 1
    file_tokens: int = 0  # the task's files as given, in this model's tokens
    reference_tokens: int = 0  # the reference edit's removed + added lines, in this model's tokens
    predicted_tokens: int = 0  # the prediction sent with a rewrite (0 for blocks)
    forced_tokens: int = 0  # appended by the edit grammar without a model step
    decode_s: float = 0.0  # first token to the end, the turn's requests summed
    grammar_s: float = 0.0  # of which in the grammar: its masks, checks and forced tokens
    renames: int = 0  # RENAME actions the model wrote
    deletes: int = 0  # DELETE actions the model wrote
    ran: str = ""  # the mode the edit ran in (blocks or rewrite; with --modes auto, the coder's choice)
    regions: int = 0  # a rewrite's code blocks, each a region spliced into the file
    region_ended: bool = False  # a region was stopped where it rejoined the file (region.py)
    check_output: str = ""
    answer: str = ""

    @property
    def applied(self) -> bool:
        return self.status == "changed"

    @property
    def tokens_vs_file(self) -> float | None:
        return self.tokens / self.file_tokens if self.file_tokens else None

    @property
    def tokens_vs_reference(self) -> float | None:
        return self.tokens / self.reference_tokens if self.reference_tokens else None

    def to_dict(self) -> dict:
        return {**asdict(self), "applied": self.applied, "time_to_applied_s": self.time_to_edit_s if self.applied
                else None, "tokens_vs_file": self.tokens_vs_file, "tokens_vs_reference": self.tokens_vs_reference}


@dataclass
class EditBenchResult:
    command: str
    machine: dict
    results: list[TaskResult] = field(default_factory=list)
    load_s: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "model · mode · task: why"

    def to_dict(self) -> dict:
        return {
            "command": self.command,
            "machine": self.machine,
            "load_s": self.load_s,
            "summary": summarize(self.results),
            "by_kind": summarize_kinds(self.results),
            "skipped": self.skipped,
            "results": [r.to_dict() for r in self.results],
        }


def run_task(client, task: Task, mode: str, max_tokens: int | None = None,
             sizes: tuple[int, int] | None = None, grammar: bool = True, focus: bool = True) -> TaskResult:
    """One task through the Coder, every file of it in one turn. `sizes`: (file tokens, reference
    tokens) in this client's tokens, when already counted. `grammar`: decode under the edit grammar
    (the default of `pairline edit`); without it the mode is reported as "<mode>/no-grammar".
    `focus`: a rewrite of a Python file shows the definitions the instruction names (focus.py, the
    default); without it the whole file, and the mode is reported as "<mode>/no-focus"."""
    from pairline.assistant.coder import Coder, load_file
    from pairline.assistant.workspace import Workspace

    if sizes is None:
        sizes = task_sizes(client, task)
    client.reset()  # cold: each task pays its whole prompt, as a fresh `pairline edit` would
    with tempfile.TemporaryDirectory(prefix="pairline-bench-edit-") as tmp:
        folder = Path(tmp)
        paths = write_files(task, folder)
        ws = Workspace(folder.resolve(), git=False)
        coder = Coder(client, ws, constrain=grammar, focus=focus)
        label = (mode if grammar else f"{mode}/no-grammar") + ("" if focus else "/no-focus")
        t0 = time.perf_counter()
        try:
            result = coder.run([load_file(ws, p) for p in paths], task.instruction, mode=mode, max_tokens=max_tokens)
        except Exception as err:  # noqa: BLE001  a prompt too long, or a bug: the task fails (named), the run goes on
            return TaskResult(
                model=client.model_name, mode=label, task=task.name, kind=task.kind, status="error", well_formed=False,
                retried=False, correct=False, time_to_edit_s=time.perf_counter() - t0, ttft_s=None, tokens=0,
                decode_tok_s=0.0, effective_tok_s=0.0, accepted_draft_tokens=0, files=len(task.files),
                file_tokens=sizes[0], reference_tokens=sizes[1], check_output=f"{type(err).__name__}: {err}"[-500:],
            )
        elapsed = time.perf_counter() - t0
        for real, text in result.new_texts.items():
            real.write_text(text)
        correct, output = (False, "")
        if result.status == "changed":
            correct, output = run_check(task, folder)
    s = result.stats
    return TaskResult(
        model=client.model_name,
        mode=label,
        ran=s.mode,
        regions=s.regions,
        region_ended=s.region_ended,
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
        files=len(task.files),
        file_tokens=sizes[0],
        reference_tokens=sizes[1],
        predicted_tokens=s.predicted,
        forced_tokens=s.forced,
        decode_s=s.decode_s,
        grammar_s=s.constraint_s,
        renames=s.renames,
        deletes=s.deletes,
        check_output=output,
        answer=result.answer[-4000:],
    )


def task_sizes(client, task: Task) -> tuple[int, int]:
    """(file tokens, reference tokens) of the task in the client's tokens (see the module docstring)."""
    return sum(client.count_tokens(f.source) for f in task.files), reference_tokens(task, client.count_tokens)


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def _row(rs: list[TaskResult]) -> dict:
    """Counts, percentages and medians over some task results."""
    n = len(rs)
    tokens = sum(r.tokens for r in rs)
    accepted = sum(r.accepted_draft_tokens for r in rs)
    return {
        "tasks": n,
        "well_formed_pct": _pct(sum(r.well_formed for r in rs), n),
        "applied_pct": _pct(sum(r.applied for r in rs), n),
        "correct_pct": _pct(sum(r.correct for r in rs), n),
        "retried": sum(r.retried for r in rs),
        "median_time_to_edit_s": median([r.time_to_edit_s for r in rs]),
        "median_time_to_applied_s": median([r.time_to_edit_s for r in rs if r.applied]),
        "median_ttft_s": median([r.ttft_s for r in rs]),
        "median_decode_tok_s": median([r.decode_tok_s for r in rs]),
        "median_effective_tok_s": median([r.effective_tok_s for r in rs]),
        "median_tokens": median([float(r.tokens) for r in rs]),
        "median_file_tokens": median([float(r.file_tokens) for r in rs]),
        "median_reference_tokens": median([float(r.reference_tokens) for r in rs]),
        "median_tokens_vs_file": median([r.tokens_vs_file for r in rs]),
        "median_tokens_vs_reference": median([r.tokens_vs_reference for r in rs]),
        "accepted_draft_tokens": accepted,
        "accepted_pct": _pct(accepted, tokens),
        "forced_pct": _pct(sum(r.forced_tokens for r in rs), tokens),
        # the grammar's cost as a share of decoding, all tasks together (issue 14: under 10%)
        "grammar_pct_of_decode": _pct(sum(r.grammar_s for r in rs), sum(r.decode_s for r in rs)),
        "renames": sum(r.renames for r in rs),
        "deletes": sum(r.deletes for r in rs),
    }


def summarize(results: list[TaskResult]) -> list[dict]:
    """One row per (model, mode): medians and percentages over the tasks."""
    keys = sorted({(r.model, r.mode) for r in results})
    return [{"model": model, "mode": mode, **_row([r for r in results if (r.model, r.mode) == (model, mode)])}
            for model, mode in keys]


def summarize_kinds(results: list[TaskResult]) -> list[dict]:
    """One row per (model, mode, kind), the kinds in the order of KINDS."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    keys = sorted({(r.model, r.mode, r.kind) for r in results},
                  key=lambda k: (k[0], k[1], order.get(k[2], len(order)), k[2]))
    return [
        {"model": model, "mode": mode, "kind": kind,
         **_row([r for r in results if (r.model, r.mode, r.kind) == (model, mode, kind)])}
        for model, mode, kind in keys
    ]


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
    kinds: tuple[str, ...] | None = None,
    command: str = "",
    n_ctx: int = 8192,
    max_tokens: int | None = None,
    log=print,
    checkpoint=None,
    open_client=None,
    grammars: tuple[bool, ...] = (True,),
    focus: bool = True,
) -> EditBenchResult:
    from pairline.errors import PairlineError

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise PairlineError(f"unknown mode(s) {', '.join(bad)}; use {', '.join(MODES)}")
    selected = load_tasks(tasks, kinds)
    if not selected:
        raise PairlineError("no edit task matches both --tasks and --kinds")
    if open_client is None:
        from pairline.assistant.client import open_client as _open

        def open_client(name: str):
            client = _open(name, n_ctx=n_ctx)
            # cold and reproducible: no KV state kept on disk by an earlier task (or an earlier run
            # of this one) is restored; every prompt token is computed
            client.engine.prefix_store = None
            return client

    out = EditBenchResult(command, machine())
    for model in models:
        log(f"loading {model}…")
        client = open_client(model)
        out.load_s[model] = client.load_s
        sizes = {task.name: task_sizes(client, task) for task in selected}
        for mode, grammar in [(m, g) for m in modes for g in grammars]:
            for task in selected:
                if mode == "rewrite" and len(task.files) > 1:
                    out.skipped.append(f"{model} · {mode} · {task.name}: a rewrite takes one file")
                    continue
                r = run_task(client, task, mode, max_tokens, sizes[task.name], grammar, focus)
                out.results.append(r)
                log(
                    f"{model} · {r.mode} · {task.name}: {r.status}, well-formed {r.well_formed}, "
                    f"correct {r.correct}, {r.time_to_edit_s:.1f} s, {r.tokens} tokens "
                    f"({r.file_tokens} in the file{'s' if r.files > 1 else ''}, {r.reference_tokens} changed), "
                    f"{r.decode_tok_s:.1f} tok/s, {r.accepted_draft_tokens} accepted"
                )
                if checkpoint:
                    checkpoint(out)
        n_multi = sum(len(t.files) > 1 for t in selected)
        if "rewrite" in modes and n_multi:
            log(f"{model}: {n_multi} task(s) with several files not run as rewrites (a rewrite takes one file)")
    return out


def _f(v, spec="{:.1f}") -> str:
    return fmt(v, spec, missing="–")


def print_summary(result: EditBenchResult, console=None) -> None:
    console = console or make_console(piped_width=200)
    table = make_table("pairline bench edit", ("model", "mode", "tasks", "well-formed", "applied", "correct",
                                               "time to applied edit", "TTFT", "decode tok/s", "effective tok/s",
                                               "tokens", "tokens / file", "tokens / ref.", "accepted", "forced",
                                               "grammar / decode", "actions"))
    for row in summarize(result.results):
        table.add_row(
            row["model"], row["mode"], str(row["tasks"]), _f(row["well_formed_pct"], "{:.0f}%"),
            _f(row["applied_pct"], "{:.0f}%"), _f(row["correct_pct"], "{:.0f}%"),
            _f(row["median_time_to_applied_s"], "{:.1f} s"),
            _f(row["median_ttft_s"], "{:.1f} s"), _f(row["median_decode_tok_s"]), _f(row["median_effective_tok_s"]),
            _f(row["median_tokens"], "{:.0f}"), _f(row["median_tokens_vs_file"], "{:.2f}"),
            _f(row["median_tokens_vs_reference"], "{:.1f}"), _f(row["accepted_pct"], "{:.0f}%"),
            _f(row["forced_pct"], "{:.0f}%"), _f(row["grammar_pct_of_decode"], "{:.1f}%"),
            f"{row['renames']} renames, {row['deletes']} deletes",
        )
    console.print(table)
    kinds = make_table("per kind (medians over the kind's tasks)", (
        "model", "mode", "kind", "tasks", "applied", "correct", "time to applied edit", "TTFT", "tokens",
        "tokens / file", "tokens / ref.", "accepted"))
    for row in summarize_kinds(result.results):
        kinds.add_row(
            row["model"], row["mode"], row["kind"], str(row["tasks"]), _f(row["applied_pct"], "{:.0f}%"),
            _f(row["correct_pct"], "{:.0f}%"), _f(row["median_time_to_applied_s"], "{:.1f} s"),
            _f(row["median_ttft_s"], "{:.1f} s"), _f(row["median_tokens"], "{:.0f}"),
            _f(row["median_tokens_vs_file"], "{:.2f}"), _f(row["median_tokens_vs_reference"], "{:.1f}"),
            _f(row["accepted_pct"], "{:.0f}%"),
        )
    console.print(kinds)
    console.print("tokens / file: generated tokens over the tokens of the task's files; tokens / ref.: over the "
                  "tokens of the lines the reference edit removes and adds; accepted: draft or prediction tokens "
                  "accepted, as a share of the generated tokens; forced: tokens the edit grammar appended without "
                  "a model step, same share; grammar / decode: time in the grammar over decode time, all tasks; "
                  "actions: RENAME and DELETE actions written.", highlight=False)


# --------------------------------------------------------------------------- the command


def add_parser(sub) -> None:
    """`pairline bench edit` (registered by pairline/bench/cli.py)."""
    p = sub.add_parser(
        "edit",
        help="real edits end to end: applied, correct, time to applied edit, tokens vs the change, per kind",
        description="Runs each edit task (rename, add a parameter, fix a bug, change a return value, add a "
        "docstring or type hints, extract a helper, delete dead code, edits across two files; real Python files) "
        "through the same path as `pairline edit`, per model and mode, checks each result with the task's test, "
        "prints a table per mode and per kind and writes JSON.",
    )
    p.add_argument(
        "--model", "-m", action="append", default=None, help="model (repeatable; default: the real-time one)"
    )
    p.add_argument("--modes", default="blocks,rewrite",
                   help="comma-separated: blocks, rewrite (a lazy rewrite: regions), auto (what pairline edit "
                   "chooses per task); default blocks,rewrite")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated task kinds, e.g. rename,two-file (default: all; with --tasks: both apply)")
    p.add_argument("--grammar", choices=("on", "off", "both"), default="on",
                   help="decode under the edit grammar (on, as pairline edit does), without it, or both, side by side")
    p.add_argument("--focus", choices=("on", "off"), default="on",
                   help="a rewrite of a Python file shows the model the definitions the instruction names (on, as "
                        "pairline edit does) or the whole file")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on each answer (default: per mode)")
    p.add_argument("--ctx", type=int, default=8192,
                   help="context size (default 8192: a rewrite of the largest task, prompt and answer, fits)")
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
        kinds=csv(args.kinds),
        command=invocation(),
        n_ctx=args.ctx,
        max_tokens=args.max_tokens,
        log=log,
        checkpoint=lambda r: write_json(r, path),
        grammars={"on": (True,), "off": (False,), "both": (True, False)}[args.grammar],
        focus=args.focus == "on",
    )
    write_json(result, path)
    print_summary(result)
    err.print(f"wrote {path}")
    return 0
