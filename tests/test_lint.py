"""The tree stays ruff-clean (the project's style gate runs with the tests)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    res = subprocess.run([ruff, "check", str(ROOT / "pairline"), str(ROOT / "tests")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
