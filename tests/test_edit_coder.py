"""Edit turns (Coder) with a scripted client: blocks applied in memory, one retry with the error,
the search cap, loops, new files, cancel; and pairline edit end to end in blocks mode."""

from __future__ import annotations

import json
import subprocess

import pytest

from pairline.assistant import prompts
from pairline.assistant.coder import Coder, LinkedCancel, load_file
from pairline.assistant.edits import DIVIDER, HEAD, TAIL
from pairline.assistant.workspace import Workspace
from pairline.engine.generate import CancelToken
from tests.assistant_helpers import ScriptedClient

# greet is not called in the file: a block that renames only its definition is a whole rename (the
# check after the edit refuses a rename that leaves a call behind; see test_edit_safety.py)
SRC = "import os\n\n\ndef greet(name):\n    return 'hi ' + name\n\n\nprint(os.name)\n"


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n```python\n{HEAD}\n{search}{DIVIDER}\n{replace}{TAIL}\n```\n"


def primer(path: str) -> str:
    return prompts.primer(prompts.prompt_for("qwen2"), path)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / ".cache"))
    (tmp_path / "app.py").write_text(SRC)
    return Workspace.open(tmp_path)


def run(ws, answers, instruction="rename greet to welcome", files=("app.py",), cap=None, **kw):
    client = ScriptedClient(answers)
    coder = Coder(client, ws, search_cap=cap)
    result = coder.run([load_file(ws, f) for f in files], instruction, mode="blocks", **kw)
    return result, client


def test_two_blocks_applied_in_memory(ws):
    answer = block("app.py", "def greet(name):\n", "def welcome(name):\n") + block(
        "app.py", "print(os.name)\n", "print(welcome(os.name))\n"
    )
    result, client = run(ws, [answer])
    assert result.status == "changed" and result.stats.well_formed and not result.stats.retried
    assert result.new_texts[ws.root / "app.py"] == SRC.replace("greet", "welcome").replace(
        "print(os.name)", "print(welcome(os.name))"
    )
    assert (ws.root / "app.py").read_text() == SRC  # the coder never writes
    # the answer was primed with the file name and the block opening
    assert client.calls[0]["prefix"] == primer("app.py")
    user = client.calls[0]["messages"][-1]["content"]
    assert user.startswith("Instruction: rename greet") and "app.py\n```python\nimport os" in user


def test_failed_block_goes_back_to_the_model_once(ws):
    bad = block("app.py", "def greet(nam):\n", "def welcome(name):\n")
    good = block("app.py", "def greet(name):\n", "def welcome(name):\n")
    result, client = run(ws, [bad, good])
    assert result.status == "changed" and result.stats.retried
    retry = client.calls[1]["messages"][-1]["content"]
    assert "Did you mean" in retry and "def greet(name):" in retry
    assert client.calls[1]["messages"][-2] == {"role": "assistant", "content": bad}


def test_still_failing_after_the_retry_is_malformed_and_writes_nothing(ws):
    bad = block("app.py", "def nothing_like_it():\n", "x\n")
    result, client = run(ws, [bad, bad])
    assert result.status == "malformed" and len(client.calls) == 2 and result.new_texts == {}
    assert "does not match" in result.errors[0]


def test_malformed_answer_retried(ws):
    broken = f"app.py\n```python\n{HEAD}\ndef greet(name):\n{TAIL}\n```\n"
    good = block("app.py", "def greet(name):\n", "def welcome(name):\n")
    result, _ = run(ws, [broken, good])
    assert result.status == "changed" and not result.stats.well_formed and result.stats.retried


def test_unchanged(ws):
    # a no-op answer goes back once ("nothing changed"); the same again is an unchanged turn
    no_op = block("app.py", "import os\n", "import os\n")
    result, _ = run(ws, [no_op, no_op])
    assert result.status == "unchanged" and result.new_texts == {} and result.stats.retried


def test_new_file_with_empty_search(ws):
    answer = block("app.py", "import os\n", "import os\nimport util\n") + block("util.py", "", "X = 1\n")
    result, _ = run(ws, [answer], "add a util module")
    assert result.status == "changed"
    assert result.new_texts[ws.root / "util.py"] == "X = 1\n"


def test_block_for_unknown_existing_file_is_refused(ws):
    (ws.root / "other.py").write_text("y = 1\n")
    answer = primer("app.py") + f"{DIVIDER}\n{TAIL}\n```\n" + block("other.py", "", "z\n")
    result, _ = run(ws, [answer] * 2)
    assert result.status == "malformed" and "not in this edit" in result.errors[0]


def test_block_may_name_the_file_by_basename(ws):
    (ws.root / "pkg").mkdir()
    (ws.root / "pkg" / "m.py").write_text("a = 1\nb = 1\n")
    answer = block("pkg/m.py", "a = 1\n", "a = 2\n") + block("m.py", "b = 1\n", "b = 2\n")
    result, _ = run(ws, [answer], files=("pkg/m.py",))
    assert result.new_texts[ws.root / "pkg" / "m.py"] == "a = 2\nb = 2\n"


def test_search_cap_forces_the_divider_and_trims_copied_lines(ws):
    # the model starts copying the file into SEARCH; after 1 line the coder cuts it and forces =======
    p = primer("app.py")
    first = p + "def greet(name):\n    return 'hi ' + name\n\n\nprint(os.name)\n"
    cont = p + f"def greet(name):\n{DIVIDER}\ndef welcome(name):\n    return 'hi ' + name\n{TAIL}\n```\n"
    result, client = run(ws, [first, cont], cap=1)
    assert client.calls[1]["prefix"] == p + "def greet(name):\n" + DIVIDER + "\n"
    assert result.status == "changed"
    # the copied return line replaced its original instead of being repeated
    assert result.new_texts[ws.root / "app.py"] == SRC.replace("def greet", "def welcome")


def test_repeated_block_ends_the_answer(ws):
    one = block("app.py", "def greet(name):\n", "def welcome(name):\n")
    result, _ = run(ws, [one + one + one])
    assert result.status == "changed" and result.stats.blocks == 1


def test_cancel_returns_partial_answer_and_nothing(ws):
    client = ScriptedClient([block("app.py", "def greet(name):\n", "def welcome(name):\n")])
    cancel = CancelToken()
    seen = []

    def on_event(e):
        seen.append(e.text)
        if len(seen) == 4:
            cancel.cancel()

    coder = Coder(client, ws, on_event=on_event, search_cap=None)
    result = coder.run([load_file(ws, "app.py")], "rename", mode="blocks", cancel=cancel)
    assert result.status == "cancelled" and result.new_texts == {}
    assert result.answer.startswith(primer("app.py")) and len(result.answer) > len(primer("app.py"))


def test_linked_cancel():
    parent = CancelToken()
    child = LinkedCancel(parent)
    assert not child.cancelled
    parent.cancel()
    assert child.cancelled and child.requested_at == parent.requested_at
    other = LinkedCancel(CancelToken())
    other.cancel()
    assert other.cancelled and not other.parent.cancelled and other.requested_at is not None


def test_rewrite_mode_for_small_files(ws):
    client = ScriptedClient(["```python\n" + SRC.replace("greet", "welcome") + "```\n"])
    coder = Coder(client, ws)
    result = coder.run([load_file(ws, "app.py")], "rename")  # auto: 8 lines -> rewrite
    assert result.stats.mode == "rewrite" and result.status == "changed"
    assert client.calls[0]["prediction"] == "```python\n" + SRC + "```"


# --------------------------------------------------------------------------- pairline edit, blocks mode


def run_cli(argv, monkeypatch, answers):
    from pairline.cli import main

    client = ScriptedClient(answers)
    monkeypatch.setattr("pairline.assistant.client.open_client", lambda *a, **k: client)
    return main(["edit", *argv]), client


def test_cli_json_events_and_git_commit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "config", "user.email", "t@example.com"], check=True)
    subprocess.run(["git", "config", "user.name", "T"], check=True)
    (tmp_path / "app.py").write_text(SRC)
    subprocess.run(["git", "add", "app.py"], check=True)
    subprocess.run(["git", "commit", "-qm", "init"], check=True)
    answer = block("app.py", "def greet(name):\n", "def welcome(name):\n")
    code, _ = run_cli(["app.py", "-m", "rename greet", "--blocks", "--json"], monkeypatch, [answer])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and "block" in kinds and "diff" in kinds and kinds[-1] == "done"
    done = events[-1]
    assert done["status"] == "applied" and done["exit_code"] == 0 and done["well_formed"] and done["commit"]
    log = subprocess.run(["git", "log", "--format=%s"], capture_output=True, text=True, check=True).stdout
    assert log.splitlines()[0] == "pairline: rename greet"
    assert "def welcome(name):" in (tmp_path / "app.py").read_text()


def test_cli_multiple_files_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / ".cache"))
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "b.py").write_text("B = 1\n")
    answer = block("a.py", "A = 1\n", "A = 2\n") + block("b.py", "B = 1\n", "B = 2\n")
    code, client = run_cli(["a.py", "b.py", "-m", "bump", "--dry-run"], monkeypatch, [answer])
    assert code == 0
    out, err = capsys.readouterr()
    assert "+A = 2" in out and "+B = 2" in out and "dry run" in err
    assert (tmp_path / "a.py").read_text() == "A = 1\n" and (tmp_path / "b.py").read_text() == "B = 1\n"
    assert "a.py\n```python\nA = 1" in client.calls[0]["messages"][-1]["content"]


def test_cli_malformed_after_retry_exits_3(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.py").write_text(SRC)
    bad = block("app.py", "nope\n", "x\n")
    code, _ = run_cli(["app.py", "-m", "x", "--blocks"], monkeypatch, [bad, bad])
    assert code == 3 and (tmp_path / "app.py").read_text() == SRC
    err = capsys.readouterr().err
    assert "retrying once" in err and "does not match" in err and "nothing was written" in err


def test_cli_file_changed_under_us_exits_4(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / ".cache"))
    f = tmp_path / "app.py"
    f.write_text(SRC)

    class Saver(ScriptedClient):
        def stream(self, *a, **k):
            f.write_text(SRC + "# the user saved\n")
            return super().stream(*a, **k)

    client = Saver([block("app.py", "def greet(name):\n", "def welcome(name):\n")])
    monkeypatch.setattr("pairline.assistant.client.open_client", lambda *a, **k: client)
    from pairline.cli import main

    assert main(["edit", "app.py", "-m", "x", "--blocks"]) == 4
    assert f.read_text() == SRC + "# the user saved\n"
    assert "changed on disk" in capsys.readouterr().err


def test_cli_refuses_outside_workspace_and_binary(tmp_path, monkeypatch, capsys):
    from pairline.cli import main

    (tmp_path / "ws").mkdir()
    monkeypatch.chdir(tmp_path / "ws")
    (tmp_path / "outside.py").write_text("x\n")
    (tmp_path / "ws" / "blob.py").write_bytes(b"\x00\x01")
    assert main(["edit", "../outside.py", "-m", "x"]) == 2
    assert main(["edit", "blob.py", "-m", "x"]) == 2
    err = capsys.readouterr().err
    assert "outside the workspace" in err and "binary" in err


def test_search_cap_model_repeating_the_divider_is_fine(ws):
    p = primer("app.py")
    first = p + "def greet(name):\n    return 'hi ' + name\n"
    cont = p + f"def greet(name):\n{DIVIDER}\n{DIVIDER}\ndef welcome(name):\n{TAIL}\n```\n"
    result, _ = run(ws, [first, cont], cap=1)
    assert result.status == "changed" and result.stats.well_formed
    assert result.new_texts[ws.root / "app.py"] == SRC.replace("def greet", "def welcome")


def test_search_cap_invented_block_ends_the_answer(ws):
    # after a good block, the model starts a block whose first SEARCH line is in no file (the
    # prompt's example, say): the answer ends there and the good block stands
    p = primer("app.py")
    good = f"def greet(name):\n{DIVIDER}\ndef welcome(name):\n{TAIL}\n```\n"
    first = p + "def greet(name):\n    return 'hi ' + name\n"
    cont = p + good + "app.py\n```python\n" + HEAD + "\n    return round(math.pi * r * r, precision)\n"
    result, client = run(ws, [first, cont], cap=1)
    assert len(client.calls) == 2 and result.status == "changed" and result.stats.blocks == 1
    assert result.new_texts[ws.root / "app.py"] == SRC.replace("def greet", "def welcome")


@pytest.mark.slow
def test_real_smollm2_blocks_json(tmp_path, monkeypatch, capsys, smollm2_gguf):
    """`pairline edit --blocks --json` on the real SmolLM2: every stdout line is a JSON event, the
    run ends with a done event whose exit code is the command's, and the file is written only on 0."""
    from pairline.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRLINE_THREADS", "1")
    f = tmp_path / "calc.py"
    f.write_bytes(b"def add(a, b):\r\n    return a + b\r\n")
    code = main(["edit", "calc.py", "-m", "rename add to plus", "--model", "smollm2-135m", "--blocks", "--json",
                 "--max-tokens", "160", "--no-commit"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "start" and events[0]["mode"] == "blocks"
    done = events[-1]
    assert done["type"] == "done" and done["exit_code"] == code and code in {0, 1, 3}
    assert done["tokens"] > 0 and done["ttft_s"] > 0
    if code == 0:
        assert any(e["type"] == "diff" for e in events) and f.read_bytes() != b"def add(a, b):\r\n    return a + b\r\n"
    else:
        assert f.read_bytes() == b"def add(a, b):\r\n    return a + b\r\n"


def test_rewrite_that_stops_early_gets_the_rest_of_the_file_back(ws):
    # the model closes its code block after the function it changed: a region, not the new file
    big = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(20))
    (ws.root / "big.py").write_text(big)
    # (its closing fence is the answer's last text: under the grammar nothing follows it)
    client = ScriptedClient(["```python\ndef f0():\n    return 100\n```"])
    result = Coder(client, ws).run([load_file(ws, "big.py")], "change f0 to return 100", mode="rewrite")
    assert result.status == "changed" and not result.stats.retried
    assert result.new_texts[ws.root / "big.py"] == big.replace("return 0\n", "return 100\n", 1)
    # the block is a region of the file, spliced in place: nothing to repair
    assert result.stats.regions == 1 and not result.stats.repaired and not result.notes


def test_a_runaway_replace_ends_the_answer_and_earlier_blocks_stand(ws):
    good = block("app.py", "def greet(name):\n", "def welcome(name):\n")
    runaway = f"app.py\n```python\n{HEAD}\nprint(os.name)\n{DIVIDER}\n" + "x = 1\n" * 200
    result, client = run(ws, [good + runaway])
    assert result.status == "changed"
    new = result.new_texts[ws.root / "app.py"]
    assert "def welcome(name):" in new and "x = 1" not in new
    assert not result.stats.retried  # the runaway block is dropped, not sent back


# --------------------------------------------------------------------------- lazy rewrites: where a region ends

class Grammatical(ScriptedClient):
    """A scripted client whose answers the coder takes as decoded under a grammar (a lazy rewrite's
    answer may then hold several blocks)."""

    supports_grammar = True


BIG = "".join(f"def f{i}(x):\n    y = x + {i}\n    z = y * 2\n    return z\n\n\n" for i in range(30))


def feed_all(region, lines: list[str]) -> list[bool]:
    return [region.feed(line) for line in lines]


def test_region_is_over_after_a_change_and_the_end_of_its_definition():
    from pairline.assistant.region import Region

    old = BIG.split("\n")[:-1]
    # copied from f3 on: no change, never over
    assert not any(feed_all(Region(old), ["def f3(x):", "    y = x + 3", "    z = y * 2", "    return z", "", ""]))
    region = Region(old)
    # changed, then back in step: over once three lines match and def f4 comes next
    assert feed_all(region, ["def f3(x):", "    y = x + 300", "    z = y * 2", "    return z", ""]) == [
        False, False, False, False, True]
    assert region.placed() == (18, 22, ["def f3(x):", "    y = x + 300", "    z = y * 2", "    return z"])


def test_region_goes_on_inside_a_definition_and_places_a_changed_header():
    from pairline.assistant.region import Region

    body = "".join(f"    a += {i}\n" for i in range(1, 6))
    old = f"import os\n\n\ndef f(a):\n{body}    return a\n\n\nX = 1\n".split("\n")[:-1]
    region = Region(old)
    # the header changed; three unchanged lines follow, but f goes on: not over
    assert not any(feed_all(region, ["def f(a, b):", "    a += 1", "    a += 2", "    a += 3"]))
    # a deleted line (a += 4) is a change: the run starts again
    assert feed_all(region, ["    a += 5", "    return a", ""]) == [False, False, True]
    start, stop, lines = region.placed()
    assert (start, stop) == (3, 10) and lines[0] == "def f(a, b):"  # the new header replaced the old one


def test_region_with_a_repeated_first_line_is_placed_where_most_of_it_matches():
    from pairline.assistant.region import Region, splice

    # every function ends the same way; the region starts with one of those common lines
    region = Region(BIG.split("\n")[:-1])
    feed_all(region, ["    z = y * 2", "    return z", "", "", "def f7(x):", "    y = x + 700", "    z = y * 2"])
    text, spans = splice(BIG, [region])
    assert text == BIG.replace("x + 7\n", "x + 700\n") and spans == [(38, 45)]


# (the lazy-rewrite tests below name functions a focused edit would show alone: focus=False keeps
# them on the whole-file path, which a file that is not Python, or names nothing, takes)


def test_lazy_rewrite_stops_where_it_rejoins_and_the_file_comes_back_whole(ws):
    (ws.root / "big.py").write_text(BIG)
    region = "def f2(x):\n    y = x + 200\n    z = y * 2\n    return z\n\n\n"
    # the scripted model would go on copying the file to its end: the coder stops it after f2
    answer = "```python\n" + region + BIG.split("def f3", 1)[1].join(["def f3", ""]) + "```\n"
    client = ScriptedClient([answer], chunk=5)
    result = Coder(client, ws, focus=False).run([load_file(ws, "big.py")], "f2 adds 200", mode="rewrite")
    assert result.status == "changed" and result.stats.region_ended and not result.stats.retried
    assert result.new_texts[ws.root / "big.py"] == BIG.replace("x + 2\n", "x + 200\n", 1)
    assert result.stats.tokens < len(answer) // 5 // 4  # far less than the whole file was streamed
    assert result.answer.startswith("```python\ndef f2(x):") and "def f5" not in result.answer


def test_lazy_rewrite_of_two_places_in_two_regions(ws):
    # the first region runs on (the coder stops it and continues the answer after a closed fence);
    # the second is closed by the model; each is spliced in its place
    (ws.root / "big.py").write_text(BIG)
    first = "```python\ndef f2(x):\n    y = x + 200\n    z = y * 2\n    return z\n\n\ndef f3(x):\n    y = x + 3\n"
    second = "\n```python\ndef f20(x):\n    y = x + 2000\n```\n"

    client = Grammatical([first, second], chunk=4)
    # (no names in the instruction: no sites, which a region would not end before)
    result = Coder(client, ws).run([load_file(ws, "big.py")], "two of the functions add more", mode="rewrite")
    assert result.status == "changed" and result.stats.regions == 2 and result.stats.region_ended
    want = BIG.replace("x + 2\n", "x + 200\n", 1).replace("x + 20\n", "x + 2000\n", 1)
    assert result.new_texts[ws.root / "big.py"] == want
    assert len(client.calls) == 2 and client.calls[1]["prefix"].endswith("    return z\n\n```\n")
    assert client.calls[1]["grammar"] is not None and client.calls[1]["prediction"] == client.calls[0]["prediction"]


def test_lazy_rewrite_blocks_that_do_not_place_are_left_out_and_said(ws):
    (ws.root / "big.py").write_text(BIG)
    # f2 after f9: out of order; then made-up code that is nowhere in the file
    answer = ("```python\ndef f9(x):\n    y = x + 900\n```\n```python\ndef f2(x):\n    y = x + 200\n```\n"
              "```python\nprint(f9(1))\n```\n")

    events = []
    result = Coder(Grammatical([answer]), ws, on_event=events.append, focus=False).run(
        [load_file(ws, "big.py")], "f2 and f9", mode="rewrite")
    assert result.status == "changed" and result.stats.regions == 3
    assert result.new_texts[ws.root / "big.py"] == BIG.replace("x + 9\n", "x + 900\n", 1)
    assert any(e.kind == "status" and "left out 2 code block(s)" in e.text for e in events)
    # nothing that places at all: an error, nothing written
    junk = "```python\nprint(1)\n```\n```python\nprint(2)\n```\n"
    result = Coder(Grammatical([junk]), ws, focus=False).run([load_file(ws, "big.py")], "f2 and f9", mode="rewrite")
    assert result.status == "malformed" and "could be placed" in result.errors[0] and not result.new_texts


def test_lazy_rewrite_that_changes_nothing_goes_back_once(ws):
    (ws.root / "big.py").write_text(BIG)
    same = "```python\ndef f4(x):\n    y = x + 4\n```"
    fixed = "```python\ndef f4(x):\n    y = x + 44\n```"
    client = ScriptedClient([same, fixed])
    result = Coder(client, ws, focus=False).run([load_file(ws, "big.py")], "f4 adds 44", mode="rewrite")
    assert result.status == "changed" and result.stats.retried and not result.stats.check_retried
    assert result.new_texts[ws.root / "big.py"] == BIG.replace("x + 4\n", "x + 44\n", 1)
    assert "nothing changed" in client.calls[1]["messages"][-1]["content"]
    # the same again after the retry: unchanged, and no third request
    result = Coder(ScriptedClient([same, same]), ws, focus=False).run(
        [load_file(ws, "big.py")], "f4 adds 44", mode="rewrite")
    assert result.status == "unchanged"


def test_a_region_that_runs_away_is_cut_at_its_last_match(ws):
    (ws.root / "big.py").write_text(BIG)
    runaway = "".join(f"    w{i} = {i}\n" for i in range(200))
    answer = "```python\ndef f5(x):\n    y = x + 500\n    z = y * 2\n" + runaway + "```"
    client = ScriptedClient([answer, answer], chunk=8)
    result = Coder(client, ws, focus=False).run([load_file(ws, "big.py")], "f5 adds 500", mode="rewrite")
    # the made-up lines are dropped, the change before them stands, and no continuation was asked for
    assert result.status == "changed" and len(client.calls) == 1
    assert result.new_texts[ws.root / "big.py"] == BIG.replace("x + 5\n", "x + 500\n", 1)
    assert result.stats.tokens < len(answer) // 8


def test_a_region_written_again_after_a_stop_ends_the_answer(ws):
    (ws.root / "big.py").write_text(BIG)
    first = "```python\ndef f2(x):\n    y = x + 200\n    z = y * 2\n    return z\n\n\ndef f3(x):\n"
    again = "\n```python\ndef f2(x):\n    y = x + 222\n    z = y * 2\n    return z\n```"

    client = Grammatical([first, again, again])
    result = Coder(client, ws).run([load_file(ws, "big.py")], "make a function add more", mode="rewrite")
    assert result.status == "changed" and result.stats.regions == 1 and len(client.calls) == 2
    assert result.new_texts[ws.root / "big.py"] == BIG.replace("x + 2\n", "x + 200\n", 1)
