"""Deep mode's repeats (agent_mask.py) and first message (agent_context.py): a look whose result the
model has is masked out of its next reply (the grammar handed to the client) or, without a grammar,
refused by the harness; an edit of a file the model has not seen is refused and the file shown; the
tests run before the first step, and the failing tests' files are shown up front."""

from __future__ import annotations

import json
import subprocess

import pytest

from pairline.assistant.agent import Agent, Budgets
from pairline.assistant.agent_context import failure_files, imports_of
from pairline.assistant.agent_mask import Repeats, action_grammar
from pairline.assistant.trajectory import load_trajectory
from pairline.assistant.workspace import Workspace
from pairline.engine.constraint import compile_grammar
from pairline.errors import PairlineError
from tests.assistant_helpers import ScriptedClient
from tests.test_agent_loop import BUG, CHECK, FIX, READ, call, git

TEST_CMD = "python -m pytest -q -p no:cacheprovider"


class GrammarClient(ScriptedClient):
    """Records the grammar of each call like an engine that decodes under it would receive it (the
    scripted answers themselves are not held to it: the harness's refusal is tested on them too)."""

    supports_grammar = True
    family = "qwen2"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text(BUG)
    (root / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    _commit(root)
    return root


def _commit(root):
    for args in (["init", "-q"], ["config", "user.email", "t@e.com"], ["config", "user.name", "T"], ["add", "."],
                 ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def run(root, answers, client_cls=ScriptedClient, task="make add add", test_cmd=CHECK, **kw):
    client = client_cls(answers)
    agent = Agent(client, Workspace.open(root), task, budgets=kw.pop("budgets", Budgets(max_steps=10)),
                  test_cmd=test_cmd, **kw)
    result = agent.run()
    return agent, client, result


def observations(client):
    return [c["messages"][-1]["content"] for c in client.calls[1:]]


def tools(agent):
    return [e for e in load_trajectory(agent.path) if e["type"] == "tool"]


# ---------------------------------------------------------------- the grammar, on Qwen2.5's tokenizer


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen05_gguf):
    from pairline.engine.tokenizer import Tokenizer

    return Tokenizer.from_gguf(qwen05_gguf)


def allows(grammar, tokenizer, text: str, end: bool = False) -> bool:
    """The whole of `text` may be written under `grammar` (as the model would tokenize it); with
    `end`, the reply may also end there (the engine offers the end of the turn only then)."""
    ids = tokenizer.encode_text(text)
    constraint = compile_grammar(grammar, tokenizer)
    if constraint.allows(ids) < len(ids):
        return False
    constraint.advance(ids)
    return constraint.accepting or not end


def tool_call(name: str, **args) -> str:
    return f"I will read the file first.\n<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def test_the_grammar_handed_to_the_client_masks_a_repeated_read(repo, qwen_tokenizer):
    agent, client, _ = run(repo, [READ, READ, READ, call("done", summary="x")], GrammarClient)
    g1, g2, g3 = (c["grammar"] for c in client.calls[:3])
    tok = qwen_tokenizer
    # step 1: calc.py is not read yet; the tests ran before the first step and the file list is in
    # the first message, so running the tests or listing again is masked already
    assert allows(g1, tok, tool_call("read", path="calc.py"))
    assert not allows(g1, tok, tool_call("test")) and not allows(g1, tok, tool_call("list", path="."))
    # steps 2 and 3: the read of calc.py is masked, in the shapes the models write it
    for g in (g2, g3):
        assert not allows(g, tok, tool_call("read", path="calc.py"))
        assert not allows(g, tok, tool_call("read_file", file="./calc.py"))
        assert not allows(g, tok, 'Read it.\n```json\n{"name": "read", "arguments": {"path": "calc.py"}}\n```')
        assert not allows(g, tok, 'Read it.\n```bash\ncat calc.py\n```')
        # everything else stays open: the other file, an edit, a search, done
        assert allows(g, tok, tool_call("read", path="test_calc.py"))
        assert allows(g, tok, "Fix it.\n" + FIX)
        # the tests are masked (they ran before the first step), but not after an edit in the same
        # reply: that call runs on the edited file, as the worked example teaches
        assert allows(g, tok, "Fix it.\n" + FIX + tool_call("test").split("\n", 1)[1])
        assert allows(g, tok, "Fix it.\n" + FIX + "python -m pytest -q\n")
        assert not allows(g, tok, "Run them.\npython -m pytest -q\n")
        # a reply may not end right after the command either (the reader takes that line as a test)
        assert not allows(g, tok, "Run them.\npython -m pytest", end=True)
        assert allows(g, tok, "Fix it.\n" + FIX + "python -m pytest", end=True)
        assert allows(g, tok, tool_call("done", summary="x"), end=True)
        # a second tool call after a first one is not read, but it is no way around the mask
        assert not allows(g, tok, tool_call("done", summary="x") + "<tool_call>\n{\"name\": \"test\"")
        assert allows(g, tok, tool_call("search", pattern="calc.py"))
        assert allows(g, tok, tool_call("done", summary="read calc.py and fixed it"))
    # the scripted client writes the repeats anyway: the harness refuses them
    obs = observations(client)
    assert "return a - b" in obs[0]
    assert "Not run: you already have calc.py (at step 1)" in obs[1] and "return a - b" not in obs[1]
    assert "Not run: you already have calc.py (at step 1)" in obs[2]
    turns = [e for e in load_trajectory(agent.path) if e["type"] == "turn"]
    assert turns[0]["masked"] == ["list", "test"] and turns[1]["masked"] == ["read calc.py", "list", "test"]
    assert load_trajectory(agent.path)[0]["mask"] is True


def test_the_mask_bites_on_the_name_when_every_file_is_read(repo, qwen_tokenizer):
    # both files read and unchanged: no read at all is offered, so a model that starts "read" turns to
    # another tool on that token, instead of being forced into a path that does not exist
    answers = [READ, call("read", path="test_calc.py"), call("done", summary="x")]
    agent, client, _ = run(repo, answers, GrammarClient)
    g = client.calls[2]["grammar"]
    assert not allows(g, qwen_tokenizer, 'Next.\n<tool_call>\n{"name": "read')
    assert allows(g, qwen_tokenizer, 'Next.\n<tool_call>\n{"name": "edit')
    assert [e for e in load_trajectory(agent.path) if e["type"] == "turn"][2]["masked"][0] == "read (every file)"


def test_after_an_edit_the_file_and_the_tests_are_offered_again(repo, qwen_tokenizer):
    answers = [READ, call("read", path="test_calc.py"), FIX, READ, call("test"), call("done", summary="x")]
    agent, client, result = run(repo, answers, GrammarClient)
    g = client.calls[3]["grammar"]  # after the edit of calc.py
    assert allows(g, qwen_tokenizer, tool_call("read", path="calc.py"))
    assert allows(g, qwen_tokenizer, tool_call("test"))
    assert not allows(g, qwen_tokenizer, tool_call("read", path="test_calc.py"))  # untouched: still masked
    obs = observations(client)
    assert "return a + b" in obs[3] and "Not run" not in obs[3] and "exited 0" in obs[4]
    assert result.reason == "done"
    # and where nothing is left to mask, no grammar is sent at all (the engine decodes as usual)
    _, client2, _ = run(repo, [READ, block_for("    return a + b\n", "    return b + a\n"), call("done", summary="x")],
                        GrammarClient, budgets=Budgets(max_steps=3))
    assert client2.calls[2]["grammar"] is None


def test_without_a_grammar_the_harness_refuses_the_repeats(repo):
    # ScriptedClient has no grammar support: nothing is masked, every repeat is refused, with what to do
    answers = [call("test"), call("list"), READ, READ, call("run", command="cat calc.py"),
               call("search", pattern="add"), call("search", pattern="add"), call("done", summary="x")]
    agent, client, _ = run(repo, answers)
    assert all(c["grammar"] is None for c in client.calls)
    obs = observations(client)
    assert "Not run: the tests ran before your first step (exit 1) and no file changed since" in obs[0]
    assert "Edit the code first" in obs[0]
    assert "Not run: you already have the file list (in the first message)" in obs[1]
    assert "return a - b" in obs[2]
    assert "Not run: you already have calc.py (at step 3)" in obs[3]
    assert "Not run: you already have calc.py (at step 3)" in obs[4]  # `cat` is a read too
    assert "calc.py:1:" in obs[5] and "Not run: you already have the matches for 'add' (at step 6)" in obs[6]
    names = [(t["step"], t["name"]) for t in tools(agent)]
    assert names == [(0, "test"), (1, "repeat"), (2, "repeat"), (3, "read"), (4, "repeat"), (5, "repeat"),
                     (6, "search"), (7, "repeat"), (8, "done")]


def test_a_command_that_may_write_makes_every_look_fresh_again(repo):
    answers = [READ, call("run", command="echo x >> notes.txt"), READ, call("test"), call("done", summary="x")]
    _, client, _ = run(repo, answers)
    obs = observations(client)
    assert "Not run" not in obs[2] and "return a - b" in obs[2]  # the command may have changed calc.py
    assert "exited 1" in obs[3] and "Not run" not in obs[3]


def test_a_grammar_the_client_cannot_use_turns_the_mask_off(repo):
    class Refusing(GrammarClient):
        def stream(self, messages, **kw):
            if kw.get("grammar") is not None:
                raise PairlineError("the lark grammar is invalid: unknown special token \"<tool_call>\"")
            return super().stream(messages, **kw)

    agent, client, result = run(repo, [READ, READ, call("done", summary="x")], Refusing)
    assert result.reason == "done"
    events = load_trajectory(agent.path)
    off = [e for e in events if e["type"] == "mask_off"]
    assert len(off) == 1 and "unknown special token" in off[0]["error"]
    assert "Not run: you already have calc.py" in observations(client)[1]  # the harness still refuses


# ---------------------------------------------------------------- editing a file it has not read


def test_an_edit_of_a_file_not_read_is_refused_and_the_file_shown(repo):
    answers = [FIX, FIX + call("test"), call("done", summary="x")]
    agent, client, result = run(repo, answers)
    obs = observations(client)
    assert "Not applied: you have not read calc.py in this run" in obs[0] and "Nothing was written" in obs[0]
    assert "calc.py (lines 1-2 of 2):\ndef add(a, b):\n    return a - b" in obs[0]  # shown: now it has it
    assert "test call after the edit was not run" not in obs[0]
    assert "edit applied to calc.py" in obs[1] and "exited 0" in obs[1]
    assert result.edits == 1 and len(result.commits) == 1 and result.reason == "done"
    refused = tools(agent)[1]
    assert refused["name"] == "edit" and not refused["ok"] and refused["unread"] == ["calc.py"]
    # the file it was shown counts as read: reading it now is a repeat
    agent2, client2, _ = run(repo, [block_for("    return a + b\n", "    return a * b\n"), READ,
                                    call("done", summary="x")])
    assert "Not run: you already have calc.py (at step 1)" in observations(client2)[1]


def block_for(search: str, replace: str, path: str = "calc.py") -> str:
    from tests.test_agent_loop import block

    return block(search, replace, path)


def test_a_block_that_copies_its_search_lines_changes_nothing(repo):
    # measured on Qwen2.5-Coder-1.5B: with every read masked it wrote the whole file back unchanged
    # but for a blank line, which the applier's blank-line tolerance would have "applied"
    same = block_for("def add(a, b):\n\n    return a - b\n", "def add(a, b):\n    return a - b\n")
    _, client, result = run(repo, [READ, same, call("test"), call("done", summary="x")], budgets=Budgets(max_steps=4))
    obs = observations(client)
    assert "its REPLACE lines are its SEARCH lines, so it changes nothing" in obs[1] and "Nothing was written" in obs[1]
    assert result.edits == 0 and (repo / "calc.py").read_text() == BUG
    assert "Not run: the tests ran before your first step" in obs[2]  # nothing changed: still a repeat


def test_new_files_and_files_named_in_the_task_need_no_read(repo):
    new = block_for("", "def sub(a, b):\n    return a - b\n", path="ops.py")
    agent, client, result = run(repo, [new, FIX + call("test"), call("done", summary="x")],
                                task="fix add in calc.py")
    obs = observations(client)
    assert "edit applied to ops.py" in obs[0] and "edit applied to calc.py" in obs[1]
    assert result.edits == 2


# ---------------------------------------------------------------- the first message


STATS = "def median(xs):\n    xs = sorted(xs)\n    return xs[len(xs) // 2]\n"
TEST_STATS = ("from stats import median\n\n\ndef test_odd():\n    assert median([3, 1, 2]) == 2\n\n\n"
              "def test_even():\n    assert median([1, 2, 3, 4]) == 2.5\n")


def test_the_failing_tests_and_what_they_import_are_shown_up_front(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "stats-repo"
    root.mkdir()
    (root / "stats.py").write_text(STATS)
    (root / "test_stats.py").write_text(TEST_STATS)
    (root / "README.md").write_text("stats\n")
    _commit(root)
    fix = block_for("    return xs[len(xs) // 2]\n",
                    "    n = len(xs)\n    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2\n",
                    path="stats.py")
    answers = [call("read", path="test_stats.py"), fix + call("test"), call("done", summary="x")]
    agent, client, result = run(root, answers, GrammarClient, task="make the failing test pass", test_cmd=TEST_CMD)
    first = client.calls[0]["messages"][-1]["content"]
    assert "The tests were run once before your first step:\n`python -m pytest" in first
    assert "FAILED test_stats.py::test_even" in first
    shown = first.split("The failing tests and the code they use, as they are now:", 1)[1]
    assert shown.index("stats.py\n```python\n" + STATS) < shown.index("test_stats.py\n```python\n" + TEST_STATS)
    assert "README.md\n```" not in first
    assert agent.known >= {"stats.py", "test_stats.py"}
    obs = observations(client)
    assert "Not run: you already have test_stats.py (in the first message)" in obs[0]
    assert "edit applied to stats.py" in obs[1] and "2 passed" in obs[1]
    assert result.reason == "done"
    header = load_trajectory(agent.path)[0]
    assert header["shown_files"] == ["stats.py", "test_stats.py"]
    # the model may not run the tests again first: that is masked from step 1
    assert "test" in [e for e in load_trajectory(agent.path) if e["type"] == "turn"][0]["masked"]


def test_failure_files_follow_tracebacks_and_imports(tmp_path):
    root = tmp_path
    (root / "shop").mkdir()
    (root / "tests").mkdir()
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "cart.py").write_text("from .prices import price\nimport json\n\n\ndef total(items):\n    ...\n")
    (root / "shop" / "prices.py").write_text("from shop import rates\n")
    (root / "shop" / "rates.py").write_text("RATE = 1\n")
    (root / "tests" / "test_cart.py").write_text("from shop.cart import total\nimport pytest\n")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    assert imports_of(root, "shop/cart.py", set(files)) == ["shop/prices.py"]
    assert imports_of(root, "tests/test_cart.py", set(files)) == ["shop/cart.py"]
    output = (f"{root}/tests/test_cart.py:4: in test_total\n    assert total([1]) == 2\n"
              f"/sandbox/repo/shop/prices.py:9: in price\n"
              "FAILED tests/test_cart.py::test_total - assert 1 == 2\n1 failed in 0.01s\n")
    # what the failing test imports, what its traceback names, the test file, then the next imports
    assert failure_files(output, root, files) == ["shop/cart.py", "shop/prices.py", "tests/test_cart.py",
                                                  "shop/__init__.py", "shop/rates.py"]
    assert failure_files("1 passed", root, files) == []


# ---------------------------------------------------------------- the patterns themselves


def test_the_mask_names_the_shortest_prefix_no_other_file_shares():
    rep = Repeats(CHECK, lambda p: p.removeprefix("./"))
    rep.seen_file("src/app.py", 1)
    rep.seen_file("a.py", 2)
    calls, lines, said = rep.masked(["src/app.py", "src/api.py", "a.py", "a.py.orig", "b.py"])
    assert said == ["read a.py, src/app.py"]
    read = calls[0]
    # src/app.py against src/api.py: "src/app"; a.py against a.py.orig: the whole name and its quote
    assert "src/app" in read and 'a\\.py"' in read and "src/ap)" not in read
    assert any("cat " in x for x in lines)


def test_the_grammar_compiles_with_and_without_special_tokens(smollm2_gguf):
    from pairline.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(smollm2_gguf)  # SmolLM2: no <tool_call> token; the text form is masked
    rep = Repeats(CHECK, lambda p: p)
    rep.seen_file("calc.py", 1)
    rep.seen_tests(0, 1)
    grammar, _ = rep.grammar(["calc.py", "test_calc.py"], special_tokens=False)
    assert not allows(grammar, tok, 'x\n<tool_call>{"name": "read", "arguments": {"path": "calc.py"}}')
    assert not allows(grammar, tok, 'Run them.\npytest -q\n')
    assert not allows(grammar, tok, 'Run them.\npytest', end=True)
    edit = "Fix.\ncalc.py\n```python\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n```\n"
    assert allows(grammar, tok, edit + "pytest -q\n")
    assert allows(grammar, tok, 'Fix.\n    with pytest.raises(ValueError):\n        x = {"name": "test_user"}\n')
    with pytest.raises(PairlineError, match="special token"):
        compile_grammar(action_grammar(['read'], [], special_tokens=True), tok)


def test_git_is_untouched_by_a_refused_edit(repo):
    agent, _, _ = run(repo, [FIX], budgets=Budgets(max_steps=1))
    assert git(repo, "log", "--format=%s").splitlines() == ["init"] and (repo / "calc.py").read_text() == BUG
