"""Hand-made tasks and a minimal oracle for the env tests (independent of the scene generators).

A uniquely named module (not conftest) so that `from handmade_tasks import ...` cannot collide
with another directory's conftest.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from boxgym.data.task import GroundTruthObject, Task
from boxgym.env.parsing import format_tool_call
from boxgym.tools.frames import pixels_to_frame

COLOURS = {
    "red": (214, 40, 40),
    "blue": (40, 80, 210),
    "green": (50, 160, 60),
    "orange": (245, 130, 30),
}


def make_task(
    n: int = 5, size: tuple[int, int] = (640, 480), kind: str = "enumerate", seed: int = 0
) -> Task:
    """`n` coloured squares in a row-major grid on a light background."""
    image = Image.new("RGB", size, (235, 235, 230))
    draw = ImageDraw.Draw(image)
    objects = []
    cols = max(1, math.ceil(math.sqrt(n)))
    cell_w, cell_h = size[0] / cols, size[1] / max(1, math.ceil(n / cols))
    names = list(COLOURS)
    for i in range(n):
        r, c = divmod(i, cols)
        x1, y1 = c * cell_w + cell_w * 0.2, r * cell_h + cell_h * 0.2
        box = (round(x1), round(y1), round(x1 + cell_w * 0.5), round(y1 + cell_h * 0.5))
        colour = names[(i + seed) % len(names)]
        draw.rectangle(box, fill=COLOURS[colour])
        objects.append(
            GroundTruthObject(box=tuple(float(v) for v in box), label=f"{colour} square")
        )
    answer = (
        {"count": n, "items": [o.label for o in objects]} if kind == "enumerate" else {"count": n}
    )
    return Task(
        id=f"handmade-{kind}-{n}-{seed}",
        images=[image],
        question=f"How many squares are there? {'List them.' if kind == 'enumerate' else ''}".strip(),
        kind=kind,
        objects=objects if kind == "enumerate" else [],
        answer=answer,
        source="handmade",
    )


def oracle_turns(task: Task, frame: str = "qwen", per_turn: int = 1) -> list[str]:
    """One draw_box per object in reading order, then answer, `per_turn` calls per reply."""
    size = task.images[0].size
    calls = []
    for obj in sorted(task.objects, key=lambda o: (o.box[1], o.box[0])):
        x1, y1, x2, y2 = pixels_to_frame(obj.box, frame, size)
        calls.append(("draw_box", {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": obj.label}))
    if task.kind == "enumerate":
        calls.append(("answer", {"count": task.count, "items": [o.label for o in task.objects]}))
    else:
        calls.append(("answer", {"count": task.count}))
    texts = []
    for start in range(0, len(calls), per_turn):
        texts.append("\n".join(format_tool_call(n, a) for n, a in calls[start : start + per_turn]))
    return texts
