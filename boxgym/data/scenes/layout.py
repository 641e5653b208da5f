"""Shared layout of the procedural scenes: sketches, placement on the 28-px grid, reading order, noise.

Every object is first described as a `Sketch`: drawing primitives (polygons, discs, lines,
text) in integer pixel offsets from the object's centre, with rotation applied to the points
(never by resampling an image). Its ground-truth box is computed from the integer outline of its
outer primitives; Pillow fills a polygon drawn with an outline, and an ellipse with integer
bounds, exactly from the smallest to the largest coordinate, so the box is the tight box of the
drawn pixels (tests check this against the pixels). The sketch is then placed and drawn straight
onto the scene.

Boxes are `(x1, y1, x2, y2)` in pixels with exclusive ends: the object covers columns
x1 .. x2-1 and rows y1 .. y2-1, so a box aligned to the patch grid is (28a, 28b, 28c, 28d).
Boxes of overlapping objects are amodal: the whole object, also where a later object covers it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from boxgym.data.scenes.knobs import PATCH, SceneKnobs
from boxgym.data.task import GroundTruthObject

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]
Point = tuple[float, float]
_NOISE_SIDE = 1024


class Draws:
    """Random numbers for one scene, drawn from a numpy Generator in blocks.

    Scenes make hundreds of tiny random choices; asking numpy for each costs microseconds of
    call overhead, so values come from blocks of `Generator.random` instead. The stream is a
    pure function of the generator's state, so scenes stay deterministic from the seed.
    """

    def __init__(self, rng: np.random.Generator, block: int = 512) -> None:
        self.rng = rng
        self._block = block
        self._pop = [].pop

    def random(self) -> float:
        """A float in [0, 1)."""
        try:
            return self._pop()
        except IndexError:
            # Reversed, so that pop() hands the block out in the order numpy drew it.
            self._pop = self.rng.random(self._block)[::-1].tolist().pop
            return self._pop()

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi] (both ends included)."""
        span = hi - lo
        v = int(self.random() * (span + 1))
        return lo + (v if v <= span else span)  # guards float rounding up for huge spans

    def choice(self, items: Sequence[Any]) -> Any:
        return items[self.integer(0, len(items) - 1)]

    def shuffled(self, items: Sequence[Any]) -> list[Any]:
        out = list(items)
        for i in range(len(out) - 1, 0, -1):
            j = self.integer(0, i)
            out[i], out[j] = out[j], out[i]
        return out


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at `size` px (cached; identical on every machine)."""
    return ImageFont.load_default(size=max(6, int(size)))


class Sketch:
    """One object's drawing: primitives at integer offsets from its centre, and its exact box.

    Local coordinates are pixels relative to the object's centre, before rotation; `angle` turns
    the object counter-clockwise on screen. Primitives marked `outer` define the box; inner
    details (holes, content, text) must stay inside them.
    """

    def __init__(self, width: float, height: float, angle: float = 0.0) -> None:
        self.width = float(width)
        self.height = float(height)
        self.angle = float(angle)
        rad = math.radians(angle)
        self.cos, self.sin = math.cos(rad), math.sin(rad)
        self.ops: list[tuple] = []
        self._bounds = [math.inf, math.inf, -math.inf, -math.inf]
        # Half the extent between the outermost pixel centres; even widths fall on half pixels.
        self.hw = (self.width - 1) / 2.0
        self.hh = (self.height - 1) / 2.0
        # Screen y points down, so a counter-clockwise turn on screen is -angle in maths terms;
        # points map to (x cos + y sin + ox, -x sin + y cos + oy), rounded half up.
        self._ox = 0.5 if round(self.width) % 2 == 0 else 0.0
        self._oy = 0.5 if round(self.height) % 2 == 0 else 0.0

    def _map(self, x: float, y: float) -> tuple[int, int]:
        return (
            math.floor(x * self.cos + y * self.sin + self._ox + 0.5),
            math.floor(-x * self.sin + y * self.cos + self._oy + 0.5),
        )

    def _grow(self, xs: Sequence[int], ys: Sequence[int]) -> None:
        b = self._bounds
        b[0], b[1] = min(b[0], min(xs)), min(b[1], min(ys))
        b[2], b[3] = max(b[2], max(xs)), max(b[3], max(ys))

    def polygon(
        self, points: Sequence[Point], fill: RGB, outline: RGB | None = None, outer: bool = False
    ) -> None:
        """A filled polygon given by local points."""
        pts = [self._map(x, y) for x, y in points]
        self.ops.append(("polygon", pts, fill, outline or fill))
        if outer:
            self._grow([p[0] for p in pts], [p[1] for p in pts])

    def rect(self, x1: float, y1: float, x2: float, y2: float, fill: RGB, **kw: Any) -> None:
        """The (rotated) rectangle with local corners (x1, y1) and (x2, y2)."""
        self.polygon([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], fill, **kw)

    def unit(
        self,
        poly: np.ndarray,
        fill: RGB,
        sx: float | None = None,
        sy: float | None = None,
        **kw: Any,
    ) -> None:
        """A polygon given in the unit box [-0.5, 0.5]^2, stretched to the object (or sx, sy)."""
        sx = 2 * self.hw if sx is None else sx
        sy = 2 * self.hh if sy is None else sy
        self.polygon([(x * sx, y * sy) for x, y in poly.tolist()], fill, **kw)

    def circle(
        self,
        x: float,
        y: float,
        r: float,
        fill: RGB,
        outline: RGB | None = None,
        outer: bool = False,
    ) -> None:
        """A disc of radius r at local (x, y); rotation only moves its centre."""
        cx = x * self.cos + y * self.sin + self._ox + 0.5
        cy = -x * self.sin + y * self.cos + self._oy + 0.5
        r = max(0.0, r)
        floor = math.floor
        bounds = (floor(cx - r), floor(cy - r), floor(cx + r), floor(cy + r))
        self.ops.append(("ellipse", bounds, fill, outline or fill))
        if outer:
            self._grow(bounds[0::2], bounds[1::2])

    def line(self, points: Sequence[Point], fill: RGB, width: int) -> None:
        """A polyline (inner detail only: its width is not part of the box)."""
        self.ops.append(("line", [self._map(x, y) for x, y in points], fill, max(1, int(width))))

    def text(self, text: str, size: int, fill: RGB) -> None:
        """Text centred on the object, turned with it (inner detail only)."""
        f = font(size)
        if self.angle == 0.0:
            self.ops.append(("text", self._map(0.0, 0.0), text, f, fill))
            return
        left, top, right, bottom = f.getbbox(text, anchor="mm")
        side = int(2 * max(abs(left), abs(top), abs(right), abs(bottom))) + 4
        mask = Image.new("L", (side, side), 0)
        ImageDraw.Draw(mask).text((side / 2, side / 2), text, fill=255, font=f, anchor="mm")
        mask = mask.rotate(self.angle, resample=Image.Resampling.BILINEAR)
        cx, cy = self._map(0.0, 0.0)
        self.ops.append(("mask", (cx - side // 2, cy - side // 2), mask, fill))

    @property
    def box(self) -> Box:
        """The box of the outer primitives relative to the centre (exclusive ends)."""
        b = self._bounds
        if not math.isfinite(b[0]):
            raise ValueError("a sketch needs at least one outer primitive")
        return (int(b[0]), int(b[1]), int(b[2]) + 1, int(b[3]) + 1)

    @property
    def size(self) -> tuple[int, int]:
        x1, y1, x2, y2 = self.box
        return x2 - x1, y2 - y1

    def draw(self, scene: Image.Image, draw: ImageDraw.ImageDraw, box: Box) -> None:
        """Draws the sketch so that its box lands on `box` (same size as `self.box`)."""
        dx, dy = box[0] - self.box[0], box[1] - self.box[1]
        for op in self.ops:
            kind = op[0]
            if kind == "polygon":
                pts = [(x + dx, y + dy) for x, y in op[1]]
                draw.polygon(pts, fill=op[2], outline=op[3])
            elif kind == "ellipse":
                x1, y1, x2, y2 = op[1]
                draw.ellipse((x1 + dx, y1 + dy, x2 + dx, y2 + dy), fill=op[2], outline=op[3])
            elif kind == "line":
                draw.line([(x + dx, y + dy) for x, y in op[1]], fill=op[2], width=op[3])
            elif kind == "text":
                x, y = op[1]
                draw.text((x + dx, y + dy), op[2], fill=op[4], font=op[3], anchor="mm")
            else:  # rotated text: a mask pasted in the fill colour
                (x, y), mask, fill = op[1], op[2], op[3]
                scene.paste(fill, (x + dx, y + dy), mask)


def regular_polygon(n: int, star: bool = False, inner: float = 0.45) -> np.ndarray:
    """A regular n-gon (or n-pointed star) pointing up, stretched to fill [-0.5, 0.5]^2."""
    k = 2 * n if star else n
    angles = -math.pi / 2 + np.arange(k) * (2 * math.pi / k)
    radii = np.where(np.arange(k) % 2 == 1, inner, 1.0) if star else np.ones(k)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return fit_unit(pts)


def fit_unit(pts: np.ndarray) -> np.ndarray:
    """Scales and moves points so their bounding box is exactly [-0.5, 0.5]^2."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (pts - (lo + hi) / 2) / (hi - lo)


def sample_size(knobs: SceneKnobs, r: Draws) -> float:
    """An object's longer side in pixels: uniform in the knob's range, whole patches on a grid."""
    lo, hi = knobs.object_size
    patches = r.uniform(lo, hi)
    if knobs.grid == "random":
        return max(3.0, float(round(patches * PATCH)))
    return float(max(1, round(patches)) * PATCH)


def snap_side(pixels: float, knobs: SceneKnobs) -> float:
    """A secondary side (e.g. a screen's height) in whole pixels, or whole patches on a grid."""
    if knobs.grid == "random":
        return max(3.0, float(round(pixels)))
    return float(max(1, round(pixels / PATCH)) * PATCH)


def sample_angle(knobs: SceneKnobs, r: Draws) -> float:
    if knobs.rotation <= 0:
        return 0.0
    return r.uniform(-knobs.rotation, knobs.rotation)


class Placer:
    """Places boxes in the image with no more overlap than allowed, on the grid the knobs ask.

    Placed boxes are kept in a coarse spatial hash, so checking a candidate costs a handful of
    comparisons even in a dense scene. With `cluster` > 0, that fraction of candidates is drawn
    next to an already placed box (touching it, or overlapping as far as allowed), which makes
    piles instead of an even scatter.
    """

    def __init__(self, knobs: SceneKnobs, r: Draws, cluster: float = 0.0, cell: int = 64) -> None:
        self.knobs = knobs
        self.r = r
        self.cluster = cluster
        self.width, self.height = knobs.image_size
        self.cell = cell
        self.boxes: list[Box] = []
        self._hash: dict[tuple[int, int], list[int]] = {}

    def _coord(self, extent: int, side: int, near: float | None) -> int | None:
        room = extent - side
        if room < 0:
            return None
        grid = self.knobs.grid
        if grid == "random":
            if near is None:
                return self.r.integer(0, room)
            return min(room, max(0, round(near)))
        offset = 0 if grid == "aligned" else PATCH // 2
        cells = (room - offset) // PATCH
        if cells < 0:
            return None
        if near is None:
            return offset + PATCH * self.r.integer(0, cells)
        return offset + PATCH * min(cells, max(0, round((near - offset) / PATCH)))

    def _near(self, width: int, height: int) -> tuple[float, float]:
        """A top-left corner that puts a width x height box against a random placed box."""
        bx1, by1, bx2, by2 = self.boxes[self.r.integer(0, len(self.boxes) - 1)]
        angle = self.r.uniform(0, 2 * math.pi)
        squeeze = 1.0 - self.knobs.overlap * self.r.random()
        dist_x = (bx2 - bx1 + width) / 2 * squeeze
        dist_y = (by2 - by1 + height) / 2 * squeeze
        c, s = math.cos(angle), math.sin(angle)
        scale = 1.0 / max(abs(c), abs(s))  # onto the rectangle around the anchor
        cx = (bx1 + bx2) / 2 + c * scale * dist_x
        cy = (by1 + by2) / 2 + s * scale * dist_y
        return cx - width / 2, cy - height / 2

    def place(self, width: int, height: int, tries: int = 150) -> Box | None:
        """A free box of `width` x `height`, or None after `tries` candidates."""
        for _ in range(tries):
            near: tuple[float, float] | tuple[None, None] = (None, None)
            if self.boxes and self.cluster > 0 and self.r.random() < self.cluster:
                near = self._near(width, height)
            x = self._coord(self.width, width, near[0])
            y = self._coord(self.height, height, near[1])
            if x is None or y is None:
                return None
            box = (x, y, x + width, y + height)
            if self._free(box):
                self._add(box)
                return box
        return None

    def _cells(self, box: Box) -> list[tuple[int, int]]:
        c = self.cell
        return [
            (i, j)
            for i in range(box[0] // c, (box[2] - 1) // c + 1)
            for j in range(box[1] // c, (box[3] - 1) // c + 1)
        ]

    def _free(self, box: Box) -> bool:
        x1, y1, x2, y2 = box
        area = (x2 - x1) * (y2 - y1)
        limit = self.knobs.overlap + 1e-9
        boxes, table = self.boxes, self._hash
        for cell in self._cells(box):  # a box in several cells is checked more than once: cheap
            for k in table.get(cell, ()):
                bx1, by1, bx2, by2 = boxes[k]
                if bx1 >= x2 or bx2 <= x1 or by1 >= y2 or by2 <= y1:
                    continue  # apart or touching
                iw = (x2 if x2 < bx2 else bx2) - (x1 if x1 > bx1 else bx1)
                ih = (y2 if y2 < by2 else by2) - (y1 if y1 > by1 else by1)
                other = (bx2 - bx1) * (by2 - by1)
                if iw * ih > limit * (area if area < other else other):
                    return False
        return True

    def _add(self, box: Box) -> None:
        k = len(self.boxes)
        self.boxes.append(box)
        for cell in self._cells(box):
            self._hash.setdefault(cell, []).append(k)


def place_object(
    placer: Placer, render: Callable[[float], Sketch], size: float, knobs: SceneKnobs
) -> tuple[Sketch, Box] | None:
    """Sketches an object at `size` px and places it; retries once at the smallest allowed size.

    Returns:
        The sketch and the box it fills, or None when it does not fit (the caller leaves it out).
    """
    sketch = render(size)
    box = placer.place(*sketch.size)
    if box is not None:
        return sketch, box
    smallest = sample_size_min(knobs)
    if smallest < size:
        sketch = render(smallest)
        box = placer.place(*sketch.size)
        if box is not None:
            return sketch, box
    return None


def sample_size_min(knobs: SceneKnobs) -> float:
    """The smallest size `sample_size` can return for these knobs."""
    if knobs.grid == "random":
        return max(3.0, float(round(knobs.object_size[0] * PATCH)))
    return float(max(1, round(knobs.object_size[0])) * PATCH)


def reading_order(boxes: Sequence[Sequence[float]]) -> list[int]:
    """Indices of boxes in reading order: rows top to bottom, each row left to right.

    Boxes are taken by centre, top first. A box joins the current row when its centre lies at
    most half the smaller height (of itself and the row's first box) below the centre of the
    row's first box; otherwise it starts a new row. Each row is read left to right by centre x.
    """
    if not boxes:
        return []
    cx = [(b[0] + b[2]) / 2 for b in boxes]
    cy = [(b[1] + b[3]) / 2 for b in boxes]
    h = [b[3] - b[1] for b in boxes]
    by_y = sorted(range(len(boxes)), key=lambda i: (cy[i], cx[i], i))
    rows: list[list[int]] = []
    anchor = -1
    for i in by_y:
        if rows and cy[i] - cy[anchor] <= 0.5 * min(h[i], h[anchor]):
            rows[-1].append(i)
        else:
            rows.append([i])
            anchor = i
    return [i for row in rows for i in sorted(row, key=lambda j: (cx[j], cy[j], j))]


@lru_cache(maxsize=1)
def _noise_bank() -> tuple[np.ndarray, np.ndarray]:
    """Fixed RGB Gaussian noise of standard deviation 40, split into its positive and negative
    parts as uint8 (made once; every scene reads a window of it)."""
    rng = np.random.default_rng(0x5CE7E)
    noise = rng.standard_normal((_NOISE_SIDE, _NOISE_SIDE, 3), dtype=np.float32) * 40.0
    pos = np.clip(noise, 0, 255).astype(np.uint8)
    neg = np.clip(-noise, 0, 255).astype(np.uint8)
    return pos, neg


@lru_cache(maxsize=4)
def _scaled_noise_bank(level: float) -> tuple[np.ndarray, np.ndarray]:
    """The noise bank scaled to `level` (cached: scenes of one run share a few levels)."""
    import cv2

    pos, neg = _noise_bank()
    return cv2.convertScaleAbs(pos, alpha=level), cv2.convertScaleAbs(neg, alpha=level)


@lru_cache(maxsize=2)
def _tiled_noise_bank(level: float, tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """The scaled bank repeated `tiles` times along each side, for images larger than it: a
    window of this is what indexing the bank modulo its side gives, at the cost of a slice."""
    pos, neg = _scaled_noise_bank(level)
    return np.tile(pos, (tiles, tiles, 1)), np.tile(neg, (tiles, tiles, 1))


def add_noise(scene: Image.Image, level: float, r: Draws) -> Image.Image:
    """The scene with RGB noise of standard deviation `40 * level` grey levels added (clipped).

    The noise is a window of a fixed bank at an offset drawn from `r`, so it is deterministic per
    scene and costs two saturating adds. Images larger than the bank read a window of a cached
    tiled copy of it (the same pixels as indexing the bank modulo its side, at the cost per
    pixel of a small image). `level` is used to 3 decimals.
    """
    if level <= 0:
        return scene
    import cv2

    w, h = scene.size
    pos, neg = _scaled_noise_bank(round(level, 3))
    ox = r.integer(0, max(0, _NOISE_SIDE - w))
    oy = r.integer(0, max(0, _NOISE_SIDE - h))
    if w > _NOISE_SIDE or h > _NOISE_SIDE:  # larger than the bank: a window of it tiled
        pos, neg = _tiled_noise_bank(round(level, 3), -(-max(w, h) // _NOISE_SIDE))
    p, n = pos[oy : oy + h, ox : ox + w], neg[oy : oy + h, ox : ox + w]
    arr = cv2.subtract(cv2.add(np.asarray(scene), p), n)
    return Image.fromarray(arr)


def jitter(rgb: RGB, r: Draws, amount: int = 10) -> RGB:
    """A colour with each channel moved by up to `amount` grey levels (stays the same name)."""
    out = []
    for c in rgb:
        v = c + r.integer(-amount, amount)
        out.append(0 if v < 0 else 255 if v > 255 else v)
    return tuple(out)  # type: ignore[return-value]


def shade(rgb: RGB, factor: float) -> RGB:
    """A darker (factor < 1) or lighter (factor > 1) version of a colour."""
    if factor <= 1:
        return tuple(int(c * factor) for c in rgb)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (factor - 1)) for c in rgb)  # type: ignore[return-value]


@dataclass
class SceneDraft:
    """What a family generator returns: the image and its ground truth, before it becomes a Task.

    Attributes:
        image: the finished RGB scene.
        question: the question shown to the model.
        objects: the objects that answer the question, in reading order.
        extra_meta: family-specific facts for `task.meta` (distractors, what was drawn, ...).
        kind: the task kind: "enumerate" (count and list the objects) or "count".
    """

    image: Image.Image
    question: str
    objects: list[GroundTruthObject]
    extra_meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "enumerate"


def in_reading_order(objects: list[GroundTruthObject]) -> list[GroundTruthObject]:
    """The objects sorted by `reading_order` of their boxes."""
    order = reading_order([o.box for o in objects])  # type: ignore[misc]
    return [objects[i] for i in order]
