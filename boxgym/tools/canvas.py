"""Rendering: the patch grid, resizing, numbered labelled boxes, and upscaled crops.

Every image the environment hands to the model has sides that are multiples of 28 (one Qwen2-VL
image token per 28x28 pixels) and an area within the configured pixel bounds, so Qwen2-VL's own
`smart_resize` leaves it unchanged and every backend sees the same tokens. Resizing is the costly
part (see research.md), so an episode resizes its image once and draws in that space.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PATCH = 28  # pixels per Qwen2-VL image token along each side (14-px patches, 2x2 merge)

# Mark colours (RGB), cycled by box id in the "tag" style: saturated colours that no scene
# family draws with (each lies at least 90 RGB units from every colour in `boxgym.data.scenes`,
# tested), so a mark is never taken for an object. Labels are written in black or white,
# whichever contrasts more.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 255),
    (128, 255, 0),
    (0, 255, 200),
    (255, 0, 128),
    (0, 0, 160),
    (128, 0, 255),
)
# The one colour of the "outline" and "fill" styles.
MARK_COLOUR: tuple[int, int, int] = PALETTE[0]
# How a mark looks: "tag" an outline in its colour with a tag "id: label"; "outline" a thick
# outline in `MARK_COLOUR`, nothing written; "fill" the box filled with `MARK_COLOUR`, which
# hides what it covers.
MARK_STYLES: tuple[str, ...] = ("tag", "outline", "fill")


def fit_to_patch_grid(
    width: float, height: float, min_pixels: int, max_pixels: int, factor: int = PATCH
) -> tuple[int, int]:
    """The size Qwen2-VL's `smart_resize` gives an image: sides multiples of `factor`, area bounded.

    Same arithmetic as `transformers...image_processing_qwen2_vl.smart_resize` (which takes and
    returns (height, width)); this one takes and returns (width, height).

    Raises:
        ValueError: when a side is not positive or the aspect ratio exceeds 200.
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"image sides must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(w_bar), int(h_bar)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """An RGB uint8 array (H, W, 3) of a PIL image, converting the mode when needed."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def resize_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) array to `size` (width, height): area averaging down, bilinear up."""
    height, width = array.shape[:2]
    if (width, height) == tuple(size):
        return array
    shrinking = size[0] * size[1] < width * height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, size, interpolation=interpolation)


@lru_cache(maxsize=32)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The label font at `size` px, loaded once per size (fonts do not pickle: never store one)."""
    return ImageFont.load_default(size=size)


def font_size_for(image_size: tuple[int, int]) -> int:
    """A label font size readable on an image of `image_size`: about 1/45 of the short side."""
    return int(min(28, max(11, min(image_size) / 45)))


def box_colour(box_id: int) -> tuple[int, int, int]:
    """The colour of box `box_id` (ids start at 1)."""
    return PALETTE[(box_id - 1) % len(PALETTE)]


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = fill
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


@dataclass(frozen=True)
class Mark:
    """A box to draw: its id, label and corners in the pixels of the image being drawn on."""

    box_id: int
    label: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class MarkDrawing:
    """Where one mark's pixels go on an image of a given size (see `layout_mark`).

    Attributes:
        box_id: the box's number (decides the colour).
        line: outline width in px.
        corners: the box's rounded corners (x1, y1, x2, y2), inclusive.
        tag: the tag's filled rectangle (x1, y1, x2, y2), inclusive.
        text: the tag's text; text_origin: where `ImageDraw.text` puts it.
        font_size: the label font size.
        extent: every pixel the mark can touch, (x0, y0, x1, y1) with exclusive ends, clipped
            to the image: redrawing this region redraws the mark completely.
        style: one of `MARK_STYLES`.
    """

    box_id: int
    line: int
    corners: tuple[int, int, int, int]
    tag: tuple[int, int, int, int]
    text: str
    text_origin: tuple[int, int]
    font_size: int
    extent: tuple[int, int, int, int]
    style: str = "tag"


def layout_mark(
    mark: Mark, image_size: tuple[int, int], max_label_chars: int = 24, style: str = "tag"
) -> MarkDrawing | None:
    """How `draw_marks` draws `mark` on an image of `image_size` in `style`; None when it is
    outside the image."""
    if style not in MARK_STYLES:
        raise ValueError(f"mark style must be one of {MARK_STYLES}, got {style!r}")
    width, height = image_size
    font = label_font(font_size_for(image_size))
    line = max(2, round(min(width, height) / 300))
    x1, y1, x2, y2 = (round(v) for v in mark.box)
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    if x2 < 0 or y2 < 0 or x1 >= width or y1 >= height:
        return None
    if style != "tag":  # no tag: the mark's pixels are the box and its rim
        line = 2 * line if style == "outline" else line
        extent = (
            max(0, x1 - line - 2),
            max(0, y1 - line - 2),
            min(width, x2 + line + 3),
            min(height, y2 + line + 3),
        )
        return MarkDrawing(
            mark.box_id, line, (x1, y1, x2, y2), (x1, y1, x1, y1), "", (x1, y1), font.size,
            extent, style,
        )  # fmt: skip
    text = f"{mark.box_id}: {mark.label}" if mark.label else str(mark.box_id)
    if len(text) > max_label_chars:
        text = text[: max_label_chars - 1] + "…"
    left, top, right, bottom = _text_bbox(text, font.size)
    if right - left > (x2 - x1) + font.size:  # a small box: its number only, to hide less
        text = str(mark.box_id)
        left, top, right, bottom = _text_bbox(text, font.size)
    tw, th = right - left + 4, bottom - top + 4
    tx = min(max(0, x1), max(0, width - tw))
    ty = y1 - th if y1 - th >= 0 else max(0, y1)
    # 2 px of slack around the outline's outer rim and the tag (anti-aliased text included).
    extent = (
        max(0, min(x1 - line, tx) - 2),
        max(0, min(y1 - line, ty) - 2),
        min(width, max(x2 + line, tx + tw) + 3),
        min(height, max(y2 + line, ty + th) + 3),
    )
    return MarkDrawing(
        mark.box_id,
        line,
        (x1, y1, x2, y2),
        (tx, ty, tx + tw, ty + th),
        text,
        (tx + 2 - left, ty + 2 - top),
        font.size,
        extent,
    )


@lru_cache(maxsize=4096)
def _text_bbox(text: str, font_size: int) -> tuple[int, int, int, int]:
    """`ImageDraw.textbbox((0, 0), text)` in the label font (tags repeat: cached)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=label_font(font_size))
    return int(left), int(top), int(right), int(bottom)


def paint_mark(draw: ImageDraw.ImageDraw, drawing: MarkDrawing, dx: int = 0, dy: int = 0) -> None:
    """Draw a laid-out mark, shifted by (dx, dy) (to draw into a window of the image).

    In the "tag" style a box gets an outline in its colour with a dark rim outside and a light
    rim inside, so it shows on any background, and a tag "id: label" on a filled background.
    The "outline" and "fill" styles draw `MARK_COLOUR` inside a dark rim, and nothing else.
    """
    line = drawing.line
    x1, y1, x2, y2 = drawing.corners
    x1, y1, x2, y2 = x1 + dx, y1 + dy, x2 + dx, y2 + dy
    draw.rectangle((x1 - line, y1 - line, x2 + line, y2 + line), outline=(0, 0, 0), width=1)
    if drawing.style == "fill":
        draw.rectangle((x1, y1, x2, y2), fill=MARK_COLOUR)
        return
    if drawing.style == "outline":
        draw.rectangle((x1, y1, x2, y2), outline=MARK_COLOUR, width=line)
        return
    colour = box_colour(drawing.box_id)
    draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
    if x2 - x1 > 2 * line + 2 and y2 - y1 > 2 * line + 2:
        draw.rectangle(
            (x1 + line, y1 + line, x2 - line, y2 - line), outline=(255, 255, 255), width=1
        )
    tx1, ty1, tx2, ty2 = drawing.tag
    draw.rectangle((tx1 + dx, ty1 + dy, tx2 + dx, ty2 + dy), fill=colour)
    ox, oy = drawing.text_origin
    draw.text(
        (ox + dx, oy + dy),
        drawing.text,
        fill=_text_colour(colour),
        font=label_font(drawing.font_size),
    )


def draw_marks(
    image: Image.Image, marks: Sequence[Mark], max_label_chars: int = 24, style: str = "tag"
) -> None:
    """Draw numbered, labelled boxes (or marks of another `style`) onto `image` in place, in order.

    Each box gets an outline in its colour (with a dark rim outside and a light rim inside, so it
    shows on any background) and a tag "id: label" on a filled background, above the box when
    there is room, else inside its top edge. A box narrower than its tag gets its id only, so
    dense scenes stay visible. Boxes partly outside are clipped.
    """
    if not marks:
        return
    draw = ImageDraw.Draw(image)
    for mark in marks:
        drawing = layout_mark(mark, image.size, max_label_chars, style)
        if drawing is not None:
            paint_mark(draw, drawing)


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two (x0, y0, x1, y1) regions with exclusive ends share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def redraw_region(
    marked: Image.Image,
    clean: Image.Image,
    drawings: Iterable[MarkDrawing],
    region: tuple[int, int, int, int],
) -> None:
    """Make `region` of `marked` what drawing `drawings` in order on `clean` gives there.

    Only the marks that reach the region are drawn, into a copy of the clean window, so an
    edit costs what the boxes around it cost, not what every box costs. Drawing is
    translation-exact (integer corners and text origins), so the result is pixel-identical to
    redrawing every mark on a fresh copy of `clean`.
    """
    x0, y0, x1, y1 = region
    if x1 <= x0 or y1 <= y0:
        return
    window = clean.crop(region)
    draw = ImageDraw.Draw(window)
    for drawing in drawings:
        if overlaps(drawing.extent, region):
            paint_mark(draw, drawing, -x0, -y0)
    marked.paste(window, (x0, y0))


def crop_size(
    region_width: float,
    region_height: float,
    min_side: int,
    max_pixels: int,
    min_pixels: int = 4 * PATCH * PATCH,
) -> tuple[int, int]:
    """The output size of a crop: upscaled so its short side reaches `min_side`, on the patch grid.

    The area stays within [max(`min_pixels`, 4 patches), `max_pixels`] and the sides are
    multiples of 28, so `smart_resize` with bounds enclosing these leaves the crop unchanged.
    """
    scale = max(1.0, min_side / max(1e-9, min(region_width, region_height)))
    return fit_to_patch_grid(
        region_width * scale,
        region_height * scale,
        min_pixels=max(min_pixels, 4 * PATCH * PATCH),
        max_pixels=max_pixels,
    )


def crop_array(
    array: np.ndarray, region: tuple[float, float, float, float], size: tuple[int, int]
) -> np.ndarray:
    """Cut `region` (pixels of `array`, clipped to it) out of `array` and resize it to `size`."""
    height, width = array.shape[:2]
    x1 = min(max(0, math.floor(region[0])), width - 1)
    y1 = min(max(0, math.floor(region[1])), height - 1)
    x2 = max(x1 + 1, min(width, math.ceil(region[2])))
    y2 = max(y1 + 1, min(height, math.ceil(region[3])))
    patch = array[y1:y2, x1:x2]
    interpolation = (
        cv2.INTER_AREA if size[0] * size[1] < patch.shape[0] * patch.shape[1] else cv2.INTER_LINEAR
    )
    return cv2.resize(np.ascontiguousarray(patch), size, interpolation=interpolation)
