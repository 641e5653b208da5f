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
import json
import sys
from pathlib import Path
from typing import Any

from boxgym.choices import DIFFICULTY_NAMES, SCENE_FAMILY_NAMES
from boxgym.errors import UserError, report_failures
from boxgym.rollouts.session import (  # noqa: F401 - importable from here, as before
    execute_run,
    make_env_factory,
    print_summary,
    write_run_outputs,
)

# Episodes in flight by default. The lockstep runner stores an episode when it ends; with hf on
# a CPU one turn of 64 conversations takes minutes, so fewer live episodes get results on disk
# (and on the progress bar) sooner, at little cost to the batch's throughput.
DEFAULT_MAX_LIVE = {"hf": 16}
SCRIPTED_POLICIES = ("oracle", "noisy", "random")


# ---------------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options of `episodes`, `rollout` and `view`."""
    from boxgym.data.loaders.user_tasks import add_tasks_arguments

    if verb == "view":
        parser.add_argument("run_dir", help="a run directory (holding episodes.jsonl)")
        parser.add_argument("--title", help="page title (default: the directory name)")
        return
    scripted = verb == "episodes"
    parser.add_argument(
        "--scene",
        help="scene family, a comma-separated list of them, or 'all' (tasks alternate families; "
        "default: the config's env.family, else screens)",
    )
    parser.add_argument(
        "--difficulty",
        choices=DIFFICULTY_NAMES,
        help="scene difficulty (default: the config's env.difficulty, else easy)",
    )
    parser.add_argument(
        "--n",
        type=int,
        help=f"number of tasks (default {16 if scripted else 64}; with --tasks: all of them)",
    )
    add_tasks_arguments(parser)
    add_run_arguments(parser, verb)


def add_run_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Options every run verb shares (policy, decoding, env, output)."""
    scripted = verb == "episodes"
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=verb != "eval", help="run directory to write")
    run.add_argument(
        "--seed", type=int, default=0, help="run seed: tasks, envs and sampling derive from it"
    )
    run.add_argument(
        "--group-size", type=int, default=1 if verb != "rollout" else 4, help="samples per task (G)"
    )
    run.add_argument(
        "--resume", action="store_true", help="finish the missing episodes of an existing run"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="delete an existing run in --out first"
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N (tasks I, I+N, I+2N, ...) into the shared --out; start the N "
        "shards from any processes or machines that share the folder (docs/rollouts.md)",
    )
    run.add_argument(
        "--batch-size", type=int, help="most conversations per policy call (default: all live)"
    )
    run.add_argument(
        "--max-live",
        type=int,
        help="most episodes in flight at once (memory bound; default 64, 16 for --policy hf so "
        "that on a CPU the first episodes finish, and are stored, within minutes)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running episodes (default 1). A scripted policy runs whole episodes in "
        "each; a model policy (hf, vllm, openai) stays in this process and batches over every "
        "live episode while the workers run the envs, recording and image storage",
    )
    run.add_argument(
        "--policy-in-parent", action="store_true", help=argparse.SUPPRESS
    )  # scripted policies with --workers as a model policy runs (tests, benchmarks)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-page", action="store_true", help="do not write index.html")
    run.add_argument(
        "--policy-delay", dest="policy_delay_s", type=float, default=0.0, help=argparse.SUPPRESS
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

    pol = parser.add_argument_group("policy")
    choices = (
        ("oracle", "noisy", "random")
        if scripted
        else ("oracle", "noisy", "random", "hf", "vllm", "openai")
    )
    pol.add_argument("--policy", default="oracle" if scripted else "hf", choices=choices)
    pol.add_argument(
        "--calls-per-turn",
        type=int,
        help="scripted policies: calls per assistant turn (default: the env's max_calls_per_turn)",
    )
    if not scripted:
        pol.add_argument(
            "--model", help="checkpoint path or name (default: the tiny offline model)"
        )
        pol.add_argument("--adapter", help="LoRA adapter directory")
        pol.add_argument("--temperature", type=float)
        pol.add_argument("--top-p", type=float)
        pol.add_argument("--top-k", type=int)
        pol.add_argument("--max-new-tokens", type=int)
        pol.add_argument("--device", help="hf: auto, cpu, cuda, ...")
        pol.add_argument("--dtype", help="hf: auto, bfloat16, float16, float32")
        pol.add_argument(
            "--base-url",
            action="append",
            help="openai: the server's /v1 URL; repeat it for replicas (requests round-robin)",
        )
        pol.add_argument(
            "--dialect",
            choices=("vllm", "generic"),
            help="openai: 'vllm' (vllm serve: tool_choice none, special tokens kept; default) "
            "or 'generic' (standard fields only: hosted APIs, transformers serve)",
        )
        pol.add_argument("--api-key", help="openai: API key (default: none)")
        pol.add_argument("--max-concurrency", type=int, help="openai: requests in flight at once")
        pol.add_argument(
            "--timeout", type=float, help="openai: seconds per request, whole (default 120)"
        )
        pol.add_argument(
            "--max-retries", type=int, help="openai: further attempts after a failure (default 3)"
        )
        pol.add_argument("--gpu-memory-utilization", type=float, help="vllm: GPU memory fraction")
        pol.add_argument("--max-model-len", type=int, help="vllm: context length")
        pol.add_argument("--tensor-parallel-size", type=int, help="vllm: GPUs one engine spans")
        pol.add_argument(
            "--limit-mm-per-prompt",
            type=int,
            help="vllm: images per prompt at most (default: the most an episode can hold)",
        )

    env = parser.add_argument_group("environment")
    env.add_argument("--max-turns", type=int, help="assistant turns before truncation")
    env.add_argument("--max-calls-per-turn", type=int, help="calls run per turn")
    env.add_argument("--max-calls", type=int, help="calls per episode before truncation")
    env.add_argument(
        "--frame", choices=("qwen", "pixels", "unit"), help="coordinate frame (default qwen)"
    )
    env.add_argument(
        "--draw-box-returns", choices=("image", "crop", "both", "text"), help="what draw_box shows"
    )
    env.add_argument("--max-image-pixels", type=int, help="area cap of every image shown")
    env.add_argument(
        "--no-system-prompt", action="store_true", help="start without the system message"
    )
    if not scripted:
        env.add_argument(
            "--no-tools",
            action="store_true",
            help="zero-shot: no tools, one plain reply, the answer read out of the text "
            "(boxgym.env.zero_shot; scripted policies answer in words)",
        )


# ---------------------------------------------------------------------------------- config


def apply_run_config(args: argparse.Namespace) -> Any:
    """Read `--config` / `--set` (validated, `boxgym.train.config.RunConfig`) into `args`.

    A value given as a flag wins; the config fills what was not given. Returns the config, or
    None when neither option was used.
    """
    if not getattr(args, "config", None) and not getattr(args, "config_overrides", None):
        return None
    from boxgym.train.config import RunConfig, load_config

    config = load_config(RunConfig, args.config, args.config_overrides)

    def fill(name: str, value: Any) -> None:
        if getattr(args, name, None) is None and value is not None:
            setattr(args, name, value)

    fill("scene", config.env.family)
    fill("difficulty", config.env.difficulty)
    fill("tasks", config.tasks.path)
    if config.tasks.columns and not getattr(args, "columns", None):
        args.columns = ",".join(f"{k}={v}" for k, v in config.tasks.columns.items())
    if args.policy in ("hf", "vllm"):
        fill("model", config.model.path)
        fill("dtype", config.model.dtype if args.policy == "hf" else None)
    for name in ("temperature", "top_p", "top_k", "max_new_tokens"):
        fill(name, getattr(config.decoding, name))
    args.scene_knobs = dict(config.env.scene_knobs)
    args.env_kwargs = dict(config.env.env_kwargs)
    args.reward_kwargs = dict(config.env.reward_kwargs)
    return config


def env_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """EnvConfig fields set on the command line."""
    mapping = {
        "max_turns": "max_turns",
        "max_calls_per_turn": "max_calls_per_turn",
        "max_calls": "max_calls",
        "frame": "coordinate_frame",
        "draw_box_returns": "draw_box_returns",
        "max_image_pixels": "max_image_pixels",
    }
    out = {
        field: getattr(args, arg)
        for arg, field in mapping.items()
        if getattr(args, arg, None) is not None
    }
    if getattr(args, "no_system_prompt", False):
        out["system_prompt"] = False
    return out


def policy_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments for the policy (None values are dropped by `make_policy`)."""
    names = (
        "model", "adapter", "temperature", "top_p", "top_k", "max_new_tokens", "device", "dtype",
        "base_url", "dialect", "api_key", "max_concurrency", "gpu_memory_utilization",
        "max_model_len", "limit_mm_per_prompt", "tensor_parallel_size", "calls_per_turn",
        "timeout", "max_retries",
    )  # fmt: skip
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    out["seed"] = args.seed
    if args.policy in ("oracle", "noisy", "random"):
        out["frame"] = getattr(args, "frame", None) or "qwen"
        if getattr(args, "no_tools", False):
            out["call_format"] = "plain"
    if args.batch_size is not None and args.policy in ("hf", "vllm"):
        out["batch_size"] = args.batch_size
    return out


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
    from boxgym.rollouts.run_dir import check_run_folder, fixed_task_list
    from boxgym.rollouts.session import MAX_TASKS, check_count

    if args.verb == "view":
        return run_view(args)
    apply_run_config(args)
    if args.n is not None:
        check_count("--n", args.n, MAX_TASKS)
    if args.tasks:
        # decoded as episodes start; a resumed run keeps the task list it started with
        check_run_folder(Path(args.out))  # before the tasks are read
        fixed = fixed_task_list(Path(args.out)) if args.resume else None
        tasks = load_tasks_argument(args, limit=args.n, lazy=True, fixed=fixed)
        return execute_run(args, tasks, tasks_spec(args, tasks))
    n = args.n if args.n is not None else (16 if args.verb == "episodes" else 64)
    scenes = parse_scenes(args.scene or "screens")
    difficulty = args.difficulty or "easy"
    knobs = getattr(args, "scene_knobs", {})
    tasks = scene_tasks(scenes, n, args.seed, difficulty, **knobs)
    spec = {"kind": "scenes", "scenes": scenes, "n": n, "difficulty": difficulty}
    if knobs:
        spec["scene_knobs"] = knobs
    return execute_run(args, tasks, spec)


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
