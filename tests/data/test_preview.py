from __future__ import annotations

import json

import numpy as np
import pytest

import boxgym.cli as cli
from boxgym.data.preview import BOX_COLOURS, draw_ground_truth, parse_knobs
from boxgym.data.scenes import make_scene_task
from boxgym.data.task import GroundTruthObject, Task


@pytest.fixture
def scenes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI with only the scenes verb, so this test does not depend on other verbs' modules."""
    monkeypatch.setattr(cli, "VERBS", {"scenes": cli.VERBS["scenes"]})


def test_draw_ground_truth_marks_every_box() -> None:
    task = make_scene_task("shapes", 1, "easy")
    overlay = draw_ground_truth(task, show_distractors=False)
    scale = overlay.width // task.images[0].width
    assert scale >= 2 and overlay.height == task.images[0].height * scale
    arr = np.asarray(overlay)
    for number, obj in enumerate(task.objects):
        x1, _, x2, y2 = (int(v * scale) for v in obj.box)
        colour = BOX_COLOURS[number % len(BOX_COLOURS)]
        # the bottom edge of each box is drawn in its colour
        assert (arr[y2 - 1, x1 + 2 : x2 - 2] == colour).all(axis=1).mean() > 0.5
    assert task.images[0].size == (448, 448)  # the task's image is untouched


def test_draw_ground_truth_points_and_two_images() -> None:
    from PIL import Image

    images = [Image.new("RGB", (100, 80), "white"), Image.new("RGB", (60, 80), "white")]
    task = Task(
        id="t",
        images=images,
        question="q",
        kind="count",
        objects=[
            GroundTruthObject(box=None, label="dot", point=(50, 40)),
            GroundTruthObject(box=(5, 5, 30, 30), label="box", image=1),
        ],
        answer={"count": 2},
    )
    overlay = draw_ground_truth(task)
    assert overlay.height >= 80 and overlay.width > 2 * overlay.height
    assert len(set(overlay.getdata())) > 2


def test_parse_knobs() -> None:
    assert parse_knobs(["rotation=30", "count=[2,5]", "grid=aligned", "kind=null"]) == {
        "rotation": 30,
        "count": (2, 5),
        "grid": "aligned",
        "kind": None,
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_knobs(["rotation"])


def test_scenes_verb_writes_its_files(tmp_path, scenes_only) -> None:
    out = tmp_path / "preview"
    code = cli.main(
        [
            "scenes",
            "--family",
            "screens",
            "--n",
            "3",
            "--seed",
            "4",
            "--difficulty",
            "medium",
            "--knob",
            "rotation=5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert [r["meta"]["seed"] for r in rows] == [4, 5, 6]
    assert all(r["meta"]["knobs"]["rotation"] == 5 for r in rows)
    for row in rows:
        assert (out / "images" / f"{row['id']}.png").is_file()
        assert (out / "overlays" / f"{row['id']}.png").is_file()
    page = (out / "index.html").read_text()
    assert page.count("<figure>") == 3 and rows[0]["id"] in page


def test_scenes_verb_all_families(tmp_path, scenes_only) -> None:
    assert cli.main(["scenes", "--family", "all", "--n", "1", "--out", str(tmp_path)]) == 0
    ids = [json.loads(x)["id"] for x in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert ids == ["screens-easy-s0", "shapes-easy-s0", "clutter-easy-s0"]


def test_scenes_verb_rejects_bad_knobs(tmp_path, scenes_only, capsys) -> None:
    assert cli.main(["scenes", "--knob", "grid=diagonal", "--out", str(tmp_path)]) == 2
    assert "grid" in capsys.readouterr().err
    assert cli.main(["scenes", "--n", "0", "--out", str(tmp_path)]) == 2


def test_scenes_help(scenes_only, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["scenes", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--family", "--difficulty", "--knob", "tasks.jsonl", "object_size"):
        assert word in text


def test_scenes_verb_all_families_applies_family_knobs_where_they_belong(
    tmp_path, scenes_only, capsys
) -> None:
    args = ["scenes", "--family", "all", "--n", "1", "--knob", "off_rate=0.5"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert [r["meta"]["knobs"]["off_rate"] for r in rows] == [0.5, 0.0, 0.0]
    assert (tmp_path / "index.html").is_file()
    err = capsys.readouterr().err
    assert "do not apply to shapes" in err and "do not apply to clutter" in err


def test_scenes_verb_checks_every_family_before_writing(tmp_path, scenes_only, capsys) -> None:
    out = tmp_path / "preview"
    # count 0 is valid for screens and shapes but not for clutter (the last family).
    assert cli.main(["scenes", "--family", "all", "--knob", "count=[0,3]", "--out", str(out)]) == 2
    assert "count" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["scenes", "--family", "all", "--knob", "colour=1", "--out", str(out)]) == 2
    assert "unknown knob" in capsys.readouterr().err and not out.exists()
