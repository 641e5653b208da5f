"""`rotation`: counting against the whole image's rotation.

Two kinds of rotation of the same scenes (the seeing model's distribution: shapes, 224x224, 1-5
objects of 2-3 patches):

- `free`: rotated by 0-90 degrees counter-clockwise (bicubic), the canvas grown to hold the whole
  rotated image and padded with the scene's background colour to sides that are multiples of 28
  (centred). Objects keep their size in pixels; the image, and so `image_tokens`, grows (a 224
  image at 45 degrees becomes 336x336: 144 tokens instead of 64).
- `right`: the four right-angle reorientations (0, 90, 180, 270), exact pixel transposes with no
  resampling: the same objects, moved across patch boundaries, with the same token count.

True boxes are rotated with the image (the axis-aligned box around the rotated corners; exact
for right angles, looser for free angles), so grounding can be scored too.
"""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

from boxgym.data.scenes.knobs import PATCH
from boxgym.studies.base import Study, StudyOutput
from boxgym.studies.direct import (
    DIRECT_DEFAULTS,
    DIRECT_METRICS,
    Probe,
    ask_and_score,
    background_colour,
    check_task,
    crossing_fraction,
    scene_tasks,
    true_boxes,
)

TRANSPOSES = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
MODES = ("free", "right")


def rotate_boxes(
    boxes: list[tuple[float, float, float, float]],
    size: tuple[int, int],
    new_size: tuple[int, int],
    angle: float,
    offset: tuple[float, float] = (0.0, 0.0),
) -> list[tuple[float, float, float, float]]:
    """Boxes of an image rotated `angle` degrees counter-clockwise about its centre (as PIL's
    `rotate(expand=True)` and `transpose` do), in the new image of `new_size`, shifted by `offset`."""
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    cx, cy = size[0] / 2, size[1] / 2
    nx, ny = new_size[0] / 2 + offset[0], new_size[1] / 2 + offset[1]
    out = []
    for x1, y1, x2, y2 in boxes:
        xs, ys = [], []
        for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2)):
            dx, dy = x - cx, y - cy
            xs.append(nx + dx * cos + dy * sin)
            ys.append(ny - dx * sin + dy * cos)
        out.append((min(xs), min(ys), max(xs), max(ys)))
    return out


def rotate(
    image: Image.Image, boxes: list[tuple[float, float, float, float]], mode: str, angle: int
) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
    """The image and its true boxes after a `free` or `right` rotation by `angle` degrees."""
    if mode == "right":
        if angle % 90 or not 0 <= angle < 360:
            raise ValueError(f"right-angle rotations are 0, 90, 180 or 270 degrees, got {angle}")
        shown = image if angle == 0 else image.transpose(TRANSPOSES[angle])
        return shown, rotate_boxes(boxes, image.size, shown.size, angle)
    if not 0 <= angle <= 90:
        raise ValueError(f"free rotations lie in [0, 90] degrees, got {angle}")
    fill = background_colour(image)
    turned = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    side = (math.ceil(turned.width / PATCH) * PATCH, math.ceil(turned.height / PATCH) * PATCH)
    canvas = Image.new("RGB", side, fill)
    corner = ((side[0] - turned.width) // 2, (side[1] - turned.height) // 2)
    canvas.paste(turned, corner)
    moved = rotate_boxes(boxes, image.size, turned.size, angle, offset=corner)
    return canvas, moved


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    check_task(settings)
    tasks = scene_tasks(settings)
    conditions = [("free", int(a)) for a in settings["free_angles"]]
    conditions += [("right", int(a)) for a in settings["right_angles"]]
    probes = []
    for mode, angle in conditions:
        for task in tasks:
            shown, boxes = rotate(task.images[0], true_boxes(task), mode, angle)
            probes.append(
                Probe(
                    image=shown,
                    task=task,
                    boxes=boxes,
                    condition={"mode": mode, "angle": angle},
                    extra={"objects_crossing": crossing_fraction(boxes)},
                )
            )
    return StudyOutput(records=ask_and_score(lab, probes, settings))


STUDY = Study(
    name="rotation",
    question="Does rotating the image, or reorienting it by right angles (which moves objects "
    "across patch boundaries without changing them), change counting?",
    factors=("mode", "angle"),
    metrics=(*DIRECT_METRICS, "objects_crossing"),
    defaults={
        **DIRECT_DEFAULTS,
        "free_angles": [0, 15, 30, 45, 60, 75, 90],
        "right_angles": [0, 90, 180, 270],
    },
    quick={"free_angles": [0, 30, 45, 90], "right_angles": [0, 90, 180, 270], "n": 40},
    measure=measure,
    plot_x="angle",
    plot_hue="mode",
    plot_metrics=("count_accuracy", "count_abs_error", "grounding_f1", "image_tokens"),
    fixed_help="the scenes (knobs in the settings); only the rotation applied to the whole "
    "image changes",
)
