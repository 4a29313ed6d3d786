"""Reading and writing the user's files safely.

`read_text_file` refuses what an edit model cannot sensibly rewrite (binary, non-UTF-8, huge) and
returns a fingerprint of what it read. `atomic_write` writes only if the file still matches that
fingerprint, through a temp file in the same directory that replaces the original in one
`os.replace`: a crash, an error or Ctrl-C at any point leaves either the old file or the new one,
never a partial one. Text is read and written byte-exact: no newline translation, so CRLF stays
CRLF and a missing final newline stays missing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# every git call goes through gitsafe's one helper: no hooks, filters or drivers the repository chose
from pairline.assistant.gitsafe import git_toplevel, run_git
from pairline.errors import PairlineError

MAX_BYTES = 256 * 1024  # an edit model rewrites the whole file: beyond this it is neither fast nor wise


class FileChangedError(PairlineError):
    """The file on disk is no longer what was read; nothing was written."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    size: int
    mtime_ns: int
    sha256: str


def _fingerprint(data: bytes, st: os.stat_result) -> Fingerprint:
    return Fingerprint(st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest())


def _real(path: str | os.PathLike) -> Path:
    # Write through symlinks to their target instead of replacing the link with a regular file.
    return Path(os.path.realpath(path))


def _read_bytes(path: Path, shown: str) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise PairlineError(f"{shown} is not a regular file")
            if st.st_size > MAX_BYTES:
                raise PairlineError(
                    f"{shown} is {st.st_size / 1024:.0f} KB; pairline edits files up to {MAX_BYTES // 1024} KB"
                )
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PairlineError(f"{shown} does not exist") from None
    except IsADirectoryError:
        raise PairlineError(f"{shown} is a directory, not a file") from None
    except PermissionError:
        raise PairlineError(f"{shown}: permission denied") from None
    except OSError as err:
        raise PairlineError(f"cannot read {shown}: {err.strerror or err}") from None
    if len(data) > MAX_BYTES:  # grew while we read it
        raise PairlineError(f"{shown} is larger than {MAX_BYTES // 1024} KB; pairline edits files up to that size")
    return data, st


def read_text_file(path: str | os.PathLike) -> tuple[str, Fingerprint]:
    """The file's text, exactly (no newline translation), and the fingerprint of what was read."""
    shown = str(path)
    data, st = _read_bytes(_real(path), shown)
    if b"\x00" in data:
        raise PairlineError(f"{shown} looks binary (it contains NUL bytes); pairline edits text files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PairlineError(f"{shown} is not valid UTF-8 (byte {err.start}); pairline edits UTF-8 text files") from None
    return text, _fingerprint(data, st)


def current_fingerprint(path: str | os.PathLike) -> Fingerprint | None:
    """The fingerprint of the file as it is now, or None if it cannot be read."""
    try:
        with open(_real(path), "rb") as f:
            st = os.fstat(f.fileno())
            return _fingerprint(f.read(), st)
    except OSError:
        return None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform or filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, text: str, expected: Fingerprint) -> None:
    """Replace the file's content with `text` (UTF-8, written as is), keeping its permission bits,
    if and only if the file is still what `expected` describes. Raises FileChangedError otherwise."""
    shown = str(path)
    target = _real(path)
    changed = FileChangedError(f"{shown} changed on disk since pairline read it; nothing was written")
    if current_fingerprint(target) != expected:
        raise changed
    try:
        st = os.stat(target)
    except OSError as err:
        raise PairlineError(f"cannot write {shown}: {err.strerror or err}") from None
    data = text.encode("utf-8")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".pairline-tmp")
    except OSError as err:
        raise PairlineError(f"cannot write next to {shown}: {err.strerror or err}; nothing was written") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            with contextlib.suppress(OSError):  # only root may give a file away; keep going without
                os.chown(tmp, st.st_uid, st.st_gid)
        # Last look before the swap: someone may have saved the file while we wrote ours.
        if current_fingerprint(target) != expected:
            raise changed
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise PairlineError(f"cannot write {shown}: {err.strerror or err}; nothing was written") from None
        raise
    _fsync_dir(target.parent)


# --------------------------------------------------------------------------- the workspace: paths, git, undo


@dataclass(slots=True)
class FileChange:
    path: str  # relative to the root, with forward slashes
    before: bytes | None  # None: the edit created the file
    after: bytes


@dataclass(slots=True)
class UndoEntry:
    message: str
    changes: list[FileChange]
    commit: str | None = None  # the commit that holds the edit, in a git workspace
    backup_dir: Path | None = None  # outside git: where the old bytes were saved


@dataclass
class Workspace:
    """The folder pairline may write in. Every path is resolved (symlinks included) and must stay
    inside `root`. In a git repository each applied edit is its own commit; elsewhere the old bytes
    are kept (in memory and under `backups`) so `undo` can put them back."""

    root: Path
    git: bool = False
    commit: bool = True  # --no-commit turns it off
    backups: Path | None = None
    history: list[UndoEntry] = field(default_factory=list)

    @classmethod
    def open(cls, start: str | os.PathLike | None = None, *, commit: bool = True) -> Workspace:
        """The git repository around `start` (default: the current folder), or `start` itself."""
        base = Path(start or os.getcwd()).resolve()
        top = git_toplevel(base)
        if top is not None:
            return cls(top, git=True, commit=commit)
        from pairline.models.fetch import cache_dir

        key = hashlib.sha256(str(base).encode()).hexdigest()[:12]
        return cls(base, git=False, commit=commit, backups=cache_dir() / "backups" / key)

    # ---------------------------------------------------------------- paths

    def resolve(self, path: str | os.PathLike) -> Path:
        """The real path of `path` (relative to the current folder), refused outside the root."""
        p = Path(path)
        if not p.is_absolute():
            p = Path(os.getcwd()) / p
        real = Path(os.path.realpath(p))
        if not real.is_relative_to(self.root):
            how = " (through a symlink)" if Path(os.path.abspath(p)).is_relative_to(self.root) else ""
            raise PairlineError(f"{path} is outside the workspace {self.root}{how}; pairline writes only inside it")
        if real != self.root and any(part == ".git" for part in real.relative_to(self.root).parts):
            raise PairlineError(f"{path} is inside .git; pairline does not edit git's own files")
        return real

    def rel(self, real: Path) -> str:
        return real.relative_to(self.root).as_posix()

    def display(self, real: Path) -> str:
        """How a path is shown: relative to the current folder when inside it, else to the root."""
        here = Path(os.getcwd()).resolve()
        return os.path.relpath(real, here) if real.is_relative_to(here) else self.rel(real)

    # ---------------------------------------------------------------- writing and undo

    def apply(self, writes: list[tuple[Path, str, Fingerprint | None]], message: str) -> UndoEntry:
        """Write every (path, text, fingerprint-when-read) atomically; None creates a new file
        (refused if one appeared meanwhile). Every file is checked before any is written, so a file
        changed under us means nothing is written. Then commit (git) or keep backups."""
        self._check(writes)
        changes: list[FileChange] = []
        try:
            for real, text, fp in writes:
                before = None if fp is None else real.read_bytes()
                if fp is None:
                    create_file(real, text, root=self.root)
                else:
                    atomic_write(real, text, fp)
                changes.append(FileChange(self.rel(real), before, text.encode("utf-8")))
        except BaseException:
            self._roll_back(changes)  # a later file failed: the earlier ones go back, nothing half-applied
            raise
        entry = UndoEntry(message, changes)
        if self.git and self.commit:
            entry.commit = self._commit(changes, message)
        elif not self.git and self.backups is not None:
            entry.backup_dir = self._backup(changes)
        self.history.append(entry)
        return entry

    def _check(self, writes: list[tuple[Path, str, Fingerprint | None]]) -> None:
        for real, _text, fp in writes:
            if fp is None:
                if os.path.lexists(real):
                    raise FileChangedError(f"{self.display(real)} appeared on disk meanwhile; nothing was written")
            elif current_fingerprint(real) != fp:
                raise FileChangedError(
                    f"{self.display(real)} changed on disk since pairline read it; nothing was written"
                )

    def _roll_back(self, changes: list[FileChange]) -> None:
        for c in reversed(changes):
            real = self.root / c.path
            with contextlib.suppress(OSError, PairlineError):
                if c.before is None:
                    unlink_beneath(self.root, c.path)
                else:
                    restore_bytes(real, c.before)

    def _commit(self, changes: list[FileChange], message: str) -> str | None:
        paths = [c.path for c in changes]
        run_git(self.root, "add", "--", *paths)
        ident = []
        if run_git(self.root, "config", "user.email", check=False).returncode != 0:
            ident = ["-c", "user.name=pairline", "-c", "user.email=pairline@localhost"]
        subject = message.strip().splitlines()[0][:72] if message.strip() else "edit"
        # --only: exactly these paths, whatever else the user has staged
        run_git(self.root, *ident, "commit", "--no-verify", "-q", "--only", "-m", f"pairline: {subject}", "--", *paths)
        return run_git(self.root, "rev-parse", "HEAD").stdout.strip()

    def _backup(self, changes: list[FileChange]) -> Path | None:
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"
        folder = self.backups / stamp
        try:
            for c in changes:
                if c.before is not None:
                    dest = folder / c.path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(c.before)
        except OSError:
            return None  # the in-memory copy still serves /undo
        return folder

    def undo(self) -> UndoEntry:
        """Put back the exact bytes from before the last edit, if the files are still as it left
        them; in git, drop its commit (or revert it if other commits came after)."""
        if not self.history:
            raise PairlineError("nothing to undo")
        entry = self.history[-1]
        for c in entry.changes:
            now = self.root / c.path
            data = now.read_bytes() if now.is_file() else None
            if data != c.after:
                raise FileChangedError(f"{c.path} changed since pairline edited it; not undoing (nothing was written)")
        if entry.commit and self.git:
            head = run_git(self.root, "rev-parse", "HEAD").stdout.strip()
            if head == entry.commit:
                run_git(self.root, "reset", "-q", "--soft", "HEAD~1")
                run_git(self.root, "reset", "-q", "HEAD", "--", *[c.path for c in entry.changes], check=False)
            else:
                proc = run_git(self.root, "revert", "--no-edit", entry.commit, check=False)
                if proc.returncode != 0:
                    run_git(self.root, "revert", "--abort", check=False)
                    raise PairlineError(f"git revert {entry.commit[:10]} failed; nothing was undone")
        for c in entry.changes:
            real = self.root / c.path
            if c.before is None:
                with contextlib.suppress(FileNotFoundError):
                    unlink_beneath(self.root, c.path)
            else:
                restore_bytes(real, c.before)
        self.history.pop()
        return entry


def _open_beneath(root: Path, parts: tuple[str, ...], create: bool) -> int:
    """An fd for the folder root/parts[0]/..., reached one component at a time with O_NOFOLLOW, so a
    folder swapped for a symlink after the path was checked is refused rather than followed.
    Missing folders are made (mode 0777 less the umask) when `create`."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    try:
        for name in parts:
            if name in ("", ".", "..") or "/" in name:
                raise PairlineError(f"unexpected path component {name!r}")
            try:
                nxt = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                nxt = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileChangedError(f"{'/'.join(parts)} is no longer a folder inside the workspace (a symlink "
                                   "or a file took its place); nothing was written") from None
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_file(real: Path, text: str, root: Path | None = None) -> None:
    """A new file, written whole or not at all (temp file, then a link that fails if it exists),
    with the mode the user's umask gives a new file. With `root` (a folder checked earlier), the
    file is made relative to it without following any symlink on the way: a folder swapped for a
    symlink after the check makes this fail instead of writing elsewhere."""
    real = Path(real)
    anchor = Path(root) if root is not None else real.parent
    rel = real.relative_to(anchor).parts
    if not rel:
        raise PairlineError(f"{real} is not a file path")
    dir_fd = _open_beneath(anchor, rel[:-1], create=True)
    name = rel[-1]
    try:
        tmp = f".{name}.{secrets.token_hex(4)}.pairline-tmp"
        # 0666 less the umask, as any editor would create it (mkstemp would give 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            # unlike rename, refuses to replace a file that appeared meanwhile; both names are
            # relative to the checked folder, and link() follows no symlink
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise FileChangedError(f"{name} appeared on disk meanwhile; nothing was written") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def unlink_beneath(root: Path, rel: str) -> None:
    """Remove root/rel (a file pairline created) without following a symlink on the way."""
    parts = Path(rel).parts
    dir_fd = _open_beneath(root, parts[:-1], create=False)
    try:
        os.unlink(parts[-1], dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def restore_bytes(real: Path, data: bytes) -> None:
    """Atomically put `data` back as the file's content (undo)."""
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".pairline-tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(os.stat(real).st_mode))
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
