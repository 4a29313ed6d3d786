"""What the model is told: the search/replace format, per model family.

Small models follow an example far better than a rule, so every family gets the rules plus one
worked exchange (a user turn with a file and an instruction, and the assistant's blocks). The
example sits right after the system prompt, so in a chat session its KV is computed once and
reused by every later turn (prefix reuse).

The answer is primed: the assistant turn starts with the file name and the opening of the first
block, so even a 0.5B model is inside the format from its first token (see docs/assistant.md for
what Qwen2.5-Coder-0.5B wrote without it).
"""

from __future__ import annotations

from dataclasses import dataclass

from pairline.assistant.edits import DELETE, DIVIDER, HEAD, RENAME, TAIL
from pairline.assistant.rewrite import fence_for, language_for, wrap

_RULES = f"""\
You edit code with search/replace blocks. Answer with blocks only, no explanations.
One block looks like this:
path/of/the/file.py
```python
{HEAD}
one to three lines copied exactly from the file
{DIVIDER}
the new lines
{TAIL}
```
Rules:
- SEARCH is short: only the lines that change, copied exactly, indentation included.
- Several changes: several blocks, one per place.
- A new file: an empty SEARCH.
- To rename a function, class, variable or parameter everywhere, write instead of blocks:
path/of/the/file.py
{RENAME} old_name new_name
(a parameter or a method: {RENAME} function_or_class.old_name new_name)
- To delete a whole function, class or assignment (or the `if __name__ == "__main__":` block: __main__):
path/of/the/file.py
{DELETE} name
- Change only what the instruction asks for."""

_EXAMPLE_FILE = """\
import math


def area(r, precision=2):
    return round(math.pi * r * r, precision)


def describe(shape):
    print("shape:", shape, "area:", area(shape.r))
"""

_EXAMPLE_INSTRUCTION = "Make area round to 3 digits by default, and print the shape's name in describe."

_EXAMPLE_ANSWER = f"""\
geometry.py
```python
{HEAD}
def area(r, precision=2):
{DIVIDER}
def area(r, precision=3):
{TAIL}
```
geometry.py
```python
{HEAD}
    print("shape:", shape, "area:", area(shape.r))
{DIVIDER}
    print("shape:", shape.name, "area:", area(shape.r))
{TAIL}
```
"""

_RENAME_INSTRUCTION = "Rename the parameter r of area to radius."
_RENAME_ANSWER = f"geometry.py\n{RENAME} area.r radius\n"

# Small models keep copying the file once they start a SEARCH part: after this many lines the
# answer is cut there and continued after a forced ======= (see Coder). Measured per model; None: no cap.
SEARCH_CAP: dict[str, int] = {"qwen2.5-coder-0.5b": 1, "smollm2-135m": 1}


def user_message(files: str, instruction: str, hints: str = "") -> str:
    """The files section (may be empty), with the instruction before and after it, and `hints`
    (sites.py's list of lines the instruction's names are on) just before the last one."""
    if not files:
        return f"Instruction: {instruction}"
    # the instruction before the files (so the model reads them knowing what to look for) and after
    # (so it is the last thing before the answer). Files first would let the prefix store keep the
    # files for any next instruction, but it was measured worse (Qwen2.5-Coder-0.5B, 18 block tasks:
    # 6 correct against 7, 11 applied against 14; docs/benchmarks.md, issue 20, 2026-12-03)
    hints = f"{hints}\n\n" if hints else ""
    return f"Instruction: {instruction}\n\n{files}\n\n{hints}Instruction: {instruction}"


_EXAMPLE_FILES = f"geometry.py\n{wrap(_EXAMPLE_FILE, 'python', '```')}"
_EXAMPLE = (
    {"role": "user", "content": user_message(_EXAMPLE_FILES, _EXAMPLE_INSTRUCTION)},
    {"role": "assistant", "content": _EXAMPLE_ANSWER},
)
# the rename example: a RENAME instead of a block per site (rope finds the sites; rename.py). It
# goes last: the exchange nearest the request is the one a small model imitates (measured on
# Qwen2.5-Coder-0.5B: with it first, renames came as partial blocks; with it last and RENAME on
# offer for every edit, bug fixes came as renames, which is why the grammar offers RENAME only
# where the instruction asks for a rename)
_RENAME_EXAMPLE = (
    {"role": "user", "content": user_message(_EXAMPLE_FILES, _RENAME_INSTRUCTION)},
    {"role": "assistant", "content": _RENAME_ANSWER},
)


@dataclass(frozen=True, slots=True)
class EditPrompt:
    family: str
    system: str
    example: tuple[dict, ...] | None  # worked exchanges: user turns and the assistant's answers
    primed: bool  # start the assistant's answer with the path and the first block's opening


PROMPTS: dict[str, EditPrompt] = {
    # Qwen2.5-Coder knows the format from training data but its 0.5B model drifts into prose or
    # whole files without an example and priming; both are on.
    "qwen2": EditPrompt(
        "qwen2",
        _RULES,
        (*_EXAMPLE, *_RENAME_EXAMPLE),
        primed=True,
    ),
    # SmolLM2 (llama family) is a test model here: same content, same priming.
    "llama": EditPrompt(
        "llama",
        _RULES,
        (*_EXAMPLE, *_RENAME_EXAMPLE),
        primed=True,
    ),
}


def prompt_for(family: str) -> EditPrompt:
    return PROMPTS.get(family, PROMPTS["qwen2"])


def files_message(files: dict[str, str]) -> str:
    """The files in the chat, each as its path and a fenced block (text as the model sees it)."""
    parts = []
    for path, text in files.items():
        parts.append(f"{path}\n{wrap(text, language_for(path), fence_for(text))}")
    return "\n\n".join(parts)


def edit_messages(prompt: EditPrompt, files: dict[str, str], instruction: str, hints: str = "") -> list[dict]:
    """System prompt, the worked example, then the files and the instruction in one user turn."""
    messages = [{"role": "system", "content": prompt.system}]
    if prompt.example:
        messages += list(prompt.example)
    messages.append({"role": "user", "content": user_message(files_message(files), instruction.strip(), hints)})
    return messages


def primer(prompt: EditPrompt, path: str) -> str:
    """The start of the assistant's answer when it is primed: the file name and the block opening."""
    if not prompt.primed:
        return ""
    return f"{path}\n```{language_for(path)}\n{HEAD}\n"


def retry_message(errors: list[str], applied: int) -> str:
    """The user turn that hands failed blocks back to the model for its one retry."""
    done = f"The other {applied} block(s) applied fine; do not repeat them.\n" if applied else ""
    listed = "\n\n".join(errors)
    return (
        f"Some edit blocks failed:\n\n{listed}\n\n{done}"
        "Write corrected search/replace blocks for the failed changes only, with SEARCH lines copied "
        "exactly from the file."
    )
