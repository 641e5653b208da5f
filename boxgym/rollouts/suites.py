"""Evaluation suites: fixed, seeded task sets, and the `eval` verb that runs one through a policy.

    boxgym eval --list
    boxgym eval --suite screens-hard --policy hf --out runs/eval-screens-hard
    boxgym eval --suite countbench --data-path ~/data/countbench --policy openai --base-url ...

Scene suites (`<family>-easy`, `<family>-hard` for screens, shapes and clutter) draw their scenes
from seeds reserved for evaluation (starting at 900,000,000, far from the seeds training runs and
`boxgym episodes` use), so a suite is the same task set on every machine and never overlaps
training scenes drawn with small seeds. Dataset suites read a fixed split of a local copy (or the
hub) through `boxgym.data.loaders.load_dataset_tasks`, in row order, up to `--limit` tasks, and
only the rows `boxgym.data.splits` gives the eval role, so no suite shares a row with any SFT
source.
The run directory is the same as `boxgym rollout`'s: episodes, summary (with Avg@k and pass@k
when `--group-size` > 1) and the page.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boxgym.choices import SCENE_FAMILY_NAMES
from boxgym.data.splits import EVAL_SEED_BASE
from boxgym.errors import UserError


@dataclass(frozen=True)
class Suite:
    """One evaluation suite.

    Attributes:
        name: what `--suite` takes.
        description: one line for `--list`.
        family: scene family, or None for a dataset suite.
        difficulty: scene difficulty preset.
        n: tasks in a scene suite; the default limit of a dataset suite.
        seed_base: first scene seed (task i uses seed_base + i).
        dataset: loader name for a dataset suite.
        split: dataset split (None: the loader's default).
    """

    name: str
    description: str
    family: str | None = None
    difficulty: str = "easy"
    n: int = 100
    seed_base: int = EVAL_SEED_BASE
    dataset: str | None = None
    split: str | None = None


def _scene_suites() -> dict[str, Suite]:
    suites = {}
    for f_index, family in enumerate(SCENE_FAMILY_NAMES):
        for l_index, level in enumerate(("easy", "hard")):
            name = f"{family}-{level}"
            suites[name] = Suite(
                name=name,
                description=f"100 {level} {family} scenes (fixed eval seeds)",
                family=family,
                difficulty=level,
                n=100,
                seed_base=EVAL_SEED_BASE + 10_000_000 * (2 * f_index + l_index),
            )
    return suites


SUITES: dict[str, Suite] = {
    **_scene_suites(),
    "nlvr2": Suite(
        "nlvr2",
        "NLVR2 validation: two images, is the statement true?",
        dataset="nlvr2",
        split="validation",
        n=500,
    ),
    "countbench": Suite(
        "countbench",
        "CountBenchQA test, the ~80% of rows held out from SFT: counts 2-10",
        dataset="countbench",
        split="test",
        n=491,
    ),
    "pixmo-count": Suite(
        "pixmo-count",
        "PixMo-Count validation: counts only",
        dataset="pixmo-count",
        split="validation",
        n=540,
    ),
    "aguvis": Suite(
        "aguvis",
        "Smol2Operator aguvis stage 1: GUI pointing (the ~10% of rows held out from SFT)",
        dataset="aguvis-stage-1",
        split="train",
        n=200,
    ),
}


def suite_tasks(
    suite: Suite,
    *,
    data_path: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> tuple[Sequence[Any], dict[str, Any]]:
    """The suite's tasks and the spec recorded in run.json.

    Both kinds are a `LazyTasks`: a scene is drawn, a dataset row's images decoded, when its
    first episode starts (a dataset's rows are read once first, to count bad rows).
    """
    if suite.family is not None:
        from boxgym.data.lazy_tasks import LazyTasks
        from boxgym.data.scenes import make_scene_task, scene_task_id

        n = suite.n if limit is None else min(limit, suite.n)
        family, base, difficulty = suite.family, suite.seed_base, suite.difficulty
        tasks = LazyTasks(
            n,
            build=lambda i: make_scene_task(family, base + i, difficulty),
            task_id=lambda i: scene_task_id(family, base + i, difficulty),
            images_per_task=1,
        )
        return tasks, {"kind": "suite", "suite": suite.name, "n": n}
    from boxgym.data.loaders import load_dataset_tasks

    chosen_split = split or suite.split
    result = load_dataset_tasks(
        suite.dataset,
        path=data_path,
        split=chosen_split,
        limit=limit or suite.n,
        role="eval",
        lazy=True,  # images decoded as episodes start, not all before the run
    )
    if result.skipped:
        print(
            f"{suite.name}: skipped {result.skipped} bad row(s): {dict(result.skip_reasons)}",
            file=sys.stderr,
        )
    if not result.tasks:
        raise ValueError(
            f"suite {suite.name!r} read no tasks from {data_path or 'the hub'} (split {chosen_split})"
        )
    spec = {
        "kind": "suite",
        "suite": suite.name,
        "dataset": suite.dataset,
        "split": chosen_split,
        "limit": limit or suite.n,
        "data_path": data_path,
        "n": len(result.tasks),
    }
    return result.tasks, spec


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options of `eval`."""
    from boxgym.data.loaders.user_tasks import add_tasks_arguments
    from boxgym.rollouts.commands import add_run_arguments

    parser.add_argument("--suite", help="suite name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--data-path", help="dataset suites: local copy of the dataset")
    parser.add_argument("--split", help="dataset suites: split (default: the suite's)")
    parser.add_argument("--limit", type=int, help="at most this many tasks")
    add_tasks_arguments(parser)
    add_run_arguments(parser, verb)


def run(args: argparse.Namespace) -> int:
    """List suites, or run one."""
    from boxgym.rollouts.options import build_run_settings
    from boxgym.rollouts.session import execute_run

    if args.list:
        for suite in SUITES.values():
            print(f"{suite.name:<14} {suite.description}")
        return 0
    settings = build_run_settings(args)
    source, policy_name = settings.source, settings.policy.policy
    if source.tasks:
        from boxgym.data.loaders.user_tasks import load_tasks_argument, tasks_spec

        if not settings.session.out:
            raise UserError("give --out DIR for the run")
        from boxgym.rollouts.run_dir import check_run_folder, fixed_task_list

        out = Path(settings.session.out)
        check_run_folder(out)  # before the tasks are read
        fixed = fixed_task_list(out) if settings.session.resume else None
        tasks = load_tasks_argument(source, limit=args.limit, lazy=True, fixed=fixed)
        title = f"boxgym eval: {source.tasks} ({policy_name})"
        return execute_run(settings, tasks, tasks_spec(source, tasks), title=title)
    if not args.suite:
        print(
            "error: give --suite NAME or --tasks PATH (see `boxgym eval --list`)", file=sys.stderr
        )
        return 2
    if args.suite not in SUITES:
        print(f"error: unknown suite {args.suite!r}; known: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    if not settings.session.out:
        print("error: give --out DIR for the run", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    tasks, spec = suite_tasks(
        SUITES[args.suite], data_path=args.data_path, split=args.split, limit=args.limit
    )
    return execute_run(settings, tasks, spec, title=f"boxgym eval: {args.suite} ({policy_name})")
