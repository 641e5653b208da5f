"""A run stopped any way, any number of times, then resumed, stores exactly the episodes of a run
never stopped: random interleavings of SIGKILL, SIGTERM and Ctrl-C with `--resume`, over
`episodes --workers 2` (hypothesis; a handful of examples). Every stop leaves no worker
behind and no lock held; a SIGTERM or Ctrl-C says in one line how many episodes are stored
and that `--resume` finishes the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # subprocesses
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)
# 96 episodes in chunks of 16 over two workers, each policy call slowed so a run lasts seconds.
RUN = [
    "episodes", "--policy", "noisy", "--scene", "screens,shapes", "--n", "48", "--group-size", "2",
    "--seed", "5", "--workers", "2", "--no-progress", "--no-page",
]  # fmt: skip
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def by_key(run_dir: Path) -> dict[tuple[str, int], dict]:
    episodes = {}
    for line in (run_dir / "episodes.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("timing")
        record.pop("run")
        key = (record["key"]["task_id"], record["key"]["sample"])
        assert key not in episodes, f"{key} stored twice"
        episodes[key] = record
    return episodes


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def holds_lock(out: Path, pid: int) -> bool:
    """Whether the run lock names `pid`: that process is past its start-up and running."""
    try:
        return (out / "run.lock").read_text().strip() == str(pid)
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.05)
    return False


def start(out: Path, resume: bool) -> subprocess.Popen:
    argv = [*RUN, "--out", str(out), "--policy-delay", "0.1", *(["--resume"] if resume else [])]
    return subprocess.Popen(
        [sys.executable, "-m", "boxgym.cli", *argv],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C's default
    )


def stop_part_way(out: Path, resume: bool, how: str, after: int) -> None:
    """Start the run, let it store `after` more episodes, stop it `how`; check what it left."""
    before = lines(out / "episodes.jsonl")
    proc = start(out, resume)
    deadline = time.time() + 120
    workers: list[int] = []
    while proc.poll() is None and time.time() < deadline:
        workers = children(proc.pid) or workers
        if holds_lock(out, proc.pid) and lines(out / "episodes.jsonl") >= before + after:
            break  # this process runs (it holds the lock) and stored `after` more episodes
        time.sleep(0.01)
    workers = children(proc.pid) or workers
    if proc.poll() is None:
        if how == "int":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        else:
            os.kill(proc.pid, SIGNALS[how])  # the parent alone, as the OOM killer does
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-3000:]
    assert gone(workers), f"workers {workers} outlived their parent"
    if proc.returncode in (130, 143):
        last = err.strip().splitlines()[-1]
        assert last.startswith(("interrupted", "stopped by SIGTERM")), last
        if "episodes" in last:
            assert "--resume" in last, last
    else:
        assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[tuple[str, int], dict]:
    out = tmp_path_factory.mktemp("clean") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "boxgym.cli", *RUN, "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return by_key(out)


@settings(
    max_examples=4,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    stops=st.lists(
        st.tuples(st.sampled_from(sorted(SIGNALS)), st.integers(min_value=0, max_value=40)),
        min_size=1,
        max_size=3,
    )
)
# Stops as the run starts: a Ctrl-C as the workers are forked once hit logging's at-fork lock.
@example(stops=[("int", 0), ("term", 0)])
def test_any_stops_then_resume_store_the_uninterrupted_episodes(
    tmp_path_factory, uninterrupted, stops
) -> None:
    out = tmp_path_factory.mktemp("stopped") / "run"
    for number, (how, after) in enumerate(stops):
        stop_part_way(out, resume=number > 0, how=how, after=after)
    done = subprocess.run(
        [sys.executable, "-m", "boxgym.cli", *RUN, "--out", str(out), "--resume"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert by_key(out) == uninterrupted
