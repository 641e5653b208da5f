"""The lockstep runner and the run verbs: batching, determinism, resume after SIGKILL, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxgym.data.scenes import make_scene_task
from boxgym.env import BoxGymEnv, EnvConfig
from boxgym.policies.scripted import OraclePolicy
from boxgym.rollouts.commands import main as run_verbs
from boxgym.rollouts.runner import derive_seed, run_rollouts
from boxgym.rollouts.store import EpisodeStore, read_episodes

REPO = Path(__file__).resolve().parents[2]


def without_timing(path: Path) -> list[dict]:
    episodes = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("timing")
        episodes.append(record)
    return episodes


class SpyPolicy:
    """The oracle, recording the batch size of every call."""

    name = "spy"

    def __init__(self) -> None:
        self.inner = OraclePolicy(calls_per_turn=3)
        self.batches: list[int] = []

    def act(self, conversations, tools, tasks=None):
        self.batches.append(len(conversations))
        assert tools and all(t["type"] == "function" for t in tools)
        return self.inner.act(conversations, tools, tasks)


def tasks(n: int, family: str = "shapes") -> list:
    return [make_scene_task(family, seed=s) for s in range(n)]


def test_one_batched_policy_call_per_turn(tmp_path) -> None:
    spy = SpyPolicy()
    ts = tasks(4)
    with EpisodeStore(tmp_path) as store:
        stats = run_rollouts(
            ts, spy, lambda: BoxGymEnv(max_calls_per_turn=3), store, group_size=2, progress=False
        )
    turns = [-(-(len(t.objects) + 1) // 3) for t in ts]
    assert stats.episodes == 8
    # Every live episode in each call: 8 at first, then only those with turns left.
    assert spy.batches == [sum(2 for n in turns if n > turn) for turn in range(max(turns))]
    spy.batches.clear()
    with EpisodeStore(tmp_path / "chunked") as store:
        run_rollouts(
            ts,
            spy,
            lambda: BoxGymEnv(max_calls_per_turn=3),
            store,
            group_size=2,
            batch_size=3,
            progress=False,
        )
    assert max(spy.batches) == 3 and spy.batches[:3] == [3, 3, 2]


def test_max_live_bounds_batches_and_freed_slots_are_refilled(tmp_path) -> None:
    spy = SpyPolicy()
    with EpisodeStore(tmp_path) as store:
        stats = run_rollouts(
            tasks(5), spy, BoxGymEnv, store, group_size=2, max_live=3, progress=False
        )
    assert stats.episodes == 10 and max(spy.batches) == 3
    # Full batches until the last keys have started: no wave waits for its slowest episode.
    first_short = next(i for i, b in enumerate(spy.batches) if b < 3)
    assert sum(spy.batches[:first_short]) >= 10 - 3
    assert len(read_episodes(tmp_path).episodes) == 10


def test_seeds_depend_only_on_run_task_and_sample() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, t, s) for t in range(20) for s in range(8)}) == 160
    assert derive_seed(1, 1, 2) != derive_seed(0, 1, 2)


def test_env_errors_are_recorded_not_raised(tmp_path) -> None:
    class Broken(BoxGymEnv):
        def step(self, action):
            raise RuntimeError("boom")

    with EpisodeStore(tmp_path) as store:
        stats = run_rollouts(tasks(2), OraclePolicy(), Broken, store, progress=False)
    log = read_episodes(tmp_path)
    assert stats.episodes == 2 and {r["failure"] for r in log.episodes} == {"env_error"}
    assert "boom" in log.episodes[0]["error"]


def test_policy_returning_wrong_number_of_texts_is_an_error(tmp_path) -> None:
    class Short:
        name = "short"

        def act(self, conversations, tools, tasks=None):
            return []

    with EpisodeStore(tmp_path) as store, pytest.raises(RuntimeError, match="returned 0 texts"):
        run_rollouts(tasks(1), Short(), BoxGymEnv, store, progress=False)


def test_episodes_verb_is_deterministic_and_dedups_images(tmp_path, capsys) -> None:
    from boxgym.cli import main as boxgym

    args = [
        "episodes",
        "--scene",
        "all",
        "--policy",
        "noisy",
        "--n",
        "6",
        "--group-size",
        "2",
        "--seed",
        "3",
        "--no-progress",
    ]
    assert boxgym([*args, "--out", str(tmp_path / "a")]) == 0
    assert boxgym([*args, "--out", str(tmp_path / "b"), "--batch-size", "5"]) == 0
    a, b = (
        without_timing(tmp_path / "a" / "episodes.jsonl"),
        without_timing(tmp_path / "b" / "episodes.jsonl"),
    )
    assert len(a) == 12
    for r in a + b:
        assert r.pop("run") in ("a", "b")  # the run directory's name, the only difference
    assert a == b
    # Each task image is shared by its two samples and stored once.
    refs = {sha for r in a for sha in r["task"]["images"]}
    assert len(refs) == 6
    files = {p.name for p in (tmp_path / "a" / "images").iterdir()}
    blocks = [
        b
        for r in a
        for m in [*r["prompt"], *(m for t in r["turns"] for m in t["tool_results"])]
        for b in m["content"]
        if b["type"] == "image"
    ]
    # Views and tool images are recipes over the task images: only those are files.
    assert blocks and all("recipe" in b and b["image"] in refs for b in blocks)
    assert files == refs
    for name in ("summary.json", "index.html", "run.json", "timing.json"):
        assert (tmp_path / "a" / name).exists()
    assert "page:" in capsys.readouterr().out


def test_refuses_a_non_empty_dir_and_mismatched_resume(tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    base = [
        "episodes",
        "--scene",
        "screens",
        "--n",
        "2",
        "--no-progress",
        "--no-page",
        "--out",
        out,
    ]
    assert run_verbs(base) == 0
    assert run_verbs(base) == 2
    assert "not empty" in capsys.readouterr().err
    assert run_verbs([*base, "--resume", "--seed", "9"]) == 2
    assert "configuration differs" in capsys.readouterr().err
    assert run_verbs([*base, "--resume"]) == 0  # nothing missing: adds nothing
    assert len(read_episodes(out).episodes) == 2
    assert run_verbs([*base, "--overwrite", "--n", "3"]) == 0
    assert len(read_episodes(out).episodes) == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    for option in ("--resume", "--overwrite"):  # a folder that holds no run is never touched
        assert run_verbs([*base[:-1], str(tmp_path / "other"), option]) == 2
        assert "holds no boxgym run (x.txt)" in capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["x.txt"]


def test_sigkill_mid_run_then_resume_completes_exactly(tmp_path) -> None:
    common = [
        "rollout", "--policy", "noisy", "--scene", "screens,shapes", "--n", "8", "--group-size", "3",
        "--seed", "1", "--no-progress", "--no-page", "--max-live", "6", "--batch-size", "4",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "boxgym.rollouts.commands", *common, "--out", str(killed), "--policy-delay", "0.15"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    episodes = killed / "episodes.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if episodes.exists() and episodes.read_bytes().count(b"\n") >= 4:
            break
        if proc.poll() is not None:
            pytest.fail(
                f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            )
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_episodes(killed).episodes
    assert 4 <= len(partial) < 24
    # Simulate the worst moment: a torn line at the end.
    with open(episodes, "ab") as f:
        f.write(b'{"key": {"task_id": "screens-easy-s1000')
    assert run_verbs([*common, "--out", str(killed), "--resume", "--policy-delay", "0"]) == 0
    resumed = without_timing(episodes)
    keys = [(r["key"]["task_id"], r["key"]["sample"]) for r in resumed]
    assert len(keys) == 24 and len(set(keys)) == 24
    # And the episodes are the ones an uninterrupted run produces.
    clean = tmp_path / "clean"
    assert run_verbs([*common, "--out", str(clean)]) == 0
    by_key = lambda rs: {(r["key"]["task_id"], r["key"]["sample"]): {**r, "run": ""} for r in rs}  # noqa: E731
    assert by_key(resumed) == by_key(without_timing(clean / "episodes.jsonl"))
    timing = json.loads((killed / "timing.json").read_text())
    assert len(timing) == 1  # the killed session never wrote its totals; the resumed one did
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["episodes"] == 24 and summary["group_size"] == 3


def test_env_options_reach_the_env(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["episodes", "--scene", "clutter", "--n", "2", "--no-progress", "--no-page", "--out", str(out),
            "--frame", "pixels", "--draw-box-returns", "text", "--max-turns", "2", "--calls-per-turn", "2"]  # fmt: skip
    assert run_verbs(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["env"]["coordinate_frame"] == "pixels" and run["env"]["max_turns"] == 2
    for r in read_episodes(out).episodes:
        assert r["truncated"] and len(r["turns"]) == 2  # clutter needs more than 2 turns of 2 calls
        assert all(
            b["type"] == "text" for t in r["turns"] for m in t["tool_results"] for b in m["content"]
        )


def test_env_config_is_validated(tmp_path, capsys) -> None:
    assert (
        run_verbs(["episodes", "--n", "1", "--out", str(tmp_path / "x"), "--max-turns", "0"]) == 2
    )
    assert "max_turns" in capsys.readouterr().err
    assert EnvConfig().max_turns >= 1


def test_run_modules_stay_light() -> None:
    code = (
        "import sys, boxgym.policies.registry, boxgym.rollouts.commands, boxgym.rollouts.suites, "
        "boxgym.rollouts.runner, boxgym.rollouts.viewer, boxgym.demo; "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'vllm', 'datasets', 'scipy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_progress_shows_turn_live_episodes_and_tokens(tmp_path, capsys) -> None:
    class CountingOracle(OraclePolicy):
        tokens_generated = 0

        def act(self, conversations, tools, tasks=None):
            self.tokens_generated += 10 * len(conversations)
            return super().act(conversations, tools, tasks)

    tasks = [make_scene_task("shapes", i, "easy") for i in range(3)]
    with EpisodeStore(tmp_path / "run") as store:
        run_rollouts(tasks, CountingOracle(), BoxGymEnv, store, progress=True, max_live=2)
    err = capsys.readouterr().err
    assert "turn=" in err and "live=2" in err and "tok/s=" in err and "3/3" in err


def test_count_error_covers_answered_episodes_only(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["episodes", "--policy", "random", "--n", "6", "--max-turns", "1", "--no-progress",
            "--no-page", "--out", str(out)]  # fmt: skip
    assert run_verbs(args) == 0
    records = read_episodes(out).episodes
    unanswered = [r for r in records if not r["metrics"]["answered"]]
    assert unanswered, "the random policy with one turn should leave some episodes unanswered"
    assert all(r["metrics"]["count_abs_error"] is None for r in unanswered)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["count_abs_error"]["n"] == len(records) - len(unanswered)
