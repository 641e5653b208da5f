"""`boxgym study` keeps what the user made: a setting refused while measuring leaves no --out,
a folder holding anything but an earlier study is refused untouched, an earlier study is
replaced only with --overwrite (only its files), and --debug shows the traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)


def study(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "study", *map(str, args)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip


def one_line(done: subprocess.CompletedProcess, needle: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_a_setting_refused_while_measuring_leaves_no_folder(tmp_path) -> None:
    out = tmp_path / "out"
    one_line(study("patch-grid", "--quick", "--set", "grids=[bogus]", "--out", out), "grids")
    assert not out.exists()
    done = study("patch-grid", "--quick", "--set", "grids=[bogus]", "--out", out, "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr and "grids" in done.stderr
    done = study("rotation", "--set", "angels=[1]", "--out", out, "--debug")
    assert "Traceback" in done.stderr and "unknown setting 'angels'" in done.stderr
    assert not out.exists()


def test_an_existing_out_is_refused_unless_it_is_an_earlier_study(tmp_path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text("my results")
    for extra in ([], ["--overwrite"]):
        one_line(study("rotation", "--quick", "--out", mine, *extra), "files boxgym did not write")
    assert [p.name for p in mine.iterdir()] == ["results.json"]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / ".boxgym.json").write_text(json.dumps({"verb": "study", "files": ["results.json"]}))
    (earlier / "results.json").write_text("old")
    (earlier / "notes.txt").write_text("mine")
    one_line(study("rotation", "--quick", "--out", earlier), "--overwrite")
    done = study("rotation", "--quick", "--set", "n=2", "--out", earlier, "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((earlier / "results.json").read_text())["study"] == "rotation"
    assert (earlier / "notes.txt").read_text() == "mine"
