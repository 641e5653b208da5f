"""A training's output folder is held while it trains: a second command writing it is refused
in one line, and an output path that is a file is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from boxgym.errors import UserError
from boxgym.locks import RunLock
from boxgym.output_dir import LOCK
from boxgym.train.commands import hold_output_dir

pytestmark = pytest.mark.slow  # subprocesses
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)


def train(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "train", "sft", "--config",
         str(REPO / "configs" / "sft_tiny.yaml"), *map(str, args)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip


def test_a_busy_or_file_output_folder_is_refused(tmp_path) -> None:
    out = tmp_path / "sft"
    lock = RunLock(out, file=LOCK).acquire()
    try:
        done = train("--output-dir", out)
    finally:
        lock.release()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith("error: another boxgym command is writing to"), lines[-1]
    (tmp_path / "file").write_text("mine")
    with (
        pytest.raises(UserError, match=r"trainer\.output_dir .* is a file"),
        hold_output_dir(tmp_path / "file"),
    ):
        pass
    assert (tmp_path / "file").read_text() == "mine"
