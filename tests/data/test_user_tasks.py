"""Your own tasks: imagefolder metadata, task files, column mapping, rows skipped by reason."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from boxgym.data.loaders import DatasetSourceError
from boxgym.data.loaders.user_tasks import load_user_tasks, parse_columns
from boxgym.data.task import Task, unusable_reason


def task(size=(64, 48), count=3) -> Task:
    return Task(id="t", images=[Image.new("RGB", size)], question="How many?", kind="count",
                answer={"count": count})  # fmt: skip


def test_unusable_reason_names_what_the_env_cannot_run():
    assert unusable_reason(task()) is None
    assert unusable_reason(task(size=(1000, 2))) == "image aspect ratio over 200"
    assert unusable_reason(task(count=10**12)) == "count outside 0..100000"
    assert unusable_reason(task(count=-1)) == "count outside 0..100000"


def test_csv_folder_in_a_split_with_boxes_items_and_an_id_column(tmp_path):
    folder = tmp_path / "photos" / "test"
    folder.mkdir(parents=True)
    Image.new("RGB", (100, 80)).save(folder / "a.png")
    Image.new("RGB", (100, 80)).save(folder / "b.png")
    rows = [
        ["file_name", "photo_id", "n", "items", "boxes"],
        ["a.png", "living-room", "2", '["tv", "monitor"]', "[[0, 0, 10, 10], [20, 20, 40, 50]]"],
        ["b.png", "kitchen", "1", "", ""],
        ["b.png", "bad-box", "1", '["tv"]', "[[50, 50, 200, 60]]"],
    ]
    (folder / "metadata.csv").write_text("\n".join(",".join(
        f'"{c}"' if "," in c or '"' in c else c for c in (x.replace('"', '""') for x in r)) for r in rows) + "\n")  # fmt: skip
    result = load_user_tasks(tmp_path / "photos", columns=parse_columns("count=n,id=photo_id"))
    by_id = {t.id: t for t in result.tasks}
    assert set(by_id) == {"living-room", "kitchen"}
    assert by_id["living-room"].kind == "enumerate"
    assert by_id["living-room"].answer == {"count": 2, "items": ["tv", "monitor"]}
    assert by_id["kitchen"].kind == "count" and by_id["kitchen"].answer == {"count": 1}
    assert result.skip_reasons == {"box outside the image": 1}


def test_jsonl_task_file_with_points_and_default_ids(tmp_path):
    Image.new("RGB", (50, 50)).save(tmp_path / "dots.png")
    lines = [{"image": "dots.png", "points": [[1, 1], [10, 10], [20, 30]], "object": "dots"}]
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (only,) = load_user_tasks(tmp_path / "tasks.jsonl").tasks
    assert only.id == "dots" and only.count == 3 and only.question == "How many dots are there?"


def test_bad_columns_and_missing_sources_are_clear():
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        parse_columns("count")
    with pytest.raises(ValueError, match="unknown field"):
        parse_columns("counts=n")
    with pytest.raises(DatasetSourceError, match="no such file or folder"):
        load_user_tasks("/no/such/folder")


def test_lazy_tasks_decode_on_access_skip_the_same_rows_and_name_a_removed_photo(tmp_path):
    for name in ("a", "b", "c"):
        Image.new("RGB", (40, 30), (len(name), 90, 200)).save(tmp_path / f"{name}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows = [{"file_name": f"{n}.png", "count": 2} for n in "abc"]
    rows += [{"file_name": "broken.jpg", "count": 1}, {"file_name": "gone.png", "count": 1}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    eager = load_user_tasks(tmp_path)
    lazy = load_user_tasks(tmp_path, lazy=True)
    assert lazy.skip_reasons == eager.skip_reasons == {"corrupt image": 1, "missing image": 1}
    assert [lazy.tasks.task_id(i) for i in range(3)] == ["a", "b", "c"]
    for mine, theirs in zip(lazy.tasks, eager.tasks, strict=True):
        assert mine.ground_truth() == theirs.ground_truth()
        assert mine.images[0].tobytes() == theirs.images[0].tobytes()
    assert len(load_user_tasks(tmp_path, lazy=True, limit=2).tasks) == 2
    fresh = load_user_tasks(tmp_path, lazy=True)
    (tmp_path / "c.png").unlink()  # after the load: the episode that needs it names it
    with pytest.raises(DatasetSourceError, match="task c could not be read"):
        fresh.tasks[2]
