"""`pairline edit FILE -m "instruction"`: rewrite one file with the model, show the diff as it forms,
write it atomically."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass

from pairline.errors import PairlineError

EXIT_APPLIED = 0
EXIT_UNCHANGED = 1
EXIT_MALFORMED = 3
EXIT_FILE_CHANGED = 4
EXIT_INTERRUPTED = 130

_EPILOG = """\
exit codes:
  0  the edit was applied (with --dry-run: there is a change to apply)
  1  nothing changed: the model returned the file as it was
  2  usage or setup error (bad file, unknown model, ...)
  3  the model's answer was malformed (no code block, or cut off by --max-tokens); nothing written
  4  the file changed on disk while the model worked; nothing written
130  interrupted (Ctrl-C); nothing written
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pairline.models.registry import DEFAULT_REALTIME

    parser = subparsers.add_parser(
        "edit",
        help="rewrite a file as an instruction says, streaming the diff",
        description="Rewrite FILE as the instruction says. The diff is shown as the model writes it;\n"
        "the file is replaced atomically at the end, and only if nobody changed it meanwhile.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE", help="the UTF-8 text file to edit (up to 256 KB)")
    parser.add_argument("-m", "--message", required=True, metavar="INSTRUCTION", help="what to change")
    parser.add_argument("--model", default=DEFAULT_REALTIME, help=f"model name or path (default: {DEFAULT_REALTIME})")
    parser.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="cap on the answer's length in tokens (default: the file's length plus room to grow)",
    )
    parser.add_argument(
        "--ctx", type=int, default=None, metavar="N", help="context size in tokens (default: sized to the file)"
    )
    parser.set_defaults(func=cmd_edit)
    return parser


# --------------------------------------------------------------------------- live diff


class LiveDiff:
    """Classifies the new file's lines against the original as they complete. A line that is the
    original's next line, or a distinctive line found further on, anchors the two; the lines
    between two anchors form a hunk, shown as additions while it grows and re-diffed with difflib
    once the next anchor closes it. Incremental and cheap; for display only (the final diff is
    computed on the whole file)."""

    def __init__(self, original_lines: list[str]):
        self.orig = original_lines
        self.pos = 0  # the original's next line
        self.rows: list[tuple[str, str]] = []  # (" " | "+" | "-", line)
        self.new_lines = 0  # lines of the new file seen so far
        self._hunk_start = 0  # rows[_hunk_start:] are the open hunk's lines, all "+"
        self._pending: list[str] = []
        self._where: dict[str, list[int]] = defaultdict(list)
        for i, line in enumerate(original_lines):
            if len(line.strip()) >= 6:  # short lines ("}", "", "pass") say nothing about position
                self._where[line].append(i)

    def push(self, line: str) -> None:
        self.new_lines += 1
        if self.pos < len(self.orig) and self.orig[self.pos] == line:
            self._close_hunk(self.pos)
        else:
            ahead = self._where.get(line, ())
            i = bisect_left(ahead, self.pos)
            if i == len(ahead):
                self._pending.append(line)
                self.rows.append(("+", line))
                return
            self._close_hunk(ahead[i])
        self.rows.append((" ", line))
        self.pos += 1
        self._hunk_start = len(self.rows)

    def finish(self) -> None:
        self._close_hunk(len(self.orig))
        self._hunk_start = len(self.rows)

    def _close_hunk(self, anchor: int) -> None:
        """The original's lines pos..anchor were replaced by the pending lines."""
        old, new = self.orig[self.pos : anchor], self._pending
        if old:
            rows: list[tuple[str, str]] = []
            sm = difflib.SequenceMatcher(None, old, new, autojunk=False)
            for op, a0, a1, b0, b1 in sm.get_opcodes():
                if op == "equal":
                    rows += [(" ", x) for x in old[a0:a1]]
                else:
                    rows += [("-", x) for x in old[a0:a1]] + [("+", x) for x in new[b0:b1]]
            self.rows[self._hunk_start :] = rows
        self.pos = anchor
        self._pending = []


_ROW_STYLE = {" ": "dim", "+": "green", "-": "red"}


def _live_view(title: str, diff: LiveDiff, height: int):
    from rich.console import Group
    from rich.text import Text

    rows = diff.rows[-max(1, height) :]
    lines = [Text(title, style="bold cyan")]
    lines += [Text(f"{mark} {line}", style=_ROW_STYLE[mark], no_wrap=True, overflow="ellipsis") for mark, line in rows]
    return Group(*lines)


# --------------------------------------------------------------------------- final diff


def unified_diff(old: str, new: str, path: str) -> list[str]:
    """A unified diff (lines without their newline); lines keep any CR so the diff is exact."""
    out: list[str] = []
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    name = path.lstrip("/")  # git's a/ b/ prefixes; an absolute path must not give "a//tmp/..."
    for line in difflib.unified_diff(a, b, fromfile=f"a/{name}", tofile=f"b/{name}", n=3):
        if line.endswith("\n"):
            out.append(line[:-1])
        else:  # the last line of a file without a final newline
            out += [line, "\\ No newline at end of file"]
    return out


def print_diff(console, lines: list[str]) -> None:
    from rich.text import Text

    for line in lines:
        shown = line.removesuffix("\r")
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("@@"):
            style = "cyan"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        else:
            style = ""
        console.print(Text(shown, style=style), soft_wrap=True, highlight=False)


def diff_counts(lines: list[str]) -> tuple[int, int]:
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return added, removed


# --------------------------------------------------------------------------- stats


@dataclass
class Stats:
    load_s: float = 0.0
    total_s: float = 0.0
    ttft_s: float | None = None
    tokens_per_s: float = 0.0
    accepted: int = 0
    predicted: int = 0

    def line(self) -> str:
        ttft = f"{self.ttft_s:.2f} s" if self.ttft_s is not None else "–"
        return (
            f"TTFT {ttft} · {self.tokens_per_s:.0f} tok/s · {self.accepted}/{self.predicted} prediction tokens "
            f"accepted · {self.total_s:.1f} s total (load {self.load_s:.1f} s)"
        )


def plan_ctx(model_chars: int, instruction_chars: int, max_tokens: int | None) -> int:
    """A context that surely holds the prompt and the answer, without allocating the model's
    maximum: code runs 3-4 characters a token, so characters / 2 is a safe bound."""
    file_tokens = model_chars // 2 + 32
    need = 384 + instruction_chars // 2 + file_tokens + (max_tokens or file_tokens + 512)
    return max(2048, -(-need // 1024) * 1024)


def default_max_tokens(prediction_tokens: int) -> int:
    return prediction_tokens + max(256, prediction_tokens // 2)


# --------------------------------------------------------------------------- the command


def cmd_edit(args: argparse.Namespace) -> int:
    from rich.console import Console

    # soft_wrap: lines go out whole, never re-wrapped to the terminal's (or a pipe's 80) columns
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return _edit(args, out, err)
    except KeyboardInterrupt:
        err.print("pairline: interrupted; nothing was written", markup=False)
        return EXIT_INTERRUPTED


def _edit(args: argparse.Namespace, out, err) -> int:
    from rich.live import Live

    from pairline.assistant.rewrite import (
        BlockStream,
        MalformedOutputError,
        build_request,
        extract_code,
        restore_layout,
    )
    from pairline.assistant.workspace import FileChangedError, atomic_write, read_text_file
    from pairline.engine.load import load_engine
    from pairline.engine.sampling import SamplingParams

    t0 = time.perf_counter()
    if args.max_tokens is not None and args.max_tokens < 1:
        raise PairlineError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    if args.ctx is not None and args.ctx < 256:
        raise PairlineError(f"--ctx must be at least 256, got {args.ctx}")
    path = args.file
    text, fingerprint = read_text_file(path)
    req = build_request(path, text, args.message)

    n_ctx = args.ctx or plan_ctx(len(req.model_text), len(args.message), args.max_tokens)
    err.print(f"loading {args.model}…", markup=False)
    engine = load_engine(args.model, runtime="torch", n_ctx=n_ctx)
    stats = Stats(load_s=engine.load_s)

    prediction = engine.tokenizer.encode(req.prediction, add_bos=False)
    stats.predicted = len(prediction)
    max_tokens = args.max_tokens or default_max_tokens(len(prediction))
    gen = engine.chat(req.messages, SamplingParams(max_tokens=max_tokens, temperature=0.0), prediction=prediction)

    original_lines = req.model_text.splitlines()
    live_diff = LiveDiff(original_lines)
    blocks = BlockStream()
    height = max(4, min(40, out.size.height - 4))
    waiting = _live_view(f"{path} · reading the prompt…", live_diff, height)
    live = Live(waiting, console=out, transient=True, refresh_per_second=15) if out.is_terminal else None
    n_tokens = 0
    t_gen = last_view = time.perf_counter()
    with live or contextlib.nullcontext():
        for event in gen:
            n_tokens += event.token_id >= 0
            if not event.text:
                continue
            for line in blocks.feed(event.text):
                live_diff.push(line)
            if blocks.state == "done":
                gen.cancel.cancel()  # the block is closed: whatever follows is chatter, not the file
            now = time.perf_counter()
            if live is not None and now - last_view >= 0.03:
                last_view = now
                title = (
                    f"{path} · line {live_diff.new_lines} of ~{len(original_lines)} · "
                    f"{n_tokens} tokens · {now - t_gen:.1f} s"
                )
                live.update(_live_view(title, live_diff, height))
        for line in blocks.finish():
            live_diff.push(line)
    stats.ttft_s = gen.timings.ttft_s
    stats.tokens_per_s = gen.timings.decode_tokens_per_s
    stats.accepted = gen.usage.accepted_prediction_tokens

    def done(code: int, message: str) -> int:
        err.print(message, markup=False)
        stats.total_s = time.perf_counter() - t0
        err.print(stats.line(), markup=False)
        return code

    try:
        new_model_text = extract_code(gen.text, original=req.model_text, truncated=gen.finish_reason == "length")
    except MalformedOutputError as e:
        return done(EXIT_MALFORMED, f"pairline: error: {e}")
    new_text = restore_layout(text, new_model_text)
    if new_text == text:
        return done(EXIT_UNCHANGED, f"no changes: the model returned {path} as it was")

    diff = unified_diff(text, new_text, path)
    print_diff(out, diff)
    added, removed = diff_counts(diff)
    if args.dry_run:
        return done(EXIT_APPLIED, f"dry run: {path} not written (+{added} -{removed})")
    try:
        atomic_write(path, new_text, fingerprint)
    except FileChangedError as e:
        return done(EXIT_FILE_CHANGED, f"pairline: error: {e}")
    return done(EXIT_APPLIED, f"wrote {path} (+{added} -{removed})")


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
