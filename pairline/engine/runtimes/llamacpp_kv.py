"""llama.cpp's saved sequence state (`llama_state_seq_get_data`) as arrays, and back.

The split runtime (runtimes/split_runtime.py) hands KV between pairline's torch model and
llama.cpp through this blob: it is the one public way into llama.cpp's cache. The layout is
llama-kv-cache.cpp's `state_write` in llama-cpp-python 0.3.36, for a model with one KV stream and
no per-cell extras (no M-RoPE):

    u32 magic 0xaf143cd8 · i32 seq_id · u32 n_stream (1) · u32 cell_count
    per cell: i32 pos, u32 n_seq_id (1), i32 seq_id
    u32 v_trans · u32 n_layer
    per layer: i32 k_type, u64 row_bytes, cell_count K rows
    V, untransposed: per layer as K; transposed: i32 v_type, u32 element_bytes, u32 n_embd_v,
       then n_embd_v runs of cell_count elements (one run per V channel)

Only f16 caches are read or written (llama.cpp's default `type_k`/`type_v`); anything else raises
KVFormatError, and the caller keeps the runtime that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GGML_TYPE_F16 = 1
SEQ_MAGIC = 0xAF143CD8  # llama-context.cpp's io_magic, before every sequence state


class KVFormatError(ValueError):
    """A blob this module does not understand (another cache type, several streams, extras)."""


@dataclass(slots=True)
class SeqState:
    positions: np.ndarray  # [cells] int32
    keys: np.ndarray  # [layers, cells, n_embd_k] float16
    values: np.ndarray  # [layers, cells, n_embd_v] float16
    v_trans: bool  # how llama.cpp stores V (transposed unless flash attention is on)

    @property
    def cells(self) -> int:
        return len(self.positions)


class _Reader:
    def __init__(self, blob: bytes):
        self.blob, self.at = memoryview(blob), 0

    def take(self, dtype: str, count: int = 1) -> np.ndarray:
        dt = np.dtype(dtype)
        end = self.at + dt.itemsize * count
        if end > len(self.blob):
            raise KVFormatError("the state ends early")
        out = np.frombuffer(self.blob[self.at : end], dtype=dt)
        self.at = end
        return out

    def one(self, dtype: str) -> int:
        return int(self.take(dtype)[0])


def parse(blob: bytes, n_layers: int, n_embd_k: int, n_embd_v: int) -> SeqState:
    """The cells of one sequence's state; `n_*` say what the model's layers hold, so a blob with
    per-cell extras or another layout fails loudly instead of being misread."""
    r = _Reader(blob)
    if r.one("<u4") != SEQ_MAGIC:
        raise KVFormatError("not a llama.cpp sequence state")
    r.one("<i4")  # the sequence it was saved from; a restore names its own
    if r.one("<u4") != 1:
        raise KVFormatError("only a single KV stream is supported")
    cells = r.one("<u4")
    if cells == 0:
        empty = np.zeros((n_layers, 0, n_embd_k), np.float16)
        return SeqState(np.zeros(0, np.int32), empty, np.zeros((n_layers, 0, n_embd_v), np.float16), True)
    meta = r.take("<i4", 3 * cells).reshape(cells, 3)  # pos, n_seq_id, seq_id
    if not (meta[:, 1] == 1).all():
        raise KVFormatError("cells with extras or several sequences are not supported")
    v_trans, layers = r.one("<u4"), r.one("<u4")
    if layers != n_layers:
        raise KVFormatError(f"the state has {layers} layers, the model {n_layers}")
    keys = np.empty((layers, cells, n_embd_k), np.float16)
    values = np.empty((layers, cells, n_embd_v), np.float16)
    for layer in range(layers):
        _expect_f16(r.one("<i4"))
        if r.one("<u8") != 2 * n_embd_k:
            raise KVFormatError("unexpected K row size")
        keys[layer] = r.take("<f2", cells * n_embd_k).reshape(cells, n_embd_k)
    for layer in range(layers):
        _expect_f16(r.one("<i4"))
        if v_trans:
            if r.one("<u4") != 2 or r.one("<u4") != n_embd_v:
                raise KVFormatError("unexpected transposed V layout")
            values[layer] = r.take("<f2", cells * n_embd_v).reshape(n_embd_v, cells).T
        else:
            if r.one("<u8") != 2 * n_embd_v:
                raise KVFormatError("unexpected V row size")
            values[layer] = r.take("<f2", cells * n_embd_v).reshape(cells, n_embd_v)
    if r.at != len(blob):
        raise KVFormatError(f"{len(blob) - r.at} bytes left after the state")
    return SeqState(meta[:, 0].astype(np.int32), keys, values, bool(v_trans))


def build(state: SeqState) -> bytes:
    """The blob `llama_state_seq_set_data` reads back as these cells (sequence 0)."""
    cells = state.cells
    layers, _, n_embd_k = state.keys.shape
    n_embd_v = state.values.shape[2]
    u4 = lambda x: np.uint32(x).tobytes()  # noqa: E731 - four little helpers read better inline
    parts = [u4(SEQ_MAGIC), np.int32(0).tobytes(), u4(1), u4(cells)]
    if cells == 0:
        return b"".join(parts)
    meta = np.zeros((cells, 3), "<i4")
    meta[:, 0], meta[:, 1] = state.positions, 1
    parts += [meta.tobytes(), u4(int(state.v_trans)), u4(layers)]
    for layer in range(layers):
        parts += [np.int32(GGML_TYPE_F16).tobytes(), np.uint64(2 * n_embd_k).tobytes(),
                  np.ascontiguousarray(state.keys[layer], "<f2").tobytes()]
    for layer in range(layers):
        parts.append(np.int32(GGML_TYPE_F16).tobytes())
        if state.v_trans:
            parts += [u4(2), u4(n_embd_v), np.ascontiguousarray(state.values[layer].T, "<f2").tobytes()]
        else:
            parts += [np.uint64(2 * n_embd_v).tobytes(), np.ascontiguousarray(state.values[layer], "<f2").tobytes()]
    return b"".join(parts)


def _expect_f16(type_id: int) -> None:
    if type_id != GGML_TYPE_F16:
        raise KVFormatError(f"the KV cache holds ggml type {type_id}; only f16 (1) is supported")
