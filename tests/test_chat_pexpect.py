"""pairline chat driven for real in a terminal (pexpect) on the real SmolLM2 weights: an edit is
applied and committed, /undo restores the exact bytes, Ctrl-C interrupts, typing steers, and the
tests run only when /test asks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pexpect = pytest.importorskip("pexpect")

PROMPT = "pairline>"
SRC = b"def add(a, b):\r\n    return a + b\r\n"  # CRLF: /undo must give back these exact bytes
EDIT = "rename add to plus"


def _git(root, *args) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_chat_in_a_terminal_with_smollm2(tmp_path, smollm2_gguf):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "calc.py").write_bytes(SRC)
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.com")
    _git(root, "config", "user.name", "T")
    _git(root, "add", "calc.py")
    _git(root, "commit", "-qm", "init")
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm", "PAIRLINE_THREADS": "1"}
    # the torch runtime: these expectations were written against its greedy output on this prompt
    cmd = [
        "-m", "pairline.cli", "chat", "calc.py", "--model", "smollm2-135m", "--runtime", "torch", "--max-tokens", "160",
        "--ctx", "2048", "--test-cmd", "echo ran >> test-marker",
    ]
    child = pexpect.spawn(sys.executable, cmd, cwd=root, env=env, encoding="utf-8", timeout=240, dimensions=(40, 160))
    try:
        child.expect(PROMPT)

        # an edit, streamed. Applied and committed: /undo puts the exact bytes back and drops the commit.
        # Or refused by the check after every edit (SmolLM2's blocks for this instruction, on this runtime,
        # replace the body with a second `def` line): then nothing is written and the bytes are intact.
        child.sendline(EDIT)
        applied, refused = r"applied to calc\.py \(commit ([0-9a-f]{10})", "the edit did not apply; nothing written"
        outcome = child.expect([applied, refused])
        if outcome == 0:
            commit = child.match.group(1)
            child.expect(r"\[TTFT [^\]]*tok/s[^\]]*\]")
            child.expect(PROMPT)
            assert (root / "calc.py").read_bytes() != SRC
            assert _git(root, "rev-parse", "HEAD").startswith(commit)
            child.sendline("/undo")
            child.expect("undid the edit of calc.py; dropped commit")
        else:
            child.expect(PROMPT)
            child.sendline("/undo")
            child.expect("nothing to undo")
        child.expect(PROMPT)
        assert (root / "calc.py").read_bytes() == SRC
        assert _git(root, "log", "--format=%s").split() == ["init"]

        # Ctrl-C while an answer streams: it stops, the partial answer is kept, nothing is written
        child.sendline("Tell me a long story about a cat and a dog?")
        child.expect(PROMPT)
        child.expect(r"\n\S", timeout=240)  # the answer's first line is out: it is streaming
        child.send("\x03")
        child.expect(r"interrupted: stopped in \d+ ms; the partial answer is kept, nothing written")
        assert (root / "calc.py").read_bytes() == SRC

        # typing while it streams steers: the answer is cut, the new message continues the session
        child.sendline("Tell me a long story about a mouse?")
        child.expect(r"\n\S", timeout=240)
        child.sendline("Make it about a bird instead?")
        child.expect(r"\[steering\]")
        child.expect(r"\[TTFT [^\]]*\]")  # the steered answer completes (to its token cap)
        child.expect(PROMPT)

        # the tests ran never by themselves, and once when asked
        assert not (root / "test-marker").exists()
        child.sendline("/test")
        child.expect(r"tests passed \(exit 0\)")
        assert (root / "test-marker").read_text() == "ran\n"

        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        if child.isalive():
            child.terminate(force=True)
    assert (root / "calc.py").read_bytes() == SRC
