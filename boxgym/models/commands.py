"""`boxgym tiny-model`: build the tiny offline Qwen2-VL, or (`--seeing`, `--marking`) one trained
here."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from boxgym.errors import UserError
from boxgym.models.build import build_seeing_model
from boxgym.models.cache import default_model_path, seeing_model_path
from boxgym.models.evaluation import summary_line
from boxgym.models.recipe import SeeingRecipe, recipe_with
from boxgym.models.tiny import SEED, build_tiny_model
from boxgym.output_dir import check_out_path


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--out",
        default=None,
        help="Directory to write the checkpoint to (default: the shared cache, "
        "$BOXGYM_CACHE or ~/.cache/boxgym).",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="Seed for the random weights.")
    parser.add_argument(
        "--seeing",
        action="store_true",
        help="Build the SEEING tiny model instead: trained here on procedural scenes to count, "
        "ground and list (resumable and cached; see docs/models.md). Default --out: the cache.",
    )
    parser.add_argument(
        "--marking",
        action="store_true",
        help="Build the MARKING tiny model instead: trained here to count at a glance and to play "
        "the mark-and-look loop on 1-5 shapes (resumable and cached; about 90 minutes on 2 CPU "
        "cores; see docs/marking.md). `--set arm=G|G12|T|O` builds another arm of the marking "
        "study from the same base. Default --out: the cache.",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="With --seeing or --marking: override a field of the training recipe (repeatable), "
        "e.g. --set full_steps=1000. Another recipe is another cache entry.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="With --seeing or --marking: torch threads (default: torch's).",
    )


def run(args: argparse.Namespace) -> int:
    if args.seeing and args.marking:
        raise UserError("choose one of --seeing and --marking")
    if args.seeing:
        return run_cli(args)
    if args.marking:
        return run_marking(args)
    if args.set or args.threads is not None:
        raise UserError(
            "--set and --threads shape a trained model's recipe: add --seeing or --marking, or "
            "leave them out for the random tiny model"
        )
    if args.out is None:
        path = default_model_path()
    else:
        out = Path(args.out)
        check_out_path(out)
        if out.exists() and any(out.iterdir()) and not (out / ".complete").is_file():
            raise UserError(
                f"{out} is not empty and holds no tiny-model checkpoint; choose a new or empty --out"
            )
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        path = build_tiny_model(out, seed=args.seed)
    print(path)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """`boxgym tiny-model --seeing`: build (or reuse) the seeing checkpoint and print its figures.

    The recipe is validated before anything is made, so a bad `--set` is one line and no folder.
    """
    recipe = recipe_with(args.set or [])
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
    out = Path(args.out) if args.out else seeing_model_path()
    check_out_path(out)
    if recipe != SeeingRecipe() and not args.out:
        out = out.with_name(f"seeing-qwen2-vl-{recipe.key()}")
    started = time.time()
    path = build_seeing_model(out, recipe, threads=args.threads)
    results = json.loads((path / "results.json").read_text())
    print(summary_line(results))
    print(f"({time.time() - started:.1f} s this call)")
    print(path)
    return 0


def run_marking(args: argparse.Namespace) -> int:
    """`boxgym tiny-model --marking`: build (or reuse) a marking checkpoint, print its figures."""
    from boxgym.models.marking import (
        MarkingRecipe,
        build_marking_model,
        marking_path,
        summary_line,
    )

    recipe = recipe_with(args.set or [], MarkingRecipe())
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
    out = Path(args.out) if args.out else marking_path(recipe)
    check_out_path(out)
    started = time.time()
    path = build_marking_model(out, recipe, threads=args.threads)
    results = json.loads((path / "results.json").read_text())
    print(summary_line(results))
    print(f"({time.time() - started:.1f} s this call)")
    print(path)
    return 0
