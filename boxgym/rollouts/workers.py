"""Scripted rollouts over worker processes, so a run uses every core of the machine.

The parent finds the keys still to run (one pass over the store), cuts them into chunks and
hands the chunks to a `ProcessPoolExecutor`. Each worker holds its own policy and builds its
own envs and tasks (a `LazyTasks` builds a task from its seed in the worker that runs it); it
runs a chunk with `run_rollouts`, writes the chunk's images into the run's `images/` (atomic
renames, so workers never clash) and returns the records as encoded lines, with the few fields
the summary reads (`summary_fields`). The parent appends the lines to
`episodes.jsonl` as chunks finish, so one process owns the file and its durability rules hold:
an episode's images are on disk before its line. Episodes are keyed and seeded by (task,
sample), so they are the same whichever worker runs them; only the order of the lines differs.

Workers die with the run (`boxgym.rollouts.parent_death`): a parent killed with SIGKILL or
SIGTERM leaves no worker behind and no lock held, so `--resume` can follow at once.

This serves policies that run inside each worker (the scripted ones). A model policy batches
across every live episode in one process and keeps the single-process runner.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from boxgym.data.task import Task
from boxgym.rollouts.parent_death import die_with_parent, signals_held
from boxgym.rollouts.runner import RunStats, _progress_bar, pending_keys, run_rollouts
from boxgym.rollouts.store import EpisodeStore, encode_line

# Keys per chunk: small enough to spread the work evenly, large enough that a chunk's
# records are worth a round trip.
DEFAULT_CHUNK = 16

_WORKER: dict[str, Any] = {}  # the worker process's run: tasks, policy, env factory, options


def _start_worker(
    tasks: Sequence[Task],
    make_policy: Callable[[], Any],
    make_env: Callable[[], Any],
    run_dir: str,
    episodes_dir: str | None,
    image_format: str,
    options: dict[str, Any],
    parent: int,
) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and shuts the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)  # a killed run leaves no worker behind (boxgym.rollouts.parent_death)
    # One encoding thread, as the single-process runner has: with a core to spare, one process
    # runs 1.17x faster with it (1,000 oracle episodes: 6.1 wall-s against 7.1 inline), so
    # workers that encoded inline could reach at most 2 / 1.17 = 1.7x one process on a node
    # with free cores, before any cost of the pool. On a machine the workers already fill, the
    # thread made no measurable difference (docs/benchmarks.md). Records wait in `collected`
    # without a flush each; `_run_chunk` flushes once, before the parent writes their lines.
    store = EpisodeStore(
        run_dir,
        episodes_dir=episodes_dir,
        image_format=image_format,
        image_workers=1,
        collect=True,
    )
    _WORKER.update(
        tasks=tasks,
        policy=make_policy(),
        make_env=make_env,
        store=store,
        options=options,
    )


def summary_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The parts of an episode record that the run's summary and page index read
    (`EpisodeColumns.add`, `viewer.index_entry`), for the parent's `on_episode`.

    The prompt, the turns' content, the task's objects and all of its meta and answer but the
    difficulty and the count are left out (turns and objects keep their number as lists of
    `None`), so a worker sends a few hundred bytes per episode beside its encoded line rather
    than the whole record: decoding whole records cost the parent about 0.5 ms each.
    """
    fields = ("key", "policy", "failure", "reward", "metrics", "timing", "page_base")
    slim = {name: record[name] for name in fields if name in record}
    task = record.get("task")
    if isinstance(task, dict):
        slim_task = {"source": task["source"]} if "source" in task else {}
        for name, keep in (("meta", "difficulty"), ("answer", "count")):
            if isinstance(task.get(name), dict):
                slim_task[name] = {keep: task[name][keep]} if keep in task[name] else {}
            elif name in task:
                slim_task[name] = task[name]
        if isinstance(task.get("images"), list):
            slim_task["images"] = task["images"][:1]
        if isinstance(task.get("objects"), list):
            slim_task["objects"] = [None] * len(task["objects"])
        slim["task"] = slim_task
    if isinstance(record.get("turns"), list):
        slim["turns"] = [None] * len(record["turns"])
    return slim


def _run_chunk(
    keys: list[tuple[int, int]],
) -> tuple[list[bytes], list[dict[str, Any]], dict[str, Any]]:
    """Run one chunk of keys in this worker: its episode lines, encoded here (images already on
    disk), each record's `summary_fields`, and the chunk's stats."""
    store: EpisodeStore = _WORKER["store"]
    stats = run_rollouts(
        _WORKER["tasks"],
        _WORKER["policy"],
        _WORKER["make_env"],
        store,
        keys=keys,
        progress=False,
        **_WORKER["options"],
    )
    store.flush_images()
    records, store.collected = store.collected or [], []
    lines = [encode_line(record) for record in records]
    return lines, [summary_fields(record) for record in records], stats.__dict__


def run_in_workers(
    tasks: Sequence[Task],
    make_policy: Callable[[], Any],
    make_env: Callable[[], Any],
    store: EpisodeStore,
    *,
    workers: int,
    group_size: int = 1,
    seed: int = 0,
    max_live: int | None = 64,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    on_stored: Callable[[dict[str, Any]], None] | None = None,
    task_indices: Sequence[int] | None = None,
) -> RunStats:
    """`run_rollouts` over `workers` processes (see the module docstring).

    `make_policy` and `make_env` build a worker's policy and envs; they, `tasks` and
    `run_info` must pickle where processes are spawned rather than forked (a `LazyTasks` of
    scenes does). `task_indices` are the tasks to run (a shard's share; default all); a shard's
    workers keep their temporary image files in the shard's folder, as the shard does. Returns
    the run's statistics: wall time here, policy/env/record time summed over the workers.
    `on_episode` gets each new episode's `summary_fields`, not the whole record.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    indices = range(len(tasks)) if task_indices is None else task_indices
    keys = pending_keys(tasks, group_size, store, on_stored, indices)
    stats = RunStats(skipped_done=len(indices) * group_size - len(keys))
    chunks = [keys[i : i + chunk] for i in range(0, len(keys), chunk)]
    options = {"group_size": group_size, "seed": seed, "max_live": max_live}
    options["run_info"] = run_info or {}
    own_dir = store.episodes_path.parent
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, max(1, len(chunks))),
        mp_context=context,
        initializer=_start_worker,
        initargs=(
            tasks,
            make_policy,
            make_env,
            str(Path(store.out_dir)),
            None if own_dir == Path(store.out_dir) else str(own_dir),
            store.image_format,
            options,
            os.getpid(),
        ),
    )
    bar = _progress_bar(len(keys), progress)
    try:
        queue = iter(chunks)
        running: set[Future] = set()
        with signals_held():  # the first submit forks the workers
            for part in queue:  # two chunks per worker in flight keep every worker busy
                running.add(pool.submit(_run_chunk, part))
                if len(running) >= 2 * workers:
                    break
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                lines, views, part_stats = future.result()
                t0 = time.perf_counter()
                for line, view in zip(lines, views, strict=True):
                    store.append_line(line, sync=False)
                    if on_episode is not None:
                        on_episode(view)
                store.sync()
                stats.store_s += time.perf_counter() - t0
                _add_stats(stats, part_stats)
                if bar is not None:
                    bar.update(len(lines))
                part = next(queue, None)
                if part is not None:
                    running.add(pool.submit(_run_chunk, part))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        stats.wall_s = time.perf_counter() - started
    return stats


def _add_stats(total: RunStats, part: dict[str, Any]) -> None:
    for name in ("episodes", "policy_calls", "turns", "policy_s", "env_s", "record_s", "store_s"):
        setattr(total, name, getattr(total, name) + part.get(name, 0))
    total.reward_sum += part.get("reward_sum", 0.0)
    for kind, count in (part.get("failures") or {}).items():
        total.failures[kind] = total.failures.get(kind, 0) + count
