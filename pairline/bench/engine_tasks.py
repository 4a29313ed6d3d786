"""The inputs of `pairline bench engine` and the scoring of its answers: real code for the
prompts, the edit tasks' messages and predictions (the file itself, and a useless random one), the
quality of an edited file, and the acceptance curve of a speculative edit."""

from __future__ import annotations

import difflib
import platform
import random
import re

CURVE_BINS = 10


def code_source() -> tuple[str, str]:
    """Real code text for prompts: the source of a stdlib module (argparse, ~2.6k lines)."""
    import argparse
    import inspect

    return inspect.getsource(argparse), f"inspect.getsource(argparse), Python {platform.python_version()}"


def edit_messages(instruction: str, path: str, source: str) -> list[dict]:
    content = (
        f"{instruction}\n\nReply with the complete updated file `{path}` in a single ```python code block, "
        f"and nothing else.\n\n```python\n{source}```"
    )
    return [{"role": "user", "content": content}]


def fenced(source: str) -> str:
    """The prediction for an edit: the file as the reply is asked to hold it."""
    return f"```python\n{source}```"


_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str) -> str:
    m = _FENCE.search(text)
    return m.group(1) if m else text


def edit_quality(task: dict, source: str, text: str) -> dict:
    code = extract_code(text)
    followed = all(s in code for s in task.get("expect_contains", ())) and not any(
        s in code for s in task.get("expect_absent", ())
    )
    a, b = source.splitlines(), code.splitlines()
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    same = sum(block.size for block in sm.get_matching_blocks())
    return {
        "instruction_followed": followed,
        "output_lines": len(b),
        "lines_copied_unchanged": same,
        "copied_fraction": same / max(len(a), 1),  # of the original file's lines, found unchanged
    }


def useless_prediction(tok, n_tokens: int, seed: int) -> list[int]:
    """A prediction that shares nothing with the output: seeded random lowercase words, cut to
    n_tokens tokens. It measures what speculation costs when the caller's guess is worthless."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: list[str] = []
    ids: list[int] = []
    while len(ids) < n_tokens:
        for _ in range(max(64, n_tokens)):
            words.append("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))))
            if rng.random() < 0.1:
                words.append("\n")
        ids = tok.encode(" ".join(words), add_bos=False)
    return ids[:n_tokens]


def acceptance_curve(steps: list, bins: int = CURVE_BINS) -> list[dict]:
    """Per tenth of the output (by the output position of each decode/verify call): calls, tokens
    produced, drafted tokens and accepted ones, and the draft lengths chosen. The output's first
    token comes from the prefill, not from a step: it counts as a token of the first tenth."""
    total = 1 + sum(a + 1 for _, a in steps)
    out = [
        {"from": i / bins, "to": (i + 1) / bins, "calls": 0, "tokens": 0, "drafting_calls": 0, "drafted": 0}
        | {"accepted": 0, "max_draft": 0}
        for i in range(bins)
    ]
    out[0]["tokens"] = 1 if steps else 0
    pos = 1
    for d, a in steps:
        b = out[min(bins - 1, pos * bins // total)]
        b["calls"] += 1
        b["tokens"] += a + 1
        if d:
            b["drafting_calls"] += 1
            b["drafted"] += d
            b["accepted"] += a
            b["max_draft"] = max(b["max_draft"], d)
        pos += a + 1
    for b in out:
        b["acceptance"] = b["accepted"] / b["drafted"] if b["drafted"] else None
        b["mean_draft"] = b["drafted"] / b["drafting_calls"] if b["drafting_calls"] else 0.0
        b["tokens_per_call"] = b["tokens"] / b["calls"] if b["calls"] else None
    return out
