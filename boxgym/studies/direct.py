"""Direct-answer measurement, shared by the image studies (patch-grid, resolution, rotation).

A study builds `Probe`s (an image, its ground truth in that image's pixels, the condition) and
`ask_and_score` asks the model one plain question per image, with no tools and no system turn:

- `task: count`: the counting question ("How many shapes are there? Answer with a number."); the
  first integer of the reply is the answer;
- `task: ground`: the grounding question; the reply's Qwen2-VL grounding spans
  (`<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, [0, 1000)
  frame) are parsed by the env's parser, so the count is the number of boxes and enumeration and
  grounding F1 are scored as the env scores them.

Scenes come from `make_scene_task` with seeds from `seed_base` (held out: below the seeing
model's training seeds, far from the small seeds training runs draw and from the eval suites'),
the same seeds in every condition, so conditions are paired. `knobs.grid: cycle` (the default)
cycles aligned / straddling / random placement with the seed, as the seeing model was trained.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from boxgym.data.scenes.knobs import GRID_MODES, PATCH
from boxgym.models.skills import COUNT_QUESTION, GROUND_QUESTION  # the seeing model's

TASKS = ("count", "ground")
# Held out: the seeing model trains on seeds >= 1,000,000 only; training runs and `boxgym episodes`
# draw small seeds, GRPO from 100,000, the eval suites from 900,000,000.
SEED_BASE = 500_000

# The settings every direct study shares (a study adds its own factors).
DIRECT_DEFAULTS: dict[str, Any] = {
    "family": "shapes",
    "difficulty": "easy",
    "knobs": {
        "count": [1, 5],
        "object_size": [2, 3],
        "distractors": 0,
        "image_size": 224,
        "grid": "cycle",
        "rotation": 0,
        "background_noise": 0.0,
    },
    "n": 100,
    "seed_base": SEED_BASE,
    "task": "count",
    "question": COUNT_QUESTION,
    "ground_question": GROUND_QUESTION,
    "max_new_tokens": 16,
}

DIRECT_METRICS = (
    "count_accuracy",
    "count_abs_error",
    "count_rel_error",
    "enumeration_f1",
    "grounding_f1",
    "answered",
    "answer_tokens",
    "image_tokens",
)

_INT = re.compile(r"-?\d+")
# A first number beyond this is no answer (a degenerate "1111111111111" would otherwise swamp
# the mean absolute error); scene counts go up to 80.
MAX_ANSWER = 999


@dataclass
class Probe:
    """One image to ask about.

    Attributes:
        image: what the model is shown.
        task: the scene's Task (true count and labels).
        boxes: the true objects' boxes in `image`'s pixels (after any resize or rotation).
        condition: the condition's factor values.
        extra: values recorded with the example (e.g. objects_crossing).
    """

    image: Image.Image
    task: Any
    boxes: list[tuple[float, float, float, float]]
    condition: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def check_task(settings: dict[str, Any]) -> str:
    task = settings["task"]
    if task not in TASKS:
        raise ValueError(f"setting task must be one of {TASKS}, got {task!r}")
    if int(settings["n"]) < 2:
        raise ValueError(
            f"setting n must be at least 2 (a confidence interval needs two), got {settings['n']}"
        )
    return task


def scene_tasks(settings: dict[str, Any], **knobs: Any) -> list[Any]:
    """The study's `n` held-out scenes, with `knobs` over the study's knobs."""
    from boxgym.data.scenes import make_scene_task

    merged = {**settings["knobs"], **knobs}
    merged = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
    tasks = []
    for i in range(int(settings["n"])):
        seed = int(settings["seed_base"]) + i
        own = dict(merged)
        if own.get("grid") == "cycle":
            own["grid"] = GRID_MODES[seed % len(GRID_MODES)]
        tasks.append(make_scene_task(settings["family"], seed, settings["difficulty"], **own))
    return tasks


def true_boxes(task: Any) -> list[tuple[float, float, float, float]]:
    return [tuple(o.box) for o in task.objects if o.box is not None]


def crossing_fraction(boxes: list[tuple[float, float, float, float]]) -> float | None:
    """Fraction of boxes that cross a 28-px patch line (horizontal or vertical)."""
    if not boxes:
        return None

    def crosses(lo: float, hi: float) -> bool:
        return math.floor(lo / PATCH) != math.floor((hi - 1e-6) / PATCH)

    return sum(crosses(b[0], b[2]) or crosses(b[1], b[3]) for b in boxes) / len(boxes)


def conversation(image: Image.Image | None, text: str) -> list[dict[str, Any]]:
    """One user turn: the image (if any) then the question."""
    content: list[dict[str, Any]] = [] if image is None else [{"type": "image", "image": image}]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def parse_count(text: str) -> int | None:
    """The first integer in a reply, or None (also when it is negative or above MAX_ANSWER)."""
    match = _INT.search(text)
    if match is None or len(match.group(0).lstrip("-")) > 4:
        return None
    value = int(match.group(0))
    return value if 0 <= value <= MAX_ANSWER else None


def count_scores(answer: int | None, truth: int) -> dict[str, float | None]:
    given = 0 if answer is None else answer
    err = abs(given - truth)
    return {
        "count_accuracy": float(answer == truth),
        "count_abs_error": float(err),
        "count_rel_error": float(err / truth) if truth else None,
        "answered": float(answer is not None),
    }


def grounding_reply_scores(
    text: str, task: Any, boxes: list[tuple[float, float, float, float]], size: tuple[int, int]
) -> dict[str, float | None]:
    """Count, enumeration F1 and grounding F1 of a grounding reply (boxes in the qwen frame)."""
    from boxgym.data.task import GroundTruthObject, Task
    from boxgym.env.parsing import ToolCall, parse_tool_calls
    from boxgym.env.rewards import enumeration_scores, grounding_scores
    from boxgym.tools.frames import frame_to_pixels

    drawn = []
    for item in parse_tool_calls(text, max_calls=200).items:
        if isinstance(item, ToolCall) and item.name == "draw_box":
            a = item.arguments
            try:
                box = frame_to_pixels((a["x1"], a["y1"], a["x2"], a["y2"]), "qwen", size)
            except (KeyError, TypeError, ValueError):
                continue
            drawn.append((str(a.get("label", "")), 0, box))
    labels = [o.label for o in task.objects]
    moved = Task(
        id=task.id,
        images=[Image.new("RGB", size)],
        question=task.question,
        kind="enumerate",
        objects=[GroundTruthObject(box=b, label=label) for b, label in zip(boxes, labels)],
        answer={"count": len(labels), "items": labels},
    )
    scores = count_scores(len(drawn) if drawn else None, task.count)
    scores["enumeration_f1"] = enumeration_scores([d[0] for d in drawn], labels)[2]
    scores["grounding_f1"] = grounding_scores(drawn, moved)[2]
    return scores


def ask_and_score(lab: Any, probes: list[Probe], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Ask the model about every probe (batched) and score each reply; one record per probe."""
    from tqdm.auto import tqdm

    task = check_task(settings)
    question = settings["question"] if task == "count" else settings["ground_question"]
    records: list[dict[str, Any]] = []
    step = max(1, lab.batch_size)
    bar = tqdm(total=len(probes), unit="img", desc="asking", dynamic_ncols=True, leave=False)
    try:
        for start in range(0, len(probes), step):
            chunk = probes[start : start + step]
            replies = lab.ask([conversation(p.image, question) for p in chunk])
            for probe, reply in zip(chunk, replies):
                truth = probe.task.count
                if task == "count":
                    scores = count_scores(parse_count(reply), truth)
                    scores.update(enumeration_f1=None, grounding_f1=None)
                else:
                    scores = grounding_reply_scores(
                        reply, probe.task, probe.boxes, probe.image.size
                    )
                records.append(
                    {
                        **probe.condition,
                        **scores,
                        "answer_tokens": float(lab.count_tokens(reply)),
                        "image_tokens": float(lab.image_tokens(probe.image)),
                        **probe.extra,
                        "true_count": truth,
                        "seed": probe.task.meta.get("seed"),
                        "reply": reply,
                    }
                )
            bar.update(len(chunk))
    finally:
        bar.close()
    return records


def scale_boxes(
    boxes: list[tuple[float, float, float, float]], sx: float, sy: float
) -> list[tuple[float, float, float, float]]:
    return [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in boxes]


def background_colour(image: Image.Image) -> tuple[int, ...]:
    """The image's most common colour (the scene background)."""
    colours = image.convert("RGB").getcolors(maxcolors=image.width * image.height)
    return max(colours, key=lambda c: c[0])[1] if colours else (0, 0, 0)
