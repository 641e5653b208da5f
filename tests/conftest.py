"""Shared fixtures: the tiny offline Qwen2-VL checkpoint, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """Path of the tiny Qwen2-VL checkpoint: the shared cache's copy, built there if missing.

    The cache is `$BOXGYM_CACHE` or `~/.cache/boxgym`; the build is atomic, so parallel test
    sessions share one copy.
    """
    from boxgym.models.cache import default_model_path

    return default_model_path()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that loads the tiny model (the `tiny_model_path` fixture, directly or through
    another fixture) is `slow`: loading it and its processor takes seconds, so the
    `pytest -m "not slow"` loop leaves them out."""
    for item in items:
        if "tiny_model_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
