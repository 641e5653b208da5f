"""The learning proof and the boxing comparison on the SEEING tiny Qwen2-VL.

Run through `studies/learning_proof.py --model seeing --out DIR` (the learning proof) and
`studies/boxing_helps.py --model seeing --out DIR` (does boxing each object help?). Both use the
setting of `configs/proof_sft_seeing.yaml`: shapes, 224x224, 1-12 objects of 1.5-2.5 patches, no
distractors, random grid placement. Seed ranges are disjoint by construction: SFT scenes
0..num_examples, GRPO scenes 100000+, held-out evaluation 400000+.

Metrics come from the env (`episodes.jsonl` of a rollout run) or, for plain-text answers, from
`boxgym.models.scoring`; every mean has a 95% bootstrap interval `{"mean", "lo", "hi"}`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SFT_CONFIG = ROOT / "configs" / "proof_sft_seeing.yaml"
GRPO_CONFIG = ROOT / "configs" / "proof_grpo_seeing.yaml"
EVAL_FIRST_SEED = 400_000
PROOF_METRICS = ("count_accuracy", "enumeration_f1", "grounding_f1", "valid_call_rate", "reward")
# env metric name behind each proof metric
ENV_METRIC = {
    "count_accuracy": "count_correct",
    "enumeration_f1": "enumeration_f1",
    "grounding_f1": "grounding_f1",
    "valid_call_rate": "valid_call_rate",
    "reward": "reward",
}
DIRECT_QUESTION = "How many shapes are there? Answer with a number."


def ci(values: list[float]) -> dict[str, Any]:
    from boxgym.models.scoring import ci as _ci

    return _ci(values)


def load_configs(
    model: str,
    out: Path,
    sft_steps: int | None = None,
    grpo_steps: int | None = None,
    sft_extra: list[str] = (),
    grpo_extra: list[str] = (),
):
    """The SFT and GRPO run configs of the proof, pointed at `model` and `out`."""
    from boxgym.train.config import GRPORunConfig, SFTRunConfig, load_config

    sft = [*sft_extra, f"model.path={model}", f"trainer.output_dir={out / 'sft'}"]
    if sft_steps is not None:
        sft.append(f"trainer.max_steps={sft_steps}")
    grpo = [
        *grpo_extra,
        f"model.path={model}",
        f"trainer.output_dir={out / 'grpo'}",
        f"init_adapter={out / 'sft' / 'adapter'}",
    ]
    if grpo_steps is not None:
        grpo.append(f"trainer.max_steps={grpo_steps}")
    return load_config(SFTRunConfig, SFT_CONFIG, sft), load_config(GRPORunConfig, GRPO_CONFIG, grpo)


def eval_seeds(n: int) -> list[int]:
    return list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + n))


def evaluate_tools(
    adapter: Path | None, model: str, env_section: Any, seeds: list[int], out: Path
) -> dict[str, Any]:
    """Greedy tool-use episodes of `adapter` on held-out scenes through the rollout runner.

    Returns the proof metrics (mean with 95% CI), per-episode rows (true count, correct), and
    the seconds taken.
    """
    from boxgym.policies.hf import HFPolicy
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import EpisodeStore
    from boxgym.train.mixture import make_env, scene_task

    tasks = [scene_task(env_section, seed) for seed in seeds]
    policy = HFPolicy(
        model=model,
        adapter=str(adapter) if adapter else None,
        device="cpu",
        dtype="float32",
        temperature=0.0,
        max_new_tokens=480,  # the GRPO config's max_completion_length
        batch_size=16,
        seed=0,
    )
    started = time.time()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    store = EpisodeStore(out)
    run_rollouts(
        tasks, policy, lambda: make_env(env_section), store, group_size=1, seed=0, progress=False
    )
    records = [
        json.loads(line)
        for line in (out / "episodes.jsonl").read_text().splitlines()
        if line.strip()
    ]
    truth = {t.id: t.count for t in tasks}
    summary: dict[str, Any] = {"episodes": len(records), "seconds": round(time.time() - started)}
    for name in PROOF_METRICS:  # a metric the env left empty (no answer, no call) counts as 0
        summary[name] = ci([float(r["metrics"].get(ENV_METRIC[name]) or 0.0) for r in records])
    summary["rows"] = [
        {
            "true_count": truth[r["key"]["task_id"]],
            "correct": float(r["metrics"].get("count_correct") or 0.0),
            "enumeration_f1": float(r["metrics"].get("enumeration_f1") or 0.0),
        }
        for r in records
    ]
    return summary


def direct_examples(env_section: Any, seeds: list[int]):
    """The proof's scenes asked directly: "How many shapes are there? Answer with a number."."""
    from boxgym.models.skills import Example
    from boxgym.train.mixture import scene_task

    examples = []
    for seed in seeds:
        task = scene_task(env_section, seed)
        examples.append(Example("count", seed, task, DIRECT_QUESTION, str(task.count)))
    return examples


def evaluate_direct(model_path: str, adapter: Path | None, env_section: Any, seeds: list[int]):
    """Greedy plain-text answers to the direct question, scored by the true count."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from boxgym.models.evaluation import generate_replies
    from boxgym.models.scoring import read_count

    processor = AutoProcessor.from_pretrained(model_path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    examples = direct_examples(env_section, seeds)
    replies: list[str] = []
    started = time.time()
    for i in range(0, len(examples), 50):
        replies += generate_replies(model, processor, examples[i : i + 50], max_new_tokens=8)
    rows = [
        {"true_count": e.task.count, "correct": float(read_count(r) == e.task.count), "reply": r}
        for e, r in zip(examples, replies)
    ]
    return {
        "episodes": len(rows),
        "seconds": round(time.time() - started),
        "count_accuracy": ci([r["correct"] for r in rows]),
        "rows": rows,
    }


def by_true_count(rows: list[dict[str, Any]], key: str = "correct") -> dict[int, dict[str, Any]]:
    counts = sorted({r["true_count"] for r in rows})
    return {n: ci([r[key] for r in rows if r["true_count"] == n]) for n in counts}


def compact(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its per-episode rows (for results.json's headline section)."""
    return {k: v for k, v in summary.items() if k != "rows"}


def grpo_curve(grpo_dir: Path) -> list[dict[str, float]]:
    """Per GRPO step: mean reward and rollout count accuracy from the trainer's log."""
    state = json.loads((grpo_dir / "trainer_state.json").read_text())
    rows = []
    for entry in state["log_history"]:
        if "step" in entry and "reward" in entry:
            rows.append(
                {
                    "step": entry["step"],
                    "reward": entry["reward"],
                    "count_accuracy": entry.get("rollout/count_accuracy"),
                    "reward_std": entry.get("reward_std"),
                    "zero_std_share": entry.get("frac_reward_zero_std"),
                }
            )
    return rows


def plot_grpo(curve: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["reward"] for r in curve], label="mean reward (group samples)", color="C0")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward", color="C0")
    ax2 = ax.twinx()
    acc = [r["count_accuracy"] for r in curve]
    if any(a is not None for a in acc):
        ax2.plot(steps, acc, label="count accuracy (group samples)", color="C1")
    ax2.set_ylabel("count accuracy", color="C1")
    ax2.set_ylim(0, 1)
    ax.set_title("GRPO on the seeing tiny Qwen2-VL (training samples, temperature 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_by_count(arms: dict[str, dict[int, dict[str, Any]]], path: Path, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, table) in enumerate(arms.items()):
        xs = sorted(table)
        ax.plot(xs, [table[x]["mean"] for x in xs], marker="o", label=name, color=f"C{i}")
        ax.fill_between(
            xs,
            [table[x]["lo"] for x in xs],
            [table[x]["hi"] for x in xs],
            alpha=0.2,
            color=f"C{i}",
        )
    ax.set_xlabel("true count")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("Held-out scenes, greedy decoding, 95% bootstrap bands")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
