"""KV states of prompts kept on disk, so a new process does not prefill them again.

Every edit request starts with the same system prompt (74 tokens for `pairline edit` on Qwen). On a
2-core CPU its prefill is about half of the main job's time to first token; restoring its saved KV
takes ~10 ms. Users also edit the same files again and again: a whole prompt's state (system, files,
instruction, answer) is kept too, and a later prompt that shares its head (the file unchanged down to
the line just edited) restores it and prefills only from the first differing token.

A state is only valid for the exact model file and the library that wrote it, so the folder is keyed
by both; a file holds the exact token ids it was computed from, and only the part a new prompt shares
with them, token for token, is ever used. Bounded by count and bytes; least recently used go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pairline.engine.runtime import common_prefix

_MAGIC = b"PLKV1\n"
_HEAD = len(_MAGIC) + 8
_KEEP = 32  # states per model; the least recently used go first
_DEFAULT_MB = 512  # PAIRLINE_KV_STORE_MB: all states of one model together (0.5B: ~12 KB a token)


@dataclass(slots=True)
class PrefixStore:
    root: Path

    @classmethod
    def for_model(cls, model_file: Path, state_id: str) -> PrefixStore | None:
        from pairline.models.fetch import cache_dir

        try:
            st = model_file.stat()
        except OSError:
            return None
        key = hashlib.sha256(f"{model_file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{state_id}".encode())
        return cls(cache_dir() / "kv" / f"{model_file.stem}-{key.hexdigest()[:16]}")

    def _file(self, tokens: list[int]) -> Path:
        return self.root / f"{hashlib.sha256(_ids(tokens)).hexdigest()[:32]}.kv"

    def load(self, tokens: list[int]) -> bytes | None:
        """The state of exactly `tokens`, if stored."""
        path = self._file(tokens)
        if _read_ids(path) != tokens:
            return None
        return _read_state(path)

    def longest_head(self, tokens: list[int]) -> int:
        """How many leading tokens of `tokens` the best stored state holds (ids read, no state)."""
        return self._best(tokens)[2]

    def longest(self, tokens: list[int]) -> tuple[list[int], bytes] | None:
        """The stored state sharing the longest head with `tokens`: (the ids it was computed from,
        the state). Only its ids are read from each file until the best is known."""
        path, ids, _ = self._best(tokens)
        state = _read_state(path) if path is not None else None
        return (ids, state) if state is not None else None

    def _best(self, tokens: list[int]) -> tuple[Path | None, list[int], int]:
        """The file whose ids share the longest head with `tokens`: (path, its ids, shared length)."""
        best: tuple[Path | None, list[int], int] = (None, [], 0)
        for path in self.root.glob("*.kv"):
            ids = _read_ids(path) or []
            n = common_prefix(ids, tokens)
            if n > best[2]:
                best = (path, ids, n)
        return best

    def save(self, tokens: list[int], state: bytes) -> None:
        """Atomically and quietly: a full disk or a read-only cache only costs prefill time later."""
        ids = _ids(tokens)
        path = self._file(tokens)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(_MAGIC + struct.pack("<Q", len(ids)) + ids + state)
            os.replace(tmp, path)
            self._prune()
        except OSError:
            pass

    def _prune(self) -> None:
        files = []
        for f in self.root.glob("*.kv"):
            with contextlib.suppress(OSError):
                st = f.stat()
                files.append((st.st_mtime, st.st_size, f))
        files.sort(reverse=True)  # most recently used first
        budget = _budget_bytes()
        for i, (_, size, f) in enumerate(files):
            budget -= size
            if i >= _KEEP or (budget < 0 and i > 0):
                f.unlink(missing_ok=True)


def _budget_bytes() -> int:
    try:
        return int(float(os.environ.get("PAIRLINE_KV_STORE_MB") or _DEFAULT_MB) * (1 << 20))
    except ValueError:
        return _DEFAULT_MB << 20


def _ids(tokens: list[int]) -> bytes:
    return np.asarray(tokens, dtype="<i4").tobytes()


def _read_ids(path: Path) -> list[int] | None:
    """The token ids a state file was computed from; None if it is not one."""
    try:
        with path.open("rb") as f:
            head = f.read(_HEAD)
            if len(head) < _HEAD or head[: len(_MAGIC)] != _MAGIC:
                return None
            (n,) = struct.unpack("<Q", head[len(_MAGIC) :])
            raw = f.read(n)
    except OSError:
        return None
    return np.frombuffer(raw, dtype="<i4").tolist() if len(raw) == n and n % 4 == 0 else None


def _read_state(path: Path) -> bytes | None:
    try:
        raw = path.read_bytes()
        os.utime(path)  # recently used: pruned last
    except OSError:
        return None
    if len(raw) < _HEAD or raw[: len(_MAGIC)] != _MAGIC:
        return None
    (n,) = struct.unpack("<Q", raw[len(_MAGIC) : _HEAD])
    return raw[_HEAD + n :] if len(raw) > _HEAD + n else None

