"""Env hosts: a policy in this process over envs in worker processes stores the episodes one
process stores; a worker that dies is one line and exit 2, and the run resumes; no orphans."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from boxgym.env import EnvConfig
from boxgym.policies.scripted import NoisyPolicy
from boxgym.rollouts.commands import main as run_verbs
from boxgym.rollouts.commands import make_env_factory, scene_tasks
from boxgym.rollouts.env_host import ProcessEnvHost
from boxgym.rollouts.runner import run_rollouts
from boxgym.rollouts.store import EpisodeStore

REPO = Path(__file__).resolve().parents[2]


def by_key(path: Path) -> dict[tuple[str, int], dict]:
    episodes = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("timing")
        record.pop("run", None)
        episodes[(record["key"]["task_id"], record["key"]["sample"])] = record
    return episodes


class ParentOnlyPolicy:
    """The noisy policy, bound to this process (it holds a lock, which cannot be pickled into a
    worker) and reading the pixels of every image it is shown, as a model does."""

    name = "parent-only"

    def __init__(self) -> None:
        self.inner = NoisyPolicy(seed=3, calls_per_turn=3)
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.batches: list[int] = []
        self.images = 0
        self.pixels = hashlib.sha256()  # of every image shown, in order

    def act(self, conversations, tools, tasks=None):
        assert os.getpid() == self.pid
        self.batches.append(len(conversations))
        for conversation in conversations:
            for message in conversation:
                for block in message["content"]:
                    if isinstance(block, dict) and block.get("type") == "image":
                        assert isinstance(block["image"], Image.Image)
                        self.pixels.update(block["image"].tobytes())
                        self.images += 1
        return self.inner.act(conversations, tools, tasks)


@pytest.mark.slow
def test_env_workers_store_the_episodes_one_process_stores(tmp_path) -> None:
    tasks = scene_tasks(
        ["screens", "shapes", "clutter"], 5, 2, "easy"
    )  # lambdas: forked, not pickled
    options = {"group_size": 2, "seed": 7, "max_live": 6, "progress": False}
    make_env = make_env_factory(EnvConfig(draw_box_returns="both"))  # marked views and crops
    alone = ParentOnlyPolicy()
    with pytest.raises(TypeError):
        pickle.dumps(alone)
    with EpisodeStore(tmp_path / "one") as store:
        run_rollouts(tasks, alone, make_env, store, **options)
    spread = ParentOnlyPolicy()
    with (
        EpisodeStore(tmp_path / "two") as store,
        ProcessEnvHost(2, tasks, make_env, store) as host,
    ):
        stats = run_rollouts(tasks, spread, make_env, store, env_host=host, **options)
        workers = host.pids()
    assert stats.episodes == 10 and stats.env_s > 0
    assert host.started[0] > 0 and host.started[1] > 0 and sum(host.started) == 10
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)  # closed and reaped
    # One batched call per turn over every live episode, whichever process holds the envs.
    assert spread.batches == alone.batches and max(spread.batches) == 6
    assert spread.images == alone.images > 0
    assert spread.pixels.digest() == alone.pixels.digest()  # images rebuilt from their recipes
    one, two = (
        by_key(tmp_path / "one" / "episodes.jsonl"),
        by_key(tmp_path / "two" / "episodes.jsonl"),
    )
    assert len(one) == 10 and one == two
    images = lambda run: sorted(p.name for p in (tmp_path / run / "images").iterdir())  # noqa: E731
    assert images("one") == images("two")


@pytest.mark.slow
def test_hf_policy_over_env_workers_equals_one_process(tmp_path, tiny_model_path) -> None:
    args = ["rollout", "--policy", "hf", "--model", str(tiny_model_path), "--scene", "screens"]
    args += ["--n", "2", "--group-size", "2", "--max-new-tokens", "12", "--temperature", "1.0"]
    args += ["--seed", "3", "--max-turns", "2", "--no-progress", "--no-page"]
    assert run_verbs([*args, "--out", str(tmp_path / "one")]) == 0
    assert run_verbs([*args, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one, two = (
        by_key(tmp_path / "one" / "episodes.jsonl"),
        by_key(tmp_path / "two" / "episodes.jsonl"),
    )
    assert len(one) == 4 and one == two
    assert len({r["turns"][0]["assistant"] for r in one.values()}) > 1  # sampled, not constant


# A scripted policy kept in the parent as a model policy is (--policy-in-parent), slowed so the
# run can be hit part-way.
RUN = [
    "rollout", "--policy", "noisy", "--policy-in-parent", "--workers", "2", "--scene", "screens,shapes",
    "--n", "6", "--group-size", "2", "--seed", "1", "--max-live", "4", "--no-progress", "--no-page",
]  # fmt: skip


def start_run(out: Path, delay: str = "0.2") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "boxgym.cli", *RUN, "--out", str(out), "--policy-delay", delay],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
        # Ctrl-C's default action, as in a terminal: a test suite started in the background
        # (`make test &`, some CI runners) inherits SIGINT ignored, and Python then never
        # raises KeyboardInterrupt (a run so started ran to the end and exited 0).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def workers_once_running(proc: subprocess.Popen, out: Path, lines: int) -> list[int]:
    """The run's worker pids, once `lines` episodes are stored."""
    episodes = out / "episodes.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be hit: {proc.stderr.read()[-2000:]}")
        if episodes.exists() and episodes.read_bytes().count(b"\n") >= lines:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if len(children) == 2:
                return [int(pid) for pid in children]
        time.sleep(0.02)
    pytest.fail("the run stored nothing in 90 s")


def gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            except FileNotFoundError:
                continue
            if state != "Z":  # a zombie has exited; its new parent reaps it
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_killed_worker_is_one_line_and_the_run_resumes(tmp_path) -> None:
    out = tmp_path / "run"
    proc = start_run(out)
    workers = workers_once_running(proc, out, 1)
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: env worker 0") and "SIGKILL" in line and "--resume" in line
    assert gone(workers)
    stored = len(by_key(out / "episodes.jsonl"))
    assert 1 <= stored < 12
    argv = [*RUN, "--out", str(out), "--resume"]
    assert run_verbs(argv) == 0
    clean = tmp_path / "clean"
    assert run_verbs([*RUN[:3], *RUN[6:], "--out", str(clean)]) == 0  # one process, no workers
    assert by_key(out / "episodes.jsonl") == by_key(clean / "episodes.jsonl")


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "ctrl-c"])
@pytest.mark.slow
def test_stopping_the_parent_leaves_no_worker_behind(tmp_path, how) -> None:
    out = tmp_path / "run"
    proc = start_run(out)
    workers = workers_once_running(proc, out, 1)
    if how == "sigkill":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "sigterm":
        os.kill(proc.pid, signal.SIGTERM)  # what `timeout` and SLURM send
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = proc.communicate(timeout=60)
    assert gone(workers)
    if how != "sigkill":
        assert proc.returncode == (130 if how == "ctrl-c" else 143), err
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("interrupted: " if how == "ctrl-c" else "stopped by SIGTERM: ")
        assert "episodes are stored" in last and "--resume" in last, last
    assert run_verbs([*RUN, "--out", str(out), "--resume"]) == 0
    assert len(by_key(out / "episodes.jsonl")) == 12


def test_shards_over_env_workers_store_the_one_process_episodes(tmp_path) -> None:
    from boxgym.rollouts.shards import read_run

    args = [*RUN[:3], *RUN[6:]]
    assert run_verbs([*args, "--out", str(tmp_path / "one")]) == 0
    for shard in ("0/2", "1/2"):
        argv = [*RUN, "--out", str(tmp_path / "sharded"), "--shard", shard]
        assert run_verbs(argv) == 0
    union = {
        (r["key"]["task_id"], r["key"]["sample"]): {**r, "timing": None, "run": None}
        for r in read_run(tmp_path / "sharded").episodes
    }
    one = by_key(tmp_path / "one" / "episodes.jsonl")
    assert union == {key: {**r, "timing": None, "run": None} for key, r in one.items()}
    assert not list((tmp_path / "sharded" / "shards").glob("*/.tmp-*"))
    images = lambda run: sorted(p.name for p in (tmp_path / run / "images").iterdir())  # noqa: E731
    assert images("sharded") == images("one")
