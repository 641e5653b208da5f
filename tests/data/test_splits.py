"""Every eval suite is disjoint from every SFT/GRPO source, by construction."""

from __future__ import annotations

import re

import pytest

from boxgym.choices import DATASET_SOURCES
from boxgym.data.loaders import load_dataset_tasks
from boxgym.data.loaders.samples import write_sample_dataset
from boxgym.data.splits import EVAL_SEED_BASE, row_role
from boxgym.rollouts.suites import SUITES, suite_tasks
from boxgym.sections import MixtureSection, TaskSection
from boxgym.train.mixture import DEFAULT_SPLITS, _dataset_tasks

ROWS = 40  # enough rows for both sides of a hash split


def row_of(task_id: str) -> str:
    """The dataset row a task comes from: `<dataset>-<split>-<row index>` (aguvis appends the
    turn, so one row may give several tasks); NLVR2 ids are the dataset's own, one per row."""
    match = re.match(r"^(.*-(?:train|validation|test)-\d+)", task_id)
    return match.group(1) if match else task_id


def test_scene_suites_use_seeds_training_cannot_reach() -> None:
    for suite in SUITES.values():
        if suite.family is not None:
            assert suite.seed_base >= EVAL_SEED_BASE
    with pytest.raises(ValueError, match="eval suites' scenes start"):
        MixtureSection(first_scene_seed=EVAL_SEED_BASE - 10)
    with pytest.raises(ValueError, match="eval suites' scenes start"):
        TaskSection(first_seed=EVAL_SEED_BASE - 5, num_tasks=10)


@pytest.mark.parametrize(
    "suite", [s for s in SUITES.values() if s.dataset is not None], ids=lambda s: s.name
)
def test_dataset_suite_shares_no_row_with_any_training_source(tmp_path, suite) -> None:
    splits = {suite.split, DEFAULT_SPLITS.get(suite.dataset, "train")}
    path = write_sample_dataset(
        suite.dataset, tmp_path / "copy", layout="jsonl", splits=tuple(splits), n=ROWS
    )
    eval_tasks, _ = suite_tasks(suite, data_path=str(path), limit=10_000)
    eval_rows = {row_of(t.id) for t in eval_tasks}
    assert eval_rows
    for source in DATASET_SOURCES:
        if source != suite.dataset:
            continue
        for split in splits:  # the SFT default split, and the suite's own split if asked for
            train = load_dataset_tasks(source, path=str(path), split=split, role="train").tasks
            assert not eval_rows & {row_of(t.id) for t in train}
        train_tasks = _dataset_tasks(source, str(path), DEFAULT_SPLITS.get(source, "train"), ROWS)
        assert not eval_rows & {row_of(t.id) for t in train_tasks}
    # the two roles together cover the suite's split: nothing is silently lost
    everything = load_dataset_tasks(suite.dataset, path=str(path), split=suite.split).tasks
    train = load_dataset_tasks(suite.dataset, path=str(path), split=suite.split, role="train")
    assert {row_of(t.id) for t in everything} == eval_rows | {row_of(t.id) for t in train.tasks}


def test_hash_split_shares_are_about_as_documented() -> None:
    share = sum(row_role("countbench", "test", i) == "eval" for i in range(2000)) / 2000
    assert 0.76 < share < 0.84
    share = sum(row_role("aguvis-stage-1", "train", i) == "eval" for i in range(2000)) / 2000
    assert 0.07 < share < 0.13
    assert row_role("nlvr2", "validation", 3) == "eval" and row_role("nlvr2", "train", 3) == "train"


def test_training_on_an_eval_split_gets_no_rows(tmp_path) -> None:
    path = write_sample_dataset("nlvr2", tmp_path / "n", layout="jsonl", splits=("validation",))
    with pytest.raises(ValueError, match="no training rows"):
        _dataset_tasks("nlvr2", str(path), "validation", 4)
