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
from dataclasses import asdict, dataclass
from typing import Any

from boxgym.config import typed_section
from boxgym.models.skills import GROUND_PHRASINGS

BUILD_VERSION = "1"


@typed_section  # unknown keys are refused when pydantic validates one (`recipe_with`)
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
        check_recipe(self)

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

# Bounds of the sizes a recipe may ask for: far above a tiny model, low enough that a typo (an
# extra zero) is refused at once instead of starting a build that cannot fit in memory.
SIZE_LIMITS = {
    "text_hidden": 4096, "text_layers": 64, "text_heads": 128, "text_kv_heads": 128,
    "text_intermediate": 16384, "vision_depth": 64, "vision_embed": 4096, "vision_heads": 128,
    "vision_mlp_ratio": 16, "batch_size": 4096,
}  # fmt: skip
STEP_FIELDS = ("count_steps", "full_steps", "warmup_steps", "tool_steps", "polish_steps")
MAX_STEPS = 10_000_000
RATE_FIELDS = ("lr", "tool_lr", "polish_lr", "rope_theta", "digit_weight")
SHARE_FIELDS = ("min_lr_ratio", "ground_curriculum", "bare_question_share")
MIX_FIELDS = ("count_mix", "full_mix", "tool_mix", "polish_mix")


def check_recipe(recipe: SeeingRecipe) -> None:
    """Refuse a recipe that could not build a working model, before any build starts.

    Raises:
        ValueError: naming the first bad field, what it must be and what it was.
    """
    from boxgym.models.skills import SKILLS

    def bad(name: str, must: str) -> ValueError:
        return ValueError(f"{name} must be {must}, got {getattr(recipe, name)!r}")

    for name, most in SIZE_LIMITS.items():
        value = getattr(recipe, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise bad(name, f"an integer from 1 to {most}")
    for name in STEP_FIELDS:
        value = getattr(recipe, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEPS:
            raise bad(name, f"an integer from 0 to {MAX_STEPS:,}")
    if recipe.count_steps + recipe.full_steps < 1:
        raise ValueError("count_steps + full_steps must be at least 1: the build trains nothing")
    for name in RATE_FIELDS:
        value = getattr(recipe, name)
        if not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise bad(name, "a finite number above 0")
    for name in SHARE_FIELDS:
        value = getattr(recipe, name)
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise bad(name, "a number from 0 to 1")
    if not (isinstance(recipe.weight_decay, (int, float)) and 0 <= recipe.weight_decay < 1):
        raise bad("weight_decay", "a number from 0 to below 1")
    for name, most in (("full_vocab_positions", 4096), ("sampled_negatives", 1_000_000)):
        value = getattr(recipe, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
            raise bad(name, f"an integer from 0 to {most:,}")
    if isinstance(recipe.seed, bool) or not isinstance(recipe.seed, int) or recipe.seed < 0:
        raise bad("seed", "an integer >= 0")
    if recipe.text_hidden % recipe.text_heads:
        raise ValueError(
            f"text_heads ({recipe.text_heads}) must divide text_hidden ({recipe.text_hidden})"
        )
    if recipe.text_heads % recipe.text_kv_heads:
        raise ValueError(
            f"text_kv_heads ({recipe.text_kv_heads}) must divide text_heads ({recipe.text_heads})"
        )
    if recipe.vision_embed % recipe.vision_heads:
        raise ValueError(
            f"vision_heads ({recipe.vision_heads}) must divide vision_embed ({recipe.vision_embed})"
        )
    half = recipe.text_hidden // recipe.text_heads // 2
    section = recipe.mrope_section
    if (
        not isinstance(section, tuple)
        or len(section) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in section)
        or sum(section) != half
    ):
        raise ValueError(
            f"mrope_section must be 3 integers >= 0 summing to half the text head dimension "
            f"({half} = text_hidden / text_heads / 2), got {section!r}"
        )
    for name in MIX_FIELDS:
        mix = getattr(recipe, name)
        if not mix:
            raise bad(name, "at least one [skill, share] pair")
        for pair in mix:
            if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in SKILLS):
                raise bad(name, f"[skill, share] pairs with skills from {', '.join(SKILLS)}")
            share = pair[1]
            if not isinstance(share, (int, float)) or not (math.isfinite(share) and share > 0):
                raise bad(name, "[skill, share] pairs with finite shares above 0")


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
    """`recipe` (default: the default `SeeingRecipe`) with `key=value` overrides, read and
    validated as every config's `--set` is (`boxgym.config`: values parsed as YAML, unknown keys
    named with the closest known one, pydantic's types against the recipe's dataclass), then its
    own checks (`check_recipe` for a `SeeingRecipe`). Any frozen recipe dataclass works.

    Raises:
        ConfigError: one line naming the bad key, what it must be and the closest known key.
    """
    from pydantic import TypeAdapter, ValidationError

    from boxgym.config import ConfigError, apply_overrides, format_validation_error, unknown_keys
    from boxgym.errors import describe_value

    recipe = SeeingRecipe() if recipe is None else recipe
    cls = type(recipe)
    known = asdict(recipe)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. full_steps=1000), got {item[:80]!r}")
        problem = unknown_keys(cls, [key.strip()[:80]])
        if problem:
            raise ConfigError(f"bad recipe: {problem}")
    data = apply_overrides({}, overrides)
    for key, value in data.items():
        if isinstance(value, bool) and not isinstance(known[key], bool):
            raise ConfigError(f"bad recipe: {key} must be a number, got {describe_value(value)}")
        if isinstance(value, list):
            data[key] = _as_tuple(value)
    section = data.get("mrope_section")
    if "mrope_section" in data and not (isinstance(section, tuple) and len(section) == 3):
        raise ConfigError(
            "bad recipe: mrope_section must be 3 integers summing to half the text head "
            f"dimension, e.g. [2,7,7]; got {describe_value(section)}; fix the --set value"
        )
    try:
        return TypeAdapter(cls).validate_python({**known, **data})
    except ValidationError as error:
        problems = error.errors()
        if all(p.get("type") == "value_error" and not p.get("loc") for p in problems):
            message = str(problems[0].get("msg", "")).removeprefix("Value error, ")
            raise ConfigError(f"bad recipe: {message}; fix the --set value") from None
        raise ConfigError(format_validation_error(error, cls)) from None


def _as_tuple(value: list) -> tuple:
    return tuple(_as_tuple(v) if isinstance(v, list) else v for v in value)
