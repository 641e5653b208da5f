from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from boxgym.data.scenes import resolve_knobs
from boxgym.data.scenes.clutter import draw_clutter_object
from boxgym.data.scenes.layout import Draws, Placer, Sketch, add_noise, reading_order
from boxgym.data.scenes.screens import (
    CONTENT_KINDS,
    DARK_DISPLAY,
    draw_picture_frame,
    draw_screen,
    draw_window,
)
from boxgym.data.scenes.shapes import draw_shape
from boxgym.data.vocabulary import CLUTTER_KINDS, SHAPES

BACKGROUND = (255, 0, 255)  # a colour no sketch uses


def drawn_box(sketch: Sketch) -> tuple[int, int, int, int]:
    """Draws the sketch at (10, 10) on a blank canvas and returns the box of changed pixels."""
    w, h = sketch.size
    canvas = Image.new("RGB", (w + 20, h + 20), BACKGROUND)
    box = (10, 10, 10 + w, 10 + h)
    sketch.draw(canvas, ImageDraw.Draw(canvas), box)
    diff = np.any(np.asarray(canvas) != np.array(BACKGROUND), axis=2)
    ys, xs = np.nonzero(diff)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), box


sizes = st.integers(6, 120)
angles = st.one_of(st.just(0.0), st.floats(-180, 180))


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(SHAPES), w=sizes, h=sizes, angle=angles)
def test_shape_box_is_tight(shape: str, w: int, h: int, angle: float) -> None:
    got, expected = drawn_box(
        draw_shape(shape, (200, 40, 40), w, h if shape != "circle" else w, angle)
    )
    assert got == expected


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(CLUTTER_KINDS), w=st.integers(8, 60), angle=angles)
def test_clutter_box_is_tight(kind: str, w: int, angle: float) -> None:
    h = max(3, round(w / 2.2)) if kind == "pill" else w
    got, expected = drawn_box(draw_clutter_object(kind, (190, 192, 200), w, h, angle, (40, 40, 48)))
    assert got == expected


CONTENTS = [
    {"kind": "shape", "colour": "red", "shape": "star"},
    {"kind": "shape", "colour": "blue", "shape": "circle"},
    {"kind": "word", "word": "cat"},
    {"kind": "digit", "digit": "7"},
    *(
        {"kind": "icon", "icon": i, "colour": "yellow"}
        for i in ("heart", "sun", "moon", "smiley", "house")
    ),
    {"kind": "off"},
]


@settings(max_examples=40, deadline=None)
@given(content=st.sampled_from(CONTENTS), w=st.integers(40, 160), angle=st.floats(-15, 15))
def test_screen_and_distractor_boxes_are_tight(content: dict, w: int, angle: float) -> None:
    h = round(w * 9 / 16)
    style = {"bezel": (28, 28, 32), "display": DARK_DISPLAY}
    for sketch in (
        draw_screen(w, h, angle, content, style),
        draw_picture_frame(w, h, angle, True, 1),
        draw_picture_frame(w, h, angle, False, 2),
        draw_window(w, h, angle, True, 3),
        draw_window(w, h, angle, False, 4),
    ):
        got, expected = drawn_box(sketch)
        assert got == expected


def test_content_kinds_cover_the_issue() -> None:
    assert set(CONTENT_KINDS) == {"shape", "word", "digit", "icon"}


def test_unrotated_sizes_are_exact_and_rotation_grows_the_box() -> None:
    assert draw_shape("square", (0, 0, 0), 28, 28).size == (28, 28)
    assert draw_shape("circle", (0, 0, 0), 56, 56).size == (56, 56)
    assert draw_shape("rectangle", (0, 0, 0), 57, 33).size == (57, 33)
    w, h = draw_shape("square", (0, 0, 0), 28, 28, 45).size
    assert abs(w - 28 * math.sqrt(2)) <= 2 and abs(h - 28 * math.sqrt(2)) <= 2


def test_reading_order_rows_then_columns() -> None:
    # two rows of three, given shuffled; the second row slightly uneven
    boxes = [
        (200, 0, 240, 40),
        (0, 5, 40, 45),
        (100, 2, 140, 42),
        (0, 100, 40, 140),
        (210, 95, 250, 135),
        (100, 104, 140, 144),
    ]
    order = reading_order(boxes)
    assert order == [1, 2, 0, 3, 5, 4]
    assert reading_order([]) == []


def test_placer_respects_overlap_and_grid() -> None:
    knobs = resolve_knobs(
        "clutter", "easy", overlap=0.0, grid="aligned", object_size=1, count=(10, 10)
    )
    placer = Placer(knobs, Draws(np.random.default_rng(0)), cluster=0.8)
    boxes = [placer.place(28, 28) for _ in range(40)]
    boxes = [b for b in boxes if b is not None]
    assert len(boxes) == 40
    for i, a in enumerate(boxes):
        assert all(v % 28 == 0 for v in a)
        for b in boxes[i + 1 :]:
            iw = min(a[2], b[2]) - max(a[0], b[0])
            ih = min(a[3], b[3]) - max(a[1], b[1])
            assert iw <= 0 or ih <= 0
    assert placer.place(10_000, 28) is None  # larger than the image


def test_draws_are_deterministic_and_in_range() -> None:
    a, b = Draws(np.random.default_rng(5), block=7), Draws(np.random.default_rng(5), block=7)
    seq_a = [a.integer(3, 9) for _ in range(50)]
    assert seq_a == [b.integer(3, 9) for _ in range(50)]
    assert set(seq_a) <= set(range(3, 10)) and len(set(seq_a)) > 3
    assert sorted(a.shuffled(range(10))) == list(range(10))


@pytest.mark.parametrize("side", [224, 1120])
def test_noise_is_deterministic_and_bounded(side: int) -> None:
    scene = Image.new("RGB", (side, side), (128, 128, 128))
    one = add_noise(scene, 0.5, Draws(np.random.default_rng(1)))
    two = add_noise(scene, 0.5, Draws(np.random.default_rng(1)))
    assert one.tobytes() == two.tobytes()
    arr = np.asarray(one).astype(float)
    assert 12 < arr.std() < 30  # about 0.5 * 40 grey levels, clipped
    assert add_noise(scene, 0.0, Draws(np.random.default_rng(1))) is scene


@pytest.mark.parametrize("size", [(1344, 600), (700, 2100), (2100, 1100)])
def test_noise_beyond_the_bank_is_the_bank_read_modulo_its_side(size: tuple[int, int]) -> None:
    from boxgym.data.scenes.layout import _NOISE_SIDE, _scaled_noise_bank

    w, h = size
    scene = Image.new("RGB", size, (128, 128, 128))
    noisy = np.asarray(add_noise(scene, 0.5, Draws(np.random.default_rng(3)))).astype(int)
    draws = Draws(np.random.default_rng(3))
    ox = draws.integer(0, max(0, _NOISE_SIDE - w))
    oy = draws.integer(0, max(0, _NOISE_SIDE - h))
    pos, neg = _scaled_noise_bank(0.5)
    rows = (np.arange(h) + oy) % _NOISE_SIDE
    cols = (np.arange(w) + ox) % _NOISE_SIDE
    expected = np.clip(128 + pos[np.ix_(rows, cols)].astype(int), 0, 255)
    expected = np.clip(expected - neg[np.ix_(rows, cols)], 0, 255)
    assert np.array_equal(noisy, expected)
