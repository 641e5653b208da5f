"""Dataset loaders on tiny local copies written in each dataset's hub schema (no hub here)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from boxgym.data.loaders import (
    DATASET_LOADERS,
    DatasetSourceError,
    ManifestError,
    cache_dataset,
    iter_dataset_tasks,
    load_dataset_tasks,
    verify_manifest,
    write_manifest,
)
from boxgym.data.loaders.samples import EXPECTED_SKIPS, SIZE, write_sample_dataset
from boxgym.data.task import Task

NAMES = sorted(DATASET_LOADERS)
LAYOUTS = ("parquet", "save_to_disk", "jsonl")
SPLITS = ("train", "validation", "test")
KINDS = {
    "nlvr2": {"verify"},
    "aguvis-stage-1": {"point"},
    "aguvis-stage-2": {"point"},
    "pixmo-count": {"count"},  # validation rows carry no points
    "countbench": {"count"},
}


@pytest.fixture(autouse=True)
def private_hf_cache(monkeypatch, tmp_path):
    """Keeps `datasets`' arrow cache of non-streaming reads out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("datasets")
    return {
        (name, layout): write_sample_dataset(
            name, root / f"{name}-{layout}", layout=layout, splits=SPLITS, bad_rows=True
        )
        for name in NAMES
        for layout in LAYOUTS
    }


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_loader_reads_every_layout_and_skips_bad_rows(copies, tmp_path, name, layout):
    result = load_dataset_tasks(
        name, path=copies[name, layout], split="validation", cache_dir=str(tmp_path)
    )
    assert result.skip_reasons == EXPECTED_SKIPS[name]
    assert result.skipped == 3
    assert result.rows_read == 7
    assert len(result.tasks) == (6 if name.startswith("aguvis") else 4)
    assert result.source.startswith("local:")
    for task in result.tasks:
        assert isinstance(task, Task)
        assert task.kind in KINDS[name]
        assert task.split == "validation"
        assert task.source == name
        assert task.meta["uid"] == task.id
        assert all(im.mode == "RGB" and im.size == SIZE for im in task.images)
    assert len({t.id for t in result.tasks}) == len(result.tasks)


def test_corrupt_rows_are_counted_by_reason_and_the_rest_load(copies):
    result = load_dataset_tasks("nlvr2", path=copies["nlvr2", "parquet"], streaming=True)
    assert result.skip_reasons == Counter(
        {"corrupt image": 1, "missing image": 1, "unparsable label": 1}
    )
    assert [t.id for t in result.tasks] == [
        "dev-100-0-0",
        "dev-100-0-1",
        "dev-100-1-0",
        "dev-100-1-1",
    ]
    assert "skipped 3" in result.summary()


def test_nlvr2_tasks_are_two_image_verify_tasks(copies):
    tasks = load_dataset_tasks("nlvr2", path=copies["nlvr2", "save_to_disk"], split="train").tasks
    assert [t.answer for t in tasks] == [{"value": v} for v in (True, False, True, False)]
    first = tasks[0]
    assert len(first.images) == 2 and first.objects == []
    assert "The left image shows 1 dots." in first.question
    assert first.meta["pair_id"] == "train-100-0"


def test_streaming_and_limit(copies, tmp_path):
    path = copies["countbench", "parquet"]
    eager = load_dataset_tasks("countbench", path=path, cache_dir=str(tmp_path))
    lazy = load_dataset_tasks("countbench", path=path, streaming=True)
    assert eager.tasks[0].split == "test"  # CountBenchQA's default split
    assert [t.id for t in eager.tasks] == [t.id for t in lazy.tasks]
    assert [t.answer for t in eager.tasks] == [t.answer for t in lazy.tasks]
    limited = load_dataset_tasks("countbench", path=path, streaming=True, limit=2)
    assert [t.id for t in limited.tasks] == [t.id for t in eager.tasks[:2]]
    assert load_dataset_tasks("countbench", path=path, limit=0).tasks == []


def test_iterator_form_counts_skips_as_it_goes(copies):
    reasons: Counter = Counter()
    stream = iter_dataset_tasks(
        "pixmo-count", path=copies["pixmo-count", "jsonl"], split="train", skip_reasons=reasons
    )
    first = next(stream)
    assert first.kind == "enumerate" and not reasons
    rest = list(stream)
    assert len(rest) == 3
    assert reasons == EXPECTED_SKIPS["pixmo-count"]


def test_pixmo_train_points_become_point_objects(copies):
    tasks = load_dataset_tasks(
        "pixmo-count", path=copies["pixmo-count", "parquet"], split="train"
    ).tasks
    for task in tasks:
        assert task.kind == "enumerate"
        assert len(task.objects) == task.answer["count"] == len(task.answer["items"])
        width, height = task.images[0].size
        for obj in task.objects:
            assert obj.box is None and obj.label == "dot"
            x, y = obj.point
            assert 0 <= x <= width and 0 <= y <= height
            # the sample image has a red-ish dot drawn at each point: the pixel is not white
            assert task.images[0].getpixel((round(x), round(y))) != (255, 255, 255)
    assert not tasks[0].has_boxes


def test_pixmo_points_in_both_layouts():
    from boxgym.data.loaders import BadRow
    from boxgym.data.loaders.pixmo_count import parse_points

    assert parse_points({"x": [1.0, 2.0], "y": [3.0, 4.0]}) == [(1.0, 3.0), (2.0, 4.0)]
    assert parse_points([{"x": 1, "y": 3}]) == [(1.0, 3.0)]
    assert parse_points(None) == []
    for bad in ({"x": [1.0], "y": []}, [{"x": "a", "y": 1}], "1,2", [{"x": float("nan"), "y": 1}]):
        with pytest.raises(BadRow, match="unparsable points"):
            parse_points(bad)


def test_aguvis_tasks_hold_pixel_points_and_qwen_tool_calls(copies):
    tasks = load_dataset_tasks("aguvis-stage-2", path=copies["aguvis-stage-2", "parquet"]).tasks
    assert tasks[0].split == "train"
    # row 1 has three turns: click (kept), type (dropped), double_click (kept)
    assert [t.id for t in tasks[:3]] == [
        "aguvis-stage-2-train-0000000-0",
        "aguvis-stage-2-train-0000001-0",
        "aguvis-stage-2-train-0000001-2",
    ]
    for task in tasks:
        width, height = task.images[0].size
        nx, ny = task.meta["point_normalized"]
        assert task.answer["point"] == pytest.approx([nx * width, ny * height])
        call = task.meta["tool_call"]
        assert call["name"] == "answer"
        assert call["arguments"] == {"x": round(nx * 1000), "y": round(ny * 1000)}
        assert task.images[0].getpixel(tuple(round(v) for v in task.answer["point"])) != (
            255,
            255,
            255,
        )


def test_errors_name_what_is_wrong(copies, tmp_path):
    with pytest.raises(DatasetSourceError, match=r"unknown dataset 'coco'.*nlvr2"):
        load_dataset_tasks("coco", path=tmp_path)
    with pytest.raises(DatasetSourceError, match="does not exist"):
        load_dataset_tasks("nlvr2", path=tmp_path / "absent")
    with pytest.raises(DatasetSourceError, match="neither a save_to_disk dataset nor parquet"):
        load_dataset_tasks("nlvr2", path=tmp_path)
    with pytest.raises(DatasetSourceError, match=r"split 'dev2'.*'test', 'train', 'validation'"):
        load_dataset_tasks("nlvr2", path=copies["nlvr2", "save_to_disk"], split="dev2")
    with pytest.raises(DatasetSourceError, match="no files for split 'validation'"):
        only_train = write_sample_dataset("countbench", tmp_path / "cb", splits=("train",))
        load_dataset_tasks("countbench", path=only_train, split="validation", streaming=True)


def test_hub_path_calls_load_dataset_with_repo_split_streaming_revision(monkeypatch, copies):
    import datasets

    calls = []
    local = datasets.load_from_disk(str(copies["countbench", "save_to_disk"]))["test"]

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_dataset_tasks("countbench", streaming=True, revision="abc123", limit=1)
    assert calls == [
        (
            ("vikhyatk/CountBenchQA", None),
            {"split": "test", "streaming": True, "revision": "abc123", "cache_dir": None},
        )
    ]
    assert result.source == "hub:vikhyatk/CountBenchQA@abc123"
    assert result.tasks[0].meta["revision"] == "abc123"


def test_hub_path_names_the_aguvis_subset(monkeypatch, copies):
    import datasets

    calls = []
    local = datasets.load_from_disk(str(copies["aguvis-stage-1", "save_to_disk"]))["train"]

    def fake_load_dataset(*args, **kwargs):
        calls.append(args)
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    default = load_dataset_tasks("aguvis-stage-1", limit=1)
    assert default.tasks[0].id == "aguvis-stage-1-seeclick-train-0000000-0"
    assert default.source == "hub:smolagents/aguvis-stage-1/seeclick@main"
    named = load_dataset_tasks("aguvis-stage-1", config="ricosca", limit=1)
    assert named.tasks[0].meta["config"] == "ricosca"
    assert calls == [
        ("smolagents/aguvis-stage-1", "seeclick"),
        ("smolagents/aguvis-stage-1", "ricosca"),
    ]
    with pytest.raises(DatasetSourceError, match=r"unknown config 'nope'.*'seeclick'"):
        load_dataset_tasks("aguvis-stage-1", config="nope")


def test_local_subset_folders(tmp_path):
    root = tmp_path / "aguvis"
    write_sample_dataset("aguvis-stage-1", root / "seeclick", splits=("train",), n=2)
    write_sample_dataset("aguvis-stage-1", root / "ricosca", splits=("train",), n=3)
    both = load_dataset_tasks("aguvis-stage-1", path=root, streaming=True)
    one = load_dataset_tasks("aguvis-stage-1", path=root, streaming=True, config="ricosca")
    assert len(both.tasks) == 3 + 4 and len(one.tasks) == 4
    assert one.tasks[0].id == "aguvis-stage-1-ricosca-train-0000000-0"
    with pytest.raises(DatasetSourceError, match="no folder named 'omniact'"):
        load_dataset_tasks("aguvis-stage-1", path=root, config="omniact")


def test_cache_dataset_writes_a_manifest_that_is_checked_on_load(copies, tmp_path):
    out = tmp_path / "cache"
    manifest = cache_dataset(
        "nlvr2",
        out,
        path=copies["nlvr2", "parquet"],
        splits=["train", "validation"],
        revision="r1",
        limit=5,
    )
    assert manifest["splits"] == {"train": 5, "validation": 5}
    assert manifest["dataset"] == "nlvr2" and manifest["repo"] == "pingzhili/nlvr2"
    assert any(name.endswith(".arrow") for name in manifest["files"])
    assert verify_manifest(out)["revision"] == "r1"
    result = load_dataset_tasks("nlvr2", path=out, split="train")
    assert len(result.tasks) == 4 and result.skip_reasons == Counter({"corrupt image": 1})
    assert result.tasks[0].meta["revision"] == "r1"

    arrow = next(p for p in out.rglob("*.arrow") if "train" in p.parts)
    data = bytearray(arrow.read_bytes())
    data[-1] ^= 0xFF
    arrow.write_bytes(bytes(data))
    rel = arrow.relative_to(out).as_posix()
    with pytest.raises(ManifestError, match=f"file {rel} has sha256"):
        load_dataset_tasks("nlvr2", path=out, split="train")
    # the check can be waived knowingly
    assert load_dataset_tasks("nlvr2", path=out, split="validation", verify=False).tasks


def test_manifest_names_missing_and_unlisted_files(copies, tmp_path):
    import shutil

    root = tmp_path / "pq"
    shutil.copytree(copies["countbench", "parquet"], root)
    manifest = write_manifest(root, "countbench", revision="v2")
    assert manifest["layout"] == "files"
    assert manifest["splits"] == {"train": 7, "validation": 7, "test": 7}
    assert len(load_dataset_tasks("countbench", path=root, streaming=True).tasks) == 4
    (root / "data" / "extra-00000-of-00001.parquet").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"extra-00000-of-00001.parquet is not listed"):
        verify_manifest(root)
    (root / "data" / "extra-00000-of-00001.parquet").unlink()
    (root / "data" / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(
        ManifestError, match=r"test-00000-of-00001.parquet listed in manifest.json is missing"
    ):
        load_dataset_tasks("countbench", path=root, streaming=True)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        verify_manifest(root)


def test_cache_refuses_to_overwrite(copies, tmp_path):
    out = tmp_path / "c"
    cache_dataset("countbench", out, path=copies["countbench", "save_to_disk"], limit=2)
    with pytest.raises(DatasetSourceError, match="not empty"):
        cache_dataset("countbench", out, path=copies["countbench", "save_to_disk"], limit=2)
    manifest = cache_dataset(
        "countbench", out, path=copies["countbench", "save_to_disk"], limit=3, overwrite=True
    )
    assert manifest["splits"] == {"test": 3}
    with pytest.raises(DatasetSourceError, match="the source itself"):
        cache_dataset("countbench", out, path=out, overwrite=True)


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_cache_whole_split(copies, tmp_path, layout):
    out = tmp_path / "whole"
    source = copies["pixmo-count", layout]
    manifest = cache_dataset(
        "pixmo-count", out, path=source, splits=["train", "test"], cache_dir=str(tmp_path / "hf")
    )
    assert manifest["splits"] == {"train": 7, "test": 7}
    cached = load_dataset_tasks("pixmo-count", path=out, split="train")
    original = load_dataset_tasks("pixmo-count", path=source, split="train", streaming=True)
    assert [t.ground_truth() for t in cached.tasks] == [t.ground_truth() for t in original.tasks]
    assert cached.skip_reasons == original.skip_reasons


def test_importing_loaders_does_not_import_datasets():
    code = (
        "import sys, boxgym.data.loaders, boxgym.data.gallery; "
        "print('datasets' in sys.modules, 'torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", "False"]


def test_hub_download_layout_with_hidden_cache_and_readme(copies, tmp_path):
    import shutil

    root = tmp_path / "download"
    shutil.copytree(copies["nlvr2", "parquet"], root)
    hidden = root / ".cache" / "huggingface" / "download" / "data"
    hidden.mkdir(parents=True)
    (hidden / "validation-00000-of-00001.parquet.metadata").write_text("etag")
    (hidden / "stale-validation.parquet").write_bytes(b"not parquet")
    (root / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    manifest = write_manifest(root, "nlvr2")
    assert not any(name.startswith(".") for name in manifest["files"])
    assert "README.md" not in manifest["files"]
    result = load_dataset_tasks("nlvr2", path=root, streaming=True)
    assert len(result.tasks) == 4


def test_a_hub_id_as_path_takes_the_hub_code_path(monkeypatch, copies, tmp_path):
    """`path="pingzhili/nlvr2"` used to be read as a missing local folder."""
    import datasets

    from boxgym.data.loaders.common import is_hub_id

    calls = []
    local = datasets.load_from_disk(str(copies["countbench", "save_to_disk"]))["test"]

    def fake_load_dataset(*args, **kwargs):
        calls.append(args)
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_dataset_tasks("countbench", path="someone/CountBenchQA-mirror", limit=1)
    assert calls == [("someone/CountBenchQA-mirror", None)]
    assert result.source == "hub:someone/CountBenchQA-mirror@main" and result.tasks
    # a local copy with that relative name wins; other paths are never hub ids
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone" / "copy").mkdir(parents=True)
    assert not is_hub_id("someone/copy") and is_hub_id("pingzhili/nlvr2")
    assert not is_hub_id("/abs/path") and not is_hub_id("./rel/x") and not is_hub_id("a/b/c")


@pytest.mark.parametrize("name", NAMES)
def test_lazy_tasks_equal_the_eager_ones_and_decode_on_access(copies, monkeypatch, name):
    from PIL import Image

    path = copies[name, "parquet"]
    eager = load_dataset_tasks(name, path=path, split="validation", limit=5)
    decoded = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: decoded.append(1) or real(*a, **k))
    lazy = load_dataset_tasks(name, path=path, split="validation", limit=5, lazy=True)
    assert (lazy.skip_reasons, lazy.rows_read, len(lazy.tasks)) == (
        eager.skip_reasons, eager.rows_read, len(eager.tasks))  # fmt: skip
    assert lazy.tasks.task_id(len(eager.tasks) - 1) == eager.tasks[-1].id  # ids without decoding
    after_load = len(decoded)
    task = lazy.tasks[len(eager.tasks) - 1]  # aguvis: the limit cut its row's tasks
    assert len(decoded) > after_load  # decoded again on access, not kept from the load
    assert task.ground_truth() == eager.tasks[-1].ground_truth()
    assert [im.tobytes() for im in task.images] == [im.tobytes() for im in eager.tasks[-1].images]
    assert [t.ground_truth() for t in lazy.tasks] == [t.ground_truth() for t in eager.tasks]
