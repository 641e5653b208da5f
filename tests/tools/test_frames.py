from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boxgym.tools.frames import FRAMES, frame_to_pixels, pixels_to_frame


def test_qwen_frame_is_relative_to_width_and_height():
    assert frame_to_pixels((500, 250, 1000, 1000), "qwen", (640, 480)) == (
        320.0,
        120.0,
        640.0,
        480.0,
    )
    assert pixels_to_frame((320, 120), "qwen", (640, 480)) == (500, 250)


def test_qwen_frame_rounds_to_integers_below_1000():
    box = pixels_to_frame((0.4, 0, 640, 480), "qwen", (640, 480))
    assert box == (1, 0, 999, 999)
    assert all(isinstance(v, int) for v in box)


def test_unit_and_pixel_frames():
    assert frame_to_pixels((0.5, 0.5), "unit", (200, 100)) == (100.0, 50.0)
    assert pixels_to_frame((100, 50), "unit", (200, 100)) == (0.5, 0.5)
    assert frame_to_pixels((3, 4, 5, 6), "pixels", (200, 100)) == (3.0, 4.0, 5.0, 6.0)


def test_bad_frame_and_shapes_raise():
    with pytest.raises(ValueError, match="unknown coordinate frame"):
        frame_to_pixels((1, 2), "percent", (10, 10))
    with pytest.raises(ValueError, match="point"):
        frame_to_pixels((1, 2, 3), "unit", (10, 10))
    with pytest.raises(ValueError, match="positive"):
        frame_to_pixels((1, 2), "unit", (0, 10))


@given(
    frame=st.sampled_from(FRAMES),
    w=st.integers(1, 4000),
    h=st.integers(1, 4000),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
)
def test_round_trip_within_rounding(frame, w, h, fx, fy):
    px, py = fx * w, fy * h
    back = frame_to_pixels(pixels_to_frame((px, py), frame, (w, h)), frame, (w, h))
    tolerance = (w / 1000 + 1e-6, h / 1000 + 1e-6) if frame == "qwen" else (1e-6 * w, 1e-6 * h)
    assert abs(back[0] - px) <= tolerance[0] + 1e-9
    assert abs(back[1] - py) <= tolerance[1] + 1e-9
