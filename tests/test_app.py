"""The web app's backend (docs/app.md): hunks accepted one by one, paths confined to the workspace,
and a tab's session (turns, stop, steer, conflicts, undo) with a scripted model. The same app over a
real server and model is in tests/test_app_real.py; the page itself, in tests/test_app_browser.py."""

from __future__ import annotations

import os
import queue
import subprocess
import time

import pytest

from pairline.app.hunks import Proposal
from pairline.app.paths import BadPath, confined, list_files
from pairline.app.session import AppChat, AppSession, sha
from pairline.assistant import prompts
from pairline.assistant.edits import DIVIDER, TAIL
from pairline.assistant.workspace import Workspace
from tests.assistant_helpers import ScriptedClient

LINES = [f"line {i}\n" for i in range(30)]
BASE = "".join(LINES)
# two changes far apart: two hunks
TARGET = BASE.replace("line 3\n", "line three\n").replace("line 25\n", "line twenty-five\n")


# ---------------------------------------------------------------- hunks


def test_each_hunk_applies_alone_and_both_make_the_target():
    p = Proposal.of("f.txt", BASE, TARGET)
    assert [h.header for h in p.hunks] == ["@@ -1,7 +1,7 @@", "@@ -23,7 +23,7 @@"]
    assert "-line 3" in p.hunks[0].lines and "+line three" in p.hunks[0].lines
    assert p.apply(BASE, [p.hunks[0]]) == BASE.replace("line 3\n", "line three\n")
    assert p.apply(BASE, [p.hunks[1]]) == BASE.replace("line 25\n", "line twenty-five\n")
    assert p.apply(BASE, p.hunks) == TARGET
    one = p.apply(BASE, [p.hunks[1]])
    assert p.apply(one, [p.hunks[0]]) == TARGET  # the second accept goes on the file the first wrote


def test_a_hunk_follows_its_lines_when_the_file_changed_elsewhere_and_refuses_when_they_changed():
    p = Proposal.of("f.txt", BASE, TARGET)
    moved = "# a header the user added\n" * 5 + BASE
    assert p.apply(moved, [p.hunks[1]]) == moved.replace("line 25\n", "line twenty-five\n")
    touched = BASE.replace("line 24\n", "line 24 (edited)\n")
    assert p.apply(touched, [p.hunks[1]]) is None  # its context changed: a conflict, never a guess
    assert p.apply(touched, [p.hunks[0]]) == touched.replace("line 3\n", "line three\n")


def test_hunks_keep_crlf_and_a_missing_final_newline():
    base, target = "a\r\nb\r\nc", "a\r\nB\r\nc"
    p = Proposal.of("f.txt", base, target)
    assert p.hunks[0].lines == [" a", "-b", "+B", " c"]
    assert p.apply(base, p.hunks) == target


def test_a_new_file_text_is_one_hunk():
    p = Proposal.of("f.txt", "", "x\ny\n")
    assert [h.lines for h in p.hunks] == [["+x", "+y"]]
    assert p.apply("", p.hunks) == "x\ny\n"


# ---------------------------------------------------------------- paths


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ws"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "app.py").write_text("print('hi')\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("do not read\n")
    (root / "leak.txt").symlink_to(outside)
    (root / "leakdir").symlink_to(tmp_path)
    (root / "inside.txt").symlink_to(root / "app.py")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "dep.js").write_text("")
    return Workspace(root.resolve(), git=False, backups=tmp_path / "backups")


@pytest.mark.parametrize("raw", [
    "../secret.txt", "/etc/passwd", "pkg/../../secret.txt", "..", "pkg\\..\\..\\secret.txt", "app.py\x00.txt",
    "leak.txt", "leakdir/secret.txt", ".git/config", "", "   ", 5, None, ["app.py"], "~/.bashrc/../../x",
])
def test_every_escape_is_refused(tree, raw):
    with pytest.raises(BadPath):
        confined(tree, raw)


def test_paths_are_literal_inside_the_workspace(tree):
    assert confined(tree, "pkg/mod.py") == tree.root / "pkg" / "mod.py"
    assert confined(tree, "./pkg//mod.py") == tree.root / "pkg" / "mod.py"
    assert confined(tree, "inside.txt") == tree.root / "app.py"  # a link that stays inside is followed
    # no URL decoding: these are file names inside the root (that do not exist), not a way out
    assert confined(tree, "%2e%2e/secret.txt") == tree.root / "%2e%2e" / "secret.txt"
    assert confined(tree, "..%2fsecret.txt") == tree.root / "..%2fsecret.txt"


def test_the_tree_lists_only_what_is_inside(tree):
    assert list_files(tree) == ["app.py", "inside.txt", "pkg/mod.py"]


def test_the_tree_of_a_git_repository_leaves_ignored_files_out(tree):
    root = tree.root
    (root / ".gitignore").write_text("ignored.log\n")
    (root / "ignored.log").write_text("x\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    files = list_files(Workspace(root, git=True))
    assert "ignored.log" not in files and ".gitignore" in files and "pkg/mod.py" in files
    assert "leak.txt" not in files and "leakdir/secret.txt" not in files
    assert all((root / f).resolve().is_relative_to(root) for f in files)


# ---------------------------------------------------------------- a tab's session, scripted model


def block(search: str, replace: str, path: str = "calc.py") -> str:
    return prompts.primer(prompts.prompt_for("qwen2"), path) + f"{search}\n{DIVIDER}\n{replace}\n{TAIL}\n```\n"


SRC = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(8))


class Tab:
    """An AppSession with a scripted model, its events collected as they would go to the browser."""

    def __init__(self, root, answers, delay=0.0, git=False):
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        ws = Workspace(root, git=git, backups=None if git else root.parent / "backups")
        self.client = ScriptedClient(answers, delay=delay)
        chat = AppChat(client=self.client, ws=ws, write=lambda t: None, send=self.events.put)
        self.session = AppSession(chat, "scripted", [])

    def send(self, **msg) -> None:
        self.session.handle(msg)

    def until(self, kind: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            self.seen.append(ev)
            if ev["type"] == kind:
                return ev

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.seen if e["type"] == kind]


@pytest.fixture
def calc(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root = (tmp_path / "ws").resolve()
    root.mkdir()
    (root / "calc.py").write_bytes(SRC.encode())
    return root


def two_hunk_answer() -> list[str]:
    return [block("def f1(x):\n    return x + 1", "def f1(x):\n    return x + 100")
            + "\n" + block("def f6(x):\n    return x + 6", "def f6(x):\n    return x * 6")]


def test_an_edit_is_proposed_hunk_by_hunk_and_nothing_is_written_before_accept(calc):
    tab = Tab(calc, two_hunk_answer())
    tab.send(type="edit", path="calc.py", instruction="change f1 and f6", tier="realtime")
    started = tab.until("turn.started")
    done = tab.until("turn.done")
    assert started["turn"] == done["turn"] == 1 and done["status"] == "proposed", tab.seen
    assert len(tab.of("block")) == 2 and tab.of("delta")
    (proposal,) = tab.of("proposal")
    assert proposal["path"] == "calc.py" and proposal["base_sha"] == sha(SRC) and len(proposal["hunks"]) == 2
    assert (calc / "calc.py").read_text() == SRC  # proposed, not written
    assert done["stats"]["tokens"] > 0 and done["stats"]["ttft_ms"] is not None

    tab.send(type="accept", path="calc.py", hunks=[1])
    applied = tab.until("applied")
    assert applied["hunks"] == [1] and applied["text"] == (calc / "calc.py").read_text()
    assert "return x * 6" in applied["text"] and "return x + 100" not in applied["text"]
    tab.send(type="reject", path="calc.py", hunks=[0])
    assert tab.until("rejected")["hunks"] == [0]
    tab.send(type="accept", path="calc.py", hunks=[0])  # decided already
    assert "already decided" in tab.until("error")["message"]

    tab.send(type="undo")
    undone = tab.until("undone")
    assert (calc / "calc.py").read_bytes() == SRC.encode()  # the exact bytes
    assert undone["files"] == [{"path": "calc.py", "text": SRC, "sha": sha(SRC)}]
    tab.send(type="undo")
    assert tab.until("error")["code"] == "nothing_to_undo"


def test_a_file_changed_on_disk_is_a_conflict_then_the_pending_hunks_apply_to_the_new_text(calc):
    tab = Tab(calc, two_hunk_answer())
    tab.send(type="edit", path="calc.py", instruction="change f1 and f6", tier="realtime")
    tab.until("turn.done")
    user_edit = "# the user's own line\n" + SRC
    (calc / "calc.py").write_text(user_edit)
    tab.send(type="accept", path="calc.py", hunks=[0, 1])
    conflict = tab.until("conflict")
    assert conflict["text"] == user_edit and (calc / "calc.py").read_text() == user_edit  # nothing written
    tab.send(type="accept", path="calc.py", hunks=[0, 1])  # the user has seen the new text: accept again
    applied = tab.until("applied")
    assert applied["text"].startswith("# the user's own line\n")
    assert "return x + 100" in applied["text"] and "return x * 6" in applied["text"]
    tab.send(type="undo")
    tab.until("undone")
    assert (calc / "calc.py").read_text() == user_edit  # undo goes back to the user's version, not ours


def test_in_git_each_accept_is_a_commit_and_undo_drops_it(calc):
    for cmd in (["init", "-q"], ["config", "user.email", "t@e.com"], ["config", "user.name", "T"], ["add", "."],
                ["commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=calc, check=True, capture_output=True)
    tab = Tab(calc, two_hunk_answer(), git=True)
    tab.send(type="edit", path="calc.py", instruction="change f1 and f6", tier="realtime")
    tab.until("turn.done")
    tab.send(type="accept", path="calc.py", hunks=[0])
    applied = tab.until("applied")
    log = subprocess.run(["git", "log", "--format=%H %s"], cwd=calc, capture_output=True, text=True).stdout
    assert applied["commit"] and log.startswith(applied["commit"]) and "pairline: calc.py: hunk 0" in log
    tab.send(type="undo")
    assert tab.until("undone")["commit"] == applied["commit"]
    assert subprocess.run(["git", "log", "--format=%s"], cwd=calc, capture_output=True, text=True).stdout == "init\n"


def test_stop_ends_the_turn_and_no_delta_follows_stopped(calc):
    tab = Tab(calc, ["still thinking\n" * 300], delay=0.01)
    tab.send(type="edit", path="calc.py", instruction="rewrite everything", tier="realtime")
    tab.until("delta")
    tab.send(type="stop")
    stopped = tab.until("stopped")
    (done,) = tab.of("turn.done")  # the turn's end comes first, then the answer to the stop
    assert done["status"] == "cancelled" and stopped["turn"] == done["turn"] == 1 and stopped["ms"] < 1000
    time.sleep(0.1)
    assert tab.events.empty()  # nothing follows, no delta above all
    assert tab.seen[tab.seen.index(done) + 1:] == [stopped]
    assert (calc / "calc.py").read_text() == SRC


def test_an_edit_while_a_turn_streams_steers_it(calc):
    subtract = block("def f1(x):\n    return x + 1", "def f1(x):\n    return x - 1")
    tab = Tab(calc, ["still thinking\n" * 300, subtract], delay=0.01)
    tab.send(type="edit", path="calc.py", instruction="rewrite everything", tier="realtime")
    while "still thinking" not in "".join(e["text"] for e in tab.of("delta")):
        tab.until("delta")
    tab.send(type="edit", path="calc.py", instruction="no: only make f1 subtract", tier="realtime")
    first = tab.until("turn.done")
    assert first["turn"] == 1 and first["status"] == "cancelled"
    second = tab.until("turn.done")
    assert second["turn"] == 2 and second["status"] == "proposed"
    history = tab.client.calls[1]["messages"]
    assert any(m["role"] == "assistant" and "still thinking" in m["content"] for m in history)  # the cut answer kept
    assert "no: only make f1 subtract" in history[-1]["content"]


@pytest.mark.parametrize("msg, code", [
    ({"type": "nope"}, "bad_request"),
    ({"type": "open", "path": "../secret.txt"}, "bad_path"),
    ({"type": "open", "path": "missing.py"}, "not_found"),
    ({"type": "edit", "path": "calc.py", "instruction": "  "}, "bad_request"),
    ({"type": "edit", "path": "calc.py", "instruction": "x", "tier": "turbo"}, "bad_request"),
    ({"type": "edit", "path": "/etc/passwd", "instruction": "x"}, "bad_path"),
    ({"type": "accept", "path": "calc.py", "hunks": [0]}, "no_proposal"),
    ({"type": "draft", "text": 5}, "bad_request"),
])
def test_bad_messages_get_named_errors(calc, msg, code):
    tab = Tab(calc, [])
    tab.session.handle(msg)
    assert tab.until("error")["code"] == code
    assert os.listdir(calc) == ["calc.py"]


def test_a_draft_prefills_the_turn_it_would_send(calc):
    tab = Tab(calc, [])
    tab.send(type="draft", text="rename f1 to", path="calc.py")
    (ahead,) = tab.client.aheads
    assert "rename f1 to" in ahead["messages"][-1]["content"] and "def f1(x)" in ahead["messages"][-1]["content"]
