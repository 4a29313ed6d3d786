"""A WebSocket session's conversation, kept on the server as messages and as the exact token ids
the model saw. Each turn appends only its new tokens, so the engine's prefix reuse prefills
just those; if the session's KV was evicted, the same ids are prefilled again on another cache,
which rebuilds it exactly (never a different conversation)."""

from __future__ import annotations

import time

from pairline.engine.generate import Generation
from pairline.engine.tokenizer import ChatTemplate, Tokenizer
from pairline.wire.protocol import ProtocolError, Sampling, new_id


class Session:
    def __init__(self, tokenizer: Tokenizer, model: str):
        self.id = new_id("sess")
        self.tokenizer = tokenizer
        self.template = ChatTemplate.for_family(tokenizer.family)
        self.model = model
        self.defaults = Sampling()
        self.messages: list[dict] = []  # the conversation as text (system first)
        self.tokens: list[int] = []  # the conversation as the model saw it, ending after a closed turn
        self.last_response_id: str | None = None
        self.created = time.time()
        self.last_active = time.monotonic()
        self._end = self.template.end_of_turn(tokenizer)  # closes an assistant turn

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

    def turn_prompt(self, new_messages: list[dict], instructions: str | None) -> tuple[list[int], list[dict]]:
        """Token ids for the next turn: the stored ids plus only the new messages and the assistant
        header. Changing the instructions re-renders the history behind a new system message.
        Control tokens go in by id and every message as plain text, so no input forges a turn."""
        system = instructions if instructions is not None else self._system()
        if not self.messages or system != self._system():
            history = [m for m in self.messages if m["role"] != "system"]
            msgs = ([{"role": "system", "content": system}] if system is not None else []) + history + new_messages
            return self.template.encode(self.tokenizer, msgs, add_generation_prompt=True), msgs
        ids = self.template.encode_turns(self.tokenizer, new_messages, add_generation_prompt=True)
        return self.tokens + ids, self.messages + new_messages

    def commit(self, prompt: list[int], messages: list[dict], g: Generation, response_id: str) -> None:
        """The turn ran: keep its prompt, the answer's ids (cut where it stopped), closed as a turn."""
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.template.default_system}, *messages]
        self.tokens = prompt + g.token_ids + self._end
        self.messages = [*messages, {"role": "assistant", "content": g.text}]
        self.last_response_id = response_id

    def _system(self) -> str | None:
        if self.messages and self.messages[0]["role"] == "system":
            return self.messages[0]["content"]
        return None
