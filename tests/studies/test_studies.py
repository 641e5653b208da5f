"""Every study through the shared runner on a tiny setting (random tiny model): the four files,
the columns, and 95% intervals that contain the mean."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from boxgym.studies import STUDIES, load_study
from boxgym.studies.runner import OUTPUT_FILES, columns, run_study

TINY: dict[str, list[str]] = {
    "patch-grid": ["n=2", "sizes=[0.25,1]", "grids=[aligned]", "max_new_tokens=2"],
    "resolution": ["n=2", "tokens=[4,16]", "filters=[nearest]", "max_new_tokens=2"],
    "rotation": ["n=2", "free_angles=[45]", "right_angles=[90]", "max_new_tokens=2"],
    "image-information": ["n=3", "kinds=[count]", "images=[real,blank]"],
    "probe": ["n=16", "test_fraction=0.5"],
    "information": ["mixture.num_examples=2", "mixture.weights={oracle: 1}", "ranks=[1,4]"],
}


def check_outputs(out, study) -> list[dict[str, str]]:
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with (out / "results.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == columns(study)
        rows = list(reader)
    assert rows
    for row in rows:
        assert int(row["n"]) >= 1
        for metric in study.metrics:
            mean, lo, hi = (row[f"{metric}_{s}"] for s in ("mean", "lo", "hi"))
            if mean != "":
                assert float(lo) - 1e-9 <= float(mean) <= float(hi) + 1e-9, (metric, row)
    result = json.loads((out / "results.json").read_text())
    assert result["study"] == study.name and len(result["rows"]) == len(rows)
    report = (out / "report.md").read_text()
    assert "plot.png" in report and study.factors[0] in report
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.slow
def test_study_runs_on_a_tiny_setting(name, lab, tmp_path):
    study = load_study(name)
    result = run_study(study, lab, tmp_path, overrides=TINY[name], command=f"boxgym study {name}")
    rows = check_outputs(tmp_path, study)
    if name == "patch-grid":
        assert {(float(r["object_size"]), r["grid"]) for r in rows} == {
            (0.25, "aligned"),
            (1.0, "aligned"),
        }
        # aligned objects of a patch or less sit inside one patch
        assert all(float(r["objects_crossing_mean"]) == 0.0 for r in rows)
    if name == "resolution":
        assert sorted(float(r["image_tokens_mean"]) for r in rows) == [4.0, 16.0]
    if name == "information":
        extra = result["extra"]
        assert extra["lora_params_per_rank"] == 2048
        assert extra["peft_check"] == {"1": 2048, "8": 16384}
        assert set(extra["smallest_rank"]) >= {"measured", "rl_1000"}
    if name == "probe":
        assert {r["stage"] for r in rows} >= {"vision", "merger", "layer_0_image", "layer_2_last"}


def test_presentation_with_the_oracle_policy(tiny_model_path, tmp_path):
    """The presentation study runs real tool episodes; the oracle boxes every object, so counts
    are right in every mode and only the images shown differ."""
    from boxgym.policies.registry import make_policy
    from boxgym.studies.lab import Lab

    lab = Lab(model=str(tiny_model_path), batch_size=4)
    lab._policy = make_policy("oracle")
    study = load_study("presentation")
    run_study(study, lab, tmp_path, overrides=["n=2", "modes=[text,image,both]"])
    rows = {r["draw_box_returns"]: r for r in check_outputs(tmp_path, study)}
    assert all(float(r["count_accuracy_mean"]) == 1.0 for r in rows.values())
    tokens = {m: float(r["image_tokens_mean"]) for m, r in rows.items()}
    assert tokens["text"] < tokens["image"] < tokens["both"]
    assert (tmp_path / "episodes" / "image" / "episodes.jsonl").is_file()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "study", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_lists_every_study():
    done = cli("--list")
    assert done.returncode == 0
    for name in STUDIES:
        assert name in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--out", "x"], "unknown study 'nope'"),
        (["rotation"], "--out DIR is required"),
        (["rotation", "--out", "x", "--set", "angels=[1]"], "unknown setting 'angels'"),
        ([], "name a study"),
        (
            ["learning-proof", "--out", "x", "--set", "trainer.learning_rate=1e-4"],
            "SFT and GRPO config overrides are --sft-set KEY=VALUE",
        ),
        (["patch-grid", "--out", "x", "--sft-steps", "3"], "--sft-steps is not an option"),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
    done = cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_count_entropy_is_what_a_blank_image_leaves():
    from boxgym.studies.image_information import count_entropy

    assert count_entropy([1, 2]) == pytest.approx(1.0)
    assert count_entropy([3, 3, 3]) == 0.0
    assert count_entropy([1, 2, 3, 4]) == pytest.approx(2.0)


def test_parse_count_takes_the_first_plausible_integer():
    from boxgym.studies.direct import count_scores, parse_count

    assert parse_count("There are 3 shapes.") == 3
    assert parse_count("12") == 12
    assert parse_count("none") is None
    assert parse_count("11111111111111") is None  # degenerate: no answer, not 1e13
    assert count_scores(None, 4) == {
        "count_accuracy": 0.0,
        "count_abs_error": 4.0,
        "count_rel_error": 1.0,
        "answered": 0.0,
    }
