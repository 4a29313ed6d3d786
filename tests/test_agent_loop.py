"""Deep mode's loop with a scripted client: tools, edits, tests, budgets, trajectory, resume, diff."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from pairline.assistant.agent import Agent, Budgets
from pairline.assistant.edits import DIVIDER, HEAD, TAIL
from pairline.assistant.trajectory import find_run, load_trajectory
from pairline.assistant.workspace import Workspace
from pairline.errors import PairlineError
from tests.assistant_helpers import ScriptedClient

BUG = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
# a test command without pytest's start-up cost: exit 1 while add is wrong
CHECK = "python -c 'import calc, sys; sys.exit(0 if calc.add(2, 3) == 5 else 1)'"


def call(name: str, **args) -> str:
    return f"Next.\n<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def block(search: str, replace: str, path: str = "calc.py") -> str:
    return f"{path}\n```python\n{HEAD}\n{search}{DIVIDER}\n{replace}{TAIL}\n```\n"


FIX = block("    return a - b\n", "    return a + b\n")
READ = call("read", path="calc.py")  # an edit of a file the model has not seen is refused: it reads first


def git(root, *args) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text(BUG)
    (root / "test_calc.py").write_text(TEST)
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@e.com")
    git(root, "config", "user.name", "T")
    git(root, "add", ".")
    git(root, "commit", "-qm", "init")
    return root


def make(root, answers, budgets=None, **kw):
    client = ScriptedClient(answers)
    agent = Agent(client, Workspace.open(root), "make add add", budgets=budgets or Budgets(max_steps=10),
                  test_cmd=CHECK, **kw)
    return agent, client


def events(agent):
    return load_trajectory(agent.path)


def observations(client):
    """What the model was told after each of its turns (the last user message of each later call)."""
    return [c["messages"][-1]["content"] for c in client.calls[1:]]


def test_read_search_list_failing_test_fix_done(repo):
    answers = [
        call("search", pattern="def add(a, b):"),  # literal code, parentheses and all
        call("read", path="calc.py"),
        "Fix it.\n" + FIX + call("test").removeprefix("Next.\n"),
        call("list", path="."),  # the first message's listing may be stale after an edit: it runs
        call("done", summary="add adds now"),
    ]
    agent, client = make(repo, answers)
    result = agent.run()
    assert result.reason == "done" and result.summary == "add adds now" and result.exit_code == 0
    assert (repo / "calc.py").read_text() == BUG.replace("-", "+")
    # the tests ran once before the first step: the first message says how they fail
    first = client.calls[0]["messages"][-1]["content"]
    assert "The tests were run once before your first step:\n`" + CHECK + "` exited 1" in first
    assert "calc.py\ntest_calc.py" in first
    obs = observations(client)
    assert "1 matches for 'def add(a, b):'" in obs[0] and "calc.py:1: def add(a, b):" in obs[0]
    assert "calc.py (lines 1-2 of 2):\ndef add(a, b):\n    return a - b" in obs[1]
    assert "edit applied to calc.py (commit" in obs[2] and "exited 0" in obs[2]
    assert "(7 steps left)" in obs[2]
    assert "2 files under the repository:\ncalc.py\ntest_calc.py" in obs[3]
    # one commit for the edit, on top of the start; the final diff is start..HEAD
    log = git(repo, "log", "--format=%s").splitlines()
    assert log == ["pairline: agent: make add add (step 3)", "init"]
    assert result.commits and result.files_changed == ["calc.py"]
    assert "-    return a - b\n+    return a + b" in result.diff
    assert result.last_test == {"command": CHECK, "exit_code": 0}
    # the history keeps each reply up to its action, and the system prompt and example come first
    last = client.calls[-1]["messages"]
    assert last[0]["role"] == "system" and "<tool_call>" in last[0]["content"]
    assert all(m["content"].rstrip().endswith("</tool_call>") for m in last if m["role"] == "assistant")


def test_edit_that_fails_is_fed_back_then_undo(repo):
    wrong = block("    return a * b\n", "    return a + b\n")
    agent, client = make(repo, [READ, wrong, FIX, call("done", summary="ok")])
    result = agent.run()
    obs = observations(client)
    assert "does not match any lines" in obs[1] and "Did you mean these lines (2-2)?" in obs[1]
    assert "Nothing was written" in obs[1]
    assert result.edits == 1 and len(result.commits) == 1
    # the edit is undoable through the workspace (what /undo in the chat calls)
    entry = agent.ws.undo()
    assert entry.commit == result.commits[0]
    assert (repo / "calc.py").read_text() == BUG and git(repo, "log", "--format=%s").splitlines() == ["init"]


def test_tool_after_a_failed_edit_is_not_run_and_new_file(repo):
    wrong = block("nothing like this\n", "x\n") + call("test").removeprefix("Next.\n")
    new = block("", "def sub(a, b):\n    return a - b\n", path="pkg/ops.py")
    agent, client = make(repo, [READ, wrong, new, call("test"), call("done", summary="ok")])
    agent.run()
    obs = observations(client)
    assert "test call after the edit was not run" in obs[1]
    assert (repo / "pkg" / "ops.py").read_text() == "def sub(a, b):\n    return a - b\n"
    tools = [e for e in events(agent) if e["type"] == "tool"]
    # step 0: the test run before the first step; a new file needs no read first
    assert [(t["step"], t["name"]) for t in tools] == [(0, "test"), (1, "read"), (2, "edit"), (3, "edit"),
                                                        (4, "test"), (5, "done")]


def test_malformed_replies_count_as_steps(repo):
    answers = [
        "I think we should fix it.",
        '<tool_call>\n{"name": "read", "arguments": {"path": }\n</tool_call>',
        call("frobnicate", x=1),
        call("read"),
        f"calc.py\n```python\n{HEAD}\n    return a - b\n```\n",
        "Let me think.\n" + "I am checking the file now.\nStill checking.\n" * 200,
        call("done", summary="gave up"),
    ]
    agent, client = make(repo, answers, nudge=False)
    result = agent.run()
    obs = observations(client)
    assert "No action found" in obs[0] and "<tool_call>" in obs[0]
    assert "not valid JSON" in obs[1]
    assert "unknown tool 'frobnicate'" in obs[2]
    assert 'read needs "path"' in obs[3]
    assert "malformed" in obs[4] and "ended inside an edit block" in obs[4]
    assert "repeated the same lines over and over" in obs[5]
    loop_turn = [e for e in events(agent) if e["type"] == "turn"][5]
    assert loop_turn["finish_reason"] == "loop" and loop_turn["tokens"] < 100  # cut early: 200 repeats are ~1700
    assert result.steps == 7 and result.reason == "done"
    invalid = [e for e in events(agent) if e["type"] == "tool" and e["name"] == "invalid"]
    assert len(invalid) == 6


def test_lenient_forms(repo):
    answers = [
        "```bash\necho hi-from-bash\n```",
        '```json\n{"name": "read_file", "parameters": {"file": "calc.py"}}\n```',
        '<tool_call>{"name": "grep", "arguments": "{\\"query\\": \\"return\\"}"}</tool_call>'
        '<tool_call>{"name": "done", "arguments": {}}</tool_call>',
        call("done", summary="ok"),
    ]
    agent, client = make(repo, answers)
    agent.run()
    obs = observations(client)
    assert "hi-from-bash" in obs[0] and "next time use a <tool_call>" in obs[0]
    assert "return a - b" in obs[1]
    assert "calc.py:2:" in obs[2]
    # the stream stopped at the first </tool_call>: the second call was never read, nor kept
    turn = [e for e in events(agent) if e["type"] == "turn"][2]
    assert turn["text"].count("<tool_call>") == 1 and turn["finish_reason"] == "stop"


def test_sandbox_refuses_paths_outside_the_repo(repo, tmp_path):
    (tmp_path / "secret.txt").write_text("top secret")
    escape = block("", "pwned\n", path="../evil.py")
    answers = [call("read", path="../secret.txt"), call("read", path=str(tmp_path / "secret.txt")),
               call("list", path=".."), escape, block("", "x\n", path=".git/config"),
               call("run", command=f"echo x > {tmp_path}/outside.txt; cat ../secret.txt"),
               call("done", summary="-")]
    agent, client = make(repo, answers)
    agent.run()
    obs = observations(client)
    assert "outside the repository" in obs[0] and "outside the repository" in obs[1]
    assert "outside the repository" in obs[2] and "outside the repository" in obs[3]
    assert "inside .git" in obs[4]
    assert not (tmp_path / "evil.py").exists()
    if "no-writes-outside" in agent.sandbox.protections:
        assert not (tmp_path / "outside.txt").exists()
    # reads outside the repository are confined where Landlock can (issue 22); elsewhere they are not
    if "no-reads-outside" in agent.sandbox.protections:
        assert "top secret" not in obs[5] and "Permission denied" in obs[5]
    else:
        assert "top secret" in obs[5]


def test_command_changing_git_config_is_put_back(repo):
    before = (repo / ".git" / "config").read_bytes()
    answers = [call("run", command="git config core.fsmonitor 'touch /tmp/x' && "
                                   "printf '#!/bin/sh\\n' > .git/hooks/post-commit && chmod +x .git/hooks/post-commit"),
               READ, FIX, call("done", summary="ok")]
    agent, client = make(repo, answers)
    result = agent.run()
    assert "were put back" in observations(client)[0]
    assert (repo / ".git" / "config").read_bytes() == before
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    assert result.edits == 1


@pytest.mark.parametrize("which", ["steps", "tokens", "time"])
def test_each_budget_stops_the_run(repo, which):
    loop = [call("read", path="calc.py")] * 50
    budgets = {"steps": Budgets(max_steps=3), "tokens": Budgets(max_steps=50, max_tokens=60),
               "time": Budgets(max_steps=50, max_time_s=0.6)}[which]
    agent, client = make(repo, loop, budgets)
    if which == "time":
        client.delay = 0.02  # every chunk takes a while: the time budget cancels a reply in flight
    result = agent.run()
    assert result.reason == {"steps": "max_steps", "tokens": "max_tokens", "time": "max_time"}[which]
    assert result.exit_code == 1 and "budget is used up" in result.report()
    if which == "steps":
        assert result.steps == 3
    if which == "tokens":
        assert result.tokens <= 60 and all(c["max_tokens"] <= 60 for c in client.calls)
    if which == "time":
        assert result.wall_s < 2.0
    end = events(agent)[-1]
    assert end["type"] == "end" and end["reason"] == result.reason


def test_interrupt_mid_command_stops_cleanly(repo):
    agent, _ = make(repo, [call("run", command="sleep 30"), call("done", summary="-")])
    cancel_at = threading.Timer(0.5, lambda: token.cancel())
    from pairline.engine.generate import CancelToken

    token = CancelToken()
    cancel_at.start()
    t0 = time.perf_counter()
    result = agent.run(token)
    assert result.reason == "interrupted" and result.exit_code == 130
    assert time.perf_counter() - t0 < 5
    kinds = [e["type"] for e in events(agent)]
    assert kinds[0] == "run" and kinds[-1] == "end"


def test_trajectory_contents(repo):
    agent, _ = make(repo, [call("read", path="calc.py"), FIX + call("test"), call("done", summary="fixed")])
    result = agent.run()
    ev = events(agent)
    assert [e["type"] for e in ev] == ["run", "tool", "turn", "tool", "observation", "turn", "tool", "tool",
                                        "observation", "turn", "tool", "observation", "end"]
    pre = ev[1]  # the tests, run once before the first step
    assert pre["step"] == 0 and pre["name"] == "test" and pre["exit_code"] == 1 and pre["command"] == CHECK
    ev = [ev[0]] + ev[2:]
    head = ev[0]
    assert head["task"] == "make add add" and head["model"] == "scripted" and head["repo"] == str(repo)
    assert head["start_commit"] == git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
    assert head["budgets"] == {"max_steps": 10, "max_time_s": 600.0, "max_tokens": 20000}
    assert "workdir" in head["sandbox"] and head["first_message"].startswith("Task: make add add")
    assert head["shown_files"] == [] and "exited 1" in head["first_message"]
    turn = ev[1]
    assert turn["tokens"] > 0 and "wall_s" in turn and turn["text"].endswith("</tool_call>")
    edit = ev[5]
    assert edit["name"] == "edit" and edit["commit"] == result.commits[0] and edit["files"] == ["calc.py"]
    assert edit["originals"] == {"calc.py": BUG} and "+    return a + b" in edit["diff"]
    end = ev[-1]
    assert end["reason"] == "done" and end["summary"] == "fixed" and end["files_changed"] == ["calc.py"]
    assert "+    return a + b" in end["diff"] and end["steps"] == 3
    assert all("elapsed_s" in e for e in ev)
    assert find_run(agent.run_id) == agent.path == result.path


def test_resume_after_an_interrupted_run(repo):
    agent, _ = make(repo, [call("read", path="calc.py"), FIX, call("test")], Budgets(max_steps=3))
    first = agent.run()
    assert first.reason == "max_steps"
    # simulate a crash: drop the end event and leave half a line
    lines = agent.path.read_text().splitlines()
    agent.path.write_text("\n".join(lines[:-1]) + '\n{"type": "tu')
    client = ScriptedClient([call("done", summary="all good")])
    resumed = Agent.resume(agent.run_id, client, budgets={"max_steps": 5})
    assert resumed.used.steps == 3 and resumed.used.tokens == first.tokens
    result = resumed.run()
    assert result.reason == "done" and result.steps == 4 and result.summary == "all good"
    assert result.files_changed == ["calc.py"] and "+    return a + b" in result.diff
    # the conversation was rebuilt: the model sees its own three steps and their results
    msgs = client.calls[0]["messages"]
    assert sum(m["role"] == "assistant" for m in msgs) == 3 + 3  # the example's three, then the run's
    assert "exited 0" in msgs[-1]["content"]
    ev = load_trajectory(agent.path)
    assert [e["type"] for e in ev].count("resume") == 1 and ev[-1]["type"] == "end"


def test_resume_refuses_when_the_repo_moved_on(repo):
    agent, _ = make(repo, [READ, FIX], Budgets(max_steps=2))
    agent.run()
    (repo / "calc.py").write_text("def add(a, b):\n    return 0\n")
    with pytest.raises(PairlineError, match="calc.py changed since the run edited it"):
        Agent.resume(agent.run_id, ScriptedClient([]))
    git(repo, "checkout", "-q", "calc.py")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    with pytest.raises(PairlineError, match="moved on"):
        Agent.resume(str(agent.path), ScriptedClient([]))
    done, _ = make(repo, [call("done", summary="x")])
    done.run()
    with pytest.raises(PairlineError, match="is finished"):
        Agent.resume(done.run_id, ScriptedClient([]))
    with pytest.raises(PairlineError, match="no such run"):
        Agent.resume("nope-123", ScriptedClient([]))


def test_outside_git_the_diff_comes_from_the_originals(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "plain"
    root.mkdir()
    (root / "calc.py").write_text(BUG)
    agent, _ = make(root, [READ, FIX, call("done", summary="x")])
    result = agent.run()
    assert not agent.ws.git and result.commits == [] and result.files_changed == ["calc.py"]
    assert "-    return a - b\n+    return a + b" in result.diff


def test_old_observations_are_condensed_to_fit(repo):
    for k in range(5):
        (repo / f"big{k}.py").write_text("".join(f"x_{i} = {i}  # some padding text here\n" for i in range(240)))
    # five different files, then the first again: its result was condensed away, so reading it again
    # is no repeat (the model no longer has it)
    reads = [call("read", path=f"big{k}.py") for k in (0, 1, 2, 3, 4, 0)] + [call("done", summary="x")]
    agent, client = make(repo, reads, n_ctx=6000, example=False)
    result = agent.run()
    assert result.reason == "done"
    assert any(e["type"] == "condense" for e in events(agent))
    last = client.calls[-1]["messages"]
    assert sum(client.count_tokens(m["content"]) + 4 for m in last) < 6000
    assert "output dropped to save room" in last[3]["content"]  # the oldest result shrank
    assert "x_215 = 215" in last[-1]["content"]  # the latest stayed whole
    assert "big0.py (lines 1-216 of 240)" in last[-1]["content"]
    assert not [e for e in events(agent) if e["type"] == "tool" and e["name"] == "repeat"]


def test_a_thought_without_action_is_continued_with_a_tool_call(repo):
    # the scripted continuation comes after the prefix the agent opened (```json and the name's quote)
    answers = ["I will read the file first.", 'read", "arguments": {"path": "calc.py"}}\n```',
               "Still thinking.", "nothing", call("done", summary="x")]
    agent, client = make(repo, answers)
    result = agent.run()
    assert client.calls[1]["prefix"] == 'I will read the file first.\n```json\n{"name": "'
    obs = observations(client)
    assert "return a - b" in obs[1] and "continued with a tool call" in obs[1]
    assert "not valid JSON" in obs[3]  # the continuation failed too: the error goes back
    turns = [e for e in events(agent) if e["type"] == "turn"]
    assert turns[0]["nudged"] and turns[0]["text"] == 'I will read the file first.\n```json\n' + \
        '{"name": "read", "arguments": {"path": "calc.py"}}\n```'
    assert result.steps == 3  # a nudge is part of its step


def test_files_named_in_the_task_are_shown_up_front(repo):
    agent, client = make(repo, [call("done", summary="x")])
    agent.run()
    first = client.calls[0]["messages"][-1]["content"]
    assert first.startswith("Task: make add add")
    assert "Files named in the task" not in first  # "add" names no file
    agent2 = Agent(ScriptedClient([call("done", summary="x")]), Workspace.open(repo), "fix calc.py please",
                   test_cmd=CHECK)
    assert "Files named in the task, as they are now:\n\ncalc.py\n```python\n" + BUG in agent2.convo[0].content
    assert "test_calc.py\n```" not in agent2.convo[0].content


def test_a_hook_the_model_wrote_does_not_run_on_its_commits(repo, tmp_path):
    # husky-style: the user's config points hooks at a folder in the worktree, which the model may edit
    git(repo, "config", "core.hooksPath", "hooks")
    marker = tmp_path / "hook-ran"
    hook = block("", f"#!/bin/sh\ntouch {marker}\n", path="hooks/post-commit")
    answers = [hook, call("run", command="chmod +x hooks/post-commit"), READ, FIX, call("done", summary="x")]
    agent, _ = make(repo, answers)
    result = agent.run()
    assert result.edits == 2 and not marker.exists()
    git(repo, "commit", "--allow-empty", "-qm", "the user's own commit")
    assert marker.exists()  # the hook is live for the user: what the agent wrote runs when *you* run git


def test_the_same_look_twice_is_refused_until_the_file_changes(repo):
    # no grammar (ScriptedClient): the harness refuses the repeat itself, and says what to do instead
    answers = [READ, READ, call("read_file", file="./calc.py"), FIX + call("test"), READ, call("done", summary="x")]
    agent, client = make(repo, answers)
    agent.run()
    obs = observations(client)
    assert "return a - b" in obs[0]
    for o in obs[1:3]:  # the same read, and the same in other words: not run
        assert "Not run: you already have calc.py (at step 1)" in o and "return a - b" not in o
        assert "edit a file with search/replace blocks, run the tests, or call done" in o
    assert "return a + b" in obs[4] and "Not run" not in obs[4]  # after an edit of it, reading again is fair
    tools = [e for e in events(agent) if e["type"] == "tool"]
    assert [t["name"] for t in tools] == ["test", "read", "repeat", "repeat", "edit", "test", "read", "done"]
    assert tools[2]["repeat_of"] == 1 and tools[2]["args"] == {"tool": "read", "path": "calc.py"}


def test_edit_tool_call_with_part_of_a_line(repo):
    answers = [READ, call("edit", path="calc.py", search="a - b", replace="a + b"),
               call("edit", path="calc.py", search="b", replace="c"), call("done", summary="x")]
    agent, client = make(repo, answers)
    result = agent.run()
    assert (repo / "calc.py").read_text() == BUG.replace("a - b", "a + b") and result.edits == 1
    assert "does not match any lines" in observations(client)[2]  # "b" is not unique: the precise error


def test_done_after_an_untested_edit_is_refused_once(repo):
    agent, client = make(repo, [READ, FIX, call("done", summary="tests pass"), call("test"),
                                call("done", summary="ok")])
    result = agent.run()
    assert "Not finished: you edited files after the last test run" in observations(client)[2]
    assert result.reason == "done" and result.summary == "ok" and result.steps == 5
    agent2, _ = make(repo, [READ, call("edit", path="calc.py", search="a + b", replace="b + a"),
                            call("done", summary="a"), call("done", summary="b")])
    assert agent2.run().summary == "b"  # refused once only: a model that insists is let go


def test_the_same_failing_edit_twice_is_called_out(repo):
    wrong = block("    return a * b\n", "    return a + b\n")
    agent, client = make(repo, [wrong, wrong, call("done", summary="x")])
    agent.run()
    obs = observations(client)
    assert "You did exactly this" not in obs[0] and "You did exactly this at step 1" in obs[1]


def test_passing_tests_after_an_edit_point_to_done(repo):
    agent, client = make(repo, [READ, FIX + call("test"), call("test"), call("done", summary="x")])
    agent.run()
    obs = observations(client)
    assert "The tests pass. If the task is done, call done" in obs[1] and "Not run" not in obs[1]
    # the same tests again with nothing edited since: not run, and the model is pointed on
    assert "Not run: the tests ran at step 2 (they passed)" in obs[2] and "call done" in obs[2]
