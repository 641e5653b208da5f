"""Evaluation suites: fixed scene sets, dataset suites on local copies, the `eval` verb."""

from __future__ import annotations

import json

import pytest

from boxgym.data.loaders.samples import write_sample_dataset
from boxgym.rollouts.commands import main as run_verbs
from boxgym.rollouts.store import read_episodes
from boxgym.rollouts.suites import SUITES, suite_tasks


def test_every_family_has_easy_and_hard_suites_with_disjoint_fixed_seeds() -> None:
    for family in ("screens", "shapes", "clutter"):
        for level in ("easy", "hard"):
            assert SUITES[f"{family}-{level}"].difficulty == level
    scene = [s for s in SUITES.values() if s.family]
    seeds = [set(range(s.seed_base, s.seed_base + s.n)) for s in scene]
    assert sum(len(s) for s in seeds) == len(set().union(*seeds))
    a, _ = suite_tasks(SUITES["shapes-hard"], limit=3)
    b, _ = suite_tasks(SUITES["shapes-hard"], limit=3)
    assert [t.id for t in a] == [t.id for t in b]
    assert all(t.meta["difficulty"] == "hard" for t in a)


def test_eval_list_and_errors(capsys) -> None:
    assert run_verbs(["eval", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "screens-hard" in listed and "countbench" in listed
    assert run_verbs(["eval", "--suite", "nope", "--out", "x"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_eval_scene_suite_writes_a_run(tmp_path) -> None:
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--suite",
        "clutter-easy",
        "--limit",
        "3",
        "--policy",
        "oracle",
        "--no-progress",
        "--no-page",
        "--out",
        str(out),
    ]
    assert run_verbs(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 3 and summary["metrics"]["count_accuracy"]["mean"] == 1.0
    assert json.loads((out / "run.json").read_text())["tasks"]["suite"] == "clutter-easy"


@pytest.mark.parametrize(
    ("suite", "dataset", "split"),
    [
        ("countbench", "countbench", "test"),
        ("nlvr2", "nlvr2", "validation"),
        ("aguvis", "aguvis-stage-1", "train"),
    ],
)
def test_dataset_suites_run_the_oracle_on_a_local_copy(tmp_path, suite, dataset, split) -> None:
    path = write_sample_dataset(
        dataset, tmp_path / dataset, layout="jsonl", splits=(split,), bad_rows=True
    )
    out = tmp_path / "run"
    argv = [
        "eval",
        "--suite",
        suite,
        "--data-path",
        str(path),
        "--policy",
        "oracle",
        "--no-progress",
        "--no-page",
        "--out",
        str(out),
    ]
    assert run_verbs(argv) == 0
    episodes = read_episodes(out).episodes
    assert episodes and all(ep["metrics"]["success"] == 1.0 for ep in episodes)
    assert all(ep["reward"] == pytest.approx(ep["metrics"]["max_reward"]) for ep in episodes)


@pytest.mark.parametrize(
    ("suite", "dataset", "split"),
    [
        ("countbench", "countbench", "test"),
        ("nlvr2", "nlvr2", "validation"),
        ("pixmo-count", "pixmo-count", "validation"),
    ],
)
def test_zero_shot_eval_scores_plain_answers(tmp_path, suite, dataset, split) -> None:
    """`eval --no-tools`: no tools, a plain reply (the oracle answers in words), scored right."""
    path = write_sample_dataset(dataset, tmp_path / dataset, layout="jsonl", splits=(split,))
    out = tmp_path / "run"
    argv = ["eval", "--suite", suite, "--data-path", str(path), "--no-tools", "--policy"]
    argv += ["oracle", "--no-progress", "--no-page", "--out", str(out)]
    assert run_verbs(argv) == 0
    episodes = read_episodes(out).episodes
    assert episodes and all(ep["failure"] == "none" for ep in episodes)
    assert all(
        len(ep["turns"]) == 1 and "<tool_call>" not in ep["turns"][0]["assistant"]
        for ep in episodes
    )
    assert json.loads((out / "run.json").read_text())["zero_shot"] is True


def test_scene_suite_tasks_are_drawn_on_access_with_the_eager_ids() -> None:
    from boxgym.data.scenes import make_scene_task

    suite = SUITES["screens-easy"]
    tasks, spec = suite_tasks(suite, limit=3)
    assert spec["n"] == len(tasks) == 3
    assert [tasks.task_id(i) for i in range(3)] == [
        make_scene_task("screens", suite.seed_base + i, "easy").id for i in range(3)
    ]
    drawn = make_scene_task("screens", suite.seed_base + 2, "easy")
    assert tasks[2].ground_truth() == drawn.ground_truth()
    assert tasks[2].images[0].tobytes() == drawn.images[0].tobytes()
