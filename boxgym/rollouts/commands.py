"""The `episodes`, `rollout` and `view` verbs.

    boxgym episodes --scene screens --policy oracle --n 16 --seed 0 --out DIR
    boxgym rollout --policy hf --scene screens --n 64 --group-size 4 --out DIR [--resume]
    boxgym view DIR

    boxgym rollout ... --out DIR --shard 0/4     # one of four shards of one run, into one folder

The run directory and its rules (`--resume`, `--overwrite`, locks) are `boxgym.rollouts.run_dir`;
shards are `boxgym.rollouts.shards`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from boxgym.choices import SCENE_FAMILY_NAMES
from boxgym.errors import UserError, report_failures
from boxgym.flags import add_flags
from boxgym.rollouts.session import (  # noqa: F401 - importable from here, as before
    execute_run,
    make_env_factory,
    print_summary,
    write_run_outputs,
)

# ---------------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options of `episodes`, `rollout` and `view`."""
    from boxgym.data.loaders.user_tasks import add_tasks_arguments
    from boxgym.rollouts.options import TaskSource

    if verb == "view":
        parser.add_argument("run_dir", help="a run directory (holding episodes.jsonl)")
        parser.add_argument("--title", help="page title (default: the directory name)")
        return
    add_flags(parser, TaskSource, ("scene", "difficulty", "n"))
    add_tasks_arguments(parser)
    add_run_arguments(parser, verb)


def add_run_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options every run verb shares (policy, decoding, env, output), derived from the fields of
    the options they fill (`boxgym.rollouts.options`, `EnvConfig`)."""
    from boxgym.env.config import EnvConfig
    from boxgym.rollouts.options import (
        ENV_FLAGS,
        POLICY_NAMES,
        SCRIPTED_POLICIES,
        PolicyOptions,
        SessionOptions,
    )

    scripted = verb == "episodes"
    session_flags = [f.name for f in dataclasses.fields(SessionOptions) if f.name != "zero_shot"]
    add_flags(
        parser.add_argument_group("run"),
        SessionOptions,
        session_flags,
        defaults={"group_size": 4 if verb == "rollout" else 1},
        required=() if verb == "eval" else ("out",),
    )

    cfg = parser.add_argument_group("config")
    cfg.add_argument(
        "--config",
        metavar="FILE",
        help="a run config (the YAML training reads): model, env (family, difficulty, "
        "scene_knobs, env_kwargs, reward_kwargs), tasks.path, decoding; flags given here win",
    )
    cfg.add_argument(
        "--set",
        dest="config_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set env.scene_knobs.image_size=224 (repeatable)",
    )

    policy_flags = [f.name for f in dataclasses.fields(PolicyOptions)]
    add_flags(
        parser.add_argument_group("policy"),
        PolicyOptions,
        policy_flags[:2] if scripted else policy_flags,
        defaults={"policy": "oracle" if scripted else "hf"},
        choices={"policy": SCRIPTED_POLICIES if scripted else POLICY_NAMES},
    )
    env = parser.add_argument_group("environment")
    add_flags(env, EnvConfig, ENV_FLAGS)
    if not scripted:
        add_flags(env, SessionOptions, ("zero_shot",))


# ---------------------------------------------------------------------------------- tasks


def parse_scenes(text: str) -> list[str]:
    """Scene families from 'screens', 'screens,shapes' or 'all'."""
    if text == "all":
        return list(SCENE_FAMILY_NAMES)
    scenes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scenes if s not in SCENE_FAMILY_NAMES]
    if unknown or not scenes:
        raise ValueError(
            f"unknown scene family {unknown or text!r}; choose from {', '.join(SCENE_FAMILY_NAMES)} or 'all'"
        )
    return scenes


def scene_tasks(scenes: list[str], n: int, seed: int, difficulty: str, **knobs: Any) -> Any:
    """n procedural tasks alternating over `scenes`; task i uses scene seed seed*1e6 + i.

    The tasks are a `LazyTasks`: each scene is drawn when its first episode starts, so memory
    does not grow with n.
    """
    from boxgym.data.lazy_tasks import LazyTasks
    from boxgym.data.scenes import make_scene_task, resolve_knobs, scene_task_id

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    for scene in scenes:
        resolve_knobs(scene, difficulty, **knobs)  # bad knobs fail now, not at episode 1

    def arguments(i: int) -> tuple[str, int, str]:
        return scenes[i % len(scenes)], seed * 1_000_000 + i, difficulty

    return LazyTasks(
        n,
        build=lambda i: make_scene_task(*arguments(i), **knobs),
        task_id=lambda i: scene_task_id(*arguments(i), **knobs),
        images_per_task=1,  # a procedural scene is one image
    )


def run_view(args: argparse.Namespace) -> int:
    from boxgym.rollouts.shards import is_run_folder

    run_dir = Path(args.run_dir)
    if not is_run_folder(run_dir):
        raise UserError(
            f"{run_dir} has no episodes.jsonl and no shards; pass a run directory (--out of a run)"
        )
    seed = 0
    # no or unreadable run.json: the page still works, bootstrap seed 0
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        seed = int(json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("seed", 0))
    summary = write_run_outputs(run_dir, seed=seed, title=args.title)
    print_summary(summary)
    print(f"page: {(run_dir / 'index.html').resolve()}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch `episodes`, `rollout` and `view`."""
    from boxgym.data.loaders.user_tasks import load_tasks_argument, tasks_spec
    from boxgym.rollouts.options import build_run_settings
    from boxgym.rollouts.run_dir import check_run_folder, fixed_task_list
    from boxgym.rollouts.session import MAX_TASKS, check_count

    if args.verb == "view":
        return run_view(args)
    settings = build_run_settings(args)
    source, out = settings.source, Path(settings.session.out)
    if source.n is not None:
        check_count("--n", source.n, MAX_TASKS)
    if source.tasks:
        # decoded as episodes start; a resumed run keeps the task list it started with
        check_run_folder(out)  # before the tasks are read
        fixed = fixed_task_list(out) if settings.session.resume else None
        tasks = load_tasks_argument(source, limit=source.n, lazy=True, fixed=fixed)
        return execute_run(settings, tasks, tasks_spec(source, tasks))
    n = source.n if source.n is not None else (16 if args.verb == "episodes" else 64)
    scenes = parse_scenes(source.scene or "screens")
    difficulty = source.difficulty or "easy"
    tasks = scene_tasks(scenes, n, settings.session.seed, difficulty, **source.knobs)
    spec = {"kind": "scenes", "scenes": scenes, "n": n, "difficulty": difficulty}
    if source.knobs:
        spec["scene_knobs"] = source.knobs
    return execute_run(settings, tasks, spec)


def main(argv: list[str] | None = None) -> int:
    """`python -m boxgym.rollouts.commands VERB ...`: the run verbs without the full CLI."""
    import importlib

    modules = {
        "episodes": "boxgym.rollouts.commands",
        "rollout": "boxgym.rollouts.commands",
        "view": "boxgym.rollouts.commands",
        "eval": "boxgym.rollouts.suites",
    }
    parser = argparse.ArgumentParser(prog="python -m boxgym.rollouts.commands")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, module_name in modules.items():
        verb_parser = sub.add_parser(verb)
        importlib.import_module(module_name).add_arguments(verb_parser, verb)
    args = parser.parse_args(argv)
    return report_failures(lambda: importlib.import_module(modules[args.verb]).run(args))


if __name__ == "__main__":
    sys.exit(main())
