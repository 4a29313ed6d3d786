"""Fill-in-the-middle: the prompt a code model infills from, and the stop rules of an inline suggestion.

A FIM model was trained on files cut in three: it reads the text before the cursor (prefix) and the
text after it (suffix) around its FIM control tokens, and writes the middle. Two orders:
- PSM, `<PRE> prefix <SUF> suffix <MID>`: the order Qwen2.5-Coder documents;
- SPM, `<PRE> <SUF> suffix <MID> prefix` (the variant of the FIM paper that SantaCoder and StarCoder
  train on): the prefix comes last, so typing at the cursor only appends to the prompt, and a
  keystroke prefills its own few tokens instead of the whole suffix again. `pairline bench fim
  --quality` measures what each order costs in accuracy on the model at hand (docs/editor.md).
A model with no FIM tokens (SmolLM2) is completed from the prefix alone ("prefix" order): a plain
continuation, which ignores what follows the cursor.

Token healing: a prompt that ends inside a word or after a space ends on a token the model rarely
saw there ("return " is "return" + " " where the model would write "return" + " a"). `healed_prompt` backs
off the prefix's last token and returns its text, which the answer must start with (a regex
constraint) and which the suggestion then leaves out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pairline.engine.constraint import Grammar
from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError

ORDERS = ("spm", "psm", "prefix")

# (prefix, suffix, middle) control tokens, by family of tokenizer
_TOKEN_NAMES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, CodeGemma-style pipes
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),  # CodeLlama
)
# tokens that end an infill besides the tokenizer's own end tokens: a FIM model closes the middle
# with end-of-text, pads with fim_pad, or runs on into the next file of a repository
_END_NAMES = ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<fim_pad>", "<file_sep>",
              "<|im_end|>", "▁<EOT>", "<EOT>")

# How much of the file a suggestion reads, in characters (about 3.5 per token of code): about 1,150
# tokens, which a slow 2-core CPU prefills in 4-8 s when the cursor lands somewhere new. The prefix
# window's start moves in steps of WINDOW_STEP lines, so that typing does not shift it: a shifted
# start would change the prompt's first tokens and cost a whole prefill.
PREFIX_CHARS = 3000
SUFFIX_CHARS = 1000
WINDOW_STEP = 32


@dataclass(slots=True, frozen=True)
class FimFormat:
    """How one model's infill prompt is written. `prefix_id` etc. are None in "prefix" order."""

    order: str  # spm | psm | prefix
    prefix_id: int | None = None
    suffix_id: int | None = None
    middle_id: int | None = None
    stop_ids: tuple[int, ...] = ()  # end the middle (added to the tokenizer's own stop tokens)

    @property
    def uses_suffix(self) -> bool:
        return self.order != "prefix"


def fim_format(tokenizer: Tokenizer, order: str = "spm") -> FimFormat:
    """The FIM format of `tokenizer`'s model in `order` ("prefix" where the model has no FIM tokens)."""
    if order not in ORDERS:
        raise PairlineError(f"the FIM order must be one of {', '.join(ORDERS)}, got {order!r}")
    stops = tuple(i for i in (tokenizer.token_to_id(n) for n in _END_NAMES) if i is not None)
    if order == "prefix":
        return FimFormat("prefix", stop_ids=stops)
    for names in _TOKEN_NAMES:
        ids = [tokenizer.token_to_id(n) for n in names]
        if None not in ids:
            return FimFormat(order, ids[0], ids[1], ids[2], stops + tuple(ids))
    return FimFormat("prefix", stop_ids=stops)


def window(prefix: str, suffix: str, prefix_chars: int = PREFIX_CHARS, suffix_chars: int = SUFFIX_CHARS,
           step: int = WINDOW_STEP) -> tuple[str, str]:
    """The part of the file a suggestion reads: whole lines of `prefix` ending at the cursor, starting
    at a line whose number is a multiple of `step` (from the file's start), about `prefix_chars` back;
    whole lines of `suffix` up to about `suffix_chars`. Typing at the cursor leaves both starts where
    they were until the prefix outgrows its window by `step` lines."""
    if len(prefix) > prefix_chars:
        lines = prefix.splitlines(keepends=True)
        start, size = len(lines), 0
        while start > 0 and size + len(lines[start - 1]) <= prefix_chars:
            start -= 1
            size += len(lines[start])
        start = min(len(lines) - 1, -(-start // step) * step)  # round up to the grid (stays within budget)
        prefix = "".join(lines[start:])
    if len(suffix) > suffix_chars:
        cut = suffix.rfind("\n", 0, suffix_chars)
        suffix = suffix[: cut + 1] if cut >= 0 else suffix[:suffix_chars]
    return prefix, suffix


def fim_prompt(tokenizer: Tokenizer, fmt: FimFormat, prefix: str, suffix: str) -> list[int]:
    """The ids of an infill request. The file is content: control tokens written in it stay text."""
    return _assemble(tokenizer, fmt, tokenizer.encode_text(prefix), suffix)


def healed_prompt(tokenizer: Tokenizer, fmt: FimFormat, prefix: str, suffix: str) -> tuple[list[int], str]:
    """`fim_prompt` without the prefix's last token, and that token's text, which the answer must
    start with ("" for an empty prefix). The prefix is tokenized once: this runs at every keystroke."""
    pre = tokenizer.encode_text(prefix)
    healed = tokenizer.decode(pre[-1:]) if pre else ""
    return _assemble(tokenizer, fmt, pre[:-1], suffix), healed


def _assemble(tokenizer: Tokenizer, fmt: FimFormat, pre: list[int], suffix: str) -> list[int]:
    bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    if fmt.order == "prefix":
        return bos + pre
    suf = tokenizer.encode_text(suffix)
    if fmt.order == "spm":
        return bos + [fmt.prefix_id, fmt.suffix_id, *suf, fmt.middle_id, *pre]
    return bos + [fmt.prefix_id, *pre, fmt.suffix_id, *suf, fmt.middle_id]


def heal_grammar(text: str) -> Grammar | None:
    """The constraint of a healed prompt: the answer starts with `text`, then anything."""
    return Grammar("regex", re.escape(text) + r"[\s\S]*") if text else None


# --------------------------------------------------------------------------- inline stop rules


_OPENERS = (":", "{", "(", "[")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


@dataclass(slots=True)
class InlineRules:
    """When an inline suggestion ends, as an editor shows it (a ghost text at the cursor):
    - mid-line (text after the cursor on its line): at the end of the line;
    - otherwise after `max_lines` lines, or before a line that dedents out of the cursor's block, or
      before a line that repeats the next line of the file (the model writing what already follows);
    - trailing blank lines are dropped."""

    max_lines: int = 8
    single_line: bool | None = None  # None: decide from the cursor's line


class InlineStopper:
    """Feeds on the model's text; releases what the suggestion shows. The first line streams as it
    comes (that is the latency a user feels); a later line is released once it is whole, because
    whether it belongs to the suggestion depends on the whole line."""

    def __init__(self, prefix: str, suffix: str, rules: InlineRules | None = None):
        rules = rules or InlineRules()
        line_before = prefix[prefix.rfind("\n") + 1:]
        line_after = suffix.split("\n", 1)[0]
        self.single = rules.single_line if rules.single_line is not None else bool(line_after.strip())
        self.max_lines = max(1, rules.max_lines)
        self.line_before = line_before
        self.block_indent: int | None = None  # the cursor's block: set by the first line with text
        following = [ln for ln in suffix.split("\n")[1:] if ln.strip()]
        self.next_line = following[0].strip() if following else None
        self.on_first = True  # still on the cursor's line
        self.lines = 1  # lines shown so far, the cursor's included
        self.current = ""  # the later line being written
        self.blanks = ""  # blank lines written, shown only if a line that counts follows them
        self.released = ""
        self.done = False

    def push(self, text: str) -> str:
        """Released text for `text` (may be ""); `done` is set once the suggestion is over."""
        out = []
        for ch in text:
            if self.done:
                break
            out.append(self._char(ch))
        piece = "".join(out)
        self.released += piece
        return piece

    def finish(self) -> str:
        """At the model's end: the line it was writing, if it passes the rules."""
        piece = "" if self.done or self.on_first or not self.current.strip() else self._line_done()
        self.done = True
        self.released += piece
        return piece

    def _char(self, ch: str) -> str:
        if self.on_first:
            if ch != "\n":
                return ch
            self.on_first = False
            first = self.line_before + self.released
            if first.strip() and not first.rstrip().endswith(_OPENERS):
                self.block_indent = _indent(first)  # an opener's block is the body the next line starts
            self.done = self.single or self.lines >= self.max_lines
            return ""
        if ch != "\n":
            self.current += ch
            return ""
        if not self.current.strip():
            self.blanks += "\n" + self.current
            self.current = ""
            return ""
        return self._line_done()

    def _line_done(self) -> str:
        line, self.current = self.current, ""
        repeats = self.next_line is not None and line.strip() == self.next_line
        if self.block_indent is None:
            self.block_indent = _indent(line)
        if _indent(line) < self.block_indent or repeats:
            self.done = True
            return ""
        out, self.blanks = self.blanks + "\n" + line, ""
        self.lines += 1
        self.done = self.lines >= self.max_lines
        return out
