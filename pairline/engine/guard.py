"""The crash guard: a runtime configuration is tried in a child process before this process uses it.

A configuration is a runtime, its options and a model file, under this machine's CPU and this build
of the runtime's library. Some of them crash natively: llama.cpp 0.3.36's AMX weight repack faults
at the first decode on Sapphire-Rapids-class CPUs (docs/engine.md). A segfault cannot be caught, so
the first use of a configuration on a machine loads it in a child, runs a short prefill, a verify-
shaped call and a few decode steps, and checks that the logits are finite. The verdict, with the
speeds the child measured, is cached under a key of CPU flags, library version, options and model
identity, so later starts read one small file and spawn nothing.

    checked = check(Candidate("llamacpp", repack=True), model_path)
    checked.ok, checked.reason, checked.prefill_tok_s, checked.step_ms
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from pairline.errors import PairlineError, notice

# Bumped when what the child checks changes, so older verdicts are not trusted for the new check.
CHECK_VERSION = 3  # 2: the child is pairline.engine.guard_child; 3: split candidates
CHECK_TIMEOUT_S = 300.0  # a first torch int8 conversion of a 1.5B model takes a minute on 2 cores
PROBE_PREFILL = 128  # tokens: the prefill-shaped call (a batched GEMM path)
PROBE_VERIFY = 8  # tokens with every row's logits: the verify-shaped call
PROBE_STEPS = 4  # single-token decode steps (the GEMV path)
# What a check's speeds are weighed by when configurations compete: a main-job-sized turn.
JOB_PROMPT_TOKENS, JOB_OUTPUT_TOKENS = 300, 100
CLEAR_MARGIN = 0.85  # a later candidate replaces an earlier one only when this much faster


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to run a model. `target` ("module:function") builds its runtime from (path, options)
    in the child; pairline's own runtimes use the default, tests may name a runtime of their own."""

    runtime: str  # llamacpp | torch
    repack: bool | None = None  # llamacpp: llama.cpp's "extra buffer types" (CPU_REPACK, AMX)
    dtype: str | None = None  # torch: bf16 | fp32
    quant: str | None = None  # torch: int8 | none
    prefill: str | None = None  # llamacpp: "torch" runs prefill chunks on torch bf16 (runtimes/split_runtime.py)
    target: str = "pairline.engine.guard_child:open_runtime"

    @property
    def label(self) -> str:
        if self.runtime == "llamacpp":
            split = " with torch bf16 prefill" if self.prefill == "torch" else ""
            return f"llama.cpp (weight repack {'on' if self.repack else 'off'}){split}"
        if self.runtime == "torch":
            weights = {None: "int8 weights on CPU", "none": f"{self.dtype or 'bf16'} weights"}.get(self.quant,
                                                                                               f"{self.quant} weights")
            return f"torch ({weights})"
        return self.runtime

    def options(self) -> dict:
        return {"runtime": self.runtime, "repack": self.repack, "dtype": self.dtype, "quant": self.quant,
                "prefill": self.prefill}


@dataclass(slots=True)
class Checked:
    """A check's verdict. `reason` says why a refused configuration was refused."""

    candidate: dict
    ok: bool
    reason: str = ""
    prefill_tok_s: float | None = None
    step_ms: float | None = None
    load_s: float | None = None
    seconds: float = 0.0  # the whole check, child start included
    when: str = ""
    key: dict = field(default_factory=dict)

    def job_seconds(self) -> float:
        """What a main-job-sized turn would take on this configuration, by the check's own speeds."""
        if not self.ok or not self.prefill_tok_s or self.step_ms is None:
            return math.inf
        return JOB_PROMPT_TOKENS / self.prefill_tok_s + JOB_OUTPUT_TOKENS * self.step_ms / 1000


# ---------------------------------------------------------------------------------- the key


@functools.cache  # a process's CPU does not change; choose() asks for each candidate's key
def cpu_description() -> dict:
    """The CPU as the kernel names it: model and feature flags (what decides which kernels run)."""
    model, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = value.strip()
    return {"model": model, "machine": platform.machine(), "flags": " ".join(sorted(flags.split()))}


def bf16_hardware() -> bool:
    """Whether the CPU does bf16 arithmetic in hardware (AMX tiles or AVX512-BF16): only there can a
    torch bf16 prefill beat llama.cpp's kernels, so only there is that configuration checked."""
    flags = set(cpu_description()["flags"].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


@functools.cache
def _library_identity(runtime: str) -> str:
    """The runtime library's version and, for a compiled one, its build: a rebuild with other
    flags (GGML_NATIVE on another CPU) compiles other kernels."""
    if runtime == "llamacpp":
        try:
            version = metadata.version("llama_cpp_python")
        except metadata.PackageNotFoundError:
            return "llama_cpp_python missing"
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
        libs = sorted(Path(spec.origin).parent.glob("lib/*")) if spec and spec.origin else []
        build = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in libs if p.is_file()]
        return f"llama_cpp_python {version} " + hashlib.sha256("|".join(build).encode()).hexdigest()[:12]
    if runtime == "torch":
        try:
            return f"torch {metadata.version('torch')}"
        except metadata.PackageNotFoundError:
            return "torch missing"
    return runtime


def file_identity(path: Path) -> str:
    """A model file by path, size and modification time: a re-pulled or replaced file is a new model.
    (Hashing a gigabyte at every start would cost seconds; pulls verify the sha256 once.)"""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def check_key(candidate: Candidate, path: Path) -> dict:
    from pairline import __version__

    return {
        "check_version": CHECK_VERSION,
        "pairline": __version__,
        "candidate": asdict(candidate),
        "library": _library_identity(candidate.runtime) + (f"; {_library_identity(candidate.prefill)}"
                                                           if candidate.prefill else ""),
        "cpu": cpu_description(),
        "model": file_identity(path),
    }


def checks_dir() -> Path:
    from pairline.models.fetch import cache_dir

    return cache_dir() / "checks"


def _record_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return checks_dir() / f"{digest}.json"


# ---------------------------------------------------------------------------------- the check


def recorded(candidate: Candidate, path: Path) -> Checked | None:
    """The cached verdict for this configuration on this machine, or None where it was never checked."""
    key = check_key(candidate, path)
    try:
        data = json.loads(_record_path(key).read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:  # a digest collision or a hand-edited file: check again
        return None
    return Checked(**data)


def check(candidate: Candidate, path: Path) -> Checked:
    """The verdict for running `candidate` on the model at `path` here: cached, or found by a child."""
    found = recorded(candidate, path)
    if found is not None:
        return found
    key = check_key(candidate, path)
    record = _record_path(key)
    with _locked(record):
        found = recorded(candidate, path)  # another process may have checked while we waited
        if found is not None:
            return found
        result = _run_child(candidate, path)
        result.key = key
        _save(record, result)
    return result


def _run_child(candidate: Candidate, path: Path) -> Checked:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pairline.engine.guard_child", json.dumps({"candidate": asdict(candidate),
                                                                      "path": str(path)})]
    env = dict(os.environ, PYTHONFAULTHANDLER="1")  # a native fault prints its Python stack to stderr
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return _verdict(candidate, False, f"no answer within {CHECK_TIMEOUT_S:.0f} s", t0)
    if proc.returncode < 0:
        return _verdict(candidate, False, f"killed by {_signal_name(-proc.returncode)}", t0)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return _verdict(candidate, False, f"exit status {proc.returncode}: {last[:200]}", t0)
    data = json.loads(lines[-1])
    result = _verdict(candidate, data["ok"], data.get("reason", ""), t0)
    result.prefill_tok_s, result.step_ms, result.load_s = data.get("prefill_tok_s"), data.get("step_ms"), \
        data.get("load_s")
    return result


def _verdict(candidate: Candidate, ok: bool, reason: str, t0: float) -> Checked:
    return Checked(asdict(candidate), ok, reason, seconds=round(time.perf_counter() - t0, 3),
                   when=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _save(record: Path, result: Checked) -> None:
    """Atomic: a reader sees the old verdict, the new one or none, never half of one."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(result), indent=1))
        os.replace(tmp, record)
    except OSError:
        pass  # a read-only cache costs a check per start, not a crash


@contextlib.contextmanager
def _locked(record: Path):
    """One check of a configuration at a time on this machine (a server and a CLI starting together)."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        handle = open(record.with_suffix(".lock"), "w")  # noqa: SIM115 - held for the with block
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def forget(path: Path) -> int:
    """Drop this machine's verdicts for the model at `path` (`pairline doctor --recheck`); how many."""
    gone = 0
    model = file_identity(path)
    for p in checks_dir().glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(p.read_text()).get("key", {}).get("model") == model:
                p.unlink()
                gone += 1
    return gone


def all_recorded() -> list[Checked]:
    """Every verdict in the cache, newest first (for `pairline doctor`)."""
    out = []
    for p in sorted(checks_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(Checked(**json.loads(p.read_text())))
    return sorted(out, key=lambda c: c.when, reverse=True)


# ---------------------------------------------------------------------------------- the choice


def choose(candidates: list[Candidate], path: Path) -> Candidate:
    """The configuration to run, by measurement: every candidate of the first runtime is checked
    (once per machine) and the fastest that passed serves. A later runtime competes where its check
    is already recorded (`pairline doctor --tune`), and is checked here only when no candidate of the
    first passed. Raises PairlineError, naming each refusal, when nothing passes."""
    first = [c for c in candidates if c.runtime == candidates[0].runtime]
    later = [c for c in candidates if c.runtime != candidates[0].runtime]
    fresh = {c: recorded(c, path) is None for c in first}
    verdicts = [(c, check(c, path)) for c in first]
    verdicts += [(c, r) for c in later if (r := recorded(c, path)) is not None]
    passed = [(c, r) for c, r in verdicts if r.ok]
    for c in later:
        if passed:
            break
        if any(c == seen for seen, _ in verdicts):  # recorded, and refused: already counted
            continue
        fresh[c] = recorded(c, path) is None
        r = check(c, path)
        verdicts.append((c, r))
        passed += [(c, r)] if r.ok else []
    refused = [(c, r) for c, r in verdicts if not r.ok]
    if not passed:
        raise PairlineError("no way to run this model passed its check on this CPU: " +
                            "; ".join(f"{c.label}: {r.reason}" for c, r in refused))
    best = _fastest(passed)
    for c, r in refused:
        if fresh.get(c):
            notice(f"{c.label} failed its check on this CPU ({r.reason}); {best.label} runs instead "
                   "(remembered; `pairline doctor` lists every check)")
    return best


def _fastest(passed: list[tuple[Candidate, Checked]]) -> Candidate:
    """The first passed candidate, unless a later one measured clearly faster: a check's timings come
    from a few calls on a machine that may be busy, so a small difference is noise, not a reason."""
    best, best_s = passed[0][0], passed[0][1].job_seconds()
    for c, r in passed[1:]:
        if r.job_seconds() < CLEAR_MARGIN * best_s:
            best, best_s = c, r.job_seconds()
    return best


def preferred_repack(path: Path) -> bool:
    """Whether llama.cpp should repack this model's weights here: only where that passed its check,
    and only where it measured faster than the plain layout."""
    return bool(choose([Candidate("llamacpp", repack=True), Candidate("llamacpp", repack=False)], path).repack)
