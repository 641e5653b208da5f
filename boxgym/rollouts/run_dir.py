"""The run folder: its locks, and creating, checking (`--resume`) or clearing (`--overwrite`) it.

A run folder holds `run.json` (the run's configuration), `episodes.jsonl`, `images/`,
`timing.json` (one entry per session), `summary.json`, `index.html` and its `pages/`; a sharded
run keeps each shard's episodes and timing under `shards/<i>-of-<n>/` instead
(`boxgym.rollouts.shards`). A folder that already holds a run is refused unless `--resume`
(finish the missing episodes; the configuration must match) or `--overwrite` (delete that run's
files first) is given. A shard starts in a folder where other shards of the same run already
are without either option: it checks the shared `run.json` and only its own episodes need
`--resume` or `--overwrite`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from boxgym.errors import UserError
from boxgym.rollouts.shards import SHARDS_DIR, TIMING_FILE, Shard
from boxgym.rollouts.store import EPISODES_FILE, IMAGES_DIR, RunLock, RunLockedError
from boxgym.rollouts.viewer import PAGE_DIR

RUN_FILES = ("run.json", "episodes.jsonl", "summary.json", "index.html", "timing.json")
# Fields of run.json that may change between sessions of one run (they do not change episodes).
EXECUTION_FIELDS = ("batch_size", "max_live", "progress", "policy_delay_s", "workers")
# Policy options that say where the model is served and how hard to press it, not what it
# generates: shards on different machines may point at different replicas.
EXECUTION_POLICY_FIELDS = ("base_url", "max_concurrency", "timeout", "max_retries")
SUMMARY_LOCK = "summary.lock"
# What a folder may hold before the first shard has written run.json (other shards' locks).
_SHARD_START_NAMES = {RunLock.FILE, SUMMARY_LOCK, SHARDS_DIR, IMAGES_DIR}


@contextmanager
def hold_run(out: Path, shard: Shard | None) -> Iterator[None]:
    """Hold the locks of one run (or one shard of it) for the `with` block.

    An unsharded run holds `run.lock` exclusively; a shard holds it shared and its own folder's
    lock exclusively. Raises a `UserError` naming who holds the lock.
    """
    with ExitStack() as stack:
        run_lock = RunLock(out, shared=shard is not None)
        try:
            run_lock.acquire()
        except RunLockedError as error:
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
        if shard is not None:
            shard_lock = RunLock(shard.folder(out))
            try:
                shard_lock.acquire()
            except RunLockedError as error:
                raise UserError(
                    f"shard {shard.label} of {out} is already running (process id in "
                    f"{shard_lock.path}); run another shard, or wait for this one to finish"
                ) from error
            stack.callback(shard_lock.release)
        yield


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
    """Create, check (resume) or clear (overwrite) an unsharded run directory."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    ignored = {RunLock.FILE, SUMMARY_LOCK}
    existing = out.exists() and any(p.name not in ignored for p in out.iterdir())
    if existing and overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / IMAGES_DIR, ignore_errors=True)
        shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
        shutil.rmtree(out / PAGE_DIR, ignore_errors=True)
    elif existing and resume:
        if not (out / "run.json").exists():
            raise ValueError(
                f"{out} has no run.json, so there is no run to resume; use a new --out or --overwrite"
            )
        check_same_run(out, read_run_json(out), config)
        return
    elif existing:
        raise ValueError(
            f"{out} is not empty; pass --resume to finish the run there, --overwrite to replace it, "
            "or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", config)


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
    if "run.json" not in names and names - _SHARD_START_NAMES:
        raise ValueError(
            f"{out} is not empty and holds no run.json; give the shards an empty or new --out"
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
