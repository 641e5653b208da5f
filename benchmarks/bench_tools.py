"""Time a draw_box and a crop step on a 1024x1024 image (target: median < 2 ms each).

Measures the tool alone (`Toolbox.draw_box` / `crop`: validation, rendering, the returned image)
and a whole `BoxGymEnv.step` with one such call (parsing, the tool, messages and info).

    python benchmarks/bench_tools.py [--repeats 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from boxgym.data.task import GroundTruthObject, Task
from boxgym.env import BoxGymEnv
from boxgym.env.parsing import format_tool_call
from boxgym.tools.toolbox import Toolbox


def make_task(size: int = 1024, n: int = 20) -> Task:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))
    objects = []
    for i in range(n):
        x, y = (float(v) for v in rng.uniform(0, size - 80, size=2))
        objects.append(GroundTruthObject(box=(x, y, x + 60, y + 60), label=f"object {i}"))
    return Task(
        id="bench",
        images=[image],
        question="Count.",
        kind="enumerate",
        objects=objects,
        answer={"count": n, "items": [o.label for o in objects]},
    )


def median_ms(fn, repeats: int, reset=None, reset_every: int = 50) -> float:
    times = []
    for i in range(repeats):
        if reset is not None and i % reset_every == 0:
            reset()
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    task = make_task()
    rng = np.random.default_rng(1)
    corners = [(int(x), int(y)) for x, y in rng.integers(0, 850, size=(args.repeats, 2))]

    results = {}
    for mode in ("image", "crop", "both", "text"):
        box = Toolbox(task.images, kind="enumerate", draw_box_returns=mode, max_boxes=1000)
        results[f"Toolbox.draw_box (returns {mode})"] = median_ms(
            lambda i, box=box: box.draw_box(
                corners[i][0], corners[i][1], corners[i][0] + 80, corners[i][1] + 60, "object"
            ),
            args.repeats,
            reset=lambda box=box: box._start(task.images, kind="enumerate"),
        )
    box = Toolbox(task.images, kind="enumerate")
    for i in range(10):
        box.draw_box(50 * i, 50 * i, 50 * i + 80, 50 * i + 80, f"object {i}")
    results["Toolbox.crop (10 boxes shown)"] = median_ms(
        lambda i: box.crop(corners[i][0], corners[i][1], corners[i][0] + 150, corners[i][1] + 120),
        args.repeats,
    )

    env = BoxGymEnv(tasks=[task], max_turns=10_000, max_calls=10_000, max_boxes=10_000)
    env.reset(seed=0)
    draw_texts = [
        format_tool_call(
            "draw_box", {"x1": x, "y1": y, "x2": x + 80, "y2": y + 60, "label": "object"}
        )
        for x, y in corners
    ]
    crop_texts = [
        format_tool_call("crop", {"x1": x, "y1": y, "x2": x + 150, "y2": y + 120})
        for x, y in corners
    ]
    results["BoxGymEnv.step(draw_box)"] = median_ms(
        lambda i: env.step(draw_texts[i]), args.repeats, reset=lambda: env.reset(seed=0)
    )
    results["BoxGymEnv.step(crop)"] = median_ms(
        lambda i: env.step(crop_texts[i]), args.repeats, reset=lambda: env.reset(seed=0)
    )
    results["BoxGymEnv.reset (1024x1024 -> 896x896)"] = median_ms(lambda i: env.reset(seed=i), 50)

    print(f"1024x1024 image, {args.repeats} repeats, medians:")
    for name, value in results.items():
        flag = (
            "" if "reset" in name else ("  ok (< 2 ms)" if value < 2 else "  SLOW (target < 2 ms)")
        )
        print(f"  {name:45s} {value:7.3f} ms{flag}")


if __name__ == "__main__":
    main()
