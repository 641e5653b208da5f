"""Train/eval row partitions: SFT sources and eval suites never share a row, by construction.

Every dataset row has one role, "train" (SFT and GRPO may use it) or "eval" (only the eval
suites score it), decided from the dataset, the split and the row's index alone:

| dataset | train role | eval role |
| --- | --- | --- |
| nlvr2 | split `train` | split `validation` (dev) and `test` |
| pixmo-count | split `train` | splits `validation` and `test` |
| countbench | split `test`, rows whose hash bucket is >= 0.8 (about 20%) | split `test`, bucket < 0.8 (about 80%) |
| aguvis-stage-1 | split `train`, bucket >= 0.1 | split `train`, bucket < 0.1 (about 10%) |
| aguvis-stage-2 | split `train` | none (no suite) |

The bucket of a row is `sha256("<dataset>/<split>/<row index>")` read as a number in [0, 1):
stable for a given copy of the dataset, independent of limits and of which other rows are read.
CountBenchQA has only a test split, so the `countbench` suite is about 80% of it; its scores
are not the full-benchmark numbers (say so when comparing). Loaders take `role=` and drop the
other role's rows silently (they are not bad rows). Scene suites use seeds from 900,000,000 up
(`EVAL_SEED_BASE`); training configs refuse scene seeds that could reach it
(`check_training_seeds`).
"""

from __future__ import annotations

import hashlib

ROLES: tuple[str, ...] = ("train", "eval")
# Scene suites draw their scenes from seeds at and above this; training seeds stay below it.
EVAL_SEED_BASE = 900_000_000
# Splits whose rows all belong to one role; splits not listed here are shared by hash.
WHOLE_SPLITS: dict[str, dict[str, str]] = {
    "nlvr2": {"train": "train", "validation": "eval", "test": "eval"},
    "pixmo-count": {"train": "train", "validation": "eval", "test": "eval"},
    "aguvis-stage-2": {"train": "train"},
}
# Shared splits: the share of rows (by hash bucket) that belongs to the eval role.
EVAL_SHARE: dict[str, float] = {"countbench": 0.8, "aguvis-stage-1": 0.1}


def row_bucket(dataset: str, split: str, index: int) -> float:
    """A number in [0, 1) fixed by (dataset, split, row index)."""
    digest = hashlib.sha256(f"{dataset}/{split}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def row_role(dataset: str, split: str, index: int) -> str:
    """ "train" or "eval": the role of row `index` of `dataset`'s `split` (see the module)."""
    whole = WHOLE_SPLITS.get(dataset, {})
    if split in whole:
        return whole[split]
    if dataset in EVAL_SHARE:
        return "eval" if row_bucket(dataset, split, index) < EVAL_SHARE[dataset] else "train"
    return "train"


def check_role(role: str | None) -> None:
    """Raise ValueError for a role that is neither None nor one of `ROLES`."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")


def check_training_seeds(where: str, first_seed: int, last_seed: int) -> None:
    """Raise ValueError when training scene seeds [first_seed, last_seed] reach the eval seeds."""
    if first_seed < 0 or last_seed >= EVAL_SEED_BASE:
        raise ValueError(
            f"{where} uses scene seeds {first_seed}..{last_seed}; training seeds must lie in "
            f"0..{EVAL_SEED_BASE - 1} (the eval suites' scenes start at {EVAL_SEED_BASE})"
        )
