"""The batched lockstep rollout runner: N tasks x G samples, one policy call per turn.

Every live episode advances one turn at a time together: the runner gathers all live
conversations, calls `policy.act` once (or once per `batch_size` chunk), steps each env with its
text, and appends every episode that finished to the store at once. At most `max_live` episodes
are in flight (each holds its images); a finished episode's slot goes to the next key before the
next turn, so batches stay full. Groups (the G samples of one task, as GRPO uses them) are
consecutive keys, so they run side by side.

The envs and the episode recorders live in an env host (`boxgym.rollouts.env_host`): in this
process by default, or in worker processes (`ProcessEnvHost`, `--workers` with a model policy)
that send back only each step's new messages, so the policy here still batches across every
live episode while env work runs on several cores. The runner is the same code either way.

Seeds: sample s of task i gets `derive_seed(run_seed, i, s)` for its env reset and its scripted
policy randomness, so any subset of keys (a resumed run, a shard's share of the tasks, a
different batch size) reproduces the same episodes.

Time is split into the policy's share (the batched `act` calls, apportioned equally over the
episodes of a chunk) and everything outside it: `env_s` (env resets and steps, with rendering),
`record_s` (building records: hashing images, queueing PNG writes) and `store_s` (waiting for an
episode's PNGs, writing and fsyncing its line). The session's totals go to `timing.json`.
With env workers, `env_s` and `record_s` are the workers' times summed (they overlap each other,
so they may exceed the wall time) and `store_s` is the parent's appends.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boxgym.data.lazy_tasks import task_ids
from boxgym.data.task import Task
from boxgym.env.history import keep_images
from boxgym.policies.base import Policy
from boxgym.policies.scripted import SeededTask
from boxgym.rollouts.env_host import RUNNER_TURN_GUARD, LocalEnvHost
from boxgym.rollouts.store import EpisodeStore

__all__ = ["RUNNER_TURN_GUARD", "RunStats", "derive_seed", "pending_keys", "run_rollouts"]


def derive_seed(run_seed: int, task_index: int, sample: int) -> int:
    """A 31-bit seed for one (task, sample), independent of which other keys run with it."""
    state = np.random.SeedSequence([int(run_seed), int(task_index), int(sample)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


@dataclass
class RunStats:
    """One runner session's totals (written to `timing.json`)."""

    episodes: int = 0
    policy_calls: int = 0
    turns: int = 0
    wall_s: float = 0.0
    policy_s: float = 0.0
    env_s: float = 0.0
    record_s: float = 0.0
    store_s: float = 0.0
    reward_sum: float = 0.0
    skipped_done: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        out["outside_policy_s"] = round(max(0.0, self.wall_s - self.policy_s), 6)
        return out


@dataclass
class _LiveEpisode:
    """An episode in flight as the policy's side sees it (its env lives in the host)."""

    task_index: int
    sample: int
    seed: int
    task: Task
    conversation: list[dict[str, Any]]
    done: bool = False
    turns: int = 0


def pending_keys(
    tasks: Sequence[Task],
    group_size: int,
    store: EpisodeStore,
    on_stored: Callable[[dict[str, Any]], None] | None = None,
    task_indices: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """Every (task index, sample) key of `task_indices` (default: every task) not yet in
    `store`, in run order (one pass over it)."""
    ids = task_ids(tasks)  # a LazyTasks names its tasks without building them
    if len(set(ids)) != len(ids):
        raise ValueError("task ids must be unique within a run (they key the stored episodes)")
    indices = range(len(tasks)) if task_indices is None else task_indices
    done = store.done_keys(on_record=on_stored)
    return [(i, s) for i in indices for s in range(group_size) if (ids[i], s) not in done]


def run_rollouts(
    tasks: Sequence[Task],
    policy: Policy,
    make_env: Callable[[], Any],
    store: EpisodeStore,
    *,
    group_size: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    max_live: int | None = 64,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    task_indices: Sequence[int] | None = None,
    on_stored: Callable[[dict[str, Any]], None] | None = None,
    keys: Sequence[tuple[int, int]] | None = None,
    env_host: Any = None,
    image_history: str | None = None,
) -> RunStats:
    """Run every (task, sample) key not yet in `store` and append each finished episode.

    Args:
        tasks: the run's tasks, in a fixed order (task index = position); a `LazyTasks`
            builds each when its first episode starts, so memory stays bounded by `max_live`.
        policy: anything with `act(conversations, tools, tasks)`.
        make_env: builds a fresh environment (reset with `options={"task": task}`).
        store: where finished episodes go; its `done_keys()` are skipped (resume).
        group_size: samples per task (G).
        seed: the run seed; per-sample seeds derive from it.
        batch_size: most conversations per `act` call (None: all live episodes in one call).
        max_live: most episodes in flight at once (bounds memory: each holds its images);
            None runs every key at once.
        progress: show a tqdm bar (episodes done, live mean reward, episodes/s).
        run_info: extra fields copied into every record (policy name, run name, ...).
        on_episode: called with each finished record (after it is stored).
        task_indices: the positions in `tasks` to run (default: all); a shard runs its share.
            Seeds and record keys still use the position in `tasks`.
        on_stored: called with each record already in `store` (a resumed run), as the one
            pass that finds the done keys reads it.
        keys: run exactly these (task index, sample) keys instead of every key not in
            `store` (a worker process runs the keys its parent hands it).
        env_host: where the envs run (`boxgym.rollouts.env_host`): None runs them here (a
            `LocalEnvHost` over `tasks`, `make_env` and `store`); a `ProcessEnvHost` built on
            the same tasks and store runs them in its worker processes while the policy stays
            here (`make_env` is then unused). The caller closes a host it passes.
        image_history: what each conversation keeps of its images after a step ("all" or
            "last", `boxgym.env.history.keep_images`); None reads it from the config of an env
            that `make_env` builds.

    Returns:
        The session's statistics.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_live is not None and max_live < 1:
        raise ValueError(f"max_live must be >= 1, got {max_live}")
    indices = range(len(tasks)) if task_indices is None else task_indices
    if keys is None:
        keys = pending_keys(tasks, group_size, store, on_stored, indices)
        skipped = len(indices) * group_size - len(keys)
    else:
        keys, skipped = list(keys), 0
    stats = RunStats(skipped_done=skipped)
    if image_history is None:
        image_history = getattr(getattr(make_env(), "config", None), "image_history", "all")
    host = env_host if env_host is not None else LocalEnvHost(tasks, make_env, store)
    session = _Session(policy, host, store, seed, stats, run_info or {}, on_episode)
    session.image_history = image_history
    session.bar = _progress_bar(len(keys), progress)
    pending = deque(keys)
    live: list[_LiveEpisode] = []
    capacity = max_live or max(1, len(keys))
    try:
        while pending or live:
            # Top up: a finished episode's slot goes to the next key, so batches stay full.
            while pending and len(live) < capacity:
                wanted = min(capacity - len(live), len(pending))
                live.extend(session.start([pending.popleft() for _ in range(wanted)]))
            if live:
                session.turn(live, batch_size)
                live = [ep for ep in live if not ep.done]
    finally:
        stats.wall_s = time.perf_counter() - session.started
        if session.bar is not None:
            session.bar.close()
        if env_host is None:
            host.close()
        store.flush_images()
    return stats


class _Session:
    """The state one `run_rollouts` call shares between starting, stepping and finishing."""

    def __init__(
        self,
        policy: Policy,
        host: Any,
        store: EpisodeStore,
        run_seed: int,
        stats: RunStats,
        run_info: dict[str, Any],
        on_episode: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.policy, self.host, self.store = policy, host, store
        self.run_seed, self.stats, self.run_info, self.on_episode = (
            run_seed,
            stats,
            run_info,
            on_episode,
        )
        self.bar: Any = None
        self.started = time.perf_counter()
        self.image_history = "all"  # what a conversation keeps of its images (keep_images)

    def start(self, keys: list[tuple[int, int]]) -> list[_LiveEpisode]:
        """Start these keys on the host; the episodes the env refused are stored at once."""
        seeds = [derive_seed(self.run_seed, index, sample) for index, sample in keys]
        updates = self.host.start(
            [(index, sample, seed) for (index, sample), seed in zip(keys, seeds)], self.run_info
        )
        live = []
        for (index, sample), seed, update in zip(keys, seeds, updates):
            self._count(update)
            if update.done:
                self.finish(update.record)
            else:
                live.append(_LiveEpisode(index, sample, seed, update.task, list(update.messages)))
        return live

    def turn(self, live: list[_LiveEpisode], batch_size: int | None) -> None:
        """One lockstep turn: one `act` call per chunk of live episodes, then every env step."""
        stats = self.stats
        chunk_size = batch_size or len(live)
        self.show_progress(live)
        for begin in range(0, len(live), chunk_size):
            chunk = live[begin : begin + chunk_size]
            t0 = time.perf_counter()
            try:
                texts = self.policy.act(
                    [ep.conversation for ep in chunk],
                    self.host.tools,
                    [SeededTask(ep.task, ep.seed) for ep in chunk],
                )
            except Exception as error:
                self._keep_answered(chunk, getattr(error, "partial", None) or {})
                raise
            spent = time.perf_counter() - t0
            self.show_progress(live)
            stats.policy_calls += 1
            stats.policy_s += spent
            if len(texts) != len(chunk):
                raise RuntimeError(
                    f"policy {getattr(self.policy, 'name', self.policy)!r} returned {len(texts)} "
                    f"texts for {len(chunk)} conversations"
                )
            self._step(list(zip(chunk, texts)), spent / len(chunk))
            stats.turns += len(chunk)
            # Store this chunk's finished episodes now: a policy failure on a later chunk
            # (a server that dies mid-turn) must not take them with it.
            self.store.sync()  # one fsync for the episodes of this chunk that ended this turn
        if self.bar is not None:
            # episodes end together at a turn: tqdm skips redraws within `mininterval`, so
            # without this the bar would show the first of them until the next turn's ends
            self.bar.refresh()

    def _step(self, answered: list[tuple[_LiveEpisode, Any]], policy_share: float) -> None:
        """Step each episode with its text on the host; add the deltas, store the ended ones."""
        for ep, _ in answered:
            ep.turns += 1
        moves = [((ep.task_index, ep.sample), text, policy_share) for ep, text in answered]
        for (ep, _), update in zip(answered, self.host.step(moves)):
            self._count(update)
            ep.conversation.extend(update.messages)
            if self.image_history != "all":
                ep.conversation = keep_images(ep.conversation, self.image_history)
            if update.done:
                ep.done = True
                self.finish(update.record, sync=False)

    def _count(self, update: Any) -> None:
        self.stats.env_s += update.env_s
        self.stats.record_s += update.record_s

    def show_progress(self, live: list[_LiveEpisode]) -> None:
        """The bar's postfix: the turn the live episodes are on, how many, tokens/s, reward.

        tqdm's own counter, rate and ETA cover the episodes; these say that a long first turn
        (nothing finished yet) is moving. Tokens/s shows where the policy counts its tokens
        (`tokens_generated`: the hf policy and servers that report usage).
        """
        if self.bar is None:
            return
        elapsed = max(1e-9, time.perf_counter() - self.started)
        postfix: dict[str, str] = {
            "turn": str(1 + max((ep.turns for ep in live), default=0)),
            "live": str(len(live)),
        }
        tokens = getattr(self.policy, "tokens_generated", None)
        if isinstance(tokens, int) and tokens > 0:
            postfix["tok/s"] = f"{tokens / elapsed:.1f}"
        if self.stats.episodes:
            postfix["reward"] = f"{self.stats.reward_sum / self.stats.episodes:.3f}"
        self.bar.set_postfix(postfix, refresh=True)

    def _keep_answered(self, chunk: list[_LiveEpisode], partial: dict[int, Any]) -> None:
        """After a failed `act`: step the conversations it answered; store those that ended."""
        answered = [
            (chunk[index], text)
            for index, text in sorted(partial.items())
            if 0 <= index < len(chunk) and not chunk[index].done
        ]
        if answered:
            self._step(answered, 0.0)
            self.store.sync()

    def finish(self, record: dict[str, Any], sync: bool = True) -> None:
        """Store a finished episode and update the counters and the progress bar."""
        stats = self.stats
        t0 = time.perf_counter()
        self.store.append(record, sync=sync)
        stats.store_s += time.perf_counter() - t0
        stats.episodes += 1
        reward = record.get("reward")
        if isinstance(reward, (int, float)) and math.isfinite(reward):
            stats.reward_sum += float(reward)
        stats.failures[record["failure"]] = stats.failures.get(record["failure"], 0) + 1
        if self.bar is not None:
            self.bar.update(1)
        if self.on_episode is not None:
            self.on_episode(record)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ep", desc="episodes", dynamic_ncols=True, smoothing=0.1)


def append_session_timing(run_dir: str | Path, stats: RunStats) -> None:
    """Add this session's totals to `timing.json` (a list, one entry per session)."""
    path = Path(run_dir) / "timing.json"
    sessions: list[dict[str, Any]] = []
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            sessions = loaded if isinstance(loaded, list) else []
        except json.JSONDecodeError:
            sessions = []
    sessions.append(stats.as_json())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sessions, indent=2) + "\n")
    os.replace(tmp, path)
