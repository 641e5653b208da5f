"""Scripted rollouts over worker processes: the same episodes as one process, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from boxgym.rollouts.commands import main as run_verbs
from boxgym.rollouts.metrics import EpisodeColumns
from boxgym.rollouts.shards import read_run
from boxgym.rollouts.viewer import index_entry
from boxgym.rollouts.workers import summary_fields


def by_key(path: Path) -> dict[tuple[str, int], dict]:
    episodes = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("timing")
        record.pop("run")
        episodes[(record["key"]["task_id"], record["key"]["sample"])] = record
    return episodes


def test_two_workers_store_the_episodes_one_process_stores(tmp_path, capsys) -> None:
    args = ["episodes", "--scene", "all", "--policy", "noisy", "--n", "5", "--group-size", "2"]
    args += ["--seed", "4", "--no-progress", "--no-page"]
    assert run_verbs([*args, "--out", str(tmp_path / "one")]) == 0
    assert run_verbs([*args, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one, two = (
        by_key(tmp_path / "one" / "episodes.jsonl"),
        by_key(tmp_path / "two" / "episodes.jsonl"),
    )
    assert len(one) == 10 and one == two
    images = lambda run: sorted(p.name for p in (tmp_path / run / "images").iterdir())  # noqa: E731
    assert images("one") == images("two") and len(images("two")) == 5
    # A resumed worker run finishes only what is missing.
    lines = (tmp_path / "two" / "episodes.jsonl").read_text().splitlines()
    (tmp_path / "two" / "episodes.jsonl").write_text("\n".join(lines[:4]) + "\n")
    assert run_verbs([*args, "--out", str(tmp_path / "two"), "--workers", "2", "--resume"]) == 0
    assert by_key(tmp_path / "two" / "episodes.jsonl") == one
    assert "6 episode(s) this session, 10/10 stored" in capsys.readouterr().out
    # Shards run over workers too: each shard's workers run its share into the shared folder.
    for shard in ("0/2", "1/2"):
        argv = [*args, "--out", str(tmp_path / "sharded"), "--workers", "2", "--shard", shard]
        assert run_verbs(argv) == 0
    union = {
        (r["key"]["task_id"], r["key"]["sample"]): {**r, "timing": None, "run": None}
        for r in read_run(tmp_path / "sharded").episodes
    }
    assert union == {key: {**r, "timing": None, "run": None} for key, r in one.items()}
    assert sorted(p.name for p in (tmp_path / "sharded" / "images").iterdir()) == images("one")
    assert not list((tmp_path / "sharded" / "shards").glob("*/.tmp-*"))


def test_summary_fields_give_the_summary_and_page_index_of_whole_records(tmp_path) -> None:
    args = ["episodes", "--scene", "all", "--policy", "noisy", "--n", "6", "--group-size", "2"]
    assert run_verbs([*args, "--seed", "3", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "episodes.jsonl").open()]
    records[0]["task"].pop("answer", None)  # the page index then counts the task's objects
    records[1]["page_base"] = "../other"
    whole, slim = EpisodeColumns(), EpisodeColumns()
    for record in records:
        whole.add(record)
        slim.add(summary_fields(record))
        assert index_entry(summary_fields(record)) == index_entry(record)
    assert len(json.dumps(summary_fields(records[2]))) < len(json.dumps(records[2])) / 4
    assert whole.names == slim.names and whole.timing() == slim.timing()
    for name in whole.names:
        np.testing.assert_array_equal(whole.values(name), slim.values(name))
    for key in ("group", "failure", "by_difficulty", "by_source", "by_policy"):
        (whole_codes, whole_labels), (slim_codes, slim_labels) = whole.codes(key), slim.codes(key)
        assert whole_codes.tolist() == slim_codes.tolist() and whole_labels == slim_labels
    failures = {record.get("failure") for record in records}
    assert len(failures) > 1, failures  # the noisy policy fails some episodes: both paths seen
