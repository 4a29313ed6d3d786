"""`pairline edit`: prompt and prediction, reading the answer, layout, live diff, the command end to end
(a scripted engine for every exit path, and the real SmolLM2 for the mechanics)."""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass, field

import pytest

from pairline.assistant import diffs, edit_cmd
from pairline.assistant.rewrite import (
    BlockStream,
    MalformedOutputError,
    build_request,
    extract_code,
    fence_for,
    language_for,
    restore_layout,
)
from pairline.errors import PairlineError

STATS = re.compile(
    r"TTFT (\d+\.\d\d s|–) · \d+ tok/s · (\d+/\d+ prediction|\d+ draft) tokens accepted · "
    r"\d+\.\d s total \(load \d+\.\d s\)"
)

# --------------------------------------------------------------------------- prompt and prediction


def test_language_and_fence():
    assert language_for("src/a.py") == "python"
    assert language_for("x.TS") == "typescript"
    assert language_for("Makefile") == "makefile"
    assert language_for("notes.unknown") == ""
    assert fence_for("x = 1\n") == "```"
    assert fence_for("# Doc\n```python\nx\n```\n") == "````"


def test_prediction_is_the_answer_format():
    req = build_request("pkg/greet.py", "def greet():\n    pass\n", "rename greet")
    assert req.prediction == "```python\ndef greet():\n    pass\n```"
    system, user = req.messages
    assert system["role"] == "system" and "one part of the file that changes" in system["content"]
    assert user["role"] == "user"
    assert "pkg/greet.py" in user["content"]
    assert req.prediction in user["content"]  # the file is shown exactly as it is predicted back
    assert user["content"].endswith("Instruction: rename greet")


def test_prediction_normalizes_crlf_bom_and_missing_newline():
    req = build_request("a.py", "\ufeffx = 1\r\ny = 2", "do it")
    assert req.prediction == "```python\nx = 1\ny = 2\n```"


def test_empty_instruction_is_refused():
    with pytest.raises(PairlineError, match="instruction is empty"):
        build_request("a.py", "x\n", "   ")


# --------------------------------------------------------------------------- extract_code


def test_extract_plain_block():
    assert extract_code("```python\nx = 2\n```") == "x = 2\n"


def test_extract_ignores_chatter_around_the_block():
    text = "Here is the file:\n\n```py\nx = 2\ny = 3\n```\n\nI renamed it. ```python\nother\n```"
    assert extract_code(text) == "x = 2\ny = 3\n"


def test_extract_longer_fence_keeps_inner_fences():
    text = "````markdown\n# T\n```python\nx\n```\n````\n"
    assert extract_code(text) == "# T\n```python\nx\n```\n"


def test_extract_keeps_blank_lines_and_indentation():
    assert extract_code("```\n\n  a\n\n```") == "\n  a\n\n"


def test_extract_missing_closing_fence_when_model_stopped():
    assert extract_code("```python\nx = 2\ny = 3") == "x = 2\ny = 3"


def test_extract_missing_closing_fence_at_token_limit_is_an_error():
    with pytest.raises(MalformedOutputError, match="token limit"):
        extract_code("```python\nx = 2\ny =", truncated=True)


def test_extract_closed_block_is_fine_even_at_token_limit():
    assert extract_code("```python\nx = 2\n```\nThis cha", truncated=True) == "x = 2\n"


def test_extract_unfenced_answer_that_looks_like_the_file():
    original = "import os\n\n\ndef f():\n    return os.sep\n"
    answer = "import os\n\n\ndef g():\n    return os.sep\n"
    assert extract_code(answer, original=original) == answer


def test_extract_unfenced_prose_is_an_error():
    original = "import os\n\n\ndef f():\n    return os.sep\n"
    with pytest.raises(MalformedOutputError, match="no code block"):
        extract_code("Sure! I renamed f to g for you.", original=original)
    with pytest.raises(MalformedOutputError):
        extract_code("", original=original)
    with pytest.raises(MalformedOutputError, match="token limit"):
        extract_code(original, original=original, truncated=True)


def test_block_stream_matches_extract():
    answer = "Sure:\n```python\na = 1\n\nb = 2\n```\nDone.\n"
    stream = BlockStream()
    lines = []
    for i in range(0, len(answer), 3):  # arbitrary chunking
        lines += stream.feed(answer[i : i + 3])
    lines += stream.finish()
    assert stream.state == "done"
    assert "\n".join(lines) + "\n" == extract_code(answer)


def test_block_stream_last_line_without_newline():
    stream = BlockStream()
    lines = list(stream.feed("```\nx\ny"))
    lines += stream.finish()
    assert lines == ["x", "y"] and stream.state == "code"


# --------------------------------------------------------------------------- back to the original layout


def test_layout_crlf_file_stays_crlf():
    original = "a\r\nb\r\nc\r\n"
    assert restore_layout(original, "a\nB\nc\n") == "a\r\nB\r\nc\r\n"


def test_layout_mixed_endings_unchanged_lines_byte_exact():
    original = "a\r\nb\nc\r\nd\r\n"
    assert restore_layout(original, "a\nb\nC\nd\n") == "a\r\nb\nC\r\nd\r\n"


def test_layout_no_final_newline_is_kept():
    assert restore_layout("a\nb", "a\nB\n") == "a\nB"
    assert restore_layout("a\nb", "a\nb\n") == "a\nb"
    assert restore_layout("a\nb", "a\nb\nc\n") == "a\nb\nc"  # b gets its newline back, c none


def test_layout_final_newline_is_kept():
    assert restore_layout("a\nb\n", "a\nB") == "a\nB\n"
    assert restore_layout("a\r\nb\r\n", "a\nB") == "a\r\nB\r\n"


def test_layout_bom_is_kept():
    assert restore_layout("\ufeffa\n", "b\n") == "\ufeffb\n"


def test_layout_identity():
    for text in ["", "x", "x\n", "a\r\nb", "\ufeffa\r\n\r\nb\r\n", "a\n\n\n"]:
        req = build_request("f.txt", text, "nothing")
        assert restore_layout(text, extract_code(req.prediction)) == text


# --------------------------------------------------------------------------- live and final diff


def test_live_diff_classifies_lines():
    original = ["import os", "", "def greet(name):", "    return 'hi ' + name", "", "print(greet('x'))"]
    live = diffs.LiveDiff(original)
    for line in ["import os", "", "def welcome(name):", "    return 'hi ' + name", "", "print(welcome('x'))"]:
        live.push(line)
    live.finish()
    assert live.rows == [
        (" ", "import os"),
        (" ", ""),
        ("-", "def greet(name):"),
        ("+", "def welcome(name):"),
        (" ", "    return 'hi ' + name"),
        (" ", ""),
        ("-", "print(greet('x'))"),
        ("+", "print(welcome('x'))"),
    ]
    assert live.new_lines == 6


def test_live_diff_rediffs_a_hunk_once_it_closes():
    original = ['"""Greetings."""', "", "import sys", "x = 1"]
    live = diffs.LiveDiff(original)
    live.push('"""Welcome."""')
    live.push("")
    assert live.rows == [("+", '"""Welcome."""'), ("+", "")]  # shown as it grows
    live.push("import sys")  # the anchor: the blank line was not new after all
    assert live.rows == [("-", '"""Greetings."""'), ("+", '"""Welcome."""'), (" ", ""), (" ", "import sys")]
    live.push("y = 2")
    live.finish()
    assert live.rows[-2:] == [("-", "x = 1"), ("+", "y = 2")]


def test_live_diff_matches_difflib_on_random_edits():
    import difflib
    import random

    rng = random.Random(0)
    words = [f"line number {i}" for i in range(30)]
    for _ in range(200):
        old = rng.sample(words, 12)
        new = list(old)
        for _ in range(rng.randint(0, 4)):
            k = rng.randrange(len(new) + 1)
            choice = rng.random()
            if choice < 0.3 and new:
                del new[min(k, len(new) - 1)]
            elif choice < 0.6:
                new.insert(k, f"new {rng.random():.3f}")
            elif new:
                new[min(k, len(new) - 1)] = f"changed {rng.random():.3f}"
        live = diffs.LiveDiff(old)
        for line in new:
            live.push(line)
        live.finish()
        # whatever the alignment, the rows are a valid diff: they rebuild both files
        assert [x for m, x in live.rows if m != "+"] == old
        assert [x for m, x in live.rows if m != "-"] == new
        assert sum(m != " " for m, _ in live.rows) <= 2 * sum(
            max(a1 - a0, b1 - b0)
            for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, old, new).get_opcodes()
            if op != "equal"
        )


def test_live_view_renders_on_a_terminal():
    from rich.console import Console

    live = diffs.LiveDiff(["a = 1", "b = 2"])
    live.push("a = 10")
    console = Console(file=io.StringIO(), force_terminal=True, width=40)
    console.print(diffs.live_view("f.py · line 1", live, 10))
    out = console.file.getvalue()
    assert "+ a = 10" in out and "f.py" in out


def test_unified_diff_marks_missing_newline():
    lines = diffs.unified_diff("a\nb", "a\nc", "f.txt")
    assert lines[:2] == ["--- a/f.txt", "+++ b/f.txt"]
    assert "-b" in lines and "+c" in lines
    assert lines.count("\\ No newline at end of file") == 2
    assert diffs.diff_counts(lines) == (1, 1)
    assert diffs.unified_diff("a\n", "b\n", "/tmp/f.txt")[:2] == ["--- a/tmp/f.txt", "+++ b/tmp/f.txt"]


def test_stats_line_format():
    s = edit_cmd.Stats(load_s=0.8, total_s=1.94, ttft_s=0.123, tokens_per_s=85.4, accepted=310, predicted=320)
    assert s.line() == "TTFT 0.12 s · 85 tok/s · 310/320 prediction tokens accepted · 1.9 s total (load 0.8 s)"
    assert STATS.fullmatch(s.line())


def test_plan_ctx_holds_prompt_and_answer():
    assert edit_cmd.plan_ctx(300, 20, None) == 2048
    big = edit_cmd.plan_ctx(200_000, 20, None)
    assert big >= 200_000 // 2 * 2 and big % 1024 == 0


def test_help_lists_exit_codes():
    parser = argparse.ArgumentParser(prog="pairline")
    sub = parser.add_subparsers()
    edit = edit_cmd.add_parser(sub)
    text = edit.format_help()
    for code in ("0  the edit was applied", "1  nothing changed", "3  the model", "4  the file changed"):
        assert code in text


# --------------------------------------------------------------------------- the command, scripted engine


class _Tok:
    family = "qwen2"

    def encode(self, text, add_bos=None):
        return list(text.encode())

    def encode_text(self, text):
        return list(text.encode())


@dataclass
class _Event:
    token_id: int
    text: str


@dataclass
class _Gen:
    chunks: list[str]
    finish: str = "stop"
    on_token: object = None
    text: str = ""
    finish_reason: str | None = None
    cancel: object = None
    timings: object = None
    usage: object = None
    emitted: list[str] = field(default_factory=list)

    def __post_init__(self):
        from pairline.engine.generate import CancelToken, Timings, Usage

        self.cancel = CancelToken()
        self.timings = Timings(ttft_s=0.01, decode_tokens_per_s=100.0)
        self.usage = Usage(accepted_prediction_tokens=5)

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if self.cancel.cancelled:
                self.finish_reason = "cancelled"
                break
            if self.on_token:
                self.on_token(i)
            self.emitted.append(chunk)
            self.text += chunk
            yield _Event(i, chunk)
        else:
            self.finish_reason = self.finish


@dataclass
class _Runtime:
    name: str = "fake"
    n_ctx: int = 4096


class _Engine:
    def __init__(self, gen: _Gen):
        self.gen, self.load_s, self.tokenizer, self.runtime = gen, 0.01, _Tok(), _Runtime()
        self.calls = []

    model_name = "fake"

    def chat(self, messages, params, prediction=None, cancel=None, speculation="auto", grammar=None):
        self.calls.append((messages, params, prediction))
        if cancel is not None:
            self.gen.cancel = cancel
        return self.gen


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every command runs with the test's folder as the workspace (and outside any git repository)."""
    monkeypatch.chdir(tmp_path)


def _scripted(monkeypatch, answer: str, **kw) -> _Engine:
    import tempfile

    monkeypatch.setenv("PAIRLINE_CACHE", tempfile.mkdtemp(prefix="pairline-cache-"))  # backups go there
    chunks = [answer[i : i + 4] for i in range(0, len(answer), 4)]
    engine = _Engine(_Gen(chunks, **kw))
    monkeypatch.setattr("pairline.engine.load.load_engine", lambda *a, **k: engine)
    return engine


def run_edit(argv: list[str]) -> int:
    """The command as `pairline edit ...` runs it; through pairline.cli where the whole CLI imports."""
    try:
        from pairline.cli import build_parser

        parser = build_parser()
    except ImportError:  # another part of the CLI is not there yet
        parser = argparse.ArgumentParser(prog="pairline")
        edit_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["edit", *argv])
    try:
        return int(args.func(args) or 0)
    except PairlineError as err:
        print(f"pairline: error: {err}")
        return 2


SRC = "def greet(name):\n    return 'hi ' + name\n"


def test_scripted_edit_applies_and_streams(tmp_path, monkeypatch, capsys):
    f = tmp_path / "greet.py"
    f.write_text(SRC)
    answer = "```python\ndef welcome(name):\n    return 'hi ' + name\n```\nI renamed it, as asked."
    engine = _scripted(monkeypatch, answer)
    # (--rewrite: in auto mode a rename is search/replace blocks, for RENAME)
    assert run_edit([str(f), "-m", "rename greet to welcome", "--model", "fake", "--rewrite"]) == 0
    assert f.read_text() == "def welcome(name):\n    return 'hi ' + name\n"
    out, err = capsys.readouterr()
    assert "-def greet(name):" in out and "+def welcome(name):" in out
    assert "loading fake…" in err and "wrote greet.py" in err
    assert STATS.search(err.strip().splitlines()[-1])
    _, params, prediction = engine.calls[0]
    assert bytes(prediction).decode() == "```python\n" + SRC + "```"
    assert params.temperature == 0.0 and params.max_tokens >= len(prediction)
    # the closing fence cancels the generation: the chatter after it is never generated
    assert "as asked" not in "".join(engine.gen.emitted)
    assert engine.gen.finish_reason == "cancelled"


def test_scripted_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    f = tmp_path / "greet.py"
    f.write_text(SRC)
    _scripted(monkeypatch, "```python\ndef welcome(name):\n    return 'hi ' + name\n```")
    assert run_edit([str(f), "-m", "rename", "--dry-run", "--model", "fake"]) == 0
    assert f.read_text() == SRC
    out, err = capsys.readouterr()
    assert "+def welcome(name):" in out and "dry run" in err


def test_scripted_unchanged_exits_1(tmp_path, monkeypatch, capsys):
    f = tmp_path / "greet.py"
    f.write_bytes(SRC.replace("\n", "\r\n").encode())
    before = f.stat().st_mtime_ns
    _scripted(monkeypatch, "```python\n" + SRC + "```")
    assert run_edit([str(f), "-m", "nothing", "--model", "fake"]) == 1
    assert f.read_bytes() == SRC.replace("\n", "\r\n").encode() and f.stat().st_mtime_ns == before
    assert "no changes" in capsys.readouterr().err


def test_scripted_malformed_exits_3(tmp_path, monkeypatch, capsys):
    f = tmp_path / "greet.py"
    f.write_text(SRC)
    _scripted(monkeypatch, "I cannot help with renaming functions.")
    assert run_edit([str(f), "-m", "rename", "--model", "fake"]) == 3
    assert f.read_text() == SRC
    err = capsys.readouterr().err
    assert "no code block" in err and STATS.search(err.strip().splitlines()[-1])


def test_scripted_cut_off_exits_3(tmp_path, monkeypatch, capsys):
    f = tmp_path / "greet.py"
    f.write_text(SRC)
    _scripted(monkeypatch, "```python\ndef welcome(name):\n", finish="length")
    assert run_edit([str(f), "-m", "rename", "--model", "fake"]) == 3
    assert f.read_text() == SRC
    assert "--max-tokens" in capsys.readouterr().err


def test_scripted_file_changed_under_us_exits_4(tmp_path, monkeypatch, capsys):
    f = tmp_path / "greet.py"
    f.write_text(SRC)

    def user_saves(i):
        if i == 2:
            f.write_text(SRC + "# the user was here\n")

    _scripted(monkeypatch, "```python\ndef welcome(name):\n    return 'hi ' + name\n```", on_token=user_saves)
    assert run_edit([str(f), "-m", "rename", "--model", "fake"]) == 4
    assert f.read_text() == SRC + "# the user was here\n"
    assert "changed on disk" in capsys.readouterr().err


def test_scripted_ctrl_c_writes_nothing(tmp_path, monkeypatch, capsys):
    f = tmp_path / "greet.py"
    f.write_text(SRC)

    def ctrl_c(i):
        if i == 3:
            raise KeyboardInterrupt

    _scripted(monkeypatch, "```python\ndef welcome(name):\n    return 'hi ' + name\n```", on_token=ctrl_c)
    assert run_edit([str(f), "-m", "rename", "--model", "fake"]) == 130
    assert f.read_text() == SRC
    assert not [p for p in tmp_path.iterdir() if p.name != "greet.py"]
    assert "nothing was written" in capsys.readouterr().err


def test_bad_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"\x00\x01")
    assert run_edit([str(f), "-m", "x"]) == 2
    assert "binary" in capsys.readouterr().out


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.parametrize("dry_run", [False, True])
def test_real_smollm2_edit_mechanics(tmp_path, capsys, smollm2_gguf, dry_run):
    f = tmp_path / "add.py"
    src = "def add(a, b):\n    return a + b\n"
    f.write_text(src)
    argv = [str(f), "-m", "rename add to plus", "--model", "smollm2-135m", "--max-tokens", "40"]
    code = run_edit([*argv, "--dry-run"] if dry_run else argv)
    out, err = capsys.readouterr()
    assert code in {0, 1, 3}, err
    assert STATS.search(err.strip().splitlines()[-1]), err
    assert "loading smollm2-135m" in err
    after = f.read_text()
    if dry_run or code != 0:
        assert after == src
    else:
        assert after != src and after.endswith("\n")
        assert "+" in out  # the diff was shown
    assert not [p for p in tmp_path.iterdir() if p.name != "add.py"]
