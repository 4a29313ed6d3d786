"""OpenAI-compatible HTTP as the server and the router both speak it: JSON request bodies read
within a limit, the shapes of `messages` and `prompt`, error bodies, and Server-Sent Events.
What the server does with a request (fields it accepts, sampling, replies) is in
pairline.server.openai_http; what the router does, in pairline.router.app."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse

from pairline.wire.protocol import ProtocolError, parse_json, text_of


def error_response(err: ProtocolError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": err.to_error()}, status_code=err.status, headers=headers)


# Server-Sent Events, as the server and the router both stream them. No caching, and no buffering by a
# proxy in between (nginx honours X-Accel-Buffering), so each chunk reaches the client as it is made.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"


def sse_data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object. A body over `limit` bytes is refused from its Content-Length before
    any of it is read, or, sent without one (chunked), as soon as what arrived passes the limit: at
    most `limit` bytes are ever held. (uvicorn stops reading the socket while a body waits unread.)"""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(f"request body of {int(declared)} bytes", limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large("request body", limit)
    data = parse_json(bytes(body), "request body")
    if not isinstance(data, dict):
        raise ProtocolError("request body must be a JSON object", code="invalid_json")
    return data


def _too_large(what: str, limit: int) -> ProtocolError:
    return ProtocolError(f"{what} exceeds the limit of {limit} bytes", code="request_too_large", status=413)


def chat_messages(body: dict, check_roles: bool = True) -> list[dict]:
    """Chat Completions `messages` -> [{"role", "content": str}]. `check_roles=False` (the router):
    any role passes, for the backend to judge; an OpenAI-compatible one may take roles pairline does not."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ProtocolError("'messages' must be a non-empty list", code="invalid_value", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ProtocolError(f"messages[{i}] must be an object", code="invalid_type", param=f"messages[{i}]")
        role = {"developer": "system"}.get(m.get("role"), m.get("role"))
        if check_roles and role not in ("system", "user", "assistant"):
            raise ProtocolError(f"messages[{i}].role {m.get('role')!r} is not supported", code="invalid_value",
                                param=f"messages[{i}].role")
        out.append({"role": role, "content": text_of(m.get("content") or "", f"messages[{i}].content")})
    return out


def completion_prompt(body: dict) -> str:
    """Completions `prompt`: one non-empty string (a list of exactly one is taken too)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ProtocolError("'prompt' must be a non-empty string", code="invalid_value", param="prompt")
    return prompt
