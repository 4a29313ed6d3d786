"""The server's OpenAI-compatible HTTP: /v1/chat/completions, /v1/completions (SSE or not),
/v1/models. Wire formats (pairline.wire.openai) match OpenAI's field for field; pairline adds
`timings` (the server's own) to the final chunk or body, and the `grammar` request field (below).
`/v1/completions` takes OpenAI's `suffix`: the completion is an infill between `prompt` and it.
Requests share the engine through the scheduler; their KV goes to the prefix cache, so a request
repeating an earlier prefix prefills only the rest.

Structured output: OpenAI's `response_format` (`text`, `json_object`, `json_schema`) and pairline's
`grammar` extension ({"kind": "lark" | "regex" | "json_schema", "source": ...}, like vLLM's
`guided_*` fields or llama.cpp's `grammar`) become one engine `Grammar`. It is compiled on a thread
before the request is queued (`check_grammar`, shared with the WebSocket sessions, which take the
same `grammar` field): a bad schema or grammar is a 400, never a broken stream."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pairline.engine.constraint import Grammar
from pairline.engine.fim import fim_prompt
from pairline.engine.generate import Generation
from pairline.engine.sampling import SamplingParams
from pairline.server.scheduler import Job, JobEvents, QueueFull
from pairline.server.ws import check_grammar, engine_error
from pairline.wire.openai import (
    SSE_DONE,
    SSE_HEADERS,
    chat_messages,
    completion_prompt,
    error_response,
    read_json,
    sse_data,
)
from pairline.wire.protocol import (
    ProtocolError,
    check_fields,
    new_id,
    opt_int,
    opt_number,
    parse_grammar,
    parse_prediction,
)

log = logging.getLogger("pairline.server")

# Fields OpenAI defines that pairline accepts; the ignored ones only at their neutral values.
_COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "user",
           "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "metadata", "store",
           "service_tier", "prediction", "top_k", "response_format", "grammar"}  # grammar: pairline's
CHAT_FIELDS = frozenset(_COMMON | {"messages", "max_completion_tokens", "parallel_tool_calls",
                                   "reasoning_effort", "tool_choice", "tools", "functions", "function_call",
                                   "continue_final_message", "add_generation_prompt"})  # the last two: vLLM's
COMPLETION_FIELDS = frozenset(_COMMON | {"prompt", "echo", "best_of", "suffix"})
_NEUTRAL = {"n": (1,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False, None),
            "best_of": (1,), "echo": (False,), "tools": ([],), "functions": ([],), "tool_choice": ("none", "auto"),
            "logit_bias": ({},)}
_FORMATS = ("text", "json_object", "json_schema")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def fingerprint(model: str) -> str:
    import hashlib

    return "fp_" + hashlib.sha256(f"pairline|{model}".encode()).hexdigest()[:10]


def _sampling(body: dict, server, max_field: str, default_max: int) -> SamplingParams:
    for name, ok in _NEUTRAL.items():
        if name in body and body[name] not in ok:
            raise ProtocolError(f"{name}={body[name]!r} is not supported by pairline", code="unsupported_parameter",
                                param=name)
    max_tokens = opt_int(body, max_field, 1, server.cfg.max_output_tokens) or opt_int(
        body, "max_tokens", 1, server.cfg.max_output_tokens) or default_max
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise ProtocolError("'stop' must be a string or up to 4 non-empty strings", code="invalid_value", param="stop")
    temperature = opt_number(body, "temperature", 0.0, 2.0)
    top_p = opt_number(body, "top_p", 1e-6, 1.0)
    return SamplingParams(max_tokens=max_tokens, temperature=temperature or 0.0, top_p=top_p or 1.0,
                          top_k=opt_int(body, "top_k", 0, 1 << 20) or 0, seed=opt_int(body, "seed", -(2**63), 2**63),
                          stop=tuple(stop))


def _bad(message: str, param: str, code: str = "invalid_value") -> ProtocolError:
    return ProtocolError(message, code=code, param=param)


def _response_format(fmt: object) -> Grammar | None:
    """OpenAI's `response_format` -> a JSON-schema grammar (None: plain text)."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("'response_format' must be an object", "response_format", "invalid_type")
    kind = fmt.get("type")
    if kind not in _FORMATS:
        raise _bad(f"response_format.type {kind!r} is not supported; use one of {', '.join(_FORMATS)}",
                   "response_format.type")
    check_fields(fmt, frozenset({"type", "json_schema"} if kind == "json_schema" else {"type"}), "response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar("json_schema", '{"type": "object"}')
    spec = fmt.get("json_schema")
    if spec is None:
        raise _bad("missing required parameter 'response_format.json_schema'", "response_format.json_schema",
                   "missing_required_parameter")
    if not isinstance(spec, dict):
        raise _bad("'response_format.json_schema' must be an object", "response_format.json_schema", "invalid_type")
    check_fields(spec, frozenset({"name", "description", "schema", "strict"}), "response_format.json_schema")
    name = spec.get("name")
    if name is None:
        raise _bad("missing required parameter 'response_format.json_schema.name'", "response_format.json_schema.name",
                   "missing_required_parameter")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise _bad("response_format.json_schema.name must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'",
                   "response_format.json_schema.name")
    if not isinstance(spec.get("description", ""), str):
        raise _bad("response_format.json_schema.description must be a string",
                   "response_format.json_schema.description", "invalid_type")
    if spec.get("strict") not in (None, True, False):
        raise _bad("response_format.json_schema.strict must be a boolean", "response_format.json_schema.strict",
                   "invalid_type")
    schema = spec.get("schema", {})  # none given: any JSON value (strict or not, the schema is always enforced)
    if not isinstance(schema, dict):
        raise _bad("response_format.json_schema.schema must be a JSON Schema object",
                   "response_format.json_schema.schema", "invalid_type")
    return Grammar("json_schema", json.dumps(schema))


def request_grammar(body: dict) -> tuple[Grammar | None, str]:
    """The request's constraint (None: none) and the field it came from, which its errors name."""
    from_format = _response_format(body.get("response_format"))
    ext = body.get("grammar")
    if ext is None:
        return from_format, "response_format"
    if from_format is not None:
        raise _bad("give either 'response_format' (json_object or json_schema) or 'grammar', not both", "grammar")
    return parse_grammar(ext), "grammar"  # the same field as a session's response.create


def _completion_prompt(server, prompt: str, suffix: object,
                       params: SamplingParams) -> tuple[Callable[[], list[int]], SamplingParams]:
    """A completion's prompt: plain text (control tokens written in it count, as OpenAI's raw
    prompts do), or with `suffix` an infill at the end of `prompt` (engine/fim.py: the model's FIM
    tokens, in the server's order; the file is content there)."""
    tokenizer = server.engine.tokenizer
    if suffix is None:
        return (lambda: tokenizer.encode(prompt)), params
    if not isinstance(suffix, str):
        raise _bad("'suffix' must be a string", "suffix", "invalid_type")
    fmt = server.fim
    if not fmt.uses_suffix and suffix:
        raise ProtocolError(f"{server.model_name} has no fill-in-the-middle tokens, so it cannot take a 'suffix'; "
                            "send the text before the cursor alone", code="unsupported_parameter", param="suffix")
    params = dataclasses.replace(params, stop_token_ids=params.stop_token_ids + fmt.stop_ids)
    return (lambda: fim_prompt(tokenizer, fmt, prompt, suffix)), params


class HttpApi:
    def __init__(self, server):
        self.server = server

    async def chat_completions(self, request: Request) -> Response:
        return await self._handle(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._handle(request, chat=False)

    async def models(self, request: Request) -> Response:
        s = self.server
        return JSONResponse({"object": "list", "data": [
            {"id": s.model_name, "object": "model", "created": s.started, "owned_by": "pairline",
             "max_model_len": s.engine.runtime.n_ctx}]})

    async def _handle(self, request: Request, chat: bool) -> Response:
        s = self.server
        try:
            body = await read_json(request, s.cfg.max_message_bytes)
            check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS, "the request body")
            if chat:
                messages = chat_messages(body)
                params = _sampling(body, s, "max_completion_tokens", s.cfg.default_max_output_tokens)
                continued = continue_final(body, messages)

                def make_prompt() -> list[int]:
                    return s.engine.chat_prompt(messages, continue_final=continued)
            else:
                prompt = completion_prompt(body)
                params = _sampling(body, s, "max_tokens", 16)
                make_prompt, params = _completion_prompt(s, prompt, body.get("suffix"), params)
            prediction = parse_prediction(body.get("prediction"))
            grammar, grammar_param = request_grammar(body)
            stream = bool(body.get("stream"))
            opts = body.get("stream_options") or {}
            if not isinstance(opts, dict):
                raise ProtocolError("'stream_options' must be an object", code="invalid_type", param="stream_options")
            check_fields(opts, frozenset({"include_usage", "include_obfuscation", "continuous_usage_stats"}),
                         "stream_options")
            if grammar is not None:
                await check_grammar(grammar, grammar_param, s.engine.tokenizer)
        except ProtocolError as err:
            s.metrics.error(err.code)
            request.state.log = err.code
            return error_response(err)

        events = JobEvents(asyncio.get_running_loop())
        job = Job("http", make_prompt, params, events.put, prediction=prediction, grammar=grammar,
                  infill=not chat and body.get("suffix") is not None)
        try:
            s.scheduler.submit(job)
        except QueueFull as err:
            s.metrics.error("rate_limit_exceeded")
            request.state.log = "queue full"
            busy = ProtocolError(f"the server is busy ({err}); retry shortly", code="rate_limit_exceeded",
                                 status=429, type_="rate_limit_error")
            return error_response(busy,
                                  headers={"Retry-After": str(s.cfg.retry_after_s)})
        ctx = _Reply(s, chat, job, body.get("model") or s.model_name, request)
        if stream:
            usage = "every" if opts.get("continuous_usage_stats") else "last" if opts.get("include_usage") else None
            return StreamingResponse(ctx.sse(events, usage), media_type="text/event-stream", headers=SSE_HEADERS)
        try:
            return await ctx.whole(events)
        except asyncio.CancelledError:
            job.cancel.cancel()
            raise


class _Reply:
    """Formats one request's events as OpenAI chunks or one body."""

    def __init__(self, server, chat: bool, job: Job, model: str, request: Request):
        self.server, self.chat, self.job, self.model, self.request = server, chat, job, model, request
        self.id = new_id("chatcmpl" if chat else "cmpl").replace("_", "-", 1)
        self.created = int(time.time())
        self.object = ("chat.completion" if chat else "text_completion")
        self.fp = fingerprint(server.model_name)

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fp}

    def _choice(self, text: str | None, finish: str | None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    async def sse(self, events: JobEvents, usage: str | None):
        """usage: None, "last" (`include_usage`: a usage chunk at the end) or "every" (vLLM's
        `continuous_usage_stats`: the counts so far on every chunk too, which is how a router knows
        how many tokens of a cut answer were spent)."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        include_usage = usage is not None
        g = None
        try:
            first = True
            while True:
                kind, payload = await events.get()
                if kind == "tokens":
                    text = "".join(ev.text for ev in payload)
                    if text or (first and self.chat):
                        chunk = self._base(obj) | {"choices": [self._choice(text, None, first)]}
                        if usage == "every":
                            n_in, n_out = len(self.job.prompt or ()), payload[-1].index + 1
                            chunk["usage"] = {"prompt_tokens": n_in, "completion_tokens": n_out,
                                              "total_tokens": n_in + n_out}
                        elif include_usage:
                            chunk["usage"] = None
                        yield sse_data(chunk)
                        first = False
                    continue
                if kind == "error":
                    err = engine_error(payload)
                    self.server.metrics.error(err.code)
                    self.request.state.log = err.code
                    yield sse_data({"error": err.to_error()})
                    break
                g = payload
                chunk = self._base(obj) | {"choices": [self._choice(None, _finish(g), False)],
                                           "timings": self.job.server_timings()}
                if include_usage:
                    chunk["usage"] = None
                yield sse_data(chunk)
                if include_usage:
                    yield sse_data(self._base(obj) | {"choices": [], "usage": g.usage.to_openai()})
                break
            yield SSE_DONE
        finally:
            self.job.cancel.cancel()  # no-op when finished; stops the engine when the client went away
            self._log(g)

    async def whole(self, events: JobEvents) -> Response:
        checked = time.monotonic()
        while True:
            try:
                kind, payload = await asyncio.wait_for(events.get(), 0.5)
            except asyncio.TimeoutError:
                kind = None
            if time.monotonic() - checked > 0.5:  # a client that hung up stops its work (streams notice by themselves)
                checked = time.monotonic()
                if await self.request.is_disconnected():
                    self.job.cancel.cancel()
            if kind not in (None, "tokens"):
                break
        if kind == "error":
            err = engine_error(payload)
            self.server.metrics.error(err.code)
            self.request.state.log = err.code
            return error_response(err)
        g: Generation = payload
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": g.text, "refusal": None},
                      "logprobs": None, "finish_reason": _finish(g)}
        else:
            choice = {"index": 0, "text": g.text, "logprobs": None, "finish_reason": _finish(g)}
        self._log(g)
        return JSONResponse(self._base(self.object) | {"choices": [choice], "usage": g.usage.to_openai(),
                                                       "timings": self.job.server_timings()})

    def _log(self, g: Generation | None) -> None:
        if g is not None:
            t = self.job.server_timings()
            self.request.state.log = (f"in={g.usage.prompt_tokens} cached={g.usage.cached_tokens} "
                                      f"out={g.usage.completion_tokens} ttft={1e3 * (t['server_ttft_s'] or 0):.1f}ms "
                                      f"{g.finish_reason}")


def continue_final(body: dict, messages: list[dict]) -> bool:
    """vLLM's `continue_final_message` (write on from the last, assistant, message) and
    `add_generation_prompt` (only False with it: a new answer always starts one)."""
    cont, gen = body.get("continue_final_message", False), body.get("add_generation_prompt", True)
    for name, value in (("continue_final_message", cont), ("add_generation_prompt", gen)):
        if not isinstance(value, bool):
            raise ProtocolError(f"{name!r} must be a boolean", code="invalid_type", param=name)
    if cont and gen:
        raise _bad("'continue_final_message' needs 'add_generation_prompt': false", "add_generation_prompt")
    if not cont and not gen:
        raise _bad("'add_generation_prompt': false is only supported with 'continue_final_message': true",
                   "add_generation_prompt")
    if cont and messages[-1]["role"] != "assistant":
        raise _bad("'continue_final_message' needs the last message to be the assistant's", "messages")
    return cont


def _finish(g: Generation) -> str:
    # OpenAI knows stop and length; a cancelled request only ends that way when its client left
    return "length" if g.finish_reason == "length" else "stop"

