"""Never a silent deletion, and the cheap check after every edit (deletions.py, check.py, the coder's
retry, `pairline edit` and `pairline chat` end to end), with a scripted model, on files of 5, 12 and
200 lines."""

from __future__ import annotations

import ast
import json

import pytest

from pairline.assistant import prompts
from pairline.assistant.check import python_problems, review, undefined_names
from pairline.assistant.coder import Coder, load_file
from pairline.assistant.deletions import Source, read_intent, unasked_losses
from pairline.assistant.edits import DIVIDER, HEAD, TAIL
from pairline.assistant.rewrite import language_for
from pairline.assistant.workspace import Workspace
from tests.assistant_helpers import ScriptedClient

FIVE = "def a():\n    return 1\n\ndef b():\n    return 2\n"

# The issue's file: 12 lines; with_tax is not used, so deleting it is a whole edit.
SHOP = """\
TAX = 0.2


def total_price(items):
    return sum(i.price for i in items)


def with_tax(items):
    return total_price(items) * (1 + TAX)


print(total_price([]))
"""


def _big() -> str:
    body = "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n\n\n" for i in range(1, 40))
    text = "import sys\n\n\ndef f0(x):\n    return x\n\n\n" + body + "print(f0(1), file=sys.stderr)\n"
    return text


BIG = _big()
RENAME = "Rename the function total_price to basket_total everywhere in this file."


def test_fixture_sizes():
    assert [s.count("\n") for s in (FIVE, SHOP, BIG)] == [5, 12, 203]


def fence(text: str) -> str:
    return f"```python\n{text}```\n"


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n```{language_for(path)}\n{HEAD}\n{search}{DIVIDER}\n{replace}{TAIL}\n```\n"


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / ".cache"))
    for name, text in (("five.py", FIVE), ("shop.py", SHOP), ("big.py", BIG)):
        (tmp_path / name).write_text(text)
    return Workspace.open(tmp_path)


def run(ws, path, answers, instruction, mode):
    client = ScriptedClient(answers)
    result = Coder(client, ws, search_cap=None).run([load_file(ws, path)], instruction, mode=mode)
    return result, client


# --------------------------------------------------------------------------- rewrites cut short


CUT_SHORT = [
    # (file, instruction, the model's rewrite: the first function changed, then it stopped, the right file)
    ("five.py", "make a return 10", "def a():\n    return 10\n", FIVE.replace("return 1\n", "return 10\n")),
    (
        "shop.py",
        "add a docstring to total_price",
        SHOP[: SHOP.index("\n\n\ndef with_tax")].replace("items):\n", 'items):\n    """The sum of the prices."""\n', 1)
        + "\n",
        SHOP.replace("items):\n", 'items):\n    """The sum of the prices."""\n', 1),
    ),
    (
        "big.py",
        "make f0 return x + 1",
        "import sys\n\n\ndef f0(x):\n    return x + 1\n",
        BIG.replace("return x\n", "return x + 1\n"),
    ),
]


@pytest.mark.parametrize(("path", "instruction", "answer", "want"), CUT_SHORT, ids=["5", "12", "200"])
def test_rewrite_cut_short_after_the_first_function_is_repaired(ws, path, instruction, answer, want):
    result, client = run(ws, path, [fence(answer)], instruction, "rewrite")
    assert result.status == "changed" and len(client.calls) == 1
    assert result.new_texts[ws.root / path] == want  # a region, spliced in place: the tail stays


@pytest.mark.parametrize("path", ["five.py", "shop.py", "big.py"])
def test_rewrite_cut_short_to_nothing_changes_nothing(ws, path):
    result, client = run(ws, path, [fence("")] * 2, "tidy it", "rewrite")
    assert result.status == "unchanged" and result.new_texts == {}
    assert len(client.calls) == 2  # "nothing changed" went back once


def test_the_issue_rename_cut_short_is_never_written_as_a_fragment(ws):
    """The issue's case: the rename stops after the first function. The tail comes back, but it still
    calls total_price: that goes back to the model once, and a second fragment is refused."""
    fragment = "TAX = 0.2\n\n\ndef basket_total(items):\n    return sum(i.price for i in items)\n"
    result, client = run(ws, "shop.py", [fence(fragment), fence(fragment)], RENAME, "rewrite")
    assert result.status == "malformed" and result.new_texts == {} and len(client.calls) == 2
    assert result.stats.check_retried and result.stats.retried
    assert any("shop.py lines 9, 12: `total_price` is not defined" in e for e in result.errors)
    retry = client.calls[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": fence(fragment)}
    assert "not defined" in retry[-1]["content"] and "one code block each" in retry[-1]["content"]
    assert client.calls[1]["prediction"] == client.calls[0]["prediction"]  # the original file again


def test_the_issue_rename_fixed_by_the_retry(ws):
    fragment = "TAX = 0.2\n\n\ndef basket_total(items):\n    return sum(i.price for i in items)\n"
    full = SHOP.replace("total_price", "basket_total")
    result, _ = run(ws, "shop.py", [fence(fragment), fence(full)], RENAME, "rewrite")
    assert result.status == "changed" and result.stats.check_retried and not result.stats.repaired
    assert result.new_texts[ws.root / "shop.py"] == full


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [("five.py", "b", "second"), ("shop.py", "total_price", "basket_total"), ("big.py", "f0", "identity")],
    ids=["5", "12", "200"],
)
def test_legit_rename_rewrite_goes_through(ws, path, old, new):
    text = (ws.root / path).read_text()
    renamed = text.replace(f"{old}(", f"{new}(")
    result, client = run(ws, path, [fence(renamed)], f"rename {old} to {new}", "rewrite")
    assert result.status == "changed" and not result.stats.retried and not result.stats.repaired
    assert result.new_texts[ws.root / path] == renamed and len(client.calls) == 1


def test_rewrite_that_starts_at_the_function_it_changes_gets_the_head_back(ws):
    # SmolLM2's answer to "rename b to second" on the 5-line file: the region it changed, nothing else
    result, _ = run(ws, "five.py", [fence("def second():\n    return 2\n")], "rename b to second", "rewrite")
    assert result.status == "changed" and result.new_texts[ws.root / "five.py"] == FIVE.replace("def b", "def second")


def test_real_smollm2_rename_that_dropped_a_constant_and_a_function_is_refused(ws):
    """What SmolLM2 wrote for the issue's rename: it started at total_price, kept it, added a copy
    named basket_total, and stopped. The head (TAX) and the tail come back, but with_tax is gone: a
    copy of another function is not a rename of it."""
    answer = fence("def total_price(items):\n    return sum(i.price for i in items)\n\n"
                   "def basket_total(items):\n    return sum(i.price for i in items)\n")
    # its retry (with a longer context): with_tax gone again, and a new main() whose body shares
    # most of with_tax's names; a function whose name is gone is deleted, whatever its lines resemble
    retry = fence("# shop.py\n\ndef total_price(items):\n    return sum(i.price for i in items)\n\n"
                  "def basket_total(items):\n    return sum(i.price for i in items)\n\n"
                  "def main():\n    items = [1, 2, 3, 4, 5]\n    print(total_price(items))\n\nmain()\n")
    result, _ = run(ws, "shop.py", [answer, retry], RENAME, "rewrite")
    assert result.status == "malformed" and result.new_texts == {} and result.stats.check_retried
    # the first answer, a region, deletes nothing now: it adds a copy, which is refused as such
    assert any("`total_price` is still defined next to `basket_total`, a copy" in e for e in result.errors)


def test_rewrite_skipping_a_middle_function_is_refused(ws):
    skipped = SHOP.replace("def with_tax(items):\n    return total_price(items) * (1 + TAX)\n\n\n", "")
    result, client = run(ws, "shop.py", [fence(skipped)] * 2, "use a TAX of 0.25", "rewrite")
    assert result.status == "malformed" and len(client.calls) == 2 and result.new_texts == {}
    assert "deletes lines 8-9 (function `with_tax`)" in result.errors[0]
    assert "    8| def with_tax(items):" in result.errors[0]


def test_rewrite_asked_to_delete_the_last_function_but_one_keeps_the_rest(ws):
    # "delete with_tax": the model writes the region around it without it; the print after it stays
    head = SHOP[: SHOP.index("def with_tax")]
    region = "def total_price(items):\n    return sum(i.price for i in items)\n\n\nprint(total_price([]))\n"
    result, _ = run(ws, "shop.py", [fence(region)], "Delete the function with_tax.", "rewrite")
    assert result.status == "changed"
    assert result.new_texts[ws.root / "shop.py"] == head + "print(total_price([]))\n"
    # a region that stops before the function deletes nothing: the rest of the file is kept
    result, _ = run(ws, "shop.py", [fence(head)] * 2, "Delete the function with_tax.", "rewrite")
    assert result.status == "unchanged"


def test_rewrite_with_an_elision_comment_at_the_end_is_repaired(ws):
    answer = "TAX = 0.25\n\n\ndef total_price(items):\n    # ... rest of the file unchanged\n"
    result, _ = run(ws, "shop.py", [fence(answer)], "use a TAX of 0.25", "rewrite")
    assert result.status == "changed" and result.new_texts[ws.root / "shop.py"] == SHOP.replace("0.2", "0.25")


def test_rewrite_that_reorders_functions_is_not_a_deletion(ws):
    parts = FIVE.split("\n\n")
    swapped = parts[1] + "\n" + parts[0] + "\n"
    result, _ = run(ws, "five.py", [fence(swapped)], "put b first", "rewrite")
    assert result.status == "changed" and result.new_texts[ws.root / "five.py"] == swapped


# --------------------------------------------------------------------------- search/replace blocks


FUNCTIONS = [
    ("five.py", "def b():\n    return 2\n", "function `b`"),
    ("shop.py", "def with_tax(items):\n    return total_price(items) * (1 + TAX)\n", "function `with_tax`"),
    ("big.py", "def f17(x):\n    y = x + 17\n    return y * 2\n", "function `f17`"),
]


@pytest.mark.parametrize(("path", "function", "label"), FUNCTIONS, ids=["5", "12", "200"])
def test_blocks_deleting_a_function_not_asked_for_is_refused(ws, path, function, label):
    answer = block(path, function, "")
    result, client = run(ws, path, [answer, answer], "make the code faster", "blocks")
    assert result.status == "malformed" and result.new_texts == {} and len(client.calls) == 2
    assert label in result.errors[0] and "does not ask to remove" in result.errors[0]
    retry = client.calls[1]["messages"][-1]["content"]
    assert "None of your edit blocks were applied" in retry and label in retry


@pytest.mark.parametrize(("path", "function", "label"), FUNCTIONS, ids=["5", "12", "200"])
def test_blocks_deleting_the_function_asked_for_goes_through(ws, path, function, label):
    name = label.split("`")[1]
    result, client = run(ws, path, [block(path, function, "")], f"Delete the function {name}.", "blocks")
    assert result.status == "changed" and len(client.calls) == 1
    assert function not in result.new_texts[ws.root / path]


def test_deleting_a_function_still_called_goes_back_to_the_model(ws):
    # asked for, so not a silent deletion; but its call is left behind: the names check says so
    call = block("shop.py", "print(total_price([]))\n", "")
    answer = block("shop.py", "def total_price(items):\n    return sum(i.price for i in items)\n", "")
    result, client = run(ws, "shop.py", [answer, call], "Delete the function total_price.", "blocks")
    retry = client.calls[1]["messages"][-1]["content"]
    assert "lines 7, 10: `total_price` is not defined (the instruction deletes it: remove or change its uses" in retry
    assert result.status == "malformed"  # with_tax still calls it: nothing is written


def test_blocks_refusal_fixed_by_the_retry(ws):
    bad = block("shop.py", "def with_tax(items):\n    return total_price(items) * (1 + TAX)\n", "")
    good = block("shop.py", "TAX = 0.2\n", "TAX = 0.25\n")
    result, _ = run(ws, "shop.py", [bad, good], "use a TAX of 0.25", "blocks")
    assert result.status == "changed" and result.stats.check_retried
    assert result.new_texts[ws.root / "shop.py"] == SHOP.replace("0.2", "0.25")  # the first blocks are gone


def test_blocks_rename_that_leaves_a_call_behind_goes_back_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = "import os\n\n\ndef greet(name):\n    return 'hi ' + name\n\n\nprint(greet('x'))\n"
    (tmp_path / "app.py").write_text(src)
    ws = Workspace.open(tmp_path)
    half = block("app.py", "def greet(name):\n", "def welcome(name):\n")
    whole = half + block("app.py", "print(greet('x'))\n", "print(welcome('x'))\n")
    result, client = run(ws, "app.py", [half, whole], "rename greet to welcome", "blocks")
    assert result.status == "changed" and result.new_texts[ws.root / "app.py"] == src.replace("greet", "welcome")
    retry = client.calls[1]["messages"][-1]["content"]
    assert "app.py line 8: `greet` is not defined (the edit renamed it to `welcome`: use `welcome` here too)" in retry
    assert "    8| print(greet('x'))" in retry
    # the first blocks were kept: the retry adds the fix (a repeated block is skipped, as above)
    assert retry.startswith("Your edit blocks were applied, but the file has errors now")
    fix = block("app.py", "print(greet('x'))\n", "print(welcome('x'))\n")
    result, _ = run(ws, "app.py", [half, fix], "rename greet to welcome", "blocks")
    assert result.status == "changed" and result.new_texts[ws.root / "app.py"] == src.replace("greet", "welcome")
    result, _ = run(ws, "app.py", [half, half], "rename greet to welcome", "blocks")
    assert result.status == "malformed" and "`greet` is not defined" in result.errors[0]


def test_blocks_small_deletions_pass(ws):
    (ws.root / "m.py").write_text("def f(items):\n    total = 0\n    for i in items:\n        total += i\n"
                                  "    return total\n\n\na = 1\nb = 2\nprint(f([a, b]))\n")
    answer = block("m.py", "    total = 0\n    for i in items:\n        total += i\n    return total\n",
                   "    return sum(i for i in items)\n") + block("m.py", "a = 1\nb = 2\n", "a, b = 1, 2\n")
    result, _ = run(ws, "m.py", [answer], "use sum() in f and one assignment", "blocks")
    assert result.status == "changed" and not result.stats.retried


def test_blocks_dropping_three_statements_is_refused(ws):
    (ws.root / "s.py").write_text("import sys\nx = 1\ny = 2\nz = 3\nprint(sys.argv)\n")
    answer = block("s.py", "x = 1\ny = 2\nz = 3\nprint(sys.argv)\n", "print(sys.argv[1:])\n")
    result, _ = run(ws, "s.py", [answer, answer], "print only the arguments", "blocks")
    assert result.status == "malformed"
    assert "deletes line 2 (assignment `x`), line 3 (assignment `y`)" in result.errors[0]


def test_blocks_edit_that_breaks_the_syntax_is_refused(ws):
    answer = block("five.py", "def b():\n    return 2\n", "def b(:\n    return 2\n")
    result, _ = run(ws, "five.py", [answer, answer], "fix b", "blocks")
    assert result.status == "malformed" and "five.py line 4: the edited file is not valid Python" in result.errors[0]


def test_non_python_file_gets_the_deletion_rule_only(ws):
    js = "function a() {\n  return 1;\n}\n\nfunction b() {\n  return 2;\n}\n"
    (ws.root / "m.js").write_text(js)
    answer = block("m.js", "function b() {\n  return 2;\n}\n", "")
    result, _ = run(ws, "m.js", [answer, answer], "make a return 3", "blocks")
    assert result.status == "malformed" and "lines 5-7 (function `b`)" in result.errors[0]
    broken = block("m.js", "  return 1;\n", "  return 1 +;\n")  # not checked: JavaScript is not parsed
    result, _ = run(ws, "m.js", [broken], "make a return 3", "blocks")
    assert result.status == "changed"


def test_cli_refusal_exits_3_and_writes_nothing(ws, monkeypatch, capsys):
    from pairline.cli import main

    bad = block("shop.py", "def with_tax(items):\n    return total_price(items) * (1 + TAX)\n", "")
    client = ScriptedClient([bad, bad])
    monkeypatch.setattr("pairline.assistant.client.open_client", lambda *a, **k: client)
    code = main(["edit", "shop.py", "-m", "use a TAX of 0.25", "--blocks", "--json"])
    assert code == 3 and (ws.root / "shop.py").read_text() == SHOP
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds.count("check_error") == 2 and "retry" in kinds
    done = events[-1]
    assert done["status"] == "malformed" and done["check_retried"] and "function `with_tax`" in done["message"]


def test_cli_rewrite_cut_short_is_written_whole(ws, monkeypatch, capsys):
    from pairline.cli import main

    answer = fence("TAX = 0.25\n\n\ndef total_price(items):\n")
    client = ScriptedClient([answer])
    monkeypatch.setattr("pairline.assistant.client.open_client", lambda *a, **k: client)
    code = main(["edit", "shop.py", "-m", "use a TAX of 0.25", "--json"])
    assert code == 0 and (ws.root / "shop.py").read_text() == SHOP.replace("0.2", "0.25")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["message"].startswith("wrote shop.py (+1 -1)")


def test_chat_turn_refused_writes_nothing(ws):
    from pairline.assistant.chat import ChatSession

    out: list[str] = []
    bad = prompts.primer(prompts.prompt_for("qwen2"), "five.py") + f"def b():\n    return 2\n{DIVIDER}\n{TAIL}\n```\n"
    session = ChatSession(ScriptedClient([bad, bad]), ws, out.append, files=[ws.resolve("five.py")])
    session.submit("make a return 3")
    session.wait()
    text = "".join(out)
    assert "[check failed: five.py: the edit deletes lines 4-5 (function `b`)" in text
    assert "nothing written" in text and (ws.root / "five.py").read_text() == FIVE


# --------------------------------------------------------------------------- the rule, directly


def losses(old: str, new: str, instruction: str = "change it", python: bool = True):
    before = Source(old, python)
    return unasked_losses(before, Source(new, python), read_intent(instruction, before))


def test_intent_reading():
    src = Source(SHOP, True)
    assert not read_intent("rename total_price", src).deletes
    assert not read_intent("rename it, but don't remove anything", src).deletes
    assert not read_intent("rename it and remove nothing else", src).deletes
    assert not read_intent("add a helper without deleting the old one", src).deletes
    assert read_intent("remove the unused imports", src).anything
    assert read_intent("Delete the function `with_tax`", src).names == {"with_tax"}
    assert read_intent("drop with_tax and TAX", src).names == {"with_tax", "TAX"}


def test_extracting_a_helper_with_renamed_variables_loses_nothing():
    old = ("def report(orders):\n    total = 0\n    for order in orders:\n        total += order.price * order.qty\n"
           "    print('total', total)\n")
    new = ("def order_total(items):\n    result = 0\n    for item in items:\n        result += item.price * item.qty\n"
           "    return result\n\n\ndef report(orders):\n    print('total', order_total(orders))\n")
    assert losses(old, new, "extract the sum into a helper") == []


def test_a_function_moved_to_another_file_of_the_edit_is_not_lost(ws):
    (ws.root / "a.py").write_text("def keep():\n    return 1\n\n\ndef double(x):\n    return x * 2\n")
    (ws.root / "util.py").write_text("X = 1\n")
    moved = "def double(x):\n    return x * 2\n"
    answer = block("a.py", moved, "") + block("util.py", "X = 1\n", "X = 1\n\n\n" + moved)
    files = [load_file(ws, "a.py"), load_file(ws, "util.py")]
    result = Coder(ScriptedClient([answer]), ws, search_cap=None).run(files, "put double in util.py", mode="blocks")
    assert result.status == "changed", result.errors
    # the same blocks with util.py left out of the edit: the function would vanish
    alone = ScriptedClient([answer.split("util.py")[0]] * 2)
    result = Coder(alone, ws, search_cap=None).run([files[0]], "put double in util.py", mode="blocks")
    assert result.status == "malformed" and "function `double`" in result.errors[0]


def test_a_module_constant_that_vanishes_is_lost_but_a_renamed_one_is_not():
    old = "import os\n\nVERSION = '1.0'\n\n\ndef f():\n    return os.sep\n"
    assert [loss.where() for loss in losses(old, old.replace("VERSION = '1.0'\n", ""))] == [
        "line 3 (assignment `VERSION`)"
    ]
    assert losses(old, old.replace("VERSION", "RELEASE")) == []
    assert losses(old, old.replace("import os\n", "")) == []  # imports: the names check's job


def test_a_renamed_and_rewritten_function_is_not_lost():
    old = "def f():\n    return 1\n"
    assert losses(old, "def g():\n    return 2\n") == []


def test_lines_named_by_the_instruction_may_go():
    old = "def f(x):\n    print(x)\n    log(x)\n    debug(x)\n    return x\n"
    new = "def f(x):\n    return x\n"
    assert [loss.where() for loss in losses(old, new)] == ["lines 2-4"]
    assert losses(old, new, "remove the print, log and debug calls") == []
    assert losses(old, new, "clean up f") == []  # a deletion inside the definition it names


def test_comments_and_docstrings_count_unless_the_instruction_is_about_them():
    old = 'def f():\n    """One.\n\n    Two.\n    Three.\n    """\n    # a\n    # b\n    # c\n    return 1\n'
    new = 'def f():\n    """One."""\n    return 1\n'
    assert [loss.where() for loss in losses(old, new, "add type hints")] == ["lines 4-9"]
    assert losses(old, new, "make the docstring one line and drop the comments") == []
    assert losses(old, new, "shorten f's docstring") == []


def test_review_of_a_new_file_checks_only_that_it_parses():
    assert review("new.py", None, "print(undefined_thing)\n", "add").errors == []
    assert "not valid Python" in review("new.py", None, "def (:\n", "add").errors[0]


# --------------------------------------------------------------------------- undefined names


def undefined(src: str) -> set[str]:
    return set(undefined_names(ast.parse(src))[0])


def test_undefined_names_scopes():
    assert undefined("def f():\n    return g()\n\ndef g():\n    return len([])\n") == set()
    assert undefined("def f():\n    return h()\n") == {"h"}
    # a class body's names are not visible in its methods
    assert undefined("class A:\n    x = 1\n    def m(self):\n        return x\n") == {"x"}
    # ... nor in its comprehensions, but for the first iterable
    assert undefined("class A:\n    x = 1\n    y = [x for _ in range(2)]\n") == {"x"}
    assert undefined("class A:\n    x = 1\n    y = [i for i in range(x)]\n") == set()
    assert undefined("[i for i in range(3)]\nprint(i)\n") == {"i"}
    assert undefined("if (n := 3):\n    print(n)\n[(m := i) for i in range(2)]\nprint(m)\n") == set()
    assert undefined("def f():\n    global G\n    G = 1\n\nprint(G)\n") == set()
    assert undefined("try:\n    pass\nexcept ValueError as e:\n    print(e)\n") == set()
    assert undefined("f = lambda a, *b, c=1, **d: (a, b, c, d)\n") == set()
    assert undefined("import os.path\nfrom x import y as z\nprint(os, z, __file__, __name__)\n") == set()
    assert undefined("from x import *\nprint(anything)\n") == set()
    assert undefined("def f(a: T = D) -> R:\n    return a\n") == {"T", "D", "R"}
    assert undefined("def outer():\n    v = 1\n    def inner():\n        return v\n    return inner\n") == set()
    assert undefined("del nothing\n") == {"nothing"}
    assert undefined("match 1:\n    case [a, *rest]:\n        print(a, rest)\n    case {'k': v, **kw}:\n"
                     "        print(v, kw)\n") == set()


def test_only_introduced_names_count():
    old = "print(injected)\n\ndef f():\n    return 1\n"
    assert python_problems("a.py", old, old.replace("return 1", "return 2")) == []
    problems = python_problems("a.py", old, old + "print(g())\n")
    assert problems == [
        "a.py line 5: `g` is not defined (nothing in the file defines or imports it):\n    5| print(g())"
    ]


def test_a_file_that_did_not_parse_before_is_not_blamed():
    assert python_problems("a.py", "def (:\n", "def (:\nx = 1\n") == []
