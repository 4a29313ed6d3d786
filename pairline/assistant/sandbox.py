"""Run shell commands and tests for the agent and the eval, confined to one directory.

`Sandbox(root).run("pytest -q")` runs the command with `root` as its working directory, a scrubbed
environment, a wall-time limit (the whole process group is killed), an output limit (head and tail
kept), and, where this Linux kernel allows, no network and no writes outside `root` and a private
temp dir. `Sandbox.protections` says which of those were in force; docs/agent.md says what the
sandbox does not protect against.

File tools go through `Sandbox.resolve`, which refuses paths that leave the root (`..`, absolute
paths elsewhere, symlinks pointing out).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pairline.assistant import confine
from pairline.errors import PairlineError

_CONFINE = Path(confine.__file__).resolve()
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxError(PairlineError):
    """A path or command the sandbox refuses."""


@dataclass(slots=True)
class Limits:
    timeout_s: float = 120.0
    output_bytes: int = 32_000  # what the caller sees; the middle of longer output is cut
    memory_bytes: int | None = 4 << 30  # address space per process
    cpu_s: int | None = None  # CPU seconds per process (the wall limit usually bites first)
    file_bytes: int | None = 256 << 20  # largest file a command may write


@dataclass(slots=True)
class RunResult:
    command: str
    exit_code: int | None  # None when killed for running past the time limit, or cancelled
    output: str  # stdout and stderr, interleaved as written
    timed_out: bool
    truncated: bool
    wall_s: float
    cancelled: bool = False  # stopped by the caller's cancel

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def summary(self) -> str:
        """One line for a log or a model: how it ended."""
        if self.timed_out:
            return f"`{self.command}` timed out after {self.wall_s:.1f}s"
        if self.cancelled:
            return f"`{self.command}` was stopped after {self.wall_s:.1f}s"
        return f"`{self.command}` exited {self.exit_code} in {self.wall_s:.1f}s"


@functools.cache
def available_protections() -> tuple[str, ...]:
    """What this kernel lets an unprivileged process enforce, probed once per process."""
    found = ["workdir", "scrubbed-env", "time-limit", "output-limit", "rlimits"]
    if sys.platform != "linux":
        return tuple(found)
    if confine.landlock_abi() >= 1:
        found.append("no-writes-outside")
    probe = subprocess.run([sys.executable, "-I", str(_CONFINE), json.dumps(
        {"no_network": True, "cwd": "/", "env": {"PATH": _SYSTEM_PATH}}), "true"],
        capture_output=True, timeout=30)
    if probe.returncode == 0:
        found.append("no-network")
    return tuple(found)


@dataclass
class Sandbox:
    root: Path
    limits: Limits = field(default_factory=Limits)
    network: bool = False  # True lets commands reach the network (pip install, say)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if not self.root.is_dir():
            raise SandboxError(f"sandbox root is not a directory: {self.root}")

    @property
    def protections(self) -> tuple[str, ...]:
        found = available_protections()
        return tuple(p for p in found if not (self.network and p == "no-network"))

    def resolve(self, path: str | os.PathLike) -> Path:
        """`path` (relative to the root, or absolute inside it) as an absolute path inside the root."""
        raw = Path(path)
        if str(path).strip() == "":
            raise SandboxError("empty path")
        full = (raw if raw.is_absolute() else self.root / raw).resolve()
        if full != self.root and self.root not in full.parents:
            raise SandboxError(f"{path} is outside the repository ({self.root})")
        return full

    def _env(self, home: str) -> dict[str, str]:
        # Start from nothing: no API keys, tokens or cloud credentials reach a command. PATH keeps the
        # interpreter's own bin directory first, so `python` and `pytest` are the project's.
        bin_dir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{bin_dir}:{_SYSTEM_PATH}",
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TERM": "dumb",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONHASHSEED": "0",
            "NO_COLOR": "1",
            "PAGER": "cat",
            "GIT_PAGER": "cat",
        }
        env.update(self.extra_env)
        return env

    def run(self, command: str | Sequence[str], timeout_s: float | None = None, stdin: str | None = None,
            cancel=None) -> RunResult:
        """Run `command` (a shell string, run by /bin/sh, or an argv list) inside the sandbox. `cancel`
        (anything with a `cancelled` property, e.g. a CancelToken) stops it early, like the time limit."""
        if isinstance(command, str):
            if not command.strip():
                raise SandboxError("empty command")
            argv, shown = ["/bin/sh", "-c", command], command
        else:
            argv = [str(a) for a in command]
            if not argv:
                raise SandboxError("empty command")
            shown = shlex.join(argv)
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        protections = available_protections()
        with tempfile.TemporaryDirectory(prefix="pairline-sandbox-") as home:
            spec = {
                "cwd": str(self.root),
                "env": self._env(home),
                "no_network": not self.network and "no-network" in protections,
                "landlock": "no-writes-outside" in protections,
                "writable_dirs": [str(self.root), home],
                "writable_files": ["/dev/null"],
                "memory_bytes": self.limits.memory_bytes,
                "cpu_s": self.limits.cpu_s,
                "file_bytes": self.limits.file_bytes,
            }
            launcher = [sys.executable, "-I", str(_CONFINE), json.dumps(spec)] if sys.platform == "linux" else []
            return self._supervise(launcher + argv, shown, timeout, stdin, spec["env"], cancel)

    def _supervise(self, argv: list[str], shown: str, timeout: float, stdin: str | None,
                   env: dict[str, str], cancel=None) -> RunResult:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, cwd=self.root, env=env,
                                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            raise SandboxError(f"cannot start `{shown}`: {err.strerror or err}") from None
        capture = _Capture(self.limits.output_bytes)
        reader = threading.Thread(target=capture.drain, args=(proc.stdout,), daemon=True)
        reader.start()
        if stdin:
            try:
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
        timed_out = cancelled = False
        deadline = t0 + timeout
        try:
            while True:  # short waits, so a cancel lands within 50 ms
                try:
                    proc.wait(timeout=max(0.0, min(0.05, deadline - time.perf_counter())))
                    break
                except subprocess.TimeoutExpired:
                    if cancel is not None and cancel.cancelled:
                        cancelled = True
                        break
                    if time.perf_counter() >= deadline:
                        timed_out = True
                        break
        finally:
            # also on Ctrl-C in this process: the command runs in its own session, so the terminal's
            # SIGINT never reaches it, and it would go on running unsupervised
            _kill_group(proc.pid)  # also reaps anything the command left running in the background
            proc.wait()
        reader.join(timeout=2.0)  # a daemonised grandchild may hold the pipe open: stop reading anyway
        return RunResult(command=shown, exit_code=None if timed_out or cancelled else proc.returncode,
                         output=capture.text(), timed_out=timed_out, truncated=capture.dropped > 0,
                         wall_s=time.perf_counter() - t0, cancelled=cancelled)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Capture:
    """Keeps the first and last halves of a stream of at most `limit` bytes in all."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def drain(self, stream) -> None:
        try:
            while chunk := stream.read1(65536):
                room = self.half - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                self.tail += chunk
                if len(self.tail) > self.half:
                    self.dropped += len(self.tail) - self.half
                    del self.tail[: len(self.tail) - self.half]
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        if self.dropped:
            return f"{head}\n[... {self.dropped} bytes of output cut ...]\n{tail}"
        return head + tail
