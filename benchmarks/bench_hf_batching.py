"""Benchmark: `hf` rollouts at batch 16 vs batch 1 with the tiny Qwen2-VL on the CPU.

Runs the same N seeded scene tasks through `boxgym.rollouts.runner.run_rollouts` twice with the
`hf` policy, once one conversation per `generate` call and once `--batch` at a time, and reports
episodes per second, the speed-up, and the share of wall time spent outside the policy.
Acceptance (issue 3): batch 16 reaches at least 4x the episodes/s of batch 1.

    python benchmarks/bench_hf_batching.py [--tasks 16] [--batch 16] [--max-turns 2]
        [--max-new-tokens 16] [--family screens] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

from boxgym.data.scenes import make_scene_task
from boxgym.env import BoxGymEnv
from boxgym.policies.hf import HFPolicy
from boxgym.policies.prompting import load_processor, prepare_inputs
from boxgym.rollouts.runner import run_rollouts
from boxgym.rollouts.store import EpisodeStore


def run_once(tasks, batch: int, args: argparse.Namespace) -> dict:
    policy = HFPolicy(
        model=args.model,
        device="cpu",
        dtype="float32",
        batch_size=batch,
        temperature=1.0,
        max_new_tokens=args.max_new_tokens,
        seed=0,
    )
    policy.act(  # warm-up: first-call allocations and lazy imports stay out of the timing
        [[{"role": "user", "content": [{"type": "text", "text": "warm up"}]}]], tools=[]
    )
    with tempfile.TemporaryDirectory() as out:
        store = EpisodeStore(out)
        start = time.perf_counter()
        stats = run_rollouts(
            tasks,
            policy,
            lambda: BoxGymEnv(family=args.family, max_turns=args.max_turns),
            store,
            group_size=1,
            seed=0,
            batch_size=batch,
            max_live=None,
            progress=False,
        )
        wall = time.perf_counter() - start
    return {
        "batch": batch,
        "episodes": stats.episodes,
        "turns": stats.turns,
        "policy_calls": stats.policy_calls,
        "wall_s": round(wall, 3),
        "episodes_per_s": round(stats.episodes / wall, 4),
        "policy_s": round(stats.policy_s, 3),
        "outside_policy_share": round(max(0.0, wall - stats.policy_s) / wall, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the tiny model)")
    parser.add_argument("--family", default="screens")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [make_scene_task(args.family, seed=i) for i in range(args.tasks)]
    probe = BoxGymEnv(family=args.family, max_turns=args.max_turns)
    probe.reset(seed=0, options={"task": tasks[0]})
    processor = load_processor(args.model)
    first_prompt = prepare_inputs(processor, [probe.messages], probe.tool_schemas)["input_ids"]
    image_tokens = int((first_prompt == 151655).sum())
    one = run_once(tasks, 1, args)
    many = run_once(tasks, args.batch, args)
    speedup = many["episodes_per_s"] / one["episodes_per_s"]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "first_prompt_tokens": int(first_prompt.shape[1]),
        "first_prompt_image_tokens": image_tokens,
        "batch_1": one,
        f"batch_{args.batch}": many,
        "speedup": round(speedup, 2),
        "meets_4x": speedup >= 4.0,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0 if speedup >= 4.0 else 1


if __name__ == "__main__":
    sys.exit(main())
