"""Pilot of a grounding-heavy last stage: continue a finished seeing checkpoint for `--steps`
steps and score it as a build is scored.

The continuation uses the build's own training code (`step_loss` on `training_examples`, fresh
scenes from seeds never used by the build: recipe seed 7), a fresh AdamW, warm-up over 30 steps
to `--lr` and cosine decay to a tenth of it, batch 32, 1-5 objects. It then runs the build's
evaluation (`final_results`: 500 counting scenes, 200 of each other skill, 100 in the env's
context) and writes it to `--out`, the continued checkpoint beside it (`--out` without `.json`).
`--padded` writes the training replies' coordinates with 3 digits (`(062,188)`), which the env's
parser reads like any integer. A pilot, not a build: the recipe's `polish_*` stage is the real
thing (`boxgym tiny-model --seeing --set ... --set polish_steps=N` continues the cached build of
the same recipe without it, with the recipe's schedule: 50 warm-up steps, floor 0.05); this
script is what measured the figures in docs/models.md, and it also takes any mix and `--padded`.

    python experiments/seeing_polish_pilot.py --model DIR --steps 500 --out OUT.json \\
        [--mix '[["ground", 0.8], ["count", 0.2]]'] [--padded]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

import boxgym.models.skills as seeing_tasks
from boxgym.models.batches import Batcher, reply_vocabulary, training_examples
from boxgym.models.build import Progress, save_checkpoint, use_linear_patch_embedding
from boxgym.models.cache import resolve_model
from boxgym.models.evaluation import final_results
from boxgym.models.loss import step_loss
from boxgym.models.recipe import SeeingRecipe

DEFAULT_MIX = json.dumps([[name, share] for name, share in SeeingRecipe().polish_mix])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a finished seeing checkpoint")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mix", default=DEFAULT_MIX, help="JSON [[skill, share], ...]")
    parser.add_argument("--padded", action="store_true", help="3-digit coordinates")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-scenes", type=int, default=500, help="counting scenes")
    parser.add_argument("--ground-scenes", type=int, default=200, help="scenes of other skills")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.padded:
        plain = seeing_tasks.grounding_text

        def padded(label: str, corners: tuple[int, ...]) -> str:
            return plain(label, tuple(f"{int(c):03d}" for c in corners))

        seeing_tasks.grounding_text = padded  # make_example looks it up at call time
    base = Path(resolve_model(args.model))
    model = Qwen2VLForConditionalGeneration.from_pretrained(base)
    processor = AutoProcessor.from_pretrained(base)
    built = SeeingRecipe.from_identity(json.loads((base / "recipe.json").read_text()))
    mix = tuple((name, float(share)) for name, share in json.loads(args.mix))
    # one long "full" stage with the pilot's mix, every grounding scene 1-5 objects at once
    recipe = replace(
        built, count_steps=0, full_steps=10**6, ground_curriculum=1e-9, seed=7, full_mix=mix
    )
    batcher = Batcher(processor, recipe.digit_weight)
    vocab = reply_vocabulary(batcher)
    use_linear_patch_embedding(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), fused=True)
    generator = torch.Generator().manual_seed(7)
    model.train()
    started = time.time()
    for step in range(args.steps):
        if step < 30:
            lr = args.lr * (step + 1) / 30
        else:
            frac = (step - 30) / max(1, args.steps - 30)
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        examples = training_examples(recipe, step)
        loss = step_loss(model, batcher, examples, recipe, vocab, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.time() - started:.0f} s", flush=True)
    train_minutes = round((time.time() - started) / 60, 1)
    model.eval()
    prog = Progress(**json.loads((base / "training_log.json").read_text()))
    results = final_results(model, processor, built, prog, args.eval_scenes, args.ground_scenes)
    results["pilot"] = {
        "base": str(base),
        "steps": args.steps,
        "lr": args.lr,
        "mix": mix,
        "padded": args.padded,
        "train_minutes": train_minutes,
        "minutes": round((time.time() - started) / 60, 1),
    }
    out = Path(args.out)
    save_checkpoint(model, processor, out.with_suffix(""))
    out.write_text(json.dumps(results, indent=1))
    ground, count, tool = results["ground"], results["count"]["accuracy"], results["tool"]
    print(
        f"boxes P {ground['precision']['mean']:.3f} R {ground['recall']['mean']:.3f}; "
        f"count {count['mean']:.3f} [{count['lo']:.3f}, {count['hi']:.3f}]; in the env: count "
        f"{tool['count_accuracy']['mean']:.2f}, answered {tool['answered']['mean']:.2f}"
    )


if __name__ == "__main__":
    main()
