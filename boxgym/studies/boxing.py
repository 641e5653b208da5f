"""`boxing`: does boxing each object help the count? Count accuracy by true count, answering
directly against boxing with the tools, each untrained, after SFT and after SFT+GRPO.

Arms, all on the learning proof's held-out scenes, greedy:

- `tools, ...`: the learning proof's stages (`boxgym.studies.learning_proof`): the checkpoint,
  its SFT adapter and its GRPO adapter, playing tool-use episodes (box, then `answer`). Read from
  a finished proof (`--proof DIR`), or run here into `OUT/proof/` with these settings;
- `direct, ...`: the same scenes asked "How many shapes are there? Answer with a number."
  (`boxgym.studies.direct`): the checkpoint; after SFT on the proof's SFT scenes answered
  directly ("7") with the proof's SFT config and steps; after GRPO from that adapter with the
  proof's GRPO config and steps, rewarded 1 for the exact count.

So both protocols get the same training budget: scenes, LoRA, steps, batch, learning rate,
group size and temperature. Adapters and progress are under `OUT/direct/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from boxgym.studies.base import Study, StudyOutput
from boxgym.studies.learning_proof import DEFAULTS as PROOF_DEFAULTS
from boxgym.studies.learning_proof import QUICK as PROOF_QUICK

TOOL_ARMS = {"base": "tools, zero-shot", "sft": "tools, SFT", "grpo": "tools, SFT+GRPO"}
DIRECT_ARMS = ("direct, zero-shot", "direct, SFT", "direct, SFT+GRPO")
METRICS = ("count_accuracy", "answered")


def proof_arms(lab: Any, settings: dict[str, Any], out: Path) -> tuple[list[dict], dict, str]:
    """The tool arms' records, the proof's settings, and where the proof is."""
    from boxgym.studies.learning_proof import run_proof

    if settings["proof"] is None:
        folder = out / "proof"
        folder.mkdir(parents=True, exist_ok=True)
        proof_settings = {k: settings[k] for k in PROOF_DEFAULTS}
        records, _ = run_proof(lab, proof_settings, folder)
    else:
        folder = Path(settings["proof"]).expanduser()
        results = folder / "results.json"
        if not results.is_file():
            raise ValueError(
                f"--proof {folder}: no results.json; run `boxgym study learning-proof` there first"
            )
        proof = json.loads(results.read_text(encoding="utf-8"))
        if proof.get("study") != "learning-proof":
            raise ValueError(f"--proof {folder}: its results.json is not a learning proof's")
        proof_settings = proof["settings"]
        with (folder / "examples.jsonl").open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    arms = [
        {"arm": TOOL_ARMS[r["stage"]], **{k: r.get(k) for k in (*METRICS, "true_count", "seed")}}
        for r in records
    ]
    return arms, proof_settings, str(folder)


def direct_rows(tasks: list[Any], question: str) -> list[dict[str, Any]]:
    """SFT rows of the direct arm: the scene, the question, the true count as the reply."""
    from boxgym.studies.direct import conversation

    return [
        {
            "messages": [
                *conversation(task.images[0], question),
                {"role": "assistant", "content": [{"type": "text", "text": str(task.count)}]},
            ],
            "tools": [],
            "source": "direct",
            "task_id": task.id,
        }
        for task in tasks
    ]


def count_reward(completions: list[Any], count: list[int], **_: Any) -> list[float]:
    """GRPO reward of the direct arm: 1.0 when the reply's first number is the true count."""
    from boxgym.studies.direct import parse_count

    rewards = []
    for completion, truth in zip(completions, count):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        if isinstance(text, list):
            text = " ".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
        rewards.append(float(parse_count(str(text)) == int(truth)))
    return rewards


def direct_grpo(config: Any, question: str) -> Path:
    """GRPO on plain-text counts with the proof's GRPO config; the adapter directory."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from boxgym.train.grpo import grpo_args
    from boxgym.train.mixture import scene_task
    from boxgym.train.modeling import (
        attach_adapter,
        load_base_model,
        load_training_processor,
        save_adapter,
    )

    processor = load_training_processor(config.model)
    config.trainer.update(max_completion_length=8, max_tool_calling_iterations=None)
    rows = []
    for index in range(config.tasks.num_tasks):
        task = scene_task(config.env, config.tasks.first_seed + index)
        rows.append(
            {
                "prompt": [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": question}],
                    }
                ],
                "images": [task.images[0]],
                "count": task.count,
            }
        )
    model = attach_adapter(
        load_base_model(config.model, config.lora), config.lora, config.init_adapter
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[count_reward],
        args=grpo_args(config, processor),
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    adapter = save_adapter(trainer.model, processor, config.trainer["output_dir"])
    trainer.save_state()
    return adapter


def direct_arms(
    lab: Any, settings: dict[str, Any], proof_settings: dict[str, Any], out: Path
) -> list[dict[str, Any]]:
    """The direct arms' records: the checkpoint, after direct SFT, after direct GRPO."""
    from boxgym.models.cache import resolve_model
    from boxgym.studies.direct import Probe, ask_and_score, true_boxes
    from boxgym.studies.lab import Lab
    from boxgym.studies.learning_proof import (
        Progress,
        eval_seeds,
        load_configs,
        run_stage_training,
    )
    from boxgym.train.mixture import scene_task
    from boxgym.train.sft import run_sft

    out.mkdir(parents=True, exist_ok=True)
    sft_config, grpo_config = load_configs(proof_settings, resolve_model(lab.model_name), out)
    progress = Progress(out, {**proof_settings, "resume": settings["resume"]})
    question = settings["question"]
    mixture = sft_config.mixture
    train_tasks = [
        scene_task(sft_config.env, mixture.first_scene_seed + i)
        for i in range(mixture.num_examples)
    ]
    tasks = [scene_task(grpo_config.env, seed) for seed in eval_seeds(proof_settings)]
    asking = {"task": "count", "question": question, "n": len(tasks)}

    def ask(arm: str, adapter: Path | None) -> list[dict[str, Any]]:
        probes = [Probe(t.images[0], t, true_boxes(t), {"arm": arm}) for t in tasks]
        direct_lab = Lab(
            model=lab.model_name,
            adapter=None if adapter is None else str(adapter),
            device=lab.device,
            dtype=lab.dtype,
            batch_size=lab.batch_size,
            max_new_tokens=int(settings["direct_max_new_tokens"]),
        )
        return ask_and_score(direct_lab, probes, asking)

    records = ask("direct, zero-shot", None)
    sft = run_stage_training(
        "sft",
        sft_config,
        progress,
        out,
        lambda c: run_sft(c, rows=direct_rows(train_tasks, question)),
    )
    records += ask("direct, SFT", sft)
    grpo = run_stage_training(
        "grpo", grpo_config, progress, out, lambda c: direct_grpo(c, question)
    )
    records += ask("direct, SFT+GRPO", grpo)
    return [
        {k: r.get(k) for k in ("arm", *METRICS, "true_count", "seed", "reply")} for r in records
    ]


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    from boxgym.studies.runner import aggregate

    out = Path(getattr(lab, "out_dir", None) or ".")
    tools, proof_settings, folder = proof_arms(lab, settings, out)
    records = direct_arms(lab, settings, proof_settings, out / "direct") + tools
    overall = aggregate(records, ("arm",), METRICS)
    sections = {
        "overall": {
            row["arm"]: {
                m: {
                    "mean": row[f"{m}_mean"],
                    "lo": row[f"{m}_lo"],
                    "hi": row[f"{m}_hi"],
                    "n": row["n"],
                }
                for m in METRICS
            }
            for row in overall
        },
        "proof": {"folder": folder, "settings": proof_settings},
    }
    lines = ["## Over all true counts (count accuracy, mean [95% CI])", ""]
    lines += [
        f"- {arm}: {c['count_accuracy']['mean']:.3f} [{c['count_accuracy']['lo']:.3f}, "
        f"{c['count_accuracy']['hi']:.3f}] (n={c['count_accuracy']['n']})"
        for arm, c in sections["overall"].items()
    ]
    lines += ["", f"Tool arms from the learning proof in `{folder}`; its settings set the budget."]
    return StudyOutput(records=records, sections=sections, notes="\n".join(lines))


STUDY = Study(
    name="boxing",
    question="Does boxing each object help the count? Direct answers against tool episodes "
    "that box every object, untrained, after SFT and after SFT+GRPO, by true count.",
    factors=("arm", "true_count"),
    metrics=METRICS,
    defaults={
        **PROOF_DEFAULTS,
        "proof": None,
        "question": "How many shapes are there? Answer with a number.",
        "direct_max_new_tokens": 8,
    },
    quick=PROOF_QUICK,
    measure=measure,
    plot_x="true_count",
    plot_hue="arm",
    plot_metrics=("count_accuracy",),
    fixed_help="the held-out scenes and the training budget (the learning proof's settings)",
    setting_hint="; SFT and GRPO config overrides are --sft-set KEY=VALUE and --grpo-set KEY=VALUE",
)
