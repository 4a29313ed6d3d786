"""What every bench shares: the machine it ran on, where its JSON goes and how it is written,
medians and summaries, the printed tables, and the small command-line helpers.

Each bench's own command module (engine, overhead, edit, cancel, gpu, humaneval) imports these from
here, never from another bench's command module. Only the standard library is imported at module
level (torch, rich and the engine when used): `pairline --help` imports this and must stay fast."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).parent / "tasks"  # real code the benches prompt with (tasks.json names the files)
RESULTS_DIR = Path("bench-results")

# ----------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """Platform, cores, CPU model and the flags that pick kernels, memory, and the versions of the
    libraries the engines run on."""
    from pairline.engine.guard import cpu_description

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    cpu = cpu_description()  # the crash guard's reading, which keys its checks
    info["cpu_model"] = cpu["model"]
    flags = set(cpu["flags"].split())
    info["flags"] = {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "bf16_hardware": bool({"avx512_bf16", "amx_bf16", "avx_ne_convert"} & flags),
    }
    with contextlib.suppress(OSError, ValueError):
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0]
        info["memory_gb"] = round(int(meminfo.split()[1]) / 2**20, 1)
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    with contextlib.suppress(Exception):
        import transformers

        info["transformers"] = transformers.__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["llama_cpp_python"] = version("llama_cpp_python")
    return info


def git_state() -> dict:
    """The commit measured, and the engine files that differ from it (others may be editing them)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out: dict[str, Any] = {}
    try:

        def run(*a: str) -> str:
            cmd = ["git", *a]
            return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout

        out["commit"] = run("rev-parse", "HEAD").strip()
        out["dirty"] = [line[3:] for line in run("status", "--porcelain", "--", "pairline").splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def busy_processes(top: int = 6) -> list[str]:
    """The busiest processes on the machine (other people's work shows up here)."""
    import subprocess

    try:
        out = subprocess.run(
            ["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip()[:120] for line in out.splitlines()[1 : top + 1]]


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------------- inputs


def load_tasks() -> list[dict]:
    """tasks.json's tasks, each with its file's text as "source"."""
    data = json.loads((TASKS_DIR / "tasks.json").read_text())
    tasks = []
    for t in data["tasks"]:
        t = dict(t)
        t["source"] = (TASKS_DIR / t["file"]).read_text()
        tasks.append(t)
    return tasks


# ----------------------------------------------------------------------------------- output


def stamp() -> str:
    """Local time, as the result files are named."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def safe_name(model: str) -> str:
    """A model name or path as a piece of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if "/" in model else model)


def out_path(out: str | None, name: str) -> Path:
    """Where a result goes: `out` itself when it names a .json file, else `name` in the folder
    `out` (default bench-results/)."""
    if out is None:
        return RESULTS_DIR / name
    p = Path(out)
    if p.suffix.lower() == ".json" and not p.is_dir():
        return p
    return p / name


def default_out_path(out: str | None, model: str, label: str | None = None, kind: str = "engine") -> Path:
    """out_path with the name KIND-MODEL[-LABEL]-STAMP.json."""
    return out_path(out, f"{kind}-{safe_name(model)}{'-' + label if label else ''}-{stamp()}.json")


def write_json(result: Any, path: Path) -> Path:
    """Atomically: a reader (or a run killed mid-write) never sees half a file. `result` is a
    dict, or an object with to_dict()."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # two writers never share a temporary file
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------- stats


def median(values: Iterable[float | None]) -> float | None:
    """The median of the measured values (None ones are skipped); None when there are none."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (not empty), interpolated between the two nearest ranks."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values: list[float | None]) -> dict:
    """median, min, max of the measured values, and every run as measured (None: not measured)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": values}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (or zero)."""
    return a / b if a and b else None


def nearest_rank(sorted_vals: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of sorted values by nearest rank; None when there are none."""
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(round(q * (len(sorted_vals) - 1))))]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n (95% with the default z), as fractions; sane
    at 0 and n, unlike the normal one. None for n = 0."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ----------------------------------------------------------------------------------- server processes


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(cmd: list[str], ready_url: str, name: str, log_path: Path, env: dict | None = None,
                  timeout: float = 300.0) -> subprocess.Popen:
    """Start a server process (its output to `log_path`) and return once `ready_url` answers 200;
    RuntimeError, naming the log, if it exits first or does not answer in `timeout` seconds."""
    import httpx

    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not answer in {timeout:.0f} s; see {log_path}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.25)


# ----------------------------------------------------------------------------------- printing


def fmt(value: Any, spec: str = "{:.2f}", missing: str = "—") -> str:
    """A table cell: `missing` for None, else the value through `spec`."""
    return missing if value is None else spec.format(value)


def console(piped_width: int | None = None) -> Any:
    """A rich Console on stdout; when stdout is no terminal (a pipe, a log file) and piped_width is
    given, that wide, so that wide tables are not cut to 80 columns."""
    from rich.console import Console

    c = Console()
    return Console(width=piped_width) if piped_width and not c.is_terminal else c


def table(title: str, columns: Iterable[str], left: Collection[str] | None = None) -> Any:
    """A rich Table with these columns: with `left`, the columns named there are left-aligned and
    the others right-aligned (figures); without it, all are left-aligned."""
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="left" if left is None or c in left else "right")
    return t


def stderr_log(prefix: str = "bench") -> tuple[Any, Callable[[str], None]]:
    """A rich Console on stderr, and a log function that prints progress lines to it under a dim
    `prefix:` (stdout keeps only the tables)."""
    from rich.console import Console

    err = Console(stderr=True)

    def log(msg: str) -> None:
        err.print(f"[dim]{prefix}:[/] {msg}", highlight=False)

    return err, log


# ----------------------------------------------------------------------------------- command line


def csv(value: str | None) -> tuple[str, ...] | None:
    """A comma-separated option as its items (blanks dropped); None stays None."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def invocation() -> str:
    """The command as typed (`pairline ...`), for the result's "command"."""
    return "pairline " + " ".join(sys.argv[1:])
