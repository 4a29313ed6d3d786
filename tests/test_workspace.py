"""Reading and atomically writing the user's files."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from pairline.assistant import workspace
from pairline.assistant.workspace import FileChangedError, atomic_write, read_text_file
from pairline.errors import PairlineError


def _leftovers(directory) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".pairline-tmp")]


def test_read_returns_exact_text(tmp_path):
    f = tmp_path / "a.py"
    f.write_bytes(b"x = 1\r\ny = 2")
    text, fp = read_text_file(f)
    assert text == "x = 1\r\ny = 2"  # no newline translation
    assert fp.size == 12


def test_write_replaces_content(tmp_path):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    text, fp = read_text_file(f)
    atomic_write(f, "x = 2\n", fp)
    assert f.read_text() == "x = 2\n"
    assert _leftovers(tmp_path) == []


def test_crlf_is_kept(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one\r\ntwo\r\n")
    text, fp = read_text_file(f)
    atomic_write(f, text.replace("two", "three"), fp)
    assert f.read_bytes() == b"one\r\nthree\r\n"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_mode_is_kept(tmp_path):
    f = tmp_path / "run.sh"
    f.write_text("echo hi\n")
    f.chmod(0o754)
    _, fp = read_text_file(f)
    atomic_write(f, "echo bye\n", fp)
    assert stat.S_IMODE(f.stat().st_mode) == 0o754
    assert f.read_text() == "echo bye\n"


def test_crash_before_replace_leaves_original_and_no_temp(tmp_path, monkeypatch):
    f = tmp_path / "a.py"
    f.write_text("original\n")
    _, fp = read_text_file(f)

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workspace.os, "replace", boom)
    with pytest.raises(PairlineError, match="nothing was written"):
        atomic_write(f, "new content\n", fp)
    assert f.read_text() == "original\n"
    assert _leftovers(tmp_path) == []


def test_interrupt_during_write_leaves_original_and_no_temp(tmp_path, monkeypatch):
    f = tmp_path / "a.py"
    f.write_text("original\n")
    _, fp = read_text_file(f)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(workspace.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(f, "new content\n", fp)
    assert f.read_text() == "original\n"
    assert _leftovers(tmp_path) == []


def test_refuses_when_changed_under_us(tmp_path):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    _, fp = read_text_file(f)
    f.write_text("x = 1  # edited by the user\n")
    with pytest.raises(FileChangedError, match="changed on disk since pairline read it; nothing was written"):
        atomic_write(f, "x = 2\n", fp)
    assert f.read_text() == "x = 1  # edited by the user\n"
    assert _leftovers(tmp_path) == []


def test_refuses_when_touched_under_us(tmp_path):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    _, fp = read_text_file(f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, saved again
    with pytest.raises(FileChangedError):
        atomic_write(f, "x = 2\n", fp)


def test_refuses_when_deleted_under_us(tmp_path):
    f = tmp_path / "a.py"
    f.write_text("x = 1\n")
    _, fp = read_text_file(f)
    f.unlink()
    with pytest.raises(FileChangedError):
        atomic_write(f, "x = 2\n", fp)
    assert not f.exists()


def test_writes_through_symlink(tmp_path):
    real = tmp_path / "real.py"
    real.write_text("x = 1\n")
    link = tmp_path / "link.py"
    link.symlink_to(real)
    _, fp = read_text_file(link)
    atomic_write(link, "x = 2\n", fp)
    assert link.is_symlink()
    assert real.read_text() == "x = 2\n"


def test_refuses_binary(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc\x00def")
    with pytest.raises(PairlineError, match="binary"):
        read_text_file(f)


def test_refuses_non_utf8(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(PairlineError, match="not valid UTF-8"):
        read_text_file(f)


def test_refuses_huge(tmp_path):
    f = tmp_path / "big.txt"
    f.write_text("x" * (workspace.MAX_BYTES + 1))
    with pytest.raises(PairlineError, match="256 KB"):
        read_text_file(f)


def test_accepts_limit_size_and_empty(tmp_path):
    f = tmp_path / "ok.txt"
    f.write_text("x" * workspace.MAX_BYTES)
    assert len(read_text_file(f)[0]) == workspace.MAX_BYTES
    e = tmp_path / "empty.txt"
    e.write_text("")
    assert read_text_file(e)[0] == ""


def test_missing_and_directory(tmp_path):
    with pytest.raises(PairlineError, match="does not exist"):
        read_text_file(tmp_path / "nope.py")
    with pytest.raises(PairlineError, match="directory"):
        read_text_file(tmp_path)
