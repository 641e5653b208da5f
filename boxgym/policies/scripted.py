"""Scripted policies: `oracle`, `noisy` and `random`, for inspection, tests and SFT data.

They write raw assistant text exactly as a model would (`format_tool_call`, coordinates in the
env's frame), read the ground truth from the `tasks` argument of `act`, and keep no state between
calls: an episode's progress is read off its conversation (the tool calls this policy already
wrote in earlier assistant turns), and all randomness comes from (policy seed, episode seed,
turn), so batches of any size and any mix of episodes give the same texts.

`tasks` items may be a `Task` or a `SeededTask` (a task plus its episode seed, which the rollout
runner passes so that the G samples of one task differ); a bare `Task` seeds from its id.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from boxgym.data.task import GroundTruthObject, Task
from boxgym.env.parsing import format_tool_call
from boxgym.policies.base import Conversation
from boxgym.tools.frames import check_frame, pixels_to_frame

Call = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class SeededTask:
    """A task together with the seed of the episode that runs it."""

    task: Task
    seed: int


def unpack_task(item: Any) -> tuple[Task, int]:
    """(task, episode seed) from a `Task` or a `SeededTask`; clear error for anything else."""
    if isinstance(item, SeededTask):
        return item.task, int(item.seed)
    if isinstance(item, Task):
        return item, zlib.crc32(item.id.encode("utf-8"))
    raise TypeError(
        f"scripted policies need the ground truth: pass tasks=[Task | SeededTask, ...], got {type(item).__name__}"
    )


def reading_order(objects: list[GroundTruthObject]) -> list[GroundTruthObject]:
    """Objects with boxes in reading order: image, then rows top to bottom, then left to right.

    A row starts at the topmost remaining object and takes every object whose centre lies above
    that object's bottom edge, so objects of one visual row stay together despite small offsets.
    """
    out: list[GroundTruthObject] = []
    for image in sorted({o.image for o in objects}):
        rest = sorted(
            (o for o in objects if o.image == image and o.box is not None),
            key=lambda o: (o.center()[1], o.center()[0]),
        )
        while rest:
            bottom = rest[0].box[3]  # type: ignore[index]
            row = [o for o in rest if o.center()[1] < bottom]
            row_ids = {id(o) for o in row}
            out.extend(sorted(row, key=lambda o: (o.center()[0], o.center()[1])))
            rest = [o for o in rest if id(o) not in row_ids]
    return out


def calls_already_made(conversation: Conversation) -> int:
    """How many tool calls earlier assistant turns of this conversation wrote."""
    total = 0
    for message in conversation:
        if message.get("role") != "assistant":
            continue
        for block in message.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "text":
                text = str(block.get("text", ""))
                total += text.count("<tool_call>") + text.count("<|box_start|>")
    return total


def turns_taken(conversation: Conversation) -> int:
    return sum(1 for m in conversation if m.get("role") == "assistant")


def _box_args(
    box: tuple[float, ...], obj_image: int, label: str, frame: str, size: tuple[int, int]
) -> dict[str, Any]:
    x1, y1, x2, y2 = pixels_to_frame(box, frame, size)
    args: dict[str, Any] = {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": label}
    if obj_image:
        args["image"] = obj_image
    return args


def answer_arguments(
    task: Task, frame: str, *, count: int | None = None, items: list[str] | None = None
) -> dict[str, Any]:
    """The `answer` arguments for a task (the truth unless count/items are given)."""
    if task.kind == "enumerate":
        truth_items = list(
            task.answer.get("items") or [o.label for o in reading_order(task.objects)]
        )
        return {
            "count": int(task.count if count is None else count),
            "items": truth_items if items is None else items,
        }
    if task.kind == "count":
        return {"count": int(task.count if count is None else count)}  # type: ignore[arg-type]
    if task.kind == "verify":
        return {"value": bool(task.answer["value"])}
    x, y = pixels_to_frame(tuple(task.answer["point"]), frame, task.images[0].size)
    return {"x": x, "y": y}


CALL_FORMATS: tuple[str, ...] = ("json", "grounding", "plain")


def plain_answer(arguments: dict[str, Any]) -> str:
    """The answer of an `answer` call in words, as a zero-shot reply (`boxgym.env.zero_shot`):
    the count, "true"/"false", or the point "(x, y)"."""
    if "count" in arguments:
        return str(arguments["count"])
    if "value" in arguments:
        return "true" if arguments["value"] else "false"
    return f"({arguments['x']:g}, {arguments['y']:g})"


def _render(calls: list[Call], call_format: str = "json") -> str:
    """The assistant text of `calls`: Hermes `<tool_call>` JSON, or with `call_format`
    "grounding", each `draw_box` on image 0 in Qwen2-VL's own grounding format (which the env
    reads as draw_box in the qwen frame), the other calls as JSON."""
    if call_format == "json":
        return "\n".join(format_tool_call(name, args) for name, args in calls)
    return "\n".join(
        format_grounding(args)
        if name == "draw_box" and not args.get("image")
        else format_tool_call(name, args)
        for name, args in calls
    )


def format_grounding(args: dict[str, Any]) -> str:
    """A draw_box call (qwen frame) as `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`."""
    x1, y1, x2, y2 = (round(args[k]) for k in ("x1", "y1", "x2", "y2"))
    return (
        f"<|object_ref_start|>{args['label']}<|object_ref_end|>"
        f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    )


class _PlannedPolicy:
    """A policy that follows a fixed plan of calls per episode, `calls_per_turn` at a time."""

    name = "scripted"

    def __init__(
        self,
        *,
        calls_per_turn: int = 1,
        frame: str = "qwen",
        seed: int = 0,
        call_format: str = "json",
    ) -> None:
        if calls_per_turn < 1:
            raise ValueError(f"calls_per_turn must be >= 1, got {calls_per_turn}")
        if call_format not in CALL_FORMATS:
            raise ValueError(f"call_format must be one of {CALL_FORMATS}, got {call_format!r}")
        if call_format == "grounding" and frame != "qwen":
            raise ValueError("call_format 'grounding' writes the qwen frame; use frame='qwen'")
        self.calls_per_turn = int(calls_per_turn)
        self.call_format = call_format
        self.frame = check_frame(frame)
        self.seed = int(seed)

    def plan(self, task: Task, episode_seed: int) -> list[Call]:
        raise TypeError(f"{type(self).__name__} does not define a plan")

    def act(
        self,
        conversations: list[Conversation],
        tools: list[dict[str, Any]],
        tasks: list[Any] | None = None,
    ) -> list[str]:
        """One assistant text per conversation: the next `calls_per_turn` calls of its plan.

        The last chunk carries the answer with it when it fits, so no turn is spent on it alone.
        """
        if tasks is None or len(tasks) != len(conversations):
            raise ValueError(f"{self.name} policy needs one task per conversation (tasks=...)")
        texts = []
        for conversation, item in zip(conversations, tasks):
            task, episode_seed = unpack_task(item)
            plan = self.plan(task, episode_seed)
            if self.call_format == "plain":  # zero-shot: only the plan's answer, in words
                answers = [args for name, args in plan if name == "answer"]
                texts.append(
                    plain_answer(answers[-1] if answers else answer_arguments(task, self.frame))
                )
                continue
            done = calls_already_made(conversation)
            chunk = plan[done : done + self.calls_per_turn]
            if not chunk:  # the plan ran out (e.g. the env refused the answer): answer again
                chunk = [plan[-1]] if plan else [("answer", answer_arguments(task, self.frame))]
            texts.append(_render(chunk, self.call_format))
        return texts


class OraclePolicy(_PlannedPolicy):
    """Boxes every ground-truth object in reading order with its canonical label, then answers.

    Its reward is the env's maximum: every box matches its object, the count and items are the
    truth, no call is invalid, and the answer rides in the last turn of boxes.
    """

    name = "oracle"

    def plan(self, task: Task, episode_seed: int) -> list[Call]:
        calls: list[Call] = []
        for obj in reading_order(task.objects):
            size = task.images[obj.image].size
            calls.append(("draw_box", _box_args(obj.box, obj.image, obj.label, self.frame, size)))  # type: ignore[arg-type]
        calls.append(("answer", answer_arguments(task, self.frame)))
        return calls


class NoisyPolicy(_PlannedPolicy):
    """The oracle with mistakes at set rates, some of them corrected; seeded.

    Args:
        miss_rate: probability of skipping an object.
        duplicate_rate: probability of boxing an object twice.
        wrong_label_rate: probability of a wrong label on a box.
        jitter: standard deviation of each box edge's shift, as a fraction of the box's size.
        correction_rate: probability that a duplicate is removed (`remove_box`) or a wrong label
            fixed (`label`) right after it is made.
        count_error_rate: for tasks without boxes, probability of answering a count off by one
            (or a flipped value, or a shifted point).
        calls_per_turn, frame, seed: as for every scripted policy.

    The answer is consistent with the boxes left alive: its count and items are theirs.
    """

    name = "noisy"

    def __init__(
        self,
        *,
        miss_rate: float = 0.1,
        duplicate_rate: float = 0.1,
        wrong_label_rate: float = 0.15,
        jitter: float = 0.08,
        correction_rate: float = 0.5,
        count_error_rate: float = 0.3,
        calls_per_turn: int = 1,
        frame: str = "qwen",
        seed: int = 0,
        call_format: str = "json",
    ) -> None:
        super().__init__(
            calls_per_turn=calls_per_turn, frame=frame, seed=seed, call_format=call_format
        )
        for name, rate in (
            ("miss_rate", miss_rate), ("duplicate_rate", duplicate_rate),
            ("wrong_label_rate", wrong_label_rate), ("correction_rate", correction_rate),
            ("count_error_rate", count_error_rate),
        ):  # fmt: skip
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.miss_rate = miss_rate
        self.duplicate_rate = duplicate_rate
        self.wrong_label_rate = wrong_label_rate
        self.jitter = jitter
        self.correction_rate = correction_rate
        self.count_error_rate = count_error_rate

    def _jittered(
        self, rng: np.random.Generator, box: tuple[float, ...], size: tuple[int, int]
    ) -> tuple[float, ...]:
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        dx = rng.normal(0.0, self.jitter * w, size=2)
        dy = rng.normal(0.0, self.jitter * h, size=2)
        nx1, nx2 = sorted((x1 + dx[0], x2 + dx[1]))
        ny1, ny2 = sorted((y1 + dy[0], y2 + dy[1]))
        nx1, ny1 = max(0.0, nx1), max(0.0, ny1)
        nx2, ny2 = (
            min(float(size[0]), max(nx2, nx1 + 2.0)),
            min(float(size[1]), max(ny2, ny1 + 2.0)),
        )
        return (nx1, ny1, nx2, ny2)

    def plan(self, task: Task, episode_seed: int) -> list[Call]:
        rng = np.random.default_rng([self.seed, episode_seed, 0x5EED])
        labels = sorted({o.label for o in task.objects})
        calls: list[Call] = []
        alive: dict[int, str] = {}  # box id -> label, as the env numbers them (1, 2, ...)
        next_id = 1

        def draw(obj: GroundTruthObject, label: str) -> int:
            nonlocal next_id
            size = task.images[obj.image].size
            box = self._jittered(rng, obj.box, size)  # type: ignore[arg-type]
            calls.append(("draw_box", _box_args(box, obj.image, label, self.frame, size)))
            alive[next_id] = label
            next_id += 1
            return next_id - 1

        for obj in reading_order(task.objects):
            if rng.random() < self.miss_rate:
                continue
            wrong = rng.random() < self.wrong_label_rate
            label = self._wrong_label(rng, obj.label, labels) if wrong else obj.label
            box_id = draw(obj, label)
            if wrong and rng.random() < self.correction_rate:
                calls.append(("label", {"box_id": box_id, "label": obj.label}))
                alive[box_id] = obj.label
            if rng.random() < self.duplicate_rate:
                dup = draw(obj, obj.label)
                if rng.random() < self.correction_rate:
                    calls.append(("remove_box", {"box_id": dup}))
                    del alive[dup]
        calls.append(("answer", self._answer(rng, task, list(alive.values()))))
        return calls

    @staticmethod
    def _wrong_label(rng: np.random.Generator, truth: str, labels: list[str]) -> str:
        others = [lab for lab in labels if lab != truth]
        if others:
            return str(others[int(rng.integers(len(others)))])
        return f"not {truth}"

    def _answer(
        self, rng: np.random.Generator, task: Task, alive_labels: list[str]
    ) -> dict[str, Any]:
        if task.kind == "enumerate" and task.has_boxes:
            return answer_arguments(task, self.frame, count=len(alive_labels), items=alive_labels)
        truth = answer_arguments(task, self.frame)
        if rng.random() >= self.count_error_rate:
            return truth
        if "count" in truth:
            truth["count"] = max(0, truth["count"] + int(rng.choice([-1, 1])))
            if "items" in truth and truth["items"] and truth["count"] < len(truth["items"]):
                truth["items"] = truth["items"][: truth["count"]]
        elif "value" in truth:
            truth["value"] = not truth["value"]
        else:
            extent = 999 if self.frame == "qwen" else (1.0 if self.frame == "unit" else None)
            size = task.images[0].size
            shift = 0.2 * (extent if extent is not None else size[0])
            x = min(extent or size[0], max(0, truth["x"] + shift * float(rng.choice([-1, 1]))))
            truth["x"] = round(x) if self.frame == "qwen" else x
        return truth


_RANDOM_TEXT = [
    "I think there are some objects here.",
    "Let me look closely at the image.",
    "The answer is 7.",
    "<tool_call>",
    "</tool_call>",
    '{"name": "draw_box"}',
    "ünïcødé ✓ 数え上げ 🙂",
    "<|box_start|>(10,20),(30,40)<|box_end|>",
    "<|object_ref_start|>screen<|object_ref_end|><|box_start|>(100,200),(50<|box_end|>",
    "\x00\x1b[31m control chars \t\r\n",
]


class RandomPolicy:
    """Random and malformed calls, for robustness: the env must turn all of them into messages.

    Each turn writes 1-4 pieces drawn from: a valid random `draw_box`/`crop`/`label`/`remove_box`,
    out-of-range / NaN / inverted / string coordinates, unknown tools, missing or extra arguments,
    broken JSON, unclosed tags, native grounding tokens (well and badly formed) and free text. With
    probability `answer_rate` a turn ends with a random (often wrong) answer. Seeded.
    """

    name = "random"

    def __init__(self, *, answer_rate: float = 0.2, frame: str = "qwen", seed: int = 0) -> None:
        if not 0.0 <= answer_rate <= 1.0:
            raise ValueError(f"answer_rate must be in [0, 1], got {answer_rate}")
        self.answer_rate = answer_rate
        self.frame = check_frame(frame)
        self.seed = int(seed)

    def act(
        self,
        conversations: list[Conversation],
        tools: list[dict[str, Any]],
        tasks: list[Any] | None = None,
    ) -> list[str]:
        """One random assistant text per conversation."""
        texts = []
        for i, conversation in enumerate(conversations):
            if tasks is not None and i < len(tasks):
                task, episode_seed = unpack_task(tasks[i])
                size = task.images[0].size
            else:
                episode_seed, size = zlib.crc32(json.dumps(i).encode()), (448, 448)
            rng = np.random.default_rng([self.seed, episode_seed, turns_taken(conversation)])
            pieces = [self._piece(rng, size) for _ in range(int(rng.integers(1, 5)))]
            if rng.random() < self.answer_rate:
                pieces.append(self._answer(rng))
            texts.append("\n".join(pieces))
        return texts

    def _coord(self, rng: np.random.Generator, size: tuple[int, int]) -> float:
        extent = {"qwen": 1000.0, "unit": 1.0, "pixels": float(max(size))}[self.frame]
        value = float(rng.uniform(0, extent))
        return round(value) if self.frame != "unit" else round(value, 3)

    def _piece(self, rng: np.random.Generator, size: tuple[int, int]) -> str:
        kind = int(rng.integers(12))
        c = [self._coord(rng, size) for _ in range(4)]
        box = {
            "x1": min(c[0], c[2]),
            "y1": min(c[1], c[3]),
            "x2": max(c[0], c[2]),
            "y2": max(c[1], c[3]),
        }
        if kind == 0:
            return format_tool_call(
                "draw_box",
                {**box, "label": str(rng.choice(["screen", "red triangle", "dot", "cat"]))},
            )
        if kind == 1:
            return format_tool_call("crop", box)
        if kind == 2:
            return format_tool_call(
                str(rng.choice(["label", "remove_box"])),
                {"box_id": int(rng.integers(-2, 12)), "label": "x"},
            )
        if kind == 3:  # out of range, negative, inverted
            return format_tool_call(
                "draw_box", {"x1": 5000, "y1": -3, "x2": c[0], "y2": c[1] * -1, "label": "far"}
            )
        if kind == 4:  # NaN and infinity, as Python's json writes them
            return '<tool_call>{"name": "draw_box", "arguments": {"x1": NaN, "y1": Infinity, "x2": 1, "y2": 2, "label": "nan"}}</tool_call>'
        if kind == 5:  # strings and nulls as coordinates, wrong types
            return format_tool_call(
                "crop", {"x1": "left", "y1": None, "x2": [1, 2], "y2": {"a": 1}}
            )
        if kind == 6:
            return format_tool_call(str(rng.choice(["zoom", "click", "", "DRAW_BOX"])), {"x": 1})
        if kind == 7:  # missing and extra arguments
            return format_tool_call("draw_box", {"x1": 1, "colour": "red"})
        if kind == 8:  # broken JSON
            return '<tool_call>{"name": "draw_box", "arguments": {"x1": 1, "y1": </tool_call>'
        if kind == 9:  # unclosed tag
            return '<tool_call>{"name": "crop", "arguments": {"x1": 1, "y1": 2, "x2": 3, "y2": 4}}'
        if kind == 10:  # native grounding
            x1, y1, x2, y2 = (int(v) for v in (box["x1"], box["y1"], box["x2"], box["y2"]))
            return f"<|object_ref_start|>thing<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
        return str(rng.choice(_RANDOM_TEXT))

    def _answer(self, rng: np.random.Generator) -> str:
        choice = int(rng.integers(4))
        if choice == 0:
            return format_tool_call(
                "answer",
                {"count": int(rng.integers(0, 15)), "items": ["screen"] * int(rng.integers(0, 4))},
            )
        if choice == 1:
            return format_tool_call("answer", {"count": int(rng.integers(0, 15))})
        if choice == 2:
            return format_tool_call(
                "answer", {"value": bool(rng.integers(2)), "x": int(rng.integers(0, 1000)), "y": 5}
            )
        return format_tool_call("answer", {"count": "many", "items": "all of them"})
