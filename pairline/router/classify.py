"""`mode: auto`: which tier a request needs, decided from the request alone (a pure function, so
it is cheap, testable and the same on every router replica).

The rules, in order (docs/scaling.md):
1. a conversation longer than `deep_context_chars` goes deep (a long context is slow on the real-time
   tier anyway, and its model is the small one);
2. a cue for multi-step work in the instruction goes deep: refactor, across files, run the tests,
   all files, migrate, implement ... and test, the whole codebase;
3. a cue for a targeted edit stays real-time: rename, fix this line, add a docstring, a typo;
4. `deep_files` or more files mentioned or attached go deep;
5. anything else stays real-time: latency first.
The instruction is the latest user message; the context is every message."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pairline.router.config import ClassifyConfig


@dataclass(slots=True, frozen=True)
class Route:
    tier: str  # realtime | deep
    reason: str  # the rule that decided, for the response's `pairline.reason` and the logs


_FLAGS = re.IGNORECASE | re.DOTALL
DEEP_CUES: tuple[tuple[str, re.Pattern], ...] = tuple((name, re.compile(rx, _FLAGS)) for name, rx in (
    ("refactor", r"\brefactor"),
    ("across files", r"\bacross\s+(?:the\s+|all\s+|multiple\s+|several\s+|many\s+)?(?:files|modules|packages|"
                     r"the\s+(?:code\s*base|repo(?:sitory)?|project))"),
    ("run the tests", r"\b(?:run|rerun|re-run|execute)\s+(?:the\s+|all\s+(?:the\s+)?)?(?:unit\s+)?tests?\b"),
    ("all files", r"\b(?:all|every)\s+(?:the\s+|of\s+the\s+)?(?:files|modules|call\s+sites)\b"),
    ("migrate", r"\bmigrat(?:e|es|ed|ing|ion)\b"),
    ("implement and test", r"\bimplement\b.{0,200}?\b(?:and|then|with)\b.{0,40}?\btest"),
    ("whole codebase", r"\b(?:whole|entire)\s+(?:code\s*base|repo(?:sitory)?|project)\b"),
))
REALTIME_CUES: tuple[tuple[str, re.Pattern], ...] = tuple((name, re.compile(rx, _FLAGS)) for name, rx in (
    ("rename", r"\brename\b"),
    ("fix this line", r"\bfix\s+(?:this|that|the)\s+(?:line|typo|import|indentation)\b"),
    ("add a docstring", r"\badd\s+(?:a\s+)?(?:docstring|comment|type\s+hints?|log(?:ging)?\s+line)\b"),
    ("typo", r"\btypo\b"),
    ("this line", r"\b(?:this|that|the\s+next)\s+line\b"),
))
_PATH = re.compile(r"(?<![\w/.-])(?:[\w-]+/)*[\w-]+\.(?:py|pyi|js|jsx|ts|tsx|go|rs|java|kt|c|h|cc|cpp|hpp|cs|rb|php|"
                   r"swift|scala|sh|sql|md|rst|toml|ya?ml|json|html|css|vue|ipynb)\b")
_FENCE = re.compile(r"^```", re.MULTILINE)


def count_files(text: str) -> int:
    """Files in play: distinct paths mentioned, or fenced code blocks (each an attached file),
    whichever is more."""
    fences = len(_FENCE.findall(text)) // 2
    return max(len(set(_PATH.findall(text))), fences)


def classify(instruction: str, context_chars: int, n_files: int, cfg: ClassifyConfig | None = None) -> Route:
    """The tier for a request: see the module docstring for the rules."""
    cfg = cfg or ClassifyConfig()
    if context_chars >= cfg.deep_context_chars:
        return Route("deep", f"context {context_chars} chars")
    for name, rx in DEEP_CUES:
        if rx.search(instruction):
            return Route("deep", f"cue: {name}")
    for name, rx in REALTIME_CUES:
        if rx.search(instruction):
            return Route("realtime", f"cue: {name}")
    if n_files >= cfg.deep_files:
        return Route("deep", f"{n_files} files")
    return Route("realtime", "default")


def classify_messages(messages: list[dict], cfg: ClassifyConfig | None = None) -> Route:
    """Chat messages ({"role", "content": str}) -> Route: the latest user message is the
    instruction, every message counts toward the context and the files."""
    instruction = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    context = "\n".join(m["content"] for m in messages)
    return classify(instruction, len(context), count_files(context), cfg)
