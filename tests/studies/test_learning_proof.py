"""The learning proof and the boxing comparison on the random tiny model, `--quick`: the results'
shape, the plot, resuming, the seed check, and the boxing arms read from a finished proof."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from boxgym.studies import load_study
from boxgym.studies.learning_proof import METRICS
from boxgym.studies.runner import run_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proof(lab, tmp_path_factory):
    out = tmp_path_factory.mktemp("proof")
    result = run_study(
        load_study("learning-proof"),
        lab,
        out,
        quick=True,
        flags={"--eval-tasks": 6},
        command="boxgym study learning-proof --quick --eval-tasks 6",
    )
    return out, result


def check_metrics(section: dict, n: int) -> None:
    for name in METRICS:
        cell = section[name]
        assert cell["lo"] <= cell["mean"] <= cell["hi"]
        assert cell["n"] == n
    counts = section["by_true_count"]
    assert sum(cells["count_accuracy"]["n"] for cells in counts.values()) == n
    for cells in counts.values():
        assert set(cells) == set(METRICS)


def test_results_hold_each_stage_by_metric_and_true_count(proof):
    out, result = proof
    assert result["grpo"]["after"]["count_accuracy"]["n"] == 6
    saved = json.loads((out / "results.json").read_text())
    assert saved["grpo"]["before"] == saved["sft"]["held_out"]
    for section in (saved["base"]["held_out"], saved["grpo"]["before"], saved["grpo"]["after"]):
        check_metrics(section, 6)
    assert saved["sft"]["steps"] == 2 and saved["grpo"]["steps"] == 1
    assert [c["step"] for c in saved["grpo"]["curve"]] == [1]
    assert {r["stage"] for r in saved["rows"]} == {"base", "sft", "grpo"}
    assert saved["settings"]["eval_tasks"] == 6
    for key in ("command", "commit", "checkpoint", "date"):
        assert saved[key]
    assert saved["checkpoint"] == Path(saved["model"]["model"]).name  # tiny-qwen2-vl-v<N>
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sft" / "adapter" / "adapter_config.json").is_file()
    assert (out / "episodes" / "grpo" / "episodes.jsonl").is_file()


def test_a_second_run_needs_resume_and_resume_reuses_the_stages(proof, lab):
    out, first = proof
    study = load_study("learning-proof")
    with pytest.raises(ValueError, match="--resume"):
        run_study(study, lab, out, quick=True, flags={"--eval-tasks": 6})
    with pytest.raises(ValueError, match="eval_tasks"):
        run_study(study, lab, out, quick=True, flags={"--eval-tasks": 5, "--resume": True})
    adapter = out / "grpo" / "adapter" / "adapter_model.safetensors"
    trained = adapter.stat().st_mtime_ns
    again = run_study(study, lab, out, quick=True, flags={"--eval-tasks": 6, "--resume": True})
    assert adapter.stat().st_mtime_ns == trained
    assert again["grpo"]["after"] == first["grpo"]["after"]


def test_overlapping_seeds_are_refused(lab, tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        run_study(
            load_study("learning-proof"),
            lab,
            tmp_path,
            quick=True,
            overrides=["eval_seed_base=100000"],
        )
    assert not (tmp_path / "sft").exists()


def test_boxing_compares_direct_and_tool_arms_of_a_finished_proof(proof, lab, tmp_path):
    proof_dir, proof_result = proof
    result = run_study(
        load_study("boxing"), lab, tmp_path, quick=True, flags={"--proof": str(proof_dir)}
    )
    overall = result["overall"]
    assert set(overall) == {
        "direct, zero-shot",
        "direct, SFT",
        "direct, SFT+GRPO",
        "tools, zero-shot",
        "tools, SFT",
        "tools, SFT+GRPO",
    }
    assert all(arm["count_accuracy"]["n"] == 6 for arm in overall.values())
    tools = overall["tools, SFT+GRPO"]["count_accuracy"]
    assert tools["mean"] == proof_result["grpo"]["after"]["count_accuracy"]["mean"]
    assert result["proof"]["settings"]["eval_tasks"] == 6
    assert (tmp_path / "direct" / "grpo" / "adapter" / "adapter_config.json").is_file()
    assert {r["true_count"] for r in result["rows"]} <= {1, 2}


def test_boxing_quick_runs_its_own_proof_through_the_cli(tiny_model_path, tmp_path):
    """`boxgym study boxing --quick` as a user runs it: the proof inside, then the direct arms."""
    import os
    import subprocess
    import sys

    out = tmp_path / "boxing"
    done = subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "study", "boxing", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["command"] == f"boxgym study boxing --out {out} --quick"
    assert len(result["overall"]) == 6
    assert (out / "proof" / "progress.json").is_file()
    assert (out / "plot.png").is_file()
