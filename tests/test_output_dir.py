"""One output per folder, for every verb that writes one: `scenes` and `data gallery` never
write into a run folder or a folder of the user's, replace their own earlier output only with
`--overwrite` (deleting only the files it listed), are refused while another command writes
the folder, and a gallery gives every task its own files. Subprocesses: one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from boxgym.locks import RunLock
from boxgym.output_dir import LOCK, MANIFEST

pytestmark = pytest.mark.slow  # subprocesses
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)


def boxgym(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", *map(str, args)],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip


def refused(done: subprocess.CompletedProcess, *needles: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(("error: ", "boxgym data ")), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def user_tasks(folder: Path, ids: list[str]) -> Path:
    folder.mkdir()
    rows = []
    for i, task_id in enumerate(ids):
        Image.new("RGB", (64, 48), (60 * i, 30, 90)).save(folder / f"p{i}.png")
        rows.append({"file_name": f"p{i}.png", "id": task_id, "count": i + 1})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_scenes_and_gallery_never_write_into_a_run_or_the_users_folder(tmp_path) -> None:
    run = tmp_path / "run"
    assert boxgym("episodes", "--n", "2", "--out", run, "--no-progress").returncode == 0
    tasks = user_tasks(tmp_path / "tasks", ["t0", "t1"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my page")
    for folder in (run, mine):
        before = tree(folder)
        for extra in ([], ["--overwrite"]):
            refused(boxgym("scenes", "--n", "1", "--out", folder, *extra), "scenes")
            done = boxgym("data", "gallery", "--tasks", tasks, "--out", folder, *extra)
            refused(done, "data gallery")
        assert tree(folder) == before


def test_overwrite_replaces_only_the_verbs_own_files(tmp_path) -> None:
    out = tmp_path / "scenes"
    assert boxgym("scenes", "--n", "2", "--out", out).returncode == 0
    listed = json.loads((out / MANIFEST).read_text())
    assert listed["verb"] == "scenes" and "index.html" in listed["files"]
    refused(boxgym("scenes", "--n", "2", "--out", out), "--overwrite")
    (out / "images" / "my-photo.png").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine")
    done = boxgym("scenes", "--n", "1", "--seed", "7", "--out", out, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "left 2 entries" in done.stderr or "did not write" in done.stderr
    assert (out / "images" / "my-photo.png").read_bytes() == b"mine"
    assert (out / "notes.txt").read_text() == "mine"
    assert len(list((out / "overlays").iterdir())) == 1  # the two earlier scenes are gone
    # A file of the user's where the verb would write is never replaced.
    (out / "images" / "my-photo.png").unlink()
    target = next(p for p in json.loads((out / MANIFEST).read_text())["files"] if "overlays/" in p)
    (out / target).unlink()
    done = boxgym("scenes", "--n", "1", "--seed", "7", "--out", out, "--overwrite")
    assert done.returncode == 0, done.stderr  # its own files, listed: replaced
    refused(boxgym("scenes", "--n", "1", "--out", out / "notes.txt"), "is a file")


def test_a_folder_being_written_is_refused(tmp_path) -> None:
    out = tmp_path / "busy"
    lock = RunLock(out, file=LOCK).acquire()
    try:
        refused(boxgym("scenes", "--n", "1", "--out", out), "another boxgym command is writing")
    finally:
        lock.release()
    assert boxgym("scenes", "--n", "1", "--out", out).returncode == 0


def test_gallery_files_are_distinct_and_dataset_options_are_refused_with_tasks(tmp_path) -> None:
    tasks = user_tasks(tmp_path / "tasks", ["a<b", "a>b", "A<B"])
    out = tmp_path / "gallery"
    done = boxgym("data", "gallery", "--tasks", tasks, "--out", out)
    assert done.returncode == 0, done.stderr
    originals = sorted(p for p in (out / "images").iterdir() if not p.stem.endswith("_gt"))
    assert len({p.name.lower() for p in originals}) == 3
    # each card shows its own task's picture: the pixels of p0, p1, p2 in the row order
    colours = sorted(Image.open(p).getpixel((0, 0)) for p in originals)
    assert colours == [(0, 30, 90), (60, 30, 90), (120, 30, 90)]
    for extra in (["--id", "a<b"], ["--seed", "3"], ["--bookmarks"], ["--scan", "5"]):
        done = boxgym("data", "gallery", "--tasks", tasks, "--out", tmp_path / "g2", *extra)
        refused(done, extra[0], "would be ignored")
        assert not (tmp_path / "g2").exists()
