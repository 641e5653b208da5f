"""Held-out evaluation of a seeing checkpoint: greedy replies through plain `generate`, scored with
95% CIs on seeds below `EVAL_SEEDS_END` (never trained on)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from boxgym.models.batches import Batcher, strip_answer_hint
from boxgym.models.loss import batch_hidden
from boxgym.models.recipe import SeeingRecipe
from boxgym.models.skills import (
    EVAL_SEEDS_END,
    Example,
    make_example,
    messages_for,
    tool_env,
    tools_for,
)

if TYPE_CHECKING:
    from boxgym.models.build import Progress


def generate_replies(model, processor, examples: list[Example], max_new_tokens: int) -> list[str]:
    """Greedy replies through plain `generate` over the whole vocabulary (left padded)."""
    import torch

    tokenizer = processor.tokenizer
    prompts = [
        processor.apply_chat_template(
            messages_for(e), tokenize=False, add_generation_prompt=True, tools=tools_for(e)
        )
        for e in examples
    ]
    tokenizer.padding_side = "left"
    inputs = processor(
        text=prompts, images=[e.image for e in examples], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    replies = tokenizer.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=False
    )
    return [r.split("<|im_end|>")[0].replace("<|endoftext|>", "") for r in replies]


def evaluate(
    model, processor, skill: str, seeds: list[int], batch_size: int = 50, bare: bool = False
) -> dict[str, Any]:
    """Held-out figures of one skill on `seeds` (all below EVAL_SEEDS_END), with 95% CIs.

    `bare` asks counting questions without "Answer with a number."
    """
    from boxgym.models.scoring import score_replies

    examples = [make_example(skill, s) for s in seeds]
    if bare:
        examples = [replace(e, question=strip_answer_hint(e.question)) for e in examples]
    max_new = {"list": 40, "ground": 160, "tool": 240}.get(skill, 12)
    replies: list[str] = []
    model.eval()
    for i in range(0, len(examples), batch_size):
        replies += generate_replies(model, processor, examples[i : i + batch_size], max_new)
    model.train()
    if skill == "tool":
        return score_tool_replies(examples, replies)
    return score_replies(skill, examples, replies)


def score_tool_replies(examples: list[Example], replies: list[str]) -> dict[str, Any]:
    """A `tool` reply played as the first turn of its episode in the env: the env's count
    accuracy, grounding F1, valid-call rate and reward (the episode ends there: a reply that
    did not answer counts as wrong)."""
    from boxgym.rollouts.metrics import bootstrap_mean_ci

    env = tool_env()
    names = {  # our name: the env's metric
        "count_accuracy": "count_correct",
        "enumeration_f1": "enumeration_f1",
        "grounding_f1": "grounding_f1",
        "valid_call_rate": "valid_call_rate",
        "answered": "answered",
    }
    values: dict[str, list[float]] = {name: [] for name in (*names, "reward")}
    for example, reply in zip(examples, replies):
        env.reset(seed=example.seed, options={"task": example.task})
        _, reward, _, _, info = env.step(reply)
        metrics = info.get("metrics", {})
        for name, metric in names.items():
            values[name].append(float(metrics.get(metric) or 0.0))
        values["reward"].append(float(reward))
    out = {}
    for name, v in values.items():
        got = bootstrap_mean_ci(v, seed=0)  # {"mean", "ci95": [lo, hi], "n"}
        out[name] = {"mean": got["mean"], "lo": got["ci95"][0], "hi": got["ci95"][1], "n": got["n"]}
    out["examples"] = [{"reply": r, "truth": e.reply} for e, r in list(zip(examples, replies))[:3]]
    return out


def quick_count_accuracy(model, batcher: Batcher, seeds: list[int]) -> float:
    """Share of held-out `count` scenes whose greedy first reply token is the right number."""
    import torch

    examples = [make_example("count", s) for s in seeds]
    batch = batcher(examples)
    model.eval()
    with torch.no_grad():
        hidden, _ = batch_hidden(model, batch)  # bare count rows: no prefix
    model.train()
    first = (batch["labels"] != -100).int().argmax(dim=1) - 1
    h = hidden[torch.arange(len(examples)), first]
    guess = (h @ model.lm_head.weight.T).argmax(dim=-1)
    truth = batch["labels"][torch.arange(len(examples)), first + 1]
    return float((guess == truth).float().mean())


def final_results(
    model, processor, recipe: SeeingRecipe, prog: Progress, eval_scenes: int, ground_scenes: int
) -> dict[str, Any]:
    """Held-out figures of every skill (seeds below EVAL_SEEDS_END, never trained on)."""
    seeds = list(range(EVAL_SEEDS_END - eval_scenes, EVAL_SEEDS_END))
    ground_seeds = seeds[:ground_scenes]
    results: dict[str, Any] = {
        "recipe_key": recipe.key(),
        "steps": prog.step,
        "count_stage_steps": recipe.count_steps,
        "count_stage_minutes": prog.count_stage_minutes,
        "held_out_seeds": [seeds[0], seeds[-1] + 1],
        "count": evaluate(model, processor, "count", seeds),
        "count_bare_question": evaluate(model, processor, "count", ground_seeds, bare=True),
        "count_clutter": evaluate(model, processor, "count_clutter", ground_seeds),
        "ground": evaluate(model, processor, "ground", ground_seeds),
        "list": evaluate(model, processor, "list", ground_seeds),
        "checks": prog.checks,
        "ground_checks": prog.ground_checks,
    }
    if recipe.tool_steps:
        results["tool"] = evaluate(model, processor, "tool", ground_seeds[:100], batch_size=25)
        results["tool_checks"] = prog.tool_checks
    return results


def summary_line(results: dict[str, Any]) -> str:
    c, g, lst = results["count"], results["ground"], results["list"]
    labelled = ""
    if "labelled_precision" in g:
        labelled = (
            f" (labels agreeing too: {g['labelled_precision']['mean']:.3f} / "
            f"{g['labelled_recall']['mean']:.3f})"
        )
    tool = ""
    if "tool" in results:
        t = results["tool"]
        tool = (
            f"; with the env's system turn and tools: count accuracy "
            f"{t['count_accuracy']['mean']:.3f}, grounding F1 {t['grounding_f1']['mean']:.3f}"
        )
    return (
        f"count accuracy {c['accuracy']['mean']:.3f} [{c['accuracy']['lo']:.3f}, "
        f"{c['accuracy']['hi']:.3f}] (majority {c['majority_baseline']:.3f}); boxes at IoU>=0.5: "
        f"precision {g['precision']['mean']:.3f} recall {g['recall']['mean']:.3f}{labelled}; "
        f"listing F1 {lst['f1']['mean']:.3f}{tool}; {results['steps']} steps, "
        f"{results['minutes']} min"
    )
