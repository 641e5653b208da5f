"""The `screens` family: a wall with TV and monitor screens, and "what does each one show?".

Every screen is an object. Its box is the whole unit (bezel included), its label the canonical
description of what it shows: "red circle", "word cat", "digit 7", "icon heart", or "off" for a
switched-off screen (black glass with a reflection and a red standby light). Screens that are on
show distinct contents. Look-alike distractors are never objects; they are listed in
`meta["distractors"]`: picture frames (a landscape behind a mat in a wooden frame, or at high
`distractor_similarity` a dark bezel-like frame, a thin mat and a flat picture of a shape) and
windows (sky panes, or dark night panes with stars at high similarity; always a light sash and
muntins).
"""

from __future__ import annotations

import math
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
    font,
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
from boxgym.data.vocabulary import (
    COLOURS,
    DIGITS,
    ICONS,
    OFF,
    SCREEN_SHAPE_COLOURS,
    SCREEN_SHAPES,
    SCREEN_WORDS,
)

WALLS: tuple[RGB, ...] = (
    (226, 216, 198),
    (206, 218, 226),
    (222, 222, 216),
    (200, 212, 192),
    (236, 230, 222),
)
FLOORS: tuple[RGB, ...] = ((150, 110, 70), (120, 90, 60), (170, 160, 150))
DARK_DISPLAY: RGB = (14, 16, 24)
SLATE_DISPLAY: RGB = (44, 52, 72)
LIGHT_DISPLAY: RGB = (226, 236, 246)  # backlit white
OFF_DISPLAY: RGB = (9, 9, 11)
ASPECTS: tuple[float, ...] = (16 / 9, 16 / 10, 4 / 3)
ICON_COLOURS: dict[str, str] = {
    "heart": "red",
    "arrow": "blue",
    "check": "green",
    "house": "orange",
    "lightning": "yellow",
    "sun": "yellow",
    "moon": "yellow",
    "smiley": "yellow",
}
CONTENT_KINDS: tuple[str, ...] = ("shape", "word", "digit", "icon")
QUESTION = (
    "How many TV or monitor screens are in this picture? List what each screen shows, in "
    'reading order (top to bottom, left to right); say "off" for a screen that is switched off.'
)


@lru_cache(maxsize=1)
def icon_polygons() -> dict[str, np.ndarray]:
    """The polygonal icons, each filling the unit box."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    heart = np.stack(
        [
            16 * np.sin(t) ** 3,
            -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)),
        ],
        axis=1,
    )
    arrow = [
        (-0.5, -0.16),
        (0.08, -0.16),
        (0.08, -0.45),
        (0.5, 0),
        (0.08, 0.45),
        (0.08, 0.16),
        (-0.5, 0.16),
    ]
    house = [
        (0, -0.5),
        (0.5, -0.02),
        (0.36, -0.02),
        (0.36, 0.5),
        (-0.36, 0.5),
        (-0.36, -0.02),
        (-0.5, -0.02),
    ]
    bolt = [(0.12, -0.5), (-0.38, 0.08), (-0.03, 0.08), (-0.16, 0.5), (0.38, -0.1), (0.03, -0.1)]
    check = [(-0.5, 0.02), (-0.32, -0.16), (-0.1, 0.1), (0.32, -0.5), (0.5, -0.32), (-0.1, 0.48)]
    return {
        "heart": fit_unit(heart),
        "arrow": fit_unit(np.array(arrow)),
        "house": fit_unit(np.array(house)),
        "lightning": fit_unit(np.array(bolt)),
        "check": fit_unit(np.array(check)),
    }


def _draw_icon(sketch: Sketch, icon: str, side: float, rgb: RGB, bg: RGB) -> None:
    polys = icon_polygons()
    if icon in polys:
        sy = side * (0.7 if icon == "arrow" else 1.0)
        sx = side * (0.6 if icon == "lightning" else 1.0)
        sketch.unit(polys[icon], rgb, sx, sy)
        if icon == "house":  # a door
            sketch.rect(-0.1 * side, 0.18 * side, 0.1 * side, 0.5 * side, bg)
    elif icon == "sun":
        ray = max(1, int(side / 12))
        for k in range(8):
            c, s = math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)
            sketch.line(
                [(0.34 * side * c, 0.34 * side * s), (0.5 * side * c, 0.5 * side * s)], rgb, ray
            )
        sketch.circle(0, 0, 0.25 * side, rgb)
    elif icon == "moon":
        sketch.circle(0, 0, 0.45 * side, rgb)
        sketch.circle(0.2 * side, -0.12 * side, 0.4 * side, bg)
    elif icon == "smiley":
        sketch.circle(0, 0, 0.48 * side, rgb)
        eye = (20, 20, 20)
        sketch.circle(-0.16 * side, -0.12 * side, 0.06 * side, eye)
        sketch.circle(0.16 * side, -0.12 * side, 0.06 * side, eye)
        mouth = [
            (0.28 * side * math.cos(a), (0.04 + 0.24 * math.sin(a)) * side)
            for a in np.linspace(math.radians(20), math.radians(160), 12).tolist()
        ]
        sketch.line(mouth, eye, max(1, int(side / 14)))
    else:
        raise ValueError(f"unknown icon {icon!r}")


def _choose_contents(n: int, off_rate: float, r: Draws) -> list[dict]:
    """What each of n screens shows: distinct labels for screens that are on."""
    used: set[str] = set()
    contents = []
    for _ in range(n):
        if r.random() < off_rate:
            contents.append({"kind": "off", "label": OFF})
            continue
        while True:
            kind = r.choice(CONTENT_KINDS)
            if kind == "shape":
                colour, shape = r.choice(SCREEN_SHAPE_COLOURS), r.choice(SCREEN_SHAPES)
                item = {
                    "kind": kind,
                    "label": f"{colour} {shape}",
                    "colour": colour,
                    "shape": shape,
                }
            elif kind == "word":
                word = r.choice(SCREEN_WORDS)
                item = {"kind": kind, "label": f"word {word}", "word": word}
            elif kind == "digit":
                digit = r.choice(DIGITS)
                item = {"kind": kind, "label": f"digit {digit}", "digit": digit}
            else:
                icon = r.choice(ICONS)
                item = {
                    "kind": kind,
                    "label": f"icon {icon}",
                    "icon": icon,
                    "colour": ICON_COLOURS[icon],
                }
            if item["label"] not in used:
                used.add(item["label"])
                contents.append(item)
                break
    return contents


@lru_cache(maxsize=4096)
def _text_size(text: str, max_w: float, max_h: float) -> int:
    """The largest font size (px) at which `text` fits max_w x max_h."""
    ref = 40
    left, top, right, bottom = font(ref).getbbox(text)
    scale = min(max_w / max(1, right - left), max_h / max(1, bottom - top))
    return max(6, int(ref * scale))


def draw_screen(width: float, height: float, angle: float, content: dict, style: dict) -> Sketch:
    """One screen: bezel, display, and its content (or black glass and a standby light when off)."""
    sketch = Sketch(width, height, angle)
    hw, hh = sketch.hw, sketch.hh
    bezel = max(2, min(6, round(0.06 * min(width, height))))
    sketch.rect(-hw, -hh, hw, hh, style["bezel"], outer=True)
    dx, dy = hw - bezel, hh - bezel
    kind = content["kind"]
    if kind == "off":
        sketch.rect(-dx, -dy, dx, dy, OFF_DISPLAY)
        glare = [(-dx, dy * 0.2), (-dx * 0.2, -dy), (dx * 0.15, -dy), (-dx, dy * 0.75)]
        sketch.polygon(glare, (34, 34, 42))
        if bezel >= 3:
            sketch.circle(hw - 2 * bezel, hh - bezel / 2, max(1.0, bezel / 3), (230, 30, 30))
        return sketch
    bg = style["display"]
    if kind in ("shape", "icon") and bg == LIGHT_DISPLAY:
        bg = DARK_DISPLAY
    sketch.rect(-dx, -dy, dx, dy, bg)
    if bezel >= 3:  # the power light of a screen that is on
        sketch.circle(hw - 2 * bezel, hh - bezel / 2, max(1.0, bezel / 3), (60, 200, 255))
    side = 0.7 * min(2 * dx, 2 * dy)
    if kind == "shape":
        rgb = COLOURS[content["colour"]]
        if content["shape"] == "circle":
            sketch.circle(0, 0, side / 2, rgb)
        else:
            sketch.unit(unit_polygons()[content["shape"]], rgb, side, side)
    elif kind == "icon":
        _draw_icon(sketch, content["icon"], side, COLOURS[content["colour"]], bg)
    else:
        text = content["word"].upper() if kind == "word" else content["digit"]
        ink = (20, 20, 20) if bg == LIGHT_DISPLAY else (245, 245, 245)
        sketch.text(text, _text_size(text, round(1.5 * dx), round(1.2 * dy)), ink)
    return sketch


def draw_picture_frame(
    width: float, height: float, angle: float, similar: bool, seed: int
) -> Sketch:
    """A framed picture: a landscape in a wooden frame, or (similar) a flat shape in a dark frame."""
    r = Draws(np.random.default_rng(seed), block=16)
    sketch = Sketch(width, height, angle)
    hw, hh = sketch.hw, sketch.hh
    border = max(2, round(0.09 * min(width, height)))
    if similar:
        colour = jitter((52, 36, 26), r, 6)
    else:
        colour = r.choice([(120, 80, 40), (165, 125, 60), (190, 160, 80)])
    sketch.rect(-hw, -hh, hw, hh, colour, outer=True)
    ix, iy = hw - border, hh - border
    if not similar:  # a mat, then a small landscape
        sketch.rect(-ix, -iy, ix, iy, (240, 236, 226))
        ix, iy = ix - border * 0.6, iy - border * 0.6
        sketch.rect(-ix, -iy, ix, iy, (150, 190, 225))
        hill = [
            (-ix, iy),
            (-ix, iy * 0.1),
            (-ix * 0.2, -iy * 0.2),
            (ix * 0.5, iy * 0.2),
            (ix, 0),
            (ix, iy),
        ]
        sketch.polygon(hill, (80, 140, 70))
        sketch.circle(ix * 0.5, -iy * 0.5, 0.18 * min(ix, iy), (250, 220, 90))
        return sketch
    # Near miss: a dark bezel-like frame and a flat shape, but a thin cream mat and a warm canvas.
    sketch.rect(-ix, -iy, ix, iy, (236, 228, 208))
    ix, iy = ix - max(1.0, border * 0.4), iy - max(1.0, border * 0.4)
    sketch.rect(-ix, -iy, ix, iy, r.choice([(214, 196, 160), (176, 92, 60), (196, 150, 70)]))
    rgb = COLOURS[r.choice(SCREEN_SHAPE_COLOURS)]
    shape = r.choice(SCREEN_SHAPES)
    side = 0.6 * min(2 * ix, 2 * iy)
    if shape == "circle":
        sketch.circle(0, 0, side / 2, rgb)
    else:
        sketch.unit(unit_polygons()[shape], rgb, side, side)
    return sketch


def draw_window(width: float, height: float, angle: float, similar: bool, seed: int) -> Sketch:
    """A window: light sash, panes (day sky, or dark night glass with stars when similar),
    muntins and a sill."""
    r = Draws(np.random.default_rng(seed), block=16)
    sketch = Sketch(width, height, angle)
    hw, hh = sketch.hw, sketch.hh
    sash = (245, 245, 240) if r.random() < 0.6 else (200, 170, 120)
    bar = max(2, round(0.06 * min(width, height)))
    sketch.rect(-hw, -hh, hw, hh, sash, outer=True)
    px, py = hw - bar, hh - bar
    sketch.rect(-px, -py, px, py, (20, 24, 44) if similar else (165, 205, 235))
    if similar:  # a few stars
        for _ in range(3):
            sketch.circle(r.uniform(-px, px) * 0.8, r.uniform(-py, py) * 0.8, 0.6, (235, 235, 200))
    else:  # a cloud
        sketch.circle(-px * 0.3, -py * 0.5, 0.15 * min(px, py), (250, 250, 250))
    cols = 2 if width < 2.2 * height else 3
    for k in range(1, cols):
        x = -px + 2 * px * k / cols
        sketch.rect(x - bar / 2, -py, x + bar / 2, py, sash)
    sketch.rect(-px, -bar / 2, px, bar / 2, sash)
    sketch.rect(-hw, hh - bar, hw, hh, shade(sash, 0.8))
    return sketch


def _draw_wall(knobs: SceneKnobs, r: Draws) -> Image.Image:
    """The room: a wall (sometimes striped) over a floor with a skirting board."""
    w, h = knobs.image_size
    wall = jitter(r.choice(WALLS), r, 6)
    scene = Image.new("RGB", (w, h), wall)
    draw = ImageDraw.Draw(scene)
    if r.random() < 0.4:
        stripe = shade(wall, 0.94)
        step = r.integer(14, 30)
        for x in range(0, w, 2 * step):
            draw.rectangle([x, 0, x + step - 1, h - 1], fill=stripe)
    floor_top = h - int(h * r.uniform(0.07, 0.12))
    draw.rectangle([0, floor_top, w - 1, h - 1], fill=r.choice(FLOORS))
    draw.rectangle([0, floor_top - 4, w - 1, floor_top - 1], fill=shade(wall, 0.8))
    return scene


def generate_screens(knobs: SceneKnobs, rng: np.random.Generator) -> SceneDraft:
    """One screens scene with its ground truth."""
    r = Draws(rng)
    scene = _draw_wall(knobs, r)
    n_screens = r.integer(*knobs.count)
    n_distractors = r.integer(*knobs.distractors)
    contents = _choose_contents(n_screens, knobs.off_rate, r)
    placer = Placer(knobs, r)
    placed = []
    for content in contents:
        aspect = r.choice(ASPECTS)
        angle = sample_angle(knobs, r)
        silver = r.random() < 0.25
        style = {
            "bezel": jitter((180, 182, 188) if silver else (28, 28, 32), r, 6),
            "display": r.choice((DARK_DISPLAY, DARK_DISPLAY, SLATE_DISPLAY, LIGHT_DISPLAY)),
        }

        def render(size: float, a=aspect, g=angle, c=content, s=style) -> Sketch:
            return draw_screen(size, snap_side(size / a, knobs), g, c, s)

        got = place_object(placer, render, sample_size(knobs, r), knobs)
        if got is not None:
            placed.append(("screen", got, content, angle, style))
    for _ in range(n_distractors):
        kind = "picture frame" if r.random() < 0.5 else "window"
        similar = r.random() < knobs.distractor_similarity
        aspect = r.uniform(0.75, 1.4)
        angle = sample_angle(knobs, r)
        detail_seed = r.integer(0, 2**31)  # the same details at every render
        draw_fn = draw_picture_frame if kind == "picture frame" else draw_window

        def render(size: float, a=aspect, g=angle, s=similar, f=draw_fn, d=detail_seed) -> Sketch:
            return f(size, snap_side(size / a, knobs), g, s, d)

        got = place_object(placer, render, sample_size(knobs, r), knobs)
        if got is not None:
            placed.append((kind, got, {"similar": similar}, angle, {}))

    draw = ImageDraw.Draw(scene)
    objects: list[GroundTruthObject] = []
    distractors: list[dict] = []
    for kind, (sketch, box), info, angle, style in r.shuffled(placed):
        sketch.draw(scene, draw, box)
        if kind == "screen":
            attributes = {k: v for k, v in info.items() if k != "label"}
            attributes.update(angle=round(angle, 3), bezel=list(style["bezel"]))
            objects.append(GroundTruthObject(box=box, label=info["label"], attributes=attributes))
        else:
            distractors.append(
                {
                    "label": kind,
                    "box": list(box),
                    "near_miss": info["similar"],
                    "angle": round(angle, 3),
                }
            )
    scene = add_noise(scene, knobs.background_noise, r)
    distractors.sort(key=lambda d: (d["box"][1], d["box"][0]))
    return SceneDraft(
        image=scene,
        question=QUESTION,
        objects=in_reading_order(objects),
        extra_meta={"requested_count": n_screens, "distractors": distractors},
    )
