"""`image-information`: how many bits of the answer the image supplies.

For held-out scenes (the seeing model's distribution by default) the study scores the true
answer under the model three ways: with the real image, with a blank image of the same size (the
scene's background colour everywhere) and with no image at all, and reports the answer's
surprisal in bits per task kind and per true count:

- `count`: the counting question, answer the true number ("3");
- `ground`: the grounding question, answer every true object in Qwen2-VL's grounding format in
  reading order (`<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)
  <|box_end|>`, [0, 1000) frame), the format the env parses.

Bits the image contributes = surprisal(blank) - surprisal(real), per example (paired), with a 95%
bootstrap interval. A blank image carries no information about the count, so with it a model can
do no better than the entropy of the count distribution (log2 5 = 2.32 bits for counts drawn
uniformly from 1-5, if it knows that distribution); a model that sees should need fewer bits with
the real image.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from boxgym.rollouts.metrics import bootstrap_mean_ci
from boxgym.studies.base import Study, StudyOutput
from boxgym.studies.direct import DIRECT_DEFAULTS, background_colour, conversation, scene_tasks

IMAGE_MODES = ("real", "blank", "none")
KINDS = ("count", "ground")


def grounding_answer(task: Any) -> str:
    """The true objects in Qwen2-VL's grounding format, one per line in reading order, corners
    as integers in [0, 1000) (the seeing model's training replies)."""
    from boxgym.tools.frames import pixels_to_frame

    size = task.images[0].size
    lines = []
    for obj in task.objects:
        x1, y1, x2, y2 = (
            min(999, max(0, round(v))) for v in pixels_to_frame(obj.box, "qwen", size)
        )
        lines.append(
            f"<|object_ref_start|>{obj.label}<|object_ref_end|>"
            f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
        )
    return "\n".join(lines)


def shown_image(image: Image.Image, mode: str) -> Image.Image | None:
    if mode == "real":
        return image
    if mode == "blank":
        return Image.new("RGB", image.size, background_colour(image))
    return None


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    kinds = settings["kinds"]
    modes = settings["images"]
    for name, values, known in (("kinds", kinds, KINDS), ("images", modes, IMAGE_MODES)):
        bad = [v for v in values if v not in known]
        if bad:
            raise ValueError(f"setting {name}: unknown {bad}; choose from {list(known)}")
    tasks = scene_tasks(settings)
    rows, meta = [], []
    for kind in kinds:
        question = settings["question"] if kind == "count" else settings["ground_question"]
        for mode in modes:
            for task in tasks:
                answer = str(task.count) if kind == "count" else grounding_answer(task)
                messages = conversation(shown_image(task.images[0], mode), question)
                messages.append(
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]}
                )
                rows.append({"messages": messages, "tools": None})
                meta.append((kind, mode, task))
    scores = lab.completion_bits(rows)
    records = []
    for (kind, mode, task), score in zip(meta, scores):
        records.append(
            {
                "kind": kind,
                "image": mode,
                "true_count": task.count,
                "answer_bits": score["bits"],
                "answer_tokens": float(score["tokens"]),
                "bits_per_token": score["bits"] / max(1, score["tokens"]),
                "seed": task.meta.get("seed"),
            }
        )
    extra = contributions(records)
    entropy = count_entropy([t.count for t in tasks])
    return StudyOutput(
        records=records,
        extra={"image_contribution": extra, "count_entropy_bits": entropy},
        notes=notes(extra, entropy),
    )


def count_entropy(counts: list[int]) -> float:
    """Entropy (bits) of the true counts' empirical distribution: what a blank image leaves.

    Any model's mean surprisal of the count given an image that carries no information about it
    (a blank one) is at least this (cross-entropy >= entropy), up to sampling noise.
    """
    import math
    from collections import Counter

    total = len(counts)
    return -sum(c / total * math.log2(c / total) for c in Counter(counts).values())


def contributions(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind: mean answer bits per image mode, and the paired differences with CIs."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in records):
        by_mode: dict[str, dict[int, float]] = {}
        for r in records:
            if r["kind"] == kind:
                by_mode.setdefault(r["image"], {})[r["seed"]] = r["answer_bits"]
        entry: dict[str, Any] = {"kind": kind}
        for mode, values in by_mode.items():
            entry[f"{mode}_bits"] = bootstrap_mean_ci(list(values.values()))
        real = by_mode.get("real", {})
        for other in ("blank", "none"):
            if other in by_mode and real:
                diffs = [by_mode[other][s] - real[s] for s in real if s in by_mode[other]]
                entry[f"{other}_minus_real"] = bootstrap_mean_ci(diffs)
        out.append(entry)
    return out


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "–"
    lo, hi = entry["ci95"]
    return f"{entry['mean']:.3g} [{lo:.3g}, {hi:.3g}]"


def notes(extra: list[dict[str, Any]], entropy: float) -> str:
    lines = [
        "## Bits the image contributes (paired over the same scenes)",
        "",
        "| kind | real | blank | none | blank - real | none - real |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in extra:
        lines.append(
            f"| {e['kind']} | {_ci(e.get('real_bits'))} | {_ci(e.get('blank_bits'))} | "
            f"{_ci(e.get('none_bits'))} | {_ci(e.get('blank_minus_real'))} | "
            f"{_ci(e.get('none_minus_real'))} |"
        )
    lines += [
        "",
        f"Entropy of the true counts over these scenes: {entropy:.3f} bits. With a blank image "
        "no model can need fewer bits for the count answer than this on average (cross-entropy "
        ">= entropy); a model that uses the image needs fewer with the real one.",
    ]
    return "\n".join(lines)


def plot(fig: Any, rows: list[dict[str, Any]]) -> None:
    from boxgym.studies.plots import draw_metric

    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        draw_metric(
            ax, [r for r in rows if r["kind"] == kind], "true_count", "image", "answer_bits"
        )
        ax.set_title(f"{kind}: answer surprisal (bits)")


def _measure_with_plot(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    output = measure(lab, settings)
    output.plot = plot
    return output


STUDY = Study(
    name="image-information",
    question="How many bits of the answer does the image supply? Answer surprisal with the real "
    "image, a blank image of the same size, and no image, per task kind and true count.",
    factors=("kind", "image", "true_count"),
    metrics=("answer_bits", "answer_tokens", "bits_per_token"),
    defaults={
        **{k: v for k, v in DIRECT_DEFAULTS.items() if k not in ("task", "max_new_tokens")},
        "kinds": list(KINDS),
        "images": list(IMAGE_MODES),
    },
    quick={"n": 40},
    measure=_measure_with_plot,
    plot_x="true_count",
    plot_hue="image",
    plot_metrics=("answer_bits",),
    fixed_help="the scenes and questions; only what image accompanies the question changes",
)
