"""The run folder keeps what the user made: `--overwrite` deletes only a run's own files, a
folder holding no run is never touched, a killed run's lock is taken over, a task whose image
vanishes is a failed episode and the run resumes, and every count typed is bounded. Each case
runs the real CLI as a subprocess: one line, exit 2, or success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # subprocesses
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)


def boxgym(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the user's data, to compare before and after)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def photos(folder: Path, n: int = 4) -> None:
    """An image folder with metadata, as a user keeps their photos: images/ and metadata.jsonl."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (96, 80), (50 * i, 90, 120)).save(folder / "images" / f"tv_{i}.png")
        rows.append({"file_name": f"images/tv_{i}.png", "count": i + 1, "object": "screens"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_overwrite_never_deletes_the_users_files(tmp_path) -> None:
    photos(tmp_path / "P")
    before = tree(tmp_path / "P")
    for extra in ([], ["--overwrite"], ["--resume"]):  # the tasks' own folder as --out
        done = boxgym("episodes", "--tasks", tmp_path / "P", "--out", tmp_path / "P", *extra)
        one_line_error(done, "holds no boxgym run", "images", "metadata.jsonl")
        assert tree(tmp_path / "P") == before
    # A run folder the user added files to: --overwrite deletes the run, keeps the rest.
    run = tmp_path / "run"
    assert boxgym("episodes", "--n", "2", "--out", run, "--no-progress").returncode == 0
    (run / "notes.txt").write_text("mine")
    Image.new("RGB", (8, 8)).save(run / "images" / "mine.png")
    done = boxgym("episodes", "--n", "3", "--out", run, "--overwrite", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "left what the run did not write: images, notes.txt" in done.stderr
    assert (run / "notes.txt").read_text() == "mine" and (run / "images" / "mine.png").is_file()
    assert (run / "episodes.jsonl").read_text().count("\n") == 3


def test_out_that_is_a_file_and_bounded_counts_create_nothing(tmp_path) -> None:
    (tmp_path / "file").write_text("mine")
    one_line_error(boxgym("episodes", "--out", tmp_path / "file"), "is a file")
    assert (tmp_path / "file").read_text() == "mine"
    cases = [
        (["--shard", "5/99999999999999999999999"], "use at most 3 shards"),
        (["--shard", "50/100"], "use at most 3 shards"),
        (["--group-size", "10000000"], "--group-size must be between 1 and"),
        (["--workers", "0"], "--workers must be between 1 and"),
        (["--max-live", "-5"], "--max-live must be between 1 and"),
    ]
    for extra, needle in cases:
        out = tmp_path / "never"
        done = boxgym("episodes", "--n", "3", "--out", out, *extra, timeout=60)
        one_line_error(done, needle)
        assert not out.exists()
    one_line_error(
        boxgym("episodes", "--n", "100000000000", "--out", tmp_path / "x"), "--n must be between"
    )
    assert not (tmp_path / "x").exists()


def test_a_run_that_stored_nothing_starts_again_with_the_corrected_command(tmp_path) -> None:
    out = tmp_path / "run"
    failed = boxgym(
        "rollout", "--policy", "openai", "--base-url", "http://127.0.0.1:9/v1", "--n", "1",
        "--max-retries", "0", "--timeout", "2", "--out", out, "--no-progress",
    )  # fmt: skip
    one_line_error(failed, "0/4 episodes")
    assert (out / "run.json").is_file()
    done = boxgym("rollout", "--policy", "oracle", "--n", "1", "--out", out, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "stored no episode yet" in done.stderr


def test_a_dead_holders_lock_is_taken_over_with_a_message(tmp_path) -> None:
    out = tmp_path / "run"
    assert boxgym("episodes", "--n", "2", "--out", out, "--no-progress").returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "run.lock").write_text(f"{dead.pid}\n")  # what a killed run leaves
    done = boxgym("episodes", "--n", "2", "--out", out, "--resume", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"took over {out / 'run.lock'} from process {dead.pid}" in done.stderr
    assert (out / "run.lock").read_text() == ""  # a clean end clears the holder's id
    # A run killed while writing run.json leaves its temporary file: the folder is still empty.
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / ".run.json.tmp").write_text('{"poli')
    (torn / "run.lock").write_text(f"{dead.pid}\n")
    done = boxgym("episodes", "--n", "2", "--out", torn, "--no-progress")
    assert done.returncode == 0, done.stderr


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {count} lines")


def test_an_image_that_vanishes_is_a_failed_episode_and_the_run_resumes(tmp_path) -> None:
    photos(tmp_path / "P", n=5)
    out = tmp_path / "run"
    argv = ["episodes", "--tasks", tmp_path / "P", "--out", out, "--max-live", "1", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "boxgym.cli", *map(str, argv), "--policy-delay", "0.3"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(out / "episodes.jsonl", 1, proc)
    (tmp_path / "P" / "images" / "tv_3.png").unlink()  # gone mid-run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 5
    failed = [r for r in records if r["failure"] == "task_error"]
    assert [r["key"]["task_id"] for r in failed] == ["images/tv_3"]
    assert "tv_3" in failed[0]["error"] and "could not be read" in failed[0]["error"]
    # The task list is the run's: with another image gone, --resume is accepted and adds nothing.
    (tmp_path / "P" / "images" / "tv_4.png").unlink()
    done = boxgym(*argv, "--resume")
    assert done.returncode == 0, done.stderr
    assert "0 episode(s) this session, 5/5 stored" in done.stdout
    # A run killed before a task's image vanished finishes the rest on --resume.
    photos(tmp_path / "Q", n=5)
    again = tmp_path / "again"
    argv = ["episodes", "--tasks", tmp_path / "Q", "--out", again, "--max-live", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "boxgym.cli", *map(str, argv), "--policy-delay", "0.3"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_lines(again / "episodes.jsonl", 1, proc)
    proc.kill()
    proc.wait()
    (tmp_path / "Q" / "images" / "tv_4.png").unlink()
    done = boxgym("episodes", "--tasks", tmp_path / "Q", "--out", again, "--resume")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (again / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 5
    assert [r["key"]["task_id"] for r in records if r["failure"] == "task_error"] == ["images/tv_4"]
