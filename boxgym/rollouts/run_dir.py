"""The run folder: its locks, and creating, checking (`--resume`) or clearing (`--overwrite`) it.

A run folder holds `run.json` (the run's configuration, which marks the folder as a boxgym run),
`episodes.jsonl`, `images/`, `timing.json` (one entry per session), `summary.json`, `index.html`
and its `pages/`; a sharded run keeps each shard's episodes and timing under
`shards/<i>-of-<n>/` instead (`boxgym.rollouts.shards`). A run starts only in a new or empty
folder; a folder holding anything but a run is refused whatever the options. A folder that
already holds a run is refused unless `--resume` (finish the missing episodes; the
configuration must match) or `--overwrite` (delete that run first: only the names a run
writes, `clear_run`; anything else stays) is given, or unless that run stored no episode yet
(it is started again). A shard starts in a folder where other shards of the same run already
are without either option: it checks the shared `run.json` and only its own episodes need
`--resume` or `--overwrite`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from boxgym.errors import UserError
from boxgym.locks import RunLock, RunLockedError
from boxgym.output_dir import BOOKKEEPING, check_out_path, entries, listing
from boxgym.rollouts.shards import SHARDS_DIR, TIMING_FILE, Shard, shards_present
from boxgym.rollouts.store import EPISODES_FILE, IMAGES_DIR
from boxgym.rollouts.viewer import PAGE_DIR

# Fields of run.json that may change between sessions of one run (they do not change episodes).
EXECUTION_FIELDS = ("batch_size", "max_live", "progress", "policy_delay_s", "workers")
# Policy options that say where the model is served and how hard to press it, not what it
# generates: shards on different machines may point at different replicas.
EXECUTION_POLICY_FIELDS = ("base_url", "max_concurrency", "timeout", "max_retries")
SUMMARY_LOCK = "summary.lock"
TASK_LIST = "tasks.json"  # a --tasks run's task ids and row numbers, fixed at its start
# What a folder may hold before the first shard has written run.json (other shards' locks).
_SHARD_START_NAMES = {RunLock.FILE, SUMMARY_LOCK, SHARDS_DIR, IMAGES_DIR}


@contextmanager
def hold_run(out: Path, shard: Shard | None) -> Iterator[list[str]]:
    """Hold the locks of one run (or one shard of it) for the `with` block.

    An unsharded run holds `run.lock` exclusively; a shard holds it shared and its own folder's
    lock exclusively. Yields the notes of locks taken over from a killed run, for the caller to
    print once the run goes ahead. Raises a `UserError` naming who holds the lock.
    """
    with ExitStack() as stack:
        run_lock = RunLock(out, shared=shard is not None)
        try:
            run_lock.acquire()
        except RunLockedError as error:
            if error.stale_pid is not None:
                raise _left_behind(run_lock, error.stale_pid) from error
            if shard is None:
                raise UserError(
                    f"another boxgym run is writing to {out} (process id in {run_lock.path}, or "
                    f"shards of a run under {out / SHARDS_DIR}); wait for it to finish, or choose "
                    "another --out"
                ) from error
            raise UserError(
                f"an unsharded boxgym run is writing to {out} (process id in {run_lock.path}); "
                "wait for it to finish, or give the shards another --out"
            ) from error
        stack.callback(run_lock.release)
        locks = [run_lock]
        if shard is not None:
            shard_lock = RunLock(shard.folder(out))
            try:
                shard_lock.acquire()
            except RunLockedError as error:
                if error.stale_pid is not None:
                    raise _left_behind(shard_lock, error.stale_pid) from error
                raise UserError(
                    f"shard {shard.label} of {out} is already running (process id in "
                    f"{shard_lock.path}); run another shard, or wait for this one to finish"
                ) from error
            stack.callback(shard_lock.release)
            locks.append(shard_lock)
        yield [lock.took_over for lock in locks if lock.took_over]


def _left_behind(lock: RunLock, pid: int) -> UserError:
    """The refusal of a lock still held after the process it names died."""
    return UserError(
        f"{lock.path} is still held although the run that took it (process {pid}) is gone: "
        f"processes it started are still running; end them (`fuser -v {lock.path}` lists them), "
        "then rerun with --resume"
    )


@contextmanager
def summary_lock(out: Path) -> Iterator[None]:
    """Wait for and hold `summary.lock`: one writer of summary.json and index.html at a time, so
    the shard that ends last writes a summary that sees every shard."""
    lock = RunLock(out, file=SUMMARY_LOCK).acquire(blocking=True)
    try:
        yield
    finally:
        lock.release()


def prepare_run_dir(out: Path, config: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
    """Create, check (resume) or clear (overwrite) an unsharded run directory.

    A folder holding anything but a boxgym run is refused whatever the options, and nothing in
    it is touched. A run that stored no episode yet (one that failed while loading its model,
    say) is started over with the new configuration: nothing would be lost. `--overwrite`
    deletes only what a run writes (`clear_run`) and says what it left.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    check_out_path(out)
    present = entries(out)
    if present:
        previous = run_config_of(out)
        if previous is None:
            raise not_a_run(out, present)
        if not overwrite:
            check_same_count(out, previous.get("shards"), None)
        if overwrite or not has_episodes(out):
            if not overwrite:
                print(
                    f"note: the run in {out} stored no episode yet; starting it again with "
                    "this command's configuration",
                    file=sys.stderr,
                )
            left = clear_run(out)
            if left:
                print(
                    f"note: --overwrite deleted the run in {out} and left what the run did not "
                    f"write: {listing(left)}",
                    file=sys.stderr,
                )
        elif resume:
            check_same_run(out, previous, config)
            return
        else:
            raise UserError(
                f"{out} is not empty: it holds a boxgym run; pass --resume to finish it, "
                "--overwrite to replace it (only the run's own files are deleted), or choose "
                "another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", config)


def check_run_folder(out: Path) -> None:
    """Refuse, before any lock or folder is made, an `--out` that is a file or that holds
    files but no boxgym run (shards starting together may have made their folders already)."""
    check_out_path(out)
    present = entries(out)
    if present and run_config_of(out) is None and not set(present) <= _SHARD_START_NAMES:
        raise not_a_run(out, present)


def not_a_run(out: Path, present: list[str]) -> UserError:
    """The refusal of a folder that holds files but no run."""
    return UserError(
        f"{out} is not empty and holds no boxgym run ({listing(present)}); a run is written "
        "only into a new or empty folder, and boxgym deletes nothing it did not write: choose "
        "another --out"
    )


def run_config_of(out: Path) -> dict[str, Any] | None:
    """The configuration of the boxgym run in `out`, or None when `out` holds no run.

    A run is marked by its `run.json`: a mapping with the fields every run writes. One that
    does not parse counts as a run only beside an `episodes.jsonl` (a run damaged on disk);
    `read_run_json` then names the fix.
    """
    path = out / "run.json"
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if (out / EPISODES_FILE).is_file():
            return read_run_json(out)  # raises, naming how to recover
        return None
    if isinstance(loaded, dict) and {"policy", "n_tasks", "group_size"} <= set(loaded):
        return loaded
    return None


def has_episodes(out: Path) -> bool:
    """Whether the run in `out` stored any episode (its own file or any shard's)."""
    files = [out / EPISODES_FILE, *(s.folder(out) / EPISODES_FILE for s in shards_present(out))]
    return any(f.is_file() and f.stat().st_size > 0 for f in files)


# What a run writes: its files at the top, and inside its folders the names it gives.
_RUN_NAMES = re.compile(
    r"^(run\.json|episodes\.jsonl|summary\.json|index\.html|timing\.json|tasks\.json"
    r"|\.(run|summary|tasks)\.json\.tmp|index\.html\.tmp)$"
)
_RUN_FOLDERS: dict[str, re.Pattern[str]] = {
    IMAGES_DIR: re.compile(r"^(\.tmp-\d+-)?[0-9a-f]{32}\.(jpg|png)$"),
    PAGE_DIR: re.compile(r"^\d{4,}\.js$"),
}
_LEFTOVER_PAGES = re.compile(rf"^{PAGE_DIR}\.(tmp|old)-[0-9a-f]+$")
_SHARD_NAMES = re.compile(
    r"^(episodes\.jsonl|timing\.json|run\.lock|\.run\.json\.tmp"
    r"|\.tmp-\d+-[0-9a-f]{32}\.(jpg|png))$"
)


def clear_run(out: Path) -> list[str]:
    """Delete the run in `out`: only the names a run writes, each where a run writes it.

    Returns:
        The entries left in `out` (what the run did not write), besides its locks.
    """
    for entry in out.iterdir():
        if entry.is_symlink():
            continue
        if entry.is_file() and _RUN_NAMES.match(entry.name):
            entry.unlink()
        elif entry.is_dir() and entry.name in _RUN_FOLDERS:
            _clear_folder(entry, _RUN_FOLDERS[entry.name])
        elif entry.is_dir() and _LEFTOVER_PAGES.match(entry.name):
            _clear_folder(entry, _RUN_FOLDERS[PAGE_DIR])
        elif entry.is_dir() and entry.name == SHARDS_DIR:
            for shard in shards_present(out):
                _clear_folder(shard.folder(out), _SHARD_NAMES)
            with contextlib.suppress(OSError):
                entry.rmdir()
    return entries(out)


def _clear_folder(folder: Path, names: re.Pattern[str]) -> None:
    """Delete the files in `folder` whose names match, then the folder if that emptied it."""
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink() and names.match(entry.name):
            entry.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def prepare_shard_dir(
    out: Path, config: dict[str, Any], shard: Shard, *, resume: bool, overwrite: bool
) -> None:
    """Join (or start) a sharded run: write or check the shared run.json, then this shard's files.

    `--overwrite` deletes only this shard's episodes and timing; `--resume` of a shard that
    never started just starts it.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    own = shard.folder(out)  # made by `hold_run`
    names = {p.name for p in out.iterdir()}
    if "run.json" not in names and names - _SHARD_START_NAMES - BOOKKEEPING:
        raise ValueError(
            f"{out} is not empty and holds no run.json; give the shards an empty or new --out"
        )
    if "run.json" in names and run_config_of(out) is None:
        raise UserError(
            f"{out} holds a run.json that is not a boxgym run's; give the shards an empty or "
            "new --out"
        )
    if not create_json_once(out / "run.json", config, scratch=own):
        check_same_run(out, read_run_json(out), config)
    episodes = own / EPISODES_FILE
    if episodes.exists() and episodes.stat().st_size > 0:
        if overwrite:
            episodes.unlink()
            (own / TIMING_FILE).unlink(missing_ok=True)
        elif not resume:
            raise ValueError(
                f"shard {shard.label} already has episodes in {own}; pass --resume to finish it, "
                "--overwrite to redo this shard, or choose another --out"
            )


def record_task_list(out: Path, task_list: dict[str, Any], *, scratch: Path) -> None:
    """Write the run's task list (`tasks.json`) unless it holds one: the first session fixes it."""
    create_json_once(out / TASK_LIST, task_list, scratch=scratch)


def fixed_task_list(out: Path) -> dict[str, Any] | None:
    """The task list the run in `out` started with (`tasks.json`), or None when it has none."""
    try:
        loaded = json.loads((out / TASK_LIST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("ids"), list):
        return None
    if run_config_of(out) is None:
        return None
    return loaded


def read_run_json(out: Path) -> dict[str, Any]:
    """The run's configuration, or a `UserError` saying how to recover."""
    run_json = out / "run.json"
    try:
        previous = json.loads(run_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{run_json} is not valid JSON ({error}); restore it, or start over with --overwrite"
        ) from error
    if not isinstance(previous, dict):
        raise UserError(f"{run_json} does not hold a run configuration; use --overwrite")
    return previous


def check_shard_count(out: Path, count: int) -> None:
    """Refuse, before any lock or folder is made, a shard of another count than the run's."""
    if (out / "run.json").is_file():
        check_same_count(out, read_run_json(out).get("shards"), count)


def check_same_run(out: Path, previous: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse to add episodes to a run whose configuration (or shard count) differs."""
    now = config.get("shards")
    check_same_count(out, previous.get("shards"), now)
    diffs = config_differences(previous, json.loads(json.dumps(config)))
    if diffs and now is None:
        raise ValueError(
            f"--resume: the configuration differs from the run in {out}: "
            + "; ".join(diffs)
            + ". Use the same options, a new --out, or --overwrite."
        )
    if diffs:
        raise ValueError(
            f"the configuration differs from the run the shards in {out} share: "
            + "; ".join(diffs)
            + ". Give every shard the same options, or choose another --out."
        )


def check_same_count(out: Path, before: Any, now: int | None) -> None:
    """Refuse a run whose shard count (None: unsharded) is not the one `out` was started with."""
    if before != now:
        if before is None:
            raise UserError(
                f"{out} holds an unsharded run; finish it without --shard (--resume), or give "
                "the shards another --out"
            )
        if now is None:
            raise UserError(
                f"{out} holds a run split into {before} shards; run its shards with --shard "
                f"i/{before}, or choose another --out"
            )
        raise UserError(
            f"{out} holds a run split into {before} shards, not {now}; every shard of one run "
            f"takes the same count: use --shard i/{before}, or choose another --out"
        )


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Fields that differ between two run configs, ignoring execution-only fields."""
    old, new = _episode_fields(old), _episode_fields(new)
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _episode_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a run config that decide its episodes."""
    out = {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}
    if isinstance(out.get("policy_kwargs"), dict):
        out["policy_kwargs"] = {
            k: v for k, v in out["policy_kwargs"].items() if k not in EXECUTION_POLICY_FIELDS
        }
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, fsync it and rename it over `path` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_json(tmp, data)
    os.replace(tmp, path)


def create_json_once(path: Path, data: Any, *, scratch: Path) -> bool:
    """Create `path` holding `data` unless it exists; False when it did.

    The file is written in `scratch` (a folder only this process writes) and hard-linked into
    place, which fails if `path` exists: of shards starting together exactly one writes it, and
    none ever reads it half-written.
    """
    tmp = scratch / f".{path.name}.tmp"
    _write_json(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
