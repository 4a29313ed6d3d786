"""Deep mode's repeats: the looks whose result the model already has are masked out of its next reply.

A small model that has what it needs often asks for it again: Qwen2.5-Coder-1.5B read test_stats.py
18 times in a row, each reply starting "I will read the file first." (issue 21), and a loop warning
in the observation did not stop it. So an action whose result cannot have changed since the model
last saw it is not offered again:

- `Repeats` keeps the looks (read, list, search, test) whose result the model has. A look stays
  *fresh* until something could change its result: for a read, an edit of that file; for a listing,
  a search or the tests, any applied edit; for all of them, a command that may write (anything but a
  plain `cat`, `ls`, `grep`, ... or a test command). It also goes stale when its result leaves the
  context (the agent condensed that observation: then the model no longer has it).
- `Repeats.grammar` turns the fresh looks into a grammar for the next reply (engine/constraint.py,
  llguidance): the reply stays free text, except that a tool call repeating a fresh look cannot be
  written. The mask bites on the token that decides, not on the last one: the tool's name when every
  call of it would be a repeat (every file read and unchanged; the tests run and nothing edited
  since), else the first characters of the path that no file the model may still read shares.
  It covers the shapes the models write (a `<tool_call>` or ```json object starting a line, a line
  that is the test command, `cat FILE`) with the names and argument keys the reader takes, and
  nothing after an edit block in the same reply (the call that follows it sees the edited files).
- Where a client cannot decode under a grammar, or the model wrote a repeat in a shape the grammar
  does not cover, the agent refuses the repeat itself (`refusal`): it is not run, and the
  observation says the model has the result and what to do instead.

An edit that failed is not masked, though its repeat fails the same way: a block is sure to be the
same one only at its closing marker, and a mask that bites there leaves no good way out (measured on
Qwen2.5-Coder-1.5B: it wrote `>>>>>>>_REPLACE` instead, three steps running). The agent says "You did
exactly this" instead (agent.py).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from pairline.assistant import agent_format as fmt
from pairline.engine.constraint import Grammar

# commands that only look: they change no file, so they leave every fresh look fresh
_READ_ONLY = {"cat", "ls", "head", "tail", "wc", "grep", "rg", "find", "nl", "pwd", "tree", "file", "stat"}
_SHELL_OPS = re.compile(r"[;&|<>`$(){}\n]")


@dataclass(slots=True)
class Look:
    step: int  # where the model got the result (0: the first message)
    what: str  # for the refusal: "read calc.py", "the tests", "the file list"
    path: str | None = None  # a read's file
    whole: bool = False  # a read that showed the whole file; the whole repository's listing
    exit_code: int | None = None  # a test run's


def _words(command: str) -> list[str] | None:
    """A simple command's words, or None for anything with shell syntax beyond words."""
    if _SHELL_OPS.search(command):
        return None
    try:
        return shlex.split(command)
    except ValueError:
        return None


def read_only(command: str) -> bool:
    """A plain command that only looks (`cat a.py`, `ls`, `grep -n x *.py`): it changes no file."""
    words = _words(command)
    if not words or words[0] not in _READ_ONLY:
        return False
    return words[0] != "find" or not {"-delete", "-exec", "-execdir", "-ok", "-okdir", "-fprint"} & set(words)


def cat_paths(command: str) -> list[str] | None:
    """The files a plain `cat FILE...` shows (None for any other command)."""
    words = _words(command)
    if not words or words[0] != "cat" or len(words) < 2 or any(w.startswith("-") for w in words[1:]):
        return None
    return words[1:]


class Repeats:
    """One run's fresh looks. `resolve` names a path as the tools do (None: outside the repo)."""

    def __init__(self, test_cmd: str, resolve: Callable[[str], str | None]):
        self.test_cmd = test_cmd.strip()
        self.resolve = resolve
        self.looks: dict[str, Look] = {}

    # ---------------------------------------------------------------- what an action is

    def _key(self, act: fmt.Action) -> str | None:
        a = act.args
        if act.name == "read":
            rel = self.resolve(a["path"])
            return f"read {rel} {a.get('start') or 1}-{a.get('end') or ''}" if rel else None
        if act.name == "list":
            rel = self.resolve(a.get("path") or ".")
            return f"list {rel}" if rel else None
        if act.name == "search":
            return f"search {self.resolve(a.get('path') or '.') or a.get('path')} {a['pattern']}"
        if act.name == "test":
            return f"test {a.get('args', '').strip()}".strip()
        if act.name == "run" and fmt.is_test_command(a["command"], self.test_cmd):
            command = a["command"].strip()
            if command == self.test_cmd or command.startswith(self.test_cmd + " "):
                return f"test {command[len(self.test_cmd):].strip()}".strip()
            return f"test-run {command}"
        return None

    # ---------------------------------------------------------------- the harness's check

    def repeat_of(self, act: fmt.Action) -> Look | None:
        """The fresh look that `act` would repeat, if any."""
        if act.name == "run":
            paths = cat_paths(act.args["command"])
            if paths is not None:
                looks = [self._whole_file(self.resolve(p)) for p in paths]
                return looks[0] if looks and all(looks) else None
        key = self._key(act)
        if key is None:
            return None
        if act.name == "read":
            whole = self._whole_file(self.resolve(act.args["path"]))
            if whole is not None:
                return whole
        if key.startswith("test") and "test" in self.looks:
            return self.looks["test"]  # the whole suite ran, and nothing changed since
        if act.name == "list" and "list ." in self.looks and self.looks["list ."].whole:
            return self.looks["list ."]  # every file is in the listing the model has
        return self.looks.get(key)

    def _whole_file(self, rel: str | None) -> Look | None:
        look = self.looks.get(f"file {rel}") if rel else None
        return look if look is not None and look.whole else None

    def refusal(self, look: Look) -> str:
        """What the model is told instead of the repeated action's result."""
        if look.what == "the tests":
            when = "before your first step" if look.step == 0 else f"at step {look.step}"
            verdict = ("they passed" if look.exit_code == 0 else
                       f"exit {look.exit_code}" if look.exit_code is not None else "they ran")
            nxt = ("If the task is done, call done; else edit the code first (search/replace blocks)."
                   if look.exit_code == 0 else "Edit the code first (search/replace blocks), then run them.")
            return (f"Not run: the tests ran {when} ({verdict}) and no file changed since, so they would give "
                    f"the same result, which you have. {nxt}")
        when = "in the first message" if look.step == 0 else f"at step {look.step}"
        return (f"Not run: you already have {look.what} ({when}), and nothing changed it since: the result "
                "would be the same. Do not ask for it again. Act on it: edit a file with search/replace "
                "blocks, run the tests, or call done.")

    # ---------------------------------------------------------------- what happened

    def record(self, act: fmt.Action, step: int, data: dict, ok: bool) -> None:
        """After `act` ran (it was not refused) at `step`: what the model now has, and what may have
        changed since it saw it."""
        if act.name == "run":
            command = act.args["command"]
            if not (read_only(command) or fmt.is_test_command(command, self.test_cmd)):
                self.looks.clear()  # a command may have changed anything
                return
        key = self._key(act)
        if key is None:
            return
        if key.startswith("test"):
            if data.get("exit_code") is not None and not data.get("timed_out") and not data.get("cancelled"):
                self.seen_tests(step, data["exit_code"], key)
            return
        if act.name == "read":
            rel = self.resolve(act.args["path"])
            if ok and data.get("path"):
                first, last = data.get("lines") or (0, 0)
                n = data.get("of", 0)
                self.seen_file(data["path"], step, whole=n == 0 or (first <= 1 and last >= n))
                if n and not (first <= 1 and last >= n):
                    self.looks.setdefault(key, Look(step, f"lines {first}-{last} of {rel}", path=rel))
            else:
                self.looks.setdefault(key, Look(step, f"the answer to read {act.args['path']}", path=rel))
        elif act.name == "list":
            whole = key == "list ." and ok
            self.looks.setdefault(key, Look(step, "the file list" if whole else f"the list of {act.args.get('path')}",
                                            whole=whole))
        elif act.name == "search":
            self.looks.setdefault(key, Look(step, f"the matches for {act.args['pattern']!r}"))

    def seen_file(self, rel: str, step: int, whole: bool = True) -> None:
        """The model was shown `rel` (a read, the first message, an edit refused until it read)."""
        old = self.looks.get(f"file {rel}")
        if old is None or (whole and not old.whole):
            self.looks[f"file {rel}"] = Look(step, rel, path=rel, whole=whole)

    def seen_listing(self, step: int, complete: bool) -> None:
        """The first message listed the repository's files (all of them where `complete`)."""
        self.looks["list ."] = Look(step, "the file list", whole=complete)

    def seen_tests(self, step: int, exit_code: int | None, key: str = "test") -> None:
        self.looks[key] = Look(step, "the tests" if key == "test" else f"the result of `{key}`", exit_code=exit_code)

    def edited(self, paths: list[str]) -> None:
        """Files were written: what the model saw of them, every listing and search, and the tests are
        stale."""
        changed = set(paths)
        self.looks = {k: v for k, v in self.looks.items()
                      if v.path not in changed and not k.startswith(("list ", "search ", "test"))}

    def forget(self, steps: set[int]) -> None:
        """Those steps' results left the context (condensed): the model no longer has them."""
        if steps:
            self.looks = {k: v for k, v in self.looks.items() if v.step not in steps}

    # ---------------------------------------------------------------- the mask

    def masked(self, files: list[str]) -> tuple[list[str], list[str], list[str]]:
        """(patterns for a tool call, patterns for a line, what they mask in words) over `files`, the
        repository's files now. Patterns are regexes (in the subset both Python's re and Rust's regex
        crate read): what may not start a JSON tool call, and what a line may not be (from its start
        to the end of the reply)."""
        whole = sorted(k[5:] for k, v in self.looks.items() if k.startswith("file ") and v.whole)
        calls: list[str] = []
        lines: list[str] = []
        said: list[str] = []
        if whole:
            fresh = set(whole)
            others = [f for f in files if f not in fresh]
            prefixes = sorted({_distinct_prefix(_js(p), [_js(o) for o in others]) for p in whole})
            paths = "(?:\\./)?(?:" + "|".join(_esc(p) for p in prefixes) + ")"
            if not others:
                calls.append(_names("read"))  # every file is read and unchanged: no read at all
                said.append("read (every file)")
            else:
                calls.append(_exact("read") + _args("read", "path") + paths)
                said.append("read " + ", ".join(whole))
            calls.append(_exact("run") + _args("run", "command") + "cat " + paths)
            lines.append("(?:\\$ ?)?cat " + paths + "[\\s\\S]*")
        listing = self.looks.get("list .")
        if listing is not None and listing.whole:
            calls.append(_names("list"))
            said.append("list")
        if "test" in self.looks:
            calls.append(_names("test"))
            runs = ["(?:python3? -m )?pytest"]
            if not re.match(r"(?:python3? -m )?pytest\b", self.test_cmd):
                runs.append(_esc(_js(self.test_cmd)))
            calls.append(_exact("run") + _args("run", "command") + "(?:" + "|".join(runs) + ")")
            test_lines = ["(?:python3? -m )?pytest"]
            if not re.match(r"(?:python3? -m )?pytest\b", self.test_cmd):
                test_lines.append(_esc(self.test_cmd))
            # the reader takes such a line whatever follows the command's last word (even nothing:
            # the reply may end there), so only a word character may continue it
            lines.append("(?:\\$ ?)?(?:" + "|".join(test_lines) + ")(?:[^A-Za-z0-9_][\\s\\S]*)?")
            said.append("test")
        return calls, lines, said

    def grammar(self, files: list[str], special_tokens: bool) -> tuple[Grammar | None, list[str]]:
        """The next reply's grammar (None: nothing to mask) and what it masks, in words.
        `special_tokens`: the model writes `<tool_call>` and `</tool_call>` as single special tokens
        (Qwen2.5), which a grammar must name to allow."""
        calls, lines, said = self.masked(files)
        if not calls and not lines:
            return None, []
        return action_grammar(calls, lines, special_tokens), said


# a tool call starts a line (after a `<tool_call>` written as text too): `{"name": "` and the like
_CALL = '\\{\\s*"(?:name|tool|function)"\\s*:\\s*"'
# text with no edit block begun (no run of five '<', where the reader sees a SEARCH marker): once a
# reply edits, the call after the blocks runs on the edited files, so nothing after them is masked
_NO_EDIT = "[^<]*(?:<{1,4}[^<]+)*<{0,4}"


def action_grammar(calls: list[str], lines: list[str], special_tokens: bool) -> Grammar:
    """A reply that is any text, except that no tool call starts with one of `calls` and no line is
    one of `lines` (each says what may follow it), before an edit block begins. One negated lexeme
    (llguidance builds it lazily: a few ms a step, the mask itself only where the model disagrees)."""
    items = [_CALL + "(?:" + "|".join(calls) + ")[\\s\\S]*"] if calls else []
    items += lines
    forbidden = (f"(?:{_NO_EDIT}(?:\\n|>[ \\t]*))?(?:" + "|".join(items) + ")").replace("/", "\\/")
    if not special_tokens:
        return Grammar("lark", f"start: TEXT?\nTEXT: /[\\s\\S]+/ & ~/{forbidden}/\n")
    # A special token ends a text lexeme, and the next one starts afresh: so the text before the
    # first edit block (TEXT: masked, no block begun), the text in which it begins (EDIT: masked up
    # to the block) and everything after it (FREE) are lexemes of their own.
    return Grammar("lark", f"""start: (TEXT? special)* (TEXT | EDIT (special FREE?)*)?
special: <tool_call> | </tool_call>
TEXT: /[\\s\\S]+/ & /{_NO_EDIT}/ & ~/{forbidden}/
EDIT: /{_NO_EDIT}<<<<<[\\s\\S]*/ & ~/{forbidden}/
FREE: /[\\s\\S]+/
""")


def _names(tool: str) -> str:
    """Any name of `tool` as a tool call's name: its own as a prefix (so the mask bites on the name's
    first token), its aliases whole."""
    names = fmt.tool_names(tool)
    return "(?:" + "|".join([_esc(tool)] + [_esc(n) + '"' for n in names[1:] if not n.startswith(tool)]) + ")"


def _exact(tool: str) -> str:
    return "(?:" + "|".join(_esc(n) for n in fmt.tool_names(tool)) + ")"


def _args(tool: str, arg: str) -> str:
    """From the closing quote of the tool's name to the opening quote of the argument's value."""
    keys = "|".join(_esc(k) for k in fmt.arg_names(tool, arg))
    return f'"\\s*,\\s*"(?:arguments|parameters|args)"\\s*:\\s*\\{{\\s*"(?:{keys})"\\s*:\\s*"'


def _js(text: str) -> str:
    """`text` as it appears inside a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _esc(text: str) -> str:
    """A literal for both Python's re and Rust's regex: only their meta characters escaped."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$#&-~" else "\\n" if c == "\n" else c for c in text)


def _distinct_prefix(path: str, others: list[str]) -> str:
    """The shortest start of `path` that no path in `others` starts with; the whole path and its
    closing quote where another path extends it (`a.py` against `a.py.orig`)."""
    for k in range(1, len(path) + 1):
        head = path[:k]
        if not any(o.startswith(head) for o in others):
            return head
    return path + '"'
