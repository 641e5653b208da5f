"""`patch-grid`: counting against object size in 28-px patches and placement on the patch grid.

Qwen2-VL sees an image as 14-px ViT patches merged 2x2 into 28-px tokens. This study varies the
objects' size (from far below one token-patch to several) and where they sit relative to the
28-px grid: `aligned` (corners on patch corners, whole-patch sizes), `straddling` (corners half
a patch off, so every edge cuts a patch), `random`. Everything else is the seeing model's
distribution (shapes, 224x224, 1-5 objects, no distractors); the same seeds in every condition.

Objects smaller than one patch cannot be drawn by the scene generator on the grid (its minimum
is half a patch, and aligned/straddling sizes are whole patches), so such scenes are drawn f
times larger (f the smallest power of two with size x f >= 1) and shrunk back by area averaging
(PIL's BOX filter), as a camera would see them: an `aligned` object of 1/f patch then lies inside
one patch, a `straddling` one is half a big-scene patch off. `objects_crossing` measures how many
objects really cross a 28-px line, and `object_side_patches` their drawn size, in every condition.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from boxgym.data.scenes.knobs import GRID_MODES, PATCH
from boxgym.studies.base import Study, StudyOutput
from boxgym.studies.direct import (
    DIRECT_DEFAULTS,
    DIRECT_METRICS,
    Probe,
    ask_and_score,
    check_task,
    crossing_fraction,
    scale_boxes,
    scene_tasks,
    true_boxes,
)

MAX_SIDE = 2016  # the scene generator's largest image side


def render_factor(size: float) -> int:
    """The smallest power of two f with size * f >= 1 (1 for sizes of a patch or more)."""
    f = 1
    while size * f < 1 - 1e-9:
        f *= 2
    return f


def condition_probes(settings: dict[str, Any], size: float, grid: str) -> list[Probe]:
    """The study's scenes with objects of `size` patches placed by `grid`, as shown to the model."""
    side = settings["knobs"]["image_size"]
    if not isinstance(side, int):
        raise ValueError(f"patch-grid needs a square knobs.image_size (an int), got {side!r}")
    f = render_factor(size)
    if side * f > MAX_SIDE:
        raise ValueError(
            f"object size {size} needs scenes drawn {f}x larger ({side * f} px > {MAX_SIDE}); "
            "use larger sizes or a smaller knobs.image_size"
        )
    tasks = scene_tasks(settings, object_size=size * f, grid=grid, image_size=side * f)
    probes = []
    for task in tasks:
        image = task.images[0]
        boxes = true_boxes(task)
        if f > 1:
            image = image.resize((side, side), Image.Resampling.BOX)
            boxes = scale_boxes(boxes, 1 / f, 1 / f)
        sides = [max(b[2] - b[0], b[3] - b[1]) / PATCH for b in boxes]
        probes.append(
            Probe(
                image=image,
                task=task,
                boxes=boxes,
                condition={"object_size": size, "grid": grid},
                extra={
                    "objects_crossing": crossing_fraction(boxes),
                    "object_side_patches": sum(sides) / len(sides) if sides else None,
                },
            )
        )
    return probes


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    check_task(settings)
    unknown = [g for g in settings["grids"] if g not in GRID_MODES]
    if unknown:
        raise ValueError(f"setting grids: unknown {unknown}; choose from {GRID_MODES}")
    probes = [
        p
        for size in settings["sizes"]
        for grid in settings["grids"]
        for p in condition_probes(settings, float(size), grid)
    ]
    return StudyOutput(records=ask_and_score(lab, probes, settings))


STUDY = Study(
    name="patch-grid",
    question="How does counting depend on object size in 28-px patches and on placement "
    "relative to the patch grid (aligned, straddling, random)?",
    factors=("object_size", "grid"),
    metrics=(*DIRECT_METRICS, "objects_crossing", "object_side_patches"),
    defaults={
        **DIRECT_DEFAULTS,
        "sizes": [0.125, 0.25, 0.5, 1, 2],
        "grids": list(GRID_MODES),
    },
    quick={"sizes": [0.125, 0.5, 1, 2], "n": 40},
    measure=measure,
    plot_x="object_size",
    plot_hue="grid",
    plot_metrics=("count_accuracy", "count_abs_error", "grounding_f1", "objects_crossing"),
    plot_log_x=True,
    fixed_help="scene family, count range, image size, distractors and seeds (knobs in the "
    "settings); object size and grid placement override the knobs",
)
