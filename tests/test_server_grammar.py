"""Structured output over the OpenAI-compatible HTTP: `response_format` (text, json_object,
json_schema, as OpenAI defines them) and pairline's `grammar` extension, against a real uvicorn
server; bad schemas and grammars are 400s with OpenAI's error body, streaming or not."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import openai
import pydantic
import pytest

from pairline.engine.tokenizer import Tokenizer
from pairline.server.app import ServerThread
from pairline.server.config import ServerConfig
from tests.engine_helpers import tiny_engine

MSGS = [{"role": "user", "content": "Describe a traffic light as JSON."}]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["colour", "ok", "n"],
          "properties": {"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
                         "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "light", "schema": SCHEMA, "strict": True}}
REGEX = r"[a-z]{1,8}-[0-9]{2}"


def follows_schema(value: object) -> bool:
    return (isinstance(value, dict) and set(value) == {"colour", "ok", "n"}
            and value["colour"] in ("red", "green", "blue") and isinstance(value["ok"], bool)
            and type(value["n"]) is int and 0 <= value["n"] <= 99)


@pytest.fixture(scope="module")
def srv(smollm2_gguf):
    engine = tiny_engine(Tokenizer.load(smollm2_gguf), n_ctx=1024)
    s = ServerThread(engine, ServerConfig(max_message_bytes=64 * 1024)).__enter__()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", timeout=60, max_retries=0)


def stream_text(client: openai.OpenAI, **kw) -> tuple[str, str]:
    chunks = list(client.chat.completions.create(model="x", messages=MSGS, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].choices[0].finish_reason


# ---------------------------------------------------------------- answers that match


def test_json_schema_answer_follows_the_schema(client):
    r = client.chat.completions.create(model="x", messages=MSGS, max_tokens=80, response_format=JSON_SCHEMA)
    value = json.loads(r.choices[0].message.content)
    assert follows_schema(value), value
    assert r.choices[0].finish_reason == "stop"  # the schema ended the answer
    assert set(r.usage.model_dump(exclude_none=True)) <= {"prompt_tokens", "completion_tokens", "total_tokens",
                                                          "prompt_tokens_details", "completion_tokens_details"}


def test_json_schema_streamed_is_the_same_answer(client):
    whole = client.chat.completions.create(model="x", messages=MSGS, max_tokens=80, response_format=JSON_SCHEMA)
    text, finish = stream_text(client, max_tokens=80, response_format=JSON_SCHEMA)
    assert text == whole.choices[0].message.content and finish == "stop"
    assert follows_schema(json.loads(text))


def test_json_object(client):
    r = client.chat.completions.create(model="x", messages=MSGS, max_tokens=80,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_text_format_is_no_constraint(client):
    plain = client.chat.completions.create(model="x", messages=MSGS, max_tokens=12)
    text = client.chat.completions.create(model="x", messages=MSGS, max_tokens=12, response_format={"type": "text"})
    assert text.choices[0].message.content == plain.choices[0].message.content
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain.choices[0].message.content)  # so the tests above measure the constraint


def test_grammar_extension_regex(client):
    r = client.chat.completions.create(model="x", messages=MSGS, max_tokens=40,
                                       extra_body={"grammar": {"kind": "regex", "source": REGEX}})
    assert re.fullmatch(REGEX, r.choices[0].message.content), r.choices[0].message.content
    text, finish = stream_text(client, max_tokens=40, extra_body={"grammar": {"kind": "regex", "source": REGEX}})
    assert text == r.choices[0].message.content and finish == "stop"


def test_grammar_extension_lark_and_schema_on_completions(client):
    lark = 'start: WORD (", " WORD)~2\nWORD: "alpha" | "beta" | "gamma"\n'
    c = client.completions.create(model="x", prompt="Three words:", max_tokens=40,
                                  extra_body={"grammar": {"kind": "lark", "source": lark}})
    assert re.fullmatch(r"(alpha|beta|gamma)(, (alpha|beta|gamma)){2}", c.choices[0].text), c.choices[0].text
    c = client.completions.create(model="x", prompt="JSON:", max_tokens=80,
                                  extra_body={"grammar": {"kind": "json_schema", "source": SCHEMA}})
    assert follows_schema(json.loads(c.choices[0].text))
    c = client.completions.create(model="x", prompt="JSON:", max_tokens=80, extra_body={"response_format": JSON_SCHEMA})
    assert follows_schema(json.loads(c.choices[0].text))


# ---------------------------------------------------------------- bad input: 400, never a broken stream

LARK_BAD = {"kind": "lark", "source": "start: undefined_rule\n"}


def js(**spec) -> dict:
    return {"type": "json_schema", "json_schema": spec}


@pytest.mark.parametrize("extra, code, param", [
    ({"response_format": {"type": "xml"}}, "invalid_value", "response_format.type"),
    ({"response_format": "json"}, "invalid_type", "response_format"),
    ({"response_format": {"type": "json_object", "schema": SCHEMA}}, "unknown_parameter", "schema"),
    ({"response_format": {"type": "json_schema"}}, "missing_required_parameter", "response_format.json_schema"),
    ({"response_format": js(schema=SCHEMA)}, "missing_required_parameter", "response_format.json_schema.name"),
    ({"response_format": js(name="a b", schema=SCHEMA)}, "invalid_value", "response_format.json_schema.name"),
    ({"response_format": js(name="x", schema=[1, 2])}, "invalid_type", "response_format.json_schema.schema"),
    ({"response_format": js(name="x", schema="{}")}, "invalid_type", "response_format.json_schema.schema"),
    ({"response_format": js(name="x", schema=SCHEMA, strict="yes")}, "invalid_type",
     "response_format.json_schema.strict"),
    ({"response_format": js(name="x", schema=SCHEMA, extra=1)}, "unknown_parameter", "extra"),
    ({"response_format": js(name="x", schema={"type": "frob"})}, "invalid_value", "response_format"),
    ({"response_format": js(name="x", schema={"type": "object", "properties": 5})}, "invalid_value",
     "response_format"),
    ({"grammar": LARK_BAD}, "invalid_value", "grammar"),
    ({"grammar": {"kind": "regex", "source": "(a"}}, "invalid_value", "grammar"),
    ({"grammar": {"kind": "yaml", "source": "a: b"}}, "invalid_value", "grammar"),
    ({"grammar": {"kind": "regex", "source": ""}}, "invalid_value", "grammar"),
    ({"grammar": {"kind": "lark", "source": {"start": 1}}}, "invalid_value", "grammar"),
    ({"grammar": "start: /a/"}, "invalid_type", "grammar"),
    ({"grammar": {"kind": "regex", "source": "a", "prefix": "a"}}, "unknown_parameter", "prefix"),
    ({"grammar": {"kind": "regex", "source": REGEX}, "response_format": {"type": "json_object"}}, "invalid_value",
     "grammar"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_structured_output_is_a_400(srv, client, extra, code, param, stream):
    body = {"model": "x", "messages": MSGS, "max_tokens": 8, "stream": stream, **extra}
    r = httpx.post(srv.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == code and err["param"] == param
    assert err["message"] and "Traceback" not in err["message"]


def test_bad_grammar_on_completions_and_through_the_sdk(srv, client):
    r = httpx.post(srv.base_url + "/v1/completions", timeout=60,
                   json={"model": "x", "prompt": "x", "stream": True, "grammar": LARK_BAD})
    assert r.status_code == 400 and "undefined_rule" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="x", messages=MSGS, stream=True,
                                       response_format=js(name="x", schema={"type": "frob"}))
    assert "frob" in str(info.value)
    # the server is fine afterwards, and constrained requests still work
    r = client.chat.completions.create(model="x", messages=MSGS, max_tokens=80, response_format=JSON_SCHEMA)
    assert follows_schema(json.loads(r.choices[0].message.content))


# ---------------------------------------------------------------- real weights, the SDK's own structured output


class Light(pydantic.BaseModel):
    colour: Literal["red", "amber", "green"]
    seconds: int


@pytest.fixture(scope="module")
def real(smollm2_gguf):
    from pairline.engine.load import load_engine

    s = ServerThread(load_engine(str(smollm2_gguf), n_ctx=1024), ServerConfig(max_sessions=1)).__enter__()
    yield openai.OpenAI(base_url=s.base_url + "/v1", api_key="unused", timeout=120, max_retries=0)
    s.stop()


@pytest.mark.slow
def test_real_weights_sdk_parse(real):
    """`client.chat.completions.parse` sends OpenAI's strict json_schema built from a pydantic
    model, and parses the answer back into it."""
    messages = [{"role": "user", "content": "A traffic light is red for 30 seconds. Answer in JSON."}]
    r = real.chat.completions.parse(model="x", messages=messages, max_tokens=60, response_format=Light)
    light = r.choices[0].message.parsed
    assert isinstance(light, Light), r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_real_weights_stream_with_a_grammar(real):
    messages = [{"role": "user", "content": "Name a colour and a number between 1 and 100."}]
    chunks = list(real.chat.completions.create(
        model="x", messages=messages, max_tokens=16, stream=True,
        extra_body={"grammar": {"kind": "regex", "source": r"(red|green|blue) [0-9]{1,3}"}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert re.fullmatch(r"(red|green|blue) [0-9]{1,3}", text), text
