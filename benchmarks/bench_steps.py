"""Env step cost against the number of boxes drawn, and scene cost per pixel against image size.

Targets:
- `draw_box`, `label` and `crop` step time with 50 boxes drawn within 1.3x of the time with 1;
- scene generation cost per pixel at 1344 px within 1.5x of that at 1008 px, for every preset.

    OMP_NUM_THREADS=1 python benchmarks/bench_steps.py [--repeats 200] [--scenes 8]

Steps: a `boxgym/Screens-v0` env (medium, an 896x896 scene and working image, draw_box returns the marked
image) holds k boxes on a grid; each timed `env.step` makes one call: `draw_box` of a new box
(removed again untimed), `label` of a box in the middle, or `crop` of a region holding one box.
The figure is the median CPU time of `--repeats` steps. Scenes: `--scenes` consecutive seeds per
family, difficulty and side, CPU time per megapixel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import gymnasium as gym

import boxgym  # noqa: F401  (registers the envs)
from boxgym.data.scenes import LEVELS, SCENE_FAMILIES, make_scene_task


def call(name: str, **arguments: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def grid_box(i: int) -> dict[str, int]:
    """Box i of an 8x8 grid over the qwen frame (0-1000), leaving the bottom-right cell free."""
    row, col = divmod(i, 8)
    return {"x1": col * 120 + 10, "y1": row * 110 + 10, "x2": col * 120 + 100, "y2": row * 110 + 90}


def step_times(boxes: int, repeats: int) -> dict[str, float]:
    """Median CPU ms of one draw_box, label and crop step with `boxes` boxes live."""
    env = gym.make(
        "boxgym/Screens-v0",
        difficulty="medium",
        max_turns=100_000,
        max_calls=100_000,
        scene_kwargs={"image_size": 896},
    ).unwrapped
    env.reset(seed=0)
    for i in range(boxes):
        env.step(call("draw_box", label=f"object {i}", **grid_box(i)))
    middle = boxes // 2 + 1
    free = {"x1": 965, "y1": 935, "x2": 995, "y2": 995}
    times: dict[str, list[float]] = {"draw_box": [], "label": [], "crop": []}
    for r in range(repeats):
        t0 = time.process_time()
        env.step(call("draw_box", label="new", **free))
        times["draw_box"].append(time.process_time() - t0)
        new_id = env.toolbox.boxes[-1].box_id
        env.step(call("remove_box", box_id=new_id))
        t0 = time.process_time()
        env.step(call("label", box_id=middle, label=f"renamed {r % 7}"))
        times["label"].append(time.process_time() - t0)
        b = grid_box(middle - 1)
        t0 = time.process_time()
        env.step(call("crop", x1=b["x1"] - 5, y1=b["y1"] - 5, x2=b["x2"] + 5, y2=b["y2"] + 5))
        times["crop"].append(time.process_time() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def scene_ms_per_megapixel(family: str, difficulty: str, side: int, n: int) -> float:
    make_scene_task(family, 0, difficulty, image_size=side)  # warm-up: fonts, noise banks
    t0 = time.process_time()
    for seed in range(1, n + 1):
        make_scene_task(family, seed, difficulty, image_size=side)
    return (time.process_time() - t0) / n * 1000 / (side * side / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--only", choices=("steps", "scenes"))
    args = parser.parse_args(argv)
    worst = 0.0
    if args.only != "scenes":
        one, fifty = step_times(1, args.repeats), step_times(50, args.repeats)
        print(f"env step, median CPU ms of {args.repeats}: 1 box vs 50 boxes live")
        for name in one:
            ratio = fifty[name] / one[name]
            worst = max(worst, ratio / 1.3)
            print(f"  {name:<9} {one[name]:7.3f} {fifty[name]:7.3f}  ratio {ratio:.2f} (<= 1.3)")
    if args.only != "steps":
        print(f"scene generation, CPU ms per megapixel, {args.scenes} scenes per cell")
        for family in sorted(SCENE_FAMILIES):
            for difficulty in LEVELS:
                small = scene_ms_per_megapixel(family, difficulty, 1008, args.scenes)
                large = scene_ms_per_megapixel(family, difficulty, 1344, args.scenes)
                ratio = large / small
                worst = max(worst, ratio / 1.5)
                print(
                    f"  {family:<8} {difficulty:<7} 1008 px {small:6.2f}  1344 px {large:6.2f}"
                    f"  ratio {ratio:.2f} (<= 1.5)"
                )
    print("PASS" if worst <= 1.0 else "FAIL")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
