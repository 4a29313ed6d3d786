"""The crash guard (engine/guard.py): configurations that crash natively are found in a child process,
remembered, and never used in-process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pairline.engine import guard
from pairline.engine.guard import Candidate
from pairline.errors import PairlineError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the child imports tests.crash_runtimes
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not read by the test runtimes")
    return model


def fake(name: str, runtime: str | None = None) -> Candidate:
    return Candidate(runtime or name, target=f"tests.crash_runtimes:{name}")


def no_children(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a recorded verdict must not start a child")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_a_real_segfault_is_caught_recorded_and_not_rechecked(cache, monkeypatch):
    verdict = guard.check(fake("segfaulting"), cache)
    assert not verdict.ok
    assert verdict.reason == "killed by SIGSEGV"
    assert verdict.key["cpu"]["flags"] == guard.cpu_description()["flags"]
    no_children(monkeypatch)
    again = guard.check(fake("segfaulting"), cache)
    assert (again.ok, again.reason) == (False, "killed by SIGSEGV")
    assert [c.reason for c in guard.all_recorded()] == ["killed by SIGSEGV"]


def test_abort_and_non_finite_logits_are_refused(cache):
    assert guard.check(fake("aborting"), cache).reason == "killed by SIGABRT"
    assert guard.check(fake("poisoned"), cache).reason == "logits are not finite"


def test_a_passing_check_records_its_speeds(cache):
    verdict = guard.check(fake("healthy"), cache)
    assert verdict.ok and verdict.reason == ""
    assert verdict.prefill_tok_s > 0 and verdict.step_ms >= 0 and verdict.load_s >= 0
    assert verdict.job_seconds() < float("inf")


def test_choose_falls_back_and_says_so_once(cache, capsys, monkeypatch):
    picked = guard.choose([fake("segfaulting", "native"), fake("healthy", "other")], cache)
    assert picked == fake("healthy", "other")
    err = capsys.readouterr().err
    assert "native failed its check on this CPU (killed by SIGSEGV); other runs instead" in err
    # later runs: the same choice from the cache, no child, no repeated notice
    no_children(monkeypatch)
    from pairline import errors

    monkeypatch.setattr(errors, "_noticed", set())
    assert guard.choose([fake("segfaulting", "native"), fake("healthy", "other")], cache) == picked
    assert capsys.readouterr().err == ""


def test_nothing_passing_is_one_clear_error(cache):
    with pytest.raises(PairlineError, match="no way to run this model passed its check.*SIGSEGV.*not finite"):
        guard.choose([fake("segfaulting", "a"), fake("poisoned", "b")], cache)
    with pytest.raises(PairlineError) as again:  # the refusals recorded: each named once
        guard.choose([fake("segfaulting", "a"), fake("poisoned", "b")], cache)
    assert str(again.value).count("not finite") == 1


def test_another_cpu_or_model_is_checked_again(cache, monkeypatch):
    guard.check(fake("healthy"), cache)
    key = guard.check_key(fake("healthy"), cache)
    monkeypatch.setattr(guard, "cpu_description", lambda: {"model": "other", "machine": "x", "flags": "avx2"})
    assert guard.recorded(fake("healthy"), cache) is None
    assert guard.check_key(fake("healthy"), cache) != key
    monkeypatch.undo()
    cache.write_bytes(b"a different model file")
    assert guard.recorded(fake("healthy"), cache) is None


@pytest.mark.slow
def test_real_llamacpp_configurations_are_checked(smollm2_gguf, tmp_path, monkeypatch):
    """Both of llama.cpp's weight layouts on the real small model: checked in children, each with its
    speeds; the runtime's default layout is the one the guard chose."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (README's llamacpp extra)")
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    on = guard.check(Candidate("llamacpp", repack=True), smollm2_gguf)
    off = guard.check(Candidate("llamacpp", repack=False), smollm2_gguf)
    amx = "amx_tile" in guard.cpu_description()["flags"].split()
    if not on.ok:  # llama.cpp 0.3.36's AMX repack faults on Sapphire-Rapids-class CPUs (docs/engine.md)
        assert amx and on.reason == "killed by SIGSEGV", on.reason
    passed = [v for v in (on, off) if v.ok]
    assert off in passed, off.reason  # the plain layout runs everywhere
    for verdict in passed:
        assert verdict.prefill_tok_s > 0 and verdict.step_ms > 0
    from pairline.engine.runtimes.llamacpp_runtime import LlamaCppRuntime

    rt = LlamaCppRuntime(smollm2_gguf, n_ctx=256)  # the layout the guard chose, and it runs in-process
    assert np.isfinite(rt.forward([1, 2, 3], "last")).all()
    assert rt.repack == guard.preferred_repack(smollm2_gguf)
    assert rt.repack == (on.ok and off.job_seconds() >= guard.CLEAR_MARGIN * on.job_seconds())
