"""`SeeingRecipe`: everything that determines a seeing checkpoint, and its learning-rate schedule.

The recipe's hash names the cache entry (`key()`); `recipe.json` in a checkpoint records it.
Four stages, one warm-up and cosine schedule each (`lr_at`):

1. ``count``: counting only (the prototype's distribution and clutter), until counting is learnt;
2. ``full``: every skill but ``tool``, grounding weighted most, with a curriculum on the number
   of objects;
3. ``tool``: the ``tool`` skill (the env's system turn and tool schemas before the question, the
   oracle's boxes and answer call as the reply) mixed with the others, at a lower learning rate,
   so the model still sees with a system turn before its question. The stage starts with a fresh
   optimiser state, so a recipe that only adds it continues from a built checkpoint of the same
   recipe without it (found beside the output directory) instead of training again;
4. ``polish``: grounding-heavy steps at a lower rate, every skill keeping a share.

Design choices that grounding needs (a random-placement box must be located to a fraction of a
28-px patch, and Qwen2-VL's vision tower has no absolute position embedding, so where an object is
reaches the language model only through M-RoPE's height and width rotations):

- text head dimension 32 with M-RoPE sections (2, 7, 7) and rope theta 10, so the height and
  width sections rotate by 0.1-0.9 rad per image token instead of the 2B's near-zero rates at
  this tiny width;
- the loss covers every reply token (`boxgym.models.loss`);
- coordinate digits get a larger loss weight (`digit_weight`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from boxgym.models.skills import GROUND_PHRASINGS

BUILD_VERSION = "1"


@dataclass(frozen=True)
class SeeingRecipe:
    """Everything that determines a seeing checkpoint (its hash names the cache entry)."""

    # Architecture
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 256
    rope_theta: float = 10.0
    mrope_section: tuple[int, int, int] = (2, 7, 7)
    vision_depth: int = 2
    vision_embed: int = 64
    vision_heads: int = 4
    vision_mlp_ratio: int = 2
    # Optimisation
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.0
    count_steps: int = 2400
    full_steps: int = 2300
    full_mix: tuple[tuple[str, float], ...] = (
        ("count", 0.2),
        ("count_clutter", 0.1),
        ("ground", 0.55),
        ("list", 0.15),
    )
    count_mix: tuple[tuple[str, float], ...] = (("count", 0.8), ("count_clutter", 0.2))
    ground_curriculum: float = 0.3  # share of the full stage over which max objects goes 2 -> 5
    digit_weight: float = 2.0
    # share of counting rows asked the bare question ("How many shapes are there?"), so that a
    # plain question is answered with a number too
    bare_question_share: float = 0.25
    # how many of `GROUND_PHRASINGS` the grounding rows are asked in (by seed); 1: always
    # GROUND_QUESTION, the held-out evaluation's question (and out of the recipe's key)
    ground_phrasings: int = 1
    # "example": each example's reply tokens share one unit of weight, so a 2-token count reply
    # weighs as much as a 120-token grounding reply; "token": every reply token weighs the same,
    # which leaves the short count replies about 0.5% of the loss once grounding rows join, and
    # counting then falls back.
    loss_normalization: str = "example"
    full_vocab_positions: int = 32
    sampled_negatives: int = 1024
    seed: int = 0
    # Stage 3 (``tool``): 0 steps leaves it out (and out of the recipe's key)
    tool_steps: int = 600
    tool_lr: float = 5e-4
    tool_mix: tuple[tuple[str, float], ...] = (
        ("tool", 0.3),
        ("ground", 0.35),
        ("count", 0.15),
        ("count_clutter", 0.05),
        ("list", 0.15),
    )
    # Stage 4 (``polish``): grounding-heavy steps at a lower rate after the tool stage; 0 steps
    # leaves it out (and out of the recipe's key). Its 500 steps came out of the second stage
    # (2,800 -> 2,300 steps): boxes 0.45 -> 0.52 at the same build time (docs/models.md). Pilots
    # on 386e0eca78: 80% grounding and 20% counting raised the boxes too but erased the tool
    # skill, so every skill keeps a share.
    polish_steps: int = 500
    polish_lr: float = 3e-4
    polish_mix: tuple[tuple[str, float], ...] = (
        ("ground", 0.6),
        ("tool", 0.2),
        ("count", 0.1),
        ("count_clutter", 0.05),
        ("list", 0.05),
    )

    def __post_init__(self) -> None:
        if self.loss_normalization not in ("example", "token"):
            raise ValueError(
                f"loss_normalization must be 'example' or 'token', got {self.loss_normalization!r}"
            )
        if not 1 <= self.ground_phrasings <= len(GROUND_PHRASINGS):
            raise ValueError(
                f"ground_phrasings must be 1 to {len(GROUND_PHRASINGS)}, got {self.ground_phrasings}"
            )

    def identity(self) -> dict[str, Any]:
        """The recipe as recorded in `recipe.json` and hashed into its key; without a tool stage
        its fields are left out, so recipes from before the stage keep their keys."""
        data = json.loads(json.dumps(asdict(self)))
        if self.tool_steps == 0:
            for name in TOOL_STAGE_FIELDS:
                data.pop(name)
        if self.ground_phrasings == 1:
            data.pop("ground_phrasings")
        if self.polish_steps == 0:
            for name in POLISH_STAGE_FIELDS:
                data.pop(name)
        if self.tool_steps:  # the tool rows show the env's system turn: its text is part of them
            data["tool_system_prompt"] = tool_system_digest()
        return data

    @classmethod
    def from_identity(cls, data: dict[str, Any]) -> SeeingRecipe:
        """The recipe of a `recipe.json` (one written before the tool stage has none)."""
        data = {k: _as_tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        data.pop("tool_system_prompt", None)  # recorded, not a setting
        data.setdefault("tool_steps", 0)
        data.setdefault("ground_phrasings", 1)
        data.setdefault("polish_steps", 0)
        return cls(**data)

    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha1(f"v{BUILD_VERSION}:{blob}".encode()).hexdigest()[:10]

    @property
    def tool_start(self) -> int:
        """The first step of the tool stage."""
        return self.count_steps + self.full_steps

    @property
    def polish_start(self) -> int:
        """The first step of the polish stage."""
        return self.tool_start + self.tool_steps

    @property
    def total_steps(self) -> int:
        return self.count_steps + self.full_steps + self.tool_steps + self.polish_steps

    def stage(self, step: int) -> str:
        if step < self.count_steps:
            return "count"
        if step < self.tool_start:
            return "full"
        return "tool" if step < self.polish_start else "polish"


def tool_system_digest() -> str:
    """A digest of the system turn the ``tool`` rows show (the env's instructions for the
    one-reply protocol), so a recipe's key changes when that text does."""
    from boxgym.models.skills import tool_context

    system, _tools = tool_context()
    return hashlib.sha1(system["content"][0]["text"].encode()).hexdigest()[:10]


TOOL_STAGE_FIELDS = ("tool_steps", "tool_lr", "tool_mix")


POLISH_STAGE_FIELDS = ("polish_steps", "polish_lr", "polish_mix")


def seeing_config(recipe: SeeingRecipe):
    """The `Qwen2VLConfig` of a recipe: Qwen2-VL's ids and layout, the recipe's sizes."""
    from boxgym.models.tiny import qwen2_vl_config

    return qwen2_vl_config(
        hidden=recipe.text_hidden,
        intermediate=recipe.text_intermediate,
        layers=recipe.text_layers,
        heads=recipe.text_heads,
        kv_heads=recipe.text_kv_heads,
        rope_theta=recipe.rope_theta,
        mrope_section=list(recipe.mrope_section),
        vision_depth=recipe.vision_depth,
        vision_embed=recipe.vision_embed,
        vision_heads=recipe.vision_heads,
        vision_mlp_ratio=recipe.vision_mlp_ratio,
    )


def lr_at(recipe: SeeingRecipe, step: int) -> float:
    """Warm-up then cosine decay, restarted at the start of each stage (the tool stage peaks at
    `tool_lr`)."""
    start, length, peak = {
        "count": (0, recipe.count_steps, recipe.lr),
        "full": (recipe.count_steps, recipe.full_steps, recipe.lr),
        "tool": (recipe.tool_start, recipe.tool_steps, recipe.tool_lr),
        "polish": (recipe.polish_start, recipe.polish_steps, recipe.polish_lr),
    }[recipe.stage(step)]
    t = step - start
    if t < recipe.warmup_steps:
        return peak * (t + 1) / recipe.warmup_steps
    frac = (t - recipe.warmup_steps) / max(1, length - recipe.warmup_steps)
    floor = recipe.min_lr_ratio
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def recipe_with(overrides: list[str], recipe: Any = None) -> Any:
    """`recipe` (default: the default `SeeingRecipe`) with `key=value` overrides (values parsed
    as JSON where they parse); any frozen recipe dataclass works."""
    recipe = SeeingRecipe() if recipe is None else recipe
    known = asdict(recipe)
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected key=value with key one of {sorted(known)}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(known[key], tuple):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        elif isinstance(known[key], float) and isinstance(value, int):
            value = float(value)
        if type(value) is not type(known[key]):
            raise ValueError(f"--set {key}: expected {type(known[key]).__name__}, got {raw!r}")
        changes[key] = value
    return replace(recipe, **changes)


def _as_tuple(value: list) -> tuple:
    return tuple(_as_tuple(v) if isinstance(v, list) else v for v in value)
