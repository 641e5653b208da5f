"""Image recipes: how each image the `Toolbox` shows is made from the task's original image.

Every image a tool returns (and every working view of a task image) is a deterministic function
of one original image: resize it (a view) or cut and resize a region (a crop), then draw
numbered boxes. The Toolbox attaches that recipe to the image it returns, in `image.info`
under `RECIPE_KEY`, so storage can keep the original once and the recipe instead of encoding
every tool image, and `render_recipe` rebuilds the exact pixels when they are needed:

    {"source": 0,                      # index of the task image it is made from
     "source_size": [w, h],            # that original's size
     "region": [x1, y1, x2, y2] | None,  # the crop in original pixels; None: the whole image
     "size": [w, h],                   # the size shown to the model
     "boxes": [[id, label, x1, y1, x2, y2], ...]}  # the marks drawn, in original pixels

A recipe is JSON data; `image.info` travels with `Image.copy()` and is ignored by every
processor and encoder the project uses.

`DeferredImage` is a PIL image whose pixels are made only when something reads them: the
marked-up image a tool returns is one, so an episode whose policy never looks at its images
(a scripted one) never copies them, and one that does pays for each image once, when read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from boxgym.tools.canvas import Mark, crop_array, draw_marks, resize_array, to_rgb_array

RECIPE_KEY = "boxgym_recipe"


def image_recipe(image: Any) -> dict[str, Any] | None:
    """The recipe attached to a PIL image by the Toolbox, or None."""
    info = getattr(image, "info", None)
    recipe = info.get(RECIPE_KEY) if isinstance(info, dict) else None
    return recipe if isinstance(recipe, dict) else None


def with_recipe(
    image: Image.Image,
    source: int,
    source_size: tuple[int, int],
    region: tuple[float, float, float, float] | None,
    boxes: list[list[Any]],
) -> Image.Image:
    """Attach a recipe to `image` (in place) and return it."""
    image.info[RECIPE_KEY] = {
        "source": source,
        "source_size": list(source_size),
        "region": None if region is None else list(region),
        "size": list(image.size),
        "boxes": boxes,
    }
    return image


def render_recipe(
    original: Image.Image,
    recipe: dict[str, Any],
    views: dict[tuple[int, int], Image.Image] | None = None,
) -> Image.Image:
    """The image a recipe describes, rebuilt from its original: the Toolbox's exact pixels.

    `views` (a dict the caller keeps per original) caches the unmarked whole-image view at each
    size, so rebuilding many marked views of one original resizes it once.
    """
    width, height = recipe["size"]
    region = recipe.get("region")
    if region is None:
        view = views.get((width, height)) if views is not None else None
        if view is None:
            view = Image.fromarray(resize_array(to_rgb_array(original), (width, height)))
            if views is not None:
                views[(width, height)] = view
        image = view.copy()
        x1, y1 = 0.0, 0.0
        sx, sy = width / original.size[0], height / original.size[1]
    else:
        array = to_rgb_array(original)
        x1, y1, x2, y2 = region
        image = Image.fromarray(crop_array(array, (x1, y1, x2, y2), (width, height)))
        sx, sy = width / (x2 - x1), height / (y2 - y1)
    marks = [
        Mark(int(i), str(label), ((a - x1) * sx, (b - y1) * sy, (c - x1) * sx, (d - y1) * sy))
        for i, label, a, b, c, d in recipe.get("boxes") or []
    ]
    draw_marks(image, marks)
    return image


class DeferredImage(Image.Image):
    """An RGB image of `size` whose pixels `make()` returns when they are first needed.

    Every PIL operation reaches the pixels through `Image.im` (directly or after `load()`),
    so that is where they are made; `size`, `mode` and `info` (the recipe) need no pixels.
    `make` must return an image of this size and mode, the same whenever it is called.
    """

    _make: Callable[[], Image.Image] | None = None

    def __init__(self, size: tuple[int, int], make: Callable[[], Image.Image]) -> None:
        super().__init__()
        self._mode = "RGB"
        self._size = (int(size[0]), int(size[1]))
        self._make = make

    @property  # type: ignore[override]
    def im(self) -> Any:
        if self._im is None and self._make is not None:
            made = self._make()
            if made.size != self.size or made.mode != self.mode:
                raise ValueError(
                    f"a deferred {self.mode} {self.size} image made {made.mode} {made.size}"
                )
            self._im, self._make = made.im, None
        return self._im

    @im.setter
    def im(self, im: Any) -> None:
        self._im = im

    def load(self) -> Any:
        self.im  # noqa: B018 - make the pixels
        return super().load()
