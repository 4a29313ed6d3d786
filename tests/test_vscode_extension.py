"""The VS Code extension (editors/vscode): its TypeScript builds, its node tests pass (the session
protocol client against a fake server and against a real `pairline serve` on SmolLM2-135M; the
extension itself, under a stub `vscode` module, against a fake and the real `pairline lsp`), and it
packages into a .vsix that VS Code can install. Needs Node.js >= 20 and npm; skipped without them.
CI installs node_modules ahead (.ci/run); here `npm ci` runs only when they are missing or stale."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.serve_helpers import serve_process

EXT = Path(__file__).resolve().parents[1] / "editors" / "vscode"


def run(cmd: list[str], timeout: float, env: dict | None = None) -> str:
    """Run `cmd` in editors/vscode; fail the test with its output if it fails or runs too long."""
    try:
        res = subprocess.run(cmd, cwd=EXT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
        pytest.fail(f"{' '.join(cmd)} ran over {timeout} s:\n{out[-4000:]}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{out[-6000:]}"
    return out


def summary(out: str) -> dict[str, int]:
    """node --test's closing counts, from the TAP reporter (`# pass 3`) or the spec one (`ℹ pass 3`)."""
    counts = {k: int(v) for k, v in re.findall(r"^\s*(?:#|ℹ)\s*(tests|pass|fail|skipped|cancelled)\s+(\d+)\s*$",
                                                  out, re.M)}
    assert "tests" in counts and "fail" in counts, f"no test summary in node's output:\n{out[-4000:]}"
    return counts


def node_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PAIRLINE_TEST_SERVER", "PAIRLINE_TEST_LSP")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def npm() -> str:
    """npm, with node_modules installed and the TypeScript built (out/)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the VS Code extension (editors/vscode) is NOT tested: node and npm are not on PATH "
                    "(Node.js >= 20 is needed to build and test it)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"the VS Code extension (editors/vscode) is NOT tested: node {version} is too old (needs >= 20)")
    lock = EXT / "package-lock.json"
    # npm writes node_modules/.package-lock.json on every install: older than the lock = stale
    installed = EXT / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        run([npm, "ci", "--no-audit", "--no-fund"], timeout=600)
    run([npm, "run", "build"], timeout=180)
    return npm


def test_node_tests_pass(npm):
    out = run([npm, "test"], timeout=120, env=node_env())
    counts = summary(out)
    assert counts["tests"] > 0 and counts["fail"] == 0 and counts.get("cancelled", 0) == 0, out[-4000:]
    assert counts["pass"] >= 30, counts  # every suite ran: protocol client, extension, chat panel, settings, page
    assert counts.get("skipped", 0) == 3, counts  # only the real-server tests, without a server
    assert "PAIRLINE_TEST_SERVER is not set" in out and "PAIRLINE_TEST_LSP is not set" in out  # and they say why


@pytest.mark.slow
def test_node_tests_against_a_real_server(npm, smollm2_gguf):
    """The whole node suite with a real server: the session tests talk to it, and the extension starts
    the real `pairline lsp --server` on it (no second model load)."""
    with serve_process(str(smollm2_gguf), 1024, PAIRLINE_API_KEY="") as (_, port):  # no key: node sends none
        env = node_env(PAIRLINE_TEST_SERVER=f"http://127.0.0.1:{port}", PAIRLINE_TEST_LSP_MODEL="smollm2-135m",
                       PAIRLINE_TEST_LSP=f'"{sys.executable}" -m pairline.cli')
        out = run([npm, "test"], timeout=240, env=env)
        counts = summary(out)
        assert counts["fail"] == 0 and counts.get("skipped", 0) == 0 and counts["pass"] == counts["tests"], out[-4000:]
        for name in ("real server: a draft, then one turn streams text and completes",
                     "real server: a cancel stops the turn, a steer continues it",
                     "real language server: inline suggestion, then Edit selection applies the server's edit"):
            assert re.search(rf"^ok \d+ - {re.escape(name)}$", out, re.M), f"{name!r} did not pass:\n{out[-4000:]}"


def test_vsix_packages(npm):
    for old in EXT.glob("*.vsix"):
        old.unlink()
    run([npm, "run", "package"], timeout=240)
    version = json.loads((EXT / "package.json").read_text())["version"]
    vsix = EXT / f"pairline-vscode-{version}.vsix"
    assert vsix.exists(), sorted(p.name for p in EXT.iterdir())
    with zipfile.ZipFile(vsix) as z:
        names = set(z.namelist())
    assert {"extension/package.json", "extension/out/extension.js", "extension/out/session.js",
            "extension.vsixmanifest"} <= names
    # runtime dependencies ride along (there is no bundler); tests and sources stay out
    assert any(n.startswith("extension/node_modules/vscode-languageclient/") for n in names)
    assert any(n.startswith("extension/node_modules/ws/") for n in names)
    assert not any(n.startswith(("extension/src/", "extension/out/test")) for n in names), sorted(names)
    assert not any("node_modules/typescript/" in n or "node_modules/@vscode/vsce/" in n for n in names)
