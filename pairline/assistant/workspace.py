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
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
