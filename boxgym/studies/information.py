"""`information`: how much a dataset can teach the model, in bits, and the LoRA rank that holds it.

Following Schulman et al., "LoRA Without Regret" (Thinking Machines, 2025): a model learns at most
about what the data surprise it with, and a trainable parameter stores about 2 bits. The study:

1. builds the SFT rows exactly as `boxgym train sft` does (`boxgym.train.mixture.build_mixture`:
   scripted episodes through the real env, and any dataset source with a local copy) and scores
   each row's completion tokens (the assistant tokens SFT trains on, rendered by the SFT
   collator) under the model: summed surprisal per example, per token, and in total, per source;
2. counts the LoRA parameters per rank for the configured target modules of the real model
   config (analytically from the model's Linear layers, checked against PEFT's own count on a
   meta-device copy), and gives the smallest rank whose capacity (`bits_per_param` x parameters)
   exceeds the information: over the measured rows and, with `train_examples`, over a full run;
3. gives the same rank table for RL at `rl_bits_per_episode` (about 1 bit per episode: a scalar
   reward per sampled episode) for each of `rl_episodes`.

The surprisal is an upper bound on what there is to learn: it also counts what no adapter can
learn (noise in the targets).
"""

from __future__ import annotations

import math
import re
from typing import Any

from boxgym.studies.base import Study, StudyOutput

DEFAULT_RANKS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def _sections(settings: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(MixtureSection, EnvSection, LoraSection) from the settings, or from `config` when given."""
    from boxgym.sections import EnvSection, LoraSection, MixtureSection
    from boxgym.train.config import load_config
    from boxgym.train.run_configs import SFTRunConfig

    if settings.get("config"):
        config = load_config(SFTRunConfig, settings["config"])
        return config.mixture, config.env, config.lora
    lora = (
        LoraSection(target_modules=settings["lora_targets"])
        if settings.get("lora_targets")
        else LoraSection()
    )
    return MixtureSection(**settings["mixture"]), EnvSection(**settings["env"]), lora


def _targets_match(name: str, targets: str | list[str]) -> bool:
    """PEFT's rule: a string is a regex matched against the full module name; a list holds
    names that equal the module name or end it after a dot."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def meta_model(model_path: str) -> Any:
    """The model built from its config on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def lora_params_per_rank(model: Any, targets: str | list[str]) -> tuple[int, list[str]]:
    """LoRA parameters per unit of rank: the sum of in + out features of each targeted Linear
    (A is rank x in, B is out x rank), and the targeted module names."""
    import torch

    total, names = 0, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and _targets_match(name, targets):
            total += module.in_features + module.out_features
            names.append(name)
    return total, names


def peft_lora_params(model: Any, targets: str | list[str], rank: int) -> int:
    """PEFT's own count of trainable LoRA parameters at `rank` (on a meta-device model)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, task_type="CAUSAL_LM")
    )
    count = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    peft_model.unload()  # leave `model` as it was
    return int(count)


def smallest_rank(information_bits: float, per_rank: int, bits_per_param: float) -> int:
    """The smallest rank r with bits_per_param * r * per_rank >= information_bits (at least 1)."""
    return max(1, math.ceil(information_bits / (bits_per_param * per_rank)))


def rank_table(
    information: dict[str, float], per_rank: int, ranks: list[int], bits_per_param: float
) -> list[dict[str, Any]]:
    """Per rank: LoRA parameters, capacity in bits, and capacity / information per budget."""
    rows = []
    for r in ranks:
        params = r * per_rank
        row: dict[str, Any] = {
            "rank": r,
            "lora_params": params,
            "capacity_bits": params * bits_per_param,
        }
        for label, bits in information.items():
            row[f"capacity/{label}"] = (params * bits_per_param / bits) if bits > 0 else math.inf
        rows.append(row)
    return rows


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    from tqdm.auto import tqdm

    from boxgym.train.mixture import build_mixture

    bits_per_param = float(settings["bits_per_param"])
    if bits_per_param <= 0:
        raise ValueError(f"setting bits_per_param must be > 0, got {bits_per_param}")
    mixture, env, lora = _sections(settings)
    rows = build_mixture(mixture, env)
    scores = []
    step = int(settings["batch_size"])
    for start in tqdm(range(0, len(rows), step), desc="scoring", unit="batch", leave=False):
        scores.extend(lab.completion_bits(rows[start : start + step]))
    records = [
        {
            "source": row["source"],
            "bits_per_example": s["bits"],
            "completion_tokens": float(s["tokens"]),
            "bits_per_token": s["bits"] / max(1, s["tokens"]),
            "task_id": row["task_id"],
        }
        for row, s in zip(rows, scores)
    ]
    total_bits = sum(s["bits"] for s in scores)
    total_tokens = sum(s["tokens"] for s in scores)
    per_example = total_bits / len(rows)

    model = meta_model(lab.policy.model_path)
    per_rank, names = lora_params_per_rank(model, lora.target_modules)
    if per_rank == 0:
        raise ValueError(
            f"LoRA target_modules {lora.target_modules!r} match no Linear layer of the model"
        )
    peft_check = {r: peft_lora_params(model, lora.target_modules, r) for r in (1, 8)}
    for r, count in peft_check.items():
        if count != r * per_rank:
            raise RuntimeError(
                f"LoRA parameter count disagrees with PEFT at rank {r}: {r * per_rank} vs {count}"
            )

    budgets = {"measured": total_bits}
    if settings.get("train_examples"):
        budgets[f"sft_{int(settings['train_examples'])}"] = per_example * int(
            settings["train_examples"]
        )
    rl_bits = float(settings["rl_bits_per_episode"])
    for episodes in settings["rl_episodes"]:
        budgets[f"rl_{int(episodes)}"] = rl_bits * int(episodes)
    ranks = [int(r) for r in settings["ranks"]]
    table = rank_table(budgets, per_rank, ranks, bits_per_param)
    smallest = {
        label: smallest_rank(bits, per_rank, bits_per_param) for label, bits in budgets.items()
    }
    extra = {
        "rows": len(rows),
        "total_bits": total_bits,
        "total_completion_tokens": total_tokens,
        "bits_per_token_pooled": total_bits / max(1, total_tokens),
        "bits_per_example": per_example,
        "lora_targets": lora.target_modules,
        "lora_modules": len(names),
        "lora_params_per_rank": per_rank,
        "peft_check": {str(k): v for k, v in peft_check.items()},
        "bits_per_param": bits_per_param,
        "rl_bits_per_episode": rl_bits,
        "information_bits": budgets,
        "smallest_rank": smallest,
        "rank_table": table,
    }
    return StudyOutput(records=records, extra=extra, notes=notes(extra), plot=_plotter(extra))


def format_rank_table(extra: dict[str, Any]) -> str:
    """The rank recommendation as a markdown table (also printed by the verb)."""
    budgets = extra["information_bits"]
    head = ["rank", "LoRA params", "capacity (bits)", *[f"capacity / {k}" for k in budgets]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in extra["rank_table"]:
        cells = [str(row["rank"]), f"{row['lora_params']:,}", f"{row['capacity_bits']:,.0f}"]
        cells += [f"{row[f'capacity/{k}']:.3g}" for k in budgets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(extra: dict[str, Any]) -> str:
    budgets = extra["information_bits"]
    smallest = extra["smallest_rank"]
    lines = [
        "## Information and the LoRA rank that holds it",
        "",
        f"- rows scored: {extra['rows']}, completion tokens: {extra['total_completion_tokens']:,}",
        f"- total surprisal: {extra['total_bits']:,.1f} bits; pooled {extra['bits_per_token_pooled']:.3f} "
        f"bits/token; {extra['bits_per_example']:.1f} bits/example",
        f"- LoRA targets `{extra['lora_targets']}`: {extra['lora_modules']} Linear modules, "
        f"{extra['lora_params_per_rank']:,} parameters per rank (PEFT agrees: {extra['peft_check']})",
        f"- capacity: {extra['bits_per_param']} bits per parameter; RL: "
        f"{extra['rl_bits_per_episode']} bit(s) per episode",
        "",
        "| information budget | bits | smallest rank |",
        "| --- | --- | --- |",
    ]
    for label, bits in budgets.items():
        lines.append(f"| {label} | {bits:,.0f} | {smallest[label]} |")
    lines += ["", format_rank_table(extra)]
    return "\n".join(lines)


def _plotter(extra: dict[str, Any]) -> Any:
    def plot(fig: Any, rows: list[dict[str, Any]]) -> None:
        from boxgym.studies.plots import draw_metric

        ax = fig.add_subplot(1, 2, 1)
        draw_metric(ax, rows, "source", None, "bits_per_token")
        ax.set_title("surprisal of completion tokens")
        ax = fig.add_subplot(1, 2, 2)
        ranks = [r["rank"] for r in extra["rank_table"]]
        ax.plot(
            ranks,
            [r["capacity_bits"] for r in extra["rank_table"]],
            marker="o",
            color="k",
            label=f"LoRA capacity ({extra['bits_per_param']} bits/param)",
        )
        for i, (label, bits) in enumerate(extra["information_bits"].items()):
            ax.axhline(
                bits, linestyle="--", color=f"C{i}", alpha=0.8, label=f"{label}: {bits:,.0f} bits"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel("bits")
        ax.set_title("capacity vs information")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    return plot


SEEING_ENV = {
    "family": "shapes",
    "difficulty": "easy",
    "scene_knobs": {
        "count": [1, 5],
        "object_size": [2, 3],
        "distractors": 0,
        "image_size": 224,
        "grid": "random",
    },
    "env_kwargs": {"max_image_pixels": 50176, "crop_max_pixels": 50176, "max_turns": 8},
}

STUDY = Study(
    name="information",
    question="How many bits does an SFT dataset hold for this model (surprisal of its completion "
    "tokens), and what LoRA rank has the capacity for them, or for RL at ~1 bit per episode?",
    factors=("source",),
    metrics=("bits_per_token", "bits_per_example", "completion_tokens"),
    defaults={
        "config": None,
        "env": SEEING_ENV,
        "mixture": {
            "num_examples": 64,
            "seed": 0,
            "first_scene_seed": 0,
            "weights": {"oracle": 1, "noisy": 1},
        },
        "lora_targets": None,
        "ranks": DEFAULT_RANKS,
        "bits_per_param": 2.0,
        "rl_bits_per_episode": 1.0,
        "rl_episodes": [1000, 10000, 100000],
        "train_examples": 20000,
        "batch_size": 2,
    },
    quick={
        "mixture": {
            "num_examples": 16,
            "seed": 0,
            "first_scene_seed": 0,
            "weights": {"oracle": 1, "noisy": 1},
        }
    },
    measure=measure,
    plot_x="source",
    plot_metrics=("bits_per_token",),
    fixed_help="the model; the mixture (sources, env, scene knobs) and LoRA targets in the "
    "settings (or the SFT run config named by `config`)",
)
