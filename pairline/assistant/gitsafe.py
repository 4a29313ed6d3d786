"""Every git call pairline makes, through one helper that runs nothing the repository chose.

The repository's files are the model's to change (the agent runs commands in it), and pairline's own
git runs outside the sandbox with the user's rights. So `run_git`:
- first puts `.git/config`, hooks and `info/` back as they were (`GitGuard`), where a guard watches
  this repository (the agent's run); a `.git` that was replaced stops it (`GitTampered`);
- runs no hooks and no fsmonitor (`core.hooksPath=/dev/null`, `core.fsmonitor=false`), ignores the
  global attributes file, signs nothing (no gpg program), never auto-gc's in the background, and
  allows no transport;
- switches off every filter, diff and merge driver that any config file defines (a `.gitattributes`
  can only name a driver some config defines): their commands are set empty right before the call,
  from the config as it is then, so `git add` and `git status` run no `clean` filter, `revert` no merge
  driver; and diff-like commands get `--no-ext-diff --no-textconv`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import weakref
from pathlib import Path

from pairline.errors import PairlineError

HARDENING = (
    "-c", f"core.hooksPath={os.devnull}", "-c", "core.fsmonitor=false", "-c", f"core.attributesFile={os.devnull}",
    "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false", "-c", "log.showSignature=false",
    "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.pager=cat", "-c", "protocol.allow=never",
    "-c", "credential.helper=",
)
# what runs a command, per driver kind; "" switches it off (an empty filter is no filter, and with
# `required` off git does not fail for lack of one; an empty merge driver makes the merge fail)
_DRIVER_OFF = {
    "filter": (("clean", ""), ("smudge", ""), ("process", ""), ("required", "false")),
    "diff": (("textconv", ""), ("command", "")),
    "merge": (("driver", ""),),
}
_DIFF_LIKE = {"diff", "log", "show"}
_guards: weakref.WeakValueDictionary[str, GitGuard] = weakref.WeakValueDictionary()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_EXTERNAL_DIFF", "GIT_ASKPASS", "SSH_ASKPASS")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ATTR_NOSYSTEM="1", GIT_PAGER="cat")
    return env


def driver_overrides(root: Path, timeout: float = 30) -> list[str]:
    """`-c` options that empty every filter/diff/merge driver the config defines right now."""
    try:
        proc = subprocess.run(["git", *HARDENING, "config", "--list", "--name-only", "-z"], cwd=root,
                              capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=_env())
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PairlineError(f"git config failed: {err}") from None
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:]
        raise PairlineError(f"git cannot read this repository's config: {last[0] if last else proc.returncode}")
    drivers = set()
    for key in proc.stdout.split("\0"):
        section, _, rest = key.partition(".")
        name, _, _var = rest.rpartition(".")
        if section.lower() in _DRIVER_OFF and name:
            drivers.add((section.lower(), name))
    out: list[str] = []
    for section, name in sorted(drivers):
        if "=" in name or any(ord(c) < 32 for c in name):  # cannot be named on a command line: refuse
            raise PairlineError(f"the git config defines a {section} driver named {name!r}, which pairline "
                                "cannot switch off; not running git")
        for var, value in _DRIVER_OFF[section]:
            out += ["-c", f"{section}.{name}.{var}={value}"]
    return out


def _with_no_ext_diff(args: tuple[str, ...]) -> list[str]:
    out = list(args)
    i = 0
    while i < len(out) - 1 and out[i] == "-c":  # skip the caller's own -c pairs
        i += 2
    if i < len(out) and out[i] in _DIFF_LIKE:
        out[i + 1:i + 1] = ["--no-ext-diff", "--no-textconv"]
    return out


def run_git(root: Path, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """git in `root`, the one way pairline runs it; output decoded as UTF-8 (odd bytes replaced).
    Raises GitTampered if a guard finds `.git` replaced, PairlineError if git fails and `check`."""
    guard = _guards.get(str(root))
    if guard is not None:
        guard.restore()
    argv = ["git", *HARDENING, *driver_overrides(root, timeout), *_with_no_ext_diff(args)]
    try:
        proc = subprocess.run(argv, cwd=root, capture_output=True, encoding="utf-8", errors="replace",
                              timeout=timeout, env=_env())
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PairlineError(f"git {args[0]} failed: {err}") from None
    if check and proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise PairlineError(f"git {args[0]} failed: {last[0] if last else f'exit {proc.returncode}'}")
    return proc


def git_toplevel(start: Path) -> Path | None:
    if shutil.which("git") is None:
        return None
    try:
        proc = run_git(start, "rev-parse", "--show-toplevel", check=False, timeout=10)
    except PairlineError:
        return None
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 and proc.stdout.strip() else None


def git_output(root: Path, *args: str, check: bool = True) -> str:
    """git's output, or "" where it failed and `check` is off."""
    proc = run_git(root, *args, check=check, timeout=60)
    return proc.stdout if proc.returncode == 0 else ""


def git_head(root: Path) -> str | None:
    return git_output(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip() or None


def git_status(root: Path) -> set[str]:
    out = git_output(root, "status", "--porcelain", "-z", "--untracked-files=all", check=False)
    return {entry[3:] for entry in out.split("\0") if len(entry) > 3}


def git_is_ancestor(root: Path, ancestor: str, commit: str) -> bool:
    """Whether `ancestor` is in `commit`'s history (False too where git cannot tell)."""
    return run_git(root, "merge-base", "--is-ancestor", ancestor, commit, check=False).returncode == 0


# --------------------------------------------------------------------------- the guard


def protect(root: Path) -> GitGuard:
    """A guard over `root`'s git files, taken now; every `run_git` in `root` restores them first,
    for as long as the returned guard is kept."""
    guard = GitGuard(root)
    _guards[str(root)] = guard
    return guard


class GitGuard:
    """What git reads on its own: `.git/config` (fsmonitor, filters, hooksPath, includes), hooks and
    `info/` (attributes). A sandboxed command may write inside `.git` (the sandbox cannot carve it out
    of the writable repository), so these are compared with the snapshot taken at the start and put
    back: after each command, and right before each git call pairline makes. A `.git` that stopped
    being the same folder stops the run."""

    WATCHED = ("config", "config.worktree", "commondir", "hooks", "info")

    def __init__(self, root: Path):
        self.git = root / ".git"
        self.snapshot = self._take()

    def _kind(self) -> str:
        if self.git.is_symlink():
            return "link:" + os.readlink(self.git)
        if self.git.is_dir():
            return f"dir:{self.git.stat().st_ino}"
        if self.git.is_file():
            return "file:" + hashlib.sha256(self.git.read_bytes()).hexdigest()
        return "missing"

    def _entry(self, p: Path) -> tuple[int, bytes] | str:
        return ("link:" + os.readlink(p)) if p.is_symlink() else (p.stat().st_mode & 0o7777, p.read_bytes())

    def _take(self) -> dict[str, tuple[int, bytes] | str]:
        snap: dict[str, tuple[int, bytes] | str] = {"": self._kind()}
        if not snap[""].startswith("dir:"):
            return snap
        for name in self.WATCHED:
            p = self.git / name
            if p.is_symlink() or p.is_file():
                snap[name] = self._entry(p)
            elif p.is_dir():
                for dirpath, dirs, files in os.walk(p):
                    for f in files + [d for d in dirs if (Path(dirpath) / d).is_symlink()]:
                        q = Path(dirpath) / f
                        snap[q.relative_to(self.git).as_posix()] = self._entry(q)
        return snap

    def restore(self) -> list[str]:
        """Put the watched files back; the paths that had changed. Raises GitTampered if `.git`
        itself was replaced (nothing sensible to put back: the run must stop)."""
        now = self._take()
        if now[""] != self.snapshot[""]:
            raise GitTampered(".git was replaced by a command; the agent stopped before running git again")
        changed = sorted(k for k in set(now) | set(self.snapshot) if k and now.get(k) != self.snapshot.get(k))
        for rel in changed:
            self._put_back(rel, self.snapshot.get(rel))
        return [f".git/{c}" for c in changed]

    def _put_back(self, rel: str, want: tuple[int, bytes] | str | None) -> None:
        p = self.git / rel
        self._no_links_above(p)  # never write or delete through a folder a command made a symlink
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
        if want is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(want, str):
            os.symlink(want.removeprefix("link:"), p)
        else:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, want[0])
            with os.fdopen(fd, "wb") as f:
                f.write(want[1])
            os.chmod(p, want[0])

    def _no_links_above(self, p: Path) -> None:
        for parent in reversed(p.relative_to(self.git).parents[:-1]):  # .git/hooks, then .git/hooks/sub, ...
            q = self.git / parent
            if q.is_symlink() or (q.exists() and not q.is_dir()):
                with contextlib.suppress(FileNotFoundError):
                    q.unlink()


class GitTampered(PairlineError):
    """A command replaced `.git`: the run stops before git runs again."""
