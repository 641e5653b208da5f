"""One run split over processes or machines: `--shard i/n`, and reading a run as one.

Shard i of n runs the tasks whose index is i mod n, every sample of each, with the seeds an
unsharded run gives them (`boxgym.rollouts.runner.derive_seed` keys on the task's index in the
whole run), so the union of the n shards is the unsharded run's episodes, timings aside. Shards
may run at the same time, from processes or machines sharing the run folder:

    RUN/run.json                          the run's configuration, `"shards": n` included;
                                          written by the first shard, every later one must match
    RUN/images/<sha>.jpg                  shared, content-addressed, renamed into place
    RUN/run.lock                          held shared by every running shard
    RUN/shards/<i>-of-<n>/episodes.jsonl  this shard's episodes
    RUN/shards/<i>-of-<n>/run.lock        held by the running shard: the same shard twice is refused
    RUN/shards/<i>-of-<n>/timing.json     this shard's sessions
    RUN/summary.json, RUN/index.html      over every shard present, rewritten whenever a shard
                                          ends (under `summary.lock`) and by `boxgym view`

There is no merge step: every reader (`RunReader`, `read_run`) takes the union of the shard files,
so a killed shard loses only its episodes in flight, and `--resume` with the same `--shard`
finishes it. `RunReader` streams the union (the summary and the page hold no records);
`read_run` lists it in run order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxgym.errors import UserError
from boxgym.rollouts.store import EPISODES_FILE, EpisodeReader, episode_key

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


class RunReader:
    """Streams every episode of a run folder, each key once: its `episodes.jsonl`, then every
    shard's in shard order. No record is kept, only the keys seen.

    After a pass: `notes` (one line per file that had lines dropped, and for keys stored twice),
    `stored` (episodes each shard's file holds), `skip` (per file, the line numbers left
    out) and `upto` (per file, the last line read), which `raw_lines` uses to copy the same episodes' lines without parsing them again.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.shards = shards_present(self.run_dir)
        self.notes: list[str] = []
        self.stored: dict[Shard, int] = {}
        self.skip: dict[Path, list[int]] = {}
        self.upto: dict[Path, int] = {}

    def _files(self) -> list[tuple[str, Shard | None, Path]]:
        files: list[tuple[str, Shard | None, Path]] = [("", None, self.run_dir / EPISODES_FILE)]
        for shard in self.shards:
            files.append(
                (f"{SHARDS_DIR}/{shard.name}: ", shard, shard.folder(self.run_dir) / EPISODES_FILE)
            )
        return files

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.notes, self.stored, self.skip, self.upto = [], {}, {}, {}
        seen: set[tuple[str, int]] = set()
        twice = 0
        for prefix, shard, path in self._files():
            reader = EpisodeReader(path)
            skip: list[int] = []
            own: set[tuple[str, int]] = set()
            for number, record in reader.numbered():
                key = episode_key(record)
                own.add(key)
                if key in seen:
                    skip.append(number)
                    twice += 1
                    continue
                seen.add(key)
                yield record
            self.skip[path] = sorted([*skip, *reader.bad_lines])
            self.upto[path] = reader.last_line
            if shard is not None:
                self.stored[shard] = len(own)
            if reader.report():
                self.notes.append(prefix + reader.report())
        if twice:
            self.notes.append(f"ignored {twice} episode(s) stored twice")

    def raw_lines(self) -> Iterator[str]:
        """The stored text of the episodes the last pass yielded (after a pass): the same
        lines, even when a shard still running has appended more since."""
        for _, _, path in self._files():
            yield from EpisodeReader(path).raw_lines(
                self.skip.get(path, ()), self.upto.get(path, 0)
            )

    def report(self) -> str:
        """One line for the user: what the last pass dropped, or an empty string."""
        return "; ".join(self.notes)


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
    """Every episode of a run folder, held in a list: its `episodes.jsonl` and every shard's."""
    reader = RunReader(run_dir)
    episodes = list(reader)
    if reader.shards:
        episodes.sort(key=_order)
    return RunLog(episodes, reader.notes, reader.stored)


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


def shard_progress(stored: dict[Shard, int], config: dict[str, Any]) -> dict[str, Any] | None:
    """How many of the run's shards are complete (None for an unsharded run).

    `stored` is the episodes each shard's file holds (`RunReader.stored`); `config` is the run's
    `run.json`: its `shards`, `n_tasks` and `group_size` say what each shard must store.
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
        stored_here = stored.get(shard, 0)
        rows.append(
            {
                "shard": shard.label,
                "stored": stored_here,
                "expected": expected,
                "complete": stored_here >= expected,
            }
        )
    return {
        "count": count,
        "complete": sum(row["complete"] for row in rows),
        "episodes_expected": n_tasks * group_size,
        "shards": rows,
    }
