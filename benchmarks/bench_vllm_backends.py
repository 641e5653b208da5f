"""Benchmark: the same model and tasks through `hf`, `vllm` (offline) and `openai` + `vllm serve`.

One run, one process, the three backends one after another on the CPU: completion tokens per
second and episodes per minute of the rollout itself, and each engine's start-up on its own.
The model is the seeing recipe's shape (text hidden 128, 4 layers, heads of 32; vision depth 2)
with random weights unless `--model` names a checkpoint (`--model seeing`: the trained one, once
`boxgym tiny-model --seeing` has built it); the tasks are the seeing model's (224 px shapes
scenes, 1-12 objects, the one-reply protocol: draw_box returning text, two turns, as
configs/proof_grpo_seeing.yaml).
Random weights rarely write a call or the end of a turn, so nearly every episode runs both turns
at `--max-new-tokens`: every backend does the same work. All three sample at temperature 1, in
float32, with every live conversation in one batch (`hf` at `--batch`, `vllm` in one `generate`,
`openai` with that many requests in flight).

Needs vLLM's CPU build (`make vllm`); run from .venv, it restarts itself in .venv-vllm:

    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/bench_vllm_backends.py [--tasks 16]
        [--max-new-tokens 64] [--batch 16] [--threads 2] [--model PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENE_KNOBS = {
    "count": [1, 12],
    "object_size": [1.5, 2.5],
    "image_size": 224,
    "distractors": 0,
    "grid": "random",
}
ENV_KWARGS = {
    "draw_box_returns": "text",
    "max_turns": 2,
    "max_calls_per_turn": 14,
    "max_calls": 28,
    "max_image_pixels": 50176,
    "crop_max_pixels": 50176,
    "image_history": "all",
}
ENGINE_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def seeing_shaped_model() -> str:
    """The seeing recipe's architecture with random weights, built once into the cache."""
    from boxgym.models.cache import cache_dir
    from boxgym.models.recipe import SeeingRecipe, seeing_config
    from boxgym.models.tiny import BUILD_VERSION, build_tiny_model

    recipe = SeeingRecipe()
    out = cache_dir() / f"seeing-shape-qwen2-vl-v{BUILD_VERSION}-{recipe.key()}"
    return str(build_tiny_model(out, config=seeing_config(recipe)))


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and every process under it: the engine
    processes of the offline engine and the server are children of this one."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_backend(name: str, policy, tasks, args: argparse.Namespace) -> dict:
    """Roll `tasks` out with `policy` after a warm-up call; the rollout's own figures. CPU
    seconds are the whole process tree's (client, engine and server alike): on a shared
    machine they move less than the wall clock."""
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import EpisodeStore

    policy.act([[{"role": "user", "content": [{"type": "text", "text": "warm up"}]}]], tools=[])
    policy.tokens_generated = 0
    config = EnvConfig(**ENV_KWARGS)
    with tempfile.TemporaryDirectory() as out:
        cpu = tree_cpu_s()
        start = time.perf_counter()
        stats = run_rollouts(
            tasks,
            policy,
            lambda: BoxGymEnv(config=config),
            EpisodeStore(out),
            group_size=1,
            seed=0,
            batch_size=args.batch if name == "hf" else None,
            max_live=None,
            progress=False,
        )
        wall = time.perf_counter() - start
        cpu = tree_cpu_s() - cpu
    return {
        "episodes": stats.episodes,
        "turns": stats.turns,
        "completion_tokens": policy.tokens_generated,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(policy.tokens_generated / wall, 1),
        "episodes_per_min": round(60 * stats.episodes / wall, 2),
        "cpu_s": round(cpu, 2),
        "tokens_per_cpu_s": round(policy.tokens_generated / cpu, 1),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }


def start_server(model: str, port: int, image_limit: int, log: Path) -> subprocess.Popen:
    """`vllm serve` of `model` on a loopback port, started as users start it (vLLM's defaults)."""
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "8192", "--seed", "0",
        "--limit-mm-per-prompt", json.dumps({"image": image_limit, "video": 0}),
    ]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(
            command,
            env={**os.environ, **ENGINE_ENVIRONMENT},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"vllm serve exited; see {log}") from None
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: seeing-shaped)")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="hf: conversations per generate")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, every backend")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    from boxgym.env import EnvConfig
    from boxgym.models.cache import resolve_model
    from boxgym.policies.hf import HFPolicy
    from boxgym.policies.openai_policy import OpenAIPolicy
    from boxgym.policies.vllm import VLLMPolicy, episode_image_limit
    from boxgym.rollouts.commands import scene_tasks

    torch.set_num_threads(args.threads)
    model = resolve_model(args.model) if args.model else seeing_shaped_model()
    tasks = scene_tasks(["shapes"], args.tasks, 0, "easy", **SCENE_KNOBS)
    limit = episode_image_limit(EnvConfig(**ENV_KWARGS), 1)
    decoding = {"temperature": 1.0, "max_new_tokens": args.max_new_tokens, "seed": 0}
    results, starts = {}, {}

    began = time.perf_counter()
    hf = HFPolicy(model=model, device="cpu", dtype="float32", batch_size=args.batch, **decoding)
    starts["hf"] = round(time.perf_counter() - began, 1)
    results["hf"] = run_backend("hf", hf, tasks, args)
    del hf

    os.environ.update(ENGINE_ENVIRONMENT)
    began = time.perf_counter()
    offline = VLLMPolicy(model=model, dtype="float32", limit_mm_per_prompt=limit, **decoding)
    starts["vllm"] = round(time.perf_counter() - began, 1)
    results["vllm"] = run_backend("vllm", offline, tasks, args)
    offline.llm.llm_engine.engine_core.shutdown()
    del offline

    with tempfile.TemporaryDirectory() as logs:
        began = time.perf_counter()
        server = start_server(model, args.port, limit, Path(logs) / "server.log")
        starts["openai+vllm serve"] = round(time.perf_counter() - began, 1)
        try:
            client = OpenAIPolicy(
                base_url=f"http://127.0.0.1:{args.port}/v1",
                model="bench",
                max_concurrency=args.tasks,
                timeout=600,
                **decoding,
            )
            results["openai+vllm serve"] = run_backend("openai", client, tasks, args)
        finally:
            server.terminate()
            server.wait(timeout=60)

    for name, row in results.items():
        row["start_s"] = starts[name]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    from importlib.metadata import version

    report = {
        "command": " ".join(
            ["python", "benchmarks/bench_vllm_backends.py", *(argv or sys.argv[1:])]
        ),
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"load avg at the end {os.getloadavg()[0]:.2f}",
        "versions": {
            name: version(dist)
            for name, dist in (
                ("vllm", "vllm-cpu"),
                ("torch", "torch"),
                ("transformers", "transformers"),
            )
        },
        "model": model,
        "checkpoint": Path(model).name,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("vllm") is None:
        venv_python = ROOT / ".venv-vllm" / "bin" / "python"
        if not venv_python.exists():
            print("bench_vllm_backends: skipped, needs vLLM's CPU build: run `make vllm` first")
            sys.exit(0)
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    sys.exit(main())
