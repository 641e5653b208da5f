"""Where a result came from: the command, the commit, the checkpoint and the date, recorded in
result files (every file in `results/` carries them)."""

from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
from pathlib import Path


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit checked out where boxgym's source lives (None outside a git checkout), with
    "+dirty" when tracked files differ from it."""
    where = Path(path or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(command: str | None = None) -> dict[str, str | None]:
    """`{"command", "commit", "date"}` of the running process (the command as typed: argv)."""
    return {
        "command": command
        or shlex.join(["boxgym" if a.endswith("boxgym") else a for a in sys.argv]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


NOT_RECORDED = "not recorded"  # what a result file says where history lost a field
SEEING_PREFIX = "seeing-qwen2-vl-"


def checkpoint_key(model: str | None) -> str:
    """The short name of a checkpoint: a seeing model's recipe key (the folder
    `seeing-qwen2-vl-<key>`), else the folder's name or the hub id."""
    if not model:
        return NOT_RECORDED
    name = Path(str(model)).name if Path(str(model)).exists() else str(model)
    return name.removeprefix(SEEING_PREFIX)
