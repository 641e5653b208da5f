"""Dataset tasks with their ground truth, drawn, as a gallery page; bookmarks of the odd ones.

The `data` verb's commands are `boxgym.data.commands`.

A gallery writes, under OUT: `images/<id>_<i>.png` (original), `images/<id>_<i>_gt.png` (ground
truth drawn: boxes, numbered points, the answer point), `tasks.jsonl` (each task's ground
truth) and `index.html` (a grid of the drawn images with question and answer).

Random draws use reservoir sampling over the raw rows (images are decoded only for the rows
drawn), so the draw is uniform over the first `--scan` rows (default: the whole split) and the
same for the same seed. Bookmarks live in one JSON file (`--bookmarks-file`, else
$BOXGYM_CACHE/bookmarks.json, else ~/.cache/boxgym/bookmarks.json), rewritten atomically;
`gallery --bookmarks` shows the next `--n` bookmarked ids of the dataset and advances a cursor,
cycling, so repeated calls walk through them all.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import os
import random
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from boxgym.data.task import Task

DEFAULT_SCAN = None  # rows scanned for a random draw: None = the whole split
_MIN_SIDE = 320  # drawn images are upscaled to at least this long side so marks stay visible
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DataCommandError(RuntimeError):
    """A user-facing error of the `data` verb (printed, exit status 2)."""


# ---------------------------------------------------------------------------------------------
# Bookmarks


def default_bookmarks_path() -> Path:
    """$BOXGYM_CACHE/bookmarks.json, else ~/.cache/boxgym/bookmarks.json."""
    root = os.environ.get("BOXGYM_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "boxgym"
    return base / "bookmarks.json"


class BookmarkStore:
    """Bookmarked task ids per dataset, with notes, in one JSON file written atomically."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_bookmarks_path()

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"version": 1, "bookmarks": [], "cursors": {}}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise DataCommandError(f"bookmarks file {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("bookmarks"), list):
            raise DataCommandError(f"bookmarks file {self.path} has no 'bookmarks' list")
        data.setdefault("cursors", {})
        return data

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".bookmarks-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Bookmarks in the order added, optionally of one dataset."""
        marks = self._read()["bookmarks"]
        return [m for m in marks if dataset is None or m.get("dataset") == dataset]

    def add(self, dataset: str, task_id: str, note: str = "") -> dict[str, Any]:
        """Adds a bookmark (or updates the note of an existing one) and returns it."""
        data = self._read()
        for mark in data["bookmarks"]:
            if mark.get("dataset") == dataset and mark.get("id") == task_id:
                if note:
                    mark["note"] = note
                self._write(data)
                return mark
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        mark = {"dataset": dataset, "id": task_id, "note": note, "added": now}
        data["bookmarks"].append(mark)
        self._write(data)
        return mark

    def remove(self, dataset: str, task_id: str) -> bool:
        """Removes a bookmark; False if there was none."""
        data = self._read()
        kept = [
            m
            for m in data["bookmarks"]
            if not (m.get("dataset") == dataset and m.get("id") == task_id)
        ]
        if len(kept) == len(data["bookmarks"]):
            return False
        data["bookmarks"] = kept
        self._write(data)
        return True

    def next_ids(self, dataset: str, n: int) -> list[str]:
        """The next `n` bookmarked ids of `dataset` from its cursor (wrapping); advances it."""
        data = self._read()
        ids = [m["id"] for m in data["bookmarks"] if m.get("dataset") == dataset]
        if not ids:
            return []
        start = int(data["cursors"].get(dataset, 0)) % len(ids)
        chosen = [ids[(start + k) % len(ids)] for k in range(min(n, len(ids)))]
        data["cursors"][dataset] = (start + len(chosen)) % len(ids)
        self._write(data)
        return chosen


# ---------------------------------------------------------------------------------------------
# Finding tasks


def sample_dataset_tasks(
    name: str,
    n: int,
    *,
    seed: int = 0,
    scan: int | None = DEFAULT_SCAN,
    **open_kwargs: Any,
) -> tuple[list[Task], Counter]:
    """`n` tasks drawn uniformly from the first `scan` rows (all when None), decoding only those.

    Returns the tasks (in row order) and the skip reasons of the rows drawn that were unusable.
    """
    from boxgym.data.loaders.cells import BadRow
    from boxgym.data.loaders.common import get_loader, open_rows

    loader = get_loader(name)
    split = open_kwargs.pop("split", None) or loader.default_split
    opened = open_rows(name, split=split, **open_kwargs)
    rng = random.Random(seed)
    keep = 2 * n + 4  # spare rows in case some drawn rows are unusable
    reservoir: list[tuple[int, dict[str, Any]]] = []
    for index, row in enumerate(opened.rows):
        if scan is not None and index >= scan:
            break
        if len(reservoir) < keep:
            reservoir.append((index, row))
        else:
            j = rng.randint(0, index)
            if j < keep:
                reservoir[j] = (index, row)
    rng.shuffle(reservoir)
    tasks: list[tuple[int, Task]] = []
    reasons: Counter = Counter()
    for index, row in reservoir:
        if len(tasks) >= n:
            break
        ctx = opened.context(name, split, index)
        try:
            produced = loader.convert(row, ctx)
        except BadRow as bad:
            reasons[bad.reason] += 1
            continue
        except (KeyError, TypeError, ValueError):
            reasons["wrong type"] += 1
            continue
        tasks.append((index, rng.choice(produced)))
    return [t for _, t in sorted(tasks, key=lambda pair: pair[0])], reasons


def find_dataset_tasks(name: str, ids: list[str], **open_kwargs: Any) -> dict[str, Task]:
    """The tasks with these ids (found by scanning rows; only matching rows are decoded).

    Raises:
        DataCommandError: an id's row exists but cannot be used (the reason is given).
    """
    from boxgym.data.loaders.cells import BadRow
    from boxgym.data.loaders.common import get_loader, open_rows

    loader = get_loader(name)
    split = open_kwargs.pop("split", None) or loader.default_split
    opened = open_rows(name, split=split, **open_kwargs)
    wanted = set(ids)
    found: dict[str, Task] = {}
    for index, row in enumerate(opened.rows):
        if not wanted - set(found):
            break
        ctx = opened.context(name, split, index)
        key = loader.row_key(row, ctx)
        hits = {i for i in wanted if i == key or i.startswith(key + "-")}
        if not hits:
            continue
        try:
            produced = loader.convert(row, ctx)
        except BadRow as bad:
            raise DataCommandError(f"{name} row {index} ({key}) is unusable: {bad}") from bad
        found.update({t.id: t for t in produced if t.id in hits})
    return found


_SCENE_ID = re.compile(r"^(?P<family>[a-z]+)-(?P<difficulty>easy|medium|hard)-s(?P<seed>\d+)$")


def scene_task(task_id: str) -> Task:
    """Rebuilds a procedural scene task from its id "<family>-<difficulty>-s<seed>"."""
    from boxgym.data.scenes import make_scene_task

    match = _SCENE_ID.match(task_id)
    if not match:
        raise DataCommandError(f"scene id {task_id!r} is not <family>-<easy|medium|hard>-s<seed>")
    return make_scene_task(match["family"], int(match["seed"]), match["difficulty"])


def _scene_families() -> tuple[str, ...]:
    try:
        from boxgym.data.scenes import SCENE_FAMILIES
    except ImportError:
        return ()
    return tuple(SCENE_FAMILIES)


# ---------------------------------------------------------------------------------------------
# Drawing and writing


def draw_task(task: Task) -> list[Image.Image]:
    """Each image of the task with its ground truth drawn (boxes, numbered points, answer point).

    Small images are upscaled (nearest) to a long side of at least 320 px first.
    """
    drawn = []
    for index, image in enumerate(task.images):
        scale = max(1.0, _MIN_SIDE / max(image.size))
        canvas = image.convert("RGB")
        if scale > 1.0:
            size = (round(image.width * scale), round(image.height * scale))
            canvas = canvas.resize(size, Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(canvas)
        r = max(4, round(min(canvas.size) / 40))
        number = 0
        for obj in task.objects:
            if obj.image != index:
                continue
            number += 1
            if obj.box is not None:
                x1, y1, x2, y2 = (v * scale for v in obj.box)
                draw.rectangle([x1, y1, x2, y2], outline=(0, 200, 0), width=2)
                tag = f"{number} {obj.label}"  # white on green, just above the box
                left, top, right, bottom = draw.textbbox((x1, y1), tag)
                lift = min(bottom - top + 3, y1)
                draw.rectangle([left, top - lift, right + 3, bottom - lift + 2], fill=(0, 140, 0))
                draw.text((x1 + 1, y1 - lift + 1), tag, fill=(255, 255, 255))
            if obj.point is not None:  # a two-tone ring shows on any background
                x, y = obj.point[0] * scale, obj.point[1] * scale
                ring = [x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r]
                draw.ellipse(ring, outline=(0, 0, 0), width=3)
                draw.ellipse(ring, outline=(255, 230, 0), width=1)
                draw.text((x + 2 * r + 2, y - 2 * r), str(number), fill=(0, 0, 0))
        if task.kind == "point" and index == 0 and "point" in task.answer:
            x, y = (v * scale for v in task.answer["point"])
            draw.line([x - 3 * r, y, x + 3 * r, y], fill=(220, 0, 200), width=2)
            draw.line([x, y - 3 * r, x, y + 3 * r], fill=(220, 0, 200), width=2)
        drawn.append(canvas)
    return drawn


def safe_name(task_id: str) -> str:
    """A file name stem for a task id: the id where it is safe, else its safe characters and a
    short hash of the id, so ids that differ only in unsafe characters (`a<b`, `a>b`) differ."""
    safe = _SAFE.sub("_", task_id)[:120] or "task"
    if safe == task_id:
        return safe
    return f"{safe[:111]}-{hashlib.sha1(task_id.encode()).hexdigest()[:8]}"


def file_stems(tasks: list[Task]) -> list[str]:
    """One distinct file name stem per task (`safe_name`; `-2`, `-3`, ... where two would still
    meet, compared without case as some file systems do)."""
    stems, taken = [], set()
    for task in tasks:
        stem, number = safe_name(task.id), 1
        while (stem if number == 1 else f"{stem}-{number}").lower() in taken:
            number += 1
        stem = stem if number == 1 else f"{stem}-{number}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def gallery_files(tasks: list[Task]) -> list[str]:
    """Every file `write_gallery` writes for `tasks`, relative to its folder."""
    files = ["tasks.jsonl", "index.html"]
    for task, stem in zip(tasks, file_stems(tasks)):
        for i in range(len(task.images)):
            files += [f"images/{stem}_{i}.png", f"images/{stem}_{i}_gt.png"]
    return files


def export_task(task: Task, out: Path, stem: str | None = None) -> list[str]:
    """Writes the task's original and drawn images under out/images (named by `stem`, default
    `safe_name(task.id)`); returns relative paths of the drawn ones."""
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or safe_name(task.id)
    drawn_paths = []
    for i, (original, drawn) in enumerate(zip(task.images, draw_task(task))):
        original.save(images_dir / f"{stem}_{i}.png")
        drawn.save(images_dir / f"{stem}_{i}_gt.png")
        drawn_paths.append(f"images/{stem}_{i}_gt.png")
    return drawn_paths


def write_gallery(tasks: list[Task], out: Path, title: str) -> Path:
    """Images, tasks.jsonl and index.html for `tasks` under `out` (the files `gallery_files`
    names); returns the html path."""
    out.mkdir(parents=True, exist_ok=True)
    cards = []
    with (out / "tasks.jsonl").open("w") as fh:
        for task, stem in zip(tasks, file_stems(tasks)):
            fh.write(json.dumps(task.ground_truth(), default=str) + "\n")
            images = "".join(
                f'<img src="{html.escape(p)}" alt="{html.escape(task.id)}">'
                for p in export_task(task, out, stem)
            )
            cards.append(
                f'<div class="card"><div class="imgs">{images}</div>'
                f"<h3>{html.escape(task.id)}</h3>"
                f"<p><b>{html.escape(task.kind)}</b>: {html.escape(task.question)}</p>"
                f"<p>answer: <code>{html.escape(json.dumps(task.answer))}</code>"
                f" &middot; objects: {len(task.objects)}</p></div>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1em}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1em}"
        ".card{border:1px solid #ccc;border-radius:6px;padding:.5em}"
        ".imgs{display:flex;gap:4px}.imgs img{max-width:100%;min-width:0;flex:1}"
        "h3{font-size:.9em;margin:.3em 0}p{font-size:.85em;margin:.2em 0}"
        f"</style></head><body><h1>{html.escape(title)}</h1>"
        f"<div class='grid'>{''.join(cards)}</div></body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page)
    return path
