"""pairline chat: the session logic with a scripted client (turns, interrupt, steer, commands)."""

from __future__ import annotations

import subprocess
import time

import pytest

from pairline.assistant import prompts
from pairline.assistant.chat import ChatSession
from pairline.assistant.edits import DIVIDER, HEAD, TAIL
from pairline.assistant.workspace import Workspace
from tests.assistant_helpers import ScriptedClient

SRC = "def add(a, b):\n    return a + b\n"


def answer(search: str, replace: str, path: str = "calc.py") -> str:
    return prompts.primer(prompts.prompt_for("qwen2"), path) + f"{search}{DIVIDER}\n{replace}{TAIL}\n```\n"


class Out(list):
    def __call__(self, text: str) -> None:
        self.append(text)

    @property
    def text(self) -> str:
        return "".join(self)


def make(tmp_path, monkeypatch, answers, git=False, delay=0.0, test_cmd="pytest -q"):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / ".cache"))
    (tmp_path / "calc.py").write_bytes(SRC.encode())
    if git:
        for cmd in (["init", "-q"], ["config", "user.email", "t@e.com"], ["config", "user.name", "T"],
                    ["add", "calc.py"], ["commit", "-qm", "init"]):
            subprocess.run(["git", *cmd], check=True, capture_output=True)
    ws = Workspace.open(tmp_path)
    out = Out()
    client = ScriptedClient(answers, delay=delay)
    session = ChatSession(client, ws, out, test_cmd=test_cmd, files=[ws.resolve("calc.py")])
    return session, client, out


def test_edit_turn_commit_diff_undo(tmp_path, monkeypatch):
    session, client, out = make(tmp_path, monkeypatch, [answer("def add(a, b):\n", "def plus(a, b):\n")], git=True)
    session.submit("rename add to plus")
    session.wait()
    f = tmp_path / "calc.py"
    assert f.read_text() == SRC.replace("add", "plus")
    assert "applied to calc.py (commit" in out.text and "[TTFT" in out.text
    log = subprocess.run(["git", "log", "--format=%s"], capture_output=True, text=True).stdout.splitlines()
    assert log[0] == "pairline: rename add to plus"
    session.submit("/diff")
    assert "-def add(a, b):" in out.text and "+def plus(a, b):" in out.text
    session.submit("/undo")
    assert f.read_bytes() == SRC.encode() and "dropped commit" in out.text
    log = subprocess.run(["git", "log", "--format=%s"], capture_output=True, text=True).stdout.splitlines()
    assert log == ["init"]
    # the model saw the file in the first turn; after /undo it is shown again
    first_user = client.calls[0]["messages"][-1]["content"]
    assert "calc.py\n```python\ndef add" in first_user


def test_second_turn_sends_only_what_changed(tmp_path, monkeypatch):
    session, client, _ = make(
        tmp_path, monkeypatch, [answer("def add(a, b):\n", "def plus(a, b):\n"), answer("nope\n", "x\n")] + [""] * 2
    )
    session.submit("rename add to plus")
    session.wait()
    session.submit("now something else")
    session.wait()
    second = client.calls[1]["messages"]
    # history: the first user turn and answer come before, byte-identical (prefix reuse)
    assert second[: len(client.calls[0]["messages"])] == client.calls[0]["messages"]
    assert "def plus(a, b):" in second[-1]["content"]  # the edited file is shown again, as it is now


def test_interrupt_keeps_partial_and_writes_nothing(tmp_path, monkeypatch):
    long = answer("def add(a, b):\n", "def plus(a, b):\n" + "    # more\n" * 200)
    session, _, out = make(tmp_path, monkeypatch, [long], delay=0.005)
    session.submit("rename")
    time.sleep(0.3)
    assert session.busy
    landed = session.interrupt()
    assert landed is not None and landed < 1.0
    assert not session.busy and (tmp_path / "calc.py").read_bytes() == SRC.encode()
    assert "interrupted" in out.text and "nothing written" in out.text
    assert session.history[-1]["role"] == "assistant" and session.history[-1]["content"].startswith("calc.py")


def test_typing_while_streaming_steers(tmp_path, monkeypatch):
    long = answer("def add(a, b):\n", "def plus(a, b):\n" + "    # more\n" * 200)
    steer = answer("def add(a, b):\n", "def total(a, b):\n")
    session, client, out = make(tmp_path, monkeypatch, [long, steer], delay=0.005)
    session.submit("rename add to plus")
    time.sleep(0.3)
    session.submit("actually call it total")
    session.wait()
    assert "[steering]" in out.text
    assert (tmp_path / "calc.py").read_text() == SRC.replace("add", "total")
    second = client.calls[1]["messages"]
    assert second[-2]["role"] == "assistant" and "plus" in second[-2]["content"]  # the partial answer is kept
    assert second[-1]["content"] == "Instruction: actually call it total"  # no file resent: it did not change


def test_test_runs_only_when_asked_and_fix_sends_output(tmp_path, monkeypatch):
    cmd = "echo ran >> test-marker; echo 'assert 1 == 2'; exit 1"
    edit = answer("def add(a, b):\n", "def add(a, b):  # two numbers\n")
    session, client, out = make(tmp_path, monkeypatch, [edit], test_cmd=cmd)
    session.submit("rename add")
    session.wait()
    assert not (tmp_path / "test-marker").exists()  # an edit never runs the tests
    session.submit("/test")
    assert (tmp_path / "test-marker").read_text() == "ran\n"
    assert "tests failed (exit 1)" in out.text and "/fix" in out.text
    session.submit("/fix")
    session.wait()
    sent = client.calls[1]["messages"][-1]["content"]
    assert "assert 1 == 2" in sent and "Fix the code" in sent
    assert (tmp_path / "test-marker").read_text() == "ran\n"


def test_test_with_custom_command(tmp_path, monkeypatch):
    session, _, out = make(tmp_path, monkeypatch, [])
    session.submit("/test echo custom-ok")
    assert "custom-ok" in out.text and "tests passed" in out.text


def test_question_gets_prose_and_no_edit(tmp_path, monkeypatch):
    session, client, out = make(tmp_path, monkeypatch, ["It adds two numbers."])
    session.submit("what does add do?")
    session.wait()
    assert "It adds two numbers." in out.text and client.calls[0]["prefix"] == ""
    assert (tmp_path / "calc.py").read_bytes() == SRC.encode()


def test_commands(tmp_path, monkeypatch):
    session, _, out = make(tmp_path, monkeypatch, [])
    (tmp_path / "other.py").write_text("x = 1\n")
    session.submit("/add other.py")
    assert len(session.files) == 2 and "added other.py" in out.text
    session.submit("/drop calc.py")
    assert [p.name for p in session.files] == ["other.py"]
    session.submit("/drop")
    assert session.files == []
    session.submit("/add ../escape.py")
    assert "outside the workspace" in out.text
    session.history.append({"role": "user", "content": "x"})
    session.submit("/clear")
    assert session.history == [] and "conversation cleared" in out.text
    session.submit("/deep")
    assert "/deep needs a task" in out.text  # no task and no instruction yet (tests/test_agent_chat.py)
    session.submit("/model")
    assert "model: scripted" in out.text
    session.submit("/help")
    assert "/undo" in out.text and "/test" in out.text
    session.submit("/undo")
    assert "nothing to undo" in out.text
    session.submit("/frobnicate")
    assert "unknown command /frobnicate" in out.text
    with pytest.raises(EOFError):
        session.submit("/quit")


def test_malformed_edit_writes_nothing(tmp_path, monkeypatch):
    bad = answer("def nothing():\n", "x\n")
    session, _, out = make(tmp_path, monkeypatch, [bad, bad])
    session.submit("rename")
    session.wait()
    assert "did not apply; nothing written" in out.text and "does not match" in out.text
    assert (tmp_path / "calc.py").read_bytes() == SRC.encode()


def test_head_and_tail_markers_constant():
    assert (HEAD, DIVIDER, TAIL) == ("<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE")
