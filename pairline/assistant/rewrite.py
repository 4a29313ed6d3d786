"""Whole-file rewrite: the prompt, the prediction, and getting the file back out of the answer.

The model is asked for the complete updated file in one fenced code block. The prediction is the
original file wrapped exactly the way the answer is asked for, so predicted-output drafting lines
up from the first token and the unchanged parts of the file cost one verify step per draft.

The model sees the file with LF newlines and no BOM; `restore_layout` puts the original's newline
style, BOM and final-newline convention back, byte-exact on every unchanged line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath

from pairline.errors import PairlineError

SYSTEM_PROMPT = (
    "You are a precise code editor. The user gives you one file and an instruction. Answer with "
    "code blocks only, no explanation. Each code block holds one part of the file that changes, "
    "rewritten: start it at the first line of the function or statement you change, copy the lines "
    "that stay exactly as they are, and end it right after the last line you change. Several places "
    "to change: one code block for each, in the order of the file. Change only what the "
    "instruction asks for."
)

LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "jsx",
    ".ts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".java": "java",
    ".kt": "kotlin",
    ".swift": "swift",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".scala": "scala",
    ".lua": "lua",
    ".sh": "bash",
    ".bash": "bash",
    ".zsh": "zsh",
    ".sql": "sql",
    ".html": "html",
    ".css": "css",
    ".scss": "scss",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".ini": "ini",
    ".md": "markdown",
    ".rst": "rst",
    ".xml": "xml",
    ".tex": "latex",
    ".r": "r",
    ".jl": "julia",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".clj": "clojure",
    ".dart": "dart",
    ".vue": "vue",
    ".zig": "zig",
    ".nim": "nim",
}
_NAMES = {"makefile": "makefile", "dockerfile": "dockerfile", "cmakelists.txt": "cmake"}

# An opening fence: ``` or ~~~ (3 or more), then an optional info string.
_OPEN = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")


class MalformedOutputError(PairlineError):
    """The model's answer holds no usable file; nothing was written."""


def language_for(path: str | PurePath) -> str:
    p = PurePath(path)
    return _NAMES.get(p.name.lower()) or LANGUAGES.get(p.suffix.lower(), "")


def fence_for(text: str) -> str:
    """Three backticks, or one more than the longest backtick run opening a line of the file, so
    a Markdown file's own fences cannot close ours."""
    longest = max((len(m.group(1)) for m in re.finditer(r"^[ \t]*(`{3,})", text, re.M)), default=0)
    return "`" * max(3, longest + 1)


def for_model(text: str) -> str:
    """The file as the model sees it: LF newlines, no BOM."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def wrap(text: str, lang: str, fence: str) -> str:
    """`text` as one fenced block, the way the model is asked to answer."""
    body = text if not text or text.endswith("\n") else text + "\n"
    return f"{fence}{lang}\n{body}{fence}"


@dataclass(frozen=True, slots=True)
class RewriteRequest:
    messages: list[dict]
    prediction: str
    fence: str
    lang: str
    model_text: str  # the file as shown to the model


def build_request(display_path: str, text: str, instruction: str, hints: str = "") -> RewriteRequest:
    """The rewrite's messages and prediction; `hints` (sites.py's list of the lines the
    instruction's names are on) goes just before the instruction."""
    instruction = instruction.strip()
    if not instruction:
        raise PairlineError("the instruction is empty; say what to change with -m")
    model_text = for_model(text)
    lang = language_for(display_path)
    fence = fence_for(model_text)
    block = wrap(model_text, lang, fence)
    hints = f"{hints}\n\n" if hints else ""
    user = f"File: {display_path}\n\n{block}\n\n{hints}Instruction: {instruction}"
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    return RewriteRequest(messages, block, fence, lang, model_text)


# --------------------------------------------------------------------------- reading the answer


def _is_close(line: str, fence: str) -> bool:
    s = line.strip()
    return len(s) >= len(fence) and s == fence[0] * len(s)


def _opening(line: str) -> str | None:
    m = _OPEN.match(line)
    return m.group("fence") if m else None


def _looks_like_file(candidate: str, original: str) -> bool:
    """An unfenced answer is taken as the file only if it is mostly the original's lines."""
    if not candidate.strip():
        return False
    if not original.strip():
        return False  # nothing to compare with: an unfenced answer is as likely prose as code
    a, b = original.splitlines(), candidate.splitlines()
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sm.ratio() >= 0.6


def extract_code(text: str, *, original: str = "", truncated: bool = False) -> str:
    """The file inside the answer's first fenced code block (LF newlines, as the model wrote it).

    - no closing fence: fine if the model stopped by itself; an error if it hit the token limit
      (`truncated`), because the file is cut short;
    - no fence at all: the whole answer, if it is mostly the original's lines; else an error.
    """
    lines = text.split("\n")
    for i, line in enumerate(lines):
        fence = _opening(line)
        if fence is None:
            continue
        body: list[str] = []
        for inner in lines[i + 1 :]:
            if _is_close(inner, fence):
                return "\n".join(body) + "\n" if body else ""
            body.append(inner)
        if truncated:
            raise MalformedOutputError(
                "the model's answer hit the token limit before the code block closed (raise --max-tokens); "
                "nothing was written"
            )
        return "\n".join(body)
    if truncated:
        raise MalformedOutputError("the model's answer hit the token limit without a code block; nothing was written")
    candidate = text.strip("\n")
    if _looks_like_file(candidate, original):
        return candidate + "\n"
    raise MalformedOutputError("the model's answer holds no code block; nothing was written")


class BlockStream:
    """Follows the answer as it streams: yields each line of the code block once it is complete.
    `state` goes preamble -> code -> done (closing fence seen)."""

    def __init__(self) -> None:
        self.state = "preamble"
        self.fence = ""
        self._partial = ""
        self.closed = 0  # blocks closed so far
        self._prose = False  # after a closed block: text that is not another block

    @property
    def chatter(self) -> bool:
        """After a closed block, the answer goes on with something that is not another block (a
        model explaining its edit): nothing more of it is code."""
        if not self.closed or self.state != "preamble":
            return False
        rest = self._partial.lstrip("\n")
        return self._prose or (bool(rest) and not rest.startswith(("`", "~")))

    def feed(self, delta: str) -> Iterator[str]:
        self._partial += delta
        while self.state != "done" and "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            yield from self._line(line)

    def next_block(self) -> Iterator[str]:
        """After a closed block: look for the next one, in what was read after the closing fence
        too (its lines come with the next `feed`)."""
        self.state = "preamble"
        return self.feed("")

    def finish(self) -> Iterator[str]:
        """End of the answer: the last line, if the model stopped without a newline."""
        if self.state != "done" and self._partial:
            line, self._partial = self._partial, ""
            yield from self._line(line)

    def _line(self, line: str) -> Iterator[str]:
        if self.state == "preamble":
            fence = _opening(line)
            if fence is not None:
                self.state, self.fence = "code", fence
            elif line.strip() and self.closed:
                self._prose = True
        elif self.state == "code":
            if _is_close(line, self.fence):
                self.state = "done"
                self.closed += 1
            else:
                yield line


# --------------------------------------------------------------------------- back to the file's layout


def _split_keepends(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def newline_of(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf * 2 >= text.count("\n") else "\n"


def restore_layout(original: str, new_model_text: str) -> str:
    """`new_model_text` (LF, no BOM) in the original's layout: unchanged lines are the original's
    lines byte for byte (whatever their ending), changed lines get the file's dominant newline,
    and the BOM and the final-newline convention follow the original."""
    bom = "\ufeff" if original.startswith("\ufeff") else ""
    orig = _split_keepends(original.removeprefix("\ufeff"))
    new = _split_keepends(new_model_text)
    nl = newline_of(original)
    key_a = [line.rstrip("\n").removesuffix("\r") for line in orig]
    key_b = [line.rstrip("\n") for line in new]
    out: list[str] = []
    sm = difflib.SequenceMatcher(None, key_a, key_b, autojunk=False)
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal":
            out.extend(orig[a0:a1])
        else:
            out.extend(k + nl for k in key_b[b0:b1])
    # The original's last line, copied verbatim, may lack an ending yet no longer be last.
    for i in range(len(out) - 1):
        if not out[i].endswith("\n"):
            out[i] += nl
    result = "".join(out)
    if original and not original.endswith("\n"):
        result = result.removesuffix("\n").removesuffix("\r") if result.endswith("\n") else result
    elif original and result and not result.endswith("\n"):
        result += nl
    return bom + result
