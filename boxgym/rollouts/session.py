"""One session of a run in its folder: `execute_run` (what `episodes`, `rollout` and `eval` end
in), and the summary and page written over every episode of the run (`write_run_outputs`).

The run folder's rules (`--resume`, `--overwrite`, locks) are `boxgym.rollouts.run_dir`; the
verbs' options are `boxgym.rollouts.commands`. A session stopped by Ctrl-C or SIGTERM says how
many episodes are stored and that `--resume` finishes the run.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from boxgym.errors import Interrupted, UserError, explain
from boxgym.rollouts.options import PolicyOptions, RunSettings

# Bounds on the counts a user types: far above any real run, low enough that a typo (an extra
# zero, a number pasted into the wrong flag) is refused at once instead of taking the machine.
MAX_TASKS = 10_000_000
MAX_GROUP_SIZE = 4096
MAX_WORKERS = 1024
MAX_LIVE = 1_000_000


def check_count(flag: str, value: int, most: int) -> None:
    """Refuse a count option below 1 or above `most`, in one line."""
    if not 1 <= value <= most:
        raise UserError(f"{flag} must be between 1 and {most:,}, got {value}")


class _DelayedPolicy:
    """Wraps a policy with a sleep per call (tests use it to kill a run part-way)."""

    def __init__(self, policy: Any, delay_s: float) -> None:
        self.policy, self.delay_s, self.name = policy, delay_s, policy.name

    def act(
        self, conversations: list[Any], tools: list[Any], tasks: list[Any] | None = None
    ) -> list[str]:
        time.sleep(self.delay_s)
        return self.policy.act(conversations, tools, tasks)


def _slowed(make: Any, delay_s: float) -> Any:
    """A worker's policy, from its factory, slowed like the parent's when `delay_s` > 0."""
    policy = make()
    return _DelayedPolicy(policy, delay_s) if delay_s > 0 else policy


def check_model_paths(policy: PolicyOptions) -> None:
    """Refuse a --model or --adapter path that does not exist before anything is loaded."""
    if policy.policy in ("hf", "vllm") and policy.model:
        from boxgym.models.cache import resolve_model

        resolve_model(policy.model)  # raises UserError for a local path that is not there
    if policy.adapter and not Path(policy.adapter).expanduser().is_dir():
        raise UserError(
            f"no LoRA adapter at {policy.adapter}: not a directory; give the adapter folder a "
            "training run wrote (OUTPUT_DIR/adapter)"
        )


def policy_kwargs(settings: RunSettings) -> dict[str, Any]:
    """The policy's constructor arguments: its options given, the run seed, and what the env
    implies (a scripted policy plays the env's frame and calls per turn)."""
    policy, session, env = settings.policy, settings.session, settings.env
    out = policy.constructor_options()
    out["seed"] = session.seed
    if policy.scripted:
        out["frame"] = env.coordinate_frame
        if session.zero_shot:
            out["call_format"] = "plain"
        out.setdefault("calls_per_turn", env.max_calls_per_turn)  # play the env's protocol
    if session.batch_size is not None and policy.policy in ("hf", "vllm"):
        out["batch_size"] = session.batch_size
    return out


def make_env_factory(env_config: Any, zero_shot: bool = False) -> Any:
    """A zero-argument callable building a fresh `BoxGymEnv` (a `ZeroShotEnv` when
    `zero_shot`) with this config."""
    from boxgym.env import BoxGymEnv
    from boxgym.env.zero_shot import ZeroShotEnv

    env_class = ZeroShotEnv if zero_shot else BoxGymEnv

    def make() -> Any:
        return env_class(config=env_config)

    return make


def check_session_sizes(session: Any, n_tasks: int, shard: Any) -> None:
    """Refuse a shard count above the task count and sizes past their bounds, in one line."""
    if shard is not None and shard.count > n_tasks:
        raise UserError(
            f"--shard {shard.label}: {shard.count} shards for {n_tasks} task(s) would leave "
            f"shards with nothing to run; use at most {n_tasks} shards (--shard i/n with "
            f"n <= {n_tasks})"
        )
    check_count("--group-size", session.group_size, MAX_GROUP_SIZE)
    check_count("--workers", session.workers, MAX_WORKERS)
    for flag, value in (("--batch-size", session.batch_size), ("--max-live", session.max_live)):
        if value is not None:
            check_count(flag, value, MAX_LIVE)


def run_config(
    settings: RunSettings,
    tasks: Any,
    task_spec: dict[str, Any],
    kwargs: dict[str, Any],
    max_live: int,
    shard: Any,
) -> dict[str, Any]:
    """What `run.json` records of a run, the identity `--resume` checks."""
    from boxgym.data.lazy_tasks import task_id_of

    session = settings.session
    config = {
        "policy": settings.policy.policy,
        "policy_kwargs": {k: v for k, v in kwargs.items() if k not in ("batch_size", "api_key")},
        "tasks": task_spec,
        "task_ids_head": [task_id_of(tasks, i) for i in range(min(4, len(tasks)))],
        "n_tasks": len(tasks),
        "group_size": session.group_size,
        "seed": session.seed,
        "env": settings.env.to_dict(),
        "batch_size": session.batch_size,
        "max_live": max_live,
        "policy_delay_s": session.policy_delay_s,
        "workers": session.workers,
    }
    if session.zero_shot:  # recorded only when on, so runs written before the option still resume
        config["zero_shot"] = True
    if shard is not None:  # likewise recorded only for sharded runs
        config["shards"] = shard.count
    return config


def execute_run(
    settings: RunSettings,
    tasks: list[Any],
    task_spec: dict[str, Any],
    *,
    title: str | None = None,
) -> int:
    """Run (or resume) a run directory, or one shard of it, over `tasks`; write its summary and
    page (over every shard present)."""
    from boxgym.policies.registry import make_policy
    from boxgym.rollouts.metrics import EpisodeColumns
    from boxgym.rollouts.options import DEFAULT_MAX_LIVE, SCRIPTED_POLICIES
    from boxgym.rollouts.run_dir import (
        check_run_folder,
        check_shard_count,
        hold_run,
        prepare_run_dir,
        prepare_shard_dir,
        record_task_list,
    )
    from boxgym.rollouts.runner import append_session_timing, run_rollouts
    from boxgym.rollouts.shards import Shard
    from boxgym.rollouts.store import EpisodeReader, EpisodeStore
    from boxgym.rollouts.viewer import PageIndex

    session, policy_name, env_config = settings.session, settings.policy.policy, settings.env
    shard = Shard.parse(session.shard) if session.shard else None
    check_session_sizes(session, len(tasks), shard)
    workers = session.workers
    max_live = session.max_live or DEFAULT_MAX_LIVE.get(policy_name, 64)
    kwargs = policy_kwargs(settings)
    if policy_name == "vllm" and "limit_mm_per_prompt" not in kwargs:
        from boxgym.data.lazy_tasks import most_images
        from boxgym.policies.vllm import episode_image_limit

        most = most_images(tasks)  # lazily built scenes: known, none is built to count
        kwargs["limit_mm_per_prompt"] = episode_image_limit(env_config, most)
    out = Path(session.out)
    config = run_config(settings, tasks, task_spec, kwargs, max_live, shard)
    zero_shot = session.zero_shot
    check_model_paths(settings.policy)
    # A model policy (or a scripted one told so) stays here and the workers host the envs
    # (`boxgym.rollouts.env_host`); a scripted policy otherwise runs in each worker.
    env_workers = workers > 1 and (policy_name not in SCRIPTED_POLICIES or session.policy_in_parent)
    indices = shard.task_indices(len(tasks)) if shard else range(len(tasks))
    expected = len(indices) * session.group_size
    own_dir = shard.folder(out) if shard else out
    whose = f" of shard {shard.label}" if shard else ""
    check_run_folder(out)
    if shard is not None:
        check_shard_count(out, shard.count)
    try:
        with hold_run(out, shard) as notes:
            if shard is None:
                prepare_run_dir(out, config, resume=session.resume, overwrite=session.overwrite)
            else:
                prepare_shard_dir(
                    out, config, shard, resume=session.resume, overwrite=session.overwrite
                )
            for note in notes:
                print(note, file=sys.stderr)
            if callable(getattr(tasks, "fixed_list", None)):  # --tasks: fixed for --resume
                record_task_list(out, tasks.fixed_list(), scratch=own_dir)
            # With env workers the policy is built after they are forked: no model thread or GPU
            # context is copied into them.
            policy = None if env_workers else make_policy(policy_name, **kwargs)
            # Unsharded, the summary's columns fill as records go by: the stored ones while the
            # resume pass reads them, the new ones as they finish; the file is parsed once and no
            # record is kept. A shard's summary covers every shard, read after it ends.
            columns = None if shard else EpisodeColumns()
            index = None if shard or session.no_page else PageIndex()

            def seen(record: dict[str, Any]) -> None:  # each stored or new record, in file order
                columns.add(record)
                if index is not None:
                    index.add(record)

            skip_lines: list[int] = []
            try:
                with (
                    EpisodeStore(out, episodes_dir=own_dir if shard else None) as store,
                    contextlib.ExitStack() as hosts,
                ):
                    env_host = None
                    make_env = make_env_factory(env_config, zero_shot)
                    if env_workers:
                        from boxgym.rollouts.env_host import ProcessEnvHost

                        env_host = hosts.enter_context(
                            ProcessEnvHost(workers, tasks, make_env, store)
                        )
                        policy = make_policy(policy_name, **kwargs)
                    if session.policy_delay_s > 0:
                        policy = _DelayedPolicy(policy, session.policy_delay_s)
                    if store.repaired_bytes:
                        print(
                            f"resume: cut a torn last line ({store.repaired_bytes} bytes) left by a "
                            "killed run",
                            file=sys.stderr,
                        )
                    common = {
                        "group_size": session.group_size,
                        "seed": session.seed,
                        "max_live": max_live,
                        "progress": not session.no_progress,
                        "run_info": {"policy": policy_name, "run": out.resolve().name},
                        "task_indices": indices,
                        "on_episode": seen if columns is not None else None,
                        "on_stored": seen if columns is not None else None,
                    }
                    if workers > 1 and not env_workers:
                        from boxgym.rollouts.workers import run_in_workers

                        stats = run_in_workers(
                            tasks,
                            partial(
                                _slowed,
                                partial(make_policy, policy_name, **kwargs),
                                session.policy_delay_s,
                            ),
                            make_env,
                            store,
                            workers=workers,
                            **common,
                        )
                    else:
                        stats = run_rollouts(
                            tasks,
                            policy,
                            make_env,
                            store,
                            batch_size=session.batch_size,
                            env_host=env_host,
                            **common,
                        )
                    skip_lines = store.skip_lines
                    if store.scan_report:
                        print(f"note: {store.scan_report}", file=sys.stderr)
            except Exception as error:
                stored = sum(1 for _ in EpisodeReader(own_dir))
                raise UserError(
                    f"{explain(error)} ({stored}/{expected} episodes{whose} are stored in {own_dir}; "
                    "once fixed, rerun the same command with --resume to finish)"
                ) from error
            append_session_timing(own_dir, stats)
            stored = stats.skipped_done + stats.episodes
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: what is stored stays
        done = sum(1 for _ in EpisodeReader(own_dir))
        raise Interrupted(
            f"{done}/{expected} episodes{whose} are stored in {own_dir}; rerun the same command "
            "with --resume to finish the run",
            getattr(stop, "signal_name", "SIGINT"),
        ) from stop
    summary = write_run_outputs(
        out,
        seed=session.seed,
        title=title,
        page=not session.no_page,
        columns=columns,
        index=index,
        skip_lines=skip_lines,
    )
    print(
        f"{policy_name}: {stats.episodes} episode(s) this session, {stored}/{expected}{whose} "
        f"stored in {stats.wall_s:.1f}s (policy {stats.policy_s:.1f}s, outside "
        f"{stats.wall_s - stats.policy_s:.1f}s)"
    )
    print_summary(summary)
    if not session.no_page:
        print(f"page: {(out / 'index.html').resolve()}")
    print(f"episodes: {(own_dir / 'episodes.jsonl').resolve()}")
    return 0


def write_run_outputs(
    run_dir: Path,
    *,
    seed: int,
    title: str | None = None,
    page: bool = True,
    columns: Any = None,
    index: Any = None,
    skip_lines: list[int] | None = None,
) -> dict[str, Any]:
    """Write the summary (and page) over every episode of the run, every shard's included.

    The episodes are streamed (`RunReader`): the summary is built from columns, the page's index
    from the same pass (`PageIndex`) and its page files copy the stored lines, so no record is
    held. An unsharded run that has just run passes the `columns` and `index` it filled, in file
    order, and the `skip_lines` of its resume pass, and its file is not parsed again. Held under the run's summary lock, so of shards ending together
    the last one to write sees them all.
    """
    from boxgym.rollouts.metrics import EpisodeColumns, combine_sessions, write_summary
    from boxgym.rollouts.run_dir import summary_lock
    from boxgym.rollouts.shards import RunReader, shard_progress, timing_sessions
    from boxgym.rollouts.store import EpisodeReader
    from boxgym.rollouts.viewer import PageIndex, write_run_page

    config: dict[str, Any] = {}
    # no or unreadable run.json: the summary still works (bootstrap seed as given)
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else {}
    with summary_lock(run_dir):
        extra = {}
        if columns is None or (page and index is None):
            reader = RunReader(run_dir)
            columns, index = EpisodeColumns(), PageIndex()
            for record in reader:  # one streaming pass over every shard's file
                columns.add(record)
                if page:
                    index.add(record)
            if reader.report():
                print(f"note: {reader.report()}", file=sys.stderr)
            progress = shard_progress(reader.stored, config)
            if progress is not None:
                extra["shards"] = progress
            lines = reader.raw_lines()
        else:
            lines = EpisodeReader(run_dir).raw_lines(skip_lines or ())
        sessions = timing_sessions(run_dir)
        summary = write_summary(
            run_dir,
            columns,
            seed=seed,
            timing=combine_sessions(sessions) if sessions else None,
            extra=extra,
        )
        if page:
            write_run_page(run_dir, summary, lines, index, title=title)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The summary's table, pass@k, failures and shard progress, for the terminal."""
    from boxgym.rollouts.metrics import format_table

    print(format_table(summary))
    if summary.get("pass_at_k"):
        print(
            "  "
            + "  ".join(
                f"pass@{k} {v['mean']:.3f}"
                for k, v in summary["pass_at_k"].items()
                if v["mean"] is not None
            )
        )
    print(f"  failures: {summary['failures']}")
    shards = summary.get("shards")
    if shards:
        print(
            f"  shards: {shards['complete']}/{shards['count']} complete, {summary['episodes']}/"
            f"{shards['episodes_expected']} episodes of the run stored (summary and page cover "
            "every shard present)"
        )
