"""Run shell commands and tests for the agent and the eval, confined to one directory.

`Sandbox(root).run("pytest -q")` runs the command with `root` as its working directory, a scrubbed
environment, a wall-time limit, an output limit (head and tail kept), and, where this Linux kernel
allows (probed once, see `available_protections`):
- one PID namespace per command: when the command ends, times out or is cancelled, every process it
  started dies with it, `setsid` and daemons included; at most `Limits.processes` at once;
- no network (a network namespace), and no new Unix sockets (seccomp), so nothing outside is reached;
- Landlock: writes only in `root` and a private temp dir; reads only there, in the toolchain and in
  the system directories (not `$HOME`, not `/tmp`, not a file in /etc only root may read);
- a cgroup per command where one can be made: processes and the memory of the whole tree.

The agent refuses to run commands when one of `REQUIRED` is missing, unless the user allowed a weak
sandbox (`allow_weak`, `pairline agent --allow-weak-sandbox`). docs/agent.md says what the sandbox
does not protect against.

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
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pairline.assistant import cgroups, confine
from pairline.errors import PairlineError

_CONFINE = Path(confine.__file__).resolve()
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# Read and execute beneath these whole. /etc is added entry by entry (`_world_readable`).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/nix/store", "/proc",
                "/sys/devices/system/cpu", "/sys/fs/cgroup", "/dev/zero", "/dev/full", "/dev/random",
                "/dev/urandom")
# What a command needs to be called confined; without one of these the agent asks for a flag.
REQUIRED = ("no-network", "pid-namespace", "no-writes-outside", "no-reads-outside", "no-unix-sockets")
EXTRA_READ_ENV = "PAIRLINE_SANDBOX_READ"  # more readable folders, separated by os.pathsep


class SandboxError(PairlineError):
    """A path or command the sandbox refuses."""


@dataclass(slots=True)
class Limits:
    timeout_s: float = 120.0
    output_bytes: int = 32_000  # what the caller sees; the middle of longer output is cut
    memory_bytes: int | None = 4 << 30  # address space per process
    cpu_s: int | None = None  # CPU seconds per process (the wall limit usually bites first)
    file_bytes: int | None = 256 << 20  # largest file a command may write
    processes: int | None = 1024  # processes and threads at once in the command's tree (a PID namespace's floor: 300)
    tree_memory_bytes: int | None = 8 << 30  # memory of the whole tree, where a cgroup can be made


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
def kernel_features() -> dict:
    """What confine.py could apply on this kernel (each tried in a throwaway child), probed once."""
    if sys.platform != "linux":
        return {}
    try:
        proc = subprocess.run([sys.executable, "-I", str(_CONFINE), json.dumps({"probe": True})],
                              capture_output=True, text=True, timeout=30)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


@functools.cache
def available_protections() -> tuple[str, ...]:
    """What this kernel lets this process enforce, probed once per process."""
    found = ["workdir", "scrubbed-env", "time-limit", "output-limit", "rlimits"]
    k = kernel_features()
    if k.get("landlock", 0) >= 1:
        found += ["no-writes-outside", "no-reads-outside"]
    if k.get("network_namespace"):
        found.append("no-network")
    if k.get("pid_namespace"):
        found.append("pid-namespace")
    if k.get("seccomp"):
        found.append("no-unix-sockets")
    groups = cgroups.supported() if sys.platform == "linux" else frozenset()
    # RLIMIT_NPROC binds a non-root user inside its own user namespace (root is exempt)
    if k.get("pid_max") or "pids" in groups or (k.get("user_namespace") and os.getuid() != 0):
        found.append("process-limit")
    if "memory" in groups:
        found.append("memory-limit")
    return tuple(found)


def _public(st: os.stat_result) -> bool:
    # Every user may read it (and enter it, for a folder): not a secret by the system's own account.
    need = 0o005 if stat.S_ISDIR(st.st_mode) else 0o004
    return st.st_mode & need == need


@functools.cache
def _world_readable(top: str, budget: int = 20000) -> tuple[str, ...]:
    """`top` when everything beneath it is world-readable, else its world-readable parts, folder by
    folder; plus the files outside it that its symlinks point to (/etc/resolv.conf). A file only
    root or a group may read (/etc/shadow, ssh host keys, sudoers) is left out."""
    extra: list[str] = []
    left = [budget]

    def visit(path: str) -> tuple[bool, list[str]]:
        left[0] -= 1
        try:
            st = os.stat(path)
        except OSError:
            return True, []
        if not _public(st):
            return False, []
        if not stat.S_ISDIR(st.st_mode):
            return True, [path]
        if left[0] <= 0:
            return False, []  # too big to check: leave out what is not checked
        whole, parts = True, []
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return False, []
        for entry in entries:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                with contextlib.suppress(OSError):
                    if not target.startswith(top + "/") and os.path.isfile(target) and _public(os.stat(target)):
                        extra.append(target)
                continue
            sub_whole, sub_parts = visit(entry.path)
            whole = whole and sub_whole
            parts += sub_parts
        return (True, [path]) if whole else (False, parts)

    return tuple(visit(top)[1] + extra)


def _home_guarded(path: str, home: str) -> bool:
    """True for $HOME, a folder above it, or one of its dot-directories: never readable whole."""
    p, h = os.path.realpath(path), os.path.realpath(home)
    if h.startswith(p.rstrip("/") + "/"):  # a folder above $HOME: "/", "/home"
        return True
    return h != "/" and (p == h or (os.path.dirname(p) == h and os.path.basename(p).startswith(".")))


def readable_paths(extra: Sequence[str] = ()) -> list[str]:
    """Where a command may read and execute besides its repository and temp dir: the system
    directories, the world-readable part of /etc, the Python toolchain pairline runs on (its venv
    and base install, even inside a dot-directory of $HOME, but never $HOME or a dot-directory
    whole), and `extra` plus $PAIRLINE_SANDBOX_READ (the user's explicit choice: a toolchain in
    ~/.cargo, say)."""
    home = os.path.expanduser("~")
    toolchain = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                 os.path.dirname(os.path.realpath(sys.executable))}
    # /etc's symlinks mostly point into /usr: those need no rule of their own
    etc = [p for p in _world_readable("/etc") if not any(p.startswith(d + "/") for d in _SYSTEM_DIRS)]
    paths = [*_SYSTEM_DIRS, *dict.fromkeys(etc)]
    paths += sorted(p for p in toolchain if p and not _home_guarded(p, home))
    env = os.environ.get(EXTRA_READ_ENV, "")
    paths += [os.path.expanduser(p) for p in [*extra, *env.split(os.pathsep)] if p]
    return paths


@dataclass
class Sandbox:
    root: Path
    limits: Limits = field(default_factory=Limits)
    network: bool = False  # True lets commands reach the network (pip install, say)
    extra_env: dict[str, str] = field(default_factory=dict)
    allow_weak: bool = False  # run commands even where a REQUIRED protection is missing
    read_paths: list[str] = field(default_factory=list)  # more folders commands may read

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if not self.root.is_dir():
            raise SandboxError(f"sandbox root is not a directory: {self.root}")

    @property
    def protections(self) -> tuple[str, ...]:
        found = available_protections()
        return tuple(p for p in found if not (self.network and p == "no-network"))

    @property
    def missing(self) -> tuple[str, ...]:
        """The REQUIRED protections this kernel cannot give (no-network counts only when asked for)."""
        have = available_protections()
        return tuple(p for p in REQUIRED if p not in have and not (self.network and p == "no-network"))

    def weakness(self) -> str | None:
        """One line for the user where the sandbox is weak here, or None."""
        if not self.missing:
            return None
        verdict = ("commands run anyway (--allow-weak-sandbox)" if self.allow_weak else
                   "commands are refused; pass --allow-weak-sandbox to run them anyway")
        return f"sandbox: this kernel does not give {', '.join(self.missing)}; {verdict}"

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

    def _spec(self, home: str, group: cgroups.CommandGroup | None) -> dict:
        have = available_protections()
        pidns = "pid-namespace" in have
        no_network = not self.network and "no-network" in have
        processes = self.limits.processes
        return {
            "cwd": str(self.root),
            "env": self._env(home),
            "user_namespace": pidns or no_network,
            "no_network": no_network,
            "pid_namespace": pidns,
            # pid_max bounds PIDs, not processes: room for the init and the command itself
            "pid_max": processes + 2 if pidns and processes and kernel_features().get("pid_max") else None,
            "processes": processes + 2 if processes else None,
            "cgroup_procs": group.procs_files() if group else [],
            "landlock": "no-writes-outside" in have,
            "writable_dirs": [str(self.root), home],
            "writable_files": ["/dev/null"],
            "readable": readable_paths(self.read_paths) if "no-reads-outside" in have else None,
            "seccomp": "no-unix-sockets" in have,
            "memory_bytes": self.limits.memory_bytes,
            "cpu_s": self.limits.cpu_s,
            "file_bytes": self.limits.file_bytes,
        }

    def _group(self) -> cgroups.CommandGroup | None:
        if sys.platform != "linux":
            return None
        have = cgroups.supported()
        processes = self.limits.processes if "pids" in have else None
        memory = self.limits.tree_memory_bytes if "memory" in have else None
        return cgroups.create(processes, memory) if processes or memory else None

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
        if self.missing and not self.allow_weak:
            raise SandboxError(self.weakness() or "the sandbox is weak here")
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        with tempfile.TemporaryDirectory(prefix="pairline-sandbox-") as home:
            group = self._group()
            try:
                spec = self._spec(home, group)
                launcher = [sys.executable, "-I", str(_CONFINE), json.dumps(spec)] if sys.platform == "linux" else []
                return self._supervise(launcher + argv, shown, timeout, stdin, spec["env"], cancel,
                                       graceful=spec["pid_namespace"])
            finally:
                if group is not None:
                    group.remove()  # kills anything left in it first

    def _supervise(self, argv: list[str], shown: str, timeout: float, stdin: str | None,
                   env: dict[str, str], cancel=None, graceful: bool = False) -> RunResult:
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
            _stop(proc, graceful)
        reader.join(timeout=2.0)  # a daemonised grandchild may hold the pipe open: stop reading anyway
        return RunResult(command=shown, exit_code=None if timed_out or cancelled else proc.returncode,
                         output=capture.text(), timed_out=timed_out, truncated=capture.dropped > 0,
                         wall_s=time.perf_counter() - t0, cancelled=cancelled)


def _stop(proc: subprocess.Popen, graceful: bool) -> None:
    """End the command and everything it started. With a PID namespace, SIGTERM to the launcher
    makes it kill the namespace's init and return only once the namespace is empty; the process
    group is killed after that in any case (and is all there is without a namespace)."""
    if graceful and proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    _kill_group(proc.pid)
    proc.wait()


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
