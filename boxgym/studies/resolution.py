"""`resolution`: counting against the image's pixel budget and the filter that resamples to it.

Qwen2-VL's processor resizes every image so both sides are multiples of 28 and its area lies in
[min_pixels, max_pixels]; the area fixes the image tokens (pixels / 784). This study shows the
model the same scenes (the seeing model's distribution: shapes, 224x224, 1-5 objects of 2-3
patches) resampled to a budget of image tokens with a chosen filter: `nearest`, `bilinear`,
`bicubic`, `lanczos` or `area` (PIL's BOX: the mean over each output pixel's footprint). The
resized image already has sides that are multiples of 28 inside the processor's bounds, so the
processor's own resize leaves it as it is and the filter is the one that did the work; the
`image_tokens` column reports what the processor really produced.
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
    check_task,
    scale_boxes,
    scene_tasks,
    true_boxes,
)

FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}


def budget_size(size: tuple[int, int], tokens: int) -> tuple[int, int]:
    """(width, height), multiples of 28, keeping the aspect ratio, closest to `tokens` tokens."""
    if tokens < 1:
        raise ValueError(f"token budgets must be >= 1, got {tokens}")
    w, h = size
    scale = math.sqrt(tokens * PATCH * PATCH / (w * h))
    return max(PATCH, round(w * scale / PATCH) * PATCH), max(
        PATCH, round(h * scale / PATCH) * PATCH
    )


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    check_task(settings)
    unknown = [f for f in settings["filters"] if f not in FILTERS]
    if unknown:
        raise ValueError(f"setting filters: unknown {unknown}; choose from {list(FILTERS)}")
    tasks = scene_tasks(settings)
    probes = []
    for tokens in settings["tokens"]:
        for name in settings["filters"]:
            for task in tasks:
                image = task.images[0]
                target = budget_size(image.size, int(tokens))
                shown = image.resize(target, FILTERS[name])
                sx, sy = target[0] / image.width, target[1] / image.height
                probes.append(
                    Probe(
                        image=shown,
                        task=task,
                        boxes=scale_boxes(true_boxes(task), sx, sy),
                        condition={"tokens": int(tokens), "filter": name},
                    )
                )
    return StudyOutput(records=ask_and_score(lab, probes, settings))


STUDY = Study(
    name="resolution",
    question="How does counting depend on the image's pixel budget (image tokens) and on the "
    "resampling filter used to reach it?",
    factors=("tokens", "filter"),
    metrics=DIRECT_METRICS,
    defaults={
        **DIRECT_DEFAULTS,
        "tokens": [4, 9, 16, 36, 64, 144, 256],
        "filters": list(FILTERS),
    },
    quick={"tokens": [4, 16, 64, 256], "filters": ["nearest", "bilinear", "area"], "n": 40},
    measure=measure,
    plot_x="tokens",
    plot_hue="filter",
    plot_metrics=("count_accuracy", "count_abs_error", "grounding_f1"),
    plot_log_x=True,
    fixed_help="the scenes (knobs in the settings, native size knobs.image_size); only the "
    "size they are resampled to and the filter change",
)
