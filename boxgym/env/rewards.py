"""Episode rewards: a sum of named, weighted components, all reported.

Components (each switched on by listing it in `RewardConfig.components`):

- ``count_exact``: weight x 1 when the answered count equals the true count.
- ``enumeration_f1``: weight x F1 of the answered items against the true labels, as multisets,
  after `normalize_label` (so synonyms, case and plurals do not matter).
- ``grounding_f1``: weight x F1 of the live boxes against the objects, matched one-to-one
  (Hungarian) where IoU >= `iou_threshold`, the image agrees and the normalised labels agree.
  Extra boxes lower the precision, so drawing more boxes never raises it.
- ``answer_correct``: weight x 1 for a right verify value or a point inside the object.
- ``format``: weight x 1 when the episode ended with a valid answer and every turn held a call.
- ``call_penalty``, ``turn_penalty``, ``invalid_call_penalty``: minus a fixed size per call,
  turn or invalid call beyond a free budget, each capped. The free budget covers the oracle:
  one draw_box per object plus the answer, `free_calls_per_turn` calls a turn.
- ``tool_bonus``: weight x 1 when a tool really returned an image AND the answer is right.

Which components apply depends on the task kind: count-only tasks (no boxes) score the count
and the format; verify and point tasks score `answer_correct`. `RewardConfig.max_total(task)`
is the best achievable total.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from boxgym.config import PositiveInt, Weight, WholeNumber, check_fields, unknown_keys
from boxgym.data.task import Task

ALL_COMPONENTS: tuple[str, ...] = (
    "count_exact",
    "enumeration_f1",
    "grounding_f1",
    "answer_correct",
    "format",
    "call_penalty",
    "turn_penalty",
    "invalid_call_penalty",
    "tool_bonus",
)
DEFAULT_COMPONENTS: tuple[str, ...] = tuple(c for c in ALL_COMPONENTS if c != "tool_bonus")
PENALTIES: tuple[str, ...] = ("call_penalty", "turn_penalty", "invalid_call_penalty")


@dataclass
class RewardConfig:
    """Weights, switches and penalty sizes of the episode reward."""

    components: tuple[str, ...] = field(
        default=DEFAULT_COMPONENTS,
        metadata={"help": f"components switched on, from {ALL_COMPONENTS}"},
    )
    count_exact: Weight = field(default=1.0, metadata={"help": "weight of the exact count"})
    enumeration_f1: Weight = field(
        default=1.0, metadata={"help": "weight of the label-multiset F1"}
    )
    grounding_f1: Weight = field(default=1.0, metadata={"help": "weight of the box-matching F1"})
    answer_correct: Weight = field(
        default=1.0, metadata={"help": "weight of a right verify/point answer"}
    )
    format: Weight = field(default=0.2, metadata={"help": "weight of a well-formed episode"})
    tool_bonus: Weight = field(
        default=0.1, metadata={"help": "bonus for a tool image AND a right answer"}
    )
    call_penalty: Weight = field(default=0.02, metadata={"help": "per call beyond the free budget"})
    call_penalty_cap: Weight = field(default=0.2, metadata={"help": "largest total call penalty"})
    free_extra_calls: WholeNumber = field(
        default=2, metadata={"help": "calls allowed beyond one per object + answer"}
    )
    turn_penalty: Weight = field(default=0.05, metadata={"help": "per turn beyond the free budget"})
    turn_penalty_cap: Weight = field(default=0.2, metadata={"help": "largest total turn penalty"})
    free_calls_per_turn: PositiveInt = field(
        default=1, metadata={"help": "calls per turn the free turn budget assumes"}
    )
    free_extra_turns: WholeNumber = field(
        default=1, metadata={"help": "turns allowed beyond the oracle's"}
    )
    invalid_call_penalty: Weight = field(
        default=0.05, metadata={"help": "per invalid call or call-less turn"}
    )
    invalid_call_penalty_cap: Weight = field(
        default=0.25, metadata={"help": "largest invalid-call penalty"}
    )
    iou_threshold: Weight = field(
        default=0.5, metadata={"help": "IoU for a box to match an object"}
    )
    point_tolerance: Weight = field(
        default=0.05,
        metadata={"help": "a point within this fraction of the image diagonal is right"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.components, str) or not isinstance(self.components, (list, tuple)):
            raise ValueError(
                "RewardConfig.components must be a list of component names from "
                f"{ALL_COMPONENTS}, got {self.components!r}"
            )
        self.components = tuple(self.components)
        unknown = [c for c in self.components if c not in ALL_COMPONENTS]
        if unknown:
            raise ValueError(f"unknown reward component(s) {unknown}; choose from {ALL_COMPONENTS}")
        repeated = sorted(c for c, n in Counter(self.components).items() if n > 1)
        if repeated:
            raise ValueError(
                f"reward component(s) {repeated} listed more than once in "
                "RewardConfig.components; list each once and set its weight to scale it"
            )
        check_fields(self)
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(
                f"RewardConfig.iou_threshold must be in (0, 1], got {self.iou_threshold}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RewardConfig:
        data = dict(data or {})
        problem = unknown_keys(cls, data)
        if problem:
            raise ValueError(problem)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["components"] = list(self.components)
        return out

    def applicable(self, task: Task) -> tuple[str, ...]:
        """The enabled components that can be scored on `task`."""
        scorable = {"format", *PENALTIES, "tool_bonus"}
        if task.kind in ("enumerate", "count") and task.count is not None:
            scorable.add("count_exact")
        if task.kind == "enumerate":
            scorable.add("enumeration_f1")
        if task.kind in ("enumerate", "count") and task.has_boxes:
            scorable.add("grounding_f1")
        if task.kind in ("verify", "point"):
            scorable.add("answer_correct")
        return tuple(c for c in self.components if c in scorable)

    def max_total(self, task: Task) -> float:
        """The best total reward achievable on `task` (penalties at zero)."""
        return float(sum(getattr(self, c) for c in self.applicable(task) if c not in PENALTIES))

    def free_calls(self, task: Task) -> int:
        """Calls that cost nothing: one per object (or per counted thing), the answer, and slack."""
        per_object = (
            len(task.objects) if task.objects else (task.count or 0) if task.kind == "count" else 0
        )
        return per_object + 1 + self.free_extra_calls

    def free_turns(self, task: Task) -> int:
        per_object = (
            len(task.objects) if task.objects else (task.count or 0) if task.kind == "count" else 0
        )
        return math.ceil((per_object + 1) / self.free_calls_per_turn) + self.free_extra_turns


@dataclass
class EpisodeOutcome:
    """What the reward looks at: the live boxes, the answer and the counters of one episode.

    Attributes:
        boxes: (label, image index, pixel box in the original image) of each live box.
        answer: the final answer in `Task.answer` form, or None when none was given.
        num_calls: tool calls run (valid or not), num_invalid_calls: those that failed (incl.
            malformed ones), num_turns: assistant turns, empty_turns: turns with no call at all.
        tool_images: images the tools returned. truncated: ended by a limit, not an answer.
    """

    boxes: list[tuple[str, int, tuple[float, float, float, float]]] = field(default_factory=list)
    answer: dict[str, Any] | None = None
    num_calls: int = 0
    num_invalid_calls: int = 0
    num_turns: int = 0
    empty_turns: int = 0
    tool_images: int = 0
    truncated: bool = False


@dataclass
class RewardComponents:
    """Weighted component values (penalties negative), their sum, and the raw scores behind them."""

    values: dict[str, float]
    scores: dict[str, float]  # unweighted: F1s, precisions, recalls, correctness flags

    @property
    def total(self) -> float:
        return float(sum(self.values.values()))

    def to_dict(self) -> dict[str, float]:
        return {**self.values, "total": self.total}


def _normalizer():
    from boxgym.data.vocabulary import normalize_label

    return normalize_label


def _f1(matched: int, predicted: int, truth: int) -> tuple[float, float, float]:
    """(precision, recall, F1); both empty counts as perfect."""
    if predicted == 0 and truth == 0:
        return 1.0, 1.0, 1.0
    precision = matched / predicted if predicted else 0.0
    recall = matched / truth if truth else 0.0
    f1 = 2 * matched / (predicted + truth)
    return precision, recall, f1


def enumeration_scores(items: list[str], truth: list[str]) -> tuple[float, float, float]:
    """(precision, recall, F1) of answered labels against true labels, as normalised multisets."""
    normalize = _normalizer()
    predicted = Counter(normalize(i) for i in items)
    expected = Counter(normalize(t) for t in truth)
    matched = sum((predicted & expected).values())
    return _f1(matched, sum(predicted.values()), sum(expected.values()))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), as an (N, M) array."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def grounding_scores(
    boxes: list[tuple[str, int, tuple[float, float, float, float]]],
    task: Task,
    iou_threshold: float = 0.5,
) -> tuple[float, float, float]:
    """(precision, recall, F1) of drawn boxes matched one-to-one to the task's boxed objects,
    labels agreeing (a count task asks no labels: its boxes match whatever they are called)."""
    objects = [o for o in task.objects if o.box is not None]
    if not boxes or not objects:
        return _f1(0, len(boxes), len(objects))
    normalize = _normalizer()
    pred = np.asarray([b[2] for b in boxes], dtype=float)
    gold = np.asarray([o.box for o in objects], dtype=float)
    iou = iou_matrix(pred, gold)
    pred_labels = np.asarray([normalize(b[0]) for b in boxes], dtype=object)
    gold_labels = np.asarray([normalize(o.label) for o in objects], dtype=object)
    same_label = pred_labels[:, None] == gold_labels[None, :]
    if task.kind == "count":
        same_label = np.ones_like(same_label, dtype=bool)
    same_image = (
        np.asarray([b[1] for b in boxes])[:, None]
        == np.asarray([o.image for o in objects])[None, :]
    )
    valid = (iou >= iou_threshold) & same_label & same_image
    if not valid.any():
        return _f1(0, len(boxes), len(objects))
    if (valid.sum(axis=0) <= 1).all() and (valid.sum(axis=1) <= 1).all():
        # Each box has at most one candidate object and vice versa: the candidates are the
        # maximum matching (no assignment problem to solve, no scipy import).
        return _f1(int(valid.sum()), len(boxes), len(objects))
    from scipy.optimize import linear_sum_assignment

    # Maximise the number of valid matches first, then their IoU.
    gain = np.where(valid, 1.0 + iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    matched = int(valid[rows, cols].sum())
    return _f1(matched, len(boxes), len(objects))


def point_correct(point: list[float] | tuple[float, float], task: Task, tolerance: float) -> bool:
    """Whether `point` (pixels of image 0) lies in an object's box or near the true point."""
    px, py = float(point[0]), float(point[1])
    for obj in task.objects:
        if obj.image == 0 and obj.box is not None:
            x1, y1, x2, y2 = obj.box
            if x1 <= px <= x2 and y1 <= py <= y2:
                return True
    w, h = task.images[0].size
    radius = tolerance * math.hypot(w, h)
    targets = [tuple(task.answer["point"])] if "point" in task.answer else []
    targets += [o.point for o in task.objects if o.point is not None and o.image == 0]
    return any(math.hypot(px - tx, py - ty) <= radius for tx, ty in targets)


def answer_is_correct(task: Task, answer: dict[str, Any] | None, config: RewardConfig) -> bool:
    """Whether the final answer is fully right for the task's kind."""
    if answer is None:
        return False
    if task.kind == "enumerate":
        truth = task.answer.get("items", [o.label for o in task.objects])
        return (
            answer.get("count") == task.count
            and enumeration_scores(answer.get("items", []), truth)[2] == 1.0
        )
    if task.kind == "count":
        return answer.get("count") == task.count
    if task.kind == "verify":
        return "value" in answer and answer["value"] == bool(task.answer.get("value"))
    return "point" in answer and point_correct(answer["point"], task, config.point_tolerance)


def score_episode(
    task: Task, outcome: EpisodeOutcome, config: RewardConfig | None = None
) -> RewardComponents:
    """Score a finished (or truncated) episode into weighted components."""
    config = config or RewardConfig()
    answer = outcome.answer
    values: dict[str, float] = {}
    scores: dict[str, float] = {}
    correct = answer_is_correct(task, answer, config)
    scores["answer_correct"] = float(correct)
    if task.count is not None:
        given = answer.get("count") if answer else None
        scores["count_correct"] = float(given == task.count)
        scores["count_abs_error"] = (
            float(abs(given - task.count)) if isinstance(given, int) else float("nan")
        )
    if task.kind == "enumerate":
        truth = task.answer.get("items", [o.label for o in task.objects])
        p, r, f = enumeration_scores((answer or {}).get("items", []), truth)
        scores.update(enumeration_precision=p, enumeration_recall=r, enumeration_f1=f)
    if task.has_boxes:
        p, r, f = grounding_scores(outcome.boxes, task, config.iou_threshold)
        scores.update(grounding_precision=p, grounding_recall=r, grounding_f1=f)
    formatted = answer is not None and outcome.empty_turns == 0
    scores["format"] = float(formatted)
    extra_calls = max(0, outcome.num_calls - config.free_calls(task))
    extra_turns = max(0, outcome.num_turns - config.free_turns(task))
    invalid = outcome.num_invalid_calls + outcome.empty_turns
    for name in config.applicable(task):
        if name == "count_exact":
            values[name] = config.count_exact * scores.get("count_correct", 0.0)
        elif name == "enumeration_f1":
            values[name] = config.enumeration_f1 * scores.get("enumeration_f1", 0.0)
        elif name == "grounding_f1":
            values[name] = config.grounding_f1 * scores.get("grounding_f1", 0.0)
        elif name == "answer_correct":
            values[name] = config.answer_correct * float(correct)
        elif name == "format":
            values[name] = config.format * float(formatted)
        elif name == "call_penalty":
            values[name] = -min(config.call_penalty_cap, config.call_penalty * extra_calls)
        elif name == "turn_penalty":
            values[name] = -min(config.turn_penalty_cap, config.turn_penalty * extra_turns)
        elif name == "invalid_call_penalty":
            values[name] = -min(
                config.invalid_call_penalty_cap, config.invalid_call_penalty * invalid
            )
        elif name == "tool_bonus":
            values[name] = config.tool_bonus * float(correct and outcome.tool_images > 0)
    values = {k: (0.0 if v == 0 else float(v)) for k, v in values.items()}
    return RewardComponents(values=values, scores=scores)
