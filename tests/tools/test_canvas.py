from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from boxgym.tools.canvas import (
    PALETTE,
    Mark,
    crop_array,
    crop_size,
    draw_marks,
    fit_to_patch_grid,
    label_font,
    resize_array,
)

smart_resize = pytest.importorskip(
    "transformers.models.qwen2_vl.image_processing_qwen2_vl"
).smart_resize


@settings(max_examples=300, deadline=None)
@given(
    w=st.integers(1, 5000),
    h=st.integers(1, 5000),
    min_pixels=st.sampled_from([784, 3136, 56 * 56 * 4]),
    max_pixels=st.sampled_from([3136 * 4, 200704, 802816, 1003520, 12845056]),
)
def test_fit_to_patch_grid_matches_transformers_smart_resize(w, h, min_pixels, max_pixels):
    if max(w, h) / min(w, h) > 200:
        with pytest.raises(ValueError):
            fit_to_patch_grid(w, h, min_pixels, max_pixels)
        return
    expected_h, expected_w = smart_resize(
        h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels
    )
    assert fit_to_patch_grid(w, h, min_pixels, max_pixels) == (expected_w, expected_h)


@settings(max_examples=200, deadline=None)
@given(w=st.integers(20, 3000), h=st.integers(20, 3000))
@pytest.mark.slow
def test_resized_size_is_a_fixed_point_of_smart_resize(w, h):
    if max(w, h) / min(w, h) > 100:
        return
    fw, fh = fit_to_patch_grid(w, h, 3136, 802816)
    assert fw % 28 == 0 and fh % 28 == 0
    assert smart_resize(fh, fw, factor=28, min_pixels=3136, max_pixels=802816) == (fh, fw)


def test_crop_size_upscales_small_regions_and_respects_the_cap():
    w, h = crop_size(10, 12, min_side=224, max_pixels=200704)
    assert min(w, h) >= 224 - 28 and w % 28 == 0 and h % 28 == 0
    w, h = crop_size(3000, 2000, min_side=224, max_pixels=200704)
    assert w * h <= 200704 and w % 28 == 0 and h % 28 == 0


def test_crop_array_clips_region_and_resizes():
    array = np.zeros((100, 200, 3), dtype=np.uint8)
    array[:, 100:] = 255
    out = crop_array(array, (150.0, -10.0, 400.0, 50.0), (56, 28))
    assert out.shape == (28, 56, 3) and out.min() == 255


def test_resize_array_returns_same_array_when_size_matches():
    array = np.zeros((28, 56, 3), dtype=np.uint8)
    assert resize_array(array, (56, 28)) is array
    assert resize_array(array, (112, 56)).shape == (56, 112, 3)


def test_draw_marks_draws_in_the_box_colour_and_survives_tiny_and_outside_boxes():
    image = Image.new("RGB", (280, 280), (255, 255, 255))
    draw_marks(
        image,
        [
            Mark(1, "red square", (50, 60, 150, 160)),
            Mark(2, "x", (5, 5, 5.2, 5.3)),
            Mark(3, "far", (400, 400, 500, 500)),
        ],
    )
    pixels = np.asarray(image)
    assert (pixels[110, 50] == PALETTE[0]).all() or (pixels[110, 51] == PALETTE[0]).all()
    assert (pixels[200:, 200:] == 255).all()


def test_font_is_cached():
    assert label_font(14) is label_font(14)
