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


# --------------------------------------------------------------------------- Workspace: root, git, undo

from pairline.assistant.workspace import Workspace  # noqa: E402
from tests.assistant_helpers import git, git_repo  # noqa: E402


def _repo(tmp_path):
    return git_repo(tmp_path, {"a.py": b"x = 1\r\n"})


@pytest.fixture
def plain_ws(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.chdir(root)
    return Workspace.open(root)


def test_refuses_paths_outside_the_root(plain_ws, tmp_path):
    (tmp_path / "outside.py").write_text("x\n")
    with pytest.raises(PairlineError, match="outside the workspace"):
        plain_ws.resolve(tmp_path / "outside.py")
    with pytest.raises(PairlineError, match="outside the workspace"):
        plain_ws.resolve("../outside.py")


def test_refuses_symlink_escape(plain_ws, tmp_path):
    (tmp_path / "secret.py").write_text("x\n")
    (plain_ws.root / "link.py").symlink_to(tmp_path / "secret.py")
    (plain_ws.root / "dir").symlink_to(tmp_path)
    with pytest.raises(PairlineError, match="through a symlink"):
        plain_ws.resolve("link.py")
    with pytest.raises(PairlineError, match="through a symlink"):
        plain_ws.resolve("dir/secret.py")


def test_refuses_git_internals(tmp_path, monkeypatch):
    root = _repo(tmp_path)
    monkeypatch.chdir(root)
    with pytest.raises(PairlineError, match="inside .git"):
        Workspace.open().resolve(".git/config")


def test_plain_apply_and_undo_restore_exact_bytes(plain_ws):
    f = plain_ws.root / "a.py"
    f.write_bytes(b"\xef\xbb\xbfx = 1\r\nno newline")
    before = f.read_bytes()
    _, fp = read_text_file(f)
    entry = plain_ws.apply([(f, "y = 2\n", fp)], "change x")
    assert f.read_bytes() == b"y = 2\n"
    assert entry.commit is None and (entry.backup_dir / "a.py").read_bytes() == before
    plain_ws.undo()
    assert f.read_bytes() == before
    with pytest.raises(PairlineError, match="nothing to undo"):
        plain_ws.undo()


def test_new_file_and_undo_removes_it(plain_ws):
    new = plain_ws.root / "pkg" / "new.py"
    plain_ws.apply([(new, "print(1)\n", None)], "create")
    assert new.read_text() == "print(1)\n"
    plain_ws.undo()
    assert not new.exists()


def test_new_file_that_appeared_meanwhile_is_refused(plain_ws):
    new = plain_ws.root / "new.py"
    new.write_text("mine\n")
    with pytest.raises(FileChangedError, match="appeared"):
        plain_ws.apply([(new, "theirs\n", None)], "create")
    assert new.read_text() == "mine\n"


def test_multi_file_apply_is_all_or_nothing(plain_ws):
    a, b = plain_ws.root / "a.py", plain_ws.root / "b.py"
    a.write_text("a\n")
    b.write_text("b\n")
    _, fa = read_text_file(a)
    _, fb = read_text_file(b)
    b.write_text("b edited by the user\n")
    with pytest.raises(FileChangedError):
        plain_ws.apply([(a, "A\n", fa), (b, "B\n", fb)], "both")
    assert a.read_text() == "a\n" and b.read_text() == "b edited by the user\n"
    assert plain_ws.history == []


def test_undo_refuses_when_file_changed_after_the_edit(plain_ws):
    f = plain_ws.root / "a.py"
    f.write_text("1\n")
    _, fp = read_text_file(f)
    plain_ws.apply([(f, "2\n", fp)], "x")
    f.write_text("3 (the user kept typing)\n")
    with pytest.raises(FileChangedError, match="not undoing"):
        plain_ws.undo()
    assert f.read_text() == "3 (the user kept typing)\n"


def test_undo_crash_mid_write_keeps_edited_file_whole(plain_ws, monkeypatch):
    f = plain_ws.root / "a.py"
    f.write_text("old\n")
    _, fp = read_text_file(f)
    plain_ws.apply([(f, "new\n", fp)], "x")

    def crash(src, dst):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(workspace.os, "replace", crash)
    with pytest.raises(OSError):
        plain_ws.undo()
    assert f.read_text() == "new\n" and _leftovers(plain_ws.root) == []
    monkeypatch.undo()
    plain_ws.undo()  # the entry is still there: undo works once the disk does
    assert f.read_text() == "old\n"


def test_git_each_edit_is_a_commit_and_undo_drops_it(tmp_path, monkeypatch):
    root = _repo(tmp_path)
    monkeypatch.chdir(root)
    (root / "other.py").write_text("staged by the user\n")
    git(root, "add", "other.py")
    ws = Workspace.open()
    assert ws.git and ws.root == root.resolve()
    f = root / "a.py"
    before = f.read_bytes()
    _, fp = read_text_file(f)
    entry = ws.apply([(f, "x = 2\r\n", fp)], "set x to 2")
    assert git(root, "rev-parse", "HEAD").strip() == entry.commit
    assert git(root, "log", "-1", "--format=%s").strip() == "pairline: set x to 2"
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == ["a.py"]  # not other.py
    ws.undo()
    assert f.read_bytes() == before
    assert git(root, "log", "--format=%s").split("\n")[0] == "init"
    assert "A  other.py" in git(root, "status", "--porcelain")  # the user's staged file is untouched
    assert " M a.py" not in git(root, "status", "--porcelain")


def test_git_undo_reverts_when_other_commits_followed(tmp_path, monkeypatch):
    root = _repo(tmp_path)
    monkeypatch.chdir(root)
    ws = Workspace.open()
    f = root / "a.py"
    _, fp = read_text_file(f)
    entry = ws.apply([(f, "x = 2\r\n", fp)], "two")
    (root / "b.py").write_text("b\n")
    git(root, "add", "b.py")
    git(root, "commit", "-q", "-m", "user commit")
    ws.undo()
    assert f.read_bytes() == b"x = 1\r\n"
    log = git(root, "log", "--format=%s").split("\n")
    assert log[0].startswith("Revert") and entry.commit not in git(root, "rev-parse", "HEAD")


def test_git_no_commit(tmp_path, monkeypatch):
    root = _repo(tmp_path)
    monkeypatch.chdir(root)
    ws = Workspace.open(commit=False)
    f = root / "a.py"
    _, fp = read_text_file(f)
    entry = ws.apply([(f, "x = 3\n", fp)], "three")
    assert entry.commit is None and git(root, "log", "--format=%s").strip() == "init"
    ws.undo()
    assert f.read_bytes() == b"x = 1\r\n"


def test_multi_file_crash_mid_write_rolls_back_the_first_file(plain_ws, monkeypatch):
    a, b = plain_ws.root / "a.py", plain_ws.root / "b.py"
    a.write_bytes(b"a\r\n")
    b.write_bytes(b"b\n")
    _, fa = read_text_file(a)
    _, fb = read_text_file(b)
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(workspace.os, "replace", crash_on_second)
    with pytest.raises(PairlineError, match="nothing was written"):
        plain_ws.apply([(a, "A\n", fa), (b, "B\n", fb)], "both")
    monkeypatch.undo()
    assert a.read_bytes() == b"a\r\n" and b.read_bytes() == b"b\n"  # the first file was put back
    assert plain_ws.history == [] and _leftovers(plain_ws.root) == []


# --------------------------------------------------------------------------- issue 22: rows 10 and 12


def test_new_file_race_folder_swapped_for_a_symlink_is_refused(plain_ws, tmp_path, monkeypatch):
    # Row 10: the path is checked, then (in the window before the write) a command swaps the folder
    # for a symlink pointing outside. The real write must not follow it.
    root = plain_ws.root
    (root / "sub").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    target = plain_ws.resolve(root / "sub" / "new.py")
    real_check = Workspace._check

    def check_then_swap(self, writes):
        real_check(self, writes)  # the check passes on the real folder ...
        (root / "sub").rename(root / "sub-moved")  # ... then the attacker swaps it
        (root / "sub").symlink_to(outside)

    monkeypatch.setattr(Workspace, "_check", check_then_swap)
    with pytest.raises(FileChangedError, match="no longer a folder"):
        plain_ws.apply([(target, "pwned = True\n", None)], "create")
    assert list(outside.iterdir()) == []  # nothing was created outside the workspace
    assert list((root / "sub-moved").iterdir()) == [] and plain_ws.history == []


def test_new_file_in_a_new_folder_is_made_beneath_the_root(plain_ws):
    new = plain_ws.root / "a" / "b" / "c.py"
    plain_ws.apply([(new, "x = 1\n", None)], "create")
    assert new.read_text() == "x = 1\n" and _leftovers(new.parent) == []
    plain_ws.undo()
    assert not new.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_new_files_get_the_users_umask(plain_ws, umask):
    # Row 12: a new file (and a new folder) gets 0666/0777 less the umask, as an editor would make it;
    # it was 0600 whatever the umask
    old = os.umask(umask)
    try:
        new = plain_ws.root / "pkg" / "new.py"
        plain_ws.apply([(new, "x = 1\n", None)], "create")
    finally:
        os.umask(old)
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(new.parent.stat().st_mode) == 0o777 & ~umask


def test_edited_file_keeps_its_mode_whatever_the_umask(plain_ws):
    f = plain_ws.root / "run.sh"
    f.write_text("echo 1\n")
    os.chmod(f, 0o750)
    _, fp = read_text_file(f)
    old = os.umask(0o077)
    try:
        plain_ws.apply([(f, "echo 2\n", fp)], "edit")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o750 and f.read_text() == "echo 2\n"
