"""What the seeing tiny Qwen2-VL is trained on: procedural scenes asked in plain text.

Every example is a function of `(skill, seed)`: a procedural scene from `boxgym.data.scenes`, a
question, and the exact reply the model should give. Five skills:

- ``count``: the prototype's distribution. `shapes`, 224x224, 1-5 objects of 2-3 patches, no
  distractors, any grid placement (aligned, straddling or random, a third each), asked
  "How many shapes are there? Answer with a number."; reply "3".
- ``count_clutter``: `clutter` scenes of the same size, 1-5 objects of one kind, asked
  "How many coins are there? Answer with a number."
- ``ground``: the `count` scenes, asked "Find every shape. Answer with one box per shape.";
  reply one Qwen2-VL grounding string per object in reading order,
  ``<|object_ref_start|>red triangle<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
  corners in the [0, 1000) frame, one per line.
- ``list``: `shapes` scenes with 1-3 targets and 1-3 other shapes, asked
  "List the shapes. Answer with their names separated by commas."; reply the labels of every
  shape (targets and distractors) in reading order, e.g. "red triangle, blue circle".
- ``tool``: the `count` scenes as a boxgym episode: the env's system turn and tool schemas
  (`TOOL_ENV`, the learning proof's env), the env's question ("How many green rectangles are
  there? List them."), and the oracle's first reply: every object boxed in Qwen2-VL's grounding
  format, then an ``answer`` tool call with the count and the items. The other skills see no
  system turn; without this one the model's grounding falls to zero as soon as one precedes
  the question (experiments/seeing_context_shift.py measures it).

Seeds below `EVAL_SEEDS_END` are held out: training draws its seeds at or above it, so training
and evaluation scenes are disjoint by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from boxgym.data.scenes.families import make_scene_task
from boxgym.data.task import Task
from boxgym.env.config import ONE_REPLY

SKILLS: tuple[str, ...] = ("count", "count_clutter", "ground", "list", "tool")
EVAL_SEEDS_END = 1_000_000  # seeds [0, EVAL_SEEDS_END) are never trained on
GRIDS: tuple[str, ...] = ("aligned", "straddling", "random")
IMAGE_SIZE = 224

COUNT_QUESTION = "How many shapes are there? Answer with a number."
GROUND_QUESTION = "Find every shape. Answer with one box per shape."
# Other phrasings of the grounding question, of 2 to 25 tokens (`SeeingRecipe.ground_phrasings`).
# Qwen2-VL's image tokens carry no absolute position: a box's coordinates are read off M-RoPE
# offsets between the reply token and the image tokens, so a model trained on one question can
# tie them to where in the text the box starts (a box started 3 tokens later lands elsewhere).
# Questions of many lengths take that shortcut away (measured: grounding then learns far
# more slowly; docs/models.md).
GROUND_PHRASINGS: tuple[str, ...] = (
    GROUND_QUESTION,
    "Find every shape.",
    "Shapes?",
    "Box each shape.",
    "Where are the shapes? Answer with one box per shape, in reading order.",
    "Locate every shape in this image and give one box for each of them, row by row, from"
    " left to right.",
    "Find all the shapes in the picture. Answer with one bounding box per shape.",
    "Please find every shape. One box per shape.",
)
LIST_QUESTION = "List the shapes. Answer with their names separated by commas."

# The env of the `tool` skill and of the seeing learning proof (configs/proof_*_seeing.yaml): the
# one-reply protocol, draw_box answering in text, so one reply boxes every object and answers.
TOOL_ENV: dict[str, Any] = {**ONE_REPLY, "max_image_pixels": 50176, "crop_max_pixels": 50176}


@dataclass(frozen=True)
class Example:
    """One training or evaluation example: an image, a question and the exact reply."""

    skill: str
    seed: int
    task: Task
    question: str
    reply: str
    # "bare": one user turn; "tool": the env's system turn (with its tool schemas) before it
    context: str = "bare"

    @property
    def image(self):
        return self.task.images[0]


def scene_knobs(skill: str, seed: int, max_count: int = 5) -> tuple[str, dict[str, Any]]:
    """The scene family and knobs a skill draws its scene from (the grid mode cycles with seed)."""
    grid = GRIDS[seed % len(GRIDS)]
    common = dict(
        image_size=IMAGE_SIZE,
        object_size=(2.0, 3.0),
        grid=grid,
        rotation=0.0,
        background_noise=0.0,
        overlap=0.0,
    )
    if skill in ("count", "ground", "tool"):
        return "shapes", dict(common, count=(1, max_count), distractors=(0, 0))
    if skill == "count_clutter":
        return "clutter", dict(common, count=(1, max_count), distractors=(0, 0))
    if skill == "list":
        return "shapes", dict(common, count=(1, 3), distractors=(1, 3), distractor_similarity=0.0)
    raise ValueError(f"unknown skill {skill!r}; known: {SKILLS}")


def qwen_box(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, ...]:
    """A pixel box as Qwen2-VL's integer [0, 1000) corners."""
    width, height = size
    x1, y1, x2, y2 = box
    scale = (1000 / width, 1000 / height, 1000 / width, 1000 / height)
    return tuple(min(999, max(0, round(v * s))) for v, s in zip((x1, y1, x2, y2), scale))


def grounding_text(label: str, corners: tuple[int, ...]) -> str:
    """One object in Qwen2-VL's grounding format."""
    x1, y1, x2, y2 = corners
    return (
        f"<|object_ref_start|>{label}<|object_ref_end|>"
        f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    )


def all_shapes(task: Task) -> list[dict[str, Any]]:
    """Targets and distractors of a shapes scene as {label, box}, in reading order."""
    shapes = [{"label": o.label, "box": tuple(o.box)} for o in task.objects]
    shapes += [{"label": d["label"], "box": tuple(d["box"])} for d in task.meta["distractors"]]
    return sorted(shapes, key=lambda s: (round(s["box"][1] / 14), s["box"][0]))


def make_example(skill: str, seed: int, max_count: int = 5) -> Example:
    """The example of `skill` drawn from `seed` (deterministic)."""
    family, knobs = scene_knobs(skill, seed, max_count)
    task = make_scene_task(family, seed, "easy", **knobs)
    if skill == "count":
        return Example(skill, seed, task, COUNT_QUESTION, str(task.count))
    if skill == "count_clutter":
        kind = task.meta.get("kind") or task.objects[0].label
        question = f"How many {plural(kind)} are there? Answer with a number."
        return Example(skill, seed, task, question, str(task.count))
    if skill == "tool":
        question, reply = oracle_turn(task, seed)
        return Example(skill, seed, task, question, reply, context="tool")
    if skill == "ground":
        lines = [
            grounding_text(o.label, qwen_box(o.box, task.images[0].size)) for o in task.objects
        ]
        return Example(skill, seed, task, GROUND_QUESTION, "\n".join(lines))
    shapes = all_shapes(task)
    return Example(skill, seed, task, LIST_QUESTION, ", ".join(s["label"] for s in shapes))


def plural(noun: str) -> str:
    """English plural of a clutter kind ("coin" -> "coins", "glass" -> "glasses")."""
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


_TOOL_ENV = None


def tool_env():
    """The `BoxGymEnv` of the `tool` skill (one per process; reset for every example)."""
    global _TOOL_ENV
    if _TOOL_ENV is None:
        from boxgym.env import BoxGymEnv, EnvConfig

        _TOOL_ENV = BoxGymEnv(config=EnvConfig(**TOOL_ENV))
    return _TOOL_ENV


def oracle_turn(task: Task, seed: int) -> tuple[str, str]:
    """The env's question of `task` and the oracle's first reply (grounding format + answer)."""
    from boxgym.policies.scripted import OraclePolicy, SeededTask

    env = tool_env()
    messages, _ = env.reset(seed=seed, options={"task": task})
    question = next(c["text"] for c in messages[-1]["content"] if c["type"] == "text")
    oracle = OraclePolicy(call_format="grounding", calls_per_turn=TOOL_ENV["max_calls_per_turn"])
    reply = oracle.act([list(messages)], env.tool_schemas, [SeededTask(task, seed)])[0]
    return question, reply


def tool_context() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The env's system message and tool schemas (the same for every task)."""
    env = tool_env()
    if env.messages and env.messages[0]["role"] == "system":
        return env.messages[0], env.tool_schemas
    messages, _ = env.reset(options={"task": make_example("count", 0).task})
    return messages[0], env.tool_schemas


def messages_for(example: Example) -> list[dict[str, Any]]:
    """The prompt of an example in the transformers multimodal chat format (with the env's
    system turn in the `tool` context; its tools come from `tools_for`)."""
    messages = question_messages(example.image, example.question)
    if example.context == "tool":
        return [tool_context()[0], *messages]
    return messages


def tools_for(example: Example) -> list[dict[str, Any]] | None:
    """The tool schemas `apply_chat_template` needs for an example (None without tools)."""
    return tool_context()[1] if example.context == "tool" else None


def question_messages(image, question: str) -> list[dict[str, Any]]:
    """One user turn: an image and a question (no system turn, no tools)."""
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": question}],
        }
    ]
