"""NLVR2 pair-grouped splits and aguvis action parsing: pure functions, no files."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from boxgym.data.loaders.aguvis import (
    AguvisActionError,
    aguvis_action_to_tool_call,
    parse_aguvis_actions,
)
from boxgym.data.loaders.cells import BadRow, parse_bool, parse_count
from boxgym.data.loaders.common import RowContext
from boxgym.data.loaders.nlvr2 import assign_split, pair_id, split_tasks
from boxgym.data.task import Task


def _identifiers(n_sets: int = 300) -> list[str]:
    return [
        f"train-{s}-{p}-{k}"
        for s in range(n_sets)
        for p in range(4)
        for k in range(random.Random(s * 7 + p).randint(1, 4))
    ]


def test_pair_id_and_set_id():
    assert pair_id("dev-850-0-0") == "dev-850-0"
    assert pair_id("dev-850-0-3", level="set") == "dev-850"
    for bad in ("dev-850-0", "dev--0-1", "nonsense"):
        with pytest.raises(ValueError, match="split-set-pair-sentence"):
            pair_id(bad)


@pytest.mark.parametrize("level", ["pair", "set"])
def test_split_never_separates_a_pair(level):
    ids = _identifiers()
    sides: dict[str, set[str]] = {}
    for identifier in ids:
        sides.setdefault(pair_id(identifier, level), set()).add(
            assign_split(identifier, level=level)
        )
    assert all(len(s) == 1 for s in sides.values())
    # both sides are used, roughly in the asked proportion of groups
    share = sum(s == {"validation"} for s in sides.values()) / len(sides)
    assert 0.05 < share < 0.15


def test_split_is_deterministic_order_free_and_salted():
    ids = _identifiers(100)
    first = {i: assign_split(i) for i in ids}
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert {i: assign_split(i) for i in shuffled} == first
    assert {i: assign_split(i, salt="other") for i in ids} != first
    assert {assign_split(i, eval_fraction=0.0) for i in ids} == {"train"}
    assert {assign_split(i, eval_fraction=1.0) for i in ids} == {"validation"}
    with pytest.raises(ValueError, match="eval_fraction"):
        assign_split(ids[0], eval_fraction=1.5)


def test_split_tasks_keeps_pairs_together():
    image = Image.new("RGB", (4, 4))
    ids = _identifiers(60)
    tasks = [
        Task(
            id=i,
            images=[image, image],
            question="q",
            kind="verify",
            answer={"value": True},
            meta={"uid": i},
        )
        for i in ids
    ]
    parts = split_tasks(tasks, eval_fraction=0.3)
    assert sum(len(v) for v in parts.values()) == len(tasks)
    train_pairs = {pair_id(t.id) for t in parts["train"]}
    eval_pairs = {pair_id(t.id) for t in parts["validation"]}
    assert train_pairs and eval_pairs and not (train_pairs & eval_pairs)


def test_stage1_bare_action():
    (action,) = parse_aguvis_actions("click(x=0.8875, y=0.2281)")
    assert action.name == "click" and action.point() == (0.8875, 0.2281)
    assert aguvis_action_to_tool_call("click(x=0.8875, y=0.2281)", (1280, 720)) == (
        "answer",
        {"x": 888, "y": 228},
    )


def test_stage2_think_and_code():
    text = (
        "<think>\nThe search box is at the top right.\n</think>\n"
        "<code>\nclick(x=0.41, y=0.27)\ntype(text='boxgym')\n</code>"
    )
    actions = parse_aguvis_actions(text)
    assert [a.name for a in actions] == ["click", "type"]
    assert actions[1].kwargs == {"text": "boxgym"}
    assert aguvis_action_to_tool_call(text, (200, 100)) == ("answer", {"x": 410, "y": 270})
    assert aguvis_action_to_tool_call(text, (200, 100), frame="pixels") == (
        "answer",
        {"x": 82.0, "y": 27.0},
    )
    assert aguvis_action_to_tool_call(text, (200, 100), frame="unit")[1] == {"x": 0.41, "y": 0.27}


def test_point_actions_kept_with_edges_in_frame():
    for name in ("double_click", "right_click", "long_press", "move_mouse"):
        assert aguvis_action_to_tool_call(f"{name}(x=1.0, y=0.0)", (10, 10)) == (
            "answer",
            {"x": 999, "y": 0},
        )
    assert aguvis_action_to_tool_call("click(0.5, 0.25)", (10, 10))[1] == {"x": 500, "y": 250}
    assert aguvis_action_to_tool_call("```python\nclick(x=0.5, y=0.5)\n```", (10, 10))[1] == {
        "x": 500,
        "y": 500,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("click(x=0.5, y=", "unparsable action"),
        ("click(x=1.5, y=0.2)", "outside"),
        ("click(x=-0.1, y=0.2)", "outside"),
        ("click(x='a', y=0.2)", "not a number"),
        ("click(x=float('nan'), y=0.2)", "non-literal"),
        ("click(x=0.5)", "needs x and y"),
        ("click(x=a, y=b)", "non-literal"),
        ("x = 3", "not a call"),
        ("os.system('ls')", "not a call"),
        ("", "no action"),
        ("<think>only thoughts</think>", "no action"),
        ("<think>never closed", "unterminated"),
        ("drag(from_coord=[0.1, 0.2], to_coord=[0.3, 0.4])", "two points"),
        ("swipe(from_coord=[0.1, 0.2], to_coord=[0.3, 0.4])", "two points"),
        ("type(text='hello')", "no location"),
        ("scroll(direction='down', amount=3)", "no location"),
        ("final_answer('done')", "no location"),
        ("teleport(x=0.1, y=0.2)", "unknown action"),
    ],
)
def test_malformed_or_dropped_actions_raise(text, message):
    with pytest.raises(AguvisActionError, match=message):
        aguvis_action_to_tool_call(text, (100, 100))


def test_bad_frame_is_refused():
    with pytest.raises(ValueError, match="frame must be"):
        aguvis_action_to_tool_call("click(x=0.1, y=0.1)", (10, 10), frame="percent")


def test_aguvis_row_converter_skips_or_keeps_turns():
    from boxgym.data.loaders.aguvis import make_converter

    convert = make_converter("aguvis-stage-1")
    ctx = RowContext("aguvis-stage-1", "train", 3)
    image = Image.new("RGB", (100, 50), "white")
    row = {
        "images": [image],
        "texts": [
            {"user": "<image>Press enter", "assistant": "press(keys=['enter'])"},
            {"user": "<image>Click OK", "assistant": "click(x=0.5, y=0.2)"},
        ],
    }
    (task,) = convert(row, ctx)
    assert task.id == "aguvis-stage-1-train-0000003-1"
    assert task.question == "Click OK" and task.answer == {"point": [50.0, 10.0]}
    with pytest.raises(BadRow, match="ambiguous image"):
        convert({"images": [image, image], "texts": row["texts"] * 2}, ctx)
    with pytest.raises(BadRow, match="missing image"):
        convert({"images": [], "texts": row["texts"]}, ctx)
    with pytest.raises(BadRow, match="no point action"):
        convert({"images": [image], "texts": row["texts"][:1]}, ctx)


def test_label_and_count_parsing():
    assert parse_bool("True") is True and parse_bool("false") is False
    assert parse_bool(1) is True and parse_bool(False) is False
    for bad in ("maybe", 2, None, 0.5):
        with pytest.raises(BadRow, match="unparsable label"):
            parse_bool(bad)
    assert parse_count(4) == 4 and parse_count("7") == 7 and parse_count(3.0) == 3
    for bad in (-1, "x", 2.5, True, None):
        with pytest.raises(BadRow, match="unparsable count"):
            parse_count(bad)


def test_image_cells_in_every_form(tmp_path):
    import io

    from boxgym.data.loaders.cells import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (6, 4), "red").save(buf, "PNG")
    data = buf.getvalue()
    (tmp_path / "a.png").write_bytes(data)
    for cell in (
        {"bytes": data, "path": None},
        data,
        "a.png",
        {"bytes": None, "path": "a.png"},
        f"file://{tmp_path / 'a.png'}",
        Image.new("L", (6, 4)),
    ):
        image = decode_image(cell, tmp_path)
        assert image.size == (6, 4) and image.mode == "RGB"
    for cell, reason in (
        ("https://example.org/a.png", "image not available offline"),
        ("b.png", "missing image"),
        (None, "missing image"),
        ({"bytes": None, "path": None}, "missing image"),
        (data[:40], "corrupt image"),
        (12, "wrong type"),
    ):
        with pytest.raises(BadRow) as info:
            decode_image(cell, tmp_path)
        assert info.value.reason == reason


def test_exif_orientation_is_honoured():
    import io

    from boxgym.data.loaders.cells import decode_image

    image = Image.new("RGB", (8, 4), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (4, 8)


def test_iterator_form_fails_early_on_a_bad_source(tmp_path):
    from boxgym.data.loaders import DatasetSourceError, iter_dataset_tasks

    with pytest.raises(DatasetSourceError, match="does not exist"):
        iter_dataset_tasks("nlvr2", path=tmp_path / "absent")


def test_qwen_frame_matches_the_tools_frame_conversion():
    frames = pytest.importorskip("boxgym.tools.frames", exc_type=ImportError)
    rng = random.Random(0)
    for _ in range(200):
        x, y = rng.random(), rng.random()
        size = (rng.randint(28, 2000), rng.randint(28, 2000))
        _, args = aguvis_action_to_tool_call(f"click(x={x!r}, y={y!r})", size)
        expected = frames.pixels_to_frame((x * size[0], y * size[1]), "qwen", size)
        assert (args["x"], args["y"]) == tuple(expected)
