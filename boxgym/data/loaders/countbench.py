"""CountBenchQA (`vikhyatk/CountBenchQA`): an image, a counting question, the number (2-10).

Row schema: `image` (image), `question` (str), `number` (int). Each row becomes a `count` task
with answer `{"count": number}` and no objects (the dataset gives no locations). The hub has
only a "test" split (491 rows); task ids are "countbench-test-000012" (row position), stable for
a fixed revision.
"""

from __future__ import annotations

from typing import Any

from boxgym.data.loaders.cells import decode_image, parse_count, require_text
from boxgym.data.loaders.common import DatasetLoader, RowContext
from boxgym.data.task import Task

REPO = "vikhyatk/CountBenchQA"


def row_key(row: dict[str, Any], ctx: RowContext) -> str:
    return f"countbench-{ctx.split}-{ctx.index:06d}"


def row_to_tasks(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """One CountBenchQA row -> one `count` task; `BadRow` for unusable rows."""
    question = require_text(row, "question")
    count = parse_count(row.get("number"))
    image = decode_image(row.get("image"), ctx.base_dir, column="image")
    return [
        Task(
            id=row_key(row, ctx),
            images=[image],
            question=question,
            kind="count",
            answer={"count": count},
            source="countbench",
            split=ctx.split,
            meta={
                "uid": row_key(row, ctx),
                "dataset": REPO,
                "revision": ctx.revision,
                "row": ctx.index,
                "image_sizes": [list(image.size)],
            },
        )
    ]


LOADER = DatasetLoader(
    name="countbench",
    repo=REPO,
    default_split="test",
    convert=row_to_tasks,
    row_key=row_key,
    description="CountBenchQA: image + counting question -> count (2-10), no locations.",
)
