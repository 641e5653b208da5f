"""PixMo-Count (`allenai/pixmo-count`): how many of one kind of object, with points in train.

Row schema on the hub: `image_url` (str), `image_sha256` (str), `count` (int), `points`
(x, y in pixels; a list of {"x", "y"} or, as `datasets` returns a sequence feature, {"x": [...],
"y": [...]}; empty on validation/test), `label` (str, the object name).

The hub stores URLs, not images, and nothing is downloaded here. A row is usable when it
carries the image itself: an `image` column (bytes, as in copies made with the images
embedded), an `image_path` column, or an `image_url` that is a local path or file:// URL. A
URL-only row is skipped as "image not available offline". Where `image_sha256` is given, the
image's bytes must hash to it ("image sha256 mismatch" otherwise): a copy that re-encoded the
images fails this check on purpose.

Rows with one point per counted object become `enumerate` tasks whose objects are points
(`GroundTruthObject(box=None, point=(x, y))`); the others become `count` tasks. The points are
kept as ground truth (episodes, galleries, the reference answer), but the reward does not
score grounding on these tasks: `grounding_f1` applies only when every object has a box
(`Task.has_boxes`), so they are scored on the count, the items and the format.
"""

from __future__ import annotations

import hashlib
from typing import Any

from boxgym.data.loaders.cells import (
    BadRow,
    image_bytes,
    image_from_bytes,
    normalize_object_label,
    parse_count,
    require_text,
)
from boxgym.data.loaders.common import DatasetLoader, RowContext
from boxgym.data.task import GroundTruthObject, Task

REPO = "allenai/pixmo-count"
COUNT_QUESTION = "How many {label} are in this image?"
ENUMERATE_QUESTION = "Find every {label} in this image. How many are there?"


def parse_points(value: Any) -> list[tuple[float, float]]:
    """Points as a list of (x, y) from either layout; `BadRow` when malformed."""
    if value is None:
        return []
    if isinstance(value, dict):
        xs, ys = value.get("x"), value.get("y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise BadRow("unparsable points", repr(value)[:80])
        pairs = list(zip(xs, ys))
    elif isinstance(value, list):
        pairs = []
        for p in value:
            if not isinstance(p, dict):
                raise BadRow("unparsable points", repr(p)[:80])
            pairs.append((p.get("x"), p.get("y")))
    else:
        raise BadRow("unparsable points", type(value).__name__)
    out = []
    for x, y in pairs:
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            raise BadRow("unparsable points", f"({x!r}, {y!r})")
        if x != x or y != y:  # NaN
            raise BadRow("unparsable points", "NaN coordinate")
        out.append((float(x), float(y)))
    return out


def _image_cell(row: dict[str, Any]) -> tuple[Any, str]:
    for column in ("image", "image_path"):
        if row.get(column) is not None:
            return row[column], column
    url = row.get("image_url")
    if isinstance(url, str) and url.strip():
        return url.strip(), "image_url"  # local paths and file:// work; http(s) is refused
    raise BadRow("missing image", "no image, image_path or image_url")


def row_key(row: dict[str, Any], ctx: RowContext) -> str:
    return f"pixmo-count-{ctx.split}-{ctx.index:06d}"


def row_to_tasks(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """One PixMo-Count row -> one `enumerate` (points known) or `count` task."""
    label = normalize_object_label(require_text(row, "label"))
    count = parse_count(row.get("count"))
    points = parse_points(row.get("points"))
    cell, column = _image_cell(row)
    data = image_bytes(cell, ctx.base_dir, column=column)
    expected = row.get("image_sha256")
    if isinstance(expected, str) and expected.strip():
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected.strip().lower():
            raise BadRow("image sha256 mismatch", f"{digest[:12]} != {expected[:12]}")
    image = image_from_bytes(data, column=column)
    width, height = image.size
    task_id = row_key(row, ctx)
    meta = {
        "uid": task_id,
        "dataset": REPO,
        "revision": ctx.revision,
        "row": ctx.index,
        "image_url": row.get("image_url"),
        "image_sha256": expected,
        "image_sizes": [[width, height]],
        "raw_label": row.get("label"),
    }
    if points and len(points) == count:
        for x, y in points:
            if not (0 <= x <= width and 0 <= y <= height):
                raise BadRow("point outside image", f"({x}, {y}) in {width}x{height}")
        objects = [GroundTruthObject(box=None, label=label, point=p) for p in points]
        return [
            Task(
                id=task_id,
                images=[image],
                question=ENUMERATE_QUESTION.format(label=label),
                kind="enumerate",
                objects=objects,
                answer={"count": count, "items": [label] * count},
                source="pixmo-count",
                split=ctx.split,
                meta=meta,
            )
        ]
    if points:
        meta["points_ignored"] = f"{len(points)} points for count {count}"
    return [
        Task(
            id=task_id,
            images=[image],
            question=COUNT_QUESTION.format(label=label),
            kind="count",
            answer={"count": count},
            source="pixmo-count",
            split=ctx.split,
            meta=meta,
        )
    ]


LOADER = DatasetLoader(
    name="pixmo-count",
    repo=REPO,
    default_split="validation",
    convert=row_to_tasks,
    row_key=row_key,
    description="PixMo-Count: count one kind of object; per-object points in train (enumerate).",
)
