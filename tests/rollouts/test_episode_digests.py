"""Scripted runs give the same episodes as the committed digests: behaviour pinned across refactors.

`boxgym episodes` runs the oracle and noisy policies over every scene family; each stored
episode is reduced to a digest (task, seed, the assistant's texts, rewards, metrics, and a hash
of the whole record less its timings), and the digests must equal `episode_digests.json`.
A deliberate change of behaviour rewrites that file with

    BOXGYM_WRITE_DIGESTS=1 python -m pytest tests/rollouts/test_episode_digests.py

and says why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DIGESTS = Path(__file__).with_name("episode_digests.json")

# name -> the `boxgym episodes` arguments of one scripted run (6 tasks: 2 per scene family).
RUNS: dict[str, list[str]] = {
    "oracle-easy-both": [
        "--policy", "oracle", "--difficulty", "easy", "--draw-box-returns", "both",
        "--group-size", "2",
    ],
    "noisy-hard": ["--policy", "noisy", "--difficulty", "hard", "--calls-per-turn", "2"],
    "noisy-medium-crop": [
        "--policy", "noisy", "--difficulty", "medium", "--draw-box-returns", "crop",
        "--frame", "pixels",
    ],
}  # fmt: skip
COMMON = ["--scene", "all", "--n", "6", "--seed", "11", "--no-progress", "--no-page"]
# Fields of a stored episode that vary from run to run of the same seed.
UNSTABLE = ("timing", "run")


def episode_digest(record: dict[str, Any]) -> dict[str, Any]:
    """What must not change for a seed: the visible outcome, and a hash of everything else."""
    stable = {k: v for k, v in record.items() if k not in UNSTABLE}
    blob = json.dumps(stable, sort_keys=True, ensure_ascii=False).encode()
    return {
        "task": record["key"]["task_id"],
        "sample": record["key"]["sample"],
        "seed": record["seed"],
        "assistant": [turn["assistant"] for turn in record["turns"]],
        "turn_rewards": [turn["reward"] for turn in record["turns"]],
        "reward": record["reward"],
        "failure": record["failure"],
        "metrics": record["metrics"],
        "record_sha256": hashlib.sha256(blob).hexdigest(),
    }


def run_digests(name: str, out: Path) -> list[dict[str, Any]]:
    """Run `boxgym episodes` for RUNS[name] into `out` and digest its episodes in key order."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "boxgym.cli", "episodes", *RUNS[name], *COMMON]
    done = subprocess.run(
        [*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    records.sort(key=lambda r: (r["key"]["task_index"], r["key"]["sample"]))
    return [episode_digest(r) for r in records]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_scripted_episodes_match_the_committed_digests(name: str, tmp_path: Path) -> None:
    digests = run_digests(name, tmp_path / name)
    if os.environ.get("BOXGYM_WRITE_DIGESTS"):
        stored = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {"runs": {}}
        stored["common_arguments"] = COMMON
        stored["runs"][name] = {"arguments": RUNS[name], "episodes": digests}
        DIGESTS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    expected = json.loads(DIGESTS.read_text())
    assert expected["common_arguments"] == COMMON
    assert expected["runs"][name]["arguments"] == RUNS[name]
    golden = expected["runs"][name]["episodes"]
    assert len(digests) == len(golden)
    for got, want in zip(digests, golden):
        for field in want:  # field by field, so a failure names what changed
            assert got[field] == want[field], f"{want['task']} sample {want['sample']}: {field}"
