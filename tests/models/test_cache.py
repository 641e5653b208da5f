"""`--model` names what it is given when that is not a checkpoint: a file, a folder without
config.json (an adapter folder says --adapter), a hub id the machine cannot download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from boxgym.errors import UserError
from boxgym.models.cache import resolve_model

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)


def test_files_and_folders_that_are_no_checkpoint(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("a text file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    for name, needle in [
        ("notes.txt", "is a file, not a checkpoint"),
        ("empty", "has no config.json"),
        ("adapter", "pass it as --adapter"),
    ]:
        with pytest.raises(UserError, match=needle):
            resolve_model(tmp_path / name)


@pytest.mark.slow
def test_the_run_verbs_say_so_in_one_line_before_making_anything(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("a text file")
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "notes.txt", "is a file, not a checkpoint"),
        (tmp_path / "empty", "has no config.json"),
        ("someone/no-such-model", "cannot reach the Hugging Face Hub"),
    ]
    for model, needle in cases:
        out = tmp_path / "run"
        done = subprocess.run(
            [sys.executable, "-m", "boxgym.cli", "rollout", "--policy", "hf", "--model", str(model),
             "--n", "1", "--out", str(out), "--no-progress"],
            capture_output=True, text=True, timeout=300, env={**ENV, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
        # the one run that got as far as loading its model can be run again, corrected
        if out.exists():
            assert (
                not (out / "episodes.jsonl").exists() or not (out / "episodes.jsonl").stat().st_size
            )


@pytest.mark.parametrize("name", ["seeing", "marking"])
def test_a_named_model_not_built_says_how_to_build_it(tmp_path, monkeypatch, name) -> None:
    monkeypatch.setenv("BOXGYM_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"boxgym tiny-model --{name}"):
        resolve_model(name)
