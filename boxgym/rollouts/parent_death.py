"""Worker processes that never outlive the run that started them.

A worker blocked on its pipe does not notice that its parent was killed (SIGKILL from the OOM
killer, SIGTERM from SLURM or `timeout`): the parent's end of the pipe is still open in the
other workers it forked. `die_with_parent` asks Linux to kill the worker when its parent dies
(`prctl(PR_SET_PDEATHSIG)`), and the workers' loops still check their parent's id as they wait,
for systems without it. Locks are not the workers' concern: a forked child never holds its
parent's run lock (`boxgym.locks`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Make this (forked) process die with `parent`: SIGKILL on its death, where Linux offers
    it; exit at once if `parent` is already gone. SIGTERM gets its default action again (the
    parent's handler, inherited by fork, would turn it into an exception a pool catches)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
