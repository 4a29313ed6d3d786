"""Confine this process, then exec a command: the child side of `sandbox.Sandbox.run`.

Run as `python -I confine.py SPEC_JSON ARGV...`. It is a launcher rather than a `preexec_fn` so it is
safe to start from a threaded parent (the server, the agent's streaming client). Standard library
only, and nothing imported from pairline: it runs under `-I` and must start fast.

What it applies, each only where the kernel allows (the parent probes first and reports which):
- a new user + network namespace: no network at all, not even loopback;
- Landlock: writes, removals and new files only beneath the allowed directories (the repo, a private
  temp dir, /dev/null); reads stay allowed;
- resource limits: address space, CPU seconds, size of a written file, core dumps off.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
SYS_LANDLOCK_CREATE_RULESET = 444  # same numbers on x86_64 and aarch64
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

# Landlock filesystem rights (uapi/linux/landlock.h)
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
FILE_RIGHTS_WRITE = FS_WRITE_FILE  # the only write right a rule on a single file may carry (plus truncate)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 where there is none."""
    try:
        r = _libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(int(r), 0)


def _write_rights(abi: int) -> int:
    rights = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
              | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    return rights


def restrict_writes(writable_dirs: list[str], writable_files: list[str]) -> None:
    """Landlock: from now on this process and its children may write only beneath `writable_dirs`
    and to `writable_files`. Reads and execution are not handled, so they stay allowed."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available")
    libc = _libc()
    handled = _write_rights(abi)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        file_rights = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
        for path, rights in [(d, handled) for d in writable_dirs] + [(f, file_rights) for f in writable_files]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(rights, fd)
                if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


def drop_network() -> None:
    """A fresh user and network namespace: the process sees no interface but a downed loopback.
    The user namespace maps our own uid/gid to themselves, so files keep their owner."""
    uid, gid = os.getuid(), os.getgid()
    if _libc().unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER|CLONE_NEWNET) failed")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def set_limits(memory_bytes: int | None, cpu_s: int | None, file_bytes: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for which, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_s),
                         (resource.RLIMIT_FSIZE, file_bytes)):
        if value is not None:
            resource.setrlimit(which, (value, value))


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    command = argv[2:]
    try:
        if spec.get("no_network"):
            drop_network()
        set_limits(spec.get("memory_bytes"), spec.get("cpu_s"), spec.get("file_bytes"))
        if spec.get("landlock"):
            restrict_writes(spec["writable_dirs"], spec["writable_files"])
        os.chdir(spec["cwd"])
        os.execvpe(command[0], command, spec["env"])
    except FileNotFoundError:
        print(f"sandbox: command not found: {command[0]}", file=sys.stderr)
        return 127
    except OSError as err:
        print(f"sandbox: could not confine or start the command: {err}", file=sys.stderr)
        return 126
    return 126  # not reached: execvpe replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
