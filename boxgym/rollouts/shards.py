"""One run split over processes or machines: `--shard i/n`, and reading a run as one.

Shard i of n runs the tasks whose index is i mod n, every sample of each, with the seeds an
unsharded run gives them (`boxgym.rollouts.runner.derive_seed` keys on the task's index in the
whole run), so the union of the n shards is the unsharded run's episodes, timings aside. Shards
may run at the same time, from processes or machines sharing the run folder:

    RUN/run.json                          the run's configuration, `"shards": n` included;
                                          written by the first shard, every later one must match
    RUN/images/<sha>.png                  shared, content-addressed, renamed into place
    RUN/run.lock                          held shared by every running shard
    RUN/shards/<i>-of-<n>/episodes.jsonl  this shard's episodes
    RUN/shards/<i>-of-<n>/run.lock        held by the running shard: the same shard twice is refused
    RUN/shards/<i>-of-<n>/timing.json     this shard's sessions
    RUN/summary.json, RUN/index.html      over every shard present, rewritten whenever a shard
                                          ends (under `summary.lock`) and by `boxgym view`

There is no merge step: every reader (`read_run`) takes the union of the shard files, so a
killed shard loses only its episodes in flight, and `--resume` with the same `--shard` finishes it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxgym.errors import UserError
from boxgym.rollouts.store import EPISODES_FILE, episode_key, read_episodes

SHARDS_DIR = "shards"
TIMING_FILE = "timing.json"
_NAME = re.compile(r"^(\d+)-of-(\d+)$")


@dataclass(frozen=True, order=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """A shard from `i/n`; a `UserError` naming the fix for anything else."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        fix = "give --shard i/n with 0 <= i < n, e.g. --shard 0/4 ... --shard 3/4 for four shards"
        if match is None:
            raise UserError(f"--shard {text!r} is not i/n; {fix}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or index >= count:
            raise UserError(f"--shard {text}: shard index must be below the shard count; {fix}")
        return cls(index, count)

    @property
    def label(self) -> str:
        """`i/n`, as the user typed it."""
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """`i-of-n`: the shard's folder name."""
        return f"{self.index}-of-{self.count}"

    def folder(self, run_dir: str | Path) -> Path:
        """The shard's own folder inside the run folder."""
        return Path(run_dir) / SHARDS_DIR / self.name

    def task_indices(self, n_tasks: int) -> range:
        """The task indices this shard runs: every `count`-th, starting at `index`."""
        return range(self.index, n_tasks, self.count)


def shards_present(run_dir: str | Path) -> list[Shard]:
    """The shards with a folder in `run_dir`, in order (names that are not `i-of-n` ignored)."""
    folder = Path(run_dir) / SHARDS_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir():
            found.append(Shard(int(match.group(1)), int(match.group(2))))
    return sorted(found)


def is_run_folder(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds episodes: an unsharded `episodes.jsonl` or shard folders."""
    return (Path(run_dir) / EPISODES_FILE).exists() or bool(shards_present(run_dir))


@dataclass
class RunLog:
    """A run's episodes, every shard's together.

    Attributes:
        episodes: the union, in file order for an unsharded run and by (task index, sample)
            when shards are present; a key stored twice is kept once.
        notes: one line per file that had lines dropped, and for duplicate keys.
        stored: episodes each shard's file holds.
    """

    episodes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stored: dict[Shard, int] = field(default_factory=dict)

    def report(self) -> str:
        """One line for the user: what was dropped, or an empty string."""
        return "; ".join(self.notes)


def read_run(run_dir: str | Path) -> RunLog:
    """Every episode of a run folder: its `episodes.jsonl` and every shard's."""
    run_dir = Path(run_dir)
    run = RunLog()
    main = read_episodes(run_dir)
    run.episodes.extend(main.episodes)
    if main.report():
        run.notes.append(main.report())
    shards = shards_present(run_dir)
    for shard in shards:
        log = read_episodes(shard.folder(run_dir))
        run.stored[shard] = len({episode_key(r) for r in log.episodes})
        run.episodes.extend(log.episodes)
        if log.report():
            run.notes.append(f"{SHARDS_DIR}/{shard.name}: {log.report()}")
    if shards:
        run.episodes.sort(key=_order)
    seen: set[tuple[str, int]] = set()
    unique = []
    for record in run.episodes:
        if episode_key(record) not in seen:
            seen.add(episode_key(record))
            unique.append(record)
    if len(unique) < len(run.episodes):
        run.notes.append(f"ignored {len(run.episodes) - len(unique)} episode(s) stored twice")
    run.episodes = unique
    return run


def _order(record: dict[str, Any]) -> tuple[int, int]:
    key = record["key"]
    index = key.get("task_index")
    return (index if isinstance(index, int) else -1, int(key["sample"]))


def timing_sessions(run_dir: str | Path) -> list[dict[str, Any]]:
    """The sessions of `timing.json` and of every shard's, for the run's summed timing."""
    run_dir = Path(run_dir)
    paths = [run_dir / TIMING_FILE]
    paths += [shard.folder(run_dir) / TIMING_FILE for shard in shards_present(run_dir)]
    sessions: list[dict[str, Any]] = []
    for path in paths:
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(loaded, list):
            sessions.extend(s for s in loaded if isinstance(s, dict))
    return sessions


def shard_progress(run: RunLog, config: dict[str, Any]) -> dict[str, Any] | None:
    """How many of the run's shards are complete (None for an unsharded run).

    `config` is the run's `run.json`: its `shards`, `n_tasks` and `group_size` say what each
    shard must store.
    """
    try:
        count, n_tasks = int(config["shards"]), int(config["n_tasks"])
        group_size = int(config.get("group_size", 1))
    except (KeyError, TypeError, ValueError):
        return None
    rows = []
    for index in range(count):
        shard = Shard(index, count)
        expected = len(shard.task_indices(n_tasks)) * group_size
        stored = run.stored.get(shard, 0)
        rows.append(
            {
                "shard": shard.label,
                "stored": stored,
                "expected": expected,
                "complete": stored >= expected,
            }
        )
    return {
        "count": count,
        "complete": sum(row["complete"] for row in rows),
        "episodes_expected": n_tasks * group_size,
        "shards": rows,
    }
