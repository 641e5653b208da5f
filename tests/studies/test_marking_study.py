"""The marking study's per-step figures, from episodes written by hand."""

from __future__ import annotations

from types import SimpleNamespace

from boxgym.studies.marking import episode_steps, step_table


def box_call(box: tuple[int, int, int, int]) -> dict:
    x1, y1, x2, y2 = box
    arguments = {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": "shape"}
    return {"name": "draw_box", "ok": True, "arguments": arguments}


def test_each_box_is_new_repeat_or_miss_and_the_stop_is_judged():
    # two shapes in a 1000-px image (the qwen frame is then the pixels)
    task = SimpleNamespace(
        images=[SimpleNamespace(size=(1000, 1000))],
        objects=[
            SimpleNamespace(box=(100, 100, 200, 200)),
            SimpleNamespace(box=(600, 600, 700, 700)),
        ],
    )
    turns = [
        {"calls": [box_call((100, 100, 200, 200))]},  # new
        {"calls": [box_call((105, 100, 200, 200))]},  # the same shape again
        {"calls": [box_call((400, 400, 450, 450))]},  # nothing there
        {"calls": [{"name": "answer", "ok": True, "arguments": {"count": 3}}]},
    ]
    steps = episode_steps({"turns": turns, "metrics": {"answered": 1.0}}, task)
    assert steps["outcomes"] == ["new", "repeat", "miss"]
    assert steps["k"] == [0, 1, 1]
    assert steps["iou"] == [1.0, 0.95, 0.0]
    assert steps["never_boxed"] == 1 and steps["stop"] == "early"
    record = {"arm": "M", "true_count": 2, "answer": 3, "boxes": 3, "steps": steps}
    table = step_table([record])["M"]
    assert table["share_of_boxes"] == {"new": 1 / 3, "repeat": 1 / 3, "miss": 1 / 3}
    assert table["box_iou_with_nearest"]["median"] == 0.95
    assert table["next_box_hits_unmarked_by_k"]["1"]["mean"] == 0.0
    assert table["stops"]["early"] == 1.0
