"""The `playground` verb: one free-form prompt (with images) through a model, logged to JSONL.

For quick manual probing: `boxgym playground --model PATH --image a.png "How many screens?"`
prints the model's raw reply and appends the exchange (time, model, knobs, prompt, image paths
and SHA-256 hashes, response, seconds) as one line of the log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from boxgym.choices import DTYPES

DEFAULT_LOG = Path("runs") / "playground.jsonl"


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("prompt", help="The user's text.")
    parser.add_argument(
        "--model", default=None, help="Checkpoint path or hub name (default: the tiny model)."
    )
    parser.add_argument("--adapter", default=None, help="PEFT LoRA adapter directory.")
    parser.add_argument(
        "--image", action="append", default=[], metavar="FILE", help="An image (repeatable)."
    )
    parser.add_argument("--system", default=None, help="An optional system message.")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy.")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda", ...')
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights dtype (auto: bfloat16 on a capable GPU)",
    )
    parser.add_argument(
        "--log", type=Path, default=DEFAULT_LOG, help=f"JSONL log to append to ({DEFAULT_LOG})."
    )
    tools = parser.add_argument_group("the tool loop")
    tools.add_argument(
        "--tools",
        action="store_true",
        help="Run the env's tool loop (draw_box, crop, label, remove_box, answer) on the first "
        "image with the prompt as the question, and write the episode page.",
    )
    tools.add_argument("--count", type=int, help="--tools: the true count, to score the answer.")
    tools.add_argument("--max-turns", type=int, default=6, help="--tools: assistant turns at most.")
    tools.add_argument(
        "--out", help="--tools: the run folder (default runs/playground/<image>-<time>)."
    )


def load_images(paths: list[str]) -> list[tuple[Path, str, Image.Image]]:
    """(path, sha256, RGB image) for each file, with a clear error for a missing or bad one."""
    loaded = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"no such image file: {path}")
        data = path.read_bytes()
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Image.DecompressionBombError as error:
            raise ValueError(
                f"{path} is too large to open safely ({error}); shrink it first, e.g. to 4096 "
                "pixels on the long side"
            ) from error
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path} is not a readable image: {error}") from error
        loaded.append((path, hashlib.sha256(data).hexdigest(), rgb))
    return loaded


def build_messages(prompt: str, images: list[Image.Image], system: str | None) -> list[dict]:
    """The conversation in boxgym's message format: optional system, then images + prompt."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
    content.append({"type": "text", "text": prompt})
    messages.append({"role": "user", "content": content})
    return messages


def append_log(log: Path, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line (one write call, so lines never interleave)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_tool_loop(args: argparse.Namespace, policy: Any, images: list[Any]) -> int:
    """One episode of the env on your image: the model calls tools until it answers."""
    from boxgym.data.task import Task, unusable_reason
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.errors import UserError
    from boxgym.output_dir import check_out_path, entries
    from boxgym.rollouts.metrics import summarize
    from boxgym.rollouts.run_dir import hold_run, prepare_run_dir
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import EpisodeStore, read_episodes
    from boxgym.rollouts.viewer import write_index

    if not images:
        raise UserError("--tools needs an image: --image photo.png")
    path, _, image = images[0]
    answer = {"count": args.count} if args.count is not None else {}
    task = Task(id=path.stem, images=[image], question=args.prompt, kind="count", answer=answer,
                source="playground", split="user", meta={"image": str(path)})  # fmt: skip
    reason = unusable_reason(task)
    if reason is not None:
        raise UserError(f"the env cannot use this image or count: {reason}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path("runs") / "playground" / f"{path.stem}-{stamp}")
    check_out_path(out)
    if entries(out):
        raise UserError(f"{out} is not empty; choose another --out")
    config = EnvConfig(max_turns=args.max_turns)
    run = {"policy": "hf", "playground": True, "n_tasks": 1, "group_size": 1,
           "seed": args.seed, "prompt": args.prompt, "image": str(path)}  # fmt: skip
    with hold_run(out, None):  # one run per folder, as every run verb
        prepare_run_dir(out, run, resume=False, overwrite=False)
        with EpisodeStore(out) as store:
            run_rollouts([task], policy, lambda: BoxGymEnv(config=config), store, seed=args.seed,
                         run_info={"policy": "hf", "run": out.name})  # fmt: skip
        episodes = read_episodes(out).episodes
        page = write_index(out, episodes, summarize(episodes, seed=args.seed), title=args.prompt)
    record = episodes[-1]
    print(f"answer: {record.get('final_answer')}  failure: {record.get('failure')}  "
          f"reward: {record.get('reward')}  turns: {len(record.get('turns', []))}")  # fmt: skip
    print(f"page: {page.resolve()}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        images = load_images(args.image)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from boxgym.policies.hf import HFPolicy

    knobs = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }
    try:
        policy = HFPolicy(
            model=args.model, adapter=args.adapter, device=args.device, dtype=args.dtype, **knobs
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.tools:
        return run_tool_loop(args, policy, images)
    messages = build_messages(args.prompt, [image for _, _, image in images], args.system)
    start = time.perf_counter()
    response = policy.act([messages], tools=[])[0]
    seconds = time.perf_counter() - start
    print(response)
    append_log(
        args.log,
        {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": policy.model_path,
            "adapter": policy.adapter,
            "device": policy.device,
            "dtype": str(policy.dtype).removeprefix("torch."),
            **knobs,
            "system": args.system,
            "prompt": args.prompt,
            "images": [{"path": str(path), "sha256": digest} for path, digest, _ in images],
            "response": response,
            "seconds": round(seconds, 3),
        },
    )
    print(f"logged to {args.log}", file=sys.stderr)
    return 0
