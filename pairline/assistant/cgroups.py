"""One cgroup per sandboxed command, where this process may make one.

It caps the number of processes (`pids.max`) and the memory of the whole command tree (`memory.max`,
or `memory.limit_in_bytes` on cgroup v1), and kills everything in it at the end (`cgroup.kill`, or one
by one). Making a cgroup needs write access to our own cgroup: root, or a delegated subtree (systemd
`Delegate=`). On cgroup v2 the controllers must already be enabled for our cgroup's children; this
module never enables them, and never moves any process but the command's launcher. Where none of that
is possible, `create` returns None and the sandbox says the limit is missing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class _Mount:
    point: Path
    root: str  # the part of the hierarchy this mount shows (not "/" in some containers)
    version: int
    controllers: frozenset[str]


def _mounts() -> list[_Mount]:
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        options = set(rfields[2].split(","))
        version = 2 if rfields[0] == "cgroup2" else 1
        point = Path(fields[4].replace("\\040", " "))
        if version == 2:
            try:
                options = set((point / "cgroup.controllers").read_text().split())
            except OSError:
                continue
        out.append(_Mount(point, fields[3], version, frozenset(options)))
    return out


def _own_paths() -> dict[str, str]:
    """Our cgroup per hierarchy: "" for v2, else each v1 controller's name."""
    out: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _under(mount: _Mount, path: str) -> Path | None:
    if not (path + "/").startswith(mount.root.rstrip("/") + "/"):
        return None  # our cgroup is not visible in this mount
    return mount.point / path[len(mount.root.rstrip("/")):].lstrip("/")


def _parents(want: tuple[str, ...]) -> tuple[int, dict[str, Path]] | None:
    """Where to make a child cgroup with the controllers in `want`: (version, controller -> folder)."""
    mounts, own = _mounts(), _own_paths()
    for m in mounts:  # v2 first: one folder for all, and cgroup.kill
        if m.version == 2 and "" in own:
            base = _under(m, own[""])
            enabled = _read(base / "cgroup.subtree_control").split() if base else []
            if base is not None and all(c in enabled for c in want):
                return 2, dict.fromkeys(want, base)
    found: dict[str, Path] = {}
    for c in want:
        for m in mounts:
            if m.version == 1 and c in m.controllers and c in own:
                base = _under(m, own[c])
                if base is not None:
                    found[c] = base
                    break
    return (1, found) if found else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass
class CommandGroup:
    version: int
    dirs: dict[str, Path]  # controller -> the command's cgroup folder (v2: the same folder for all)

    def procs_files(self) -> list[str]:
        """The files the launcher writes its pid to, joining the group before it starts anything."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def kill(self) -> None:
        """SIGKILL everything still in the group."""
        folders = sorted(set(self.dirs.values()))
        for d in folders:
            if self.version == 2 and (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
        for _ in range(100):  # v1, or a kernel without cgroup.kill: one by one, until none is left
            pids = {int(p) for d in folders for p in _read(d / "cgroup.procs").split()}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        """Kill what is left and remove the group's folders (a few tries: exiting processes let go late)."""
        self.kill()
        for d in sorted(set(self.dirs.values())):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def create(processes: int | None, memory_bytes: int | None) -> CommandGroup | None:
    """A new cgroup with these limits, or None where this process cannot make one. Limits it cannot
    set are left out: `supported()` says which ones hold."""
    want = tuple(c for c, v in (("pids", processes), ("memory", memory_bytes)) if v is not None)
    where = _parents(want) if want else None
    if where is None:
        return None
    version, parents = where
    name = f"pairline-{os.getpid()}-{next(_counter)}"
    group = CommandGroup(version, {})
    try:
        for controller, parent in parents.items():
            folder = parent / name
            if folder not in group.dirs.values():
                folder.mkdir()
            group.dirs[controller] = folder
            _set_limit(version, controller, folder, processes if controller == "pids" else memory_bytes)
    except OSError:
        group.remove()
        return None
    return group


def _set_limit(version: int, controller: str, folder: Path, value: int | None) -> None:
    if controller == "pids":
        (folder / "pids.max").write_text(str(value))
    elif version == 2:
        (folder / "memory.max").write_text(str(value))
        with contextlib.suppress(OSError):  # no swap either, or the limit only moves the excess to swap
            (folder / "memory.swap.max").write_text("0")
    else:
        (folder / "memory.limit_in_bytes").write_text(str(value))
        with contextlib.suppress(OSError):  # exists only with swap accounting
            (folder / "memory.memsw.limit_in_bytes").write_text(str(value))


@functools.cache
def supported() -> frozenset[str]:
    """The controllers ("pids", "memory") a command's cgroup gets here, tried once per process."""
    found = set()
    for controller in ("pids", "memory"):
        group = create(**{"processes": 64 if controller == "pids" else None,
                          "memory_bytes": 1 << 30 if controller == "memory" else None})
        if group is not None:
            found.add(controller)
            group.remove()
    return frozenset(found)
