"""NLVR2 (`pingzhili/nlvr2`): two photographs and a statement; is the statement true?

Row schema: `identifier` (str, "split-set-pair-sentence", e.g. "dev-850-0-0"), `sentence` (str),
`label` (bool, 0/1 or "True"/"False"), `image0`, `image1` (images). Each row becomes one
`verify` task with both images (left first) and answer `{"value": bool}`; `Task.id` is the
identifier, so ids match the published data.

Several sentences are written for the same image pair, so a random split by row would show a
model the same pair in training and evaluation. `pair_id` drops the sentence part of the
identifier, and `assign_split` hashes the pair id: every sentence of one pair lands on the same
side, deterministically, whatever order the rows come in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from boxgym.data.loaders.cells import BadRow, decode_image, parse_bool, require_text
from boxgym.data.loaders.common import DatasetLoader, RowContext
from boxgym.data.task import Task

REPO = "pingzhili/nlvr2"
QUESTION = (
    "Here are two images, left then right. Is this statement true for the pair? "
    'Statement: "{sentence}" Answer true or false.'
)


def pair_id(identifier: str, level: str = "pair") -> str:
    """The image pair (or, with level="set", the image set) an NLVR2 identifier belongs to.

    "dev-850-0-0" -> "dev-850-0" (pair) or "dev-850" (set). Grouping by set is stricter: pairs
    of one set were drawn from the same search results.

    Raises:
        ValueError: the identifier does not have the split-set-pair-sentence shape.
    """
    parts = identifier.strip().split("-")
    if len(parts) < 4 or not all(parts[1:]):
        raise ValueError(f"NLVR2 identifier {identifier!r} is not split-set-pair-sentence")
    if level == "pair":
        return "-".join(parts[:-1])
    if level == "set":
        return "-".join(parts[:-2])
    raise ValueError(f"level must be 'pair' or 'set', got {level!r}")


def assign_split(
    identifier: str, *, eval_fraction: float = 0.1, salt: str = "boxgym", level: str = "pair"
) -> str:
    """ "train" or "validation" for a row, from a hash of its pair id (never of the row).

    Args:
        identifier: the row's NLVR2 identifier.
        eval_fraction: share of pairs (not rows) sent to "validation", in [0, 1].
        salt: changes the partition while keeping it deterministic.
        level: "pair" or "set" (see `pair_id`).
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    key = f"{salt}:{pair_id(identifier, level)}".encode()
    bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "validation" if bucket < eval_fraction else "train"


def split_tasks(
    tasks: Iterable[Task], *, eval_fraction: float = 0.1, salt: str = "boxgym", level: str = "pair"
) -> dict[str, list[Task]]:
    """Partitions NLVR2 tasks into {"train": [...], "validation": [...]} by `assign_split`."""
    out: dict[str, list[Task]] = {"train": [], "validation": []}
    for task in tasks:
        side = assign_split(
            task.meta.get("uid", task.id), eval_fraction=eval_fraction, salt=salt, level=level
        )
        out[side].append(task)
    return out


def row_key(row: dict[str, Any], ctx: RowContext) -> str:
    return str(row.get("identifier") or f"nlvr2-{ctx.split}-{ctx.index:06d}")


def row_to_tasks(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """One NLVR2 row -> one `verify` task; `BadRow` for unusable rows."""
    identifier = require_text(row, "identifier")
    try:
        pair = pair_id(identifier)
    except ValueError as exc:
        raise BadRow("malformed identifier", identifier) from exc
    sentence = require_text(row, "sentence")
    value = parse_bool(row.get("label"))
    images = [decode_image(row.get(c), ctx.base_dir, column=c) for c in ("image0", "image1")]
    meta = {
        "uid": identifier,
        "pair_id": pair,
        "dataset": REPO,
        "revision": ctx.revision,
        "row": ctx.index,
        "image_sizes": [list(im.size) for im in images],
    }
    return [
        Task(
            id=identifier,
            images=images,
            question=QUESTION.format(sentence=sentence),
            kind="verify",
            answer={"value": value},
            source="nlvr2",
            split=ctx.split,
            meta=meta,
        )
    ]


LOADER = DatasetLoader(
    name="nlvr2",
    repo=REPO,
    default_split="validation",
    convert=row_to_tasks,
    row_key=row_key,
    description="NLVR2: two images + a statement -> true/false (verify).",
)
