"""Constrained decoding (engine/constraint.py and the loop in generate.py): answers match their
grammar, forced tokens skip model steps, and speculation stays lossless under the mask."""

from __future__ import annotations

import json
import re

import pytest

from pairline.engine.constraint import Grammar
from pairline.engine.sampling import SamplingParams
from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError
from tests.engine_helpers import tiny_engine

WORDS = ("alpha", "beta", "gamma", "delta")
WORD_LIST = Grammar("lark", 'start: WORD (", " WORD)~3\nWORD: "alpha" | "beta" | "gamma" | "delta"\n')
WORD_LIST_RE = re.compile(r"(alpha|beta|gamma|delta)(, (alpha|beta|gamma|delta)){3}")


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def engine(tokenizer):
    return tiny_engine(tokenizer, arch="qwen2", n_ctx=1024)


def test_a_random_model_answers_inside_its_grammar(engine):
    g = engine.generate("Some words:", SamplingParams(max_tokens=64), grammar=WORD_LIST).run()
    assert WORD_LIST_RE.fullmatch(g.text), g.text
    assert g.finish_reason == "stop"  # the grammar ended the answer, no end-of-turn token needed


def test_without_the_grammar_the_same_model_writes_anything(engine):
    g = engine.generate("Some words:", SamplingParams(max_tokens=24)).run()
    assert not WORD_LIST_RE.fullmatch(g.text)  # so the test above measures the constraint


def test_forced_tokens_are_appended_without_model_steps(engine):
    literal = "def main():\n    return run_everything_in_order()\n"
    grammar = Grammar("lark", f"start: {json.dumps(literal)} NAME\nNAME: /[a-z]+/\n")
    g = engine.generate("x", SamplingParams(max_tokens=40), speculation="off", grammar=grammar).run()
    assert g.text.startswith(literal)
    n_forced = g.usage.forced_tokens
    assert n_forced >= len(engine.tokenizer.encode_text(literal)) - 2  # all but the tokens that could merge
    assert g.timings.forward_calls <= g.usage.completion_tokens - n_forced  # forced tokens cost no step


@pytest.mark.parametrize("speculation", ["prompt_lookup", "prediction"])
def test_speculation_stays_lossless_under_the_mask(engine, speculation):
    grammar = Grammar("regex", r"(alpha|beta|gamma|delta)( (alpha|beta|gamma|delta)){0,12}\.")
    prompt = "alpha beta gamma delta alpha beta gamma delta alpha beta"
    params = SamplingParams(max_tokens=48)
    plain = engine.generate(prompt, params, speculation="off", grammar=grammar).run()
    kw = {"prediction": "alpha beta zeta gamma delta beta alpha."} if speculation == "prediction" else {}
    drafted = engine.generate(prompt, params, speculation="prompt_lookup", grammar=grammar, **kw).run()
    assert drafted.token_ids == plain.token_ids
    assert drafted.usage.draft_tokens > 0  # drafts were really verified under the mask


def test_sampling_under_a_grammar_is_seeded(engine):
    params = SamplingParams(max_tokens=64, temperature=1.0, seed=7)
    a = engine.generate("words", params, grammar=WORD_LIST).run()
    b = engine.generate("words", params, grammar=WORD_LIST).run()
    assert a.text == b.text and WORD_LIST_RE.fullmatch(a.text)


def test_json_schema(engine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"], "additionalProperties": False}
    grammar = Grammar("json_schema", json.dumps(schema))
    g = engine.generate("json:", SamplingParams(max_tokens=60), grammar=grammar).run()
    value = json.loads(g.text)
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and isinstance(value["n"], int)


def test_a_prefix_already_written_is_consumed_first(engine):
    prompt = engine.tokenizer.encode_text("List: alpha, beta")
    grammar = Grammar("lark", WORD_LIST.source, prefix="alpha, beta")
    g = engine.generate(prompt, SamplingParams(max_tokens=40), grammar=grammar).run()
    assert WORD_LIST_RE.fullmatch("alpha, beta" + g.text), g.text


def test_bad_grammars_are_clear_errors(engine):
    with pytest.raises(PairlineError, match="invalid"):
        engine.generate("x", grammar=Grammar("lark", "start: undefined_rule\n"))
    with pytest.raises(PairlineError, match="does not match"):
        engine.generate("x", grammar=Grammar("lark", WORD_LIST.source, prefix="omega"))
    with pytest.raises(PairlineError, match="unknown grammar kind"):
        Grammar("yaml", "a: b")  # type: ignore[arg-type]
    with pytest.raises(PairlineError, match="grammar is an object"):
        Grammar.from_dict(["lark"])


def test_from_the_wire():
    g = Grammar.from_dict({"kind": "json_schema", "source": {"type": "integer"}})
    assert g.kind == "json_schema" and json.loads(g.source) == {"type": "integer"} and g.prefix == ""
    assert Grammar.from_dict(g.to_dict()) == g


def test_real_weights_follow_a_grammar(smollm2_gguf):
    """SmolLM2-135M (real weights, llama.cpp): an answer that must be one of three words and a
    number, which the model left alone would not write."""
    from pairline.engine.load import load_engine

    engine = load_engine(smollm2_gguf, n_ctx=512)
    grammar = Grammar("regex", r"(red|green|blue) [0-9]{1,3}")
    messages = [{"role": "user", "content": "Name a colour and a number between 1 and 100."}]
    g = engine.chat(messages, SamplingParams(max_tokens=16), grammar=grammar).run()
    assert re.fullmatch(r"(red|green|blue) [0-9]{1,3}", g.text), g.text
