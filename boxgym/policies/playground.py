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
    parser.add_argument("--dtype", default="auto", help='"auto", "bfloat16" or "float32".')
    parser.add_argument(
        "--log", type=Path, default=DEFAULT_LOG, help=f"JSONL log to append to ({DEFAULT_LOG})."
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
