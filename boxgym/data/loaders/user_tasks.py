"""Tasks from your own data: an image folder with metadata, or a file of tasks.

    boxgym rollout --tasks photos/ ...          # photos/metadata.jsonl (or .csv) + the images
    boxgym rollout --tasks tasks.jsonl ...      # one task per line, images relative to the file
    boxgym rollout --tasks user/dataset ...     # a hub dataset with the same columns

The folder layout is Hugging Face's `imagefolder`: a `metadata.jsonl` or `metadata.csv` whose
`file_name` column names each image relative to the metadata file (in the folder or a split
subfolder, e.g. `test/metadata.jsonl`). A task file is `.jsonl`, `.csv` or `.parquet`, its
image column (`file_name`, `image` or `image_path`) a path relative to the file, or an
embedded `{"bytes": ...}` cell.

Columns (rename yours with `columns={"count": "n_screens", ...}`, `--columns count=n_screens`):

    file_name / image   the image (required)
    id                  the task id (default: the image's file name without its extension)
    question            the question (default: "How many <object> are there?" or a generic one)
    object              what to count, used in the default question ("screens")
    count               the true count (default: the number of boxes, points or items)
    items               labels, one per object: an `enumerate` task (count and list)
    boxes               [[x1, y1, x2, y2], ...] in pixels of the image, or {"box": [...],
                        "label": ...} objects
    points              [[x, y], ...] in pixels

Rows that cannot be used are skipped and counted by reason, never the whole file: a line that
is not JSON, a missing or corrupt image, a count that is not a number, a row group of a parquet
file that cannot be read, a task the env could not run (`boxgym.data.task.unusable_reason`).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from boxgym.data.lazy_tasks import LazyTasks
from boxgym.data.loaders.cells import BadRow, decode_image, parse_count
from boxgym.data.loaders.common import DatasetSourceError, LoadResult
from boxgym.data.task import GroundTruthObject, Task, unusable_reason

FIELDS = ("id", "file_name", "question", "object", "count", "items", "boxes", "points")
IMAGE_COLUMNS = ("file_name", "image", "image_path", "file", "path")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
TASK_FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")


def parse_columns(text: str | None) -> dict[str, str]:
    """`"count=n_screens,question=prompt"` -> {"count": "n_screens", "question": "prompt"}."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        field, sep, column = part.partition("=")
        field, column = field.strip(), column.strip()
        if not sep or not column:
            raise ValueError(f"--columns: {part!r} is not FIELD=COLUMN (e.g. count=n_screens)")
        if field not in FIELDS and field != "image":
            raise ValueError(
                f"--columns: unknown field {field!r}; the fields are {', '.join(FIELDS)}"
            )
        mapping["file_name" if field == "image" else field] = column
    return mapping


def looks_like_hub_id(text: str) -> bool:
    """Whether `text` names a hub dataset ("owner/name") rather than a local path."""
    return (
        text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not Path(text).expanduser().exists()
    )


def load_user_tasks(
    source: str | os.PathLike[str],
    *,
    columns: dict[str, str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    lazy: bool = False,
    fixed: dict[str, list[Any]] | None = None,
) -> LoadResult:
    """Tasks from an image folder with metadata, a task file, or a hub dataset.

    Args:
        source: a folder (imagefolder layout), a `.jsonl` / `.csv` / `.parquet` file, or a hub
            dataset id ("owner/name", needs network).
        columns: our field -> your column name, for columns named differently.
        split: a folder's split subfolder or a hub split (default: the folder itself, or the
            only split; "test" on the hub).
        limit: at most this many tasks.
        lazy: `tasks` is a `LazyTasks`: every row is still read and its image decoded once
            here (so bad rows are counted and skipped exactly as otherwise), but only the row
            (the image's path, or its encoded bytes when embedded) is kept, and a task's image
            is decoded again when an episode asks for it: memory does not hold n images.
        fixed: a run's task list as it was fixed at its start (`fixed_task_list`): the tasks
            are exactly those, in that order, matched to rows by row number and id without
            decoding any image (`lazy` is implied, `limit` ignored). A task whose image is now
            missing or unreadable, or whose row is gone, stays in the list and fails when its
            episode starts, so a resumed run keeps its tasks and finishes the rest.

    Raises:
        DatasetSourceError: nothing readable at `source`.
    """
    mapping = dict(columns or {})
    reasons: Counter = Counter()
    text = str(source)
    if looks_like_hub_id(text):
        rows, source_name, base_dir = _hub_rows(text, split or "test"), f"hub:{text}", None
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise DatasetSourceError(
                f"--tasks {text}: no such file or folder (give a folder with metadata.jsonl, a "
                ".jsonl/.csv/.parquet task file, or a hub dataset id owner/name)"
            )
        table = _task_table(path, split)
        rows, source_name, base_dir = _file_rows(table, reasons), f"local:{table}", table.parent
    result = LoadResult(source=source_name)
    if fixed is not None:
        result.tasks = _fixed_user_tasks(rows, fixed, base_dir, mapping, text, result)
        return result
    tasks: list[Task] = []
    kept: list[tuple[dict[str, Any], int]] = []  # lazy: the rows of the tasks, by task index
    ids: list[str] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        result.rows_read = index + 1
        try:
            task = row_to_task(row, index, base_dir, mapping)
            if task.id in seen:
                raise BadRow("duplicate id", task.id)
            reason = unusable_reason(task)
            if reason is not None:
                raise BadRow(reason, task.id)
        except BadRow as bad:
            reasons[bad.reason] += 1
            continue
        except (KeyError, TypeError, ValueError):  # a cell of a shape nothing above expected
            reasons["wrong type"] += 1
            continue
        seen.add(task.id)
        if lazy:
            kept.append((row, index))
            ids.append(task.id)
        else:
            tasks.append(task)
        if limit is not None and len(ids) + len(tasks) >= limit:
            break
    result.tasks = _lazy_user_tasks(kept, ids, base_dir, mapping, text) if lazy else tasks
    result.skip_reasons = reasons
    result.skipped = sum(reasons.values())
    if not result.tasks:
        why = "; ".join(f"{r}: {n}" for r, n in reasons.most_common()) or "no rows"
        raise DatasetSourceError(f"--tasks {text}: no usable task ({why})")
    return result


class UserTasks(LazyTasks):
    """Tasks read with `lazy=True`: task i is rebuilt from its row when an episode asks for it.

    `fixed_list()` is what a run records of them at its start (`tasks.json`: each task's id and
    row number), for `load_user_tasks(fixed=...)` when the run is resumed.
    """

    def __init__(self, ids: list[str], rows: list[int | None], build: Any) -> None:
        super().__init__(len(ids), build, ids.__getitem__, images_per_task=1)
        self._ids, self._rows = ids, rows

    def fixed_list(self) -> dict[str, list[Any]]:
        return {"ids": list(self._ids), "rows": list(self._rows)}


def _lazy_user_tasks(
    rows: list[tuple[dict[str, Any], int] | None],
    ids: list[str],
    base_dir: Path | None,
    mapping: dict[str, str],
    source: str,
) -> UserTasks:
    """Task i rebuilt from its kept row (image decoded) when an episode asks for it; a row that
    cannot be read then (or is gone: None) raises `DatasetSourceError` naming the task."""

    def build(i: int) -> Task:
        if rows[i] is None:
            raise DatasetSourceError(
                f"--tasks {source}: task {ids[i]} is no longer in the task file"
            )
        row, index = rows[i]
        try:
            task = row_to_task(row, index, base_dir, mapping)
        except (BadRow, KeyError, TypeError, ValueError) as error:
            raise DatasetSourceError(
                f"--tasks {source}: task {ids[i]} could not be read ({error}); was it changed "
                "or removed during the run?"
            ) from error
        reason = unusable_reason(task)
        if reason is not None or task.id != ids[i]:
            raise DatasetSourceError(
                f"--tasks {source}: task {ids[i]} changed during the run ({reason or 'its id'})"
            )
        return task

    return UserTasks(ids, [None if r is None else r[1] for r in rows], build)


def _fixed_user_tasks(
    rows: Iterator[dict[str, Any]],
    fixed: dict[str, list[Any]],
    base_dir: Path | None,
    mapping: dict[str, str],
    source: str,
    result: LoadResult,
) -> UserTasks:
    """The tasks of `fixed`, each from the row with its row number and id (else the first row
    with its id); a task with no row left fails when its episode starts."""
    ids = [str(i) for i in fixed.get("ids", [])]
    numbers = list(fixed.get("rows", [None] * len(ids)))
    wanted = {(n, i) for n, i in zip(numbers, ids)}
    by_number: dict[tuple[Any, str], tuple[dict[str, Any], int]] = {}
    by_id: dict[str, tuple[dict[str, Any], int]] = {}
    for index, row in enumerate(rows):
        result.rows_read = index + 1
        try:
            task_id = row_task_id(row, index, mapping)
        except (KeyError, TypeError, ValueError):
            continue
        if (index, task_id) in wanted:
            by_number[(index, task_id)] = (row, index)
        by_id.setdefault(task_id, (row, index))
    kept = [by_number.get((n, i)) or by_id.get(i) for n, i in zip(numbers, ids)]
    return _lazy_user_tasks(kept, ids, base_dir, mapping, source)


def _task_table(path: Path, split: str | None) -> Path:
    """The metadata or task file to read for `path` (a file, or a folder holding one)."""
    if path.is_file():
        if path.suffix.lower() not in TASK_FILE_SUFFIXES:
            raise DatasetSourceError(
                f"--tasks {path}: expected a .jsonl, .csv or .parquet file, or a folder"
            )
        return path
    folders = [path / split] if split else [path]
    if not split:
        folders += sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        for name in METADATA_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise DatasetSourceError(
        f"--tasks {path}: no metadata.jsonl or metadata.csv"
        + (f" in {path / split}" if split else " in the folder or a split subfolder")
        + " (the Hugging Face imagefolder layout: one row per image with file_name and count)"
    )


def _file_rows(path: Path, reasons: Counter) -> Iterator[dict[str, Any]]:
    """Rows of a .jsonl / .csv / .parquet file; unreadable lines or row groups are counted."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (ValueError, RecursionError):  # bad JSON, bad UTF-8, huge numbers
                    reasons["bad JSON line"] += 1
                    continue
                if isinstance(row, dict):
                    yield row
                else:
                    reasons["row is not an object"] += 1
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            yield from csv.DictReader(f)
    else:
        yield from _parquet_rows(path, reasons)


def _parquet_rows(path: Path, reasons: Counter) -> Iterator[dict[str, Any]]:
    """Rows of a parquet file, one row group at a time: a damaged group loses only its rows."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError on a damaged footer
        raise DatasetSourceError(
            f"--tasks {path}: not a readable parquet file ({error}); re-export it"
        ) from error
    for group in range(parquet.num_row_groups):
        try:
            rows = parquet.read_row_group(group).to_pylist()
        except Exception:  # a damaged row group: skip its rows, keep the others
            reasons["unreadable parquet rows"] += parquet.metadata.row_group(group).num_rows
            continue
        yield from rows


def _hub_rows(repo: str, split: str) -> Iterator[dict[str, Any]]:
    """Rows of a hub dataset, images undecoded (real code; no hub access in this repo's tests)."""
    from boxgym.data.loaders.common import _import_datasets

    datasets = _import_datasets()
    ds = datasets.load_dataset(repo, split=split, streaming=True)
    return iter(ds.decode(False))


def _get(row: dict[str, Any], mapping: dict[str, str], field: str) -> Any:
    column = mapping.get(field)
    if column is not None:
        return row.get(column)
    if field == "file_name":
        for name in IMAGE_COLUMNS:
            if row.get(name) not in (None, ""):
                return row[name]
        return None
    return row.get(field)


def _json_list(value: Any, field: str) -> list[Any] | None:
    """A list cell; CSV cells hold it as JSON text."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise BadRow(f"unparsable {field}", value[:80]) from error
    if not isinstance(value, (list, tuple)):
        raise BadRow(f"unparsable {field}", repr(value)[:80])
    return list(value)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRow(f"unparsable {field}", repr(value)[:80])
    try:
        number = float(value)
    except (ValueError, OverflowError) as error:
        raise BadRow(f"unparsable {field}", repr(value)[:80]) from error
    if number != number or number in (float("inf"), float("-inf")):
        raise BadRow(f"unparsable {field}", repr(value)[:80])
    return number


def _objects(row: dict[str, Any], mapping: dict[str, str], size: tuple[int, int]) -> list[Any]:
    """Ground-truth objects from boxes (with labels from items) or points."""
    width, height = size
    items = _json_list(_get(row, mapping, "items"), "items")
    boxes = _json_list(_get(row, mapping, "boxes"), "boxes")
    points = _json_list(_get(row, mapping, "points"), "points")
    labels = [str(x) for x in items] if items else []
    objects: list[GroundTruthObject] = []
    for i, entry in enumerate(boxes or []):
        label = labels[i] if i < len(labels) else ""
        if isinstance(entry, dict):
            label = str(entry.get("label") or label)
            entry = entry.get("box") or entry.get("bbox")
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            raise BadRow("unparsable boxes", repr(entry)[:80])
        x1, y1, x2, y2 = (_number(v, "boxes") for v in entry)
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise BadRow("box outside the image", f"{entry} in {width}x{height}")
        objects.append(GroundTruthObject(box=(x1, y1, x2, y2), label=" ".join(label.split())))
    if not objects:
        for i, entry in enumerate(points or []):
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise BadRow("unparsable points", repr(entry)[:80])
            x, y = (_number(v, "points") for v in entry)
            if not (0 <= x <= width and 0 <= y <= height):
                raise BadRow("point outside the image", f"{entry} in {width}x{height}")
            label = labels[i] if i < len(labels) else ""
            objects.append(GroundTruthObject(box=None, label=label, point=(x, y)))
    if not objects and labels:
        raise BadRow("items without boxes", "an enumerate task needs boxes for its items")
    return objects


def row_to_task(
    row: dict[str, Any], index: int, base_dir: Path | None, mapping: dict[str, str]
) -> Task:
    """One row -> one `count` (or `enumerate`, when labelled boxes are given) task."""
    image_cell = _get(row, mapping, "file_name")
    image = decode_image(image_cell, base_dir, column=mapping.get("file_name", "file_name"))
    task_id = row_task_id(row, index, mapping)
    objects = _objects(row, mapping, image.size)
    raw_count = _get(row, mapping, "count")
    count = parse_count(raw_count) if raw_count not in (None, "") else len(objects)
    if raw_count in (None, "") and not objects:
        raise BadRow("missing count", "give count, boxes or points")
    if objects and count != len(objects):
        raise BadRow("count differs from the objects", f"count {count}, {len(objects)} objects")
    what = _get(row, mapping, "object")
    question = _get(row, mapping, "question")
    if not isinstance(question, str) or not question.strip():
        question = f"How many {what} are there?" if what else "How many objects are there?"
    labelled = bool(objects) and all(o.box is not None and o.label for o in objects)
    kind = "enumerate" if labelled else "count"
    if kind == "enumerate":
        answer = {"count": count, "items": [o.label for o in objects]}
        question = question.strip()
    else:
        answer = {"count": count}
    return Task(
        id=task_id,
        images=[image],
        question=question.strip(),
        kind=kind,
        objects=objects,
        answer=answer,
        source="user",
        split="user",
        meta={"row": index, "image": image_cell if isinstance(image_cell, str) else None},
    )


def row_task_id(row: dict[str, Any], index: int, mapping: dict[str, str]) -> str:
    """The id of the task a row makes, without decoding its image: the id column, else the
    image's path without its extension, else `row-<index>`."""
    task_id = _get(row, mapping, "id")
    if task_id in (None, ""):
        image_cell = _get(row, mapping, "file_name")
        ref = image_cell.get("path") if isinstance(image_cell, dict) else image_cell
        task_id = str(Path(ref).with_suffix("")) if isinstance(ref, str) and ref else None
    return str(task_id) if task_id not in (None, "") else f"row-{index:06d}"


def add_tasks_arguments(parser: Any) -> None:
    """`--tasks PATH` and `--columns` for a verb that runs over tasks."""
    group = parser.add_argument_group("your tasks")
    group.add_argument(
        "--tasks",
        metavar="PATH",
        help="your tasks: an image folder with metadata.jsonl/.csv (file_name, count, ...), a "
        ".jsonl/.csv/.parquet task file, or a hub dataset id (see docs/datasets.md)",
    )
    group.add_argument(
        "--columns",
        metavar="FIELD=COLUMN,...",
        help="--tasks: your column names, e.g. count=n_screens,question=prompt,id=photo_id",
    )
    group.add_argument("--tasks-split", help="--tasks: a split subfolder or hub split")


def load_tasks_argument(
    args: Any,
    limit: int | None = None,
    lazy: bool = False,
    fixed: dict[str, list[Any]] | None = None,
) -> Sequence[Task]:
    """The tasks `--tasks` names, with a one-line note on stderr of what was skipped and why.

    `lazy` and `fixed` (a resumed run's task list) as in `load_user_tasks`.
    """
    import sys

    result = load_user_tasks(
        args.tasks,
        columns=parse_columns(getattr(args, "columns", None)),
        split=getattr(args, "tasks_split", None),
        limit=limit,
        lazy=lazy,
        fixed=fixed,
    )
    print(f"tasks: {result.summary()}", file=sys.stderr)
    return result.tasks


def tasks_spec(args: Any, tasks: Sequence[Task]) -> dict[str, Any]:
    """What run.json records about `--tasks` (so a `--resume` with other tasks is refused)."""
    return {
        "kind": "user",
        "source": str(args.tasks),
        "columns": parse_columns(getattr(args, "columns", None)),
        "split": getattr(args, "tasks_split", None),
        "n": len(tasks),
    }
