"""EpisodeStore: durable appends, torn-line handling, image dedup, resume keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from boxgym.rollouts.store import EpisodeStore, image_relpath, image_sha, read_episodes


def record(task_id: str, sample: int, **extra) -> dict:
    return {"key": {"task_id": task_id, "task_index": 0, "sample": sample}, **extra}


def noise_image(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_append_and_read_back(tmp_path) -> None:
    with EpisodeStore(tmp_path) as store:
        store.append(record("a", 0, reward=1.0))
        store.append(record("a", 1, reward=0.5))
        assert store.done_keys() == {("a", 0), ("a", 1)}
    log = read_episodes(tmp_path)
    assert [r["reward"] for r in log.episodes] == [1.0, 0.5]
    assert not log.torn_tail and not log.bad_lines and log.report() == ""


def test_torn_last_line_is_dropped_and_reported(tmp_path) -> None:
    with EpisodeStore(tmp_path) as store:
        store.append(record("a", 0))
        store.append(record("b", 0))
    path = tmp_path / "episodes.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": {"task_id": "c", "sam')  # a kill mid-write
    log = read_episodes(path)
    assert [r["key"]["task_id"] for r in log.episodes] == ["a", "b"]
    assert log.torn_tail and "torn" in log.report()
    # Opening for append cuts the torn tail, so the next line starts cleanly.
    with EpisodeStore(tmp_path) as store:
        assert store.repaired_bytes == len(b'{"key": {"task_id": "c", "sam')
        store.append(record("c", 0))
    log = read_episodes(path)
    assert [r["key"]["task_id"] for r in log.episodes] == ["a", "b", "c"] and not log.torn_tail


def test_whole_file_torn_and_bad_middle_line(tmp_path) -> None:
    path = tmp_path / "episodes.jsonl"
    path.write_bytes(b'{"key": {"task_')
    assert read_episodes(path).episodes == [] and read_episodes(path).torn_tail
    path.write_bytes(
        b'{"key": {"task_id": "a", "sample": 0}}\nnot json\n[1, 2]\n{"key": {"task_id": "b", "sample": 0}}\n'
    )
    log = read_episodes(path)
    assert [r["key"]["task_id"] for r in log.episodes] == ["a", "b"]
    assert log.bad_lines == [2, 3]
    assert read_episodes(tmp_path / "missing.jsonl").episodes == []


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_images_stored_once_by_content(tmp_path, image_format) -> None:
    with EpisodeStore(tmp_path, image_format=image_format) as store:
        a = noise_image(0)
        ref1 = store.put_image(a)
        ref2 = store.put_image(a.copy())
        ref3 = store.put_image(noise_image(1))
        store.flush_images()
        assert ref1 == ref2 != ref3
        assert ref1 == image_sha(a) + (".png" if image_format == "png" else ".jpg")
        assert store.images_written == 2
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert files == sorted([ref1, ref3])
    stored = np.asarray(Image.open(tmp_path / image_relpath(ref1))).astype(int)
    if image_format == "png":
        assert np.array_equal(stored, np.asarray(a))
    else:  # lossy, but the same picture
        assert stored.shape == np.asarray(a).shape
    # A second session knows the images already on disk.
    with EpisodeStore(tmp_path, image_format=image_format) as store:
        store.put_image(a)
        store.flush_images()
        assert store.images_written == 0


def test_an_image_object_put_again_is_not_hashed_again(tmp_path, monkeypatch) -> None:
    import boxgym.rollouts.store as store_module

    hashed = []
    real = store_module.image_sha
    monkeypatch.setattr(store_module, "image_sha", lambda im: hashed.append(1) or real(im))
    with EpisodeStore(tmp_path) as store:
        a = noise_image(0)
        assert store.put_image(a) == store.put_image(a) == store.put_image(a)
        assert len(hashed) == 1
        store.put_image(a.copy())  # another object: hashed, then found stored
        assert len(hashed) == 2 and store.images_written <= 1


def test_old_runs_refer_to_png_by_bare_sha() -> None:
    assert image_relpath("abc") == "images/abc.png"
    assert image_relpath("abc.jpg") == "images/abc.jpg"


def test_hash_covers_mode_and_size() -> None:
    rgb = Image.new("RGB", (4, 2), (1, 2, 3))
    assert image_sha(rgb) != image_sha(rgb.convert("RGBA"))
    assert image_sha(Image.new("L", (4, 2))) != image_sha(Image.new("L", (2, 4)))


def test_leftover_temp_files_are_removed(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / ".tmp-abc-1.png").write_bytes(b"partial")
    with EpisodeStore(tmp_path):
        pass
    assert not list((tmp_path / "images").glob(".tmp-*"))


def test_record_needs_key_and_rejects_nan(tmp_path) -> None:
    with EpisodeStore(tmp_path, image_workers=0) as store:
        with pytest.raises(ValueError, match="key"):
            store.append({"reward": 1})
        with pytest.raises(ValueError):
            store.append(record("a", 0, reward=float("nan")))
    # Nothing half-written.
    assert all(json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines())


def test_image_queue_is_bounded(tmp_path) -> None:
    with EpisodeStore(tmp_path, max_pending_images=2) as store:
        for seed in range(10):
            store.put_image(noise_image(seed))
            assert len(store._pending) <= 2
        store.flush_images()
        assert store.images_written == 10


def test_images_reach_disk_before_their_line_and_a_worker_store_defers_to_its_flush(
    tmp_path, monkeypatch
) -> None:
    import threading

    release = threading.Event()
    write = EpisodeStore._write_image

    def held_write(self, ref, image):
        assert release.wait(10), "the test never released the write"
        write(self, ref, image)

    monkeypatch.setattr(EpisodeStore, "_write_image", held_write)
    # A worker's store (collect=True) keeps the record without waiting for its image: the
    # worker flushes once per chunk, before the parent writes the chunk's lines.
    worker = EpisodeStore(tmp_path, image_workers=1, collect=True)
    ref = worker.put_image(noise_image(0))
    worker.append(record("a", 0, image=ref))
    assert worker.collected and not (tmp_path / "images" / ref).exists()
    release.set()
    worker.flush_images()
    assert (tmp_path / "images" / ref).exists()
    worker.close()
    # The run's own store waits for the image before its line.
    release.clear()
    threading.Timer(0.2, release.set).start()
    with EpisodeStore(tmp_path / "own", image_workers=1) as store:
        ref = store.put_image(noise_image(1))
        store.append(record("a", 0, image=ref))
        assert (tmp_path / "own" / "images" / ref).exists()
