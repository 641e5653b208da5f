"""Where built models live: the cache folder, the tiny and seeing checkpoints in it, and what a
`--model` name resolves to."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from boxgym.models.recipe import SeeingRecipe
from boxgym.models.tiny import BUILD_VERSION as TINY_BUILD_VERSION
from boxgym.models.tiny import build_tiny_model


def cache_dir() -> Path:
    """Where boxgym caches built artefacts: `$BOXGYM_CACHE`, else `~/.cache/boxgym`."""
    return Path(os.environ.get("BOXGYM_CACHE") or Path.home() / ".cache" / "boxgym").expanduser()


def default_model_path() -> Path:
    """The tiny checkpoint in the cache, built on first use; the model used when none is named."""
    return build_tiny_model(cache_dir() / f"tiny-qwen2-vl-v{TINY_BUILD_VERSION}")


def resolve_model(model: str | os.PathLike[str] | None) -> str:
    """A model name or path to load: `model` itself, the tiny default for None/"tiny", or the
    cached default checkpoint for "seeing" or "marking" (which must have been built: each
    trains for over an hour).

    Raises:
        FileNotFoundError: "seeing" or "marking" was asked for and `boxgym tiny-model --seeing`
            (or `--marking`) has not run.
    """
    if model is None or str(model) in ("", "tiny"):
        return str(default_model_path())
    if str(model) == "marking":
        from boxgym.models.marking import MarkingRecipe, marking_path
        from boxgym.models.marking import is_built as marking_is_built

        path = marking_path()
        if not marking_is_built(path, MarkingRecipe().identity()):
            raise FileNotFoundError(
                f"the marking tiny model is not built yet ({path}); build it once with "
                "`boxgym tiny-model --marking` (about 90 minutes on 2 CPU cores), or pass its "
                "--out path"
            )
        return str(path)
    if str(model) == "seeing":
        path = seeing_model_path()
        if not is_built(path, SeeingRecipe()):
            raise FileNotFoundError(
                f"the seeing tiny model is not built yet ({path}); build it once with "
                "`boxgym tiny-model --seeing` (about 90 minutes on 2 CPU cores), or pass its --out path"
            )
        return str(path)
    from boxgym.errors import UserError

    text = str(model)
    path = Path(text).expanduser()
    if path.is_file():
        raise UserError(
            f"--model {text} is a file, not a checkpoint; give the checkpoint's folder (with "
            "config.json) or a hub id such as Qwen/Qwen2-VL-2B-Instruct"
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        adapter = (path / "adapter_config.json").is_file()
        raise UserError(
            f"--model {text} has no config.json, so it is not a checkpoint folder"
            + ("; it holds a LoRA adapter: pass it as --adapter" if adapter else "")
            + "; give a checkpoint folder (with config.json) or a hub id such as "
            "Qwen/Qwen2-VL-2B-Instruct"
        )
    looks_local = path.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
    if looks_local:
        raise UserError(
            f"no model at {text}: that path does not exist; give a checkpoint directory (with "
            "config.json) or a hub id such as Qwen/Qwen2-VL-2B-Instruct"
        )
    return text


def is_built(out: Path, recipe: SeeingRecipe) -> bool:
    recipe_file = out / "recipe.json"
    if not (recipe_file.is_file() and (out / "results.json").is_file()):
        return False
    try:
        return json.loads(recipe_file.read_text()) == recipe.identity()
    except (OSError, ValueError):
        return False


def built_base(out: Path, recipe: SeeingRecipe) -> Path | None:
    """A finished build of `recipe` without its last stages, beside `out` (the same cache
    folder), to continue from: without the polish stage, else without the tool and polish
    stages; None when the recipe has neither stage or no such build exists."""
    bases = []
    if recipe.polish_steps:
        bases.append(replace(recipe, polish_steps=0))
    if recipe.tool_steps:
        bases.append(replace(recipe, tool_steps=0, polish_steps=0))
    for base in bases:
        path = out.with_name(f"seeing-qwen2-vl-{base.key()}")
        if is_built(path, base) and (path / "training_log.json").is_file():
            return path
    return None


def seeing_model_path() -> Path:
    """Where the default seeing checkpoint lives in the cache."""
    return cache_dir() / f"seeing-qwen2-vl-{SeeingRecipe().key()}"
