"""Wire formats: ids, errors, the client events of the WebSocket session protocol, and the
Responses-API objects a server or the router sends. Field names follow OpenAI's Responses API (WebSocket
mode) and Realtime API; pairline's additions are `prediction`, `grammar` and `timings`. docs/protocol.md."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported where a grammar is parsed: the router needs nothing else of the engine
    from pairline.engine.constraint import Grammar


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


def api_key_error() -> ProtocolError:
    """A missing or wrong key: the same error from the server and the router, over HTTP and WebSocket."""
    return ProtocolError("invalid or missing API key (send 'Authorization: Bearer KEY')", code="invalid_api_key",
                         status=401, type_="authentication_error")


def bearer_ok(header: str | None, api_key: str | None) -> bool:
    """Does an Authorization header carry `api_key`? No key configured: everyone may."""
    if not api_key:
        return True
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), api_key.encode())  # constant time: no timing oracle


# JSON from a client nests this deep at most. The protocol needs about 6 levels (a body, its
# messages, a message, its content parts, a part); a generous limit keeps JSON schemas a router
# passes on working, while a 100,000-deep body is a clean 400 instead of a RecursionError deep in
# json.loads, or later in json.dumps when the value is echoed back (metadata).
MAX_JSON_DEPTH = 64


def parse_json(raw: str | bytes, what: str) -> Any:
    """A client's JSON (`what` names it in the error): any failure, nesting too deep included, is
    a ProtocolError `invalid_json`, never a traceback."""
    try:
        value = json.loads(raw)
        too_deep = json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH
    except RecursionError:  # json.loads gave up at the interpreter's limit, far past ours
        too_deep = True
    except ValueError as err:  # UnicodeDecodeError included
        raise ProtocolError(f"{what} is not valid JSON: {err}", code="invalid_json") from None
    if too_deep:
        raise ProtocolError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    return value


def json_depth(value: Any, stop_past: int) -> int:
    """How deep `value`'s arrays and objects nest (a scalar is 0), walked without recursion; the
    walk stops at the first level past `stop_past`."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > stop_past:
            break
        pending.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


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


GRAMMAR_FIELDS = frozenset({"kind", "source"})


def parse_grammar(value: Any, param: str = "grammar") -> Grammar | None:
    """pairline's `grammar` extension, the same object in a session's response.create and an HTTP
    body: {"kind": "lark" | "regex" | "json_schema", "source": str (a schema may be an object)}.
    Checked for shape here; whether it compiles is the server's to say (it has the tokenizer)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f'{param!r} must be an object {{"kind": "lark" | "regex" | "json_schema", "source": ...}}',
                            code="invalid_type", param=param)
    check_fields(value, GRAMMAR_FIELDS, param)  # no `prefix`: the protocol has no assistant prefix
    from pairline.engine.constraint import Grammar
    from pairline.errors import PairlineError

    try:
        return Grammar.from_dict(value)
    except PairlineError as err:
        raise ProtocolError(str(err), code="invalid_value", param=param) from None


def grammar_field(grammar: Grammar) -> dict:
    """A grammar as the `grammar` field sends it (what a router forwards, what a client sends)."""
    return {"kind": grammar.kind, "source": grammar.source}


# ---------------------------------------------------------------- client events

CLIENT_EVENTS = ("session.update", "response.create", "response.cancel", "response.steer", "draft.update",
                 "context.update")

DEFAULT_MAX_OUTPUT_TOKENS = 1024  # a response's limit when neither it nor its session sets one
SAMPLING_FIELDS = frozenset({"instructions", "max_output_tokens", "temperature", "top_p", "seed"})
CREATE_FIELDS = frozenset({"type", "event_id", "model", "input", "previous_response_id", "prediction", "grammar",
                           "store", "metadata", *SAMPLING_FIELDS})
SESSION_FIELDS = frozenset({"model", *SAMPLING_FIELDS})
STEER_FIELDS = frozenset({"type", "event_id", "input", "response_id", "previous_response_id"})
CANCEL_FIELDS = frozenset({"type", "event_id", "response_id"})
DRAFT_FIELDS = frozenset({"type", "event_id", "text"})
CONTEXT_FIELDS = frozenset({"type", "event_id", "items"})
CONTEXT_ITEM_FIELDS = frozenset({"type", "path", "content"})


class EventTarget(Protocol):
    """What `dispatch_event` hands events to: `on_session_update`, `on_response_create`... and this."""

    async def send_error(self, err: ProtocolError, event_id: str | None = None) -> None: ...


async def dispatch_event(target: EventTarget, raw: str, limit: int) -> None:
    """One client message: decoded, checked, and handed to `target.on_<type>` (dots as underscores).
    A ProtocolError, from here or from the handler, becomes one `error` event naming the client's
    event_id. A server session and a router session both use it, so bad input gets the same answer."""
    event_id = None
    try:
        # a character is at most 4 bytes: encode only a message that might be too large
        if len(raw) * 4 > limit and len(raw.encode("utf-8", errors="replace")) > limit:
            raise ProtocolError(f"message of {len(raw)} characters exceeds the limit of {limit} bytes",
                                code="message_too_large")
        ev = parse_json(raw, "message")
        if not isinstance(ev, dict):
            raise ProtocolError("a client event must be a JSON object", code="invalid_event")
        event_id = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
        kind = ev.get("type")
        if kind not in CLIENT_EVENTS:
            raise ProtocolError(f"unknown event type {kind!r}; expected one of {', '.join(CLIENT_EVENTS)}",
                                code="unknown_event_type", param="type")
        await getattr(target, "on_" + kind.replace(".", "_"))(ev)
    except ProtocolError as err:
        await target.send_error(err, event_id)


def session_body(ev: dict) -> dict:
    """session.update's `session` object; its fields are the caller's to check (the router takes `mode` too)."""
    check_fields(ev, frozenset({"type", "event_id", "session"}), "session.update")
    body = ev.get("session")
    if not isinstance(body, dict):
        raise ProtocolError("session.update needs a 'session' object", code="invalid_type", param="session")
    return body


def parse_steer(ev: dict) -> list[dict]:
    """response.steer -> the messages to continue with."""
    check_fields(ev, STEER_FIELDS, "response.steer")
    if "input" not in ev:
        raise ProtocolError("response.steer needs 'input'", code="missing_required_parameter", param="input")
    return parse_input(ev["input"])


def steer_not_applied(why: str) -> ProtocolError:
    """A response.steer that raced the end of its response: never dropped silently, always this error."""
    return ProtocolError(f"the steer was not applied: {why}; send it as a new response.create",
                         code="response_steer_not_active")


def already_active() -> ProtocolError:
    return ProtocolError("a response is already in progress on this session; cancel or steer it",
                         code="conversation_already_has_active_response")


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
    grammar: Grammar | None = None  # what the answer must match (pairline's `grammar`)


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
        grammar=parse_grammar(ev.get("grammar")),
        previous_response_id=opt_str(ev, "previous_response_id"),
        event_id=opt_str(ev, "event_id"),
        metadata=metadata,
    )


# ---------------------------------------------------------------- ahead of the next input
# `draft.update` and `context.update` tell a session what its next response.create will hold, so a
# server can prefill it while the user types (docs/protocol.md, "Prefill ahead").


@dataclass(slots=True, frozen=True)
class AheadLimits:
    """What one session may hold ahead of its next request; past a limit, an error event naming it."""

    max_draft_chars: int = 32 * 1024  # one draft (the text typed so far)
    max_context_bytes: int = 256 * 1024  # all context items of a session: paths and contents, UTF-8
    max_context_items: int = 64
    max_path_chars: int = 1024
    draft_rate: float = 100.0  # draft.update events per second beyond which a client is told it floods


def parse_draft(ev: dict, limits: AheadLimits) -> str:
    """draft.update -> the draft's text (each draft replaces the last; "" clears it)."""
    check_fields(ev, DRAFT_FIELDS, "draft.update")
    if "text" not in ev:
        raise ProtocolError("draft.update needs 'text'", code="missing_required_parameter", param="text")
    text = ev["text"]
    if not isinstance(text, str):
        raise ProtocolError("'text' must be a string", code="invalid_type", param="text")
    if len(text) > limits.max_draft_chars:
        raise ProtocolError(f"a draft of {len(text)} characters exceeds the limit of {limits.max_draft_chars} "
                            "characters (max_draft_chars)", code="draft_too_large", param="text")
    return text


def parse_context(ev: dict, limits: AheadLimits) -> list[tuple[str, str | None]]:
    """context.update -> [(path, content or None to remove it)], checked field by field."""
    check_fields(ev, CONTEXT_FIELDS, "context.update")
    items = ev.get("items")
    if not isinstance(items, list):
        raise ProtocolError("context.update needs 'items', a list of {path, content}", code="invalid_type"
                            if "items" in ev else "missing_required_parameter", param="items")
    if len(items) > limits.max_context_items:
        raise ProtocolError(f"{len(items)} items exceed the limit of {limits.max_context_items} context items "
                            "(max_context_items)", code="context_too_large", param="items")
    out = []
    for i, item in enumerate(items):
        where = f"items[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where} must be an object", code="invalid_type", param=where)
        check_fields(item, CONTEXT_ITEM_FIELDS, where)
        if item.get("type", "file") != "file":
            raise ProtocolError(f"{where}: only file items are supported", code="invalid_value", param=f"{where}.type")
        path, content = item.get("path"), item.get("content")
        if not isinstance(path, str) or not path.strip() or "\n" in path:
            raise ProtocolError(f"{where}.path must be a non-empty one-line string", code="invalid_value",
                                param=f"{where}.path")
        if len(path) > limits.max_path_chars:
            raise ProtocolError(f"{where}.path exceeds {limits.max_path_chars} characters (max_path_chars)",
                                code="context_too_large", param=f"{where}.path")
        if "content" not in item:
            raise ProtocolError(f"{where} needs 'content' (a string, or null to remove the item)",
                                code="missing_required_parameter", param=f"{where}.content")
        if content is not None and not isinstance(content, str):
            raise ProtocolError(f"{where}.content must be a string or null", code="invalid_type",
                                param=f"{where}.content")
        out.append((path, content))
    return out


def context_bytes(context: dict[str, str]) -> int:
    return sum(len(p.encode("utf-8", "replace")) + len(c.encode("utf-8", "replace")) for p, c in context.items())


def apply_context(context: dict[str, str], items: list[tuple[str, str | None]], limits: AheadLimits) -> dict[str, str]:
    """The context after `items`: a new dict (the old one may be read by another thread meanwhile).
    A set item goes last (so the files that did not change stay a shared prefix); null removes it.
    Over the byte limit: an error, and the context stays as it was."""
    new = dict(context)
    for path, content in items:
        new.pop(path, None)
        if content is not None:
            new[path] = content
    size = context_bytes(new)
    if size > limits.max_context_bytes:
        raise ProtocolError(f"the session's context would hold {size} bytes, over the limit of "
                            f"{limits.max_context_bytes} bytes (max_context_bytes)", code="context_too_large",
                            param="items")
    if len(new) > limits.max_context_items:
        raise ProtocolError(f"the session's context would hold {len(new)} items, over the limit of "
                            f"{limits.max_context_items} (max_context_items)", code="context_too_large",
                            param="items")
    return new


def context_diff(old: dict[str, str], new: dict[str, str]) -> list[dict]:
    """The context.update items that turn a session holding `old` into one holding `new`, order
    included (a router keeps its backend sessions' context in step with its own this way)."""
    same = 0
    for a, b in zip(old.items(), new.items(), strict=False):
        if a != b:
            break
        same += 1
    tail = list(new.items())[same:]
    return [{"path": p, "content": None} for p in old if p not in new] + [{"path": p, "content": c} for p, c in tail]


def context_text(context: dict[str, str]) -> str | None:
    """The one user message the context becomes, right after the system message (None: no items).
    Each file as its path, then its content in a fence; in the order the items were last set."""
    if not context:
        return None
    parts = []
    for path, content in context.items():
        body = content if not content or content.endswith("\n") else content + "\n"
        parts.append(f"{path}\n```\n{body}```")
    return "Files:\n\n" + "\n\n".join(parts)


def with_context(system: list[dict], context: dict[str, str], rest: list[dict]) -> list[dict]:
    """A whole conversation as chat messages: the system message (if any), the context's message,
    then the history and the new input. What an OpenAI-compatible backend is sent."""
    text = context_text(context)
    return [*system, *([{"role": "user", "content": text}] if text is not None else []), *rest]


class DraftGate:
    """Counts a session's draft.update events per second. Every draft is kept (only the latest
    matters); past `rate`, the client is told once per second that it floods (`rate_limit_exceeded`)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.window = 0.0
        self.count = 0
        self.warned = False

    def flooding(self, now: float | None = None) -> bool:
        """Count one event; True the first time in a one-second window that the rate is passed."""
        now = time.monotonic() if now is None else now
        if now - self.window >= 1.0:
            self.window, self.count, self.warned = now, 0, False
        self.count += 1
        if self.count > self.rate and not self.warned:
            self.warned = True
            return True
        return False


def draft_flood_error(rate: float) -> ProtocolError:
    return ProtocolError(f"more than {rate:g} draft.update events per second (draft_rate); drafts are coalesced "
                         "(only the latest is used), so send fewer", code="rate_limit_exceeded", param="text",
                         status=429, type_="rate_limit_error")


# ---------------------------------------------------------------- server objects


def usage_responses(u: dict) -> dict:
    """Chat Completions usage (the engine's `Usage.to_openai()`, or an OpenAI-compatible backend's)
    -> Responses-API usage (input/output tokens), prediction counts included."""
    pt, ct = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
    pd, cd = u.get("prompt_tokens_details") or {}, u.get("completion_tokens_details") or {}
    return {
        "input_tokens": pt,
        "input_tokens_details": {"cached_tokens": pd.get("cached_tokens") or 0},
        "output_tokens": ct,
        "output_tokens_details": {
            "reasoning_tokens": cd.get("reasoning_tokens") or 0,
            "accepted_prediction_tokens": cd.get("accepted_prediction_tokens") or 0,
            "rejected_prediction_tokens": cd.get("rejected_prediction_tokens") or 0,
        },
        "total_tokens": pt + ct,
    }


def response_status(finish_reason: str | None, steered: bool) -> tuple[str, str | None]:
    """(status, incomplete reason) of a response that ended with `finish_reason`."""
    if steered:
        return "incomplete", "steered"
    if finish_reason == "cancelled":
        return "cancelled", None
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    return "completed", None


# the event that ends a response, by its status ("failed" goes with an `error` event: see the callers)
FINAL_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete",
               "cancelled": "response.cancelled"}


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

    def pos(self) -> dict:
        """Where the text goes: the one content part of the one output item."""
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    # The events around the deltas, as (type, fields): one list for the server and the router, so a
    # response relayed or emulated by the router is the same sequence as one from a pairline server.

    def opening_events(self, **created_extra) -> list[tuple[str, dict]]:
        """Before the first delta. `created_extra`: more fields for response.created (the router's `pairline`)."""
        return [("response.created", {"response": self.to_dict(), **created_extra}),
                ("response.output_item.added", {"output_index": 0, "item": self.message_item("in_progress")}),
                ("response.content_part.added",
                 {**self.pos(), "part": {"type": "output_text", "text": "", "annotations": []}})]

    def closing_events(self) -> list[tuple[str, dict]]:
        """After the last delta, before the final event; `status` is set by then."""
        item_status = "completed" if self.status == "completed" else "incomplete"
        return [("response.output_text.done", {**self.pos(), "text": self.text, "logprobs": []}),
                ("response.content_part.done", {**self.pos(), "part": self.text_part()}),
                ("response.output_item.done", {"output_index": 0, "item": self.message_item(item_status)})]

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
