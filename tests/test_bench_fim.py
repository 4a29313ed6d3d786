"""`pairline bench fim`'s latency half: the scene, the censored percentiles, and one typed place on
real weights (SmolLM2: no FIM tokens, so the prefix-only path)."""

from __future__ import annotations

import pytest

from pairline.bench.fim import FimBenchConfig, Place, percentile, scene, summarize, type_place


def test_scene_places_are_real_lines_of_the_file():
    cfg = FimBenchConfig(places=3)
    text, places = scene(cfg)
    assert len(text.splitlines()) == cfg.file_lines and len(places) == 3
    for p in places:
        assert p.prefix + p.typed + p.suffix == text  # typing the place gives the file back
        assert len(p.typed) >= 25 and not p.typed.startswith("#")
    assert len({p.line for p in places}) == 3


def test_percentiles_rank_censored_keystrokes_last():
    assert percentile([0.1, None, 0.3], 0.0) == 0.1
    assert percentile([0.1, None, 0.3], 0.5) == 0.3
    assert percentile([0.1, None, None], 0.5) is None  # most keystrokes saw nothing in time
    assert percentile([], 0.5) is None
    recs = [{"first_s": 0.08, "first_token_s": 0.07, "done_s": 0.5, "stale_chars": 0, "empty": False},
            {"first_s": None, "first_token_s": 0.09, "done_s": None, "stale_chars": 0, "empty": False},
            {"first_s": None, "first_token_s": 0.2, "done_s": 0.9, "stale_chars": 0, "empty": True}]
    s = summarize(recs)
    assert s["keystrokes"] == 3 and s["empty_suggestions"] == 1
    assert s["with_suggestion_before_next_keystroke"] == 1
    assert s["first_p50_s"] == 0.08  # the empty one is left out: the lower of the two that had something to show


@pytest.mark.slow
def test_typing_a_place_times_every_keystroke_and_shows_nothing_stale(smollm2_gguf):
    from pairline.assistant.suggest import LocalSuggester
    from pairline.engine.load import load_engine

    s = LocalSuggester(load_engine(str(smollm2_gguf), n_ctx=1024))
    place = Place(1, "def greet(name):\n    ", "return 'hi ' + name", "\n")
    recs = type_place(s, place, FimBenchConfig(keystroke_s=0.05, max_tokens=8))
    assert len(recs) == len(place.typed) + 1
    assert all(r["stale_chars"] == 0 for r in recs)  # nothing shown for a position already left
    last = recs[-1]  # nothing typed after it: its suggestion runs to its end
    assert last["done_s"] is not None and last["first_token_s"] is not None
