"""Coordinate frames: how the model writes box corners and points, and how they map to pixels.

Three frames are supported:

- ``"qwen"`` (default): Qwen2-VL's grounding frame, integers in [0, 1000) relative to the image's
  width and height (x = 500 is the middle of the image whatever its size). 1000 itself is
  accepted on input as the far edge.
- ``"pixels"``: absolute pixels of the task's ORIGINAL image (not the resized one the model sees).
- ``"unit"``: floats in [0, 1] relative to the width and height.

A box is ``(x1, y1, x2, y2)``; a point is ``(x, y)``. The conversions take either;
`shown_in_frame` writes pixel coordinates as the model and `info` are shown them.
"""

from __future__ import annotations

from collections.abc import Sequence

FRAMES: tuple[str, ...] = ("qwen", "pixels", "unit")

# The exclusive upper end of the qwen frame.
QWEN_SCALE = 1000


def check_frame(frame: str) -> str:
    """Return `frame` if it is known, else raise a ValueError naming the choices."""
    if frame not in FRAMES:
        raise ValueError(f"unknown coordinate frame {frame!r}; choose one of {FRAMES}")
    return frame


def frame_extent(frame: str, image_size: tuple[int, int]) -> tuple[float, float]:
    """The largest value x and y may take in `frame` for an image of `image_size` (width, height)."""
    check_frame(frame)
    if frame == "qwen":
        return float(QWEN_SCALE), float(QWEN_SCALE)
    if frame == "unit":
        return 1.0, 1.0
    return float(image_size[0]), float(image_size[1])


def _scales(frame: str, image_size: tuple[int, int]) -> tuple[float, float]:
    """Pixels per frame unit along x and y."""
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    ex, ey = frame_extent(frame, image_size)
    return width / ex, height / ey


def _check_coords(coords: Sequence[float]) -> None:
    if len(coords) not in (2, 4):
        raise ValueError(
            f"expected a point (x, y) or a box (x1, y1, x2, y2), got {len(coords)} values"
        )


def frame_to_pixels(
    coords: Sequence[float], frame: str, image_size: tuple[int, int]
) -> tuple[float, ...]:
    """Convert a box or point from `frame` to float pixels of the original image.

    Args:
        coords: (x1, y1, x2, y2) or (x, y) in `frame`.
        frame: "qwen", "pixels" or "unit".
        image_size: (width, height) of the original image.

    Returns:
        The same shape, in pixels (floats, not clipped).
    """
    _check_coords(coords)
    sx, sy = _scales(frame, image_size)
    return tuple(float(v) * (sx if i % 2 == 0 else sy) for i, v in enumerate(coords))


def pixels_to_frame(
    coords: Sequence[float], frame: str, image_size: tuple[int, int]
) -> tuple[float, ...] | tuple[int, ...]:
    """Convert a box or point from pixels of the original image to `frame`.

    In the qwen frame the result is rounded to integers and clipped to [0, 999], as Qwen2-VL
    writes them; in the other frames it is an exact float.

    Args:
        coords: (x1, y1, x2, y2) or (x, y) in pixels.
        frame: "qwen", "pixels" or "unit".
        image_size: (width, height) of the original image.
    """
    _check_coords(coords)
    sx, sy = _scales(frame, image_size)
    values = [float(v) / (sx if i % 2 == 0 else sy) for i, v in enumerate(coords)]
    if frame == "qwen":
        return tuple(min(QWEN_SCALE - 1, max(0, round(v))) for v in values)
    if frame == "pixels":
        return tuple(float(v) for v in coords)
    return tuple(values)


# Decimals kept when coordinates are shown (messages, info) in the float frames.
SHOWN_DECIMALS: dict[str, int] = {"pixels": 2, "unit": 4}
FAR_EDGE_NOTE = (
    f" ({QWEN_SCALE - 1} is the qwen frame's far edge, written {QWEN_SCALE} or {QWEN_SCALE - 1})"
)


def shown_in_frame(
    coords: tuple[float, ...], frame: str, image_size: tuple[int, int]
) -> list[float] | list[int]:
    """Pixel coordinates as shown to the model and in `info`: in `frame`, without float noise.

    The qwen frame gives integers clipped to [0, 999] (`pixels_to_frame`); the pixels and
    unit frames are rounded to `SHOWN_DECIMALS` places.
    """
    values = pixels_to_frame(coords, frame, image_size)
    digits = SHOWN_DECIMALS.get(frame)
    return [v if digits is None else round(v, digits) + 0.0 for v in values]


def far_edge_note(frame: str, shown: list[float] | list[int]) -> str:
    """Says what 999 means when a qwen-frame echo holds it (so 1000 -> 999 is no surprise)."""
    return FAR_EDGE_NOTE if frame == "qwen" and QWEN_SCALE - 1 in shown else ""
