"""What the marking model and the arms of the marking study are trained and tested on.

Every example is a function of `(skill, seed)`: a `shapes` scene of `IMAGE_SIZE` px holding n
identical-looking objects of 2-3 patches (no distractors), a conversation, and the exact reply.
The skills:

- ``glance``: the image and "How many shapes are there? Answer with a number." -> "3"
  (n from 1 to 5); ``glance12`` the same with n from 1 to 12 (the control arm).
- ``copy``: text alone, "Copy this number: 11" -> "11" (1 to 12), so that every arm writes the
  numbers past 5 it never counted.
- ``ground``: the image and "Find every shape. Answer with one box per shape." -> one Qwen2-VL
  grounding string per object in reading order.
- ``step_marked``: a turn of the mark-and-look loop (`LOOP_ENV`): the env's system turn and
  tools, the question, and k of the n objects already boxed, one a turn (`marking_order`), each
  box drawn on the image that came back (only that latest image kept). The reply boxes the next
  unmarked object, or answers with the count when none is left (k = n). The k earlier boxes are
  the true ones moved by up to `JITTER` of the object's size, as a model's own boxes would be.
- ``step_text``: the same turns with `draw_box` answering in text only (`TEXT_ENV`): the image
  stays clean, the earlier boxes are in the conversation as text.
- ``one_reply``: today's protocol (`ONE_REPLY_ENV`): every object boxed and the answer, in one
  reply.

Seeds below `EVAL_SEEDS_END` are held out; training draws at or above it, so training and
evaluation scenes are disjoint by construction. The scene of a seed and a count is drawn with
random grid placement, or, where 12 objects do not fit that way, straddling then aligned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from boxgym.data.scenes.families import make_scene_task
from boxgym.data.task import Task
from boxgym.env.config import ONE_REPLY
from boxgym.env.parsing import format_tool_call
from boxgym.policies.scripted import format_grounding, reading_order
from boxgym.tools.frames import pixels_to_frame

SKILLS: tuple[str, ...] = (
    "glance",
    "glance12",
    "copy",
    "ground",
    "step_marked",
    "step_text",
    "one_reply",
)
EVAL_SEEDS_END = 1_000_000  # seeds [0, EVAL_SEEDS_END) are never trained on
IMAGE_SIZE = 336  # 12 x 12 image tokens: 12 objects of 2-3 patches fit
TRAIN_MAX_OBJECTS = 5  # every skill but glance12 and copy sees 1-5 objects
MAX_OBJECTS = 12
LABEL = "shape"  # the label every box is drawn with (the count is what is asked)
JITTER = 0.06  # earlier boxes of a step example: each edge moved by up to this share of a side
QUESTION = "How many shapes are there?"  # the env's question of a loop task
GLANCE_QUESTION = "How many shapes are there? Answer with a number."
GROUND_QUESTION = "Find every shape. Answer with one box per shape."
COPY_QUESTION = "Copy this number: {n}"
GRIDS: tuple[str, ...] = ("random", "straddling", "aligned")

_PIXELS = {"max_image_pixels": IMAGE_SIZE * IMAGE_SIZE, "crop_max_pixels": IMAGE_SIZE * IMAGE_SIZE}
# The mark-and-look loop: one box a turn, the marked image back, the latest image kept; filled
# marks in a colour no scene uses; up to 12 boxes, the answer and 3 turns to spare.
LOOP_ENV: dict[str, Any] = {
    **_PIXELS,
    "max_calls_per_turn": 1,
    "max_turns": MAX_OBJECTS + 4,
    "max_calls": MAX_OBJECTS + 4,
    "draw_box_returns": "image",
    "image_history": "last",
    "mark_style": "fill",
}
# The same turns with the marks as text only: the image stays as it was.
TEXT_ENV: dict[str, Any] = {**LOOP_ENV, "draw_box_returns": "text"}
ONE_REPLY_ENV: dict[str, Any] = {**_PIXELS, **ONE_REPLY}


@dataclass(frozen=True)
class Chat:
    """One example: the conversation up to the reply, its tools, and the exact reply.

    `messages` hold their images in place (at most one); `tools` are the env's schemas (None
    without a system turn); `task` is the scene (None for ``copy``).
    """

    skill: str
    seed: int
    messages: list[dict[str, Any]]
    reply: str
    tools: list[dict[str, Any]] | None = None
    task: Task | None = None


def count_task(seed: int, n: int) -> Task:
    """A count task of exactly `n` shapes in an `IMAGE_SIZE` scene, drawn from `seed`."""
    task = None
    for grid in GRIDS:
        task = make_scene_task(
            "shapes",
            seed,
            "easy",
            image_size=IMAGE_SIZE,
            object_size=(2.0, 3.0),
            grid=grid,
            rotation=0.0,
            background_noise=0.0,
            overlap=0.0,
            count=(n, n),
            distractors=(0, 0),
        )
        if task.count == n:
            break
    if task is None or task.count != n:
        raise ValueError(f"{n} shapes do not fit an {IMAGE_SIZE}-px scene (seed {seed})")
    return dataclasses.replace(
        task,
        id=f"count-{n}-{seed}",
        question=QUESTION,
        kind="count",
        answer={"count": n},
        meta={**task.meta, "grid": grid},
    )


def env_config(skill: str, mark_style: str = "fill") -> dict[str, Any]:
    """The `EnvConfig` fields of a skill played in the env (`step_*`, `one_reply`)."""
    if skill == "step_marked":
        return {**LOOP_ENV, "mark_style": mark_style}
    if skill == "step_text":
        return dict(TEXT_ENV)
    if skill == "one_reply":
        return dict(ONE_REPLY_ENV)
    raise ValueError(f"skill {skill!r} is not played in the env")


def grounding(obj: Any, size: tuple[int, int], box: tuple[float, ...] | None = None) -> str:
    """One box in Qwen2-VL's grounding format (label `LABEL`): `box`, else the object's own."""
    x1, y1, x2, y2 = pixels_to_frame(box or obj.box, "qwen", size)
    return format_grounding({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": LABEL})


def jittered(
    box: tuple[float, ...], rng: np.random.Generator, size: tuple[int, int], share: float = JITTER
) -> tuple:
    """`box` with each edge moved by up to `share` of its side, kept inside the image."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * share, (y2 - y1) * share
    moved = np.asarray(box) + rng.uniform(-1, 1, 4) * np.asarray([dx, dy, dx, dy])
    return (
        max(0.0, float(moved[0])),
        max(0.0, float(moved[1])),
        min(float(size[0]), float(moved[2])),
        min(float(size[1]), float(moved[3])),
    )


def marking_order(objects: list[Any]) -> list[Any]:
    """The order the loop boxes objects in: each time the first in reading order of the objects
    not boxed yet (what a model sees when the boxed ones are covered), which can differ from
    the reading order of all of them where rows overlap."""
    rest, order = list(objects), []
    while rest:
        first = reading_order(rest)[0]
        order.append(first)
        rest = [o for o in rest if o is not first]
    return order


def draws(skill: str, seed: int, top: int | None = None) -> tuple[int, int]:
    """(n objects, k earlier boxes) of a seed: n uniform over the skill's range (1 to `top`
    when given), k over 0..n."""
    rng = np.random.default_rng([seed, 0x3A4B])
    if top is None:
        top = MAX_OBJECTS if skill in ("glance12", "copy") else TRAIN_MAX_OBJECTS
    n = int(rng.integers(1, top + 1))
    return n, int(rng.integers(0, n + 1))


def step_messages(
    task: Task, seed: int, k: int, config: dict[str, Any], jitter: float = JITTER
) -> tuple[list, list]:
    """The conversation after k boxes of the loop (the first k objects in reading order, each
    box's edges moved by up to `jitter` of its side, as a model's would be), as the model sees
    it, and the tools."""
    from boxgym.env import BoxGymEnv, EnvConfig

    env = BoxGymEnv(config=EnvConfig.from_dict(config))
    env.reset(seed=seed, options={"task": task})
    rng = np.random.default_rng([seed, 0x5EED])
    size = task.images[0].size
    for obj in marking_order(task.objects)[:k]:
        env.step(grounding(obj, size, jittered(obj.box, rng, size, jitter)))
    return env.messages, env.tool_schemas


def make_chat(
    skill: str,
    seed: int,
    mark_style: str = "fill",
    n: int | None = None,
    top: int | None = None,
    jitter: float = JITTER,
) -> Chat:
    """The example of `skill` drawn from `seed` (deterministic); `n` fixes the object count
    (evaluation), else it is drawn from the seed, at most `top` when given (a curriculum);
    `jitter`: how far a step example's earlier boxes stray (`jittered`)."""
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}; known: {SKILLS}")
    drawn_n, k = draws(skill, seed, top)
    n = drawn_n if n is None else n
    if skill == "copy":
        text = COPY_QUESTION.format(n=n)
        return Chat(
            skill, seed, [{"role": "user", "content": [{"type": "text", "text": text}]}], str(n)
        )
    task = count_task(seed, n)
    image = task.images[0]
    if skill in ("glance", "glance12", "ground"):
        question = GLANCE_QUESTION if skill != "ground" else GROUND_QUESTION
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
            }
        ]
        if skill == "ground":
            reply = "\n".join(grounding(o, image.size) for o in marking_order(task.objects))
        else:
            reply = str(n)
        return Chat(skill, seed, messages, reply, task=task)
    order = marking_order(task.objects)
    answer = format_tool_call("answer", {"count": n})
    if skill == "one_reply":
        messages, tools = step_messages(task, seed, 0, env_config(skill))
        reply = "\n".join([*(grounding(o, image.size) for o in order), answer])
        return Chat(skill, seed, messages, reply, tools, task)
    k = min(k, n)
    messages, tools = step_messages(task, seed, k, env_config(skill, mark_style), jitter)
    reply = grounding(order[k], image.size) if k < n else answer
    return Chat(skill, seed, messages, reply, tools, task)
