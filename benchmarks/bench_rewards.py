"""Time the episode reward with 60 objects and 60 boxes (target: median < 1 ms).

python benchmarks/bench_rewards.py [--repeats 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from boxgym.data.task import GroundTruthObject, Task
from boxgym.env.rewards import EpisodeOutcome, RewardConfig, score_episode

LABELS = ["red circle", "blue square", "green triangle", "yellow star", "gray hexagon", "coin"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--objects", type=int, default=60)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.objects
    objects = []
    for i in range(n):
        x, y = (float(v) for v in rng.uniform(0, 960, size=2))
        objects.append(GroundTruthObject(box=(x, y, x + 40, y + 40), label=LABELS[i % len(LABELS)]))
    task = Task(
        id="bench",
        images=[Image.new("RGB", (1024, 1024))],
        question="Count.",
        kind="enumerate",
        objects=objects,
        answer={"count": n, "items": [o.label for o in objects]},
    )
    # 60 boxes: jittered copies of the objects, a few with wrong labels, in shuffled order.
    boxes = []
    for i in rng.permutation(n):
        x1, y1, x2, y2 = objects[i].box
        dx, dy = (float(v) for v in rng.normal(0, 4, size=2))
        label = objects[i].label if rng.random() > 0.1 else "purple moon"
        boxes.append((label, 0, (x1 + dx, y1 + dy, x2 + dx, y2 + dy)))
    outcome = EpisodeOutcome(
        boxes=boxes,
        answer={"count": n, "items": task.answer["items"][::-1]},
        num_calls=n + 1,
        num_turns=8,
        tool_images=n,
    )
    config = RewardConfig()
    score_episode(task, outcome, config)  # warm up (imports scipy once)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        components = score_episode(task, outcome, config)
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    verdict = "ok (< 1 ms)" if median < 1 else "SLOW (target < 1 ms)"
    print(
        f"reward, {n} objects x {len(boxes)} boxes, {args.repeats} repeats: median {median:.3f} ms, "
        f"p90 {sorted(times)[int(0.9 * len(times))]:.3f} ms  {verdict}"
    )
    print(f"  components: {components.to_dict()}")


if __name__ == "__main__":
    main()
