"""Confine this process, then run a command: the child side of `sandbox.Sandbox.run`.

Run as `python -I confine.py SPEC_JSON ARGV...` (or `confine.py '{"probe": true}'` to learn what this
kernel allows). It is a launcher rather than a `preexec_fn` so it is safe to start from a threaded
parent (the server, the agent's streaming client). Standard library only, and nothing imported from
pairline: it runs under `-I` and must start fast.

What it applies, each only where the parent asks (it probes first and reports which held):
- a new user namespace, and in it a network namespace (no network at all, not even loopback) and a
  PID namespace. In the PID namespace a small init (this file, PID 1) runs the command as PID 2 and
  exits when it does; the kernel then kills every process left in the namespace, `setsid` or not.
  The namespace's `pid_max` caps how many processes it can hold at once, root included. A mount
  namespace gives it its own /proc and a private /dev/shm, where the kernel allows;
- a cgroup (made by the parent) that this process joins first: processes and memory for the tree;
- Landlock: writes only beneath the writable paths; reads and execution only beneath those and the
  readable ones (the parent lists them: the repository, the toolchain, system directories);
- seccomp: no new sockets but IPv4, IPv6 and netlink (so no Unix socket can reach a daemon outside:
  ssh-agent, D-Bus, docker.sock), `socketpair` only for stream and seqpacket pairs, no io_uring (it
  would bypass the socket check), no kernel keyrings;
- resource limits: address space, CPU seconds, size of a written file, core dumps off.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
import socket
import stat
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SYS_LANDLOCK_CREATE_RULESET = 444  # same numbers on x86_64 and aarch64
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
PID_MAX_MIN = 301  # the kernel refuses a smaller pid_max (RESERVED_PIDS + 1)
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18

# Landlock filesystem rights (uapi/linux/landlock.h)
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
FILE_READ_RIGHTS = FS_EXECUTE | FS_READ_FILE  # a rule on a single file may not carry FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        raise OSError(ctypes.get_errno(), f"{what} failed")
    return result


# --------------------------------------------------------------------------- namespaces


def enter_namespaces(network: bool, pid: bool) -> None:
    """A fresh user namespace, plus a network namespace unless `network` (the process then sees no
    interface but a downed loopback) and, if `pid`, a PID namespace (it takes effect for the next
    child, which becomes its PID 1) with a mount namespace for its own /proc and /dev/shm. The user
    namespace maps our own uid/gid to themselves, so files keep their owner."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | (0 if network else CLONE_NEWNET) | (CLONE_NEWPID | CLONE_NEWNS if pid else 0)
    if _libc().unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare of the user/network/PID namespaces failed")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def set_pid_max(n: int) -> None:
    """Cap the PID namespace we are PID 1 of (Linux 6.14 made pid_max per namespace). Unlike
    RLIMIT_NPROC it binds root too; the kernel's floor is 301."""
    with open("/proc/sys/kernel/pid_max", "w") as f:
        f.write(str(max(n, PID_MAX_MIN)))


def private_mounts() -> bool:
    """From the PID namespace's init: a /proc that shows only the namespace's processes, and a
    private /dev/shm (POSIX semaphores, which multiprocessing needs, without the host's shared
    memory). Best effort: a container may refuse a new /proc. True if /dev/shm is the private one."""
    libc = _libc()
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False  # nothing below may propagate back out
    libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    return libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=1777,size=256m") == 0


def _die_with_parent() -> None:
    # If whoever supervises us is killed, so are we (and, for PID 1, the whole namespace).
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --------------------------------------------------------------------------- Landlock


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


def restrict(writable_dirs: list[str], writable_files: list[str], readable: list[str] | None = None) -> None:
    """Landlock: from now on this process and its children may write only beneath `writable_dirs`
    and to `writable_files`. With `readable` (paths: folders or files) given, they may also read and
    execute only beneath those and the writable ones; with None, reads stay unrestricted. Readable
    paths that do not exist are skipped; writable ones must exist."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available")
    libc = _libc()
    handled = _write_rights(abi) | (READ_RIGHTS if readable is not None else 0)
    # ABI 6 scopes: no abstract Unix socket and no signal may reach a process outside the sandbox
    attr = _RulesetAttr(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 8
    ruleset = _check(libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
                     "landlock_create_ruleset")
    file_write = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    read_file = FILE_READ_RIGHTS if readable is not None else 0
    rules = [(d, handled, True) for d in writable_dirs] + [(f, file_write | read_file, True) for f in writable_files]
    rules += [(p, READ_RIGHTS, False) for p in readable or []]
    try:
        for path, rights, required in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                if required:
                    raise
                continue
            try:
                if rights == READ_RIGHTS and not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights = FILE_READ_RIGHTS
                rule = _PathBeneathAttr(rights, fd)
                _check(libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0),
                       f"landlock_add_rule for {path}")
            finally:
                os.close(fd)
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def restrict_writes(writable_dirs: list[str], writable_files: list[str]) -> None:
    """Landlock on writes only (reads and execution stay allowed)."""
    restrict(writable_dirs, writable_files, None)


# --------------------------------------------------------------------------- seccomp
# A classic-BPF program over `struct seccomp_data` (nr at offset 0, arch at 4, args from 16, each 8
# bytes; the low half of an argument is at +0 on these little-endian machines). Written by hand to
# stay dependency-free; `_assemble` resolves the named jump targets.

_LD_ABS, _JEQ, _JGE, _AND, _RET = 0x20, 0x15, 0x35, 0x54, 0x06
_ALLOW, _ERRNO, _KILL = 0x7FFF0000, 0x00050000, 0x80000000
_X32_BIT = 0x40000000
_ARCHES = {  # machine -> (audit arch, socket, socketpair, add_key, request_key, keyctl)
    "x86_64": (0xC000003E, 41, 53, 248, 249, 250),
    "aarch64": (0xC00000B7, 198, 199, 217, 218, 219),
}
_IO_URING = (425, 426, 427)  # setup, enter, register: the same on every architecture


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _assemble(program: list[tuple]) -> list[tuple[int, int, int, int]]:
    """(code, k[, jump_true_label[, jump_false_label]]) and ("label", name) lines -> BPF tuples."""
    labels, out = {}, []
    for line in program:
        if line[0] == "label":
            labels[line[1]] = len(out)
        else:
            out.append(line)
    code = []
    for i, (op, k, *jumps) in enumerate(out):
        jt, jf = (jumps + [None, None])[:2]
        code.append((op, labels[jt] - i - 1 if jt else 0, labels[jf] - i - 1 if jf else 0, k))
    return code


def seccomp_program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter for this machine (KeyError on an architecture it does not know)."""
    machine = machine or os.uname().machine
    arch, sys_socket, sys_pair, *keyring = _ARCHES[machine]
    deny_nosys = [(_JEQ, nr, "nosys") for nr in (*_IO_URING, *keyring)]
    x32 = [(_JGE, _X32_BIT, "nosys")] if machine == "x86_64" else []
    nonblock_cloexec = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    return _assemble([
        (_LD_ABS, 4), (_JEQ, arch, None, "kill"),  # another ABI (32-bit calls) could dodge the numbers below
        (_LD_ABS, 0), *x32,
        (_JEQ, sys_socket, "socket"), (_JEQ, sys_pair, "pair"), *deny_nosys,
        (_RET, _ALLOW),
        ("label", "socket"), (_LD_ABS, 16),  # domain
        (_JEQ, socket.AF_INET, "allow"), (_JEQ, socket.AF_INET6, "allow"), (_JEQ, socket.AF_NETLINK, "allow"),
        (_RET, _ERRNO | errno.EACCES),
        # a datagram pair could still sendto() any Unix datagram socket by path; a connected stream
        # or seqpacket pair cannot be pointed anywhere else
        ("label", "pair"), (_LD_ABS, 24), (_AND, ~nonblock_cloexec & 0xFFFFFFFF),  # type, less its flags
        (_JEQ, socket.SOCK_STREAM, "allow"), (_JEQ, socket.SOCK_SEQPACKET, "allow"),
        (_RET, _ERRNO | errno.EACCES),
        ("label", "allow"), (_RET, _ALLOW),
        ("label", "nosys"), (_RET, _ERRNO | errno.ENOSYS),
        ("label", "kill"), (_RET, _KILL),
    ])


def install_seccomp() -> None:
    program = seccomp_program()
    array = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    prog = _SockFprog(len(program), array)
    libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp filter")


# --------------------------------------------------------------------------- limits and running


def set_limits(memory_bytes: int | None, cpu_s: int | None, file_bytes: int | None,
               processes: int | None = None) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for which, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_s),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_NPROC, processes)):
        if value is not None:
            resource.setrlimit(which, (value, value))


def _exec_confined(spec: dict, command: list[str]) -> None:
    """Limits, Landlock, seccomp, then exec the command. Returns only by raising."""
    # RLIMIT_NPROC counts per user namespace: inside our own it caps this tree (not root, which
    # the kernel exempts); outside one it would count all the user's processes, so it is not set
    nproc = spec.get("processes") if spec.get("user_namespace") else None
    set_limits(spec.get("memory_bytes"), spec.get("cpu_s"), spec.get("file_bytes"), nproc)
    if spec.get("landlock"):
        restrict(spec["writable_dirs"], spec["writable_files"], spec.get("readable"))
    if spec.get("seccomp"):
        install_seccomp()
    os.chdir(spec["cwd"])
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; `yes | head` should not see EPIPE
    try:
        os.execvpe(command[0], command, spec["env"])
    except FileNotFoundError:
        raise CommandNotFound(command[0]) from None


class CommandNotFound(Exception):
    pass


def _report(err: BaseException, command: list[str]) -> int:
    if isinstance(err, CommandNotFound):
        print(f"sandbox: command not found: {command[0]}", file=sys.stderr)
        return 127
    print(f"sandbox: could not confine or start the command: {err}", file=sys.stderr)
    return 126


def _init(spec: dict, command: list[str], status_fd: int) -> None:
    """PID 1 of the command's namespace: start the command, reap orphans, and exit when the command
    exits, which makes the kernel kill everything else in the namespace. Never returns."""
    code = 126
    try:
        _die_with_parent()
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the supervisor's mask is not the command's
        if spec.get("pid_max"):
            set_pid_max(spec["pid_max"])
        if os.path.isdir("/dev/shm") and private_mounts():
            spec["writable_dirs"] = [*spec["writable_dirs"], "/dev/shm"]
        child = os.fork()
        if child == 0:
            os.close(status_fd)
            try:
                _exec_confined(spec, command)
            except BaseException as err:  # the child must never return into the init's loop
                os._exit(_report(err, command))
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == child:
                os.write(status_fd, struct.pack("i", status))
                code = 0
                break
    except BaseException as err:
        code = _report(err, command)
    os._exit(code)


def _supervise(spec: dict, command: list[str]) -> int:
    """Outside the PID namespace: fork its init, wait for it, and end as the command ended (the
    same exit code, or the same signal). SIGTERM from the sandbox kills the init, hence the whole
    namespace, and this returns only once all of it is gone."""
    status_r, status_w = os.pipe()
    stops = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
    # held back until `stop` is in place: a SIGTERM in between would kill only this process
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    init = os.fork()
    if init == 0:
        os.close(status_r)
        _init(spec, command, status_w)
    os.close(status_w)

    def stop(_signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGKILL)

    for sig in stops:
        signal.signal(sig, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    _, init_status = os.waitpid(init, 0)
    data = os.read(status_r, 4)
    if len(data) != 4:  # the init died before the command ended (killed, or it could not start it)
        return os.waitstatus_to_exitcode(init_status) if os.WIFEXITED(init_status) else 137
    status = struct.unpack("i", data)[0]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)  # the parent sees a command killed by a signal as before
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


def _join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    if spec.get("probe"):
        print(json.dumps(probe()))
        return 0
    command = argv[2:]
    try:
        _die_with_parent()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _join_cgroups(spec.get("cgroup_procs") or [])
        if spec.get("user_namespace"):
            enter_namespaces(network=not spec.get("no_network"), pid=bool(spec.get("pid_namespace")))
        if spec.get("pid_namespace"):
            return _supervise(spec, command)
        _exec_confined(spec, command)
    except (OSError, CommandNotFound) as err:
        return _report(err, command)
    return 126  # not reached: execvpe replaced this process


# --------------------------------------------------------------------------- probe


def _in_child(check) -> bool:
    """Run `check()` in a throwaway child; True if it returned True without raising."""
    pid = os.fork()
    if pid == 0:
        ok = False
        with contextlib.suppress(BaseException):
            ok = bool(check())
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _pid_namespace_holds(cap: int | None) -> bool:
    """Enter a PID namespace and check, from its init, that we are PID 1 and (with `cap`) that
    pid_max can be lowered there."""
    enter_namespaces(network=False, pid=True)
    return _in_child(lambda: os.getpid() == 1 and (cap is None or (set_pid_max(cap) is None)))


def _seccomp_holds() -> bool:
    install_seccomp()
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        return False
    except PermissionError:
        pass
    a, b = socket.socketpair()
    a.close()
    b.close()
    return True


def probe() -> dict:
    """What this kernel lets us apply, each tried in a throwaway child."""
    return {
        "landlock": landlock_abi(),
        "user_namespace": _in_child(lambda: enter_namespaces(network=True, pid=False) is None),
        "network_namespace": _in_child(lambda: enter_namespaces(network=False, pid=False) is None),
        "pid_namespace": _in_child(lambda: _pid_namespace_holds(None)),
        "pid_max": _in_child(lambda: _pid_namespace_holds(PID_MAX_MIN + 99)),
        "seccomp": os.uname().machine in _ARCHES and _in_child(_seccomp_holds),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv))
