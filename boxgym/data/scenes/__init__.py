"""Procedural scenes with exact ground truth: screens, shapes and clutter.

`make_scene_task(family, seed, difficulty, **knobs)` is the entry point; `DIFFICULTIES` holds
each family's easy/medium/hard knob presets and `boxgym.data.scenes.knobs` documents every knob.
"""

from boxgym.data.scenes.families import (
    DIFFICULTIES,
    LEVELS,
    SCENE_FAMILIES,
    make_scene_task,
    resolve_knobs,
    scene_task_id,
)
from boxgym.data.scenes.knobs import PATCH, SceneKnobs, feasibility_problem

__all__ = [
    "DIFFICULTIES",
    "LEVELS",
    "PATCH",
    "SCENE_FAMILIES",
    "SceneKnobs",
    "feasibility_problem",
    "make_scene_task",
    "resolve_knobs",
    "scene_task_id",
]
