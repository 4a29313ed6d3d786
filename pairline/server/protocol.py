"""Wire formats: ids, errors, the client events of the WebSocket session protocol, and the
Responses-API objects the server sends. Field names follow OpenAI's Responses API (WebSocket
mode) and Realtime API; pairline's additions are `prediction` and `timings`. docs/protocol.md."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class ProtocolError(Exception):
    """Bad input from a client: becomes an `error` event (WS) or a 4xx JSON body (HTTP)."""

    def __init__(self, message: str, code: str = "invalid_request_error", param: str | None = None,
                 status: int = 400, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.status = status
        self.type = type_

    def to_error(self) -> dict:
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param}


def unknown_field(name: str, where: str) -> ProtocolError:
    return ProtocolError(f"unknown field {name!r} in {where}", code="unknown_parameter", param=name)


def check_fields(obj: dict, allowed: frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise unknown_field(key, where)


# ---------------------------------------------------------------- typed getters


def opt_number(obj: dict, name: str, lo: float, hi: float) -> float | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ProtocolError(f"{name!r} must be a number between {lo} and {hi}, got {v!r}", code="invalid_value",
                            param=name)
    return float(v)


def opt_int(obj: dict, name: str, lo: int, hi: int) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"{name!r} must be an integer between {lo} and {hi}, got {v!r}", code="invalid_value",
                            param=name)
    return v


def opt_str(obj: dict, name: str) -> str | None:
    v = obj.get(name)
    if v is not None and not isinstance(v, str):
        raise ProtocolError(f"{name!r} must be a string", code="invalid_type", param=name)
    return v


def text_of(content: Any, param: str) -> str:
    """Message content: a string, or a list of text parts ({"type": "input_text"|"output_text"|"text", "text"})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
                raise ProtocolError(f"{param}: only text content parts are supported", code="invalid_value",
                                    param=param)
            if not isinstance(part.get("text"), str):
                raise ProtocolError(f"{param}: a text part needs a string 'text'", code="invalid_value", param=param)
            out.append(part["text"])
        return "".join(out)
    raise ProtocolError(f"{param}: content must be a string or a list of text parts", code="invalid_type", param=param)


_ROLE = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_ITEM_FIELDS = frozenset({"type", "role", "content", "id", "status"})


def parse_input(value: Any, param: str = "input") -> list[dict]:
    """Responses `input`: a string (one user message) or a list of message items -> chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ProtocolError(f"{param!r} must be a string or a non-empty list of message items", code="invalid_type",
                            param=param)
    messages = []
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where} must be an object", code="invalid_type", param=where)
        check_fields(item, _ITEM_FIELDS, where)
        if item.get("type", "message") != "message":
            raise ProtocolError(f"{where}: only message items are supported, got {item.get('type')!r}",
                                code="invalid_value", param=f"{where}.type")
        role = _ROLE.get(item.get("role"))
        if role is None:
            raise ProtocolError(f"{where}: role must be user, assistant, system or developer", code="invalid_value",
                                param=f"{where}.role")
        messages.append({"role": role, "content": text_of(item.get("content"), f"{where}.content")})
    return messages


def parse_prediction(value: Any) -> str | None:
    """Chat Completions' Predicted Outputs: {"type": "content", "content": str | [text parts]}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("'prediction' must be an object", code="invalid_type", param="prediction")
    check_fields(value, frozenset({"type", "content"}), "prediction")
    if value.get("type") != "content":
        raise ProtocolError("prediction.type must be 'content'", code="invalid_value", param="prediction.type")
    return text_of(value.get("content"), "prediction.content")


# ---------------------------------------------------------------- client events

CLIENT_EVENTS = ("session.update", "response.create", "response.cancel", "response.steer")

SAMPLING_FIELDS = frozenset({"instructions", "max_output_tokens", "temperature", "top_p", "seed"})
CREATE_FIELDS = frozenset({"type", "event_id", "model", "input", "previous_response_id", "prediction", "store",
                           "metadata", *SAMPLING_FIELDS})
SESSION_FIELDS = frozenset({"model", *SAMPLING_FIELDS})
STEER_FIELDS = frozenset({"type", "event_id", "input", "response_id", "previous_response_id"})
CANCEL_FIELDS = frozenset({"type", "event_id", "response_id"})


@dataclass(slots=True)
class Sampling:
    """Per-session defaults (session.update) that each response.create may override."""

    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    def merged(self, other: Sampling) -> Sampling:
        return Sampling(*(b if b is not None else a for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple:
        return (self.instructions, self.max_output_tokens, self.temperature, self.top_p, self.seed)


def parse_sampling(obj: dict, max_tokens: int) -> Sampling:
    return Sampling(
        instructions=opt_str(obj, "instructions"),
        max_output_tokens=opt_int(obj, "max_output_tokens", 1, max_tokens),
        temperature=opt_number(obj, "temperature", 0.0, 2.0),
        top_p=opt_number(obj, "top_p", 1e-6, 1.0),
        seed=opt_int(obj, "seed", -(2**63), 2**63 - 1),
    )


@dataclass(slots=True)
class CreateRequest:
    messages: list[dict]
    sampling: Sampling
    prediction: str | None = None
    previous_response_id: str | None = None
    event_id: str | None = None
    metadata: dict = field(default_factory=dict)


def parse_create(ev: dict, max_tokens: int) -> CreateRequest:
    check_fields(ev, CREATE_FIELDS, "response.create")
    if "input" not in ev:
        raise ProtocolError("response.create needs 'input'", code="missing_required_parameter", param="input")
    metadata = ev.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ProtocolError("'metadata' must be an object", code="invalid_type", param="metadata")
    return CreateRequest(
        messages=parse_input(ev["input"]),
        sampling=parse_sampling(ev, max_tokens),
        prediction=parse_prediction(ev.get("prediction")),
        previous_response_id=opt_str(ev, "previous_response_id"),
        event_id=opt_str(ev, "event_id"),
        metadata=metadata,
    )


# ---------------------------------------------------------------- server objects


def usage_responses(u) -> dict:
    """engine Usage -> Responses-API usage (input/output tokens), prediction counts included."""
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "accepted_prediction_tokens": u.accepted_prediction_tokens,
            "rejected_prediction_tokens": u.rejected_prediction_tokens,
        },
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


@dataclass(slots=True)
class ResponseState:
    """One response on a session: what `response.*` events describe."""

    model: str
    sampling: Sampling
    previous_response_id: str | None
    metadata: dict
    id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("msg"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "in_progress"
    text: str = ""
    usage: dict | None = None
    timings: dict | None = None
    incomplete_reason: str | None = None
    error: dict | None = None

    def message_item(self, status: str) -> dict:
        content = [] if status == "in_progress" else [self.text_part()]
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    def text_part(self) -> dict:
        return {"type": "output_text", "text": self.text, "annotations": []}

    def to_dict(self) -> dict:
        s = self.sampling
        done = self.status != "in_progress"
        item_status = "completed" if self.status == "completed" else "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.model,
            "instructions": s.instructions,
            "max_output_tokens": s.max_output_tokens,
            "temperature": s.temperature if s.temperature is not None else 0.0,  # pairline: greedy by default
            "top_p": s.top_p if s.top_p is not None else 1.0,
            "previous_response_id": self.previous_response_id,
            "output": [self.message_item(item_status)] if done else [],
            "output_text": self.text if done else "",
            "incomplete_details": {"reason": self.incomplete_reason} if self.incomplete_reason else None,
            "error": self.error,
            "usage": self.usage,
            "metadata": self.metadata,
            "timings": self.timings,  # pairline: the server's own timings (docs/protocol.md)
        }
