"""Benchmark: one turn of the mark-and-look loop with k = 0 and k = 12 marks drawn.

A turn of the loop is the model's reply to the conversation so far. Under `image_history: last`
the conversation holds one image however many objects are marked, and the `hf` policy continues
each turn from what it encoded at the turn before (the shared system turn, then the
conversation up to the image just dropped), so a turn should cost about the same at the 12th
object as at the first: an episode linear in its objects, not quadratic.
Target: with `image_history: last` and the kept prompts, the turn at k = 12 takes at most 1.3x
the turn at k = 0.

The conversations are the oracle's on 12-shape scenes of the marking study (336 px, the loop's
env); the policy replies `--tokens` tokens a turn whatever it writes (its stop tokens are
switched off), so every turn decodes the same length and only the prompt differs. Each
configuration plays every turn k = 0 .. 12 in order on a fresh policy, as a rollout does, and
the median of `--repeats` runs of each turn is reported. Compared side by side in one run:

- `last`, kept prompts (the protocol as rollouts run it);
- `last`, every prompt encoded in full (`reuse_prompts=False`);
- `all`, kept prompts (every marked image stays in the conversation).

    OMP_NUM_THREADS=2 python benchmarks/bench_marking_turn.py [--model marking] [--batch 8]
        [--tokens 24] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from boxgym.env.history import keep_images
from boxgym.models.cache import resolve_model
from boxgym.models.marking_skills import LOOP_ENV, count_task, step_messages
from boxgym.policies.hf import HFPolicy
from boxgym.provenance import checkpoint_key, provenance

TARGET = 1.3
KS = tuple(range(13))


def states(batch: int, image_history: str) -> tuple[dict[int, list], list]:
    """Per k, the batch's conversations after k oracle boxes (12-shape scenes)."""
    config = {**LOOP_ENV, "image_history": image_history}
    by_k: dict[int, list] = {}
    tools: list = []
    for k in KS:
        rows = []
        for seed in range(batch):
            messages, tools = step_messages(count_task(300_000 + seed, 12), seed, k, config)
            rows.append(keep_images(messages, image_history))
        by_k[k] = rows
    return by_k, tools


def play(model: str, batch: int, tokens: int, by_k: dict, tools: list, reuse: bool) -> list:
    """Seconds of each turn k = 0 .. 12, played in order on a fresh policy."""
    policy = HFPolicy(
        model=model,
        device="cpu",
        dtype="float32",
        batch_size=batch,
        temperature=0.0,
        max_new_tokens=tokens,
        reuse_prompts=reuse,
    )
    policy._stop_ids = torch.tensor([], dtype=torch.long)  # every reply is `tokens` long
    seconds = []
    for k in KS:
        started = time.perf_counter()
        policy.act(by_k[k], tools)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="marking", help="tiny, marking or a checkpoint folder")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    ways = {"last, kept prompts": ("last", True), "last, full prompts": ("last", False),
            "all, kept prompts": ("all", True)}  # fmt: skip
    conversations = {h: states(args.batch, h) for h in ("last", "all")}
    runs: dict[str, list[list[float]]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, (history, reuse) in ways.items():
            by_k, tools = conversations[history]
            runs[name].append(play(args.model, args.batch, args.tokens, by_k, tools, reuse))
    report = {"model": args.model, "batch": args.batch, "tokens": args.tokens,
              "repeats": args.repeats, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "ways": {}}  # fmt: skip
    print(f"one turn of the loop, batch {args.batch}, {args.tokens} tokens a reply (median s)")
    for name, repeats in runs.items():
        per_k = [statistics.median(r[k] for r in repeats) for k in KS]
        ratio = per_k[12] / per_k[0]
        report["ways"][name] = {"seconds_by_k": per_k, "k12_over_k0": ratio}
        print(f"  {name:20s} k=0 {per_k[0]:.3f}  k=6 {per_k[6]:.3f}  k=12 {per_k[12]:.3f}  "
              f"k=12/k=0 {ratio:.2f}x")  # fmt: skip
    ratio = report["ways"]["last, kept prompts"]["k12_over_k0"]
    report["target"] = TARGET
    report["met"] = ratio <= TARGET
    print(f"target: k=12 within {TARGET}x of k=0 with image_history last and kept prompts: "
          f"{'met' if report['met'] else 'NOT met'} ({ratio:.2f}x)")  # fmt: skip
    if args.json:
        report.update(provenance(" ".join(["python", *sys.argv])))
        report["checkpoint"] = checkpoint_key(resolve_model(args.model))
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
