"""Output folders: where a verb may write, and the only files `--overwrite` may delete.

Every verb that writes a folder (`--out`) follows the same rules:

- `--out` names a folder: a path that is a file, or lies below one, is refused in one line.
- One output per folder: a verb writes into a new or empty folder, or into a folder holding an
  earlier output of the same verb, and only with `--overwrite` (runs also take `--resume`,
  `boxgym.rollouts.run_dir`). A folder holding anything else is refused and nothing in it is
  touched.
- boxgym deletes only what it can prove it wrote. A verb other than a run lists the files it
  is about to write in the folder's manifest (`.boxgym.json`) before writing them, and
  `--overwrite` deletes exactly the listed files that are still there; a run folder is marked
  by its `run.json` and `--overwrite` deletes only the names a run writes
  (`boxgym.rollouts.run_dir.clear_run`). Anything else in the folder stays, and the command says
  what it left.
- The folder is locked while it is written (`fcntl.flock`, dropped by the operating system when
  its holder dies): a second command on the same folder is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from boxgym.errors import UserError
from boxgym.locks import RunLock, RunLockedError

MANIFEST = ".boxgym.json"
LOCK = ".boxgym.lock"
# Names that do not make a folder "not empty": locks, the manifest and the temporary files a
# run writes its JSON through (left by a run killed mid-write) are boxgym's bookkeeping.
BOOKKEEPING = frozenset(
    {MANIFEST, LOCK, "run.lock", "summary.lock", ".run.json.tmp", ".tasks.json.tmp"}
)


def check_out_path(out: Path, flag: str = "--out") -> None:
    """Refuse an output path that is a file, or lies below a file, before anything is made."""
    if out.exists() and not out.is_dir():
        raise UserError(
            f"{flag} {out} is a file, not a folder; give a new or empty folder for the output"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"{flag} {out}: {parent} is a file, so no folder can be made below it; "
                    "choose another path"
                )
            break


def entries(out: Path) -> list[str]:
    """The names in `out` other than boxgym's bookkeeping (none when it does not exist)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in BOOKKEEPING)


def listing(names: Iterable[str], limit: int = 3) -> str:
    """`a, b, c and 4 more`: a few names for a one-line message."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class Manifest:
    """What one verb wrote into a folder: its name and the files, relative to the folder."""

    verb: str
    files: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, out: Path) -> Manifest | None:
        """The folder's manifest, or None when it has none (or one boxgym cannot read)."""
        try:
            data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("verb"), str):
            return None
        files = data.get("files")
        if not isinstance(files, list):
            return None
        return cls(data["verb"], [f for f in files if isinstance(f, str)])


class OutputFolder:
    """A claimed output folder: `add` lists files in the manifest before they are written."""

    def __init__(self, path: Path, verb: str) -> None:
        self.path = path
        self.manifest = Manifest(verb)

    def add(self, files: Iterable[str]) -> None:
        """List `files` (relative paths) as this verb's, durably, before writing them.

        Raises:
            UserError: one of them exists already and is not this verb's (it would be replaced).
        """
        known = set(self.manifest.files)
        new = list(dict.fromkeys(f for f in files if f not in known))
        foreign = [f for f in new if (self.path / f).exists() or (self.path / f).is_symlink()]
        if foreign:
            raise UserError(
                f"{self.path} already holds {listing(foreign)}, which `{self.manifest.verb}` "
                "did not write and would replace; move it away or choose another --out"
            )
        self.manifest.files += new
        data = {"verb": self.manifest.verb, "files": self.manifest.files}
        tmp = self.path / f"{MANIFEST}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=1) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path / MANIFEST)


def delete_listed(out: Path, files: Iterable[str]) -> None:
    """Delete the listed files (never a path outside `out`), then the folders they emptied."""
    root = out.resolve()
    folders: set[Path] = set()
    for name in files:
        path = (out / name).resolve()
        if root not in path.parents or not path.is_file() or path.is_symlink():
            continue
        path.unlink(missing_ok=True)
        folders.update(p for p in path.parents if root in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: a file boxgym did not write keeps its folder


def check_folder(out: Path, verb: str, *, overwrite: bool, accumulate: bool = False) -> None:
    """Refuse an `--out` that `claim_folder` would refuse, without making anything (call it
    before slow work, such as reading the tasks, so the refusal comes first)."""
    check_out_path(out)
    present = entries(out)
    if not present:
        return
    earlier = Manifest.read(out)
    if earlier is None or earlier.verb != verb:
        what = f"a `{earlier.verb}` output" if earlier else "files boxgym did not write"
        raise UserError(
            f"{out} holds {what} ({listing(present)}); `{verb}` writes only into a new or "
            "empty folder or over its own earlier output, and deletes nothing else: choose "
            "another --out"
        )
    if not (overwrite or accumulate):
        raise UserError(
            f"{out} holds an earlier `{verb}` output ({listing(present)}); pass --overwrite "
            "to replace it (only the files it wrote are deleted), or choose another --out"
        )


@contextmanager
def claim_folder(
    out: Path, verb: str, *, overwrite: bool, accumulate: bool = False
) -> Iterator[OutputFolder]:
    """Hold `out` for one output of `verb` (see the module docstring) for the `with` block.

    Validate everything the verb can before calling this: the folder is made here. With
    `accumulate` (a verb whose outputs add up, as `data inspect` exporting one task after
    another), a folder holding earlier outputs of the verb is added to, its files kept.

    Raises:
        UserError: `out` is a file; another command is writing it; it holds something that is
            not an earlier output of `verb`, or one without `--overwrite`.
    """
    check_folder(out, verb, overwrite=overwrite, accumulate=accumulate)  # before making anything
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out, file=LOCK)
    try:
        lock.acquire()
    except RunLockedError as error:
        raise UserError(
            f"another boxgym command is writing to {out} (process id in {lock.path}); wait for "
            "it to finish, or choose another --out"
        ) from error
    try:
        check_folder(out, verb, overwrite=overwrite, accumulate=accumulate)  # under the lock
        present = entries(out)
        earlier = Manifest.read(out)
        if present and accumulate and not overwrite:
            folder = OutputFolder(out, verb)
            folder.manifest.files = list(earlier.files) if earlier else []
            yield folder
            return
        if present and earlier is not None:
            delete_listed(out, earlier.files)
            left = entries(out)
            if left:
                print(
                    f"note: --overwrite left {len(left)} entr{'y' if len(left) == 1 else 'ies'} "
                    f"in {out} that `{verb}` did not write: {listing(left)}",
                    file=sys.stderr,
                )
        if lock.took_over:
            print(lock.took_over, file=sys.stderr)
        folder = OutputFolder(out, verb)
        folder.add([])  # the folder is this verb's from now on, even if it stops early
        yield folder
    finally:
        lock.release()
