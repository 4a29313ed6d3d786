"""The draft policy: cost-aware draft lengths, switching off a source that does not pay."""

from __future__ import annotations

import random

import pytest

from pairline.engine.sampling import SamplingParams
from pairline.engine.speculative import DraftPolicy, PredictionDraft, StepCosts


def test_costs_before_and_after_measurement():
    costs = StepCosts(slope_hint=0.5)
    assert costs.relative(1) == 1.0
    assert costs.relative(5) == pytest.approx(3.0)  # hint: 1 + 0.5 * 4
    costs.record(1, 0.010)
    costs.record(9, 0.030)
    assert costs.relative(9) == pytest.approx(3.0)
    assert costs.relative(5) == pytest.approx(2.0)  # interpolated
    assert costs.relative(17) == pytest.approx(5.0)  # the slope of the widest two, continued
    costs.record(9, 0.050)  # running average moves a quarter of the way
    assert costs.relative(9) == pytest.approx(3.5)


def test_pinned_costs_ignore_measurements():
    costs = StepCosts(slope_hint=0.1, learn=False)
    costs.record(1, 1.0)
    costs.record(5, 100.0)
    assert costs.relative(5) == pytest.approx(1.4)


def test_cheap_verification_and_good_drafts_give_long_drafts():
    policy = DraftPolicy(StepCosts(slope_hint=0.1, learn=False), prior=0.9, max_len=32)
    for _ in range(5):
        policy.update(16, 16)
    assert policy.choose(100) == 32
    assert policy.choose(7) == 7  # never more than the source offers


def test_reliable_drafts_try_the_widest_draft_now_and_then():
    """Costs measured up to 7-token calls with a steep slope between the widest two make wide
    drafts look dear; with acceptance near 1 every 8th draft tries the widest anyway, so its real
    cost gets measured (and here proves cheap enough to keep)."""
    costs = StepCosts()
    costs.record(1, 0.030)
    costs.record(5, 0.090)
    costs.record(7, 0.150)  # a hiccup: the slope of the widest two says 30 ms per extra token
    policy = DraftPolicy(costs, prior=0.9, max_len=32)
    for _ in range(10):
        policy.update(6, 6)
    chosen = [policy.choose(32) for _ in range(8)]
    assert max(chosen[:7]) < 32 and chosen[7] == 32
    costs.record(33, 0.400)  # measured: 12 ms per token at width 33
    assert policy.choose(32) == 32


def test_expensive_verification_means_no_drafts():
    policy = DraftPolicy(StepCosts(slope_hint=1.0, learn=False), prior=0.5, max_len=32)
    assert policy.choose(32) == 0


def test_misses_switch_a_source_off_and_probes_bring_it_back():
    policy = DraftPolicy(StepCosts(slope_hint=0.3, learn=False), prior=0.9, max_len=16, probe_every=4)
    assert policy.choose(16) > 0
    for _ in range(6):
        policy.update(4, 0)
    assert policy.acceptance < 0.2
    chosen = [policy.choose(16) for _ in range(4)]
    assert chosen == [0, 0, 0, 2]  # off, then one short probe
    for _ in range(8):
        policy.update(2, 2)  # the probes pay: drafting resumes and grows
    assert policy.choose(16) >= 4


def test_prediction_realigns_after_an_insertion():
    pred = list(range(100, 160))
    drafter = PredictionDraft(pred)
    drafter.accept(pred[:20])
    assert drafter.draft(4) == pred[20:24]
    drafter.accept([7, 8, 9])  # the output inserts three tokens the prediction lacks
    assert drafter.draft(4) == []  # not aligned until the output rejoins the prediction
    drafter.accept(pred[20:23])  # three tokens of the prediction again: an n-gram match
    assert drafter.draft(4) == pred[23:27]


def test_a_rejoin_takes_the_place_whose_match_reaches_furthest_back():
    pred = [1, 2, 3, 4, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9, 12]
    drafter = PredictionDraft(pred)
    drafter.accept([50, 51, 5, 6, 7, 8, 9])  # (7, 8, 9) is at two places; 5, 6 before it only at the second
    assert drafter.draft(2) == [12]


def test_a_wrong_rejoin_ahead_does_not_strand_the_pointer():
    head, tail = list(range(100, 130)), list(range(200, 230))
    drafter = PredictionDraft([*head, 500, 501, 502, *tail])
    drafter.accept(head[:10])
    drafter.accept([900, 500, 501, 502])  # an edit whose text matches a line further down
    assert drafter.draft(3) == tail[:3]  # the only place to rejoin, for now
    drafter.accept([110, 111, 112])  # but the output goes on with the head: back there
    assert drafter.draft(4) == head[13:17]


def test_unaligned_prediction_drafts_by_lookup_over_the_context():
    """After an edit the output may spell the prediction's text with other tokens, so no n-gram
    rejoins it; lookup over the prompt (which holds the file) keeps drafting meanwhile."""
    file = list(range(100, 140))
    drafter = PredictionDraft([7, 7, 7, *range(300, 340)], context=[1, 2, *file, 3])
    drafter.accept([100, 101, 102])  # the output follows the file in the prompt, not the prediction
    assert drafter.draft(4) == [103, 104, 105, 106]
    assert drafter.source == "prompt_lookup"
    drafter.accept([103, 104])
    assert drafter.draft(2) == [105, 106]


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    from pairline.engine.tokenizer import Tokenizer

    from .engine_helpers import tiny_engine

    engine = tiny_engine(Tokenizer.from_gguf(smollm2_gguf), n_ctx=512)
    engine.step_costs = StepCosts(slope_hint=0.35)  # learning, as in real use
    return engine


def test_useless_prediction_costs_little(engine):
    """Random text as the prediction: after the first misses the policy stops drafting, so the
    rejected work stays a small fraction of the output, and the output is unchanged."""
    params = SamplingParams(max_tokens=60, ignore_eos=True)
    plain = engine.generate("def f(x):\n    return", params, speculation="off").run()
    rng = random.Random(0)
    junk = [rng.randrange(3, engine.tokenizer.vocab_size) for _ in range(400)]
    g = engine.generate("def f(x):\n    return", params, prediction=junk).run()
    assert g.token_ids == plain.token_ids
    assert g.usage.rejected_prediction_tokens <= 16
    assert sum(1 for drafted, _ in g.steps if drafted) <= 8


def test_drafts_stay_within_the_runtimes_exact_width(smollm2_gguf):
    """The torch runtime is exact for calls of up to 32 tokens: drafts never ask for more."""
    from pairline.engine.tokenizer import Tokenizer

    from .engine_helpers import tiny_engine

    engine = tiny_engine(Tokenizer.from_gguf(smollm2_gguf), n_ctx=512)
    params = SamplingParams(max_tokens=120, ignore_eos=True)
    plain = engine.generate("def f(x):\n", params, speculation="off").run()
    g = engine.generate("def f(x):\n", params, prediction=plain.token_ids, draft_max=64).run()
    assert g.token_ids == plain.token_ids
    assert max(d for d, _ in g.steps) == engine.runtime.exact_rows - 1
