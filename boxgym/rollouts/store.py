"""`EpisodeStore`: finished episodes as JSON lines, images once each by content hash.

Layout of a run directory:

    episodes.jsonl       one finished episode per line, appended and flushed per episode, fsynced per turn
    images/<sha>.jpg     every distinct stored image once; records refer to it as "<sha>.jpg"
                         (runs written before the JPEG default: images/<sha>.png, referred to
                         as "<sha>"; `image_relpath` resolves both)

Only source images are stored: the tool images and working views the env derives from them
carry a recipe (`boxgym.tools.recipes`) that the record keeps instead, so a run encodes each task
image once, not every marked-up copy of it.

A shard of a run (`boxgym.rollouts.shards`) keeps its `episodes.jsonl` in a folder of its own
(`episodes_dir`) and shares `images/`: images are content-addressed and renamed into place, so two
writers storing the same image write the same bytes and neither ever sees a partial file.

Safety against a kill at any moment (SIGKILL included): an image is written to a temporary
file and renamed into place, so `images/` never holds a partial PNG; an episode's images are
all on disk before its line is written; each line is written with one `write` and handed to
the OS at once (the episodes that end in one turn then share one fsync), so a kill can only
leave a torn *last* line, which the reader detects and drops and which opening the store for
appending cuts off (reported in `repaired_bytes`). A resumed run therefore loses at most the
episodes that were in flight.

Hashing covers the raw pixels, the size and the mode, so two equal images from different turns
or episodes are stored once; an image object put again (the G samples of one task) is not hashed
again. Encoding is the expensive part: PNG costs 3-5 ms for a plain 448x448 scene and 26 ms for a
noisy one even at compress_level 1, JPEG at quality 90 0.5-0.8 ms (docs/benchmarks.md), so the
default is JPEG (the viewer's copy; the exact pixels are re-derived from the task's seed or
source) and `image_format="png"` keeps lossless files. Encoding runs on a small thread pool and
overlaps with the policy's next turn.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from boxgym.env.parsing import valid_unicode

EPISODES_FILE = "episodes.jsonl"
IMAGES_DIR = "images"
_TMP_PREFIX = ".tmp-"
# Stored image formats: file suffix and PIL save arguments.
IMAGE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "jpeg": (".jpg", {"format": "JPEG", "quality": 90}),
    "png": (".png", {"format": "PNG"}),
}


def image_sha(image: Image.Image) -> str:
    """Content hash of an image: raw pixels, size and mode (not the encoded file)."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:32]


def image_relpath(ref: str) -> str:
    """Path of a stored image relative to the run directory (what the viewer links to).

    `ref` is what a record holds: "<sha>.jpg" / "<sha>.png", or a bare "<sha>" (older runs,
    always PNG).
    """
    return f"{IMAGES_DIR}/{ref}" if "." in ref else f"{IMAGES_DIR}/{ref}.png"


def episode_key(record: dict[str, Any]) -> tuple[str, int]:
    """The (task id, sample index) that identifies an episode within a run."""
    key = record["key"]
    return (str(key["task_id"]), int(key["sample"]))


def _has_valid_key(record: dict[str, Any]) -> bool:
    try:
        episode_key(record)
    except (KeyError, TypeError, ValueError):
        return False
    return True


@dataclass
class EpisodeLog:
    """What `read_episodes` found.

    Attributes:
        episodes: the complete, parseable episode records, in file order.
        torn_tail: whether the last line was incomplete (a kill mid-write) and was dropped.
        bad_lines: 1-based numbers of complete lines that did not parse and were skipped.
    """

    episodes: list[dict[str, Any]] = field(default_factory=list)
    torn_tail: bool = False
    bad_lines: list[int] = field(default_factory=list)

    def report(self) -> str:
        """One line for the user: what was dropped, or an empty string."""
        parts = []
        if self.torn_tail:
            parts.append("dropped a torn last line (a run was killed while writing it)")
        if self.bad_lines:
            parts.append(f"skipped {len(self.bad_lines)} unparseable line(s): {self.bad_lines[:5]}")
        return "; ".join(parts)


class EpisodeReader:
    """Streams the records of `episodes.jsonl` (or a run directory holding one), line by line.

    Iterating parses each complete line once and yields its record; as it goes it notes a torn
    last line (no newline: a kill mid-write) and complete lines that did not parse
    (`torn_tail`, `bad_lines`, `report()` as in `EpisodeLog`). `raw_lines()` yields the bytes of
    the good lines without parsing them again (the run page copies them as they are), given the
    bad line numbers of an earlier pass. A missing file reads as empty.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path / EPISODES_FILE if path.is_dir() else path
        self.torn_tail = False
        self.bad_lines: list[int] = []
        self.last_line = 0  # the number of the last complete line the latest read reached

    def _numbered_lines(self, upto: int | None = None) -> Iterator[tuple[int, bytes]]:
        self.last_line = 0
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if upto is not None and number > upto:
                    return
                if not raw.endswith(b"\n"):
                    self.torn_tail = True  # the last line was cut off mid-write
                    return
                self.last_line = number
                if raw.strip():
                    yield number, raw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, record in self.numbered():
            yield record

    def numbered(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each good record with its line number (1-based), as iterating yields them."""
        self.torn_tail, self.bad_lines = False, []
        for number, raw in self._numbered_lines():
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.bad_lines.append(number)
                continue
            if not isinstance(record, dict) or not _has_valid_key(record):
                self.bad_lines.append(number)
                continue
            yield number, record

    def raw_lines(self, skip: Iterable[int] = (), upto: int | None = None) -> Iterator[str]:
        """The text of every complete line except the numbers in `skip`, newline stripped;
        with `upto`, only lines 1..upto (what an earlier pass read, when a shard still running
        may have appended since)."""
        skipped = set(skip)
        for number, raw in self._numbered_lines(upto):
            if number not in skipped:
                yield raw.decode("utf-8").rstrip("\n")

    def report(self) -> str:
        return EpisodeLog(torn_tail=self.torn_tail, bad_lines=self.bad_lines).report()


def read_episodes(path: str | Path) -> EpisodeLog:
    """Read `episodes.jsonl` (or a run directory holding one), tolerating a torn last line.

    A missing file reads as an empty log. `EpisodeReader` streams instead of holding them all.
    """
    reader = EpisodeReader(path)
    episodes = list(reader)
    return EpisodeLog(episodes, torn_tail=reader.torn_tail, bad_lines=reader.bad_lines)


def encode_line(record: dict[str, Any]) -> bytes:
    """One episode record as its `episodes.jsonl` line (UTF-8, no newline): compact JSON, no NaN,
    a lone surrogate replaced rather than failing the write."""
    line = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate somewhere in the record
        return valid_unicode(line).encode("utf-8")


class EpisodeStore:
    """Append-only episode storage for one run directory.

    Args:
        out_dir: the run directory (created if missing); images go to `out_dir/images`.
        episodes_dir: the folder of this writer's `episodes.jsonl` and of its temporary image
            files (default `out_dir`; a shard's own folder). Only this writer uses it, so the
            temporary files a killed writer left there are removed on opening.
        image_format: "jpeg" (quality 90, the default: 5-35x cheaper to encode) or "png".
        compress_level: PNG zlib level; 1 is the fast end (research.md costs).
        image_workers: threads that encode PNGs in the background; 0 encodes inline.
        max_pending_images: most images queued for encoding (each holds a copy in memory);
            `put_image` waits for the oldest when the queue is full.
        collect: a worker process's store (`boxgym.rollouts.workers`): images are written as
            usual, but `append` keeps records in `collected` for the parent process to write,
            the episodes file is not touched, and temp files (other workers' writes in flight)
            are left alone.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        episodes_dir: str | Path | None = None,
        image_format: str = "jpeg",
        compress_level: int = 1,
        image_workers: int = 1,
        max_pending_images: int = 64,
        collect: bool = False,
    ):
        self.out_dir = Path(out_dir)
        self.images_dir = self.out_dir / IMAGES_DIR
        self.images_dir.mkdir(parents=True, exist_ok=True)
        own_dir = self.out_dir if episodes_dir is None else Path(episodes_dir)
        own_dir.mkdir(parents=True, exist_ok=True)
        self.episodes_path = own_dir / EPISODES_FILE
        # Unsharded, temporary files sit in images/ (the only writer); a shard keeps its own.
        self._tmp_dir = self.images_dir if episodes_dir is None else own_dir
        if image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}"
            )
        self.image_format = image_format
        self._suffix, self._save_kwargs = IMAGE_FORMATS[image_format]
        if image_format == "png":
            self._save_kwargs = {**self._save_kwargs, "compress_level": compress_level}
        self.compress_level = compress_level
        for entry in self._tmp_dir.glob(f"{_TMP_PREFIX}*"):
            if not collect:  # a worker leaves the other workers' writes in flight alone
                entry.unlink(missing_ok=True)  # a write interrupted by a kill
        # Refs of the images on disk or queued (another shard may add more meanwhile: storing
        # one again writes the same bytes by an atomic rename).
        self._known: set[str] = {
            entry.name
            for entry in self.images_dir.glob(f"*{self._suffix}")
            if not entry.name.startswith(_TMP_PREFIX)
        }
        # id(image) -> (weak reference, ref): an image object put again is not hashed again.
        self._refs_by_object: dict[int, tuple[weakref.ref, str]] = {}
        self._pending: dict[str, Future[None]] = {}
        self._max_pending = max(1, int(max_pending_images))
        self._pool = ThreadPoolExecutor(image_workers) if image_workers > 0 else None
        self.collected: list[dict[str, Any]] | None = [] if collect else None
        self._unsynced = False
        self.repaired_bytes = 0 if collect else self._repair_torn_tail()
        # Held open for the run (a worker's store has none).
        self._file = open(os.devnull if collect else self.episodes_path, "ab")  # noqa: SIM115
        self.images_written = 0
        self.image_bytes_written = 0
        self.lines_written = 0
        self.scan_report = ""  # what the last `done_keys` pass skipped
        self.bad_lines: list[int] = []  # unparseable line numbers it found
        self.skip_lines: list[int] = []  # those and the lines of keys stored twice

    # -- images ---------------------------------------------------------------------------

    def put_image(self, image: Image.Image) -> str:
        """Store an image (once per distinct content) and return its reference, "<sha>.jpg".

        The same image object put again returns its reference without hashing it again, so
        images must not be drawn on after they are put (task images never are).
        """
        seen = self._refs_by_object.get(id(image))
        if seen is not None and seen[0]() is image:
            return seen[1]
        ref = image_sha(image) + self._suffix
        key = id(image)
        self._refs_by_object[key] = (
            weakref.ref(image, lambda _, key=key: self._refs_by_object.pop(key, None)),
            ref,
        )
        if ref in self._known:
            return ref
        self._known.add(ref)
        if self._pool is None:
            self._write_image(ref, image)
        else:
            if len(self._pending) >= self._max_pending:
                self._drain(self._max_pending // 2)
            # Encode a private copy: the caller may draw on the same object later.
            self._pending[ref] = self._pool.submit(self._write_image, ref, image.copy())
        return ref

    def _drain(self, keep: int) -> None:
        """Drop finished writes and wait for the oldest until at most `keep` are pending."""
        for sha in [s for s, f in self._pending.items() if f.done()]:
            self._pending.pop(sha).result()
        while len(self._pending) > keep:
            sha = next(iter(self._pending))
            self._pending.pop(sha).result()

    def _write_image(self, ref: str, image: Image.Image) -> None:
        final = self.images_dir / ref
        tmp = self._tmp_dir / f"{_TMP_PREFIX}{os.getpid()}-{ref}"
        if self.image_format == "jpeg" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(tmp, **self._save_kwargs)
        size = tmp.stat().st_size
        os.replace(tmp, final)
        self.images_written += 1
        self.image_bytes_written += size

    def flush_images(self) -> None:
        """Wait until every image handed to `put_image` is on disk (re-raising write errors)."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            future.result()

    # -- episodes -------------------------------------------------------------------------

    def append(self, record: dict[str, Any], *, sync: bool = True) -> None:
        """Write one finished episode durably: its images first, then its line, fsynced.

        The line is handed to the OS at once (a killed process loses nothing written);
        `sync=False` leaves the fsync to a later `sync()`, so the episodes that end together
        in one turn cost one fsync, not one each.
        """
        if "key" not in record:
            raise ValueError("an episode record needs a 'key' with 'task_id' and 'sample'")
        if self.collected is not None:  # its owner flushes the images before it writes the line
            self.collected.append(record)
            return
        self.flush_images()
        self.append_line(encode_line(record), sync=sync)

    def append_line(self, data: bytes, *, sync: bool = True) -> None:
        """Write one episode line already made by `encode_line` (a worker process encodes its
        records, so the process that owns the file only writes bytes); images must be on disk."""
        self._file.write(data + b"\n")
        self._file.flush()
        self._unsynced = True
        if sync:
            self.sync()
        self.lines_written += 1

    def sync(self) -> None:
        """fsync the lines written since the last sync (they survive a machine crash)."""
        if self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = False

    def read(self) -> EpisodeLog:
        """Every episode stored so far (see `read_episodes`)."""
        self._file.flush()
        return read_episodes(self.episodes_path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.read().episodes)

    def done_keys(
        self, on_record: Callable[[dict[str, Any]], None] | None = None
    ) -> set[tuple[str, int]]:
        """The (task id, sample index) of every stored episode, for `--resume`.

        One streaming pass: `on_record` sees each stored record as it is read, each key once (a
        summary can be built in the same pass); `scan_report` says what was skipped and
        `skip_lines` holds the numbers of the lines left out (unparseable, or a key stored
        twice), for the run page.
        """
        self._file.flush()
        reader = EpisodeReader(self.episodes_path)
        keys: set[tuple[str, int]] = set()
        twice: list[int] = []
        for number, record in reader.numbered():
            key = episode_key(record)
            if key in keys:
                twice.append(number)
                continue
            keys.add(key)
            if on_record is not None:
                on_record(record)
        notes = [reader.report()] if reader.report() else []
        if twice:
            notes.append(f"ignored {len(twice)} episode(s) stored twice")
        self.scan_report = "; ".join(notes)
        self.bad_lines = list(reader.bad_lines)
        self.skip_lines = sorted([*reader.bad_lines, *twice])
        return keys

    def _repair_torn_tail(self) -> int:
        """Cut a torn last line off the file so new lines start on a line of their own."""
        if not self.episodes_path.exists():
            return 0
        with open(self.episodes_path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return 0
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            # Scan back for the last newline in blocks.
            pos = size
            keep = 0
            while pos > 0:
                start = max(0, pos - 65536)
                f.seek(start)
                block = f.read(pos - start)
                idx = block.rfind(b"\n")
                if idx >= 0:
                    keep = start + idx + 1
                    break
                pos = start
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
            return size - keep

    def close(self) -> None:
        """Finish pending image writes and close the file."""
        if self._file.closed:
            return
        try:
            self.flush_images()
            self.sync()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._file.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk: the episodes file and the image directory."""
        self._file.flush()
        images = sum(
            p.stat().st_size for p in self.images_dir.iterdir() if not p.name.startswith(".")
        )
        lines = self.episodes_path.stat().st_size if self.episodes_path.exists() else 0
        return {"episodes_bytes": lines, "image_bytes": images, "images": len(self._known)}
