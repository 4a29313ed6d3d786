"""The sandbox the agent and the eval run commands in: confinement, limits, and what it reports."""

from __future__ import annotations

import os
import time

import pytest

from pairline.assistant.sandbox import Limits, Sandbox, SandboxError, available_protections

needs_landlock = pytest.mark.skipif("no-writes-outside" not in available_protections(),
                                    reason="this kernel has no Landlock")
needs_netns = pytest.mark.skipif("no-network" not in available_protections(),
                                 reason="unprivileged network namespaces are not allowed here")


@pytest.fixture
def box(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    return Sandbox(repo, Limits(timeout_s=5, output_bytes=400))


def test_runs_in_the_root_with_a_scrubbed_environment(box, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    r = box.run("pwd; echo key=${OPENAI_API_KEY:-none}; echo made > f.txt")
    assert r.ok, r.output
    assert r.output.splitlines() == [str(box.root), "key=none"]
    assert (box.root / "f.txt").read_text() == "made\n"


def test_argv_form_and_exit_codes(box):
    r = box.run(["python", "-c", "import sys; print('out'); sys.exit(3)"])
    assert (r.exit_code, r.output, r.ok) == (3, "out\n", False)
    assert box.run("no-such-command-here").exit_code == 127
    with pytest.raises(SandboxError):
        box.run("   ")


def test_time_limit_kills_the_whole_process_group(box):
    t0 = time.perf_counter()
    r = box.run("sleep 60 & sleep 60", timeout_s=0.5)
    assert r.timed_out and r.exit_code is None
    assert time.perf_counter() - t0 < 5
    assert "timed out" in r.summary()


def test_output_is_cut_in_the_middle(box):
    r = box.run("python -c \"print('A'*1000); print('B'*5000); print('Z'*100)\"")
    assert r.truncated
    assert r.output.startswith("A" * 100) and r.output.rstrip().endswith("Z" * 100)
    assert "bytes of output cut" in r.output and len(r.output) < 600


@needs_landlock
def test_no_writes_outside_the_root(box, tmp_path):
    outside = tmp_path / "outside.txt"
    r = box.run(f"echo x > {outside}; touch ../escape; echo ok > inside.txt")
    assert not outside.exists() and not (tmp_path / "escape").exists()
    assert (box.root / "inside.txt").exists()
    assert "Permission denied" in r.output
    # the private temp dir (HOME, TMPDIR) stays writable, and gone afterwards
    r = box.run("echo t > $TMPDIR/t && cat $TMPDIR/t && echo $TMPDIR")
    assert r.ok and r.output.startswith("t\n")
    assert not os.path.exists(r.output.splitlines()[1])


@needs_netns
def test_no_network(box):
    code = ("import socket; s = socket.socket(); s.settimeout(2)\n"
            "try:\n    s.connect(('1.1.1.1', 53)); print('connected')\nexcept OSError as e:\n    print('refused', e)")
    r = box.run(["python", "-c", code])
    assert "refused" in r.output, r.output
    assert "no-network" in box.protections
    assert "no-network" not in Sandbox(box.root, network=True).protections


def test_resolve_refuses_paths_outside(box, tmp_path):
    (box.root / "src").mkdir()
    assert box.resolve("src/a.py") == box.root / "src" / "a.py"
    assert box.resolve(box.root / "b.py") == box.root / "b.py"
    for bad in ["../x", "/etc/passwd", "src/../../x", ""]:
        with pytest.raises(SandboxError):
            box.resolve(bad)
    (box.root / "link").symlink_to(tmp_path)
    with pytest.raises(SandboxError, match="outside"):
        box.resolve("link/secret")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(SandboxError, match="not a directory"):
        Sandbox(tmp_path / "nope")


def test_a_command_killed_by_a_signal_reads_as_before(box):
    # with a PID namespace the command runs under an init; the exit still says which signal
    assert box.run("kill -TERM $$").exit_code == -15
    assert box.run("exit 3").exit_code == 3
    r = box.run("yes | head -2")  # SIGPIPE is the default again: no "Broken pipe" noise
    assert r.ok and r.output == "y\ny\n"
