"""Difficulty knobs of the procedural scenes: what each one means, and its validation.

Knobs are keyword arguments of `make_scene_task`. Ranges are given as an `(lo, hi)` pair or a
single number (meaning lo == hi); every scene draws its own value inside the range. Objects are
placed targets first; one that cannot be placed after many tries (and once more at the
smallest size) is left out, and the answer counts what was drawn (`meta["requested_count"]`
keeps the drawn-for number; the presets never lose one in thousands of seeds).

    count                  (lo, hi) objects that answer the question (screens 0-12,
                           shapes 0-30, clutter 1-80).
    object_size            (lo, hi) the longer side of an object, before rotation, in 28-px
                           patches (a screen's width, a shape's box side, a coin's diameter).
    distractors            (lo, hi) look-alike objects that must NOT be counted.
    distractor_similarity  0..1: how often a distractor is a near miss (close colour, similar
                           shape or kind, a frame that looks like a bezel) instead of a plainly
                           different object.
    overlap                0..0.9: the largest allowed intersection of two objects' boxes, as a
                           fraction of the smaller box (0: boxes may touch but not overlap).
    rotation               0..180: objects are rotated by a uniform angle in [-rotation, rotation]
                           degrees (the polygon is rotated, boxes are those of what is drawn).
    image_size             int or (width, height) in pixels, each a multiple of 28 in
                           [112, 2016], so the 28-px grid survives Qwen2-VL's resize unchanged.
    grid                   "aligned": every box's top-left corner is on a 28-px patch corner
                           and sizes are rounded to whole patches, so unrotated objects fill
                           whole patches exactly (all four edges on the grid; a rotated object's
                           box still starts on a corner); "straddling": top-left corners half a
                           patch off the grid (x1 % 28 == 14), sizes whole patches, so every edge
                           cuts a patch in two; "random": any pixel, any size in the range.
                           The same rules hold for distractors.
    background_noise       0..1: strength of the pixel noise over the whole image
                           (1 = standard deviation of about 40 grey levels).
    off_rate               (screens only) 0..1: probability that a screen is switched off.
    kind                   (clutter only) the object kind to count, e.g. "coin"; None: drawn
                           from the seed.
    question               (shapes only) "list": "How many red triangles are there? List them."
                           (an enumerate task over the shapes of the asked colour and shape);
                           "count": "How many shapes are there?" (a count task over every shape,
                           so it takes no distractors).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from boxgym.data.vocabulary import CLUTTER_KINDS

PATCH = 28  # Qwen2-VL's effective patch: 14-px ViT patches merged 2x2.
GRID_MODES: tuple[str, ...] = ("aligned", "straddling", "random")
SHAPE_QUESTIONS: tuple[str, ...] = ("list", "count")
MAX_COUNT: dict[str, int] = {"screens": 12, "shapes": 30, "clutter": 80}
MIN_COUNT: dict[str, int] = {"screens": 0, "shapes": 0, "clutter": 1}
COMMON_KNOBS: tuple[str, ...] = (
    "count",
    "object_size",
    "distractors",
    "distractor_similarity",
    "overlap",
    "rotation",
    "image_size",
    "grid",
    "background_noise",
)
FAMILY_KNOBS: dict[str, tuple[str, ...]] = {
    "screens": (*COMMON_KNOBS, "off_rate"),
    "shapes": (*COMMON_KNOBS, "question"),
    "clutter": (*COMMON_KNOBS, "kind"),
}


@dataclass(frozen=True)
class SceneKnobs:
    """Validated knobs of one scene family (see the module docstring for their meaning)."""

    family: str
    count: tuple[int, int]
    object_size: tuple[float, float]
    distractors: tuple[int, int]
    distractor_similarity: float
    overlap: float
    rotation: float
    image_size: tuple[int, int]
    grid: str
    background_noise: float
    off_rate: float = 0.0
    kind: str | None = None
    question: str = "list"

    def to_json(self) -> dict[str, Any]:
        """The knobs as JSON-able values (tuples become lists), for `task.meta` (the default
        question left out, so the ids of tasks from before the knob are kept)."""
        data = asdict(self)
        data.pop("family")
        if data["question"] == "list":
            data.pop("question")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"knob {name!r} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"knob {name!r} must be finite, got {value!r}")
    return value


def _range(name: str, value: Any, lo: float, hi: float, integer: bool) -> tuple[Any, Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"knob {name!r} must be a number or a (lo, hi) pair, got {value!r}")
        a, b = (_number(name, v) for v in value)
    else:
        a = b = _number(name, value)
    if integer and (a != int(a) or b != int(b)):
        raise ValueError(f"knob {name!r} must hold whole numbers, got {value!r}")
    if a > b:
        raise ValueError(f"knob {name!r}: lo must not exceed hi, got {value!r}")
    if a < lo or b > hi:
        raise ValueError(f"knob {name!r} must lie in [{lo:g}, {hi:g}], got {value!r}")
    return (int(a), int(b)) if integer else (a, b)


def _unit(name: str, value: Any, hi: float = 1.0) -> float:
    v = _number(name, value)
    if not 0.0 <= v <= hi:
        raise ValueError(f"knob {name!r} must lie in [0, {hi:g}], got {value!r}")
    return v


def _image_size(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"knob 'image_size' must be an int or (width, height), got {value!r}")
        w, h = value
    else:
        w = h = value
    out = []
    for side in (w, h):
        if isinstance(side, bool) or not isinstance(side, int):
            raise ValueError(f"knob 'image_size' sides must be integers, got {value!r}")
        if side % PATCH or not 4 * PATCH <= side <= 72 * PATCH:
            raise ValueError(
                f"knob 'image_size' sides must be multiples of {PATCH} in [{4 * PATCH}, "
                f"{72 * PATCH}] (e.g. 448), got {value!r}"
            )
        out.append(side)
    return out[0], out[1]


def validate_knobs(
    family: str, knobs: dict[str, Any], *, check_feasible: bool = True
) -> SceneKnobs:
    """Checks a complete knob dict for one family and returns it as `SceneKnobs`.

    Args:
        family: the scene family the knobs are for.
        knobs: every common knob (and any family knob) by name.
        check_feasible: also refuse knobs whose objects cannot fit (`feasibility_problem`);
            False checks only each knob's own value.

    Raises:
        ValueError: naming the knob, the allowed values and what was given; also for knobs
            that do not apply to the family and for combinations that cannot be placed.
    """
    allowed = FAMILY_KNOBS.get(family)
    if allowed is None:
        raise ValueError(f"unknown scene family {family!r}; known: {sorted(FAMILY_KNOBS)}")
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown knob(s) {unknown} for family {family!r}; valid knobs: {list(allowed)}"
        )
    missing = sorted(set(COMMON_KNOBS) - set(knobs))
    if missing:
        raise ValueError(f"missing knob(s) {missing} for family {family!r}")
    grid = knobs["grid"]
    if grid not in GRID_MODES:
        raise ValueError(f"knob 'grid' must be one of {GRID_MODES}, got {grid!r}")
    kind = knobs.get("kind")
    if kind is not None and kind not in CLUTTER_KINDS:
        raise ValueError(f"knob 'kind' must be None or one of {CLUTTER_KINDS}, got {kind!r}")
    question = knobs.get("question", "list")
    if question not in SHAPE_QUESTIONS:
        raise ValueError(f"knob 'question' must be one of {SHAPE_QUESTIONS}, got {question!r}")
    image_size = _image_size(knobs["image_size"])
    size = _range("object_size", knobs["object_size"], 0.5, 40.0, integer=False)
    parsed = SceneKnobs(
        family=family,
        count=_range("count", knobs["count"], MIN_COUNT[family], MAX_COUNT[family], integer=True),
        object_size=size,
        distractors=_range("distractors", knobs["distractors"], 0, 60, integer=True),
        distractor_similarity=_unit("distractor_similarity", knobs["distractor_similarity"]),
        overlap=_unit("overlap", knobs["overlap"], hi=0.9),
        rotation=_unit("rotation", knobs["rotation"], hi=180.0),
        image_size=image_size,
        grid=grid,
        background_noise=_unit("background_noise", knobs["background_noise"]),
        off_rate=_unit("off_rate", knobs.get("off_rate", 0.0)),
        kind=kind,
        question=question,
    )
    if question == "count" and parsed.distractors[1] > 0:
        raise ValueError(
            "knob 'question' count asks how many shapes there are, so every shape counts: set "
            f"distractors to 0 (got {knobs['distractors']!r})"
        )
    problem = feasibility_problem(parsed) if check_feasible else None
    if problem is not None:
        raise ValueError(problem)
    return parsed


def feasibility_problem(k: SceneKnobs) -> str | None:
    """Why the objects of `k` cannot fit in its image, with a hint how to fix it; None if they can.

    This is the check `validate_knobs` (and so `make_scene_task`) applies; callers that draw
    knob sets at random use it to keep only those the generator accepts.
    """
    w, h = k.image_size
    side = k.object_size[0] * PATCH
    if k.object_size[1] * PATCH * math.sqrt(2) > min(w, h) and k.rotation > 0:
        return (
            f"object_size up to {k.object_size[1]:g} patches does not fit a {w}x{h} image once "
            "rotated; lower object_size or raise image_size"
        )
    if k.object_size[1] * PATCH > min(w, h):
        return f"object_size up to {k.object_size[1]:g} patches is larger than the {w}x{h} image"
    n = k.count[1] + k.distractors[1]
    # Random packing of squares stalls around half the area; overlap lets objects share area.
    usable = 0.45 * w * h / max(1e-6, 1.0 - k.overlap)
    if n * side * side > usable:
        return (
            f"{n} objects (count hi {k.count[1]} + distractors hi {k.distractors[1]}) of at least "
            f"{k.object_size[0]:g} patches cannot be placed in a {w}x{h} image; lower count, "
            "distractors or object_size, raise image_size, or allow more overlap"
        )
    return None
