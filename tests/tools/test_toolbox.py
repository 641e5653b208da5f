from __future__ import annotations

import inspect
import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from boxgym.tools.canvas import fit_to_patch_grid
from boxgym.tools.toolbox import TOOL_NAMES, Toolbox

MAX_PIXELS = 200704


def image(w: int = 640, h: int = 480) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))


def toolbox(**kwargs) -> Toolbox:
    kwargs.setdefault("kind", "enumerate")
    return Toolbox([image()], **kwargs)


def text(blocks) -> str:
    """The text block of a tool result (the first block: any image follows it)."""
    return blocks[0]["text"]


def images(blocks) -> list[Image.Image]:
    return [b["image"] for b in blocks if b["type"] == "image"]


def assert_on_patch_grid(picture: Image.Image, max_pixels: int = 802816) -> None:
    w, h = picture.size
    assert w % 28 == 0 and h % 28 == 0
    assert w * h <= max_pixels
    assert fit_to_patch_grid(w, h, 3136, max_pixels) == (w, h)


def test_public_callables_are_exactly_the_tools():
    public = [
        n
        for n, v in inspect.getmembers(Toolbox, predicate=inspect.isfunction)
        if not n.startswith("_")
    ]
    assert sorted(public) == sorted(TOOL_NAMES)
    box = toolbox()
    assert not set(vars(box)) & set(TOOL_NAMES)  # no instance attribute shadows a tool


def test_draw_box_numbers_boxes_and_returns_the_marked_image():
    box = toolbox()
    first = box.draw_box(100, 100, 300, 400, "red square")
    second = box.draw_box(500, 500, 700, 900, "blue circle")
    assert text(first).startswith('Box 1 "red square"') and text(second).startswith(
        'Box 2 "blue circle"'
    )
    assert [b.box_id for b in box.boxes] == [1, 2]
    assert box.boxes[0].pixels == pytest.approx((64.0, 48.0, 192.0, 192.0))
    (marked,) = images(second)
    assert_on_patch_grid(marked)
    assert marked.size == box.view_images[0].size
    assert not np.array_equal(np.asarray(marked), np.asarray(box.view_images[0]))
    # the image handed back earlier is not changed by later drawing
    assert not np.array_equal(np.asarray(images(first)[0]), np.asarray(marked))


@pytest.mark.parametrize(
    ("mode", "n_images"), [("image", 1), ("crop", 1), ("both", 2), ("text", 0)]
)
def test_draw_box_return_modes(mode, n_images):
    box = toolbox(draw_box_returns=mode)
    blocks = box.draw_box(10, 10, 60, 80, "thing")
    assert len(images(blocks)) == n_images
    assert blocks[0]["type"] == "text"  # the text first, the images last
    for picture in images(blocks):
        assert_on_patch_grid(picture)


def test_crop_upscales_small_regions_to_the_patch_grid():
    box = toolbox()
    blocks = box.crop(100, 100, 120, 130)
    (picture,) = images(blocks)
    assert_on_patch_grid(picture, MAX_PIXELS)
    assert min(picture.size) >= 196  # upscaled from about 13x14 original pixels


def test_crop_shows_boxes_or_not():
    shown, hidden = toolbox(crop_shows_boxes=True), toolbox(crop_shows_boxes=False)
    for box in (shown, hidden):
        box.draw_box(100, 100, 300, 300, "square")
    a = np.asarray(images(shown.crop(50, 50, 400, 400))[0])
    b = np.asarray(images(hidden.crop(50, 50, 400, 400))[0])
    assert a.shape == b.shape and (a != b).any()


def test_label_and_remove_box():
    box = toolbox()
    box.draw_box(10, 10, 100, 100, "a")
    box.draw_box(200, 200, 300, 300, "b")
    assert 'now labelled "c"' in text(box.label(1, "c"))
    assert [b.label for b in box.boxes] == ["c", "b"]
    assert "removed" in text(box.remove_box(1))
    assert [b.box_id for b in box.boxes] == [2]
    box.draw_box(10, 10, 100, 100, "d")
    assert [b.box_id for b in box.boxes] == [2, 3]  # ids are never reused


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.draw_box(10, 10, 5, 50, "x"), "inverted"),
        (lambda t: t.draw_box(10, 10, 10, 50, "x"), "inverted"),
        (lambda t: t.draw_box(-1, 10, 50, 50, "x"), "outside"),
        (lambda t: t.draw_box(10, 10, 1001, 50, "x"), "outside"),
        (lambda t: t.draw_box(math.nan, 10, 50, 50, "x"), "finite"),
        (lambda t: t.draw_box(math.inf, 10, 50, 50, "x"), "finite"),
        (lambda t: t.draw_box("10", 10, 50, 50, "x"), "must be a number"),
        (lambda t: t.draw_box(True, 10, 50, 50, "x"), "must be a number"),
        (lambda t: t.draw_box(None, 10, 50, 50, "x"), "must be a number"),
        (lambda t: t.draw_box(10**400, 10, 50, 50, "x"), "far too large"),
        (lambda t: t.draw_box(10, 10, 50, 50, ""), "must not be empty"),
        (lambda t: t.draw_box(10, 10, 50, 50, 7), "must be a string"),
        (lambda t: t.draw_box(10, 10, 50, 50, "x" * 500), "characters"),
        (lambda t: t.draw_box(10, 10, 50, 50, "x", image=1), "image must be 0"),
        (lambda t: t.draw_box(10, 10, 10.5, 50, "x"), "smaller than one pixel"),
        (lambda t: t.crop(10, 10, 5, 50), "inverted"),
        (lambda t: t.label(9, "x"), "no box 9"),
        (lambda t: t.label(True, "x"), "must be an integer"),
        (lambda t: t.label(1.5, "x"), "must be an integer"),
        (lambda t: t.remove_box(0), "no box 0"),
        (lambda t: t.answer(), "needs count and items"),
        (lambda t: t.answer(count=3), "missing items"),
        (lambda t: t.answer(count=-1, items=[]), "between 0"),
        (lambda t: t.answer(count=True, items=[]), "must be an integer"),
        (lambda t: t.answer(count=2, items="a, b"), "list of strings"),
        (lambda t: t.answer(count=2, items=["a", 3]), "items[1]"),
    ],
)
def test_invalid_arguments_give_errors_not_exceptions(call, message):
    box = toolbox()
    blocks = call(box)
    assert len(blocks) == 1 and blocks[0]["type"] == "text"
    assert blocks[0]["text"].startswith("Error: ") and message in blocks[0]["text"]
    assert box.boxes == [] and not box.answered


def test_too_many_boxes_is_an_error():
    box = toolbox(max_boxes=2)
    box.draw_box(1, 1, 50, 50, "a")
    box.draw_box(1, 1, 50, 50, "b")
    assert "already 2 boxes" in text(box.draw_box(1, 1, 50, 50, "c"))
    assert len(box.boxes) == 2


def test_call_checks_names_and_arguments():
    box = toolbox()
    assert box._call("zoom", {})[1] is False and "unknown tool" in text(box._call("zoom", {})[0])
    blocks, ok = box._call("draw_box", {"x1": 1, "y1": 1, "x2": 5})
    assert not ok and "missing required argument(s) y2, label" in text(blocks)
    blocks, ok = box._call("crop", {"x1": 1, "y1": 1, "x2": 5, "y2": 5, "zoom": 2})
    assert not ok and "unknown argument(s) zoom" in text(blocks)
    blocks, ok = box._call("crop", [1, 2, 3, 4])
    assert not ok and "JSON object" in text(blocks)
    blocks, ok = box._call("draw_box", {"x1": 1, "y1": 1, "x2": 50, "y2": 50, "label": "a"})
    assert ok


def test_answer_by_kind_ends_the_episode():
    box = toolbox()
    assert "Answer recorded" in text(box.answer(count=2, items=["a", "b"]))
    assert box.final_answer == {"count": 2, "items": ["a", "b"]}
    assert "already given" in text(box.draw_box(1, 1, 50, 50, "a"))
    verify = Toolbox([image()], kind="verify")
    assert "value must be true or false" in text(verify.answer(value="yes"))
    verify.answer(value=False)
    assert verify.final_answer == {"value": False}
    point = Toolbox([image(200, 100)], kind="point", coordinate_frame="unit")
    assert "needs x and y" in text(point.answer(x=0.5))
    point.answer(x=0.5, y=0.25)
    assert point.final_answer == {"point": [100.0, 25.0]}


def test_two_images_and_pixel_frame():
    box = Toolbox([image(300, 200), image(100, 100)], kind="count", coordinate_frame="pixels")
    assert "outside" in text(box.draw_box(10, 10, 150, 50, "a", image=1))
    assert text(box.draw_box(10, 10, 90, 50, "a", image=1)).endswith("1 box so far.")
    assert box.boxes[0].image == 1 and box.boxes[0].pixels == (10.0, 10.0, 90.0, 50.0)


def test_no_image_loaded():
    assert text(Toolbox().draw_box(1, 1, 2, 2, "a")).startswith("Error: no image")


def test_toolbox_pickles():
    box = toolbox()
    box.draw_box(10, 10, 50, 50, "a")
    clone = pickle.loads(pickle.dumps(box))
    assert [b.label for b in clone.boxes] == ["a"]
    assert text(clone.draw_box(10, 10, 60, 60, "b")).startswith("Box 2")


values = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from((*TOOL_NAMES, "zoom")),
    arguments=st.dictionaries(
        st.sampled_from(
            [
                "x1",
                "y1",
                "x2",
                "y2",
                "label",
                "image",
                "box_id",
                "count",
                "items",
                "value",
                "x",
                "y",
                "z",
            ]
        ),
        values,
        max_size=7,
    ),
)
def test_arbitrary_arguments_never_raise(name, arguments):
    box = toolbox(max_boxes=5)
    box.draw_box(10, 10, 100, 100, "seed")
    blocks, ok = box._call(name, arguments)
    assert blocks and blocks[-1]["type"] == "text" and isinstance(blocks[-1]["text"], str)
    assert ok != blocks[-1]["text"].startswith("Error:")
    for picture in images(blocks):
        assert_on_patch_grid(picture)
    assert len(box.boxes) <= 5


@pytest.mark.parametrize(
    ("option", "value"),
    [("crop_shows_boxes", "false"), ("crop_shows_boxes", 0), ("max_boxes", 2.5)],
)
def test_options_of_the_wrong_type_are_refused(option, value):
    with pytest.raises(ValueError, match=option):
        Toolbox([image()], **{option: value})


def test_a_far_edge_box_echo_explains_999():
    tb = toolbox(kind="count", draw_box_returns="text")
    drawn = text(tb.draw_box(0, 0, 1000, 1000, "screen"))
    assert "(0, 0, 999, 999) (999 is the qwen frame's far edge" in drawn


def test_answer_echoes_the_recorded_value():
    assert 'Answer recorded: {"count": 3}.' in text(toolbox(kind="count").answer(count=3.0))
    tb = toolbox(kind="point", coordinate_frame="pixels")
    assert 'Answer recorded: {"x": 28.8, "y": 5.0}.' in text(tb.answer(x=0.1 * 288, y=5))


def test_pixel_frame_boxes_are_shown_without_float_noise():
    tb = toolbox(coordinate_frame="pixels", draw_box_returns="text")
    tb.draw_box(0.1 * 288, 10, 0.3 * 288, 50, "screen")  # 0.1 * 288 == 28.799999999999997
    assert tb._boxes_json()[0]["box"] == [28.8, 10.0, 86.4, 50.0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=st.lists(
        st.tuples(
            st.integers(0, 900), st.integers(0, 900), st.integers(20, 400), st.integers(20, 400)
        ),
        min_size=2,
        max_size=12,
    ),
    edits=st.lists(st.tuples(st.booleans(), st.integers(0, 11)), min_size=1, max_size=6),
)
def test_incremental_edits_equal_redrawing_every_box(boxes, edits):
    """Relabel and remove redraw only the region they touch: the result must be exactly what
    drawing every live box afresh on the clean view gives."""
    from boxgym.tools.canvas import draw_marks

    tb = toolbox()
    for i, (x, y, w, h) in enumerate(boxes):
        tb.draw_box(x, y, min(1000, x + w), min(1000, y + h), f"object {i}")
    for relabel, pick in edits:
        live = [b.box_id for b in tb.boxes]
        if not live:
            break
        box_id = live[pick % len(live)]
        if relabel:
            tb.label(box_id, f"a much longer label {pick}")
        else:
            tb.remove_box(box_id)
    expected = tb.view_images[0].copy()
    draw_marks(expected, [tb._images.working_mark(b.image, b.mark) for b in tb.boxes])
    assert tb._marked_image(0).tobytes() == expected.tobytes()
