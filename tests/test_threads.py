"""ThreadTuner: decode steps use the thread count measured fastest, and probes of the others
back off while they lose."""

from __future__ import annotations

from pairline.engine.runtimes.llamacpp_runtime import ThreadTuner


def _run(tuner: ThreadTuner, cost: dict[int, float], steps: int) -> list[int]:
    used = []
    for _ in range(steps):
        n = tuner.choose()
        tuner.record(n, cost[n])
        used.append(n)
    return used


def test_busy_machine_moves_to_one_thread_and_probes_rarely():
    tuner = ThreadTuner([2, 1])
    used = _run(tuner, {2: 0.400, 1: 0.015}, 2000)
    assert tuner.best() == 1
    assert used[:2] == [2, 2] and used[2] == 1  # the first probe comes early
    assert used.count(2) <= 14  # after that, probes of the slow count back off exponentially


def test_quiet_machine_keeps_all_cores():
    tuner = ThreadTuner([2, 1])
    used = _run(tuner, {2: 0.007, 1: 0.012}, 500)
    assert tuner.best() == 2
    assert used.count(1) <= 10


def test_a_change_of_load_is_followed():
    tuner = ThreadTuner([2, 1])
    _run(tuner, {2: 0.007, 1: 0.012}, 300)
    _run(tuner, {2: 0.400, 1: 0.012}, 600)  # other work arrives
    assert tuner.best() == 1
    _run(tuner, {2: 0.007, 1: 0.012}, 3000)  # and leaves again
    assert tuner.best() == 2


def test_single_core_never_probes():
    tuner = ThreadTuner([1])
    assert _run(tuner, {1: 0.01}, 50) == [1] * 50


def test_calibration_starts_from_measured_steps():
    tuner = ThreadTuner([2, 1])
    assert not tuner.calibrated and tuner.best() == 2  # the guess: all cores
    tuner.calibrate({2: 0.400, 1: 0.015})  # a busy machine, measured before the first request
    assert tuner.calibrated and tuner.best() == 1
    # the loser is probed again only after a while, then with the usual backoff
    assert _run(tuner, {2: 0.400, 1: 0.015}, 15) == [1] * 15
    assert ThreadTuner([1]).calibrated  # nothing to choose between


def test_the_app_leaves_a_core_for_the_browser(monkeypatch):
    from pairline.engine import runtime

    for cores, want in ((1, 1), (2, 1), (16, 15), (None, 1)):
        monkeypatch.setattr(runtime.os, "cpu_count", lambda cores=cores: cores)
        assert runtime.threads_beside_a_browser() == want
