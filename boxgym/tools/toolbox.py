"""The `Toolbox`: the tools the model calls, and the per-episode state they act on.

The public methods of `Toolbox` ARE the tools (`draw_box`, `crop`, `label`, `remove_box`,
`answer`): their type hints and Google docstrings are what the JSON schemas shown to the model
are derived from (`boxgym.tools.schema`), and TRL's `environment_factory` treats every public
method as a tool. So the class has no other public methods, and no attribute shadows a tool;
state is private, read through properties and underscore methods.

Every tool returns a list of content blocks, `[{"type": "text", "text": ...}, {"type": "image",
"image": PIL}?]`: the text first, so an image a tool returns is the last thing before the model's
next reply, at the same distance from it whatever the text says. Invalid arguments return one
text block starting "Error: " that says what was wrong and how to fix it; no tool raises.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from boxgym.tools.arguments import ToolArgumentError, as_answer, as_box, as_integer, as_label
from boxgym.tools.canvas import MARK_STYLES, PATCH, Mark
from boxgym.tools.frames import check_frame, far_edge_note, shown_in_frame
from boxgym.tools.marked_images import MarkedImages

TOOL_NAMES: tuple[str, ...] = ("draw_box", "crop", "label", "remove_box", "answer")
DRAW_BOX_RETURNS: tuple[str, ...] = ("image", "crop", "both", "text")

DEFAULT_MAX_IMAGE_PIXELS = 1024 * PATCH * PATCH  # 1024 image tokens (a 1024x1024 image -> 896x896)
DEFAULT_MIN_IMAGE_PIXELS = 4 * PATCH * PATCH
DEFAULT_CROP_MIN_SIDE = 224  # a crop's short side is upscaled to at least 8 patches
DEFAULT_CROP_MAX_PIXELS = 256 * PATCH * PATCH  # at most 256 image tokens per crop
CROP_MARGIN = 0.15  # context around a box in draw_box's crop, as a fraction of its sides

Blocks = list[dict[str, Any]]


@dataclass(frozen=True)
class DrawnBox:
    """A box the model drew. `pixels` are in the ORIGINAL image, clipped to it."""

    box_id: int
    label: str
    image: int
    pixels: tuple[float, float, float, float]

    @property
    def mark(self) -> Mark:
        """The box as a mark in the pixels of its original image."""
        return Mark(self.box_id, self.label, self.pixels)

    def to_json(self, frame: str, image_size: tuple[int, int]) -> dict[str, Any]:
        return {
            "id": self.box_id,
            "label": self.label,
            "image": self.image,
            "box": shown_in_frame(self.pixels, frame, image_size),
            "pixels": [round(v, 2) for v in self.pixels],
        }


def _text(message: str) -> Blocks:
    return [{"type": "text", "text": message}]


def _image(image: Image.Image) -> dict[str, Any]:
    return {"type": "image", "image": image}


class Toolbox:
    """Image tools over one episode's images: draw numbered boxes, crop, relabel, remove, answer.

    Args:
        images: the task's original images (1 or 2); `None` starts empty (load with `_start`).
        kind: the task kind ("enumerate", "count", "verify", "point"), which decides what
            `answer` requires; None accepts any answer field.
        coordinate_frame: "qwen" (integers 0-1000), "pixels" or "unit" (0-1).
        draw_box_returns: what `draw_box` shows: "image" (the marked-up working image), "crop"
            (the box's region, upscaled), "both", or "text".
        crop_shows_boxes: whether crops show the boxes drawn so far.
        mark_style: how boxes are drawn on images: "tag" (numbered, labelled outlines), "outline"
            or "fill" (see `boxgym.tools.canvas.MARK_STYLES`).
        box_count_text: whether draw_box and remove_box say the box's number and "N boxes so
            far"; off, the text names the box's label and place only, so what the model knows
            of its count comes from the marks.
        max_boxes: the most boxes alive at once.
        max_image_pixels / min_image_pixels: area bounds of the working images (patch grid).
        crop_min_side / crop_max_pixels: upscaling target and area cap of crops (the smaller of
            crop_max_pixels and max_image_pixels applies).
    """

    def __init__(
        self,
        images: list[Image.Image] | None = None,
        *,
        kind: str | None = None,
        coordinate_frame: str = "qwen",
        draw_box_returns: str = "image",
        crop_shows_boxes: bool = True,
        mark_style: str = "tag",
        box_count_text: bool = True,
        max_boxes: int = 100,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        min_image_pixels: int = DEFAULT_MIN_IMAGE_PIXELS,
        crop_min_side: int = DEFAULT_CROP_MIN_SIDE,
        crop_max_pixels: int = DEFAULT_CROP_MAX_PIXELS,
    ) -> None:
        if draw_box_returns not in DRAW_BOX_RETURNS:
            raise ValueError(
                f"draw_box_returns must be one of {DRAW_BOX_RETURNS}, got {draw_box_returns!r}"
            )
        if mark_style not in MARK_STYLES:
            raise ValueError(f"mark_style must be one of {MARK_STYLES}, got {mark_style!r}")
        if not isinstance(box_count_text, bool):
            raise ValueError(f"box_count_text must be True or False, got {box_count_text!r}")
        if not isinstance(crop_shows_boxes, bool):
            raise ValueError(
                f"crop_shows_boxes must be True or False, got {crop_shows_boxes!r} "
                f"({type(crop_shows_boxes).__name__})"
            )
        limits = {
            "max_boxes": max_boxes,
            "max_image_pixels": max_image_pixels,
            "min_image_pixels": min_image_pixels,
            "crop_min_side": crop_min_side,
            "crop_max_pixels": crop_max_pixels,
        }
        for name, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._frame = check_frame(coordinate_frame)  # how the model writes coordinates
        self._draw_box_returns = draw_box_returns  # what draw_box shows
        self._crop_shows_boxes = crop_shows_boxes
        self._box_count_text = box_count_text  # whether texts give the box number and count
        self._max_boxes = max_boxes
        self._kind = kind
        # The working images with the live boxes marked, and the crops. A crop is an image
        # shown like any other, so the image cap bounds it too.
        self._images = MarkedImages(
            mark_style=mark_style,
            max_image_pixels=max_image_pixels,
            min_image_pixels=min_image_pixels,
            crop_min_side=crop_min_side,
            crop_max_pixels=min(crop_max_pixels, max_image_pixels),
        )
        self._sizes: list[tuple[int, int]] = []  # original (width, height)
        self._boxes: dict[int, DrawnBox] = {}  # live boxes by id, in drawing order
        # Per live box, its `info` JSON, made once when it is drawn or relabelled.
        self._box_json: dict[int, dict[str, Any]] = {}
        self._next_id = 1
        self._answer: dict[str, Any] | None = None
        self._tool_images = 0  # images handed back by draw_box/crop (for the tool bonus)
        if images is not None:
            self._start(images, kind=kind)

    # ----------------------------------------------------------------- state (not tools)

    def _start(self, images: list[Image.Image], kind: str | None = None) -> None:
        """Load an episode's images and clear all boxes and the answer."""
        if not 1 <= len(images) <= 2:
            raise ValueError(f"a Toolbox takes 1 or 2 images, got {len(images)}")
        self._kind = kind
        self._images.load(images)
        self._sizes = list(self._images.sizes)
        self._boxes = {}
        self._box_json = {}
        self._next_id = 1
        self._answer = None
        self._tool_images = 0

    @property
    def boxes(self) -> list[DrawnBox]:
        """The live boxes, in drawing order."""
        return list(self._boxes.values())

    @property
    def final_answer(self) -> dict[str, Any] | None:
        """The answer given, in `Task.answer` form (points in pixels of image 0), or None."""
        return None if self._answer is None else copy.deepcopy(self._answer)

    @property
    def answered(self) -> bool:
        return self._answer is not None

    @property
    def view_images(self) -> list[Image.Image]:
        """The clean working images shown to the model (sides multiples of 28)."""
        return list(self._images.views)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of each original image."""
        return list(self._sizes)

    @property
    def coordinate_frame(self) -> str:
        return self._frame

    @property
    def tool_images_returned(self) -> int:
        return self._tool_images

    def _marked_image(self, index: int = 0) -> Image.Image:
        """A copy of working image `index` with the live boxes drawn."""
        return self._images.marked_copy(index)

    @property
    def box_count(self) -> int:
        """How many boxes are live."""
        return len(self._boxes)

    def _boxes_json(self) -> list[dict[str, Any]]:
        """The live boxes as `info` shows them: fresh copies of JSON made once per box."""
        return [
            {**b, "box": list(b["box"]), "pixels": list(b["pixels"])}
            for b in self._box_json.values()
        ]

    def _set_box(self, box: DrawnBox) -> None:
        """Store a new or relabelled box with its JSON."""
        self._boxes[box.box_id] = box
        self._box_json[box.box_id] = box.to_json(self._frame, self._sizes[box.image])

    def _call(self, name: str, arguments: Any) -> tuple[Blocks, bool]:
        """Run tool `name` with a dict of `arguments`, checking names first; (blocks, ok)."""
        if name not in TOOL_NAMES:
            return _text(
                f"Error: unknown tool {name!r}; the tools are {', '.join(TOOL_NAMES)}."
            ), False
        if not isinstance(arguments, dict):
            return _text(
                f"Error: {name} arguments must be a JSON object, got {type(arguments).__name__}."
            ), False
        params = _PARAMS[name]
        extra = [k for k in arguments if k not in params]
        if extra:
            return _text(
                f"Error: {name} got unknown argument(s) {', '.join(map(str, extra))}; "
                f"it takes {', '.join(params)}."
            ), False
        missing = [k for k in _REQUIRED[name] if k not in arguments]
        if missing:
            return _text(
                f"Error: {name} is missing required argument(s) {', '.join(missing)}."
            ), False
        blocks = getattr(self, name)(**arguments)
        ok = not (blocks and blocks[-1].get("text", "").startswith("Error:"))
        return blocks, ok

    def _run(self, name: str, body: Any, *args: Any) -> Blocks:
        if not self._sizes:
            return _text("Error: no image is loaded yet.")
        if self._answer is not None:
            return _text("Error: the answer was already given; the episode is over.")
        try:
            return body(*args)
        except ToolArgumentError as error:
            return _text(f"Error: {error}")
        except Exception as error:  # a tool must never raise into the env or the trainer
            return _text(
                f"Error: {name} failed on these arguments ({type(error).__name__}: {error})."
            )

    def _image_index(self, image: Any) -> int:
        index = as_integer("image", image)
        if not 0 <= index < len(self._sizes):
            choices = "0" if len(self._sizes) == 1 else "0 or 1"
            raise ToolArgumentError(f"image must be {choices}, got {index}")
        return index

    def _show_marked(self, index: int) -> dict[str, Any]:
        """The marked working image `index` as a tool's image block (counted as shown)."""
        self._tool_images += 1
        return _image(self._images.show_marked(index))

    def _box_summary(self) -> str:
        """ " N boxes so far." (with its leading space), or "" when `box_count_text` is off."""
        if not self._box_count_text:
            return ""
        n = len(self._boxes)
        return f" {n} box{'es' if n != 1 else ''} so far."

    # ----------------------------------------------------------------------------- tools

    def draw_box(
        self, x1: float, y1: float, x2: float, y2: float, label: str, image: int = 0
    ) -> list[dict]:
        """Draw a numbered, labelled box around one object, to keep track of the objects found so far.

        Coordinates are in the frame given in the instructions (by default integers from 0 to 1000,
        relative to the image's width and height), with (x1, y1) the top-left corner.

        Args:
            x1: Left edge of the box.
            y1: Top edge of the box.
            x2: Right edge of the box (greater than x1).
            y2: Bottom edge of the box (greater than y1).
            label: What the object is, in a few words, e.g. "red triangle" or "screen showing 7".
            image: Which image the box is on: 0 for the first image, 1 for the second.

        Returns:
            The new box's number and, depending on the environment, the marked-up image and/or a zoomed crop of the box.
        """

        def body() -> Blocks:
            index = self._image_index(image)
            text = as_label("label", label)
            pixels = as_box((x1, y1, x2, y2), self._frame, self._sizes[index])
            if len(self._boxes) >= self._max_boxes:
                raise ToolArgumentError(
                    f"there are already {self._max_boxes} boxes, the most allowed; "
                    "remove_box a wrong one or answer"
                )
            box = DrawnBox(self._next_id, text, index, pixels)
            self._set_box(box)
            self._images.draw(index, box.mark)
            self._next_id += 1
            shown = self._box_json[box.box_id]["box"]
            number = f" {box.box_id}" if self._box_count_text else ""
            message = (
                f'Box{number} "{text}" drawn at ({", ".join(f"{v:g}" for v in shown)})'
                f"{' on image 1' if index else ''}{far_edge_note(self._frame, shown)}."
                f"{self._box_summary()}"
            )
            blocks: Blocks = [{"type": "text", "text": message}]
            if self._draw_box_returns in ("image", "both"):
                blocks.append(self._show_marked(index))
            if self._draw_box_returns in ("crop", "both"):
                w, h = self._sizes[index]
                mx, my = (
                    (pixels[2] - pixels[0]) * CROP_MARGIN,
                    (pixels[3] - pixels[1]) * CROP_MARGIN,
                )
                region = (
                    max(0.0, pixels[0] - mx),
                    max(0.0, pixels[1] - my),
                    min(float(w), pixels[2] + mx),
                    min(float(h), pixels[3] + my),
                )
                blocks.append(_image(self._images.crop(index, region, self._crop_shows_boxes)))
                self._tool_images += 1
            return blocks

        return self._run("draw_box", body)

    def crop(self, x1: float, y1: float, x2: float, y2: float, image: int = 0) -> list[dict]:
        """Zoom into a region of an image: returns that region enlarged, to look at small objects closely.

        Coordinates are in the same frame as draw_box, with (x1, y1) the top-left corner.

        Args:
            x1: Left edge of the region.
            y1: Top edge of the region.
            x2: Right edge of the region (greater than x1).
            y2: Bottom edge of the region (greater than y1).
            image: Which image to crop: 0 for the first image, 1 for the second.

        Returns:
            The enlarged region (with the boxes drawn so far, if the environment shows them) and a short description.
        """

        def body() -> Blocks:
            index = self._image_index(image)
            region = as_box((x1, y1, x2, y2), self._frame, self._sizes[index])
            picture = self._images.crop(index, region, self._crop_shows_boxes)
            self._tool_images += 1
            return [
                {
                    "type": "text",
                    "text": f"Crop of image {index}, enlarged to {picture.size[0]}x{picture.size[1]}.",
                },
                _image(picture),
            ]

        return self._run("crop", body)

    def label(self, box_id: int, label: str) -> list[dict]:
        """Change the label of a box drawn earlier.

        Args:
            box_id: The number of the box, as returned by draw_box.
            label: The new label, e.g. "blue square".

        Returns:
            A confirmation, with the marked-up image if the environment shows it.
        """

        def body() -> Blocks:
            box = self._box(box_id)
            text = as_label("label", label)
            relabelled = DrawnBox(box.box_id, text, box.image, box.pixels)
            self._set_box(relabelled)
            self._images.relabel(box.image, relabelled.mark)
            return self._after_edit(box.image, f'Box {box.box_id} is now labelled "{text}".')

        return self._run("label", body)

    def remove_box(self, box_id: int) -> list[dict]:
        """Remove a box drawn earlier (for a duplicate or a mistake). Other boxes keep their numbers.

        Args:
            box_id: The number of the box to remove, as returned by draw_box.

        Returns:
            A confirmation, with the marked-up image if the environment shows it.
        """

        def body() -> Blocks:
            box = self._box(box_id)
            del self._boxes[box.box_id], self._box_json[box.box_id]
            self._images.remove(box.box_id)
            return self._after_edit(box.image, f"Box {box.box_id} removed.{self._box_summary()}")

        return self._run("remove_box", body)

    def answer(
        self,
        count: int | None = None,
        items: list[str] | None = None,
        value: bool | None = None,
        x: float | None = None,
        y: float | None = None,
    ) -> list[dict]:
        """Give the final answer and end the episode. Fill in the fields the question asks for.

        Args:
            count: How many objects there are (for counting questions).
            items: One short label per object, e.g. ["red triangle", "blue circle"] (for questions that ask to list the objects).
            value: True or False (for questions that ask whether a statement is true).
            x: Horizontal coordinate of the point asked for, in the same frame as draw_box (for pointing questions).
            y: Vertical coordinate of the point asked for, in the same frame as draw_box (for pointing questions).

        Returns:
            A confirmation of the recorded answer.
        """

        def body() -> Blocks:
            given = {
                k: v
                for k, v in (
                    ("count", count),
                    ("items", items),
                    ("value", value),
                    ("x", x),
                    ("y", y),
                )
                if v is not None
            }
            result = as_answer(self._kind, given, self._frame, self._sizes[0])
            self._answer = result
            # Echo what was recorded (count 3.0 -> 3), the point back in the model's frame.
            recorded = {k: v for k, v in result.items() if k != "point"}
            note = ""
            if "point" in result:
                point = shown_in_frame(tuple(result["point"]), self._frame, self._sizes[0])
                recorded.update(x=point[0], y=point[1])
                note = far_edge_note(self._frame, point)
            shown = json.dumps(recorded)
            return _text(f"Answer recorded: {shown}{note}. The episode is over.")

        return self._run("answer", body)

    # ------------------------------------------------------------------ tool helpers

    def _box(self, box_id: Any) -> DrawnBox:
        number = as_integer("box_id", box_id)
        if number not in self._boxes:
            live = ", ".join(str(i) for i in self._boxes) or "none"
            raise ToolArgumentError(f"there is no box {number}; the boxes are: {live}")
        return self._boxes[number]

    def _after_edit(self, index: int, message: str) -> Blocks:
        if self._draw_box_returns in ("image", "both"):
            return [{"type": "text", "text": message}, self._show_marked(index)]
        return _text(message)


# Parameter names and required parameters of each tool, from the signatures (for `_call`).
def _signature_tables() -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    import inspect

    params: dict[str, tuple[str, ...]] = {}
    required: dict[str, tuple[str, ...]] = {}
    for name in TOOL_NAMES:
        signature = inspect.signature(getattr(Toolbox, name))
        names = [p for p in signature.parameters if p != "self"]
        params[name] = tuple(names)
        required[name] = tuple(
            p for p in names if signature.parameters[p].default is inspect.Parameter.empty
        )
    return params, required


_PARAMS, _REQUIRED = _signature_tables()
