from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from boxgym.tools.recipes import image_recipe, render_recipe
from boxgym.tools.toolbox import Toolbox


def picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["image", "crop", "both"])
@pytest.mark.parametrize("frame", ["qwen", "pixels"])
def test_every_image_a_tool_returns_is_rebuilt_exactly_from_its_recipe(mode, frame):
    originals = [picture(640, 480, 0), picture(300, 500, 1)]
    tb = Toolbox(originals, kind="enumerate", draw_box_returns=mode, coordinate_frame=frame)
    scale = 1000 if frame == "qwen" else 300
    calls = [
        ("draw_box", {"x1": 10, "y1": 20, "x2": 200, "y2": 220, "label": "red square"}),
        ("draw_box", {"x1": 150, "y1": 100, "x2": 290, "y2": 280, "label": "b", "image": 1}),
        ("draw_box", {"x1": 100, "y1": 150, "x2": 280, "y2": 290, "label": "overlapping one"}),
        ("crop", {"x1": 0, "y1": 0, "x2": scale // 3, "y2": scale // 3}),
        ("label", {"box_id": 1, "label": "a much longer label than before"}),
        ("remove_box", {"box_id": 3}),
        ("crop", {"x1": 50, "y1": 60, "x2": 250, "y2": 290, "image": 1}),
    ]
    shown = [(i, image) for i, image in enumerate(tb.view_images)]
    for name, arguments in calls:
        blocks, ok = tb._call(name, arguments)
        assert ok, blocks
        shown += [(None, b["image"]) for b in blocks if b["type"] == "image"]
    assert len(shown) > 4
    for _, image in shown:
        recipe = json.loads(json.dumps(image_recipe(image)))  # survives storage as JSON
        rebuilt = render_recipe(originals[recipe["source"]], recipe)
        assert rebuilt.size == image.size
        assert rebuilt.tobytes() == image.tobytes()


def test_a_plain_image_has_no_recipe():
    assert image_recipe(picture(10, 10, 0)) is None
    assert image_recipe("not an image") is None


def test_marked_images_are_made_when_read_and_behave_like_any_image():
    import pickle

    from boxgym.tools.recipes import DeferredImage

    tb = Toolbox([picture(640, 480, 0)], kind="enumerate")
    first = tb.draw_box(10, 20, 300, 400, "red square")[-1]["image"]
    second = tb.draw_box(400, 500, 900, 900, "blue circle")[-1]["image"]
    assert isinstance(first, DeferredImage) and first._im is None  # nothing made yet
    assert first.size == second.size == tb.view_images[0].size and first.mode == "RGB"
    assert image_recipe(first)["boxes"][0][:2] == [1, "red square"]
    # Read after later draws, each shows the boxes of its own moment.
    assert second.tobytes() == tb._marked_image(0).tobytes()
    assert first.tobytes() != second.tobytes()
    assert np.asarray(first).shape == (first.size[1], first.size[0], 3)
    assert first.copy().tobytes() == first.tobytes()
    assert pickle.loads(pickle.dumps(first)).tobytes() == first.tobytes()
    assert first.resize((10, 10)).size == (10, 10)
