"""The `clutter` family: 10-60 small similar objects on a table, touching or overlapping.

The question asks for one kind ("How many coins are there? List each one."). The task kind is
"enumerate", not "count": every object has an exact box, so a model that boxes objects one by
one can be scored on grounding as well as on the count; all items share one label (the kind).
Objects of other kinds are distractors (never objects; in `meta["distractors"]`): with
probability `distractor_similarity` a near-miss kind (a washer among coins, a button among
beads), otherwise a plainly different kind. Objects are placed in piles: most are put
against an already placed one, touching it or overlapping it as far as `overlap` allows. Holes
(beads, buttons, nuts, washers) show the table colour.
"""

from __future__ import annotations

import math

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
    in_reading_order,
    jitter,
    place_object,
    sample_angle,
    sample_size,
    shade,
    snap_side,
)
from boxgym.data.scenes.shapes import unit_polygons
from boxgym.data.task import GroundTruthObject
from boxgym.data.vocabulary import CLUTTER_KINDS, COLOURS, NEAR_MISS_KINDS

METALS: dict[str, RGB] = {
    "gold": (212, 175, 55),
    "silver": (190, 192, 200),
    "copper": (184, 115, 51),
}
BRIGHT: tuple[str, ...] = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
METALLIC_KINDS = frozenset({"coin", "nut", "washer"})
# Table tops: dark ones for metal, any for coloured objects.
DARK_TABLES: tuple[RGB, ...] = ((84, 58, 40), (46, 84, 62), (40, 40, 48))
LIGHT_TABLES: tuple[RGB, ...] = ((214, 212, 204), (232, 226, 210))
PILL_ASPECT = 2.2
# (cos, sin) along a half circle from the top to the bottom through the right: a pill's round ends.
_HALF_CIRCLE = [
    (math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, math.pi / 2, 10).tolist()
]
CLUSTER = 0.85  # fraction of placements drawn against an already placed object (piles)


def _colour_for(kind: str, r: Draws) -> tuple[str, RGB]:
    if kind in METALLIC_KINDS:
        name = "silver" if kind in ("nut", "washer") else r.choice(tuple(METALS))
        return name, jitter(METALS[name], r, 8)
    name = r.choice(BRIGHT)
    return name, jitter(COLOURS[name], r, 8)


def draw_clutter_object(
    kind: str, rgb: RGB, width: float, height: float, angle: float, table: RGB
) -> Sketch:
    """One small object of `kind` (see CLUTTER_KINDS); holes show the `table` colour."""
    sketch = Sketch(width, height, angle)
    edge = shade(rgb, 0.6)
    r = sketch.hw
    if kind == "pill":
        ry = sketch.hh
        right = [((r - ry) + ry * c, ry * s) for c, s in _HALF_CIRCLE]
        left = [(-(r - ry) - ry * c, -ry * s) for c, s in _HALF_CIRCLE]
        sketch.polygon(right + left, (245, 245, 240), outline=edge, outer=True)
        sketch.polygon([(0.0, -ry), *right, (0.0, ry)], rgb, outline=edge)
        return sketch
    if kind == "nut":
        sketch.unit(unit_polygons()["hexagon"], rgb, outline=edge, outer=True)
        sketch.circle(0, 0, 0.27 * r, table, outline=edge)
        return sketch
    sketch.circle(0, 0, r, rgb, outline=edge, outer=True)
    if kind == "coin":
        sketch.circle(0, 0, 0.75 * r, rgb, outline=edge)
        sketch.circle(-0.2 * r, -0.2 * r, 0.18 * r, shade(rgb, 1.3))
    elif kind == "washer":
        sketch.circle(0, 0, 0.42 * r, table, outline=edge)
    elif kind == "bead":
        sketch.circle(0, 0, 0.22 * r, table)
        sketch.circle(-0.45 * r, -0.45 * r, 0.14 * r, (255, 255, 255))
    elif kind == "button":
        sketch.circle(0, 0, 0.7 * r, shade(rgb, 0.85))
        for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            sketch.circle(dx * 0.25 * r, dy * 0.25 * r, max(0.5, 0.11 * r), table)
    else:
        raise ValueError(f"unknown clutter kind {kind!r}; known: {CLUTTER_KINDS}")
    return sketch


def _extent(kind: str, size: float, knobs: SceneKnobs) -> tuple[float, float]:
    if kind == "pill":
        return size, snap_side(size / PILL_ASPECT, knobs)
    return size, size


def _distractor_kind(kind: str, similarity: float, r: Draws) -> tuple[str, bool]:
    near = NEAR_MISS_KINDS[kind]
    if r.random() < similarity:
        return r.choice(near), True
    return r.choice([k for k in CLUTTER_KINDS if k != kind and k not in near]), False


def _plural(kind: str) -> str:
    return kind + "es" if kind.endswith(("s", "sh", "ch")) else kind + "s"


def generate_clutter(knobs: SceneKnobs, rng: np.random.Generator) -> SceneDraft:
    """One clutter scene with its ground truth."""
    r = Draws(rng)
    kind = knobs.kind or r.choice(CLUTTER_KINDS)
    n_targets = r.integer(*knobs.count)
    n_distractors = r.integer(*knobs.distractors)
    specs = [(kind, True, False)] * n_targets  # (kind, is_target, near_miss); targets first
    for _ in range(n_distractors):
        other, near = _distractor_kind(kind, knobs.distractor_similarity, r)
        specs.append((other, False, near))
    tables = DARK_TABLES if kind in METALLIC_KINDS else DARK_TABLES + LIGHT_TABLES
    table = jitter(r.choice(tables), r, 6)
    scene = Image.new("RGB", knobs.image_size, table)
    placer = Placer(knobs, r, cluster=CLUSTER)
    placed = []
    for k, is_target, near in specs:
        colour, rgb = _colour_for(k, r)
        angle = sample_angle(knobs, r)

        def render(size: float, k: str = k, rgb: RGB = rgb, angle: float = angle) -> Sketch:
            return draw_clutter_object(k, rgb, *_extent(k, size, knobs), angle, table)

        got = place_object(placer, render, sample_size(knobs, r), knobs)
        if got is not None:
            placed.append((got, k, is_target, near, colour, rgb, angle))

    draw = ImageDraw.Draw(scene)
    objects: list[GroundTruthObject] = []
    distractors: list[dict] = []
    for (sketch, box), k, is_target, near, colour, rgb, angle in r.shuffled(placed):
        sketch.draw(scene, draw, box)
        info = {"colour": colour, "rgb": list(rgb), "angle": round(angle, 3)}
        if is_target:
            objects.append(GroundTruthObject(box=box, label=k, attributes=info))
        else:
            distractors.append({"label": k, "box": list(box), "near_miss": near, **info})
    scene = add_noise(scene, knobs.background_noise, r)
    distractors.sort(key=lambda d: (d["box"][1], d["box"][0]))
    return SceneDraft(
        image=scene,
        question=f"How many {_plural(kind)} are there? List each one.",
        objects=in_reading_order(objects),
        extra_meta={"target": kind, "requested_count": n_targets, "distractors": distractors},
    )
