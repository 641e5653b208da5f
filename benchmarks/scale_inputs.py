"""The inputs the rollout scale benchmarks run on, made rather than rolled out: a folder of
synthetic photos, a big finished run from a small one's records, and a policy that replays the
oracle's text in the parent process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def photo_folder(folder: Path, n: int, size: tuple[int, int] = (640, 480)) -> None:
    """n synthetic JPEG photos (a gradient with 1-4 filled boxes) and their metadata.jsonl."""
    import random

    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    rng = random.Random(0)
    width, height = size
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    lines = []
    for i in range(n):
        low, high = np.array([rng.randrange(256) for _ in range(6)], np.float32).reshape(2, 3)
        pixels = np.broadcast_to(low + (high - low) * ramp, (height, width, 3)).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        boxes = []
        for _ in range(rng.randint(1, 4)):
            x1, y1 = rng.randrange(width - 80), rng.randrange(height - 80)
            box = [x1, y1, x1 + rng.randint(20, 79), y1 + rng.randint(20, 79)]
            draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
            boxes.append(box)
        name = f"photo-{i:05d}.jpg"
        image.save(folder / name, quality=90)
        row = {"file_name": name, "object": "boxes", "boxes": boxes, "count": len(boxes)}
        lines.append(json.dumps(row))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def scaled_run(source: Path, target: Path, n: int) -> None:
    """A finished run of n tasks made from the records of `source` (ids renamed to match)."""
    target.mkdir(parents=True)
    shutil.copytree(source / "images", target / "images")
    config = json.loads((source / "run.json").read_text())
    config["n_tasks"] = config["tasks"]["n"] = n
    (target / "run.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    scenes, seed = config["tasks"]["scenes"], config["seed"]
    difficulty = config["tasks"]["difficulty"]
    lines = [json.loads(line) for line in (source / "episodes.jsonl").read_text().splitlines()]
    with open(target / "episodes.jsonl", "w") as out:
        for i in range(n):
            record = lines[i % len(lines)]
            task_id = f"{scenes[i % len(scenes)]}-{difficulty}-s{seed * 1_000_000 + i}"
            record["key"] = {"task_id": task_id, "task_index": i, "sample": 0}
            record["task"]["id"] = task_id
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")


class ReplayPolicy:
    """The oracle's text, replayed by a policy in the parent; with `read_images` it also reads
    the pixels of every image it is shown, once, as a model's processor does."""

    name = "oracle"

    def __init__(self, read_images: bool = False) -> None:
        import weakref

        from boxgym.policies.scripted import OraclePolicy

        self.inner = OraclePolicy()
        self.read_images = read_images
        self.seen: dict[int, weakref.ref] = {}  # id -> the image (PIL images are unhashable)
        self._ref = weakref.ref

    def act(self, conversations, tools, tasks=None):
        for conversation in conversations if self.read_images else ():
            for message in conversation:
                for block in message["content"]:
                    if isinstance(block, dict) and block.get("type") == "image":
                        image = block["image"]
                        known = self.seen.get(id(image))
                        if known is None or known() is not image:
                            image.load()  # a deferred tool image makes its pixels here
                            self.seen[id(image)] = self._ref(image)
        return self.inner.act(conversations, tools, tasks)
