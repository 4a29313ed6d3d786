"""The generation loop: speculation is lossless, sampling, stops, limits, prefix reuse, cancel."""

from __future__ import annotations

import threading

import pytest

from pairline.engine.generate import CancelToken
from pairline.engine.sampling import SamplingParams
from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError

from .engine_helpers import tiny_engine

CODE = '''def greet(name):
    """Say hello."""
    message = "Hello, " + name
    print(message)
    return message


def farewell(name):
    message = "Goodbye, " + name
    print(message)
    return message
'''


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


@pytest.fixture(scope="module", params=[("llama", "none"), ("qwen2", "none"), ("qwen2", "int8")],
                ids=["llama-bf16", "qwen2-bf16", "qwen2-int8"])
def engine(tokenizer, request):
    arch, quant = request.param
    return tiny_engine(tokenizer, arch=arch, n_ctx=1024, quant=quant)


def _greedy(engine, prompt, n=64, **kw):
    engine.reset()
    return engine.generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True), **kw).run()


def test_prompt_lookup_is_lossless(engine):
    plain = _greedy(engine, CODE, speculation="off")
    # a prompt that holds the continuation, so lookup finds long drafts
    prompt = CODE + plain.text + "\n\n" + CODE
    plain = _greedy(engine, prompt, speculation="off")
    spec = _greedy(engine, prompt, speculation="prompt_lookup")
    assert spec.token_ids == plain.token_ids


def test_prediction_is_lossless_and_counted(engine):
    plain = _greedy(engine, CODE, speculation="off")
    exact = _greedy(engine, CODE, prediction=plain.token_ids)  # ids: random models tokenize oddly
    assert exact.token_ids == plain.token_ids
    # the model's own output as prediction: every drafted token is accepted; each forward adds
    # one token of the model's own on top of the accepted drafts, and the first comes from prefill
    assert exact.usage.rejected_prediction_tokens == 0
    assert exact.usage.accepted_prediction_tokens + exact.timings.forward_calls + 1 == len(plain.token_ids)
    assert exact.timings.forward_calls < len(plain.token_ids) // 3
    # a partly wrong prediction: a changed word in the middle, then realignment
    words = plain.text.split(" ")
    words[len(words) // 2] = "zebra"
    wrong = _greedy(engine, CODE, prediction=" ".join(words))
    assert wrong.token_ids == plain.token_ids
    assert wrong.usage.rejected_prediction_tokens > 0
    assert wrong.usage.accepted_prediction_tokens > len(plain.token_ids) // 3


def test_useless_prediction_is_still_lossless(engine):
    plain = _greedy(engine, CODE, speculation="off")
    junk = _greedy(engine, CODE, prediction="lorem ipsum dolor sit amet " * 20)
    assert junk.token_ids == plain.token_ids


def test_sampling_with_speculation_is_seeded_and_valid(engine):
    params = SamplingParams(max_tokens=40, temperature=0.8, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    engine.reset()
    a = engine.generate(CODE, params, prediction=CODE).run()
    engine.reset()
    b = engine.generate(CODE, params, prediction=CODE).run()
    assert a.token_ids == b.token_ids and len(a.token_ids) == 40
    engine.reset()
    c = engine.generate(CODE, SamplingParams(max_tokens=40, temperature=0.8, seed=8, ignore_eos=True)).run()
    assert c.token_ids != a.token_ids


def test_max_tokens_and_events(engine):
    engine.reset()
    g = engine.generate(CODE, SamplingParams(max_tokens=10, ignore_eos=True))
    events = list(g)
    assert g.finish_reason == "length" and len(g.token_ids) == 10
    assert "".join(e.text for e in events) == g.text == engine.tokenizer.decode(g.token_ids)
    assert [e.index for e in events if e.token_id >= 0] == list(range(10))
    assert g.usage.completion_tokens == 10 and g.usage.prompt_tokens == len(engine.tokenizer.encode(CODE))
    assert g.timings.ttft_s > 0 and g.timings.total_s >= g.timings.ttft_s


def test_stop_string_is_cut_and_never_streamed(engine):
    plain = _greedy(engine, CODE, n=40, speculation="off")
    stop = plain.text[10:14]
    engine.reset()
    g = engine.generate(CODE, SamplingParams(max_tokens=40, stop=(stop,), ignore_eos=True))
    streamed = "".join(e.text for e in g)
    assert g.finish_reason == "stop"
    assert streamed == g.text == plain.text[: plain.text.find(stop)]


def test_stop_token(engine):
    plain = _greedy(engine, CODE, n=20, speculation="off")
    engine.reset()
    g = engine.generate(CODE, SamplingParams(max_tokens=20, stop_token_ids=(plain.token_ids[5],),
                                             ignore_eos=True)).run()
    assert g.finish_reason == "stop"
    assert g.token_ids == plain.token_ids[: plain.token_ids.index(plain.token_ids[5])]


def test_prefix_reuse(engine):
    engine.reset()
    first = engine.generate(CODE, SamplingParams(max_tokens=8, ignore_eos=True)).run()
    second = engine.generate(CODE + first.text + "\n# more", SamplingParams(max_tokens=8, ignore_eos=True)).run()
    assert second.usage.cached_tokens >= first.usage.prompt_tokens
    fresh = _greedy(engine, CODE + first.text + "\n# more", n=8, speculation="off")
    assert fresh.token_ids == second.token_ids


def test_cancel_mid_prefill_stops_the_chunk_in_flight(tokenizer):
    eng = tiny_engine(tokenizer, n_ctx=4096, prefill_chunk=64)
    prompt = (CODE * 40)[:12000]
    cancel = CancelToken()
    g = eng.generate(prompt, SamplingParams(max_tokens=50), cancel=cancel)
    chunks = []
    real_forward = eng.runtime.forward

    def forward(tokens, rows="last", **kw):
        chunks.append(len(tokens))
        if len(chunks) == 3:
            threading.Timer(0.0, cancel.cancel).start()
            threading.Event().wait(0.05)
        return real_forward(tokens, rows, **kw)

    eng.runtime.forward = forward
    g.run()
    assert g.finish_reason == "cancelled" and g.token_ids == []
    assert len(chunks) == 3  # the torch runtime stops the chunk in flight between layers
    assert eng.runtime.n_past == 2 * 64  # and keeps what the finished chunks cached
    assert g.timings.cancel_latency_s is not None and g.timings.cancel_latency_s < 5.0
    eng.runtime.forward = real_forward
    # the engine stays usable and its cache consistent
    after = eng.generate(CODE, SamplingParams(max_tokens=5, ignore_eos=True)).run()
    assert len(after.token_ids) == 5


def test_cancel_mid_decode(engine):
    cancel = CancelToken()
    engine.reset()
    g = engine.generate(CODE, SamplingParams(max_tokens=200, ignore_eos=True), cancel=cancel, speculation="off")
    for ev in g:
        if ev.index == 4:
            cancel.cancel()
    assert g.finish_reason == "cancelled" and len(g.token_ids) == 5


def test_a_cancel_reaches_linked_tokens_and_their_native_flag():
    turn = CancelToken()
    request = CancelToken()
    turn.link(request)
    assert request.flag.value == b""  # what a runtime polling from C sees: not cancelled
    turn.cancel()
    assert request.cancelled and request.flag.value == b"\x01"
    late = CancelToken()
    turn.link(late)  # linked after the cancel: cancelled at once
    assert late.cancelled
    parent, child = CancelToken(), CancelToken()
    parent.link(child)
    child.cancel()  # a child's cancel does not reach its parent
    assert not parent.cancelled and parent.flag.value == b""


def test_on_cancel_runs_once_on_the_cancelling_thread_unless_forgotten():
    token, calls = CancelToken(), []
    forget = token.on_cancel(lambda: calls.append(("first", threading.current_thread().name)))
    gone = token.on_cancel(lambda: calls.append(("forgotten", None)))
    gone()
    child = CancelToken()
    token.link(child)
    child.on_cancel(lambda: calls.append(("child", None)))  # reached through the link too
    t = threading.Thread(target=token.cancel, name="canceller")
    t.start()
    t.join()
    token.cancel()  # a second cancel runs nothing again
    assert calls == [("first", "canceller"), ("child", None)]
    forget()  # after it ran: a no-op
    token.on_cancel(lambda: calls.append(("late", None)))  # registered after the cancel: runs at once
    assert calls[-1] == ("late", None)


def test_bad_requests(engine):
    with pytest.raises(PairlineError):
        SamplingParams(max_tokens=0)
    with pytest.raises(PairlineError):
        SamplingParams(top_p=0.0)
    with pytest.raises(PairlineError):
        SamplingParams(temperature=-1)
    with pytest.raises(PairlineError):
        engine.generate("", SamplingParams())
    with pytest.raises(PairlineError, match="context holds"):
        engine.generate(list(range(1, 2000)), SamplingParams())


def test_context_fills_up_with_length(tokenizer):
    eng = tiny_engine(tokenizer, n_ctx=128)
    g = eng.generate(list(range(100, 220)), SamplingParams(max_tokens=100, ignore_eos=True)).run()
    assert g.finish_reason == "length" and 1 <= len(g.token_ids) <= 9


def test_prefill_ahead_gives_the_same_answer_and_leaves_one_token(tokenizer):
    eng = tiny_engine(tokenizer, n_ctx=4096, prefill_chunk=64)
    prompt = eng.tokenizer.encode((CODE * 6)[:1500])
    fresh = _greedy(eng, prompt, n=12, speculation="off")
    eng.reset()
    ends = list(eng.prefill(prompt))
    assert ends == [*range(64, len(prompt), 64), len(prompt)]  # one step per chunk
    assert eng.cached == prompt
    assert list(eng.prefill(prompt)) == []  # already cached: nothing to run
    again = eng.generate(prompt, SamplingParams(max_tokens=12, ignore_eos=True), speculation="off").run()
    assert again.usage.cached_tokens == len(prompt) - 1  # only the last position ran, for its logits
    assert again.token_ids == fresh.token_ids


def test_prefill_ahead_extends_the_cache_and_stops_when_cancelled(tokenizer):
    eng = tiny_engine(tokenizer, n_ctx=4096, prefill_chunk=64)
    prompt = eng.tokenizer.encode((CODE * 6)[:1500])
    eng.reset()
    list(eng.prefill(prompt[:100]))
    cancel = CancelToken()
    steps = eng.prefill(prompt, cancel=cancel)
    assert next(steps) == 164  # reuses the 100 cached tokens, then whole chunks from there
    cancel.cancel()
    assert list(steps) == []
    assert eng.cached == prompt[:164] and eng.runtime.n_past == 164


class _ArgmaxOnly:
    """A runtime that answers greedy requests only through argmax (as the CUDA runtime prefers):
    a logits call for any rows but "none" fails the test."""

    def __init__(self, inner):
        self.inner = inner
        self.argmax_calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    has_argmax = True

    def forward(self, tokens, rows="last", **kw):
        assert rows == "none", "greedy decoding asked for logits"
        return self.inner.forward(tokens, rows, **kw)

    def argmax(self, tokens, rows="last"):
        self.argmax_calls += 1
        return self.inner.forward(tokens, rows).argmax(-1)


def test_greedy_decoding_uses_the_runtimes_argmax(tokenizer):
    eng = tiny_engine(tokenizer, n_ctx=1024)
    plain = _greedy(eng, CODE, n=24, speculation="off")
    guessed = _greedy(eng, CODE, n=24, prediction=plain.token_ids[:12] + [1, 2, 3])
    eng.runtime = _ArgmaxOnly(eng.runtime)
    eng.reset()
    assert _greedy(eng, CODE, n=24, speculation="off").token_ids == plain.token_ids
    again = _greedy(eng, CODE, n=24, prediction=plain.token_ids[:12] + [1, 2, 3])
    assert again.token_ids == guessed.token_ids and again.usage.accepted_prediction_tokens > 0
    assert eng.runtime.argmax_calls > 0
