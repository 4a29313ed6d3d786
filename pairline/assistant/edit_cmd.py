"""`pairline edit FILE... -m "instruction"`: edit files with the model, show the diff as it forms,
write atomically (and commit, in a git repository)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass

from pairline.assistant.diffs import LiveDiff, diff_counts, live_view, print_diff, rows_view, unified_diff
from pairline.errors import PairlineError

EXIT_APPLIED = 0
EXIT_UNCHANGED = 1
EXIT_MALFORMED = 3
EXIT_FILE_CHANGED = 4
EXIT_INTERRUPTED = 130

_EPILOG = """\
modes (auto picks one per edit):
  focused edit (one Python file whose instruction names functions, methods or classes of it): the
  model is shown those definitions only (and, for a bug, what they call; for callers, who calls
  them) and rewrites the ones that change; each is merged back by name, the rest of the file is
  untouched
  lazy rewrite (any other existing file): the model rewrites only the parts it changes, each a code block
  from the first line it changes to the last, spliced into the untouched file; the old file is the
  prediction, and a part that runs on past its change is stopped where it rejoins the file
  search/replace blocks (several files, a new file, or a rename or deletion in Python, done with
  RENAME through rope and DELETE): the model writes only the lines that change

exit codes:
  0  the edit was applied (with --dry-run: there is a change to apply)
  1  nothing changed: the model's edit leaves the files as they were
  2  usage or setup error (bad file, outside the workspace, unknown model, ...)
  3  the model's answer was malformed (bad blocks even after one retry, no code block, cut off by
     --max-tokens), or the edit failed the check after it, even after one retry: it would delete
     lines the instruction does not ask to remove, or leave Python that does not parse or uses a
     name nothing defines; nothing written
  4  the file changed on disk while the model worked (any of them); nothing written
130  interrupted (Ctrl-C); nothing written

In a git repository each applied edit is one commit (--no-commit: leave it uncommitted); outside
git the old bytes are kept under ~/.cache/pairline/backups.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pairline.engine.load import add_runtime_option
    from pairline.models.registry import DEFAULT_REALTIME

    parser = subparsers.add_parser(
        "edit",
        help="edit files as an instruction says, streaming the diff",
        description="Edit FILE(s) as the instruction says. The diff is shown as the model writes it;\n"
        "files are replaced atomically at the end, and only if nobody changed them meanwhile.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files to edit (up to 256 KB each)")
    parser.add_argument("-m", "--message", required=True, metavar="INSTRUCTION", help="what to change")
    parser.add_argument("--model", default=DEFAULT_REALTIME, help=f"model name or path (default: {DEFAULT_REALTIME})")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--rewrite", action="store_true",
                     help="a lazy rewrite (one file): the parts that change, spliced in; old file as prediction")
    how.add_argument("--blocks", action="store_true", help="search/replace blocks, whatever auto would choose")
    parser.add_argument(
        "--no-grammar",
        action="store_true",
        help="decode without the edit grammar (to compare; by default a SEARCH part can only be lines of the file)",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    parser.add_argument("--json", action="store_true", help="JSONL events on stdout, for scripts")
    parser.add_argument("--no-commit", action="store_true", help="in a git repository, do not commit the edit")
    parser.add_argument(
        "--root", default=None, metavar="DIR", help="workspace root (default: the git repository or current folder)"
    )
    parser.add_argument("--server", default=None, metavar="URL", help="a running `pairline serve` (http://HOST:PORT or ws://...)")
    add_runtime_option(parser)
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="cap on the answer's length in tokens (default: 1024 for blocks; the file's length plus room to grow)",
    )
    parser.add_argument(
        "--ctx", type=int, default=None, metavar="N", help="context size in tokens (default: sized to the files)"
    )
    parser.set_defaults(func=cmd_edit)
    return parser


# --------------------------------------------------------------------------- stats


@dataclass
class Stats:
    load_s: float = 0.0
    total_s: float = 0.0
    ttft_s: float | None = None
    tokens_per_s: float = 0.0
    accepted: int = 0
    predicted: int = 0
    mode: str = "rewrite"

    def line(self) -> str:
        ttft = f"{self.ttft_s:.2f} s" if self.ttft_s is not None else "–"
        if self.mode == "rewrite":
            drafts = f"{self.accepted}/{self.predicted} prediction tokens"
        else:
            drafts = f"{self.accepted} draft tokens"
        return (
            f"TTFT {ttft} · {self.tokens_per_s:.0f} tok/s · {drafts} "
            f"accepted · {self.total_s:.1f} s total (load {self.load_s:.1f} s)"
        )


def plan_ctx(model_chars: int, instruction_chars: int, max_tokens: int | None) -> int:
    """A context that surely holds the prompt and the answer, without allocating the model's
    maximum: code runs 3-4 characters a token, so characters / 2 is a safe bound."""
    file_tokens = model_chars // 2 + 32
    need = 384 + instruction_chars // 2 + file_tokens + (max_tokens or file_tokens + 512)
    return max(2048, -(-need // 1024) * 1024)


# --------------------------------------------------------------------------- the command


class Output:
    """Where the command's events go: a rich console (live view, colored diff) or JSONL."""

    def __init__(self, as_json: bool):
        from rich.console import Console

        self.json = as_json
        # soft_wrap: lines go out whole, never re-wrapped to the terminal's (or a pipe's 80) columns
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def event(self, kind: str, **fields) -> None:
        if self.json:
            sys.stdout.write(json.dumps({"type": kind, **fields}, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    def note(self, message: str) -> None:
        if not self.json:
            self.err.print(message, markup=False)


def cmd_edit(args: argparse.Namespace) -> int:
    out = Output(args.json)
    try:
        return _edit(args, out)
    except KeyboardInterrupt:
        out.event("done", status="interrupted", exit_code=EXIT_INTERRUPTED)
        out.note("pairline: interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except PairlineError as err:
        if args.json:
            out.event("error", message=str(err))
            out.event("done", status="error", exit_code=2)
        raise


class _LiveBlocks:
    """The live view of a search/replace answer: finished blocks as diffs, the open one as it grows."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.partial_rows: list[tuple[str, str]] = []

    def block(self, block) -> None:
        from pairline.assistant.edits import block_diff_rows

        self.rows.append((" ", f"··· {block.path}"))
        self.rows += block_diff_rows(block)
        self.partial_rows = []

    def partial(self, parser_partial, state: str) -> None:
        if parser_partial is None:
            self.partial_rows = []
            return
        rows = [("-", x) for x in parser_partial.search]
        if state == "replace":
            rows += [("+", x) for x in parser_partial.replace]
        self.partial_rows = [(" ", f"··· {parser_partial.path}"), *rows]


def _edit(args: argparse.Namespace, out: Output) -> int:
    from rich.live import Live

    from pairline.assistant.client import open_client
    from pairline.assistant.coder import Coder, Event, choose_mode, load_file, max_tokens_for
    from pairline.assistant.edits import BlockParser
    from pairline.assistant.workspace import FileChangedError, Workspace

    t0 = time.perf_counter()
    if args.max_tokens is not None and args.max_tokens < 1:
        raise PairlineError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.ctx is not None and args.ctx < 256:
        raise PairlineError(f"--ctx must be at least 256, got {args.ctx}")
    if not args.message.strip():
        raise PairlineError("the instruction is empty; say what to change with -m")
    ws = Workspace.open(args.root, commit=not args.no_commit)
    files = [load_file(ws, f) for f in dict.fromkeys(args.files)]
    mode = choose_mode("rewrite" if args.rewrite else "blocks" if args.blocks else "auto", files, args.message)
    if mode == "rewrite" and (len(files) != 1 or files[0].text is None):
        raise PairlineError("--rewrite takes exactly one existing file")
    missing = [f.shown for f in files if f.text is None]
    chars = sum(len(f.model_text) for f in files)
    answer = args.max_tokens or (None if mode == "rewrite" else 1024)
    n_ctx = args.ctx or plan_ctx(chars + 2500, len(args.message), answer)  # 2500: the prompt's rules and example
    out.note(f"loading {args.server or args.model}…")
    client = open_client(args.model, n_ctx=n_ctx, server=args.server, runtime=args.runtime, one_shot=True)
    stats = Stats(load_s=client.load_s, mode=mode)
    out.event("start", files=[f.shown for f in files], new_files=missing, mode=mode, model=args.model)

    # the live view: rewrite mode diffs the file as it streams; block mode shows blocks as they form
    shown = files[0].shown
    live_diff = LiveDiff(files[0].model_text.splitlines())
    live_blocks = _LiveBlocks()
    watcher = BlockParser(default_path=shown if len(files) == 1 else None)
    height = max(4, min(40, out.out.size.height - 4))
    use_live = out.out.is_terminal and not out.json
    first_view = live_view(f"{shown} · reading the prompt…", live_diff, height)
    live = Live(first_view, console=out.out, transient=True, refresh_per_second=15) if use_live else None
    n_chunks = 0
    t_gen = last_view = time.perf_counter()

    def on_event(e: Event) -> None:
        nonlocal n_chunks, last_view, watcher, live_diff
        if e.kind == "text":
            n_chunks += 1
            if mode == "blocks":
                watcher.feed(e.text)
                live_blocks.partial(watcher.partial, watcher.state)
        elif e.kind == "focus":  # a focused edit shows the model part of the file: the diff is against it
            live_diff = LiveDiff(e.text.splitlines())
        elif e.kind == "rewrite_line":
            live_diff.push(e.text)
        elif e.kind == "block":
            live_blocks.block(e.block)
            out.event("block", path=e.block.path, search=e.block.search_text, replace=e.block.replace_text)
        elif e.kind == "rename":
            out.event("rename", path=e.path, rename=e.text)
            out.note(f"renamed in {e.path}: {e.text} (every reference, by rope)")
        elif e.kind == "delete":
            out.event("delete", path=e.path, name=e.text)
            out.note(f"deleted from {e.path}: {e.text}")
        elif e.kind == "error":
            out.event("block_error", path=e.path, message=e.text)
            out.note(f"edit failed: {e.text}")
        elif e.kind == "retry":
            out.event("retry", reason=e.text)
            out.note("retrying once with the errors…")
            watcher = BlockParser(default_path=watcher.default_path)  # the retry's answer starts afresh
            live_diff = LiveDiff(files[0].model_text.splitlines())
        elif e.kind == "check":
            out.event("check_error", path=e.path, message=e.text)
            out.note(f"check failed: {e.text}")
        elif e.kind == "status":
            out.event("repair", message=e.text)
            out.note(e.text)
        now = time.perf_counter()
        if live is not None and now - last_view >= 0.03:
            last_view = now
            if mode == "rewrite":
                title = f"{shown} · line {live_diff.new_lines} of ~{len(live_diff.orig)} · {now - t_gen:.1f} s"
                live.update(live_view(title, live_diff, height))
            else:
                title = f"{', '.join(f.shown for f in files)} · {now - t_gen:.1f} s"
                live.update(rows_view(title, live_blocks.rows + live_blocks.partial_rows, height))

    coder = Coder(client, ws, on_event=on_event, constrain=not args.no_grammar)
    budget = args.max_tokens or max_tokens_for(client, files, mode)
    with live or contextlib.nullcontext():
        result = coder.run(files, args.message, mode=mode, max_tokens=budget)
    s = result.stats
    stats.ttft_s, stats.tokens_per_s = s.ttft_s, s.tokens_per_s
    stats.accepted, stats.predicted = s.accepted, s.predicted

    def done(code: int, status: str, message: str, **extra) -> int:
        stats.total_s = time.perf_counter() - t0
        out.note(message)
        out.note(stats.line())
        out.event(
            "done",
            status=status,
            exit_code=code,
            message=message,
            mode=s.mode if mode == "rewrite" else mode,
            well_formed=s.well_formed,
            retried=s.retried,
            check_retried=s.check_retried,
            repaired=s.repaired,
            blocks=s.blocks,
            regions=s.regions,
            region_ended=s.region_ended,
            ttft_s=s.ttft_s,
            tokens=s.tokens,
            tokens_per_s=s.tokens_per_s,
            accepted_draft_tokens=s.accepted,
            total_s=stats.total_s,
            load_s=stats.load_s,
            **extra,
        )
        return code

    if result.status == "cancelled":
        return done(EXIT_INTERRUPTED, "interrupted", "pairline: interrupted; nothing was written")
    if result.status == "malformed":
        detail = "\n".join(result.errors)
        return done(EXIT_MALFORMED, "malformed", f"pairline: error: {detail}\nnothing was written")
    if result.status == "unchanged":
        names = ", ".join(f.shown for f in files)
        return done(EXIT_UNCHANGED, "unchanged", f"no changes: the model's edit leaves {names} as it was")

    added = removed = 0
    for real, new in result.new_texts.items():
        state = result.files[real]
        diff = unified_diff(state.text or "", new, state.shown)
        if state.text is None:
            diff[0] = "--- /dev/null"
        a, r = diff_counts(diff)
        added, removed = added + a, removed + r
        if out.json:
            out.event("diff", path=state.shown, diff="\n".join(diff) + "\n", added=a, removed=r)
        else:
            print_diff(out.out, diff)
    names = ", ".join(result.files[r].shown for r in result.new_texts)
    if args.dry_run:
        return done(EXIT_APPLIED, "dry_run", f"dry run: {names} not written (+{added} -{removed})")
    writes = [(real, new, result.files[real].fingerprint) for real, new in result.new_texts.items()]
    try:
        entry = ws.apply(writes, args.message)
    except FileChangedError as e:
        return done(EXIT_FILE_CHANGED, "file_changed", f"pairline: error: {e}")
    where = ""
    if entry.commit:
        where = f"; committed {entry.commit[:10]}"
    elif entry.backup_dir:
        where = f"; old version kept in {entry.backup_dir}"
    return done(
        EXIT_APPLIED, "applied", f"wrote {names} (+{added} -{removed}){where}", commit=entry.commit,
        backup=str(entry.backup_dir) if entry.backup_dir else None,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m pairline.assistant.edit_cmd ...`: the command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="pairline")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["edit", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except PairlineError as e:
        print(f"pairline: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
