"""Issue 22: each row that did not hold, tried again as the attacker would, with the real sandbox.

No mock of the kernel: where this kernel lacks a protection the test skips and says which. Each test
is bounded (a fork loop that would make 10,000 processes, a few tens of MiB of memory) and quick.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from pairline.assistant import cgroups
from pairline.assistant.agent_tools import Tools
from pairline.assistant.gitsafe import git_status
from pairline.assistant.sandbox import Limits, Sandbox, available_protections
from pairline.assistant.workspace import Workspace, read_text_file
from tests.assistant_helpers import git, git_repo


def need(*protections: str) -> None:
    missing = [p for p in protections if p not in available_protections()]
    if missing:
        pytest.skip(f"THIS KERNEL LACKS {', '.join(missing)}: the attack is not tried here "
                    f"(kernel {os.uname().release}; protections: {', '.join(available_protections())})")


def _alive(marker: str) -> list[int]:
    """PIDs whose command line holds `marker` (zombies have none: they are gone for good)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


@pytest.fixture
def repo(tmp_path):
    return git_repo(tmp_path, {"a.txt": b"one\n"})


@pytest.fixture
def box(repo):
    return Sandbox(repo, Limits(timeout_s=5, output_bytes=4000))


# --------------------------------------------------------------------------- row 1


def test_row1_setsid_script_planting_a_git_filter_does_not_escape(repo, tmp_path):
    # A command leaves `setsid sh p.sh &` behind and returns; the script waits, then plants a clean
    # filter in .git/config and `* filter=x` in .gitattributes. The agent then makes one edit
    # (pairline's own, unsandboxed `git add` and `commit`) and ends with `git status`.
    if "pid-namespace" not in available_protections() and not cgroups.supported():
        need("pid-namespace")
    pwned = tmp_path / "pwned-by-filter"
    late = repo / "late-writer-ran"
    (repo / "p.sh").write_text(
        "sleep 0.4\n"
        f"git config filter.x.clean 'sh -c \"touch {pwned}; cat\"'\n"
        "git config filter.x.required true\n"
        "echo '* filter=x' > .gitattributes\n"
        f"touch {late}\n")
    ws = Workspace(repo, git=True)
    tools = Tools(ws, Sandbox(repo, Limits(timeout_s=5)), "true", cmd_timeout=5)
    r = tools.run("setsid sh p.sh >/dev/null 2>&1 &", timeout=5)
    assert r.ok, r.observation
    time.sleep(1.0)  # well past the script's wait: had it survived, it would have written by now
    assert not late.exists(), "the background script outlived the command"
    _, fp = read_text_file(repo / "a.txt")
    entry = ws.apply([(repo / "a.txt", "two\n", fp)], "edit")
    git_status(repo)  # the end-of-run status
    assert not pwned.exists()
    assert entry.commit and git(repo, "show", "HEAD:a.txt") == "two\n"


# --------------------------------------------------------------------------- row 2


@pytest.mark.parametrize("timeout", [False, True], ids=["command-returns", "command-times-out"])
def test_row2_setsid_processes_do_not_outlive_the_command(box, timeout):
    if "pid-namespace" not in available_protections() and not cgroups.supported():
        need("pid-namespace")
    marker = "pairline-leftover-" + secrets.token_hex(6)
    nap = f"1000.{secrets.randbelow(10**6):06d}"  # a `sleep 1000` that is recognisably this test's
    # a setsid'd daemon that also forks and setsid's again: three ways to leave the process group
    daemon = f"setsid python -c 'import os, time; os.fork(); os.setsid(); time.sleep(1000)' {marker}"
    command = f"{daemon} >/dev/null 2>&1 & setsid sleep {nap} & " + ("sleep 60" if timeout else "echo started")
    r = box.run(command, timeout_s=1.0 if timeout else 5)
    assert r.timed_out == timeout, r.output
    assert _alive(marker) == [] and _alive(nap) == [], "processes started by the command are still running"


# --------------------------------------------------------------------------- row 3


def test_row3_no_unix_socket_connects_outside(box, tmp_path):
    need("no-unix-sockets")
    outside = tmp_path / "run"
    outside.mkdir()
    path = outside / "agent.sock"  # as ssh-agent's, the D-Bus session bus or docker.sock would be
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(0.1)
    accepted, done = [], threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(1)
            accepted.append(conn.recv(100))
            conn.close()

    t = threading.Thread(target=accept)
    t.start()
    code = (
        "import socket\n"
        "try:\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"    s.connect({str(path)!r}); s.sendall(b'hello from the sandbox'); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('unix socket refused', e.errno)\n"
        "a, b = socket.socketpair(); a.sendall(b'p'); print('socketpair ok', b.recv(1))\n"
        "try:\n"
        "    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); print('DGRAM PAIR')\n"
        "except OSError as e:\n"
        "    print('dgram pair refused', e.errno)\n"
    )
    r = box.run([sys.executable, "-c", code])
    done.set()
    t.join()
    server.close()
    assert "CONNECTED" not in r.output and accepted == [], r.output
    assert "unix socket refused 13" in r.output  # EACCES, from socket() itself
    assert "socketpair ok b'p'" in r.output and "dgram pair refused 13" in r.output


# --------------------------------------------------------------------------- row 4


def test_row4_no_reads_outside_the_repository(box, repo, tmp_path, monkeypatch):
    need("no-reads-outside")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE-KEY-" + secrets.token_hex(8))
    (home / "notes.txt").write_text("HOME-NOTES")
    monkeypatch.setenv("HOME", str(home))
    secret = tmp_path / "secret.txt"
    secret.write_text("TMP-SECRET-" + secrets.token_hex(8))
    (repo / "inside.txt").write_text("INSIDE-OK")
    shadow = ""
    if os.access("/etc/shadow", os.R_OK):  # root: only Landlock stands in the way
        shadow = Path("/etc/shadow").read_text().splitlines()[0]
    r = box.run(f"cat {secret}; cat {home}/.ssh/id_ed25519; ls -a {home}/.ssh; cat {home}/notes.txt; "
                "cat /etc/shadow; cat inside.txt; echo; head -c 4 /etc/passwd; echo; python -c 'print(42)'")
    out = r.output
    assert "TMP-SECRET" not in out and "PRIVATE-KEY" not in out and "HOME-NOTES" not in out, out
    assert "id_ed25519" not in out.split()  # the folder was not listed either
    if shadow:
        assert shadow not in out
    assert "/etc/shadow: Permission denied" in out
    # what a command needs still works: the repository, /etc/passwd, the toolchain
    assert "INSIDE-OK" in out and "root" in out and "42" in out


def test_row4_toolchain_in_a_home_dot_directory_is_readable_its_neighbours_are_not(box, tmp_path, monkeypatch):
    need("no-reads-outside")
    home = tmp_path / "home"
    prefix = home / ".pyenv" / "versions" / "9.9"
    prefix.mkdir(parents=True)
    (prefix / "stdlib.txt").write_text("TOOLCHAIN-OK")
    (home / ".pyenv" / "token.txt").write_text("DOT-DIR-SECRET")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sys, "base_prefix", str(prefix))  # as a pyenv install would have it
    r = box.run(f"cat {prefix}/stdlib.txt; cat {home}/.pyenv/token.txt; ls {home}")
    assert "TOOLCHAIN-OK" in r.output and "DOT-DIR-SECRET" not in r.output, r.output


# --------------------------------------------------------------------------- row 5

FORK_LOOP = """
import os, time
n = 0
for _ in range(10000):
    try:
        pid = os.fork()
    except OSError as e:
        print("stopped after", n, "errno", e.errno)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
else:
    print("stopped after", n, "NOT STOPPED")
"""


def test_row5_fork_loop_is_capped_root_included(repo):
    need("process-limit")
    box = Sandbox(repo, Limits(timeout_s=20, processes=40))
    t0 = time.perf_counter()
    r = box.run([sys.executable, "-c", FORK_LOOP], timeout_s=20)
    made = int(r.output.split("stopped after")[1].split()[0])
    assert "NOT STOPPED" not in r.output, r.output
    # pids.max (cgroup) caps at the limit; pid_max in the PID namespace has a floor of 301
    cap = 40 if "pids" in cgroups.supported() else 301
    assert made <= cap, r.output
    assert time.perf_counter() - t0 < 10


MEMORY_HOGS = """
import os, time
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = bytearray(b"x") * (48 << 20)  # 48 MiB, every page touched
        time.sleep(1)
        print("held", len(block) >> 20, flush=True)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
"""


def test_row5_memory_is_capped_for_the_whole_tree(repo):
    need("memory-limit")
    # 4 x 48 MiB, each under the per-process limit; the tree's limit is 96 MiB
    box = Sandbox(repo, Limits(timeout_s=15, memory_bytes=1 << 30, tree_memory_bytes=96 << 20))
    r = box.run([sys.executable, "-c", MEMORY_HOGS], timeout_s=15)
    assert r.output.count("held 48") < 4, r.output


# --------------------------------------------------------------------------- the namespace's own view


def test_the_command_sees_only_its_own_processes_and_shared_memory(box):
    need("pid-namespace")
    code = ("import json, os, multiprocessing\n"
            "print('pids', json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))\n"
            "with multiprocessing.Pool(2) as pool: print('pool', pool.map(abs, [-1, -2]))\n")
    r = box.run([sys.executable, "-c", code])
    pids = json.loads(r.output.split("pids", 1)[1].splitlines()[0])
    if os.getpid() in pids:
        pytest.skip("THIS KERNEL (or container) REFUSED A NEW /proc for the sandbox: host processes stay listed")
    # the namespace's own init and command, a handful of pids; the host's processes (this test's among
    # them, in the thousands here) are not there. (Not "our parent is absent": under nohup or a container
    # the parent is pid 1, which is the sandbox's init too.)
    assert max(pids) < 50 and len(pids) < 10, r.output
    assert "pool [1, 2]" in r.output, r.output  # POSIX semaphores on the private /dev/shm
