"""What the deep-mode agent is told, and how its replies are read.

A reply is a short thought and then one action, in one of two shapes:

- a tool call, Hermes-style (Qwen2.5-Coder was trained on it):
  `<tool_call>{"name": "read", "arguments": {"path": "calc.py"}}</tool_call>`;
- search/replace edit blocks, in the format of `edits.py` (code inside JSON strings is where small
  models fail, so edits never go through JSON). One tool call may follow the blocks; it runs after
  the edit applied (edit, then test, in one step).

Small models drift, so the reader is lenient where the meaning is unambiguous (tool-name aliases,
`parameters` for `arguments`, arguments as a JSON string, a missing `</tool_call>` at the end of
the reply, a lone ```bash block as a `run`), and loud everywhere else: a reply it cannot read
raises `ActionError`, whose message goes back to the model as the observation and says exactly
what to write instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pairline.assistant.edits import DIVIDER, HEAD, TAIL, EditBlock, parse_blocks
from pairline.errors import PairlineError

TOOLS = ("read", "list", "search", "edit", "run", "test", "done")
# where the engine may stop a reply: the end of the first tool call, or the model starting to
# invent the tool's answer itself
STOPS = ("</tool_call>", "<tool_response>")

_ALIASES = {
    "read_file": "read", "open": "read", "cat": "read", "view": "read", "open_file": "read",
    "ls": "list", "list_files": "list", "list_dir": "list", "find": "list",
    "grep": "search", "search_files": "search", "find_in_files": "search", "search_code": "search",
    "bash": "run", "shell": "run", "exec": "run", "execute": "run", "run_command": "run", "command": "run",
    "run_tests": "test", "tests": "test", "pytest": "test", "run_test": "test",
    "finish": "done", "submit": "done", "stop": "done", "final_answer": "done", "complete": "done",
    "search/replace": "edit", "search_replace": "edit", "replace": "edit", "str_replace": "edit",
    "edit_file": "edit", "apply_edit": "edit", "modify": "edit", "replace_in_file": "edit",
}
# argument names small models use instead of ours
_ARG_ALIASES = {
    "read": {"path": ("path", "file", "filename", "file_path", "name"), "start": ("start", "start_line", "line"),
             "end": ("end", "end_line")},
    "list": {"path": ("path", "dir", "directory", "folder")},
    "search": {"pattern": ("pattern", "query", "regex", "text", "term"), "path": ("path", "dir", "directory")},
    "run": {"command": ("command", "cmd", "bash", "shell", "code", "script")},
    "test": {"args": ("args", "path", "file", "tests", "target")},
    "done": {"summary": ("summary", "message", "result", "text", "answer")},
    "edit": {"path": ("path", "file", "filename", "file_path"),
             "search": ("search", "old", "old_str", "old_text", "find", "original", "before"),
             "replace": ("replace", "new", "new_str", "new_text", "replacement", "after", "content")},
}
_REQUIRED = {"read": "path", "search": "pattern", "run": "command", "edit": "path"}


def tool_names(tool: str) -> list[str]:
    """The names the reader takes for `tool`: its own first, then its aliases."""
    return [tool] + [alias for alias, t in _ALIASES.items() if t == tool]


def arg_names(tool: str, arg: str) -> tuple[str, ...]:
    """The keys the reader takes for `tool`'s argument `arg` (ours first)."""
    return _ARG_ALIASES[tool][arg]
_EXAMPLE_ARGS = {"read": '{"path": "app.py"}', "search": '{"pattern": "def main"}',
                 "run": '{"command": "python app.py"}',
                 "edit": '{"path": "app.py", "search": "    return 1", "replace": "    return 2"}'}

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(</tool_call>|$)", re.S)
_FENCED_SHELL = re.compile(r"```(?:bash|sh|shell|console)[ \t]*\n(.*?)```", re.S)
_JSON_NAME = re.compile(r"\{\s*\"(?:name|tool)\"\s*:")


class ActionError(PairlineError):
    """A reply with no readable action; the message is written for the model."""


@dataclass(slots=True)
class Action:
    name: str  # one of TOOLS, or "edit"
    args: dict = field(default_factory=dict)
    blocks: list[EditBlock] = field(default_factory=list)  # for "edit"
    malformed: list[str] = field(default_factory=list)  # edit blocks that did not parse, for the model
    then: Action | None = None  # a tool call written after the edit blocks
    end: int = 0  # where the action ends in the reply: what follows is dropped from the history
    notes: list[str] = field(default_factory=list)  # told to the model with the result

    def describe(self) -> str:
        """One line for a log: `read calc.py`, `run pytest -q`, `edit calc.py`."""
        if self.name == "edit":
            paths = dict.fromkeys(b.path or "?" for b in self.blocks)
            shown = f"edit {', '.join(paths)}"
            return f"{shown}, then {self.then.describe()}" if self.then else shown
        main = next(iter(self.args.values()), "") if self.args else ""
        return f"{self.name} {main}".strip() if isinstance(main, str) else self.name


def no_action_message() -> str:
    return (
        "No action found in your reply. Reply with exactly one action: a tool call such as\n"
        '<tool_call>\n{"name": "test", "arguments": {}}\n</tool_call>\n'
        f"(tools: {', '.join(TOOLS)}), or search/replace edit blocks."
    )


def _tool_from_json(raw: str) -> tuple[str, dict]:
    """(name, arguments) from the JSON of a tool call, with the usual slips of small models."""
    name, args, _ = _tool_json(raw)
    return name, args


def _tool_json(raw: str) -> tuple[str, dict, int]:
    """(name, arguments, where the object ends in `raw`)."""
    text = raw
    start = text.find("{")
    if start < 0:
        raise ActionError(f"the tool call has no JSON object: {raw[:200]!r}. Write it as\n"
                          '<tool_call>\n{"name": "TOOL", "arguments": {...}}\n</tool_call>')
    try:
        obj, length = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        raise ActionError(f"the tool call is not valid JSON ({err.msg} at character {err.pos + 1}): "
                          f"{text[start:start + 200]!r}. Write it as\n"
                          '<tool_call>\n{"name": "TOOL", "arguments": {...}}\n</tool_call>') from None
    if not isinstance(obj, dict):
        raise ActionError('the tool call must be a JSON object: {"name": "TOOL", "arguments": {...}}')
    name = obj.get("name", obj.get("tool", obj.get("function")))
    args = obj.get("arguments", obj.get("parameters", obj.get("args", {})))
    if isinstance(args, str):  # arguments double-encoded as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            args = {"_": args}
    if not isinstance(name, str) or not name.strip():
        raise ActionError('the tool call has no "name"; write {"name": "TOOL", "arguments": {...}} '
                          f"with TOOL one of {', '.join(TOOLS)}")
    if not isinstance(args, dict):
        raise ActionError(f'the "arguments" of {name} must be a JSON object, got {json.dumps(args)[:80]}')
    return name, args, start + length


def make_action(name: str, args: dict) -> Action:
    """Check and normalise a tool call: a known tool (or an alias), its arguments by our names."""
    key = name.strip().lower().replace("-", "_")
    tool = key if key in TOOLS else _ALIASES.get(key)
    if tool is None:
        raise ActionError(f"unknown tool {name!r}; the tools are {', '.join(TOOLS)} "
                          "(to change a file, write search/replace blocks instead of a tool call)")
    wanted = _ARG_ALIASES[tool]
    out: dict = {}
    for ours, theirs in wanted.items():
        for k in theirs:
            if k in args and args[k] is not None:
                out[ours] = args[k]
                break
    if "_" in args and len(wanted) == 1:  # a bare string where an object was due
        out.setdefault(next(iter(wanted)), args["_"])
    need = _REQUIRED.get(tool)
    if need and not str(out.get(need, "")).strip():
        raise ActionError(f'{tool} needs "{need}", e.g. <tool_call>\n{{"name": "{tool}", "arguments": '
                          f"{_EXAMPLE_ARGS[tool]}}}\n</tool_call>")
    for k in ("start", "end"):
        if k in out:
            try:
                out[k] = int(out[k])
            except (TypeError, ValueError):
                raise ActionError(f'read: "{k}" must be a line number, got {out[k]!r}') from None
    for k, v in list(out.items()):
        if k not in ("start", "end") and not isinstance(v, str):
            out[k] = " ".join(map(str, v)) if isinstance(v, list) else str(v)
    if tool == "edit":
        # an edit as a tool call (the 1.5B model asks for one by itself): one search/replace block
        search, replace = out.get("search", ""), out.get("replace", "")
        block = EditBlock(out["path"], _lines(search), _lines(replace))
        return Action("edit", {"path": out["path"]}, blocks=[block])
    return Action(tool, out)


def _lines(text: str) -> list[str]:
    return text.removesuffix("\n").split("\n") if text else []


_PYTEST_LINE = re.compile(r"^\s*(?:\$\s*)?(?:python3? -m )?pytest\b[^\n]*$", re.M)


def _test_line(text: str, test_cmd: str | None) -> re.Match | None:
    """A line that is just the test command (or a pytest command), as small models write it when
    they mean "run the tests" (measured: the 1.5B model, right after its edit)."""
    if test_cmd:
        m = re.search(rf"^\s*(?:\$\s*)?{re.escape(test_cmd.strip())}\s*$", text, re.M)
        if m:
            return m
    return _PYTEST_LINE.search(text)


def is_test_command(command: str, test_cmd: str | None) -> bool:
    """A command that is just the test command or a pytest command, one line, nothing chained."""
    line = command.strip()
    if not line or "\n" in line or any(c in line for c in ";&|<>`$("):
        return False
    m = _test_line(line, test_cmd)
    return m is not None and m.group(0).strip() == line


def parse_reply(text: str, test_cmd: str | None = None) -> Action:
    """The action in a model's reply; raises ActionError (for the model) when there is none."""
    calls = list(_TOOL_CALL.finditer(text))
    first_call = calls[0] if calls else None
    # blocks count only before the first tool call (a tool call ends the action)
    edit_part = text[: first_call.start()] if first_call else text
    action: Action | None = None
    if re.search(r"<{5,9}\s*SEARCH", edit_part, re.I):
        parser = parse_blocks(edit_part)
        if parser.blocks or parser.malformed:
            end = _blocks_end(edit_part)
            action = Action("edit", blocks=list(parser.blocks), end=end,
                            malformed=[f"{m.message} (line {m.line} of your reply)" for m in parser.malformed])
    if first_call is not None:
        name, args = _tool_from_json(first_call.group(1))
        call = make_action(name, args)
        call.end = first_call.end()
        if len(calls) > 1:
            call.notes.append(f"Only your first tool call was run ({len(calls)} were written): one action per reply.")
        if action is not None:
            if not action.blocks:
                raise ActionError(_malformed_message(action.malformed))
            action.then, action.end = call, call.end
            return action
        return call
    if action is not None:
        if not action.blocks:
            raise ActionError(_malformed_message(action.malformed))
        after = _test_line(text[action.end:], test_cmd)
        if after is not None and not _JSON_NAME.search(text[action.end:]):
            action.then = Action("test", {}, end=action.end + after.end())
            action.then.notes.append(f"Ran your line `{after.group(0).strip()}` as the test tool.")
            action.end = action.then.end
        return action
    # a tool call as a bare JSON object, usually in a ```json block: Qwen2.5-Coder-1.5B writes it so
    # when left to itself (measured), so it is a form of its own, not a slip
    m = _JSON_NAME.search(text)
    if m:
        name, args, end = _tool_json(text[m.start():])
        call = make_action(name, args)
        end += m.start()
        fence = re.match(r"\s*```", text[end:])
        call.end = end + (fence.end() if fence else 0)
        return call
    # a lone shell block
    shells = _FENCED_SHELL.findall(text)
    if len(shells) == 1 and shells[0].strip():
        command = "\n".join(line.removeprefix("$ ") for line in shells[0].strip().splitlines())
        call = Action("run", {"command": command}, end=len(text))
        call.notes.append('Ran your ```bash block as {"name": "run"}; next time use a <tool_call>.')
        return call
    if len(shells) > 1:
        raise ActionError(f"your reply has {len(shells)} shell blocks and no tool call; one action per reply. "
                          + no_action_message())
    line = _test_line(text, test_cmd)
    if line is not None:
        call = Action("test", {}, end=line.end())
        call.notes.append(f'Ran your line `{line.group(0).strip()}` as {{"name": "test"}}; next time use a tool call.')
        return call
    raise ActionError(no_action_message())


def _blocks_end(text: str) -> int:
    """The end of the last block's REPLACE line and its closing fence."""
    last = max((m.end() for m in re.finditer(r"^\s*>{5,9}\s*REPLACE\s*$", text, re.I | re.M)), default=len(text))
    fence = re.match(r"\s*\n\s*(```|~~~)[^\n]*", text[last:])
    return last + (fence.end() if fence else 0)


def _malformed_message(problems: list[str]) -> str:
    listed = "\n".join(f"- {p}" for p in problems)
    return (f"your edit blocks are malformed:\n{listed}\nEach block is: the file path on its own line, "
            f"then ```, {HEAD}, the lines to find, {DIVIDER}, the new lines, {TAIL}, ```.")


def kept_text(text: str, action: Action | None) -> str:
    """The reply as the history keeps it: up to the end of its action (a model that goes on
    inventing the tool's answer would otherwise read its own invention back as fact)."""
    if action is None:
        return text[:2000]
    kept = text[: action.end].rstrip()
    if action.end and _TOOL_CALL.search(kept) and not kept.endswith("</tool_call>"):
        kept += "\n</tool_call>"  # cut by the stop string: close it as the model would have
    return kept


_JSON_BLOCK = re.compile(r"```json[ \t]*\n\s*\{.*?\}\s*\n\s*```", re.S)


def stop_point(text: str, test_cmd: str | None = None) -> bool:
    """True once a streamed reply has its action and anything further is waste, or it loops, or it
    has gone on for 40 lines with no action begun (the model is writing results it should wait for)."""
    if any(s in text for s in STOPS) or looping(text):
        return True
    editing = "<<<<<<<" in text
    if "```json" in text and not editing and _JSON_BLOCK.search(text):
        return True
    complete = text[: text.rfind("\n") + 1]
    if not editing and "<tool_call>" not in complete and "{" not in complete and _test_line(complete, test_cmd):
        return True  # the test command as a line: parse_reply takes it as the test tool
    return text.count("\n") >= 40 and not editing and "<tool_call>" not in text and "```json" not in text


# How a reply with a thought and no action goes on (the agent's nudge): the opening of a tool call in
# the form the 1.5B model completes reliably (after an opened `<tool_call>` it ends its turn at once).
NUDGE = '```json\n{"name": "'


def looping(text: str) -> bool:
    """The reply's last lines repeat: a block of 1-3 lines written four times over, or of 4-30 lines
    (two of them not blank) written twice. A small model that invents a tool's result tends to go on
    inventing the next one, forever (the 1.5B model's loop after an edit was 11 lines long)."""
    # complete lines only; not just when the text ends with a newline (a token often carries the
    # newline in front of the next line's text)
    lines = [x.strip() for x in text.split("\n")[:-1]]
    for p in range(1, 31):
        times = 4 if p <= 3 else 2
        if len(lines) < p * times:
            break
        tail = lines[-times * p:]
        block = tail[:p]
        # a real block of text, not closing braces or fences (code repeats those legitimately)
        if sum(len(x) for x in block) < 10 or sum(1 for x in block if x) < min(2, p):
            continue
        if all(tail[k * p:(k + 1) * p] == block for k in range(times)):
            return True
    return False


# --------------------------------------------------------------------------- the prompt

# The tools, listed one a line in the system prompt. (Qwen2.5's own template lists JSON signatures
# inside <tools></tools>; with that layout the 1.5B model only ever called tools and never edited.)
_SIGNATURES = [
    ("read", "Show a file's lines (up to 250 at a time).",
     {"path": "string", "start": "integer", "end": "integer"}, ["path"]),
    ("list", "List the files under a folder.", {"path": "string"}, []),
    ("search", "Find the lines that match a regular expression in the files.",
     {"pattern": "string", "path": "string"}, ["pattern"]),
    ("edit", "Replace the text `search` in a file by `replace` (empty search: a new file).",
     {"path": "string", "search": "string", "replace": "string"}, ["path"]),
    ("run", "Run a shell command in the repository (no network).", {"command": "string"}, ["command"]),
    ("test", "Run the tests: `{test_cmd}` (args: an optional test file).", {"args": "string"}, []),
    ("done", "Finish: say what you changed.", {"summary": "string"}, ["summary"]),
]


def _tool_lines(test_cmd: str) -> str:
    lines = []
    for name, desc, props, required in _SIGNATURES:
        args = ", ".join(f'"{k}"' + ("" if k in required else " (optional)") for k in props)
        lines.append(f"- {name} {{{args}}}: {desc.format(test_cmd=test_cmd)}" if args else
                     f"- {name} {{}}: {desc.format(test_cmd=test_cmd)}")
    return "\n".join(lines)


SYSTEM = """\
You are a coding agent working in a repository. You work in steps. In each reply write one short \
sentence of thought, then exactly ONE action. Then you get the action's result and reply again. \
Never write a tool's result yourself.

A tool call looks like this:
<tool_call>
{{"name": "read", "arguments": {{"path": "src/util.py"}}}}
</tool_call>

Tools:
{tools}

For a bigger change, the action can be search/replace blocks instead of a tool call:
path/to/file.py
```python
{head}
lines copied exactly from the file
{divider}
the new lines
{tail}
```
An empty SEARCH part creates a new file. One tool call may follow the blocks (for example test); it \
runs after the edit is applied.

Rules:
- Read a file before you edit it, unless it was shown to you. Copy the SEARCH lines exactly.
- Keep each change small. After an edit, run the tests.
- When the task is done, call done."""

# One worked exchange, on a file unlike any real one: small models follow an example far better
# than a rule (docs/agent.md has what the 1.5B model did with and without it). It sits right after
# the system prompt, so its KV is computed once per run.
_EXAMPLE_TASK = "Task: `perimeter` in shapes.py returns the wrong value; make tests pass."
_EXAMPLE = [
    ("user", _EXAMPLE_TASK),
    ("assistant", 'I will read the file first.\n<tool_call>\n{"name": "read", "arguments": {"path": "shapes.py"}}'
                  "\n</tool_call>"),
    ("user", "<tool_response>\nshapes.py (lines 1-2 of 2):\ndef perimeter(w, h):\n    return w + h\n"
             "</tool_response>"),
    ("assistant", f"The sum must be doubled.\nshapes.py\n```python\n{HEAD}\n    return w + h\n{DIVIDER}\n"
                  f"    return 2 * (w + h)\n{TAIL}\n```\n<tool_call>\n{{\"name\": \"test\", \"arguments\": {{}}}}"
                  "\n</tool_call>"),
    ("user", "<tool_response>\nedit applied to shapes.py\n`pytest -q` exited 0\n3 passed\n</tool_response>"),
    ("assistant", 'The tests pass.\n<tool_call>\n{"name": "done", "arguments": {"summary": "perimeter now '
                  'returns 2 * (w + h)."}}\n</tool_call>'),
]


def system_prompt(test_cmd: str) -> str:
    return SYSTEM.format(tools=_tool_lines(test_cmd), head=HEAD, divider=DIVIDER, tail=TAIL)


def base_messages(test_cmd: str, example: bool = True) -> list[dict]:
    """The fixed prefix of every request of a run: the system prompt and the worked example."""
    messages = [{"role": "system", "content": system_prompt(test_cmd)}]
    if example:
        messages += [{"role": r, "content": c} for r, c in _EXAMPLE]
    return messages


def observation(body: str, steps_left: int) -> str:
    """A tool's result as the user turn that follows the action."""
    return f"<tool_response>\n{body.rstrip()}\n</tool_response>\n({steps_left} steps left)"


def truncate_middle(text: str, limit: int, head: float = 0.35) -> str:
    """`text` cut to about `limit` characters: its start and its end (a test run's verdict is at
    the end), with what was cut said in the middle."""
    if len(text) <= limit:
        return text
    a = int(limit * head)
    b = limit - a
    cut = len(text) - a - b
    return f"{text[:a]}\n[... {cut} characters cut ...]\n{text[-b:]}"
