"""Ground truth drawn on a task's image, and the `boxgym scenes` verb that previews scenes.

`boxgym scenes --family screens --n 8 --seed 0 --difficulty easy --out DIR` writes:
    DIR/images/<task id>.png     the scene as the model sees it
    DIR/overlays/<task id>.png   the same with every ground-truth box, number and label drawn
                                 (distractors in thin grey boxes marked "not: ...")
    DIR/tasks.jsonl              one `task.ground_truth()` per line
    DIR/index.html               a grid of the overlays with each task's question and answer
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from boxgym.choices import DIFFICULTY_NAMES, SCENE_FAMILY_NAMES
from boxgym.tools.canvas import PALETTE

# The tools' palette (the first twelve colours), so ground truth and model boxes look alike.
BOX_COLOURS: tuple[tuple[int, int, int], ...] = PALETTE[:12]
DISTRACTOR_COLOUR = (150, 150, 150)
FAMILY_CHOICES = (*SCENE_FAMILY_NAMES, "all")
MAX_SCENES = 100_000  # per family: a bound on what one command writes
DENSE = 20  # above this many objects, tags show only the number (labels are in tasks.jsonl)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from boxgym.data.scenes.layout import font

    return font(size)


def _tag(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    colour: tuple[int, int, int],
    size: int,
    limit: tuple[int, int],
) -> None:
    """A label on a filled tab above (or, at the top edge, inside) a box corner."""
    f = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    w, h = right - left + 6, bottom - top + 4
    x = min(max(0.0, xy[0]), max(0, limit[0] - w))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    dark = sum(colour) > 380
    draw.text(
        (x + 3 - left, y + 2 - top), text, fill=(0, 0, 0) if dark else (255, 255, 255), font=f
    )


def draw_ground_truth(task: Any, show_distractors: bool = True, min_side: int = 896) -> Image.Image:
    """The task's image(s) with every ground-truth box, its number and label drawn.

    Small images are upscaled (nearest neighbour) to at least `min_side` px on the longer side
    first, so labels stay readable; two-image tasks are drawn side by side. Objects that only
    have a point get a cross. Distractors listed in `task.meta["distractors"]` (procedural
    scenes) get thin grey boxes marked "not: <label>". Above `DENSE` objects, tags shrink to
    the object's number (and "x" for distractors) so they do not hide the scene.

    Returns:
        A new RGB image; the task's images are not modified.
    """
    dense = len(task.objects) > DENSE
    panels = []
    longest = max(max(image.size) for image in task.images)
    scale = max(1, -(-min_side // longest))  # one integer scale for all images
    for index, image in enumerate(task.images):
        w, h = image.size
        panel = image.convert("RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(panel)
        size = max(12, min(panel.size) // 48)
        line = max(2, scale)
        if show_distractors and index == 0:
            for d in task.meta.get("distractors", []) or []:
                x1, y1, x2, y2 = (v * scale for v in d["box"])
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=DISTRACTOR_COLOUR, width=1)
                _tag(
                    draw,
                    (x1, y2 + size + 6),
                    "x" if dense else f"not: {d['label']}",
                    DISTRACTOR_COLOUR,
                    size - 2,
                    panel.size,
                )
        for number, obj in enumerate(task.objects, start=1):
            if obj.image != index:
                continue
            colour = BOX_COLOURS[(number - 1) % len(BOX_COLOURS)]
            text = str(number) if dense else f"{number} {obj.label}"
            if obj.box is not None:
                x1, y1, x2, y2 = (v * scale for v in obj.box)
                draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=line)
                _tag(draw, (x1, y1), text, colour, size, panel.size)
            elif obj.point is not None:
                px, py = obj.point[0] * scale, obj.point[1] * scale
                arm = 3 * line
                draw.line([px - arm, py, px + arm, py], fill=colour, width=line)
                draw.line([px, py - arm, px, py + arm], fill=colour, width=line)
                _tag(draw, (px + arm, py - arm), text, colour, size, panel.size)
        panels.append(panel)
    if len(panels) == 1:
        return panels[0]
    width = sum(p.width for p in panels) + 8 * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 8
    return out


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Arguments of `boxgym scenes`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        f"{parser.description or 'Preview procedural scenes.'}\n\n"
        "Writes OUT/images/<id>.png, OUT/overlays/<id>.png (ground truth drawn),\n"
        "OUT/tasks.jsonl (task.ground_truth() per line) and OUT/index.html (a grid)."
    )
    parser.epilog = (
        "Knobs (see boxgym/data/scenes/knobs.py): count, object_size (in 28-px patches),\n"
        "distractors, distractor_similarity, overlap, rotation (degrees), image_size,\n"
        "grid (aligned|straddling|random), background_noise, off_rate (screens), kind (clutter).\n"
        "With --family all, a family-only knob (off_rate, kind) is applied to the families it\n"
        "belongs to and skipped, with a note, for the others. Every family's knobs are checked\n"
        "before anything is written, so a bad knob writes nothing.\n"
        "Values are JSON: --knob count=[3,6] --knob rotation=30 --knob grid='\"straddling\"'\n"
        "or plain words for strings: --knob grid=straddling.\n\n"
        "Example: boxgym scenes --family screens --n 8 --seed 0 --difficulty hard --out /tmp/s"
    )
    parser.add_argument(
        "--family", choices=FAMILY_CHOICES, default="screens", help="scene family ('all': each one)"
    )
    parser.add_argument("--n", type=int, default=8, help="scenes per family (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; scenes use seed..seed+n-1")
    parser.add_argument(
        "--difficulty", choices=DIFFICULTY_NAMES, default="easy", help="knob preset"
    )
    parser.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one knob of the preset (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier `scenes` output in --out (only the files it wrote are deleted)",
    )


def parse_knobs(pairs: list[str]) -> dict[str, Any]:
    """`["rotation=30", "count=[2,5]", "grid=aligned"]` -> knob dict (values as JSON or words)."""
    knobs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--knob expects NAME=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        knobs[name.strip()] = tuple(value) if isinstance(value, list) else value
    return knobs


def family_knobs(families: list[str], knobs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The knobs each family gets: with several families, a knob only some of them take.

    With one family every knob is passed on (an unknown one is refused by the generator).
    With several, a knob is given to the families it belongs to; one that belongs to none of
    them is refused.

    Raises:
        ValueError: naming the knob(s) no requested family takes.
    """
    from boxgym.data.scenes.knobs import FAMILY_KNOBS

    if len(families) == 1:
        return {families[0]: dict(knobs)}
    taken = set().union(*(FAMILY_KNOBS[f] for f in families))
    unknown = sorted(set(knobs) - taken)
    if unknown:
        raise ValueError(
            f"unknown knob(s) {unknown} for families {families}; valid: {sorted(taken)}"
        )
    return {f: {k: v for k, v in knobs.items() if k in FAMILY_KNOBS[f]} for f in families}


def _index_html(rows: list[dict[str, Any]], title: str) -> str:
    cards = []
    for row in rows:
        answer = html.escape(json.dumps(row["answer"]))
        cards.append(
            f'<figure><a href="{row["overlay"]}"><img src="{row["overlay"]}" loading="lazy" '
            f'alt="{html.escape(row["id"])}"></a><figcaption><b>{html.escape(row["id"])}</b>'
            f' <a href="{row["image"]}">image</a><br>{html.escape(row["question"])}'
            f"<br><code>{answer}</code></figcaption></figure>"
        )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>"
        + html.escape(title)
        + "</title><style>body{font:14px sans-serif;margin:16px}"
        "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:16px}"
        "figure{margin:0;border:1px solid #ccc;padding:6px}img{width:100%}"
        "code{font-size:12px;word-break:break-word}</style></head><body><h1>"
        + html.escape(title)
        + "</h1><main>"
        + "".join(cards)
        + "</main></body></html>\n"
    )


def run(args: argparse.Namespace) -> int:
    """Writes images, overlays, tasks.jsonl and index.html for the requested scenes."""
    import sys

    from boxgym.data.scenes import SCENE_FAMILIES, resolve_knobs, scene_task_id
    from boxgym.output_dir import claim_folder

    if not 1 <= args.n <= MAX_SCENES:
        print(f"error: --n must be between 1 and {MAX_SCENES:,}, got {args.n}", file=sys.stderr)
        return 2
    if args.seed < 0:
        print("error: --seed must be non-negative", file=sys.stderr)
        return 2
    try:
        knobs = parse_knobs(args.knob)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    families = list(SCENE_FAMILIES) if args.family == "all" else [args.family]
    try:
        knobs_of = family_knobs(families, knobs)
        for family in families:  # refuse bad knobs before anything is written
            resolve_knobs(family, args.difficulty, **knobs_of[family])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for family in families:
        skipped = sorted(set(knobs) - set(knobs_of[family]))
        if skipped:
            print(f"note: knob(s) {skipped} do not apply to {family}; skipped", file=sys.stderr)
    seeds = range(args.seed, args.seed + args.n)
    ids = [
        scene_task_id(f, seed, args.difficulty, **knobs_of[f]) for f in families for seed in seeds
    ]
    planned = ["tasks.jsonl", "index.html"]
    planned += [f"{folder}/{task_id}.png" for task_id in ids for folder in ("images", "overlays")]
    with claim_folder(args.out, "scenes", overwrite=args.overwrite) as folder:
        folder.add(planned)  # listed before written: --overwrite deletes exactly these
        rows = _write_scenes(args, families, knobs_of)
        seen = f"seeds {args.seed}..{args.seed + args.n - 1}"
        title = f"boxgym scenes: {', '.join(families)} ({args.difficulty}, {seen})"
        (args.out / "index.html").write_text(_index_html(rows, title), encoding="utf-8")
    print(f"wrote {len(rows)} scenes to {args.out} (open {args.out / 'index.html'})")
    return 0


def _write_scenes(
    args: argparse.Namespace, families: list[str], knobs_of: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each scene's image, overlay and ground-truth line; the page's rows."""
    from boxgym.data.scenes import make_scene_task

    out: Path = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    rows = []
    with open(out / "tasks.jsonl", "w", encoding="utf-8") as jsonl:
        for family in families:
            for seed in range(args.seed, args.seed + args.n):
                task = make_scene_task(family, seed, args.difficulty, **knobs_of[family])
                image_path = f"images/{task.id}.png"
                overlay_path = f"overlays/{task.id}.png"
                task.images[0].save(out / image_path, compress_level=1)  # fast, lossless
                draw_ground_truth(task).save(out / overlay_path, compress_level=1)
                jsonl.write(json.dumps(task.ground_truth()) + "\n")
                rows.append(
                    {
                        "id": task.id,
                        "image": image_path,
                        "overlay": overlay_path,
                        "question": task.question,
                        "answer": task.answer,
                    }
                )
    return rows
