"""/deep in `pairline chat`: the handoff to the agent and back, with scripted clients."""

from __future__ import annotations

import json
import subprocess
import time

from pairline.assistant.edits import DIVIDER, HEAD, TAIL
from tests.test_chat import SRC, answer, make

CHECK = "python -c 'import calc, sys; sys.exit(0 if calc.add(2, 3) == 5 else 1)'"
BUGGY = SRC.replace("a + b", "a - b")


def call(name: str, **args) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


FIX = f"calc.py\n```python\n{HEAD}\n    return a - b\n{DIVIDER}\n    return a + b\n{TAIL}\n```\n" + call("test")


def deep_session(tmp_path, monkeypatch, deep_answers, chat_answers=(), delay=0.0):
    from tests.assistant_helpers import ScriptedClient

    session, chat_client, out = make(tmp_path, monkeypatch, list(chat_answers), git=True, test_cmd=CHECK)
    (tmp_path / "calc.py").write_text(BUGGY)
    subprocess.run(["git", "commit", "-qam", "bug"], check=True, capture_output=True)
    session.deep_client = ScriptedClient(list(deep_answers), delay=delay)
    return session, chat_client, out


def test_deep_hands_off_and_brings_the_result_back(tmp_path, monkeypatch):
    rename = answer("def add(a, b):\n", "def add(a, b):  # adds\n")
    session, chat_client, out = deep_session(
        tmp_path, monkeypatch, [call("read", path="calc.py"), FIX, call("done", summary="add fixed")], [rename])
    session.submit("comment add")
    session.wait()
    session.submit("/deep make the test pass")
    session.wait()
    text = out.text
    assert "[deep mode · scripted · run" in text and "[deep step 1" in text
    # the chat's files are in the agent's first message: reading calc.py again is a repeat, not run
    assert "[deep · repeat: Not run: you already have calc.py (in the first message)" in text
    assert "Deep mode ended: the model finished (done). add fixed" in text
    assert "+    return a + b" in text and "/undo reverts the agent's edits" in text
    assert (tmp_path / "calc.py").read_text().endswith("    return a + b\n")
    # the agent got the chat's files and the conversation
    first = session.deep_client.calls[0]["messages"]
    task_msg = next(m["content"] for m in first if m["content"].startswith("Task: make the test pass"))
    assert "The user is working on these files:\ncalc.py" in task_msg and "def add(a, b):  # adds" in task_msg
    assert "user: Instruction: comment add" in task_msg
    # the result is in the chat's history, and the file will be shown to the real-time model again
    assert session.history[-2] == {"role": "user", "content": "/deep make the test pass"}
    assert "Files changed: calc.py" in session.history[-1]["content"]
    assert "```diff" in session.history[-1]["content"]
    assert tmp_path / "calc.py" not in session.shown
    # the agent's edit is undoable from the chat
    session.submit("/undo")
    assert "undid the edit of calc.py" in out.text
    assert "return a - b" in (tmp_path / "calc.py").read_text()
    log = subprocess.run(["git", "log", "--format=%s"], capture_output=True, text=True).stdout.splitlines()
    assert log[0].startswith("pairline: comment add")


def test_deep_without_task_takes_the_last_instruction(tmp_path, monkeypatch):
    session, _, out = deep_session(tmp_path, monkeypatch, [call("done", summary="nothing to do")], ["", ""])
    session.submit("/deep")
    assert "/deep needs a task" in out.text
    session.submit("fix the subtraction")
    session.wait()
    session.submit("/deep")
    session.wait()
    first = session.deep_client.calls[0]["messages"]
    assert any(m["content"].startswith("Task: fix the subtraction") for m in first)
    assert "nothing to do" in out.text


def test_ctrl_c_stops_the_agent_cleanly(tmp_path, monkeypatch):
    long = "Thinking... " * 400 + call("read", path="calc.py")
    session, _, out = deep_session(tmp_path, monkeypatch, [long, call("done", summary="x")], delay=0.002)
    session.submit("/deep fix it")
    time.sleep(0.4)
    assert session.busy
    landed = session.interrupt()
    assert landed is not None and landed < 2.0 and not session.busy
    assert "the agent stopped in" in out.text and "(interrupted)" in out.text
    assert "interrupted" in session.history[-1]["content"]
    assert (tmp_path / "calc.py").read_text() == BUGGY  # nothing written
