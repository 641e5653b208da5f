"""The `boxgym data` verb: gallery, inspect, bookmarks, cache and verify, through `cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from boxgym import cli
from boxgym.data.gallery import BookmarkStore, DataCommandError, draw_task, sample_dataset_tasks
from boxgym.data.loaders.samples import write_sample_dataset
from boxgym.data.task import GroundTruthObject, Task


@pytest.fixture(autouse=True)
def private_hf_cache(monkeypatch, tmp_path):
    """Keeps `datasets`' arrow cache of non-streaming reads out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(autouse=True)
def only_data_verb(monkeypatch, tmp_path):
    """Registers only this verb, so these tests do not depend on the other verbs' modules,
    and keeps bookmarks out of the user's cache."""
    monkeypatch.setattr(cli, "VERBS", {"data": cli.VERBS["data"]})
    monkeypatch.setenv("BOXGYM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def nlvr2_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nlvr2")
    return write_sample_dataset(
        "nlvr2", root, layout="save_to_disk", splits=("train", "validation"), n=8, bad_rows=True
    )


@pytest.fixture(scope="module")
def pixmo_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pixmo")
    return write_sample_dataset("pixmo-count", root, splits=("train",), n=6, bad_rows=True)


def test_gallery_writes_images_ground_truth_and_html(pixmo_copy, tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["data", "gallery", "--dataset", "pixmo-count", "--path", str(pixmo_copy)]
    assert cli.main([*argv, "--split", "train", "--n", "3", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["kind"] == "enumerate" for r in rows)
    page = (out / "index.html").read_text()
    for row in rows:
        assert row["id"] in page
        assert (out / "images" / f"{row['id']}_0.png").is_file()
        drawn = Image.open(out / "images" / f"{row['id']}_0_gt.png")
        assert max(drawn.size) >= 320  # small images are upscaled so the marks are visible
        assert f"images/{row['id']}_0_gt.png" in page
    assert "wrote 3 tasks" in capsys.readouterr().out


def test_random_draw_is_seeded_and_uniformish(nlvr2_copy):
    def ids(seed: int) -> list[str]:
        tasks, _ = sample_dataset_tasks("nlvr2", 3, seed=seed, path=nlvr2_copy, split="train")
        return [t.id for t in tasks]

    assert ids(0) == ids(0)
    draws = {tuple(ids(seed)) for seed in range(12)}
    assert len(draws) > 3
    seen = {i for draw in draws for i in draw}
    assert len(seen) >= 7  # nearly all 8 good rows get drawn across seeds
    assert not any(i.startswith("train-90") for i in seen)  # bad rows never shown


def test_inspect_prints_ground_truth_and_exports_images(nlvr2_copy, tmp_path, capsys):
    out = tmp_path / "inspect"
    argv = ["data", "inspect", "--dataset", "nlvr2", "--path", str(nlvr2_copy)]
    assert cli.main([*argv, "--id", "dev-101-1-1", "--out", str(out)]) == 0
    truth = json.loads(capsys.readouterr().out)
    assert truth["id"] == "dev-101-1-1" and truth["answer"] == {"value": False}
    assert truth["meta"]["pair_id"] == "dev-101-1"
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "dev-101-1-1_0.png",
        "dev-101-1-1_0_gt.png",
        "dev-101-1-1_1.png",
        "dev-101-1-1_1_gt.png",
    ]
    assert json.loads((out / "dev-101-1-1.json").read_text())["id"] == "dev-101-1-1"


def test_inspect_reports_unknown_and_unusable_ids(nlvr2_copy, capsys):
    argv = ["data", "inspect", "--dataset", "nlvr2", "--path", str(nlvr2_copy)]
    assert cli.main([*argv, "--id", "dev-999-0-0"]) == 2
    assert "no task 'dev-999-0-0'" in capsys.readouterr().err
    assert cli.main([*argv, "--id", "dev-900-0-0"]) == 2
    assert "unusable: corrupt image" in capsys.readouterr().err
    assert cli.main(["data", "inspect", "--dataset", "coco", "--id", "x"]) == 2
    assert "unknown dataset 'coco'" in capsys.readouterr().err


def test_bookmarks_persist_and_gallery_cycles_through_them(nlvr2_copy, tmp_path, capsys):
    ids = ["dev-100-0-0", "dev-101-0-1", "dev-100-1-0"]
    for i in ids:
        assert cli.main(["data", "bookmark", "add", "--dataset", "nlvr2", "--id", i]) == 0
    assert (
        cli.main(["data", "bookmark", "add", "--dataset", "nlvr2", "--id", ids[0], "--note", "odd"])
        == 0
    )
    store = BookmarkStore()
    assert store.path == tmp_path / "cache" / "bookmarks.json"
    assert [m["id"] for m in store.list("nlvr2")] == ids
    assert store.list("nlvr2")[0]["note"] == "odd"
    capsys.readouterr()
    assert cli.main(["data", "bookmark", "list"]) == 0
    assert "dev-100-0-0  # odd" in capsys.readouterr().out

    shown = []
    for k in range(3):
        out = tmp_path / f"bm{k}"
        argv = ["data", "gallery", "--dataset", "nlvr2", "--path", str(nlvr2_copy), "--bookmarks"]
        assert cli.main([*argv, "--n", "2", "--out", str(out)]) == 0
        shown.append(
            [json.loads(line)["id"] for line in (out / "tasks.jsonl").read_text().splitlines()]
        )
    assert shown == [ids[:2], [ids[2], ids[0]], ids[1:]]

    assert cli.main(["data", "bookmark", "remove", "--dataset", "nlvr2", "--id", ids[1]]) == 0
    assert [m["id"] for m in BookmarkStore().list()] == [ids[0], ids[2]]
    assert cli.main(["data", "bookmark", "remove", "--dataset", "nlvr2", "--id", ids[1]]) == 2
    assert cli.main(["data", "bookmark", "add", "--dataset", "nlvr2"]) == 2
    assert not list((tmp_path / "cache").glob(".bookmarks-*"))  # no temp files left behind


def test_bookmarks_file_errors_are_messages(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("{oops")
    with pytest.raises(DataCommandError, match="not valid JSON"):
        BookmarkStore(path).list()
    assert cli.main(["data", "bookmark", "list", "--bookmarks-file", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    empty = ["data", "gallery", "--dataset", "nlvr2", "--bookmarks", "--out", str(tmp_path / "o")]
    assert cli.main(empty) == 2
    assert "no bookmarks for nlvr2" in capsys.readouterr().err


def test_cache_and_verify_commands(nlvr2_copy, tmp_path, capsys):
    out = tmp_path / "cached"
    argv = ["data", "cache", "--dataset", "nlvr2", "--path", str(nlvr2_copy), "--out", str(out)]
    assert cli.main([*argv, "--split", "train", "--limit", "4"]) == 0
    assert "cached nlvr2 {'train': 4}" in capsys.readouterr().out
    assert cli.main(["data", "verify", "--path", str(out)]) == 0
    assert "files match" in capsys.readouterr().out
    arrow = next(out.rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes() + b"\0")
    assert cli.main(["data", "verify", "--path", str(out)]) == 2
    assert arrow.name in capsys.readouterr().err


@pytest.mark.parametrize("command", ["gallery", "inspect", "bookmark", "cache", "verify"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", command, "--help"])
    assert exit_info.value.code == 0
    assert f"boxgym data {command}" in capsys.readouterr().out


def test_draw_task_marks_boxes_points_and_answer_point():
    image = Image.new("RGB", (400, 300), "white")
    objects = [
        GroundTruthObject(box=(10, 10, 60, 50), label="red circle"),
        GroundTruthObject(box=None, label="dot", point=(200.0, 150.0)),
    ]
    task = Task(id="t", images=[image], question="q", kind="enumerate", objects=objects)
    (drawn,) = draw_task(task)
    assert drawn.size == (400, 300)
    assert drawn.getpixel((10, 30)) != (255, 255, 255)  # box edge
    ring = [drawn.getpixel((200 + dx, 150)) for dx in range(-20, 21)]
    assert any(p != (255, 255, 255) for p in ring)
    assert image.getpixel((10, 30)) == (255, 255, 255)  # the task's image is untouched
    point_task = Task(
        id="p", images=[image], question="q", kind="point", answer={"point": [50, 40]}
    )
    assert draw_task(point_task)[0].getpixel((50, 40)) != (255, 255, 255)


def test_scene_ids_are_rebuilt_when_scenes_are_available(capsys):
    scenes = pytest.importorskip("boxgym.data.scenes", exc_type=ImportError)
    task = scenes.make_scene_task("screens", 3, "easy")
    assert cli.main(["data", "inspect", "--dataset", "screens", "--id", task.id]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == task.id


def test_gallery_by_ids_reports_missing_ones(nlvr2_copy, tmp_path, capsys):
    out = tmp_path / "ids"
    argv = ["data", "gallery", "--dataset", "nlvr2", "--path", str(nlvr2_copy), "--out", str(out)]
    assert cli.main([*argv, "--id", "dev-101-0-0", "--id", "dev-100-0-1", "--id", "dev-7-7-7"]) == 0
    shown = [json.loads(line)["id"] for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert shown == ["dev-101-0-0", "dev-100-0-1"]
    assert "not found: dev-7-7-7" in capsys.readouterr().err


@pytest.mark.slow
def test_cache_overwrite_deletes_only_the_cache(nlvr2_copy, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    argv = ["data", "cache", "--dataset", "nlvr2", "--path", str(nlvr2_copy), "--split", "train"]
    assert cli.main([*argv, "--limit", "2", "--out", str(mine), "--overwrite"]) == 2
    assert "holds no cache made by `boxgym data cache`" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    out = tmp_path / "cached"
    assert cli.main([*argv, "--limit", "2", "--out", str(out)]) == 0
    (out / "train" / "notes.txt").write_text("mine")
    assert cli.main([*argv, "--limit", "3", "--out", str(out), "--overwrite"]) == 0
    assert (out / "train" / "notes.txt").read_text() == "mine"
    assert cli.main(["data", "verify", "--path", str(out)]) == 0
    assert "{'train': 3}" in capsys.readouterr().out
