"""A WebSocket session's conversation, kept on the server as messages and as the exact token ids
the model saw. Each turn appends only its new tokens, so the engine's prefix reuse prefills
just those; if the session's KV was evicted, the same ids are prefilled again on another cache,
which rebuilds it exactly (never a different conversation).

Ahead of the next turn the session also holds the client's draft (the input as typed so far) and
its context items (files); `ahead_prompt` is the prefix of the next turn's prompt that they give,
built by the same function as the turn's own prompt (`turn_prompt`), so what is prefilled ahead
is exactly what the request will reuse."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

from pairline.engine.generate import Generation
from pairline.engine.tokenizer import ChatTemplate, Tokenizer
from pairline.wire.protocol import ProtocolError, Sampling, new_id

_LAST_WORD = re.compile(r"\s*\S*\Z")  # the draft's last word and the whitespace before it


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the model has seen, replaced as a whole at each commit (the engine thread reads it while
    the event loop may replace it): messages as text (system first, then the context's message when
    `files` is set), and the token ids, ending after a closed turn."""

    messages: tuple[dict, ...] = ()
    tokens: tuple[int, ...] = ()
    files: str | None = None  # the context's message the stored turns were built with (messages[1])
    key: object = field(default_factory=object)  # identity, for the session's one-entry cache

    def system(self) -> str | None:
        if self.messages and self.messages[0]["role"] == "system":
            return self.messages[0]["content"]
        return None

    def history(self) -> list[dict]:
        """The turns after the system message and the context's message."""
        start = (1 if self.system() is not None else 0) + (1 if self.files is not None else 0)
        return list(self.messages[start:])


class Session:
    def __init__(self, tokenizer: Tokenizer, model: str):
        self.id = new_id("sess")
        self.tokenizer = tokenizer
        self.template = ChatTemplate.for_family(tokenizer.family)
        self.model = model
        self.defaults = Sampling()
        self.conv = Conversation()
        self.last_response_id: str | None = None
        self.created = time.time()
        self.last_active = time.monotonic()
        self._end = self.template.end_of_turn(tokenizer)  # closes a turn
        # what follows a user message's content in a prompt: its close, then the assistant's header
        self._closing = self._end + self.template.encode_turns(tokenizer, [], add_generation_prompt=True)
        self._head_cache: tuple[tuple, list[int], list[dict]] | None = None
        # ahead of the next turn (replaced, never mutated: the engine thread reads them)
        self.draft: str | None = None
        self.context: dict[str, str] = {}

    @property
    def messages(self) -> list[dict]:
        return list(self.conv.messages)

    @messages.setter
    def messages(self, messages: list[dict]) -> None:
        self.conv = replace(self.conv, messages=tuple(messages), key=object())

    @property
    def tokens(self) -> list[int]:
        return list(self.conv.tokens)

    @tokens.setter
    def tokens(self, tokens: list[int]) -> None:
        self.conv = replace(self.conv, tokens=tuple(tokens), key=object())

    def describe(self) -> dict:
        d = self.defaults
        return {"id": self.id, "object": "realtime.session", "model": self.model, "instructions": d.instructions,
                "max_output_tokens": d.max_output_tokens, "temperature": d.temperature, "top_p": d.top_p}

    def check_previous(self, previous_response_id: str | None) -> None:
        if previous_response_id is not None and previous_response_id != self.last_response_id:
            raise ProtocolError(
                f"previous_response_id {previous_response_id!r} is not the latest response of this session "
                "(a session continues from its latest response only)",
                code="previous_response_not_found", param="previous_response_id")

    def turn_prompt(self, new_messages: list[dict], instructions: str | None, files: str | None = None,
                    conv: Conversation | None = None) -> tuple[list[int], list[dict]]:
        """Token ids for the next turn: the stored ids plus only the new messages and the assistant
        header. The context's message (`files`, from `context_text`) sits right after the system
        message; changing the instructions or the context re-renders the history behind them.
        Control tokens go in by id and every message as plain text, so no input forges a turn."""
        head, msgs = self._head(conv or self.conv, instructions, files)
        return head + self.template.encode_turns(self.tokenizer, new_messages, add_generation_prompt=True), \
            msgs + new_messages

    def ahead_prompt(self, draft: str | None, instructions: str | None, files: str | None) -> list[int]:
        """The leading ids of the prompt that `turn_prompt` will build when the user sends `draft`,
        however it goes on: the turn's prompt for the draft cut before its last word (which more
        typing may still change), without what closes the message."""
        cut = _LAST_WORD.sub("", draft or "")
        ids, _ = self.turn_prompt([{"role": "user", "content": cut}], instructions, files)
        n = len(ids) - len(self._closing) if ids[-len(self._closing):] == self._closing else len(ids) - 1
        # with nothing typed yet, the role's newline may still merge with whitespace the input starts with
        return ids[: n - 1] if not cut else ids[:n]

    def _head(self, conv: Conversation, instructions: str | None, files: str | None) -> tuple[list[int], list[dict]]:
        """The ids and messages every next turn starts with: the stored ones, or, when the system
        message or the context changed (or nothing is stored yet), all of it rendered again."""
        system = instructions if instructions is not None else conv.system()
        if conv.messages and system == conv.system() and files == conv.files:
            return list(conv.tokens), list(conv.messages)
        key = (conv.key, system, files)
        if self._head_cache is not None and self._head_cache[0] == key:  # a draft per keystroke: render once
            return list(self._head_cache[1]), list(self._head_cache[2])
        msgs = (([{"role": "system", "content": system}] if system is not None else [])
                + ([{"role": "user", "content": files}] if files is not None else []) + conv.history())
        default = [{"role": "system", "content": self.template.default_system}]
        msgs = self.template.with_system(msgs) if msgs else default
        ids = self.template.encode(self.tokenizer, msgs, add_generation_prompt=False)
        self._head_cache = (key, ids, msgs)
        return list(ids), list(msgs)

    def commit(self, prompt: list[int], messages: list[dict], g: Generation, response_id: str,
               files: str | None = None) -> None:
        """The turn ran: keep its prompt, the answer's ids (cut where it stopped), closed as a turn."""
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.template.default_system}, *messages]
        self.conv = Conversation(tuple([*messages, {"role": "assistant", "content": g.text}]),
                                 tuple(prompt + g.token_ids + self._end), files)
        self.last_response_id = response_id
