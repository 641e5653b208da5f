"""The `Task`: one episode's problem, whatever produced it (a procedural scene or a dataset row).

A task holds its images, the question shown to the model, and the exact ground truth the reward
scores against. Count-only datasets carry an `answer` but no `objects`; the reward then scores
only what it can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

TaskKind = Literal["enumerate", "count", "verify", "point"]
TASK_KINDS: tuple[str, ...] = ("enumerate", "count", "verify", "point")

# A pixel box (x1, y1, x2, y2) in the coordinates of the task's original image, x2 > x1, y2 > y1.
PixelBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class GroundTruthObject:
    """One object the model should find.

    Attributes:
        box: pixel box (x1, y1, x2, y2) in the original image, or None when only a point is known.
        label: canonical label from the vocabulary (already normalised), e.g. "red triangle".
        image: index of the image the object is in (0, or 1 for two-image tasks).
        point: pixel point (x, y) for datasets that give points instead of boxes (PixMo-Count).
        attributes: anything else known (colour, shape, what a screen shows, "off", ...).
    """

    box: PixelBox | None
    label: str
    image: int = 0
    point: tuple[float, float] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def center(self) -> tuple[float, float]:
        """The object's point, or the centre of its box."""
        if self.point is not None:
            return self.point
        if self.box is None:
            raise ValueError("object has neither a box nor a point")
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "box": list(self.box) if self.box is not None else None,
            "label": self.label,
            "image": self.image,
            "point": list(self.point) if self.point is not None else None,
            "attributes": self.attributes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroundTruthObject:
        box = data.get("box")
        point = data.get("point")
        return cls(
            box=tuple(box) if box is not None else None,  # type: ignore[arg-type]
            label=data["label"],
            image=int(data.get("image", 0)),
            point=tuple(point) if point is not None else None,  # type: ignore[arg-type]
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass
class Task:
    """One episode's problem.

    Attributes:
        id: stable identifier, unique within its source (e.g. "screens-easy-000042").
        images: one or two RGB PIL images, original size.
        question: the user's question, shown with the images.
        kind: "enumerate" (count and list), "count", "verify" (true/false) or "point".
        objects: ground-truth objects (empty for count-only and verify tasks).
        answer: the expected final answer. By kind:
            enumerate: {"count": int, "items": [label, ...]}
            count:     {"count": int}
            verify:    {"value": bool}
            point:     {"point": [x, y]} in pixels of image 0
        source: where it came from ("screens", "shapes", "clutter", "nlvr2", ...).
        split: "train", "validation", "test" or "procedural".
        meta: generator parameters and seed, or the dataset uid and revision.
    """

    id: str
    images: list[Image.Image]
    question: str
    kind: TaskKind
    objects: list[GroundTruthObject] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    split: str = "procedural"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"Task.kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if not 1 <= len(self.images) <= 2:
            raise ValueError(f"a Task has 1 or 2 images, got {len(self.images)}")
        for obj in self.objects:
            if not 0 <= obj.image < len(self.images):
                raise ValueError(
                    f"object {obj.label!r} refers to image {obj.image}, task has {len(self.images)}"
                )

    @property
    def count(self) -> int | None:
        """The true count, where the task has one."""
        if "count" in self.answer:
            return int(self.answer["count"])
        if self.kind == "enumerate":
            return len(self.objects)
        return None

    @property
    def has_boxes(self) -> bool:
        """Whether every object has a box, so grounding can be scored with IoU."""
        return bool(self.objects) and all(o.box is not None for o in self.objects)

    def ground_truth(self) -> dict[str, Any]:
        """The JSON-able ground truth (no images), as stored in episodes and `info`."""
        return {
            "id": self.id,
            "kind": self.kind,
            "question": self.question,
            "answer": self.answer,
            "objects": [o.to_json() for o in self.objects],
            "image_sizes": [list(im.size) for im in self.images],
            "source": self.source,
            "split": self.split,
            "meta": self.meta,
        }


# Qwen2-VL's image processor refuses images whose long side is over 200 times the short side.
MAX_ASPECT_RATIO = 200


def unusable_reason(task: Task) -> str | None:
    """Why the environment could not run `task` (a short reason to count it by), or None.

    Loaders drop such rows up front and count them by this reason, instead of letting every
    episode of the task fail at reset.
    """
    from boxgym.tools.arguments import MAX_COUNT

    for image in task.images:
        width, height = image.size
        if width < 1 or height < 1:
            return "empty image"
        if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            return f"image aspect ratio over {MAX_ASPECT_RATIO}"
    count = task.answer.get("count")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int):
            return "count not an integer"
        if not 0 <= count <= MAX_COUNT:
            return f"count outside 0..{MAX_COUNT}"
    if not task.question.strip():
        return "empty question"
    return None
