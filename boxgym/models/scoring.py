"""Scoring plain-text replies of the seeing model's skills (count, ground, list) with 95% CIs.

Counts are read as the first integer of the reply; grounding replies are parsed by the env's own
parser (`boxgym.env.parsing`, Qwen2-VL grounding format, [0, 1000) frame) and matched one-to-one
to the true boxes at IoU >= 0.5: `precision`/`recall`/`f1` on the boxes alone, `labelled_*` with
the labels agreeing as well (`boxgym.env.rewards.grounding_scores`, the env's grounding reward);
listing replies are split on commas and scored as multisets (`enumeration_scores`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from boxgym.env.parsing import parse_tool_calls
from boxgym.env.rewards import enumeration_scores, grounding_scores
from boxgym.models.skills import Example, all_shapes
from boxgym.rollouts.metrics import bootstrap_mean_ci
from boxgym.tools.frames import frame_to_pixels

NUMBER = re.compile(r"-?\d+")


def ci(values: list[float]) -> dict[str, Any]:
    """`{"mean", "lo", "hi", "n"}`: the mean and its 95% bootstrap interval."""
    got = bootstrap_mean_ci(values, seed=0)
    lo, hi = got["ci95"]
    return {"mean": got["mean"], "lo": lo, "hi": hi, "n": got["n"]}


def read_count(reply: str) -> int | None:
    """The first integer in a reply, or None."""
    match = NUMBER.search(reply)
    return int(match.group()) if match and len(match.group()) < 6 else None


def read_boxes(reply: str, size: tuple[int, int]) -> list[tuple[str, int, tuple[float, ...]]]:
    """The grounded boxes of a reply as (label, image, pixel box), via the env's parser."""
    boxes = []
    for call in parse_tool_calls(reply, max_calls=64).calls:
        if call.source != "grounding":
            continue
        a = call.arguments
        try:
            pixels = frame_to_pixels((a["x1"], a["y1"], a["x2"], a["y2"]), "qwen", size)
        except (KeyError, TypeError, ValueError):
            continue
        boxes.append((str(a.get("label", "")), 0, tuple(pixels)))
    return boxes


def box_scores(
    boxes: list[tuple[str, int, tuple[float, ...]]], task, iou_threshold: float = 0.5
) -> tuple[float, float, float, list[float]]:
    """(precision, recall, F1, centre errors in px of matched pairs) of boxes matched one-to-one
    to the true boxes at IoU >= `iou_threshold`, labels ignored."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from boxgym.env.rewards import iou_matrix

    truth = [o.box for o in task.objects if o.box is not None]
    if not boxes or not truth:
        matched = 0
        pairs: list[tuple[int, int]] = []
    else:
        pred = np.asarray([b[2] for b in boxes], dtype=float)
        gold = np.asarray(truth, dtype=float)
        iou = iou_matrix(pred, gold)
        rows, cols = linear_sum_assignment(
            np.where(iou >= iou_threshold, 1.0 + iou, 0.0), maximize=True
        )
        pairs = [(i, j) for i, j in zip(rows, cols) if iou[i, j] >= iou_threshold]
        matched = len(pairs)
    n_pred, n_true = len(boxes), len(truth)
    precision = matched / n_pred if n_pred else float(n_true == 0)
    recall = matched / n_true if n_true else 1.0
    f1 = 2 * matched / (n_pred + n_true) if n_pred + n_true else 1.0
    centre = []
    for i, j in pairs:
        (a1, b1, a2, b2), (c1, d1, c2, d2) = boxes[i][2], truth[j]
        centre.append(float(np.hypot((a1 + a2 - c1 - c2) / 2, (b1 + b2 - d1 - d2) / 2)))
    return precision, recall, f1, centre


def score_replies(skill: str, examples: list[Example], replies: list[str]) -> dict[str, Any]:
    """Held-out figures of one skill: accuracy (and the majority baseline) or P/R/F1."""
    if skill.startswith("count"):
        truth = [e.task.count for e in examples]
        got = [read_count(r) for r in replies]
        correct = [float(g == t) for g, t in zip(got, truth)]
        majority = Counter(truth).most_common(1)[0][1] / len(truth)
        by_count = {
            str(n): ci([c for c, t in zip(correct, truth) if t == n]) for n in sorted(set(truth))
        }
        return {
            "accuracy": ci(correct),
            "majority_baseline": majority,
            "answered": sum(g is not None for g in got) / len(got),
            "by_true_count": by_count,
            "examples": [{"reply": r, "truth": t} for r, t in list(zip(replies, truth))[:5]],
        }
    if skill == "ground":
        scores: dict[str, list[float]] = {
            k: [] for k in ("precision", "recall", "f1", "labelled_precision", "labelled_recall")
        }
        scores.update(labelled_f1=[], count_ok=[], centre_error_px=[])
        for example, reply in zip(examples, replies):
            boxes = read_boxes(reply, example.image.size)
            p, r, f, centre = box_scores(boxes, example.task)
            lp, lr, lf = grounding_scores(boxes, example.task)
            for key, value in zip(scores, (p, r, f, lp, lr, lf)):
                scores[key].append(value)
            scores["count_ok"].append(float(len(boxes) == example.task.count))
            scores["centre_error_px"] += centre
        return {
            **{
                key: ci(scores[key]) for key in scores if key not in ("count_ok", "centre_error_px")
            },
            "count_from_boxes_accuracy": ci(scores["count_ok"]),
            "matched_centre_error_px": ci(scores["centre_error_px"]),
            "examples": [
                {"reply": r, "truth": e.reply} for e, r in list(zip(examples, replies))[:3]
            ],
        }
    if skill == "list":
        precision, recall, f1 = [], [], []
        for example, reply in zip(examples, replies):
            items = [part.strip() for part in reply.split(",") if part.strip()]
            truth = [s["label"] for s in all_shapes(example.task)]
            p, r, f = enumeration_scores(items, truth)
            precision.append(p)
            recall.append(r)
            f1.append(f)
        return {
            "precision": ci(precision),
            "recall": ci(recall),
            "f1": ci(f1),
            "examples": [
                {"reply": r, "truth": e.reply} for e, r in list(zip(examples, replies))[:3]
            ],
        }
    raise ValueError(f"unknown skill {skill!r}")


__all__ = ["ci", "frame_to_pixels", "read_boxes", "read_count", "score_replies"]
