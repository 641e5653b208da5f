"""The images the `Toolbox` shows: working views with the live boxes marked, and crops.

`MarkedImages` holds one episode's images. Per task image: its original pixels, a clean working
view on the patch grid (resized once), and that view with the live marks drawn, kept current as
boxes are drawn, relabelled and removed: a new mark is painted on, an edit redraws only the
region it touches (`redraw_region`), and the result equals drawing every live mark afresh.

Every image it hands out carries its recipe (`boxgym.tools.recipes`), so storage keeps the
original once; the marked image a tool returns is a `DeferredImage`, made only when read.
Drawing primitives live in `boxgym.tools.canvas`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from boxgym.tools.canvas import (
    Mark,
    MarkDrawing,
    crop_array,
    crop_size,
    draw_marks,
    fit_to_patch_grid,
    layout_mark,
    paint_mark,
    redraw_region,
    resize_array,
    to_rgb_array,
)
from boxgym.tools.recipes import DeferredImage, with_recipe


class MarkedImages:
    """One episode's task images and the marks drawn on them.

    Marks are given in the pixels of the ORIGINAL image (`Mark.box`) with the index of the image
    they are on; they are drawn in drawing order, and a relabelled mark keeps its place.

    Args:
        mark_style: how marks look (see `boxgym.tools.canvas.MARK_STYLES`).
        max_image_pixels / min_image_pixels: area bounds of the working views (patch grid).
        crop_min_side / crop_max_pixels: upscaling target and area cap of crops.
    """

    def __init__(
        self,
        *,
        mark_style: str,
        max_image_pixels: int,
        min_image_pixels: int,
        crop_min_side: int,
        crop_max_pixels: int,
    ) -> None:
        self._mark_style = mark_style
        self._max_image_pixels = max_image_pixels
        self._min_image_pixels = min_image_pixels
        self._crop_min_side = crop_min_side
        self._crop_max_pixels = crop_max_pixels
        self.originals: list[np.ndarray] = []  # (H, W, 3) uint8 of each original image
        self.sizes: list[tuple[int, int]] = []  # original (width, height)
        self.views: list[Image.Image] = []  # clean working images, on the patch grid
        self._marked: list[Image.Image] = []  # working images with the live marks drawn
        # Per live mark, by box id in drawing order: its image, the mark in original pixels,
        # and where it lies on its working image (laid out once, when drawn or relabelled).
        self._marks: dict[int, tuple[int, Mark, MarkDrawing | None]] = {}

    def load(self, images: Sequence[Image.Image]) -> None:
        """Take an episode's images (resizing each to its working view) and clear all marks."""
        self.originals = [to_rgb_array(im) for im in images]
        self.sizes = [(a.shape[1], a.shape[0]) for a in self.originals]
        self.views = []
        for array, (w, h) in zip(self.originals, self.sizes):
            size = fit_to_patch_grid(w, h, self._min_image_pixels, self._max_image_pixels)
            view = Image.fromarray(resize_array(array, size))
            self.views.append(with_recipe(view, len(self.views), (w, h), None, []))
        self._marked = [view.copy() for view in self.views]
        for marked in self._marked:
            marked.info.clear()  # drawn on: its recipe is made when it is shown
        self._marks = {}

    def working_mark(self, index: int, mark: Mark) -> Mark:
        """`mark` (in original pixels of image `index`) in the pixels of its working view."""
        w, h = self.sizes[index]
        vw, vh = self.views[index].size
        sx, sy = vw / w, vh / h
        p = mark.box
        return Mark(mark.box_id, mark.label, (p[0] * sx, p[1] * sy, p[2] * sx, p[3] * sy))

    def draw(self, index: int, mark: Mark) -> None:
        """Add a new mark to image `index` and paint it on the marked view."""
        drawing = self._lay_out(index, mark)
        if drawing is not None:
            paint_mark(ImageDraw.Draw(self._marked[index]), drawing)

    def relabel(self, index: int, mark: Mark) -> None:
        """Replace the live mark with `mark.box_id` (new label, same place in the order)."""
        old = self._marks[mark.box_id][2]
        new = self._lay_out(index, mark)
        self._redraw(index, old and old.extent, new and new.extent)

    def remove(self, box_id: int) -> None:
        """Take the live mark `box_id` off its image."""
        index, _, old = self._marks.pop(box_id)
        self._redraw(index, old and old.extent)

    def marked_copy(self, index: int) -> Image.Image:
        """A copy of working image `index` with the live marks drawn."""
        return self._marked[index].copy()

    def show_marked(self, index: int) -> Image.Image:
        """Working image `index` as it is now, with its recipe; its pixels are made when read."""
        marks = [(i, m, d) for i, m, d in self._marks.values() if i == index]
        boxes = [[m.box_id, m.label, *m.box] for _, m, _ in marks]
        view = self.views[index]
        drawings = [d for _, _, d in marks if d is not None]

        def make() -> Image.Image:
            marked = view.copy()
            draw = ImageDraw.Draw(marked)
            for drawing in drawings:
                paint_mark(draw, drawing)
            return marked

        image = DeferredImage(view.size, make)
        return with_recipe(image, index, self.sizes[index], None, boxes)

    def crop(self, index: int, region: tuple[float, ...], show_marks: bool) -> Image.Image:
        """`region` (original pixels) of image `index`, upscaled, with the marks reaching it."""
        x1, y1, x2, y2 = region
        size = crop_size(
            x2 - x1, y2 - y1, self._crop_min_side, self._crop_max_pixels, self._min_image_pixels
        )
        image = Image.fromarray(crop_array(self.originals[index], (x1, y1, x2, y2), size))
        shown = (
            [
                m
                for i, m, _ in self._marks.values()
                if i == index
                and m.box[0] < x2
                and m.box[2] > x1
                and m.box[1] < y2
                and m.box[3] > y1
            ]
            if show_marks
            else []
        )
        sx, sy = size[0] / (x2 - x1), size[1] / (y2 - y1)
        draw_marks(
            image,
            [
                Mark(
                    m.box_id,
                    m.label,
                    (
                        (m.box[0] - x1) * sx,
                        (m.box[1] - y1) * sy,
                        (m.box[2] - x1) * sx,
                        (m.box[3] - y1) * sy,
                    ),
                )
                for m in shown
            ],
            style=self._mark_style,
        )
        boxes = [[m.box_id, m.label, *m.box] for m in shown]
        with_recipe(image, index, self.sizes[index], (x1, y1, x2, y2), boxes)
        return image

    def _lay_out(self, index: int, mark: Mark) -> MarkDrawing | None:
        """Store `mark` with the layout of its mark on its working view; that layout."""
        drawing = layout_mark(
            self.working_mark(index, mark), self.views[index].size, style=self._mark_style
        )
        self._marks[mark.box_id] = (index, mark, drawing)
        return drawing

    def _redraw(self, index: int, *regions: tuple[int, int, int, int] | None) -> None:
        """Redraw the union of `regions` of working image `index` from its clean view.

        Only the marks reaching that rectangle are drawn again (`redraw_region`), so an edit
        costs what the marks near it cost; the result is what redrawing every mark gives.
        """
        boxes = [r for r in regions if r is not None]
        if not boxes:
            return
        union = (
            min(r[0] for r in boxes),
            min(r[1] for r in boxes),
            max(r[2] for r in boxes),
            max(r[3] for r in boxes),
        )
        drawings = (d for i, _, d in self._marks.values() if d is not None and i == index)
        redraw_region(self._marked[index], self.views[index], drawings, union)
