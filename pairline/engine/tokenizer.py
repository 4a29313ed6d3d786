"""Byte-level BPE tokenizer built from a model file's own vocabulary, streaming decode, and ChatML.

The hot path (encode/decode) runs in the Rust `tokenizers` library. This module only wires it up
the way the GGUF says the model was trained: the same vocab and merges, the same pre-tokenizer
split (picked by `tokenizer.ggml.pre`), control tokens as whole specials. We never execute the
chat template a model file carries; ChatML is built by our own code.

Content never forges a turn: a conversation becomes ids with its control tokens (`<|im_start|>`,
`<|im_end|>`) inserted by id, and everything else (roles, user text, file contents, tool and model
output) through `Tokenizer.encode_text`, where `<|im_end|>` written in the text is just the
characters `<`, `|`, `im`... Only `Tokenizer.encode` reads control tokens out of text, for a prompt
its caller wrote whole (a raw /v1/completions prompt).
"""

from __future__ import annotations

import codecs
import json
import mmap
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from pairline.errors import PairlineError

# --- pre-tokenizer splits, keyed by `tokenizer.ggml.pre` -------------------------------------------

# GPT-2's split: contractions, letter runs, number runs, punctuation runs, whitespace runs that
# leave the last space to glue onto the next word.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Qwen2's split: case-insensitive contractions; a letter run keeps one leading non-letter (so
# "_name" or ".attr" stays one piece); digits one at a time; punctuation runs swallow the
# newlines after them.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Each digit alone first, then GPT-2's split on what is left (SmolLM2's vocab has no multi-digit
# tokens because it was trained this way).
_DIGITS = r"\p{N}"

# Regexes applied in order, each isolating its matches. Several `pre` names are aliases for
# the same split; anything not listed fails loudly rather than tokenizing subtly wrong.
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2_SPLIT,),
    "smollm": (_DIGITS, _GPT2_SPLIT),
    "starcoder": (_DIGITS, _GPT2_SPLIT),
    "qwen2": (_QWEN2_SPLIT,),
    "deepseek-r1-qwen": (_QWEN2_SPLIT,),  # R1 distills keep the Qwen2.5 vocab
}

# `tokenizer.ggml.token_type` values (llama.cpp's enum).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

# Family end-of-turn markers: generation stops on these too, not only on the file's eos.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>")


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character map: printable bytes stand for themselves, the other 68 bytes
    (space, controls, ...) get the characters from U+0100 on, so every token is printable text."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0x100
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return table


_BYTE_TO_CHAR = _byte_alphabet()
_ALPHABET = frozenset(_BYTE_TO_CHAR.values())
# str.translate table that turns alphabet characters back into latin-1 characters = raw bytes.
_CHAR_TO_LATIN1 = {ord(c): chr(b) for b, c in _BYTE_TO_CHAR.items()}


def _spell(raw: bytes) -> str:
    return "".join(_BYTE_TO_CHAR[b] for b in raw)


# --- GGUF metadata ---------------------------------------------------------------------------------

_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "B",
    gguf.GGUFValueType.INT8: "b",
    gguf.GGUFValueType.UINT16: "H",
    gguf.GGUFValueType.INT16: "h",
    gguf.GGUFValueType.UINT32: "I",
    gguf.GGUFValueType.INT32: "i",
    gguf.GGUFValueType.FLOAT32: "f",
    gguf.GGUFValueType.BOOL: "?",
    gguf.GGUFValueType.UINT64: "Q",
    gguf.GGUFValueType.INT64: "q",
    gguf.GGUFValueType.FLOAT64: "d",
}
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def _read_string(buf: mmap.mmap, pos: int) -> tuple[str, int]:
    (n,) = _U64.unpack_from(buf, pos)
    pos += 8
    return buf[pos : pos + n].decode("utf-8"), pos + n


def _read_value(buf: mmap.mmap, pos: int, vtype: int) -> tuple[Any, int]:
    if vtype == gguf.GGUFValueType.STRING:
        return _read_string(buf, pos)
    if vtype == gguf.GGUFValueType.ARRAY:
        (etype,) = _U32.unpack_from(buf, pos)
        (count,) = _U64.unpack_from(buf, pos + 4)
        pos += 12
        if etype in _SCALAR_FORMATS:
            fmt = struct.Struct(f"<{count}{_SCALAR_FORMATS[etype]}")
            return list(fmt.unpack_from(buf, pos)), pos + fmt.size
        if etype == gguf.GGUFValueType.STRING:  # the 100k-entry token/merge lists: keep it tight
            strings, unpack = [], _U64.unpack_from
            for _ in range(count):
                (n,) = unpack(buf, pos)
                strings.append(buf[pos + 8 : pos + 8 + n].decode("utf-8"))
                pos += 8 + n
            return strings, pos
        items = []
        for _ in range(count):
            item, pos = _read_value(buf, pos, etype)
            items.append(item)
        return items, pos
    fmt = struct.Struct("<" + _SCALAR_FORMATS[vtype])
    return fmt.unpack_from(buf, pos)[0], pos + fmt.size


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value metadata of a GGUF file as plain Python values, tensors untouched.

    Why not `gguf.GGUFReader`: it builds numpy views for every string of the 50k-150k token and
    merge arrays, which takes 4-10 s per file here; this walk takes a fraction of a second.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise PairlineError(f"{path} is not a GGUF file")
            version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
            if version not in (2, 3):
                raise PairlineError(f"{path}: GGUF version {version} is not supported (need 2 or 3)")
            pos, meta = 24, {}
            for _ in range(n_kv):
                key, pos = _read_string(buf, pos)
                (vtype,) = _U32.unpack_from(buf, pos)
                meta[key], pos = _read_value(buf, pos + 4, vtype)
            return meta
    except OSError as err:
        raise PairlineError(f"cannot read {path}: {err.strerror or err}") from None
    except (struct.error, KeyError, ValueError) as err:  # short file, bad type tag, bad UTF-8
        raise PairlineError(f"{path}: corrupt GGUF metadata ({err})") from None


def skip_gguf_metadata(buf: mmap.mmap) -> int:
    """The offset at which a GGUF's tensor infos begin: past the header and every key/value
    (`pairline doctor` reads the tensors' sizes from there)."""
    (n_kv,) = _U64.unpack_from(buf, 16)
    pos = 24
    for _ in range(n_kv):
        _, pos = _read_string(buf, pos)
        (vtype,) = _U32.unpack_from(buf, pos)
        _, pos = _read_value(buf, pos + 4, vtype)
    return pos


def _reader_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    # A caller that already parsed the file (e.g. the weight loader) shares its reader.
    return {key: field.contents() for key, field in reader.fields.items()}


# --- Tokenizer -------------------------------------------------------------------------------------


def _split_pre_tokenizer(regexes: Iterable[str]) -> pre_tokenizers.PreTokenizer:
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    # The regexes above already did the splitting; ByteLevel only maps bytes to the alphabet.
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def _vocab_key(text: str, token_type: int) -> str:
    # Control / user-defined tokens keep their literal text: that is how they appear in prompts,
    # and the ByteLevel decoder emits such text verbatim. A normal token should already be in the
    # byte alphabet; one that is not was stored as raw text, so respell it into the alphabet.
    if token_type in (_CONTROL, _USER_DEFINED) or _ALPHABET.issuperset(text):
        return text
    return _spell(text.encode("utf-8"))


def _build_bpe(tokens: list[str], types: list[int], merges: list[str], splits: tuple[str, ...]) -> tokenizers.Tokenizer:
    vocab: dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        vocab.setdefault(_vocab_key(text, kind), i)
    if len(vocab) != len(tokens):
        raise PairlineError(f"tokenizer vocab has {len(tokens) - len(vocab)} duplicate tokens")
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise PairlineError(f"malformed tokenizer merge {merge!r}")
        pairs.append((left, right))
    try:
        # No unk token, as in llama.cpp and HF: a byte the vocab has no token for is dropped.
        # (SmolLM2 lacks 21 byte tokens, none of them in ordinary text: a few C0 controls and
        # lead bytes of unassigned planes / invalid UTF-8.)
        tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    except Exception as err:  # tokenizers raises plain Exception on a merge outside the vocab
        raise PairlineError(f"inconsistent tokenizer vocab/merges: {err}") from None
    tok.pre_tokenizer = _split_pre_tokenizer(splits)
    tok.decoder = decoders.ByteLevel()
    # Added tokens are matched whole in the text before BPE runs, so `<|im_start|>` is one id.
    specials = [t for t, k in zip(tokens, types, strict=True) if k == _CONTROL and t]
    user = [t for t, k in zip(tokens, types, strict=True) if k == _USER_DEFINED and t]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return tok


class Tokenizer:
    """Byte-level BPE tokenizer. Build with `load`, `from_gguf` or `from_hf_dir`."""

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        *,
        family: str,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        extra_stop_ids: Iterable[int] = (),
        pre: str | None = None,
    ):
        self._tok = tok
        # `encode_special_tokens` (split special tokens as text) is a switch on the whole tokenizer,
        # and encodes run on several threads: each encode sets it under this lock. (A second copy of
        # the tokenizer would cost 0.5 s of load for Qwen's vocab; the switch costs under 1 us.)
        self._lock = threading.Lock()
        self.family = family
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.pre = pre
        stops = {i for i in (eos_id, *extra_stop_ids) if i is not None}
        stops.update(i for i in map(self.token_to_id, _END_OF_TURN) if i is not None)
        self.stop_ids: frozenset[int] = frozenset(stops)

    # -- constructors --

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """A GGUF file, or an HF model directory with tokenizer.json."""
        path = Path(path)
        if path.is_dir():
            return cls.from_hf_dir(path)
        if path.is_file():
            return cls.from_gguf(path)
        raise PairlineError(f"no tokenizer at {path}: not a GGUF file or a model directory")

    @classmethod
    def from_gguf(cls, source: str | Path | gguf.GGUFReader) -> Tokenizer:
        if isinstance(source, gguf.GGUFReader):
            meta, name = _reader_metadata(source), str(source.data.filename)
        else:
            meta, name = read_gguf_metadata(source), str(source)

        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise PairlineError(
                f"{name}: tokenizer model {model!r} is not supported (pairline needs byte-level BPE, 'gpt2')"
            )
        pre = meta.get("tokenizer.ggml.pre")
        if pre not in _PRE_SPLITS:
            raise PairlineError(f"{name}: unknown pre-tokenizer {pre!r} (known: {', '.join(sorted(_PRE_SPLITS))})")
        for key in ("tokens", "token_type", "merges"):
            if f"tokenizer.ggml.{key}" not in meta:
                raise PairlineError(f"{name}: GGUF has no tokenizer.ggml.{key}")

        tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
        if len(tokens) != len(types):
            raise PairlineError(f"{name}: {len(tokens)} tokens but {len(types)} token types")
        tok = _build_bpe(tokens, types, meta["tokenizer.ggml.merges"], _PRE_SPLITS[pre])
        extra = (meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom"))
        return cls(
            tok,
            family=meta.get("general.architecture", ""),
            bos_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_id=meta.get("tokenizer.ggml.eos_token_id"),
            # llama.cpp adds no BOS for a BPE vocab unless the file asks for it.
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            extra_stop_ids=[i for i in extra if i is not None],
            pre=pre,
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        try:
            tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as err:
            raise PairlineError(f"cannot load {path / 'tokenizer.json'}: {err}") from None
        # The streaming decoder relies on every token being raw bytes in GPT-2's alphabet.
        if not isinstance(tok.model, models.BPE) or not isinstance(tok.decoder, decoders.ByteLevel):
            raise PairlineError(f"{path}: only byte-level BPE tokenizers are supported")

        tcfg = _read_json(path / "tokenizer_config.json")
        cfg = _read_json(path / "config.json")
        gen = _read_json(path / "generation_config.json")

        def token_id(value: Any) -> int | None:  # "<|im_end|>" or {"content": "<|im_end|>", ...}
            text = value.get("content") if isinstance(value, dict) else value
            return tok.token_to_id(text) if isinstance(text, str) else None

        eos_ids = [token_id(tcfg.get("eos_token"))]
        for source in (cfg, gen):
            value = source.get("eos_token_id")
            eos_ids += value if isinstance(value, list) else [value]
        eos_ids = [i for i in eos_ids if i is not None]
        bos_id = token_id(tcfg.get("bos_token"))
        return cls(
            tok,
            family=cfg.get("model_type", ""),
            bos_id=bos_id if bos_id is not None else cfg.get("bos_token_id"),
            eos_id=eos_ids[0] if eos_ids else None,
            add_bos=bool(tcfg.get("add_bos_token", False)),
            extra_stop_ids=eos_ids,
        )

    # -- API --

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids for `text`. Special tokens written in the text (`<|im_start|>`) become their
        single ids, so only for text its caller wrote whole (a raw completion prompt); content goes
        through `encode_text`, conversations through `ChatTemplate.encode`. BOS follows the model
        file by default."""
        ids = self._encode(text, split_special=False)
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise PairlineError("this tokenizer has no BOS token")
            ids.insert(0, self.bos_id)
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids for content (user text, a file, tool or model output): special tokens written in
        it are split like any other text, so `<|im_end|>` in a file can never end a turn. No BOS."""
        return self._encode(text, split_special=True)

    def _encode(self, text: str, split_special: bool) -> list[int]:
        with self._lock:
            self._tok.encode_special_tokens = split_special
            return self._tok.encode(text, add_special_tokens=False).ids

    def control_id(self, token: str) -> int:
        """The id of a control token the prompt inserts itself (`<|im_start|>`)."""
        i = self._tok.token_to_id(token)
        if i is None:
            raise PairlineError(f"this tokenizer has no {token} token")
        return i

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`, special tokens included; ids outside the vocab are skipped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def backend_json(self) -> str:
        """The whole tokenizer as `tokenizers` serializes it (what llguidance builds its vocabulary from)."""
        return self._tok.to_str()

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The raw bytes each id decodes to, indexed by id (built once, on first use)."""
        out = []
        for i in range(self.vocab_size):
            text = self._tok.id_to_token(i) or ""
            # Same rule as the ByteLevel decoder: a token wholly in the byte alphabet maps back to
            # bytes; anything else (a special token's literal text) is emitted as-is.
            if _ALPHABET.issuperset(text):
                out.append(text.translate(_CHAR_TO_LATIN1).encode("latin-1"))
            else:
                out.append(text.encode("utf-8"))
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(family={self.family!r}, pre={self.pre!r}, vocab_size={self.vocab_size})"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PairlineError(f"cannot read {path}: {err}") from None


# --- streaming decode ------------------------------------------------------------------------------


class IncrementalDecoder:
    """Turns generated ids into text deltas without ever splitting a UTF-8 character.

    A byte-level BPE token can end in the middle of a character, so we feed each token's raw
    bytes to Python's incremental UTF-8 codec, which holds back an incomplete tail until the
    next bytes arrive. Cost per push: one list lookup plus decoding a few bytes, independent of
    how long the sequence is.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._bytes = tokenizer.token_bytes
        # "replace" matches the lossy decode of the Rust tokenizer for invalid byte runs.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token; may be "" while a character is still incomplete."""
        # Ids past the vocab (padded embedding rows) decode to nothing, as in `Tokenizer.decode`.
        raw = self._bytes[token_id] if 0 <= token_id < len(self._bytes) else b""
        return self._utf8.decode(raw)

    def flush(self) -> str:
        """End of stream: emits U+FFFD for a dangling partial character, and resets."""
        return self._utf8.decode(b"", final=True)


# --- chat template ---------------------------------------------------------------------------------

# The system prompt each family's official template inserts when the conversation has none.
# "llama" means SmolLM2: the only llama-architecture model pairline ships.
_DEFAULT_SYSTEM = {
    "qwen2": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "llama": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
}
_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class ChatTemplate:
    """ChatML, `<|im_start|>role\\ncontent<|im_end|>\\n` per turn, for both families."""

    family: str
    default_system: str

    @classmethod
    def for_family(cls, family: str) -> ChatTemplate:
        if family not in _DEFAULT_SYSTEM:
            raise PairlineError(f"no chat template for model family {family!r}")
        return cls(family, _DEFAULT_SYSTEM[family])

    def with_system(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with the family's default system turn first when they have none (as the
        official template does)."""
        if not messages:
            raise PairlineError("cannot render an empty conversation")
        if messages[0].get("role") == "system":
            return messages
        return [{"role": "system", "content": self.default_system}, *messages]

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The conversation as text (what the model reads, for display and comparison with the
        official template). Never tokenize this: text in it could forge a turn; use `encode`."""
        parts = [_turn(*_checked(m)) for m in self.with_system(messages)]
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode(self, tokenizer: Tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               add_bos: bool | None = None, continue_final: bool = False) -> list[int]:
        """Token ids of the whole conversation (default system turn included): the ids of `render`'s
        text when no content holds a special token, and plain text where one does.
        `continue_final`: the last message is an assistant answer left open, for the model to write
        on from (vLLM's `continue_final_message`). It is split as a fresh answer is, the generation
        prompt and then its text, so a cut answer resumes on the ids it was being written on."""
        turns = self.with_system(messages)
        if continue_final:
            role, content = _checked(turns[-1])
            if role != "assistant":
                raise PairlineError(f"only an assistant message can be continued, the last one is {role!r}")
            ids = self.encode_turns(tokenizer, turns[:-1], True) + tokenizer.encode_text(content)
        else:
            ids = self.encode_turns(tokenizer, turns, add_generation_prompt)
        if tokenizer.add_bos if add_bos is None else add_bos:
            if tokenizer.bos_id is None:
                raise PairlineError("this tokenizer has no BOS token")
            ids.insert(0, tokenizer.bos_id)
        return ids

    def encode_turns(self, tokenizer: Tokenizer, messages: list[dict[str, Any]],
                     add_generation_prompt: bool = True) -> list[int]:
        """Token ids of just these turns (no default system, no BOS): a session appends them to the
        ids it already holds. Control tokens go in by id; "role\\ncontent" is encoded as one plain
        text, so its pieces split exactly where the whole rendered text splits."""
        start, end = tokenizer.control_id("<|im_start|>"), tokenizer.control_id("<|im_end|>")
        newline = tokenizer.encode_text("\n")
        ids: list[int] = []
        for message in messages:
            role, content = _checked(message)
            ids += [start, *tokenizer.encode_text(f"{role}\n{content}"), end, *newline]
        if add_generation_prompt:
            ids += [start, *tokenizer.encode_text("assistant\n")]
        return ids

    def end_of_turn(self, tokenizer: Tokenizer) -> list[int]:
        """What closes an assistant turn after its generated ids: `<|im_end|>` by id, then a newline."""
        return [tokenizer.control_id("<|im_end|>"), *tokenizer.encode_text("\n")]


def _checked(message: dict[str, Any]) -> tuple[str, str]:
    role, content = message.get("role"), message.get("content")
    if role not in _ROLES:
        raise PairlineError(f"unknown chat role {role!r} (expected system, user or assistant)")
    if not isinstance(content, str):
        raise PairlineError(f"chat message content must be text, got {type(content).__name__}")
    return role, content


def _turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def render_chat(messages: list[dict[str, Any]], family: str, add_generation_prompt: bool = True) -> str:
    """The conversation as text, for display; `encode_chat` gives the ids a model should see."""
    return ChatTemplate.for_family(family).render(messages, add_generation_prompt)


def encode_chat(messages: list[dict[str, Any]], tokenizer: Tokenizer, add_generation_prompt: bool = True,
                add_bos: bool | None = None, continue_final: bool = False) -> list[int]:
    """The conversation's token ids, control tokens by id and content as plain text (no forged turns)."""
    return ChatTemplate.for_family(tokenizer.family).encode(tokenizer, messages, add_generation_prompt, add_bos,
                                                            continue_final)
