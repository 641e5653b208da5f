"""`RunLock`: one writer per output folder, which a killed writer never leaves locked.

The lock is `fcntl.flock` on a file in the folder (`run.lock` for a run). The operating system
drops it when every descriptor of the lock's open file is closed, which for a killed process
happens as it dies. Two things could still keep it held after its holder is gone, and both are
handled here:

- Processes forked while a lock is held (worker processes) inherit its descriptor. Every forked
  child points its copies of the held locks' descriptors at /dev/null as it starts
  (`os.register_at_fork`), so only the process that took a lock holds it.
- The holder writes its process id into the file and clears it when it lets go. A process id
  left in the file therefore names a holder that died without letting go: taking the lock then
  says so (`note: took over ...`), and if something still holds it although that process is
  gone, `acquire` waits a few seconds for it before giving up with the holder's id.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

# How long a lock whose recorded holder is dead is waited for (its last processes exiting).
STALE_WAIT_S = 10.0

_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()


class RunLockedError(Exception):
    """Another process holds the folder's lock.

    Attributes:
        stale_pid: the process id the lock file names when that process is gone (something it
            left behind still holds the lock), else None.
    """

    def __init__(self, message: str, stale_pid: int | None = None) -> None:
        super().__init__(message)
        self.stale_pid = stale_pid


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped by its parent
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """A lock on a folder (`run.lock`, `fcntl.flock`), non-blocking unless asked.

    Two runs writing one `episodes.jsonl` would duplicate episodes; the second is refused.
    Shards of one run each hold the run's lock shared (so an unsharded run, which holds it
    exclusively, is refused while any shard runs) and their own shard folder's lock
    exclusively. See the module docstring for why a killed holder never blocks a `--resume`.

    Args:
        run_dir: the folder the lock file lives in.
        shared: take a shared lock (many holders) instead of an exclusive one.
        file: the lock file's name.
    """

    FILE = "run.lock"

    def __init__(self, run_dir: str | Path, *, shared: bool = False, file: str = FILE) -> None:
        self.path = Path(run_dir) / file
        self.shared = shared
        self._file: Any = None
        # After `acquire`: a note naming the dead process that last held the lock, if one did
        # (the caller prints it once the command goes ahead).
        self.took_over = ""

    def acquire(self, *, blocking: bool = False) -> RunLock:
        """Take the lock; raise `RunLockedError` when another process holds it (unless blocking)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 - held for the run
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(self._file.fileno(), mode if blocking else mode | fcntl.LOCK_NB)
        except BlockingIOError as error:
            stale = self._recorded_pid()
            if stale is None or process_alive(stale) or not self._wait(mode, stale):
                self._file.close()
                self._file = None
                alive = stale is None or process_alive(stale)
                raise RunLockedError(str(self.path.parent), None if alive else stale) from error
        previous = self._recorded_pid()
        if previous is not None and previous != os.getpid() and not process_alive(previous):
            self.took_over = (
                f"note: took over {self.path} from process {previous}, which ended without "
                "releasing it (a killed run)"
            )
        if not self.shared:  # the holder's process id, for the user who finds the folder busy
            self._file.seek(0)
            self._file.truncate()
            self._file.write(f"{os.getpid()}\n")
            self._file.flush()
        _HELD.add(self)
        return self

    def _recorded_pid(self) -> int | None:
        """The process id written in the lock file, if any."""
        try:
            self._file.seek(0)
            first = self._file.readline().strip()
        except (OSError, ValueError):
            return None
        return int(first) if first.isdigit() else None

    def _wait(self, mode: int, stale: int) -> bool:
        """Wait up to `STALE_WAIT_S` for a lock whose recorded holder is gone; True once held."""
        import fcntl

        print(
            f"note: {self.path} names process {stale}, which is gone; waiting up to "
            f"{STALE_WAIT_S:.0f} s for the processes it left to let go",
            file=sys.stderr,
        )
        deadline = time.monotonic() + STALE_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                fcntl.flock(self._file.fileno(), mode | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            return True
        return False

    def release(self) -> None:
        """Let go: clear the recorded process id (the lock ended cleanly), then close."""
        if self._file is not None:
            _HELD.discard(self)
            if not self.shared:
                try:
                    self._file.seek(0)
                    self._file.truncate()
                    self._file.flush()
                except OSError:
                    pass
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _drop_inherited_locks() -> None:
    """In a forked child: point the descriptors of the parent's held locks at /dev/null, so the
    child, should it outlive its parent, holds none of them."""
    for lock in list(_HELD):
        file = lock._file
        if file is None:
            continue
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, file.fileno())
        finally:
            os.close(null)
        lock._file = None  # the child's copy is not the lock: it never releases or rewrites it
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)
