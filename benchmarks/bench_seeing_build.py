"""The seeing model's build speed: training steps per second in each stage, and the minutes a
build took to reach 0.9 held-out count accuracy.

    python benchmarks/bench_seeing_build.py                    # time 20 steps of each stage
    python benchmarks/bench_seeing_build.py --from-build DIR   # also read a finished build's log
    python benchmarks/bench_seeing_build.py --steps 0 --from-build DIR   # only the build's log
    python benchmarks/bench_seeing_build.py --steps 0 --prefix --threads 2  # tool rows' prefix cache

The step timing runs the default recipe's model and batches (fresh weights, one torch thread
unless --threads) for `--steps` steps of each stage (count, full, tool); the first
step of each is a warm-up and is not counted. `--from-build` reads `training_log.json` of a
finished build (its held-out checks, every 100 steps on 128 unseen scenes, greedy first token)
and reports the first check at or above 0.9 and the average steps per second of the build.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def time_steps(threads: int, steps: int) -> dict[str, float]:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from boxgym.models.batches import Batcher, reply_vocabulary, training_examples
    from boxgym.models.build import use_linear_patch_embedding
    from boxgym.models.loss import step_loss
    from boxgym.models.recipe import SeeingRecipe, seeing_config
    from boxgym.models.tiny import build_processor

    torch.set_num_threads(threads)
    recipe = SeeingRecipe()
    batcher = Batcher(build_processor(), recipe.digit_weight)
    vocab = reply_vocabulary(batcher)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(seeing_config(recipe))
    use_linear_patch_embedding(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    stages = (
        ("count", 0),
        ("full", recipe.count_steps + recipe.full_steps // 2),
        ("tool", recipe.tool_start + recipe.tool_steps // 2),
        ("polish", recipe.polish_start + recipe.polish_steps // 2),
    )
    for stage, first in stages:
        seconds = []
        for i in range(steps + 1):
            started = time.perf_counter()
            examples = training_examples(recipe, first + i)
            loss = step_loss(model, batcher, examples, recipe, vocab, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i:
                seconds.append(time.perf_counter() - started)
        out[f"{stage}_steps_per_second"] = round(1 / statistics.median(seconds), 3)
        out[f"{stage}_seconds_per_step_median"] = round(statistics.median(seconds), 3)
    return out


def time_prefix(threads: int, rows: int = 8, repeats: int = 3) -> dict[str, float]:
    """Forward + backward of `rows` tool rows: the full prompt against the shared prefix run
    once without gradient (`prefix_forward`), side by side on the same batch."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from boxgym.models.batches import Batcher
    from boxgym.models.loss import prefix_forward
    from boxgym.models.recipe import SeeingRecipe, seeing_config
    from boxgym.models.skills import make_example
    from boxgym.models.tiny import build_processor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(seeing_config(SeeingRecipe()))
    batch = Batcher(build_processor())([make_example("tool", 2_000_000 + i) for i in range(rows)])
    full_inputs = {k: v for k, v in batch.items() if k not in ("labels", "weights", "prefix_ids")}
    ways = {
        "full_prompt": lambda: model.model(**full_inputs, use_cache=False).last_hidden_state,
        "shared_prefix": lambda: prefix_forward(model, batch),
    }
    out: dict[str, float] = {"rows": rows, "prompt_tokens": batch["input_ids"].shape[1]}
    for name, forward in ways.items():
        seconds = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            forward().pow(2).mean().backward()
            seconds.append(time.perf_counter() - started)
        out[f"{name}_seconds"] = round(statistics.median(seconds[1:]), 3)
    out["speedup"] = round(out["full_prompt_seconds"] / out["shared_prefix_seconds"], 2)
    return out


def from_build(path: Path) -> dict[str, object]:
    log = json.loads((path / "training_log.json").read_text())
    results = json.loads((path / "results.json").read_text())
    first = next(((s, m, a) for s, m, a in log["checks"] if a >= 0.9), None)
    return {
        "steps": log["step"],
        "train_minutes": results.get("minutes"),
        "steps_per_second": round(log["step"] / log["seconds"], 3),
        "first_check_at_or_above_0.9": (
            {"step": first[0], "minutes": first[1], "accuracy": first[2]} if first else None
        ),
        "count_stage_minutes": log.get("count_stage_minutes"),
        "final_count_accuracy": results["count"]["accuracy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--from-build", type=Path, default=None)
    parser.add_argument(
        "--prefix", action="store_true", help="Also time tool rows with and without the prefix."
    )
    args = parser.parse_args()
    report: dict[str, object] = {"threads": args.threads}
    if args.steps > 0:  # --steps 0: only read --from-build
        report.update(time_steps(args.threads, args.steps))
    if args.prefix:
        report["tool_rows"] = time_prefix(args.threads)
    if args.from_build:
        report["build"] = from_build(args.from_build)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
