"""Rollout run costs: the time split (policy vs outside it) and bytes per episode with image dedup.

    .venv/bin/python benchmarks/bench_rollouts.py [--episodes 1000] [--policy noisy] [--out DIR]

Runs a scripted policy over the three scene families (easy), G=2 samples per task, through the
real runner and store, and reports:
- wall time, episodes/s, and the split: policy (the batched `act` calls), env (resets and steps
  with rendering), record (hashing images, building records), store (waiting for PNGs, writing
  and fsyncing lines);
- bytes per episode on disk (episodes.jsonl + images/), the number of image references in the
  records against the files stored, and what storing every reference would have cost.
A scripted policy takes microseconds, so "outside the policy" is nearly all of the wall time here;
with a model policy the same absolute outside-time is what matters (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def image_refs(episodes: list[dict]) -> list[str]:
    refs = []
    for ep in episodes:
        refs += ep["task"]["images"]
        for message in ep["prompt"]:
            refs += [b["image"] for b in message["content"] if b.get("type") == "image"]
        for turn in ep["turns"]:
            for message in turn["tool_results"]:
                refs += [b["image"] for b in message["content"] if b.get("type") == "image"]
    return refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--policy", default="noisy", choices=("oracle", "noisy", "random"))
    parser.add_argument(
        "--draw-box-returns", default="image", choices=("image", "crop", "both", "text")
    )
    parser.add_argument("--out", help="run directory (default: a temporary one, removed after)")
    args = parser.parse_args(argv)

    from boxgym.choices import SCENE_FAMILY_NAMES
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.policies.registry import make_policy
    from boxgym.rollouts.commands import scene_tasks
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import EpisodeStore, read_episodes

    n_tasks = max(1, args.episodes // args.group_size)
    tasks = scene_tasks(list(SCENE_FAMILY_NAMES), n_tasks, seed=0, difficulty="easy")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_rollouts_"))
    if out.exists():
        shutil.rmtree(out)
    config = EnvConfig(draw_box_returns=args.draw_box_returns)
    policy = make_policy(args.policy, seed=0)
    start = time.perf_counter()
    with EpisodeStore(out) as store:
        stats = run_rollouts(
            tasks,
            policy,
            lambda: BoxGymEnv(config=config),
            store,
            group_size=args.group_size,
            progress=False,
        )
    wall = time.perf_counter() - start
    episodes = read_episodes(out).episodes
    refs = image_refs(episodes)
    files = list((out / "images").glob("*.png"))
    image_bytes = sum(p.stat().st_size for p in files)
    line_bytes = (out / "episodes.jsonl").stat().st_size
    mean_png = image_bytes / max(1, len(files))
    outside = wall - stats.policy_s
    report = {
        "policy": args.policy,
        "draw_box_returns": args.draw_box_returns,
        "episodes": len(episodes),
        "wall_s": round(wall, 2),
        "episodes_per_s": round(len(episodes) / wall, 1),
        "policy_s": round(stats.policy_s, 3),
        "env_s": round(stats.env_s, 2),
        "record_s": round(stats.record_s, 2),
        "store_s": round(stats.store_s, 2),
        "outside_policy_s": round(outside, 2),
        "outside_policy_ms_per_episode": round(1000 * outside / len(episodes), 2),
        "policy_fraction": round(stats.policy_s / wall, 4),
        "image_refs": len(refs),
        "distinct_images": len(set(refs)),
        "image_files": len(files),
        "bytes_per_episode": round((image_bytes + line_bytes) / len(episodes)),
        "image_bytes_per_episode": round(image_bytes / len(episodes)),
        "jsonl_bytes_per_episode": round(line_bytes / len(episodes)),
        "bytes_per_episode_without_dedup_est": round(
            (mean_png * len(refs) + line_bytes) / len(episodes)
        ),
    }
    print(json.dumps(report, indent=2))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
