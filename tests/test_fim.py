"""Fill-in-the-middle: formats, windows, the inline stop rules, the suggester on real weights
(Qwen2.5-Coder-0.5B has FIM tokens; SmolLM2 has none), and `suffix` on the server's completions."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairline.engine.fim import (
    InlineRules,
    InlineStopper,
    fim_format,
    fim_prompt,
    heal_grammar,
    healed_prompt,
    window,
)
from pairline.engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def qwen_tok(qwen05_gguf) -> Tokenizer:
    return Tokenizer.load(qwen05_gguf)


@pytest.fixture(scope="module")
def smol_tok(smollm2_gguf) -> Tokenizer:
    return Tokenizer.load(smollm2_gguf)


def test_formats_follow_the_vocabulary(qwen_tok, smol_tok):
    spm = fim_format(qwen_tok, "spm")
    assert (spm.order, spm.prefix_id, spm.suffix_id, spm.middle_id) == ("spm", 151659, 151661, 151660)
    assert qwen_tok.token_to_id("<|endoftext|>") in spm.stop_ids and qwen_tok.token_to_id("<|fim_pad|>") in spm.stop_ids
    assert fim_format(qwen_tok, "psm").order == "psm"
    assert fim_format(smol_tok, "spm").order == "prefix"  # no FIM tokens: a plain continuation
    with pytest.raises(Exception, match="order"):
        fim_format(qwen_tok, "sideways")


def test_prompt_orders_and_file_text_stays_content(qwen_tok):
    spm, psm = fim_format(qwen_tok, "spm"), fim_format(qwen_tok, "psm")
    pre, suf = "x = <|fim_middle|>", "\nprint(x)\n"
    ids = fim_prompt(qwen_tok, spm, pre, suf)
    assert ids[:2] == [spm.prefix_id, spm.suffix_id]
    assert ids.count(spm.middle_id) == 1  # the one written in the file is plain text
    assert qwen_tok.decode(ids) == "<|fim_prefix|><|fim_suffix|>" + suf + "<|fim_middle|>" + pre
    assert qwen_tok.decode(fim_prompt(qwen_tok, psm, pre, suf)) == (
        "<|fim_prefix|>" + pre + "<|fim_suffix|>" + suf + "<|fim_middle|>")
    # healing leaves the prefix's last token out; the answer must start with its text
    healed, text = healed_prompt(qwen_tok, spm, "return a ", suf)
    assert qwen_tok.decode(healed).endswith("<|fim_middle|>return a") and text == " "
    assert healed_prompt(qwen_tok, spm, "", suf)[1] == ""
    assert heal_grammar("") is None and heal_grammar(" (").source.startswith(r"\ \(")


def test_spm_prompt_grows_by_appending_while_typing(qwen_tok):
    fmt = fim_format(qwen_tok, "spm")
    suffix = "\n    return total\n"
    before = fim_prompt(qwen_tok, fmt, "def f(xs):\n    total = su", suffix)
    after = fim_prompt(qwen_tok, fmt, "def f(xs):\n    total = sum(x", suffix)
    shared = next(i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b)
    assert len(after) - shared <= 4  # only the typed characters' tokens are new


FILE = "".join(f"line_{i} = {i}\n" for i in range(400))


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(FILE)), typed=st.text("abc (),\n", max_size=40))
def test_window_start_holds_while_typing_and_keeps_whole_lines(cut, typed):
    cut = FILE.rfind("\n", 0, cut) + 1  # a line start
    pre, suf = window(FILE[:cut], FILE[cut:], prefix_chars=1500, suffix_chars=300, step=32)
    pre2, _ = window(FILE[:cut] + typed, FILE[cut:], prefix_chars=1500, suffix_chars=300, step=32)
    assert FILE[:cut].endswith(pre) and len(pre) <= 1500 + 1 or cut == 0
    assert pre == "" or FILE[: cut - len(pre)].endswith("\n") or cut == len(pre)  # whole lines
    assert FILE[cut:].startswith(suf) and len(suf) <= 300
    if typed.count("\n") == 0 and len(pre) + len(typed) < 1500 - 32 * 12:
        assert pre2 == pre + typed  # same start: typing appended to the prompt


def _shown(prefix: str, suffix: str, model: str, **rules) -> str:
    s = InlineStopper(prefix, suffix, InlineRules(**rules))
    out = "".join(s.push(ch) for ch in model)  # one character per event: the hardest split
    return out + s.finish()


@pytest.mark.parametrize(("prefix", "suffix", "model", "shown"), [
    # mid-line: one line
    ("x = foo(", "a)\nprint(x)\n", "1, 2)\nbar()", "1, 2)"),
    # an opener's body ends where the code dedents out of it
    ("def f(x):", "\n\ndef g(): pass\n", "\n    y = x\n    return y\n\ndef h():\n    pass",
     "\n    y = x\n    return y"),
    # inside a block: a line leaving the block ends the suggestion
    ("    if a:\n        ", "\n    return b\n", "b = 1\n        c = 2\n    d = 3\n", "b = 1\n        c = 2"),
    # the model writing the file's next line again
    ("def f():\n    ", "\n    return 2\n", "x = 1\n    return 2\n", "x = 1"),
    # blank lines show only between lines that count
    ("if a:\n    ", "\n", "x = 1\n\n    y = 2\n\n\n", "x = 1\n\n    y = 2"),
])
def test_inline_stop_rules(prefix, suffix, model, shown):
    assert _shown(prefix, suffix, model) == shown


def test_inline_max_lines_and_forced_single_line():
    assert _shown("", "", "a\nb\nc\nd", max_lines=2) == "a\nb"
    assert _shown("", "\n", "a\nb", single_line=True) == "a"


# --------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def qwen_engine(qwen05_gguf):
    from pairline.engine.load import load_engine

    return load_engine(str(qwen05_gguf), n_ctx=2048, runtime="llamacpp")


CODE_PRE = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return "  # ends on a space: healed
CODE_SUF = "\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.mark.slow
def test_suggester_infills_reuses_kv_and_latest_wins(qwen_engine):
    from pairline.assistant.suggest import LocalSuggester

    s = LocalSuggester(qwen_engine)
    first = s.suggest(CODE_PRE, CODE_SUF).run()
    assert first.finish_reason == "stop" and first.text.strip() == "a + b", first.text
    assert first.first_s is not None and first.prompt_tokens > 20
    # one more typed character: the prompt grew at its end, so the KV of the rest is reused
    typed = s.suggest(CODE_PRE + "a", CODE_SUF).run()
    assert typed.cached_tokens >= typed.prompt_tokens - 4
    assert typed.text.strip() == "+ b", typed.text
    # a newer request cancels the one before it: nothing more is shown for the old position
    old = s.suggest(CODE_PRE, CODE_SUF)
    it = iter(old)
    new = s.suggest(CODE_PRE + "a ", CODE_SUF)
    assert list(it) == [] and old.finish_reason == "cancelled" and old.text == ""
    assert new.run().finish_reason == "stop"
    # the suggester's KV is its own: the main engine's cache is untouched by suggestions
    assert s.engine is not qwen_engine and s.engine.cached[: len(typed.text)] != []


@pytest.mark.slow
def test_suggester_stops_a_stale_suggestion_mid_stream(qwen_engine):
    from pairline.assistant.suggest import LocalSuggester

    s = LocalSuggester(qwen_engine)
    long = s.suggest("# a list of the first 40 prime numbers\nPRIMES = [", "]\n", max_tokens=200,
                     rules=InlineRules(max_lines=40))
    got: list[str] = []
    seen = threading.Event()

    def consume() -> None:
        for d in long:
            got.append(d)
            seen.set()

    t = threading.Thread(target=consume)
    t.start()
    assert seen.wait(60)
    s.suggest("# a list of the first 40 prime numbers\nPRIMES = [2", "]\n", max_tokens=4)  # a keystroke
    t.join(30)
    assert not t.is_alive() and long.finish_reason == "cancelled"
    assert len(long.text) < 120  # it stopped well before its 200 tokens


@pytest.mark.slow
def test_server_completions_take_a_suffix(qwen_engine):
    from pairline.server.app import ServerThread
    from pairline.server.config import ServerConfig

    with ServerThread(qwen_engine.fork(), ServerConfig()) as srv:
        body = {"prompt": CODE_PRE, "suffix": CODE_SUF, "max_tokens": 8, "temperature": 0}
        r = httpx.post(srv.base_url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"].strip().startswith("a + b")
        with httpx.stream("POST", srv.base_url + "/v1/completions", json=body | {"stream": True}, timeout=120) as r:
            assert r.status_code == 200
            text = "".join(__import__("json").loads(line[6:])["choices"][0]["text"]
                           for line in r.iter_lines() if line.startswith("data: {"))
        assert text.strip().startswith("a + b")
        bad = httpx.post(srv.base_url + "/v1/completions", json=body | {"suffix": 3}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "suffix"
        # the HTTP suggester (`pairline lsp --server`): the same infill, and latest wins at once
        from pairline.assistant.suggest import HttpSuggester

        remote = HttpSuggester(srv.base_url)
        assert remote.suggest(CODE_PRE, CODE_SUF, max_tokens=8).run().text.strip().startswith("a + b")
        long = remote.suggest("# the first 60 prime numbers\nPRIMES = [", "]\n", max_tokens=300,
                              rules=InlineRules(max_lines=60))
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.extend(long))
        reader.start()
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        newer = remote.suggest(CODE_PRE, CODE_SUF, max_tokens=4)  # the next keystroke
        reader.join(30)
        assert not reader.is_alive() and time.monotonic() - t0 < 5 and long.finish_reason == "cancelled"
        assert newer.run().finish_reason in ("stop", "length")
        remote.close()
        metrics = httpx.get(srv.base_url + "/metrics", timeout=30).text
        assert 'pairline:fim_requests_total{model_name=' in metrics
        assert "pairline:fim_time_to_first_token_seconds_count" in metrics
        assert re.search(r"pairline:fim_requests_cancelled_total\{[^}]*\} [1-9]", metrics), metrics[-2000:]


def test_server_refuses_a_suffix_for_a_model_without_fim_tokens(smol_tok):
    from pairline.server.app import ServerThread
    from pairline.server.config import ServerConfig
    from tests.engine_helpers import tiny_engine

    with ServerThread(tiny_engine(smol_tok, n_ctx=512), ServerConfig()) as srv:
        body = {"prompt": "def f(", "suffix": "):\n    pass\n", "max_tokens": 3}
        r = httpx.post(srv.base_url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "unsupported_parameter" and "fill-in-the-middle" in err["message"]
        ok = httpx.post(srv.base_url + "/v1/completions", json=body | {"suffix": ""}, timeout=60)
        assert ok.status_code == 200  # nothing after the cursor: a plain completion
