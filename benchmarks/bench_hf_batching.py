"""Benchmark: `hf` rollouts at batch 16 vs batch 1 with the tiny Qwen2-VL on the CPU.

Runs the same N seeded scene tasks through `boxgym.rollouts.runner.run_rollouts` twice with the
`hf` policy, once one conversation per policy call and once `--batch` at a time, and reports
episodes per second, the speed-up, and the share of wall time spent outside the policy.
Target: batch 16 reaches at least 4x the episodes/s of batch 1. Each batch size
runs `--repeats` times, alternating, and the median runs are compared.

Conditions are a real rollout's: the env's default settings (12 turns at most, the default
system prompt and tools), sampling at temperature 1 and 64 new tokens per turn (the tiny model's
random weights rarely emit a valid tool call, so most episodes run all their turns). Each batch
size gets a fresh policy, so encoding the prompts it keeps (the shared system turn, each
conversation's last prompt) is paid for inside its timing. Run it with one intra-op thread per
process, as the acceptance figure is stated for:

    OMP_NUM_THREADS=1 python benchmarks/bench_hf_batching.py --threads 1 [--repeats 3] [--tasks 16]
        [--batch 16] [--max-turns N] [--max-new-tokens 64] [--family screens]
        [--no-reuse-prompts] [--json OUT]
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


def make_env(args: argparse.Namespace) -> BoxGymEnv:
    """The env with its default settings, or `--max-turns` when given."""
    if args.max_turns is None:
        return BoxGymEnv(family=args.family)
    return BoxGymEnv(family=args.family, max_turns=args.max_turns)


def run_once(tasks, batch: int, args: argparse.Namespace) -> dict:
    policy = HFPolicy(
        model=args.model,
        device="cpu",
        dtype="float32",
        batch_size=batch,
        temperature=1.0,
        max_new_tokens=args.max_new_tokens,
        seed=0,
        reuse_prompts=not args.no_reuse_prompts,
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
            lambda: make_env(args),
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


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda run: run["wall_s"])[(len(runs) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the tiny model)")
    parser.add_argument("--family", default="screens")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-turns", type=int, default=None, help="default: the env's own")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per batch size, alternated; medians compared"
    )
    parser.add_argument(
        "--no-reuse-prompts",
        action="store_true",
        help="encode every prompt in full (HFPolicy(reuse_prompts=False)), for comparison",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [make_scene_task(args.family, seed=i) for i in range(args.tasks)]
    probe = make_env(args)
    probe.reset(seed=0, options={"task": tasks[0]})
    processor = load_processor(args.model)
    first_prompt = prepare_inputs(processor, [probe.messages], probe.tool_schemas)["input_ids"]
    image_tokens = int((first_prompt == 151655).sum())
    # Alternate the two batch sizes `--repeats` times and compare medians: on a shared machine a
    # single run moves by 10-20%.
    ones, manys = [], []
    for _ in range(args.repeats):
        ones.append(run_once(tasks, 1, args))
        manys.append(run_once(tasks, args.batch, args))
    one = median_run(ones)
    many = median_run(manys)
    speedup = many["episodes_per_s"] / one["episodes_per_s"]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "first_prompt_tokens": int(first_prompt.shape[1]),
        "first_prompt_image_tokens": image_tokens,
        "batch_1": one,
        f"batch_{args.batch}": many,
        "batch_1_walls": [run["wall_s"] for run in ones],
        f"batch_{args.batch}_walls": [run["wall_s"] for run in manys],
        "speedup": round(speedup, 2),
        "speedup_per_repeat": [
            round(m["episodes_per_s"] / o["episodes_per_s"], 2) for o, m in zip(ones, manys)
        ],
        "meets_4x": speedup >= 4.0,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0 if speedup >= 4.0 else 1


if __name__ == "__main__":
    sys.exit(main())
