"""Validation of tool arguments as the model sends them (JSON values of any type).

Each check returns the clean value or raises `ToolArgumentError` with a message written for the
model ("x1 must be a number, got str '10'"); the toolbox turns it into an "Error: ..." result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from boxgym.tools.frames import frame_extent, frame_to_pixels

MAX_LABEL_CHARS = 80
MAX_ITEMS = 500
MAX_COUNT = 100_000


class ToolArgumentError(Exception):
    """A bad tool argument; the message is shown to the model."""


def as_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ToolArgumentError(
            f"{name} must be a number, got {type(value).__name__} {value!r:.40}"
        )
    try:
        value = float(value)
    except OverflowError:
        raise ToolArgumentError(f"{name} is far too large") from None
    if not math.isfinite(value):
        raise ToolArgumentError(f"{name} must be a finite number, got {value}")
    return value


def as_integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ToolArgumentError(
            f"{name} must be an integer, got {type(value).__name__} {value!r:.40}"
        )
    if isinstance(value, (float, np.floating)) and not (
        math.isfinite(value) and float(value).is_integer()
    ):
        raise ToolArgumentError(f"{name} must be an integer, got {value}")
    return int(value)


def as_label(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ToolArgumentError(
            f"{name} must be a string, got {type(value).__name__} {value!r:.40}"
        )
    text = " ".join(value.split())
    if not text:
        raise ToolArgumentError(
            f'{name} must not be empty: say what the object is, e.g. "red triangle"'
        )
    if len(text) > MAX_LABEL_CHARS:
        raise ToolArgumentError(
            f"{name} is {len(text)} characters long; use at most {MAX_LABEL_CHARS}"
        )
    return text


def as_box(
    values: tuple[Any, Any, Any, Any], frame: str, size: tuple[int, int]
) -> tuple[float, ...]:
    """Validate a box (x1, y1, x2, y2) written in `frame`; return it in pixels, clipped to `size`.

    `size` is the (width, height) of the original image the box is on.
    """
    coords = [as_number(n, v) for n, v in zip(("x1", "y1", "x2", "y2"), values)]
    ex, ey = frame_extent(frame, size)
    frame_hint = {
        "qwen": "coordinates are 0-1000 relative to the image's width and height",
        "unit": "coordinates are 0-1 relative to the image's width and height",
        "pixels": f"coordinates are pixels of the {size[0]}x{size[1]} image",
    }[frame]
    for name, value, extent in zip(("x1", "y1", "x2", "y2"), coords, (ex, ey, ex, ey)):
        if not 0 <= value <= extent:
            raise ToolArgumentError(
                f"{name}={value:g} is outside the image ({frame_hint}, max {extent:g})"
            )
    if coords[2] <= coords[0] or coords[3] <= coords[1]:
        raise ToolArgumentError(
            f"the box ({', '.join(f'{c:g}' for c in coords)}) is inverted or empty: "
            "x1 < x2 and y1 < y2 are needed (top-left corner first)"
        )
    pixels = frame_to_pixels(coords, frame, size)
    pixels = (
        max(0.0, pixels[0]),
        max(0.0, pixels[1]),
        min(float(size[0]), pixels[2]),
        min(float(size[1]), pixels[3]),
    )
    if pixels[2] - pixels[0] < 1 or pixels[3] - pixels[1] < 1:
        raise ToolArgumentError("the box is smaller than one pixel; make it cover the object")
    if max(pixels[2] - pixels[0], pixels[3] - pixels[1]) > 150 * min(
        pixels[2] - pixels[0], pixels[3] - pixels[1]
    ):
        raise ToolArgumentError(
            "the box is too thin (sides more than 150:1); make it cover the object"
        )
    return pixels


# The answer fields each task kind requires.
ANSWER_FIELDS: dict[str, tuple[str, ...]] = {
    "enumerate": ("count", "items"),
    "count": ("count",),
    "verify": ("value",),
    "point": ("x", "y"),
}


def as_answer(
    kind: str | None, given: dict[str, Any], frame: str, image_size: tuple[int, int]
) -> dict[str, Any]:
    """Validate the fields given to `answer` for a task of `kind`; returns `Task.answer` form.

    Points are converted from `frame` to pixels of image 0 (`image_size`). A None kind accepts
    any non-empty combination of fields.
    """
    needed = ANSWER_FIELDS.get(kind or "", ())
    missing = [k for k in needed if k not in given]
    if missing:
        raise ToolArgumentError(
            f"this question needs {' and '.join(needed)} in the answer; missing {', '.join(missing)}"
        )
    if not given:
        raise ToolArgumentError("the answer is empty; give count, items, value or x and y")
    result: dict[str, Any] = {}
    if "count" in given:
        result["count"] = as_integer("count", given["count"])
        if not 0 <= result["count"] <= MAX_COUNT:
            raise ToolArgumentError(
                f"count must be between 0 and {MAX_COUNT}, got {result['count']}"
            )
    if "items" in given:
        if not isinstance(given["items"], list):
            raise ToolArgumentError(
                f"items must be a list of strings, got {type(given['items']).__name__}"
            )
        if len(given["items"]) > MAX_ITEMS:
            raise ToolArgumentError(
                f"items has {len(given['items'])} entries; at most {MAX_ITEMS} are allowed"
            )
        result["items"] = [as_label(f"items[{i}]", item) for i, item in enumerate(given["items"])]
    if "value" in given:
        if not isinstance(given["value"], bool):
            raise ToolArgumentError(f"value must be true or false, got {given['value']!r:.40}")
        result["value"] = given["value"]
    if ("x" in given) != ("y" in given):
        raise ToolArgumentError("a point needs both x and y")
    if "x" in given:
        px, py = as_number("x", given["x"]), as_number("y", given["y"])
        ex, ey = frame_extent(frame, image_size)
        if not (0 <= px <= ex and 0 <= py <= ey):
            raise ToolArgumentError(
                f"the point ({px:g}, {py:g}) is outside the image (max {ex:g}, {ey:g})"
            )
        result["point"] = list(frame_to_pixels((px, py), frame, image_size))
    return result
