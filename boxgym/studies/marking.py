"""The marking study: does boxing one object a turn, and seeing the marks, let a model count past
what it can take in at a glance?

Five arms share one base checkpoint (counting and grounding on 1-5 shapes at 336 px) and differ
only in a continuation of equal budget (steps, rows, learning rate; `boxgym.models.marking`):

- G, glance: image -> number, trained on 1-5 shapes;
- G12, glance trained on 1-12 (the control: if it matches M, the limit was not perceptual);
- M, mark and look: trained on 1-5, played in the env one box a turn, the marked image back;
- T, marks as text: the same turns, the image left clean, earlier boxes in the text only;
- O, one reply: every box and the answer in one reply.

Every arm also learnt to copy the numbers 1-12 from text, so a glance arm's failure past 5 is
perceptual, not a number it never wrote. `--model` is the M checkpoint (`boxgym tiny-model
--marking`, or `marking`); the study builds the other arms beside it from the same base (cached,
resumable), then measures every arm on the same held-out scenes of 1-12 shapes (greedy
decoding), so one command reproduces the whole table.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from boxgym.studies.base import Study, StudyOutput

ARM_HELP = {
    "G": "glance, trained on 1-5",
    "G12": "glance, trained on 1-12",
    "M": "mark and look, trained on 1-5",
    "T": "marks as text, trained on 1-5",
    "O": "one reply, trained on 1-5",
}
PAIRS = (("M", "G"), ("M", "G12"), ("M", "T"))
UNSEEN = (6, 12)  # counts never trained on (but by G12)


def scene_seed(settings: dict[str, Any], n: int, i: int) -> int:
    """The held-out seed of scene i of count n (below the training seeds by construction)."""
    return int(settings["seed_base"]) + 1000 * n + i


def arm_checkpoints(
    model_path: Path, arms: list[str], eval_scenes: int = 200, log=print
) -> dict[str, Path]:
    """Each arm's checkpoint: the given one for its own arm, the others built beside it (or
    found there) from the same base and recipe (`eval_scenes`: the held-out scenes a new
    build scores itself on)."""
    from boxgym.models.marking import MarkingRecipe, build_marking_model

    try:
        identity = json.loads((model_path / "recipe.json").read_text())
        recipe = MarkingRecipe.from_identity(identity)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{model_path} is not a marking checkpoint (no marking recipe.json: {error}); build "
            "one with `boxgym tiny-model --marking` and pass --model marking or its folder"
        ) from error
    paths = {}
    for arm in arms:
        if arm == recipe.arm:
            paths[arm] = model_path
            continue
        arm_recipe = replace(recipe, arm=arm)
        path = model_path.parent / f"marking-qwen2-vl-{arm_recipe.key()}"
        log(f"arm {arm}: {path}")
        paths[arm] = build_marking_model(path, arm_recipe, eval_scenes=eval_scenes)
    return paths


def glance_records(path: Path, arm: str, settings: dict[str, Any], batch: int) -> list[dict]:
    """Arm `arm` (G or G12) asked each held-out scene at a glance; one record per scene."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from boxgym.models.marking import generate_chat_replies
    from boxgym.models.marking_skills import make_chat
    from boxgym.models.scoring import read_count

    model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    chats = [
        make_chat("glance", scene_seed(settings, n, i), n=n)
        for n in settings["counts"]
        for i in range(settings["per_count"])
    ]
    records = []
    for start in range(0, len(chats), batch):
        part = chats[start : start + batch]
        for chat, reply in zip(part, generate_chat_replies(model, processor, part, 6)):
            answer = read_count(reply)
            n = chat.task.count
            records.append(
                {
                    "arm": arm,
                    "true_count": n,
                    "seed": chat.seed,
                    "count_accuracy": float(answer == n),
                    "answered": float(answer is not None),
                    "answer": answer,
                    "reply": reply,
                }
            )
    return records


def loop_records(
    path: Path, arm: str, skill: str, settings: dict[str, Any], out: Path, batch: int, style: str
) -> list[dict]:
    """Arm `arm` (M, T or O) played in the env on each held-out scene; one record per episode,
    with the per-step figures of its boxes."""
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.models.marking_skills import count_task, env_config
    from boxgym.policies.hf import HFPolicy
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import EpisodeStore, read_episodes

    config = EnvConfig.from_dict(env_config(skill, style))
    tasks, seeds = [], []
    for n in settings["counts"]:
        for i in range(settings["per_count"]):
            seeds.append(scene_seed(settings, n, i))
            tasks.append(count_task(seeds[-1], n))
    run = out / "episodes" / arm
    identity = {"checkpoint": str(path), "seeds": seeds, "env": config.to_dict()}
    marker = run / "study_run.json"
    if run.exists() and (not marker.is_file() or json.loads(marker.read_text()) != identity):
        shutil.rmtree(run)  # this study's own episodes, of other settings: measured again
    run.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(identity))
    policy = HFPolicy(
        model=str(path),
        temperature=0.0,
        batch_size=batch,
        max_new_tokens=420 if skill == "one_reply" else 48,
        device="cpu",
    )
    with EpisodeStore(run) as store:
        run_rollouts(
            tasks,
            policy,
            lambda: BoxGymEnv(config=config),
            store,
            seed=int(settings["seed_base"]),
            batch_size=batch,
            progress=True,
            run_info={"policy": "hf", "run": f"marking-{arm}"},
        )
    episodes = sorted(read_episodes(run).episodes, key=lambda e: e["key"]["task_index"])
    records = []
    for episode, task, seed in zip(episodes, tasks, seeds):
        steps = episode_steps(episode, task)
        metrics = episode["metrics"]
        records.append(
            {
                "arm": arm,
                "true_count": task.count,
                "seed": seed,
                "count_accuracy": float(metrics.get("count_correct") or 0.0),
                "answered": float(metrics.get("answered") or 0.0),
                "answer": (episode.get("final_answer") or {}).get("count"),
                "boxes": len(steps["outcomes"]),
                "steps": steps,
            }
        )
    return records


def episode_steps(episode: dict[str, Any], task: Any) -> dict[str, Any]:
    """What each box of an episode did, in order: "new" (on an object not boxed before, IoU >=
    0.5), "repeat" (on an object already boxed) or "miss" (on no object); with k, the objects
    boxed before it. And how the episode stopped: "early" (answered with objects never boxed),
    "late" (a box after every object was boxed, or no answer), or "right"."""
    import numpy as np

    from boxgym.env.rewards import iou_matrix
    from boxgym.tools.frames import frame_to_pixels

    size = task.images[0].size
    truth = np.asarray([o.box for o in task.objects], dtype=float)
    boxed: set[int] = set()
    outcomes, ks, ious, late = [], [], [], False
    for turn in episode.get("turns", []):
        for call in turn.get("calls", []):
            if call.get("name") != "draw_box" or not call.get("ok"):
                continue
            a = call["arguments"]
            box = frame_to_pixels((a["x1"], a["y1"], a["x2"], a["y2"]), "qwen", size)
            iou = iou_matrix(np.asarray([box], dtype=float), truth)[0]
            ks.append(len(boxed))
            late = late or len(boxed) == len(truth)
            best = int(iou.argmax())
            ious.append(round(float(iou[best]), 4))
            if iou[best] < 0.5:
                outcomes.append("miss")
            elif best in boxed:
                outcomes.append("repeat")
            else:
                outcomes.append("new")
                boxed.add(best)
    answered = bool(episode.get("metrics", {}).get("answered"))
    if not answered or late:
        stop = "late"
    elif len(boxed) < len(truth):
        stop = "early"
    else:
        stop = "right"
    return {
        "outcomes": outcomes,
        "k": ks,
        "iou": ious,
        "never_boxed": len(truth) - len(boxed),
        "stop": stop,
    }


def ci_of(values: list[float]) -> dict[str, Any]:
    from boxgym.models.scoring import ci

    return ci(values)


def arm_table(records: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    """Per arm: count accuracy by true count and over the unseen counts 6-12, with 95% CIs."""
    table: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in records):
        mine = [r for r in records if r["arm"] == arm]
        by_count = {
            str(n): ci_of([r["count_accuracy"] for r in mine if r["true_count"] == n])
            for n in counts
            if any(r["true_count"] == n for r in mine)
        }
        unseen = [r["count_accuracy"] for r in mine if UNSEEN[0] <= r["true_count"] <= UNSEEN[1]]
        table[arm] = {"by_count": by_count}
        if unseen:
            table[arm]["6-12"] = ci_of(unseen)
    return table


def paired_differences(records: list[dict[str, Any]]) -> dict[str, Any]:
    """M-G, M-G12, M-T on the unseen-count scenes: the mean per-scene difference in count
    accuracy (the arms answer the same scenes) with a 95% bootstrap CI."""
    by = {(r["arm"], r["seed"]): r["count_accuracy"] for r in records}
    seeds = sorted({r["seed"] for r in records if UNSEEN[0] <= r["true_count"] <= UNSEEN[1]})
    out = {}
    for a, b in PAIRS:
        diffs = [by[a, s] - by[b, s] for s in seeds if (a, s) in by and (b, s) in by]
        if diffs:
            out[f"{a}-{b}"] = {k: v for k, v in ci_of(diffs).items()}
    return out


def step_table(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per loop arm (M, T): how often the next box lands on an unmarked object by k (objects
    boxed before it), repeats, misses, objects never boxed and how episodes stopped."""
    out: dict[str, Any] = {}
    for arm in ("M", "T"):
        mine = [r for r in records if r["arm"] == arm]
        if not mine:
            continue
        by_k: dict[str, Any] = {}
        for k in range(0, 13):
            hits = [
                float(o == "new")
                for r in mine
                for o, kk in zip(r["steps"]["outcomes"], r["steps"]["k"])
                if kk == k and kk < r["true_count"]
            ]
            if hits:
                by_k[str(k)] = ci_of(hits)
        outcomes = [o for r in mine for o in r["steps"]["outcomes"]]
        share = {
            name: (outcomes.count(name) / len(outcomes) if outcomes else 0.0)
            for name in ("new", "repeat", "miss")
        }
        stops = [r["steps"]["stop"] for r in mine]
        ious = sorted(i for r in mine for i in r["steps"].get("iou", []))
        out[arm] = {
            "next_box_hits_unmarked_by_k": by_k,
            "boxes": len(outcomes),
            "share_of_boxes": share,
            "never_boxed_per_episode": ci_of([float(r["steps"]["never_boxed"]) for r in mine]),
            # how close the boxes come: each box's IoU with the shape it overlaps most
            "box_iou_with_nearest": {
                **ci_of(ious or [0.0]),
                "median": ious[len(ious) // 2] if ious else 0.0,
            },
            "stops": {s: stops.count(s) / len(stops) for s in ("right", "early", "late")},
            "answer_equals_boxes_drawn": ci_of(
                [float(r["answer"] == r["boxes"]) for r in mine if r["answer"] is not None] or [0.0]
            ),
        }
    return out


def notes(table: dict[str, Any], paired: dict[str, Any], steps: dict[str, Any]) -> str:
    lines = ["## On 6-12 shapes (never trained on but by G12)", ""]
    lines.append("| arm | what | count accuracy, 6-12 |")
    lines.append("|---|---|---|")
    for arm, row in table.items():
        u = row.get("6-12")
        text = f"{u['mean']:.3f} [{u['lo']:.3f}, {u['hi']:.3f}] (n={u['n']})" if u else "-"
        lines.append(f"| {arm} | {ARM_HELP[arm]} | {text} |")
    lines += ["", "| paired difference (same scenes) | mean [95% CI] |", "|---|---|"]
    for name, d in paired.items():
        lines.append(f"| {name} | {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] |")
    for arm, s in steps.items():
        by_k = ", ".join(
            f"k={k}: {v['mean']:.2f}" for k, v in s["next_box_hits_unmarked_by_k"].items()
        )
        share = s["share_of_boxes"]
        lines += [
            "",
            f"**{arm}, step by step.** The next box lands on an unmarked object: {by_k}. Of "
            f"{s['boxes']} boxes {share['new']:.2f} new, {share['repeat']:.2f} on an object "
            f"already boxed, {share['miss']:.2f} on no object; objects never boxed per episode "
            f"{s['never_boxed_per_episode']['mean']:.2f}; a box's IoU with the shape it overlaps "
            f"most: median {s['box_iou_with_nearest']['median']:.2f}; episodes stopped right "
            f"{s['stops']['right']:.2f}, early {s['stops']['early']:.2f}, late "
            f"{s['stops']['late']:.2f}.",
        ]
    return "\n".join(lines)


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    from boxgym.models.cache import resolve_model
    from boxgym.models.marking import ARM_SKILL, MarkingRecipe

    model_path = Path(resolve_model(lab.model_name or "marking"))
    arms = list(settings["arms"])
    unknown = [a for a in arms if a not in ARM_SKILL]
    if unknown:
        raise ValueError(f"setting arms: unknown {unknown}; choose from {list(ARM_SKILL)}")
    paths = arm_checkpoints(model_path, arms, int(settings["build_eval_scenes"]))
    style = MarkingRecipe.from_identity(
        json.loads((model_path / "recipe.json").read_text())
    ).mark_style
    out = Path(getattr(lab, "out_dir", None) or ".")
    records: list[dict[str, Any]] = []
    for arm in arms:
        skill = ARM_SKILL[arm]
        if skill in ("glance", "glance12"):
            records += glance_records(paths[arm], arm, settings, lab.batch_size)
        else:
            records += loop_records(paths[arm], arm, skill, settings, out, lab.batch_size, style)
    table = arm_table(records, list(settings["counts"]))
    paired = paired_differences(records)
    steps = step_table(records)
    recipe_keys = {
        arm: MarkingRecipe.from_identity(json.loads((p / "recipe.json").read_text())).key()
        for arm, p in paths.items()
    }
    extra = {"checkpoints": {arm: str(p) for arm, p in paths.items()}, "recipe_keys": recipe_keys}
    return StudyOutput(
        records=records,
        extra=extra,
        notes=notes(table, paired, steps),
        sections={"arms": table, "paired": paired, "steps": steps},
    )


STUDY = Study(
    name="marking",
    question=(
        "Does boxing one object a turn and seeing the marks let a model trained on 1-5 shapes "
        "count 6-12, where a glance fails?"
    ),
    factors=("arm", "true_count"),
    metrics=("count_accuracy", "answered"),
    defaults={
        "arms": ["G", "G12", "M", "T", "O"],
        "counts": list(range(1, 13)),
        "per_count": 50,
        "seed_base": 200_000,
        "build_eval_scenes": 200,
    },
    quick={"counts": [1, 2, 6], "per_count": 3, "build_eval_scenes": 4},
    measure=measure,
    plot_x="true_count",
    plot_hue="arm",
    plot_metrics=("count_accuracy",),
    fixed_help=(
        "the base checkpoint, the continuation budget (steps, rows, learning rate), the held-out "
        "scenes (shapes of 2-3 patches in 336-px images, 1-12 of them) and greedy decoding"
    ),
)
