"""The scene families, their difficulty presets, and `make_scene_task`.

A scene is a pure function of (family, seed, knobs): the generator draws every random choice
from `numpy.random.default_rng(seed)`, in a fixed order, so the same call gives the same pixels
and the same ground truth on any machine with the same Pillow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from boxgym.choices import DIFFICULTY_NAMES
from boxgym.data.scenes.clutter import generate_clutter
from boxgym.data.scenes.knobs import SceneKnobs, validate_knobs
from boxgym.data.scenes.layout import SceneDraft
from boxgym.data.scenes.screens import generate_screens
from boxgym.data.scenes.shapes import generate_shapes
from boxgym.data.task import Task

SceneGenerator = Callable[[SceneKnobs, np.random.Generator], SceneDraft]

# family -> generator(knobs, rng) -> SceneDraft
SCENE_FAMILIES: dict[str, SceneGenerator] = {
    "screens": generate_screens,
    "shapes": generate_shapes,
    "clutter": generate_clutter,
}

LEVELS: tuple[str, ...] = DIFFICULTY_NAMES

# family -> level -> complete knob dict (see boxgym.data.scenes.knobs for what each means).
DIFFICULTIES: dict[str, dict[str, dict[str, Any]]] = {
    "screens": {
        "easy": dict(
            count=(1, 4),
            object_size=(3, 5),
            distractors=(0, 1),
            distractor_similarity=0.2,
            overlap=0.0,
            rotation=0.0,
            image_size=448,
            grid="aligned",
            background_noise=0.0,
            off_rate=0.15,
        ),
        "medium": dict(
            count=(3, 8),
            object_size=(2.5, 4.0),
            distractors=(1, 3),
            distractor_similarity=0.5,
            overlap=0.0,
            rotation=0.0,
            image_size=448,
            grid="random",
            background_noise=0.1,
            off_rate=0.2,
        ),
        "hard": dict(
            count=(6, 12),
            object_size=(2.0, 3.2),
            distractors=(2, 4),
            distractor_similarity=0.9,
            overlap=0.05,
            rotation=6.0,
            image_size=448,
            grid="random",
            background_noise=0.25,
            off_rate=0.25,
        ),
    },
    "shapes": {
        "easy": dict(
            count=(1, 4),
            object_size=(1.5, 2.5),
            distractors=(2, 5),
            distractor_similarity=0.2,
            overlap=0.0,
            rotation=0.0,
            image_size=448,
            grid="aligned",
            background_noise=0.0,
            question="list",
        ),
        "medium": dict(
            count=(2, 7),
            object_size=(1.0, 2.0),
            distractors=(5, 12),
            distractor_similarity=0.5,
            overlap=0.0,
            rotation=30.0,
            image_size=448,
            grid="random",
            background_noise=0.1,
            question="list",
        ),
        "hard": dict(
            count=(3, 10),
            object_size=(0.8, 1.5),
            distractors=(10, 20),
            distractor_similarity=0.9,
            overlap=0.1,
            rotation=180.0,
            image_size=448,
            grid="random",
            background_noise=0.25,
            question="list",
        ),
    },
    "clutter": {
        "easy": dict(
            count=(10, 20),
            object_size=(1.2, 1.6),
            distractors=(0, 0),
            distractor_similarity=0.0,
            overlap=0.0,
            rotation=0.0,
            image_size=448,
            grid="random",
            background_noise=0.0,
            kind=None,
        ),
        "medium": dict(
            count=(20, 40),
            object_size=(0.9, 1.3),
            distractors=(0, 5),
            distractor_similarity=0.5,
            overlap=0.1,
            rotation=180.0,
            image_size=448,
            grid="random",
            background_noise=0.1,
            kind=None,
        ),
        "hard": dict(
            count=(40, 60),
            object_size=(0.7, 1.0),
            distractors=(3, 10),
            distractor_similarity=0.9,
            overlap=0.25,
            rotation=180.0,
            image_size=448,
            grid="random",
            background_noise=0.2,
            kind=None,
        ),
    },
}


def resolve_knobs(family: str, difficulty: str = "easy", **knobs: Any) -> SceneKnobs:
    """The difficulty preset of a family with `knobs` overriding it, validated.

    Raises:
        ValueError: for an unknown family, difficulty or knob, or an invalid knob value.
    """
    if family not in SCENE_FAMILIES:
        raise ValueError(f"unknown scene family {family!r}; known: {sorted(SCENE_FAMILIES)}")
    if difficulty not in LEVELS:
        raise ValueError(f"unknown difficulty {difficulty!r}; known: {list(LEVELS)}")
    return validate_knobs(family, {**DIFFICULTIES[family][difficulty], **knobs})


def scene_task_id(family: str, seed: int, difficulty: str = "easy", **knobs: Any) -> str:
    """The id `make_scene_task` gives these arguments, without drawing the scene."""
    knob_json = resolve_knobs(family, difficulty, **knobs).to_json() if knobs else None
    return _task_id(family, seed, difficulty, knob_json)


def _task_id(family: str, seed: int, difficulty: str, knob_json: dict[str, Any] | None) -> str:
    task_id = f"{family}-{difficulty}-s{int(seed)}"
    if knob_json is not None:
        digest = hashlib.sha1(json.dumps(knob_json, sort_keys=True).encode()).hexdigest()[:8]
        task_id += f"-k{digest}"
    return task_id


def make_scene_task(family: str, seed: int, difficulty: str = "easy", **knobs: Any) -> Task:
    """A procedural scene as a Task with exact ground truth, deterministic from (seed, knobs).

    Args:
        family: "screens", "shapes" or "clutter".
        seed: a non-negative integer; every random choice comes from it.
        difficulty: "easy", "medium" or "hard": the preset the knobs start from.
        **knobs: overrides of the preset (see `boxgym.data.scenes.knobs`).

    Returns:
        A Task of kind "enumerate": answer {"count": n, "items": [labels in reading order]}
        (or, for shapes asked `question="count"`, of kind "count": answer {"count": n}),
        objects in reading order. Its id is "<family>-<difficulty>-s<seed>", with a "-k<hash>"
        suffix when knobs override the preset, so different knobs never share an id.
        `task.meta` records family, seed, difficulty, every knob and family details.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    parsed = resolve_knobs(family, difficulty, **knobs)
    rng = np.random.default_rng(int(seed))
    draft = SCENE_FAMILIES[family](parsed, rng)
    knob_json = parsed.to_json()
    task_id = _task_id(family, seed, difficulty, knob_json if knobs else None)
    items = [o.label for o in draft.objects]
    answer: dict[str, Any] = {"count": len(items), "items": items}
    if draft.kind == "count":
        answer = {"count": len(items)}
    return Task(
        id=task_id,
        images=[draft.image],
        question=draft.question,
        kind=draft.kind,
        objects=draft.objects,
        answer=answer,
        source=family,
        split="procedural",
        meta={
            "family": family,
            "seed": int(seed),
            "difficulty": difficulty,
            "knobs": knob_json,
            "overrides": sorted(knobs),
            **draft.extra_meta,
        },
    )
