"""Deep mode's action format: what a reply's action is, and the errors that go back to the model."""

from __future__ import annotations

import pytest

from pairline.assistant.agent_format import ActionError, kept_text, parse_reply, stop_point
from pairline.assistant.edits import DIVIDER, HEAD, TAIL

BLOCK = f"calc.py\n```python\n{HEAD}\n    return a - b\n{DIVIDER}\n    return a + b\n{TAIL}\n```\n"


def test_hermes_tool_call():
    text = 'Look.\n<tool_call>\n{"name": "read", "arguments": {"path": "a.py", "start": "3"}}\n</tool_call>\nbla'
    a = parse_reply(text)
    assert (a.name, a.args) == ("read", {"path": "a.py", "start": 3})
    assert kept_text(text, a) == text[: text.index("</tool_call>") + len("</tool_call>")]


def test_two_calls_take_the_first_and_say_so():
    a = parse_reply('<tool_call>{"name": "list", "arguments": {}}</tool_call><tool_call>{"name": "test"}</tool_call>')
    assert a.name == "list" and "Only your first tool call was run" in a.notes[0]


def test_cut_by_the_stop_string_is_closed_in_the_history():
    text = '<tool_call>\n{"name": "run", "arguments": {"command": "ls"}}\n'
    a = parse_reply(text)
    assert a.args == {"command": "ls"} and kept_text(text, a).endswith("</tool_call>")


def test_edit_then_tool_call():
    a = parse_reply(BLOCK + '<tool_call>{"name": "run_tests", "arguments": {}}</tool_call>')
    assert a.name == "edit" and len(a.blocks) == 1 and a.then.name == "test"
    assert a.describe() == "edit calc.py, then test"


def test_aliases_and_string_arguments():
    a = parse_reply('<tool_call>{"name": "bash", "arguments": "{\\"cmd\\": \\"ls -la\\"}"}</tool_call>')
    assert (a.name, a.args) == ("run", {"command": "ls -la"})
    assert parse_reply('<tool_call>{"name": "finish", "parameters": {"message": "ok"}}</tool_call>').args == {
        "summary": "ok"}


@pytest.mark.parametrize("text, message", [
    ("Sure, I will fix it.", "No action found"),
    ('<tool_call>{"name": "read", "arguments": {"path": "a.py"</tool_call>', "not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'has no "name"'),
    ('<tool_call>{"name": "delete", "arguments": {}}</tool_call>', "unknown tool 'delete'"),
    ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', 'search needs "pattern"'),
    ('<tool_call>{"name": "read", "arguments": {"path": "a", "start": "x"}}</tool_call>', "must be a line number"),
    (f"calc.py\n```python\n{HEAD}\nx\n```", "malformed"),
    ("```bash\nls\n```\n```bash\npwd\n```", "2 shell blocks"),
])
def test_errors_say_what_to_write(text, message):
    with pytest.raises(ActionError, match=message):
        parse_reply(text)


def test_stop_point():
    assert stop_point('<tool_call>{"name": "list"}</tool_call>')
    assert stop_point("edit done\n<tool_response>\nfake")
    assert not stop_point('<tool_call>{"name": "list"')


def test_looping():
    from pairline.assistant.agent_format import looping

    assert looping("I will run the tests.\n" + "$ pytest\n3 passed\n" * 5)
    assert looping("3 tests passed\n" * 4) and not looping("3 tests passed\n" * 3)
    assert not looping("    }\n" * 12)  # closing braces are code, not a loop
    eleven = "".join(f"line {i}\n" for i in range(11))
    assert looping("start\n" + eleven * 2) and not looping("start\n" + eleven + eleven[:-8])
    assert not looping("".join(f"line {i}\n" for i in range(30)))
    assert not looping("\n" * 20)  # blank lines are not a loop
    five = "The tests pass.\npython -m pytest -q\n```python\n3 passed\n```\n"
    assert looping("I will run the tests.\n" + five * 3 + "The")  # mid-line, as tokens arrive


def test_json_block_form_and_its_stop():
    text = 'Reading.\n```json\n{"name": "read", "arguments": {"path": "a.py"}}\n```\nThe file shows'
    a = parse_reply(text)
    assert (a.name, a.args, a.notes) == ("read", {"path": "a.py"}, [])
    assert kept_text(text, a).endswith('"a.py"}}\n```')
    assert stop_point(text[: text.index("The file")]) and not stop_point(text[:30])


def test_edit_as_a_tool_call():
    a = parse_reply('```json\n{"name": "search/replace", "arguments": {"path": "calc.py", '
                    '"old_str": "    return a - b\\n", "new_str": "    return a + b"}}\n```')
    assert a.name == "edit" and a.blocks[0].path == "calc.py"
    assert a.blocks[0].search == ["    return a - b"] and a.blocks[0].replace == ["    return a + b"]
    with pytest.raises(ActionError, match='edit needs "path"'):
        parse_reply('<tool_call>{"name": "edit", "arguments": {"search": "x"}}</tool_call>')


def test_the_test_command_as_a_line_is_the_test_tool():
    cmd = "python -m pytest -q -p no:cacheprovider"
    text = f"I will run the tests.\n{cmd}\n3 passed\n"
    assert stop_point(text[: text.index("3 passed")], cmd)
    a = parse_reply(text, cmd)
    assert a.name == "test" and "as {\"name\": \"test\"}" in a.notes[0]
    assert kept_text(text, a) == f"I will run the tests.\n{cmd}"
    b = parse_reply(BLOCK + "$ pytest -q tests/test_calc.py\n", cmd)
    assert b.name == "edit" and b.then.name == "test"
    assert stop_point("I wonder.\n" + "".join(f"{i} passed\n" for i in range(41)))  # 40 lines, no action
