"""Does boxing each object help? Count accuracy by true count, three ways, on the seeing model.

Arms, all on the same held-out scenes (shapes, 224x224, 1-12 objects; seeds 400000+), greedy:

1. direct, zero-shot: the seeing model asked "How many shapes are there? Answer with a number.";
2. direct, trained: the same training budget as the tool arm spent without tools: SFT on the
   same scenes answered directly ("7"), same LoRA, examples, steps, batch and learning rate;
   then GRPO with the same steps, group size, batch, temperature and learning rate, rewarded
   1 for the exact count;
3. with tools: the learning proof's adapters (`studies/learning_proof.py --model seeing`), which
   box every object in Qwen2-VL's grounding format and then call `answer`; its held-out episodes
   are read from the proof's results (after SFT, and after GRPO).

    python studies/learning_proof.py --model seeing --out runs/proof_seeing
    python studies/boxing_helps.py --model seeing --proof runs/proof_seeing --out runs/boxing

Writes `results.json`, `by_count.csv`, `by_count.png` and `table.md` in --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import seeing_proof as sp


def direct_rows(env_section: Any, seeds: list[int]) -> list[dict[str, Any]]:
    """SFT rows of the direct arm: the scene, the direct question, the true count as the reply."""
    rows = []
    for example in sp.direct_examples(env_section, seeds):
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": example.image},
                    {"type": "text", "text": example.question},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": example.reply}]},
        ]
        rows.append(
            {"messages": messages, "tools": [], "source": "direct", "task_id": example.task.id}
        )
    return rows


def count_reward(completions: list[Any], count: list[int], **_: Any) -> list[float]:
    """1.0 when the reply's first integer is the true count, else 0.0."""
    from boxgym.models.scoring import read_count

    rewards = []
    for completion, truth in zip(completions, count):
        text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
        if isinstance(text, list):
            text = " ".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        rewards.append(float(read_count(str(text)) == int(truth)))
    return rewards


def run_direct_grpo(grpo_config: Any, sft_adapter: Path, out: Path) -> Path:
    """GRPO on plain-text counts with the proof's GRPO budget; returns the adapter directory."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from boxgym.train.grpo import grpo_args
    from boxgym.train.mixture import scene_task
    from boxgym.train.modeling import attach_adapter, load_base_model, load_processor, save_adapter

    processor = load_processor(grpo_config.model)
    grpo_config.trainer.update(
        output_dir=str(out),
        max_completion_length=8,
        max_tool_calling_iterations=None,
    )
    args = grpo_args(grpo_config, processor)
    rows = []
    for index in range(grpo_config.tasks.num_tasks):
        task = scene_task(grpo_config.env, grpo_config.tasks.first_seed + index)
        rows.append(
            {
                "prompt": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image"},
                            {"type": "text", "text": sp.DIRECT_QUESTION},
                        ],
                    }
                ],
                "images": [task.images[0]],
                "count": task.count,
            }
        )
    model = attach_adapter(
        load_base_model(grpo_config.model, grpo_config.lora), grpo_config.lora, str(sft_adapter)
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[count_reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    trainer.train()
    adapter = save_adapter(trainer.model, processor, out)
    trainer.save_state()
    return adapter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="seeing", help="The seeing model (or its path).")
    parser.add_argument(
        "--proof", required=True, help="Output folder of `learning_proof.py --model seeing`."
    )
    parser.add_argument("--out", default="runs/boxing_helps", help="Output folder.")
    parser.add_argument("--resume", action="store_true", help="Reuse finished arms in --out.")
    args = parser.parse_args(argv)

    from boxgym.models.cache import resolve_model
    from boxgym.train.sft import run_sft

    model = resolve_model(args.model)
    proof_dir = Path(args.proof)
    proof = json.loads((proof_dir / "results.json").read_text())
    if "after_rows" not in proof.get("grpo", {}):
        raise SystemExit(f"{proof_dir} has no finished learning proof (grpo.after_rows)")
    proof_args = proof["args"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results: dict[str, Any] = (
        json.loads(results_file.read_text()) if args.resume and results_file.is_file() else {}
    )
    results["proof"] = str(proof_dir)

    def save() -> None:
        results_file.write_text(json.dumps(results, indent=2))

    sft_config, grpo_config = sp.load_configs(
        model,
        out / "direct",
        proof_args.get("sft_steps"),
        proof_args.get("grpo_steps"),
        sft_extra=proof_args.get("set") or [],
        grpo_extra=proof_args.get("grpo_set") or [],
    )
    seeds = sp.eval_seeds(proof_args["eval_tasks"])
    arms: dict[str, Any] = results.setdefault("arms", {})
    if "direct, zero-shot" not in arms:
        arms["direct, zero-shot"] = sp.evaluate_direct(model, None, sft_config.env, seeds)
        save()
    sft_adapter = out / "direct" / "sft" / "adapter"
    if "direct, SFT" not in arms:
        mix = sft_config.mixture
        scene_seeds = list(range(mix.first_scene_seed, mix.first_scene_seed + mix.num_examples))
        started = time.time()
        sft_adapter = run_sft(sft_config, rows=direct_rows(sft_config.env, scene_seeds))
        arms["direct, SFT"] = sp.evaluate_direct(model, sft_adapter, sft_config.env, seeds)
        arms["direct, SFT"]["train_seconds"] = round(time.time() - started)
        save()
    if "direct, SFT+GRPO" not in arms:
        started = time.time()
        adapter = run_direct_grpo(grpo_config, sft_adapter, out / "direct" / "grpo")
        arms["direct, SFT+GRPO"] = sp.evaluate_direct(model, adapter, sft_config.env, seeds)
        arms["direct, SFT+GRPO"]["train_seconds"] = round(time.time() - started)
        save()
    arms["tools, SFT"] = {"rows": proof["grpo"]["before_rows"], **proof["grpo"]["before"]}
    arms["tools, SFT+GRPO"] = {"rows": proof["grpo"]["after_rows"], **proof["grpo"]["after"]}
    tables = {name: sp.by_true_count(arm["rows"]) for name, arm in arms.items()}
    results["by_true_count"] = {
        name: {str(k): v for k, v in table.items()} for name, table in tables.items()
    }
    results["overall"] = {
        name: sp.ci([r["correct"] for r in arm["rows"]]) for name, arm in arms.items()
    }
    save()
    sp.plot_by_count(tables, out / "by_count.png", "count accuracy")
    write_tables(tables, results["overall"], out)
    print((out / "table.md").read_text())
    return 0


def write_tables(
    tables: dict[str, dict[int, dict[str, Any]]], overall: dict[str, Any], out: Path
) -> None:
    names = list(tables)
    counts = sorted({k for table in tables.values() for k in table})
    with open(out / "by_count.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "true_count", "n", "accuracy", "lo", "hi"])
        for name in names:
            for k in counts:
                cell = tables[name].get(k)
                if cell:
                    writer.writerow([name, k, cell["n"], cell["mean"], cell["lo"], cell["hi"]])
    lines = ["| true count | n | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for k in counts:
        n = next(t[k]["n"] for t in tables.values() if k in t)
        cells = [
            f"{tables[name][k]['mean']:.2f} [{tables[name][k]['lo']:.2f}, {tables[name][k]['hi']:.2f}]"
            if k in tables[name]
            else ""
            for name in names
        ]
        lines.append(f"| {k} | {n} | " + " | ".join(cells) + " |")
    cells = [
        f"**{overall[name]['mean']:.3f} [{overall[name]['lo']:.3f}, {overall[name]['hi']:.3f}]**"
        for name in names
    ]
    lines.append("| all | | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
