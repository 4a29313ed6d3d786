"""The grammars that make an edit answer well-formed by construction (issue 14).

- `blocks_grammar`: search/replace blocks (edits.py's format) where every SEARCH part is a run of
  whole, consecutive lines of the file the block names, copied exactly. A block that matches
  nothing cannot be written; markers, fences and the rest of a line once it is the only one that
  fits are forced (appended without a model step).
- `rewrite_grammar`: the whole file in one fenced block and nothing else: no chatter after it, no
  fake fence inside it.

"A run of lines of this file" is what no stock grammar says, so it is written out here as rules:
one per line, `tail_i: line_i tail_{i+1}?` (linear in the file's length), and a SEARCH part
starts at any line with as many lines as make it match one place only (a lone `    return lo`
that appears twice cannot be a SEARCH part; with the line before it, it can). llguidance's Earley
parser keeps every start that still matches, so the model may begin a SEARCH anywhere and the
grammar follows it.
"""

from __future__ import annotations

import functools
import json

from pairline.assistant.delete import delete_targets
from pairline.assistant.edits import DELETE, DIVIDER, HEAD, RENAME, TAIL
from pairline.assistant.prompts import language_for
from pairline.assistant.rename import names_bound, new_names, rename_targets
from pairline.engine.constraint import Grammar

# A REPLACE line: anything but the closing marker (seven or more '>' at its start).
_REPLACE_LINE = r"/([^>\n][^\n]*|>{1,6}([^>\n][^\n]*)?)?\n/"


def _lit(text: str) -> str:
    """A Lark string literal for `text` (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)


def _lines(text: str) -> list[str]:
    """The file's lines as the model copies them, each ending in a newline."""
    return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(keepends=True)]


SEARCH_LONGEST = 40  # a start that needs more lines than this to be unique is no start at all


def unique_lengths(lines: list[str], longest: int = SEARCH_LONGEST) -> list[int | None]:
    """For each start line, how many lines from it a SEARCH part needs to match one place only
    (None: no run of up to `longest` lines from there is unique, e.g. a repeated tail of the
    file). Each start follows only the other places that still match it, so a file of distinct
    lines costs one pass."""
    at: dict[str, list[int]] = {}
    for j, line in enumerate(lines):
        at.setdefault(line, []).append(j)
    out: list[int | None] = []
    for i, line in enumerate(lines):
        others = [j for j in at[line] if j != i]
        k = 1
        while others and i + k < len(lines) and k < longest:
            others = [j for j in others if j + k < len(lines) and lines[j + k] == lines[i + k]]
            k += 1
        out.append(None if others else k)
    return out


@functools.lru_cache(maxsize=32)
def _search_rules(name: str, text: str) -> tuple[str, ...]:
    # the largest part of a blocks grammar, and the same for every turn on the same text (a few ms)
    return tuple(_runs(name, _lines(text)))


def warm(name: str, text: str) -> None:
    """Build now what every blocks grammar over this file (`text` as the model sees it) needs: a
    surface calls it when a file is opened, so that the first turn on it does not."""
    if text:
        _search_rules("search0", text)
    if name.endswith((".py", ".pyi")):
        names_bound(text)


def _runs(name: str, lines: list[str]) -> list[str]:
    """Rules for "consecutive lines of this file, from any line on, enough of them to match one
    place only": `name` is the start rule. `{name}_tail_i` is "lines i, i+1, ... for as long as
    the model likes"; a start at i takes its first unique-making lines as literals, then a tail."""
    need = unique_lengths(lines)
    starts = []
    for i, k in enumerate(need):
        if k is None:
            continue
        literals = " ".join(_lit(line) for line in lines[i : i + k])
        tail = f" {name}_tail_{i + k}?" if i + k < len(lines) else ""
        starts.append(f"({literals}{tail})")
    rules = [f"{name}: " + " | ".join(starts)]
    for i, line in enumerate(lines):
        nxt = f" {name}_tail_{i + 1}?" if i + 1 < len(lines) else ""
        rules.append(f"{name}_tail_{i}: {_lit(line)}{nxt}")
    return rules


def blocks_grammar(files: list[tuple[str, str | None]], instruction: str = "") -> Grammar:
    """Search/replace blocks over `files` ((name shown to the model, text as the model sees it,
    None for a file the edit creates: its SEARCH is empty)). The answer is one or more blocks,
    each naming one of the files, a blank line allowed between them; where the instruction asks
    for a rename, an item may instead be `RENAME old new` in a Python file, `old` one of the names
    the file binds that the instruction mentions (rename.rename_targets), and where it asks to
    delete something, `DELETE name` for the definitions it mentions (delete.delete_targets)."""
    rules: list[str] = []
    alternatives: list[str] = []
    for k, (name, text) in enumerate(files):
        opening = f"{name}\n```{language_for(name)}\n{HEAD}\n"
        divider, closing = f"{DIVIDER}\n", f"{TAIL}\n```\n"
        search = f" search{k}" if text else ""
        rules.append(f"file{k}: {_lit(opening)}{search} {_lit(divider)} replace {_lit(closing)}")
        if search:
            rules += _search_rules(f"search{k}", text)
        alternatives.append(f"file{k}")
        bound = rename_targets(instruction, text) if text and name.endswith((".py", ".pyi")) else []
        if bound:
            given = new_names(instruction, text)
            new = f"new{k}"
            rules.append(f"{new}: " + (" | ".join(_lit(n) for n in given) if given else "NEW_NAME"))
            # `RENAME old to new` too: Qwen2.5-Coder-0.5B, told "rename greet to welcome", wrote
            # "RENAME greet to", and a grammar without the "to" made that "towelcome"
            rules.append(f"rename{k}: {_lit(f'{name}{chr(10)}{RENAME} ')} old{k} \" \" (\"to \")? {new} \"\\n\"")
            rules.append(f"old{k}: " + " | ".join(_lit(b) for b in bound))
            alternatives.append(f"rename{k}")
        doomed = delete_targets(instruction, text) if text and name.endswith((".py", ".pyi")) else []
        if doomed:
            names = " | ".join(_lit(d) for d in doomed)
            rules.append(f"delete{k}: {_lit(f'{name}{chr(10)}{DELETE} ')} ({names}) " + '"\\n"')
            alternatives.append(f"delete{k}")
    head = [
        'start: block ("\\n"? block)*',
        "block: " + " | ".join(alternatives),
        "replace: REPLACE_LINE*",
        "NEW_NAME: /[A-Za-z_][A-Za-z0-9_]{0,63}/",
        f"REPLACE_LINE: {_REPLACE_LINE}",
    ]
    return Grammar("lark", "\n".join([*head, *rules]) + "\n")


def rewrite_grammar(name: str) -> Grammar:
    """A lazy rewrite's answer (region.py): code blocks only, each a region of the file rewritten,
    one after another, and nothing else: no line inside may start with a backquote, so a fence
    cannot be faked, and no chatter before, between or after them.

    A block may close wherever the model likes: what was written is a region, spliced into the
    untouched file. Measured on Qwen2.5-Coder-0.5B: a grammar that allowed the fence only after the
    file's old last line held a rename whose last site was that line (the old line never came), and
    the model wrote on until its token limit."""
    region = f'{_lit(f"```{language_for(name)}" + chr(10))} LINE* "```"'
    return Grammar("lark", f'start: region ("\\n" "\\n"? region)* "\\n"?\nregion: {region}\nLINE: {_CODE_LINE}\n')


# A line of code inside the fence: anything but a line that starts with a backquote (a model held
# from closing its fence early writes "``" + '"`' instead, measured on Qwen2.5-Coder-0.5B).
_CODE_LINE = r"/([^`\n][^\n]*)?\n/"
