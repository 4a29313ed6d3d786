"""KV states of prompt prefixes kept on disk, so a new process does not prefill them again.

Every edit request starts with the same system prompt (74 tokens for `pairline edit` on Qwen). On a
2-core CPU its prefill is about half of the main job's time to first token; restoring its saved KV
takes ~10 ms. A state is only valid for the exact model file and the library that wrote it, so the
folder is keyed by both; a file holds the token ids it was computed from, checked on load.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_MAGIC = b"PLKV1\n"
_KEEP = 32  # states per model; the least recently used go first


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
        path = self._file(tokens)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        ids = _ids(tokens)
        head = len(_MAGIC) + 8
        if raw[: len(_MAGIC)] != _MAGIC or len(raw) < head:
            return None
        (n,) = struct.unpack("<Q", raw[len(_MAGIC) : head])
        if raw[head : head + n] != ids:
            return None
        os.utime(path)  # recently used: pruned last
        return raw[head + n :]

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
        files = sorted(self.root.glob("*.kv"), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in files[_KEEP:]:
            old.unlink(missing_ok=True)


def _ids(tokens: list[int]) -> bytes:
    return np.asarray(tokens, dtype="<i4").tobytes()
