"""What `pairline doctor` reports: the CPU, the memory bandwidth measured now, every configuration the
crash guard checked on this machine, what runs each phase of a turn, and the decode speed against the
bandwidth limit (bytes read per token / bandwidth). It is what to paste into an issue report."""

from __future__ import annotations

import math
import mmap
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pairline.engine import guard
from pairline.engine.runtime import cpu_threads

INTERESTING_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
DECODE_STEPS = 32


@dataclass(slots=True)
class Report:
    cpu: dict
    threads: int
    bandwidth_gb_s: float  # read bandwidth with `threads` threads, best of a few passes
    model: str = ""
    configuration: str = ""  # what the guard chose for this model here
    phases: dict = field(default_factory=dict)  # prefill / verify / decode -> configuration
    checks: list = field(default_factory=list)
    weight_bytes_per_token: int = 0
    decode_tok_s: float = 0.0
    limit_tok_s: float = 0.0
    fraction_of_limit: float = 0.0
    load_s: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def read_bandwidth(threads: int, mib: int = 256, passes: int = 5) -> float:
    """GB/s that `threads` threads read from memory: each reduces its share of an array 8x larger than
    a typical L3 slice. numpy's reductions release the GIL, so the threads really run together."""
    data = np.ones(mib * 1024 * 1024 // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes):
            t0 = time.perf_counter()
            list(pool.map(np.max, parts))
            best = min(best, time.perf_counter() - t0)
    return data.nbytes / best / 1e9


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights a decode step reads: every tensor of the GGUF but the token embedding table,
    of which a step reads one row (unless the output projection is tied to it, which reads it whole)."""
    sizes = gguf_tensor_bytes(path)
    tied = "output.weight" not in sizes
    return sum(n for name, n in sizes.items() if name != "token_embd.weight" or tied)


def gguf_tensor_bytes(path: Path) -> dict[str, int]:
    """Each tensor's size in the file, from the GGUF header alone (gguf.GGUFReader maps every tensor
    and string array first, seconds for a 150k-token vocabulary)."""
    import gguf

    from pairline.engine.tokenizer import skip_gguf_metadata

    u32, u64 = struct.Struct("<I"), struct.Struct("<Q")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        _, n_tensors, _ = struct.unpack_from("<IQQ", buf, 4)
        pos, sizes = skip_gguf_metadata(buf), {}
        for _ in range(n_tensors):
            (n,) = u64.unpack_from(buf, pos)
            name = buf[pos + 8 : pos + 8 + n].decode()
            pos += 8 + n
            (n_dims,) = u32.unpack_from(buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            pos += 4 + 8 * n_dims
            (kind,) = u32.unpack_from(buf, pos)
            pos += 4 + 8  # type, then the data offset
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            sizes[name] = math.prod(dims) // block * block_bytes
    return sizes


def phases_of(runtime) -> dict:
    """Which configuration serves each phase of a turn: one runtime serves all three, except the
    split one, whose prefill chunks run on torch."""
    label = configuration_label(runtime)
    if runtime.name == "split":
        from pairline.engine.runtimes.split_runtime import WIDE_ROWS

        narrow = guard.Candidate("llamacpp", repack=runtime.llama.repack).label
        return {"prefill": f"torch (bf16 weights; calls of {WIDE_ROWS}+ tokens)", "verify": narrow, "decode": narrow}
    return {"prefill": label, "verify": label, "decode": label}


def measure_decode(engine, steps: int = DECODE_STEPS) -> float:
    """Single-token steps per second after a short prompt, as a turn decodes."""
    rt = engine.runtime
    rt.truncate(0)
    rt.forward(list(range(100, 164)), "last")
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        rt.forward([200 + i], "last")
        times.append(time.perf_counter() - t0)
    rt.truncate(0)
    return 1.0 / sorted(times)[len(times) // 2]


def diagnose(model: str | None, *, tune: bool = False, recheck: bool = False, runtime: str | None = None) -> Report:
    t0 = time.perf_counter()
    threads = cpu_threads()
    cpu = guard.cpu_description()
    flags = set(cpu["flags"].split())
    cpu = {**cpu, "flags": " ".join(f for f in INTERESTING_FLAGS if f in flags), "cores": _cores()}
    report = Report(cpu=cpu, threads=threads, bandwidth_gb_s=round(read_bandwidth(threads), 1))
    if model:
        _diagnose_model(report, model, tune=tune, recheck=recheck, runtime=runtime)
    report.checks = [_check_row(c) for c in guard.all_recorded()]
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


def _diagnose_model(report: Report, model: str, *, tune: bool, recheck: bool, runtime: str | None) -> None:
    from pairline.engine.load import load_engine
    from pairline.models.fetch import resolve

    path = resolve(model)
    if recheck:
        guard.forget(path)
    if tune and path.is_file():
        for quant in ("int8", "none"):
            guard.check(guard.Candidate("torch", quant=quant), path)
    engine = load_engine(model, runtime=runtime, n_ctx=512)
    report.model, report.load_s = model, round(engine.load_s, 2)
    if engine.runtime.name == "split":  # decode is measured with the torch side loaded, not loading
        engine.runtime.wait_ready()
    report.configuration = configuration_label(engine.runtime)
    report.phases = phases_of(engine.runtime)
    report.decode_tok_s = round(measure_decode(engine), 1)
    if path.is_file():
        report.weight_bytes_per_token = weight_bytes_per_token(path)
        report.limit_tok_s = round(report.bandwidth_gb_s * 1e9 / report.weight_bytes_per_token, 1)
        report.fraction_of_limit = round(report.decode_tok_s / report.limit_tok_s, 3)


def configuration_label(runtime) -> str:
    """The configuration a loaded runtime is, in the words of the guard's labels."""
    if runtime.name == "llamacpp":
        return guard.Candidate("llamacpp", repack=runtime.repack).label
    if runtime.name == "split":
        return guard.Candidate("llamacpp", repack=runtime.llama.repack, prefill="torch").label
    if runtime.name == "torch":
        return guard.Candidate("torch", dtype=str(runtime.dtype).split(".")[-1], quant=runtime.quant).label
    return runtime.name


def _check_row(c: guard.Checked) -> dict:
    model = c.key.get("model", "").split("|")[0]
    return {"configuration": guard.Candidate(**c.candidate).label, "model": Path(model).name, "ok": c.ok,
            "reason": c.reason, "prefill_tok_s": c.prefill_tok_s, "step_ms": c.step_ms, "load_s": c.load_s,
            "when": c.when, "this_cpu": c.key.get("cpu") == guard.cpu_description()}


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
