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
    `pytest -m "not slow"` loop leaves them out. Tests marked `vllm` need the real engine:
    skipped where vLLM is not importable (they run in .venv-vllm, `make test-vllm`), unless
    BOXGYM_REQUIRE_VLLM=1 makes that a failure."""
    import os
    import sys

    from vllm_engine import REQUIRE_VARIABLE, SKIP_REASON, vllm_importable

    for item in items:
        if "tiny_model_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if vllm_importable():
        return
    marked = [item for item in items if item.get_closest_marker("vllm") is not None]
    if marked and os.environ.get(REQUIRE_VARIABLE) == "1":
        raise pytest.UsageError(f"{REQUIRE_VARIABLE}=1 but {sys.executable} cannot import vllm")
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def vllm_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real `vllm serve` of the tiny checkpoint for the whole session (named "tiny"),
    stopped at the end; its log is `log` beside it."""
    from vllm_engine import VLLMServer

    server = VLLMServer(tiny_model_path, tmp_path_factory.mktemp("vllm-serve") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
