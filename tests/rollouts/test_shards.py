"""`--shard i/n`: shards of one run side by side in one folder, their union, locks, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxgym.errors import UserError
from boxgym.rollouts.run_dir import config_differences
from boxgym.rollouts.shards import Shard, read_run
from boxgym.rollouts.store import EpisodeStore

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)
# A noisy policy (its randomness comes from each episode's seed), two families, G = 2.
RUN = [
    "rollout", "--policy", "noisy", "--scene", "screens,shapes", "--n", "5", "--group-size", "2",
    "--seed", "3", "--no-progress",
]  # fmt: skip


def start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "boxgym.rollouts.commands", *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def by_key(episodes: list[dict]) -> dict[tuple[str, int], dict]:
    """Records by key, without the fields that differ between sessions (timing)."""
    return {(r["key"]["task_id"], r["key"]["sample"]): {**r, "timing": None} for r in episodes}


def test_shard_spec() -> None:
    assert Shard.parse("1/4") == Shard(1, 4) and Shard.parse(" 0 / 1 ").name == "0-of-1"
    for bad in ("4/4", "0/0", "a/b", "1", "-1/2", "1/2/3"):
        with pytest.raises(UserError, match="--shard i/n"):
            Shard.parse(bad)
    # the shards of a run partition its tasks
    shards = [list(Shard(i, 3).task_indices(10)) for i in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10)) and shards[1] == [
        1,
        4,
        7,
    ]


def test_replica_urls_do_not_make_another_run() -> None:
    old = {"seed": 0, "policy_kwargs": {"base_url": ["http://a/v1"], "temperature": 1.0}}
    assert config_differences(old, {**old, "policy_kwargs": {"base_url": ["http://b/v1"], "temperature": 1.0}}) == []  # fmt: skip
    assert config_differences(old, {**old, "policy_kwargs": {"temperature": 0.5}})


def test_a_shard_cleans_only_its_own_temporary_files(tmp_path) -> None:
    mine, theirs = tmp_path / "shards" / "0-of-2", tmp_path / "shards" / "1-of-2"
    theirs.mkdir(parents=True)
    (theirs / ".tmp-abc-1.png").write_bytes(b"in flight")
    mine.mkdir(parents=True)
    (mine / ".tmp-def-2.png").write_bytes(b"left by a kill")
    with EpisodeStore(tmp_path, episodes_dir=mine):
        pass
    assert (theirs / ".tmp-abc-1.png").exists() and not (mine / ".tmp-def-2.png").exists()


@pytest.mark.slow
def test_two_shards_at_once_give_the_unsharded_run(tmp_path) -> None:
    whole, sharded = tmp_path / "whole" / "run", tmp_path / "sharded" / "run"  # same run name
    procs = [
        start(*RUN, "--out", whole),
        start(*RUN, "--out", sharded, "--shard", "0/2", "--policy-delay", "0.02"),
        start(*RUN, "--out", sharded, "--shard", "1/2", "--policy-delay", "0.02"),
    ]
    for proc in procs:
        done = finish(proc)
        assert done.returncode == 0, done.stderr[-2000:]
    union = read_run(sharded)
    assert not union.report()
    assert union.stored == {Shard(0, 2): 6, Shard(1, 2): 4}  # tasks 0, 2, 4 and 1, 3; G = 2
    assert by_key(union.episodes) == by_key(read_run(whole).episodes)
    assert len(union.episodes) == 10
    images = {p.name for p in (sharded / "images").iterdir()}
    assert images == {p.name for p in (whole / "images").iterdir()}
    assert not [name for name in images if name.startswith(".tmp")]
    # the shard that ended last wrote the summary over both
    summary = json.loads((sharded / "summary.json").read_text())
    reference = json.loads((whole / "summary.json").read_text())
    assert summary["episodes"] == 10 and summary["shards"]["complete"] == 2
    for name, row in reference["metrics"].items():
        assert summary["metrics"][name]["mean"] == pytest.approx(row["mean"]), name
    assert summary["timing"]["sessions"] == 2
    # and `view` reads the union too
    (sharded / "summary.json").unlink()
    view = subprocess.run(
        [sys.executable, "-m", "boxgym.rollouts.commands", "view", str(sharded)],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert view.returncode == 0, view.stderr
    assert "shards: 2/2 complete, 10/10 episodes" in view.stdout
    assert json.loads((sharded / "summary.json").read_text())["episodes"] == 10


# Runs argvs through `boxgym.rollouts.commands.main` in one interpreter (one start-up).
_BATCH = """
import contextlib, io, json, sys
from boxgym.rollouts.commands import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def run_batch(argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    done = subprocess.run(
        [sys.executable, "-c", _BATCH, json.dumps(argvs)],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess(a, code, "", err) for a, (code, err) in zip(argvs, results)]


def test_page_lines_are_the_pass_s_lines_while_a_shard_still_appends(tmp_path) -> None:
    """The page copies the lines the summary pass read: a shard still running appends more
    between the two reads (this made the two-shards test fail now and then)."""
    from boxgym.rollouts.shards import RunReader

    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "boxgym.rollouts.commands", *RUN, "--out", str(run),
         "--shard", "0/2"],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reader = RunReader(run)
    records = list(reader)
    shard_file = Shard(0, 2).folder(run) / "episodes.jsonl"
    lines = shard_file.read_bytes().splitlines(keepends=True)
    with open(shard_file, "ab") as f:  # the shard "goes on": one more episode, and a torn one
        f.write(lines[0].replace(b'"sample": 0', b'"sample": 7', 1) + lines[1][:10])
    copied = list(reader.raw_lines())
    assert len(copied) == len(records) > 0
    assert [json.loads(line)["key"] for line in copied] == [r["key"] for r in records]


@pytest.mark.slow
def test_same_shard_twice_and_other_counts_are_refused(tmp_path) -> None:
    out = tmp_path / "run"
    slow = [*RUN, "--out", str(out), "--max-live", "1", "--policy-delay", "0.3"]
    first = start(*slow, "--shard", "0/2")
    try:
        deadline = time.monotonic() + 60
        while not (out / "run.json").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        same, other_count, unsharded = run_batch(
            [
                [*RUN, "--out", str(out), "--shard", "0/2", "--resume"],
                [*RUN, "--out", str(out), "--shard", "1/3"],
                [*RUN, "--out", str(out), "--resume"],
            ]
        )
        assert first.poll() is None, "the first shard ended before the checks; slow it down"
    finally:
        done = finish(first)
    assert done.returncode == 0, done.stderr[-2000:]
    one_line_error(same, "shard 0/2", "already running")
    one_line_error(other_count, "split into 2 shards, not 3", "--shard i/2")
    one_line_error(unsharded, "another boxgym run is writing")
    # once it is done: a different count is still refused, and so is an unsharded run
    later_count, later_unsharded = run_batch(
        [[*RUN, "--out", str(out), "--shard", "0/3"], [*RUN, "--out", str(out), "--resume"]]
    )
    one_line_error(later_count, "split into 2 shards, not 3")
    one_line_error(later_unsharded, "split into 2 shards", "--shard i/2")
    assert read_run(out).stored == {Shard(0, 2): 6}


@pytest.mark.slow
def test_killed_shard_resumes(tmp_path) -> None:
    out = tmp_path / "run"
    shard0 = [*RUN, "--out", str(out), "--shard", "0/2", "--no-page"]
    proc = start(*shard0, "--max-live", "1", "--policy-delay", "0.2")
    episodes = out / "shards" / "0-of-2" / "episodes.jsonl"
    deadline = time.monotonic() + 60
    while not (episodes.exists() and episodes.read_bytes().count(b"\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = read_run(out).stored[Shard(0, 2)]
    assert 1 <= kept < 6
    again, resumed, other = run_batch([shard0, [*shard0, "--resume"], [*RUN, "--out", str(out), "--shard", "1/2"]])  # fmt: skip
    one_line_error(again, "shard 0/2 already has episodes", "--resume")
    assert resumed.returncode == 0 and other.returncode == 0, resumed.stderr + other.stderr
    run = read_run(out)
    assert run.stored == {Shard(0, 2): 6, Shard(1, 2): 4} and len(by_key(run.episodes)) == 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"]["complete"] == 2 and summary["episodes"] == 10
