from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxgym.data.scenes import make_scene_task
from boxgym.tools.canvas import MARK_STYLES, Mark, draw_marks
from boxgym.tools.marked_images import MarkedImages
from boxgym.tools.recipes import DeferredImage, image_recipe, render_recipe
from boxgym.tools.toolbox import Toolbox

DIGESTS = Path(__file__).with_name("marked_image_digests.json")

# A fixed session of tool calls that draws, crops, relabels and removes (qwen frame).
CALLS = [
    ("draw_box", {"x1": 100, "y1": 120, "x2": 300, "y2": 380, "label": "red square"}),
    ("draw_box", {"x1": 250, "y1": 300, "x2": 520, "y2": 640, "label": "blue circle"}),
    ("draw_box", {"x1": 600, "y1": 50, "x2": 980, "y2": 400, "label": "green triangle"}),
    ("crop", {"x1": 50, "y1": 50, "x2": 600, "y2": 700}),
    ("label", {"box_id": 2, "label": "a much longer label for circle"}),
    ("remove_box", {"box_id": 1}),
    ("draw_box", {"x1": 10, "y1": 700, "x2": 400, "y2": 999, "label": "thing"}),
    ("crop", {"x1": 900, "y1": 900, "x2": 1000, "y2": 1000}),
]


def pixel_digest(image: Image.Image) -> str:
    digest = hashlib.sha256()
    digest.update(f"{image.mode}|{image.size}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:16]


def session_digests(style: str, returns: str, crop_shows_boxes: bool) -> list[str]:
    """The pixel digests of every image CALLS return on a shapes scene, then the marked view."""
    task = make_scene_task("shapes", seed=3)
    tb = Toolbox(
        task.images,
        kind="enumerate",
        mark_style=style,
        draw_box_returns=returns,
        crop_shows_boxes=crop_shows_boxes,
    )
    digests = []
    for name, arguments in CALLS:
        blocks, ok = tb._call(name, arguments)
        assert ok, blocks
        digests += [pixel_digest(b["image"]) for b in blocks if b["type"] == "image"]
    return [*digests, pixel_digest(tb._marked_image(0))]


SESSIONS = [
    f"{style}/{returns}/{shows}"
    for style in MARK_STYLES
    for returns in ("image", "crop", "both")
    for shows in (True, False)
]


@pytest.mark.parametrize("session", SESSIONS)
def test_tool_images_match_the_committed_pixel_digests(session: str) -> None:
    """The pixels of every image the tools return are pinned: a refactor must not move one.

    `BOXGYM_WRITE_DIGESTS=1` rewrites the file after a deliberate change of the drawing.
    """
    style, returns, shows = session.split("/")
    digests = session_digests(style, returns, shows == "True")
    if os.environ.get("BOXGYM_WRITE_DIGESTS"):
        stored = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
        stored[session] = digests
        DIGESTS.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    assert digests == json.loads(DIGESTS.read_text())[session]


def picture(w: int = 640, h: int = 480) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))


def images(**kwargs) -> MarkedImages:
    settings = dict(
        mark_style="tag",
        max_image_pixels=200704,
        min_image_pixels=3136,
        crop_min_side=224,
        crop_max_pixels=200704,
    )
    marked = MarkedImages(**{**settings, **kwargs})
    marked.load([picture()])
    return marked


def every_mark_drawn_afresh(marked: MarkedImages, marks: list[Mark]) -> Image.Image:
    expected = marked.views[0].copy()
    draw_marks(expected, [marked.working_mark(0, m) for m in marks])
    return expected


def test_draw_relabel_remove_keep_the_marked_view_equal_to_a_fresh_drawing() -> None:
    marked = images()
    marks = [
        Mark(1, "one", (10.0, 10.0, 200.0, 150.0)),
        Mark(2, "two", (100.0, 80.0, 400.0, 300.0)),
        Mark(3, "three", (350.0, 250.0, 630.0, 470.0)),
    ]
    for mark in marks:
        marked.draw(0, mark)
    assert marked.marked_copy(0).tobytes() == every_mark_drawn_afresh(marked, marks).tobytes()
    marks[1] = Mark(2, "a far longer label than before", marks[1].box)
    marked.relabel(0, marks[1])  # keeps its place in the drawing order
    assert marked.marked_copy(0).tobytes() == every_mark_drawn_afresh(marked, marks).tobytes()
    marked.remove(1)
    del marks[0]
    assert marked.marked_copy(0).tobytes() == every_mark_drawn_afresh(marked, marks).tobytes()


def test_shown_images_carry_recipes_that_rebuild_them() -> None:
    marked = images()
    marked.draw(0, Mark(1, "one", (10.0, 10.0, 200.0, 150.0)))
    shown = marked.show_marked(0)
    assert isinstance(shown, DeferredImage) and shown._im is None
    marked.draw(0, Mark(2, "two", (300.0, 200.0, 500.0, 400.0)))
    # made when read, it shows the marks of the moment it was shown
    assert [b[0] for b in image_recipe(shown)["boxes"]] == [1]
    assert shown.tobytes() == render_recipe(picture(), image_recipe(shown)).tobytes()
    crop = marked.crop(0, (0.0, 0.0, 320.0, 240.0), show_marks=True)
    assert [b[0] for b in image_recipe(crop)["boxes"]] == [1, 2]
    assert crop.tobytes() == render_recipe(picture(), image_recipe(crop)).tobytes()
    bare = marked.crop(0, (0.0, 0.0, 320.0, 240.0), show_marks=False)
    assert image_recipe(bare)["boxes"] == [] and bare.tobytes() != crop.tobytes()


def test_load_clears_the_marks() -> None:
    marked = images()
    marked.draw(0, Mark(1, "one", (10.0, 10.0, 200.0, 150.0)))
    marked.load([picture()])
    assert marked.marked_copy(0).tobytes() == marked.views[0].tobytes()
    assert image_recipe(marked.show_marked(0))["boxes"] == []
