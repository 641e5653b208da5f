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
