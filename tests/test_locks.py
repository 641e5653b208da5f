"""`RunLock`: a forked child never holds its parent's lock, a dead holder is named and taken
over, and a lock still held after its holder died is waited for, then refused naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from boxgym import locks
from boxgym.locks import RunLock, RunLockedError

pytestmark = pytest.mark.slow  # subprocesses
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_child_forked_under_the_lock_does_not_keep_it(tmp_path) -> None:
    # The holder forks a child that outlives it (no parent-death signal here), then is killed.
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from boxgym.locks import RunLock
        held = RunLock({str(tmp_path)!r}).acquire()
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE)
    child = int(proc.stdout.readline())  # the child keeps the pipe open: read one line only
    proc.wait(timeout=60)
    proc.stdout.close()
    try:
        assert Path(f"/proc/{child}").exists()  # still running, holding the inherited file
        lock = RunLock(tmp_path).acquire()  # at once: the child's copy is not the lock
        assert "which ended without releasing it" in lock.took_over
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_lock_held_after_its_holder_died_is_refused_naming_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(locks, "STALE_WAIT_S", 0.5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # Something holds the lock file whose recorded holder is dead (a process it left behind).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(tmp_path / 'run.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "run.lock").write_text(f"{dead.pid}\n")
        with pytest.raises(RunLockedError) as caught:
            RunLock(tmp_path).acquire()
        assert caught.value.stale_pid == dead.pid
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # its last process gone: taken over
    assert str(dead.pid) in lock.took_over
    lock.release()
    assert (tmp_path / "run.lock").read_text() == ""
