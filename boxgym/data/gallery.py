"""The `data` verb: look at dataset tasks with their ground truth, and bookmark the odd ones.

    boxgym data gallery  --dataset nlvr2 --path DIR [--n 8 --seed 0] --out OUT   (random tasks)
    boxgym data gallery  --dataset nlvr2 --path DIR --bookmarks --out OUT       (bookmarked ids)
    boxgym data gallery  --dataset nlvr2 --path DIR --id ID [--id ID ...] --out OUT  (chosen ids)
    boxgym data inspect  --dataset nlvr2 --path DIR --id dev-850-0-0 [--out OUT]
    boxgym data inspect  --dataset screens --id screens-easy-s3               (scene families)
    boxgym data bookmark add|list|remove --dataset nlvr2 [--id ID] [--note TEXT]
    boxgym data cache    --dataset nlvr2 --out DIR [--path SRC] [--split S ...] [--limit N]
    boxgym data verify   --path DIR                                   (check manifest.json)

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

import argparse
import datetime as _dt
import html
import json
import os
import random
import re
import sys
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
    return _SAFE.sub("_", task_id)[:120] or "task"


def export_task(task: Task, out: Path) -> list[str]:
    """Writes the task's original and drawn images under out/images; returns relative paths of
    the drawn ones."""
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_name(task.id)
    drawn_paths = []
    for i, (original, drawn) in enumerate(zip(task.images, draw_task(task))):
        original.save(images_dir / f"{stem}_{i}.png")
        drawn.save(images_dir / f"{stem}_{i}_gt.png")
        drawn_paths.append(f"images/{stem}_{i}_gt.png")
    return drawn_paths


def write_gallery(tasks: list[Task], out: Path, title: str) -> Path:
    """Images, tasks.jsonl and index.html for `tasks` under `out`; returns the html path."""
    out.mkdir(parents=True, exist_ok=True)
    cards = []
    with (out / "tasks.jsonl").open("w") as fh:
        for task in tasks:
            fh.write(json.dumps(task.ground_truth(), default=str) + "\n")
            images = "".join(
                f'<img src="{html.escape(p)}" alt="{html.escape(task.id)}">'
                for p in export_task(task, out)
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


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Subcommands of `boxgym data`."""
    from boxgym.data.loaders.user_tasks import add_tasks_arguments

    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    sub.required = True

    def source(p: argparse.ArgumentParser, required_dataset: bool = True) -> None:
        p.add_argument("--dataset", required=required_dataset, help="dataset name")
        p.add_argument("--path", help="local copy (save_to_disk dir, parquet/jsonl); default: hub")
        p.add_argument("--split", help="split to read (default: the dataset's default split)")
        p.add_argument("--revision", help="hub revision to pin")
        p.add_argument("--config", help="hub subset, for datasets that have several (aguvis)")
        p.add_argument("--streaming", action="store_true", help="stream rows (hub or parquet)")
        p.add_argument("--no-verify", action="store_true", help="skip the manifest.json check")

    def bookmarks_file(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--bookmarks-file",
            help="bookmarks JSON (default $BOXGYM_CACHE/bookmarks.json or ~/.cache/boxgym/)",
        )

    g = sub.add_parser(
        "gallery",
        help="Random (or bookmarked) tasks with ground truth, as HTML.",
        description="Random (or bookmarked) tasks with ground truth, as HTML.",
    )
    source(g, required_dataset=False)
    add_tasks_arguments(g)
    g.add_argument("--n", type=int, default=8, help="number of tasks (default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random draw (default 0)")
    g.add_argument("--scan", type=int, default=DEFAULT_SCAN, help="draw from the first N rows")
    g.add_argument("--bookmarks", action="store_true", help="show the next bookmarked ids")
    g.add_argument("--id", action="append", dest="ids", help="show this task id (repeatable)")
    g.add_argument("--out", required=True, help="output directory")
    bookmarks_file(g)

    i = sub.add_parser(
        "inspect",
        help="One task's metadata and ground truth; export its images.",
        description="One task's metadata and ground truth; export its images.",
    )
    source(i)
    i.add_argument("--id", required=True, help="task id (NLVR2 identifier, row id, scene id)")
    i.add_argument("--out", help="also write its images and ground_truth.json here")

    b = sub.add_parser(
        "bookmark",
        help="Bookmark interesting task ids (persistent).",
        description="Bookmark interesting task ids (persistent).",
    )
    b.add_argument("action", choices=["add", "list", "remove"])
    b.add_argument("--dataset", help="dataset name (required for add/remove)")
    b.add_argument("--id", help="task id (required for add/remove)")
    b.add_argument("--note", default="", help="why it is interesting")
    bookmarks_file(b)

    c = sub.add_parser(
        "cache",
        help="Copy dataset splits to a directory with a manifest.",
        description="Copy dataset splits to a directory with a manifest.",
    )
    c.add_argument("--dataset", required=True, help="dataset name")
    c.add_argument("--out", required=True, help="destination directory")
    c.add_argument("--path", help="read from this local copy instead of the hub")
    c.add_argument("--split", action="append", help="split to copy (repeatable)")
    c.add_argument("--revision", help="hub revision to pin and record")
    c.add_argument("--config", help="hub subset, for datasets that have several (aguvis)")
    c.add_argument("--limit", type=int, help="rows per split")
    c.add_argument("--overwrite", action="store_true", help="replace an existing cache")

    v = sub.add_parser(
        "verify",
        help="Check a cached copy against its manifest.json.",
        description="Check a cached copy against its manifest.json.",
    )
    v.add_argument("--path", required=True, help="the cached copy")


def _open_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "path": args.path,
        "split": args.split,
        "revision": args.revision,
        "streaming": args.streaming,
        "verify": not args.no_verify,
        "config": args.config,
    }


def run(args: argparse.Namespace) -> int:
    """Runs one `data` subcommand; user errors print a message and return 2."""
    from boxgym.data.loaders.common import DatasetSourceError
    from boxgym.data.loaders.manifest import ManifestError

    handlers = {
        "gallery": _gallery,
        "inspect": _inspect,
        "bookmark": _bookmark,
        "cache": _cache,
        "verify": _verify,
    }
    try:
        return handlers[args.data_command](args)
    except (DataCommandError, DatasetSourceError, ManifestError) as exc:
        print(f"boxgym data {args.data_command}: {exc}", file=sys.stderr)
        return 2


def _gallery(args: argparse.Namespace) -> int:
    from boxgym.data.loaders.user_tasks import load_tasks_argument

    if args.n < 1:
        raise DataCommandError("--n must be at least 1")
    out = Path(args.out)
    if args.tasks:
        tasks = load_tasks_argument(args, limit=args.n)
        page = write_gallery(tasks, out, f"{args.tasks}: {len(tasks)} tasks")
        print(f"wrote {len(tasks)} tasks to {page}")
        return 0
    if not args.dataset:
        raise DataCommandError("give --dataset NAME or --tasks PATH")
    if args.bookmarks or args.ids:
        if args.ids:
            ids = list(dict.fromkeys(args.ids))
        else:
            store = BookmarkStore(args.bookmarks_file)
            ids = store.next_ids(args.dataset, args.n)
            if not ids:
                raise DataCommandError(f"no bookmarks for {args.dataset} in {store.path}")
        found = _find(args, ids)
        missing = [i for i in ids if i not in found]
        tasks = [found[i] for i in ids if i in found]
        title = f"{args.dataset}: {', '.join(ids)}"
        if missing:
            print(f"not found: {', '.join(missing)}", file=sys.stderr)
    else:
        tasks, reasons = sample_dataset_tasks(
            args.dataset, args.n, seed=args.seed, scan=args.scan, **_open_kwargs(args)
        )
        title = f"{args.dataset}: {len(tasks)} random tasks (seed {args.seed})"
        if reasons:
            print(f"skipped drawn rows: {dict(reasons)}", file=sys.stderr)
    if not tasks:
        raise DataCommandError(f"no usable tasks found in {args.dataset}")
    page = write_gallery(tasks, out, title)
    print(f"wrote {len(tasks)} tasks to {page}")
    return 0


def _find(args: argparse.Namespace, ids: list[str]) -> dict[str, Task]:
    if args.dataset in _scene_families():
        return {i: scene_task(i) for i in ids}
    return find_dataset_tasks(args.dataset, ids, **_open_kwargs(args))


def _inspect(args: argparse.Namespace) -> int:
    task = _find(args, [args.id]).get(args.id)
    if task is None:
        raise DataCommandError(f"no task {args.id!r} in {args.dataset}")
    truth = task.ground_truth()
    print(json.dumps(truth, indent=2, default=str))
    if args.out:
        out = Path(args.out)
        export_task(task, out)
        (out / f"{safe_name(task.id)}.json").write_text(json.dumps(truth, indent=2, default=str))
        print(f"wrote images and ground truth to {out}", file=sys.stderr)
    return 0


def _bookmark(args: argparse.Namespace) -> int:
    store = BookmarkStore(args.bookmarks_file)
    if args.action == "list":
        for mark in store.list(args.dataset):
            note = f"  # {mark['note']}" if mark.get("note") else ""
            print(f"{mark['dataset']}\t{mark['id']}{note}")
        return 0
    if not args.dataset or not args.id:
        raise DataCommandError(f"bookmark {args.action} needs --dataset and --id")
    if args.action == "add":
        store.add(args.dataset, args.id, args.note)
        print(f"bookmarked {args.dataset} {args.id} in {store.path}")
        return 0
    if not store.remove(args.dataset, args.id):
        raise DataCommandError(f"no bookmark {args.dataset} {args.id} in {store.path}")
    print(f"removed {args.dataset} {args.id}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from boxgym.data.loaders.manifest import cache_dataset

    manifest = cache_dataset(
        args.dataset,
        args.out,
        path=args.path,
        splits=args.split,
        revision=args.revision,
        limit=args.limit,
        overwrite=args.overwrite,
        config=args.config,
    )
    print(
        f"cached {args.dataset} {manifest['splits']} in {args.out} ({len(manifest['files'])} files)"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from boxgym.data.loaders.manifest import verify_manifest

    manifest = verify_manifest(args.path)
    print(
        f"ok: {manifest.get('dataset')} {manifest.get('splits')}, {len(manifest['files'])} files match"
    )
    return 0
