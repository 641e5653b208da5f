"""Tiny datasets in each hub dataset's real schema, for tests, demos and smoke runs offline.

`write_sample_dataset("nlvr2", out_dir, layout="parquet")` writes a few rows laid out as
`huggingface-cli download` leaves them (`data/<split>-00000-of-00001.parquet`); "save_to_disk"
writes what `DatasetDict.save_to_disk` writes, and "jsonl" writes `<split>.jsonl` with images as
PNG files referenced by relative path. The images are small PNGs with as many dots as the row's
count, at the row's points. With `bad_rows=True`, rows that every loader must skip are added
(corrupt image bytes, a missing image, an unparsable label or action, a URL-only image, ...);
`EXPECTED_SKIPS` says which reasons they produce.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SIZE = (56, 42)
_COLOURS = ["red", "blue", "green", "orange", "purple", "black"]

# name -> split -> reasons the bad rows of that split produce
EXPECTED_SKIPS: dict[str, Counter] = {
    "nlvr2": Counter({"corrupt image": 1, "missing image": 1, "unparsable label": 1}),
    "aguvis-stage-1": Counter({"corrupt image": 1, "unparsable action": 1, "no point action": 1}),
    "aguvis-stage-2": Counter({"corrupt image": 1, "unparsable action": 1, "no point action": 1}),
    "pixmo-count": Counter(
        {"image not available offline": 1, "image sha256 mismatch": 1, "unparsable count": 1}
    ),
    "countbench": Counter({"corrupt image": 1, "missing image": 1, "unparsable count": 1}),
}


def dots_png(points: list[tuple[float, float]], colour: str = "red", size=SIZE) -> bytes:
    """A small PNG with a dot at each point."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _points(k: int, seed: int) -> list[tuple[float, float]]:
    w, h = SIZE
    return [
        (float(4 + (7 * (i + seed)) % (w - 8)), float(4 + (11 * i + 3 * seed) % (h - 8)))
        for i in range(k)
    ]


def _img(data: bytes | None) -> dict[str, Any] | None:
    return None if data is None else {"bytes": data, "path": None}


def _nlvr2(split: str, n: int, bad: bool) -> list[dict[str, Any]]:
    prefix = {"validation": "dev", "test": "test1"}.get(split, split)
    rows = []
    for i in range(n):
        set_id, pair, sentence = 100 + i // 4, (i // 2) % 2, i % 2
        rows.append(
            {
                "identifier": f"{prefix}-{set_id}-{pair}-{sentence}",
                "sentence": f"The left image shows {1 + i % 3} dots.",
                "label": "True" if i % 2 == 0 else "False",
                "image0": _img(dots_png(_points(1 + i % 3, i))),
                "image1": _img(dots_png(_points(2, i + 1), "blue")),
            }
        )
    if bad:
        good = _img(dots_png(_points(1, 0)))
        rows += [
            {
                "identifier": f"{prefix}-900-0-0",
                "sentence": "x",
                "label": "True",
                "image0": _img(b"not a png"),
                "image1": good,
            },
            {
                "identifier": f"{prefix}-901-0-0",
                "sentence": "x",
                "label": "False",
                "image0": good,
                "image1": None,
            },
            {
                "identifier": f"{prefix}-902-0-0",
                "sentence": "x",
                "label": "maybe",
                "image0": good,
                "image1": good,
            },
        ]
    return rows


def _aguvis(stage: int, n: int, bad: bool) -> list[dict[str, Any]]:
    def wrap(action: str) -> str:
        if stage == 1:
            return action
        return f"<think>\nThe target is visible; act on it.\n</think>\n<code>\n{action}\n</code>"

    rows = []
    for i in range(n):
        x, y = _points(1, i)[0]
        nx, ny = round(x / SIZE[0], 4), round(y / SIZE[1], 4)
        texts = [
            {
                "user": f"Click on the dot number {i}.",
                "assistant": wrap(f"click(x={nx}, y={ny})"),
                "system": None,
            }
        ]
        if i % 2 == 1:  # a second turn: one dropped (type) and one kept (double_click)
            texts.append(
                {"user": "Type hello.", "assistant": wrap("type(text='hello')"), "system": None}
            )
            texts.append(
                {
                    "user": "Open the dot.",
                    "assistant": wrap(f"double_click(x={nx}, y={ny})"),
                    "system": None,
                }
            )
        rows.append({"images": [_img(dots_png([(x, y)]))], "texts": texts})
    if bad:
        good = _img(dots_png(_points(1, 0)))
        rows += [
            {
                "images": [_img(b"\x89PNG truncated")],
                "texts": [
                    {"user": "Click.", "assistant": wrap("click(x=0.5, y=0.5)"), "system": None}
                ],
            },
            {
                "images": [good],
                "texts": [{"user": "Click.", "assistant": wrap("click(x=0.5, y="), "system": None}],
            },
            {
                "images": [good],
                "texts": [
                    {
                        "user": "Scroll.",
                        "assistant": wrap("scroll(direction='down', amount=3)"),
                        "system": None,
                    }
                ],
            },
        ]
    return rows


def _pixmo(split: str, n: int, bad: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        count = 2 + i % 4
        pts = _points(count, i)
        data = dots_png(pts, _COLOURS[i % len(_COLOURS)])
        rows.append(
            {
                "image_url": f"https://example.org/pixmo/{i}.png",
                "image_sha256": hashlib.sha256(data).hexdigest(),
                "count": count,
                "points": {"x": [p[0] for p in pts], "y": [p[1] for p in pts]}
                if split == "train"
                else {"x": [], "y": []},
                "label": "dot",
                "image": _img(data),
            }
        )
    if bad:
        data = dots_png(_points(2, 0))
        digest = hashlib.sha256(data).hexdigest()
        empty = {"x": [], "y": []}
        rows += [
            {
                "image_url": "https://example.org/pixmo/url-only.png",
                "image_sha256": digest,
                "count": 2,
                "points": empty,
                "label": "dot",
                "image": None,
            },
            {
                "image_url": "https://example.org/pixmo/x.png",
                "image_sha256": "0" * 64,
                "count": 2,
                "points": empty,
                "label": "dot",
                "image": _img(data),
            },
            {
                "image_url": "https://example.org/pixmo/y.png",
                "image_sha256": digest,
                "count": -1,
                "points": empty,
                "label": "dot",
                "image": _img(data),
            },
        ]
    return rows


def _countbench(n: int, bad: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        count = 2 + i % 5
        rows.append(
            {
                "image": _img(dots_png(_points(count, i))),
                "question": f"How many dots are there? ({i})",
                "number": count,
            }
        )
    if bad:
        good = _img(dots_png(_points(2, 0)))
        rows += [
            {"image": _img(b"GIF89a broken"), "question": "How many dots?", "number": 2},
            {"image": None, "question": "How many dots?", "number": 2},
            {"image": good, "question": "How many dots?", "number": -3},
        ]
    return rows


def sample_rows(name: str, split: str, n: int = 4, bad_rows: bool = False) -> list[dict[str, Any]]:
    """`n` good rows (plus the bad ones) of dataset `name` in its hub schema."""
    if name == "nlvr2":
        return _nlvr2(split, n, bad_rows)
    if name in ("aguvis-stage-1", "aguvis-stage-2"):
        return _aguvis(int(name[-1]), n, bad_rows)
    if name == "pixmo-count":
        return _pixmo(split, n, bad_rows)
    if name == "countbench":
        return _countbench(n, bad_rows)
    raise ValueError(f"no sample schema for dataset {name!r}")


def sample_features(name: str) -> Any:
    """The `datasets.Features` the hub declares for `name` (image columns as `Image`)."""
    import datasets as hf

    text, image = hf.Value("string"), hf.Image()
    if name == "nlvr2":
        return hf.Features(
            {"identifier": text, "sentence": text, "label": text, "image0": image, "image1": image}
        )
    if name.startswith("aguvis"):
        turn = {"user": text, "assistant": text, "system": text}
        return hf.Features({"images": hf.List(image), "texts": hf.List(turn)})
    if name == "pixmo-count":
        points = hf.Sequence({"x": hf.Value("float32"), "y": hf.Value("float32")})
        return hf.Features(
            {
                "image_url": text,
                "image_sha256": text,
                "count": hf.Value("int32"),
                "points": points,
                "label": text,
                "image": image,
            }
        )
    if name == "countbench":
        return hf.Features({"image": image, "question": text, "number": hf.Value("int64")})
    raise ValueError(f"no sample schema for dataset {name!r}")


def write_sample_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    layout: str = "parquet",
    splits: tuple[str, ...] = ("validation",),
    n: int = 4,
    bad_rows: bool = False,
) -> Path:
    """Writes a tiny copy of dataset `name` and returns its directory.

    Args:
        name: registry name.
        out_dir: destination directory (created).
        layout: "parquet" (hub download layout), "save_to_disk" or "jsonl" (relative image paths).
        splits: splits to write.
        n: good rows per split.
        bad_rows: append rows that must be skipped (see `EXPECTED_SKIPS`).
    """
    import datasets as hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    features = sample_features(name)
    if layout == "jsonl":
        (out / "images").mkdir(exist_ok=True)
        for split in splits:
            with (out / f"{split}.jsonl").open("w") as fh:
                for r, row in enumerate(sample_rows(name, split, n, bad_rows)):
                    fh.write(json.dumps(_paths_for_images(row, out, f"{split}-{r}")) + "\n")
        return out
    parts = {
        s: hf.Dataset.from_list(sample_rows(name, s, n, bad_rows), features=features)
        for s in splits
    }
    if layout == "parquet":
        (out / "data").mkdir(exist_ok=True)
        for split, ds in parts.items():
            ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    elif layout == "save_to_disk":
        hf.DatasetDict(parts).save_to_disk(str(out))
    else:
        raise ValueError(f"layout must be 'parquet', 'save_to_disk' or 'jsonl', got {layout!r}")
    return out


def _paths_for_images(value: Any, root: Path, stem: str) -> Any:
    """Replaces image cells by PNG files under root/images (relative paths), recursively."""
    if isinstance(value, dict) and set(value) == {"bytes", "path"}:
        name = f"images/{stem}.png"
        (root / name).write_bytes(value["bytes"])
        return name
    if isinstance(value, dict):
        return {k: _paths_for_images(v, root, f"{stem}-{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_paths_for_images(v, root, f"{stem}-{i}") for i, v in enumerate(value)]
    return value
