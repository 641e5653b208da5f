"""The `shapes` family: coloured geometric shapes and "How many red triangles? List them."

Only the shapes that match both the asked colour and the asked shape are objects (label e.g.
"red triangle"). The others are distractors, recorded in `meta["distractors"]`: with probability
`distractor_similarity` a near miss (the same shape in a near-miss colour such as orange for
red, or the same colour in a near-miss shape such as a pentagon for a triangle), otherwise a
plainly different one (a far colour, or the same colour in a far shape).

`unit_polygons` is also used by the screens and clutter families.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from boxgym.data.scenes.knobs import SceneKnobs
from boxgym.data.scenes.layout import (
    RGB,
    Draws,
    Placer,
    SceneDraft,
    Sketch,
    add_noise,
    fit_unit,
    in_reading_order,
    jitter,
    place_object,
    regular_polygon,
    sample_angle,
    sample_size,
    shade,
    snap_side,
)
from boxgym.data.task import GroundTruthObject
from boxgym.data.vocabulary import (
    COLOURS,
    NEAR_MISS_COLOURS,
    NEAR_MISS_SHAPES,
    SHAPES,
    shape_label,
)

# White is left out: it vanishes on the light backgrounds.
SHAPE_COLOURS: tuple[str, ...] = tuple(c for c in COLOURS if c != "white")
BACKGROUNDS: tuple[RGB, ...] = ((246, 244, 236), (234, 238, 244), (240, 233, 220), (228, 234, 228))
RECTANGLE_ASPECT = 1.7  # a rectangle's width / height: clearly not a square at any size


@lru_cache(maxsize=1)
def unit_polygons() -> dict[str, np.ndarray]:
    """Each polygonal shape as points filling the unit box [-0.5, 0.5]^2."""
    t = 0.17  # half the thickness of a cross's arms
    cross = np.array(
        [
            [-t, -0.5],
            [t, -0.5],
            [t, -t],
            [0.5, -t],
            [0.5, t],
            [t, t],
            [t, 0.5],
            [-t, 0.5],
            [-t, t],
            [-0.5, t],
            [-0.5, -t],
            [-t, -t],
        ]
    )
    square = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    return {
        "square": square,
        "rectangle": square,
        "triangle": regular_polygon(3),
        "pentagon": regular_polygon(5),
        "hexagon": regular_polygon(6),
        "star": regular_polygon(5, star=True, inner=0.45),
        "cross": fit_unit(cross),
    }


def plural(shape: str) -> str:
    return shape + "es" if shape.endswith(("s", "x", "ch", "sh")) else shape + "s"


def draw_shape(shape: str, rgb: RGB, width: float, height: float, angle: float = 0.0) -> Sketch:
    """One filled shape of `width` x `height` px (before rotation by `angle`), darker outline."""
    sketch = Sketch(width, height, angle)
    edge = shade(rgb, 0.65)
    if shape == "circle":
        sketch.circle(0.0, 0.0, sketch.hw, rgb, outline=edge, outer=True)
    else:
        sketch.unit(unit_polygons()[shape], rgb, outline=edge, outer=True)
    return sketch


def shape_extent(shape: str, size: float, knobs: SceneKnobs) -> tuple[float, float]:
    """Width and height in px of a shape whose longer side is `size` px."""
    if shape == "rectangle":
        return size, snap_side(size / RECTANGLE_ASPECT, knobs)
    return size, size


def _distractor(target: tuple[str, str], similarity: float, r: Draws) -> tuple[str, str, bool]:
    """(colour, shape, near_miss) of one distractor; never the target combination."""
    colour, shape = target
    near_colours = [c for c in NEAR_MISS_COLOURS[colour] if c in SHAPE_COLOURS]
    if r.random() < similarity:
        if near_colours and r.random() < 0.5:
            return r.choice(near_colours), shape, True
        return colour, r.choice(NEAR_MISS_SHAPES[shape]), True
    if r.random() < 0.5:
        far = [c for c in SHAPE_COLOURS if c != colour and c not in near_colours]
        return r.choice(far), r.choice(SHAPES), False
    far_shapes = [s for s in SHAPES if s != shape and s not in NEAR_MISS_SHAPES[shape]]
    return colour, r.choice(far_shapes), False


def generate_shapes(knobs: SceneKnobs, rng: np.random.Generator) -> SceneDraft:
    """One shapes scene: the targets, the distractors, the question and its ground truth."""
    r = Draws(rng)
    colour = r.choice(SHAPE_COLOURS)
    shape = r.choice(SHAPES)
    n_targets = r.integer(*knobs.count)
    n_distractors = r.integer(*knobs.distractors)
    specs = [(colour, shape, True, False)] * n_targets  # targets first: they get the room
    for _ in range(n_distractors):
        c, s, near = _distractor((colour, shape), knobs.distractor_similarity, r)
        specs.append((c, s, False, near))

    placer = Placer(knobs, r)
    scene = Image.new("RGB", knobs.image_size, r.choice(BACKGROUNDS))
    placed = []
    for c, s, is_target, near in specs:
        rgb = jitter(COLOURS[c], r, 8)
        angle = sample_angle(knobs, r)

        def render(size: float, s: str = s, rgb: RGB = rgb, angle: float = angle) -> Sketch:
            return draw_shape(s, rgb, *shape_extent(s, size, knobs), angle)

        got = place_object(placer, render, sample_size(knobs, r), knobs)
        if got is not None:
            placed.append((got, c, s, is_target, near, rgb, angle))

    draw = ImageDraw.Draw(scene)
    objects: list[GroundTruthObject] = []
    distractors: list[dict] = []
    for (sketch, box), c, s, is_target, near, rgb, angle in r.shuffled(placed):
        sketch.draw(scene, draw, box)  # random order: targets are not always on top
        info = {"colour": c, "shape": s, "rgb": list(rgb), "angle": round(angle, 3)}
        if is_target:
            objects.append(GroundTruthObject(box=box, label=shape_label(c, s), attributes=info))
        else:
            distractors.append(
                {"label": shape_label(c, s), "box": list(box), "near_miss": near, **info}
            )
    scene = add_noise(scene, knobs.background_noise, r)
    distractors.sort(key=lambda d: (d["box"][1], d["box"][0]))
    question = f"How many {colour} {plural(shape)} are there? List them."
    if knobs.question == "count":
        question = "How many shapes are there?"
    return SceneDraft(
        image=scene,
        question=question,
        kind="enumerate" if knobs.question == "list" else "count",
        objects=in_reading_order(objects),
        extra_meta={
            "target": {"colour": colour, "shape": shape},
            "requested_count": n_targets,
            "distractors": distractors,
        },
    )
