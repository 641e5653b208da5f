"""One tiny-model Lab shared by the study tests (the model loads once)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lab(tiny_model_path):
    from boxgym.studies.lab import Lab

    return Lab(model=str(tiny_model_path), device="cpu", dtype="float32", batch_size=8)
