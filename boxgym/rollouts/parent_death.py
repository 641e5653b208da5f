"""Worker processes that never outlive the run that started them, forked safely.

A worker blocked on its pipe does not notice that its parent was killed (SIGKILL from the OOM
killer, SIGTERM from SLURM or `timeout`): the parent's end of the pipe is still open in the
other workers it forked. `die_with_parent` asks Linux to kill the worker when its parent dies
(`prctl(PR_SET_PDEATHSIG)`), and the workers' loops still check their parent's id as they wait,
for systems without it. Locks are not the workers' concern: a forked child never holds its
parent's run lock (`boxgym.locks`).

Workers are forked with Ctrl-C and SIGTERM held (`signals_held`): a signal arriving during a
fork would otherwise land in an at-fork handler (logging's), where Python prints it as an
ignored exception with a traceback and drops it, so the run would not stop. Held, it is
delivered just after, where it stops the run cleanly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

_PR_SET_PDEATHSIG = 1
_STOPS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for the `with` block (forking workers); they arrive after it."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def die_with_parent(parent: int) -> None:
    """Make this (forked) process die with `parent`: SIGKILL on its death, where Linux offers
    it; exit at once if `parent` is already gone. SIGTERM gets its default action again (the
    parent's handler, inherited by fork, would turn it into an exception a pool catches)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # forked while `signals_held`
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
