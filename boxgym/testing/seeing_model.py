"""The seeing tiny Qwen2-VL: the tiny model's tokenizer, processor and template, trained here.

`build_seeing_model(out_dir, recipe)` trains every parameter of a small
`Qwen2VLForConditionalGeneration` from scratch on the skills of `boxgym.testing.seeing_tasks`
(count, count clutter, ground in Qwen2-VL's format, list labels), fresh scenes every step, and
saves a checkpoint that loads like any Qwen2-VL (`Qwen2VLForConditionalGeneration.from_pretrained`
and `AutoProcessor.from_pretrained`). Three stages, one cosine schedule each:

1. ``count``: counting only (the prototype's distribution and clutter), until counting is learnt;
2. ``full``: every skill but ``tool``, grounding weighted most, with a curriculum on the number
   of objects;
3. ``tool``: the ``tool`` skill (the env's system turn and tool schemas before the question, the
   oracle's boxes and answer call as the reply) mixed with the others, at a lower learning rate,
   so the model still sees with a system turn before its question. The stage starts with a fresh
   optimiser state, so a recipe that only adds it continues from a built checkpoint of the same
   recipe without it (found beside the output directory) instead of training again.

A ``tool`` row's prompt is about 1,460 tokens of system turn and schemas, the same for every row,
then about 90 of image and question: that shared prefix is run once per step without gradient and
its key/value cache reused by every tool row (`prefix_forward`), which makes a tool row cost
about what a bare row does (0.43 s instead of 2.4 s for 8 rows).

Design choices that grounding needs (a random-placement box must be located to a fraction of a
28-px patch, and Qwen2-VL's vision tower has no absolute position embedding, so where an object is
reaches the language model only through M-RoPE's height and width rotations):

- text head dimension 32 with M-RoPE sections (2, 7, 7) and rope theta 10, so the height and
  width sections rotate by 0.1-0.9 rad per image token instead of the 2B's near-zero rates at
  this tiny width;
- the loss covers every reply token, the LM head applied only at reply positions, over the
  reply vocabulary plus sampled negatives, plus the exact full-vocabulary loss at a random
  subset of positions (so greedy decoding over the whole vocabulary stays right, which the
  held-out evaluation checks with plain `generate`);
- coordinate digits get a larger loss weight (`digit_weight`).

The build is resumable (a checkpoint every `save_every` steps in `<out>.partial/`) and cached:
`out_dir/recipe.json` records the recipe, so a second call with the same recipe returns at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from boxgym.testing.seeing_tasks import (
    EVAL_SEEDS_END,
    GROUND_PHRASINGS,
    SKILLS,
    Example,
    make_example,
    messages_for,
    question_messages,
    tool_context,
    tool_env,
    tools_for,
)

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
    # weighs as much as a 120-token grounding reply; "token": every reply token weighs the same
    # (the first build's choice: counting then got 0.5% of the loss and fell from 0.85 to 0.69).
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
        return data

    @classmethod
    def from_identity(cls, data: dict[str, Any]) -> SeeingRecipe:
        """The recipe of a `recipe.json` (one written before the tool stage has none)."""
        data = {k: _as_tuple(v) if isinstance(v, list) else v for k, v in data.items()}
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


TOOL_STAGE_FIELDS = ("tool_steps", "tool_lr", "tool_mix")
POLISH_STAGE_FIELDS = ("polish_steps", "polish_lr", "polish_mix")


def seeing_config(recipe: SeeingRecipe):
    """The `Qwen2VLConfig` of a recipe: Qwen2-VL's ids and layout, the recipe's sizes."""
    from boxgym.testing.tiny_model import qwen2_vl_config

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


# ---------------------------------------------------------------------------------------------
# Batches


def train_seed(recipe: SeeingRecipe, step: int, row: int) -> int:
    """The scene seed of one training row: always at or above EVAL_SEEDS_END."""
    return EVAL_SEEDS_END + (recipe.seed * 10_000_000 + step * recipe.batch_size + row)


def skills_for_step(recipe: SeeingRecipe, step: int) -> list[str]:
    """The skills of the rows of a step: the stage's mixture, drawn from the step's seed."""
    import numpy as np

    mix = {
        "count": recipe.count_mix,
        "full": recipe.full_mix,
        "tool": recipe.tool_mix,
        "polish": recipe.polish_mix,
    }[recipe.stage(step)]
    names = [name for name, _ in mix]
    weights = np.array([w for _, w in mix], dtype=float)
    rng = np.random.default_rng([recipe.seed, step, 7])
    return list(rng.choice(names, size=recipe.batch_size, p=weights / weights.sum()))


def max_objects_for_step(recipe: SeeingRecipe, step: int) -> int:
    """The curriculum: grounding scenes hold at most 2 objects at the start of the full stage."""
    if recipe.stage(step) != "full":
        return 5
    into = (step - recipe.count_steps) / max(1, recipe.full_steps * recipe.ground_curriculum)
    return min(5, 2 + int(into * 4))


def training_examples(recipe: SeeingRecipe, step: int) -> list[Example]:
    cap = max_objects_for_step(recipe, step)
    examples = []
    for row, skill in enumerate(skills_for_step(recipe, step)):
        seed = train_seed(recipe, step, row)
        example = make_example(skill, seed, max_count=cap if skill == "ground" else 5)
        if skill.startswith("count") and bare_question(seed, recipe.bare_question_share):
            example = replace(example, question=strip_answer_hint(example.question))
        if skill == "ground":
            example = replace(example, question=ground_question(seed, recipe.ground_phrasings))
        examples.append(example)
    return examples


def bare_question(seed: int, share: float) -> bool:
    """Whether the counting row of `seed` is asked without "Answer with a number." """
    return (seed * 2654435761 % 1000) < share * 1000


def ground_question(seed: int, phrasings: int) -> str:
    """The grounding question of the row of `seed`: one of the first `phrasings` of
    `GROUND_PHRASINGS`, drawn by seed."""
    if not 1 <= phrasings <= len(GROUND_PHRASINGS):
        raise ValueError(f"ground_phrasings must be 1 to {len(GROUND_PHRASINGS)}, got {phrasings}")
    return GROUND_PHRASINGS[(seed * 2246822519 >> 7) % phrasings]


def strip_answer_hint(question: str) -> str:
    return question.replace(" Answer with a number.", "")


class Batcher:
    """Turns examples into model inputs with the reply tokens as labels (right padded)."""

    def __init__(self, processor, digit_weight: float = 1.0) -> None:
        self.processor = processor
        self.digit_weight = digit_weight
        self.tokenizer = processor.tokenizer
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.pad_id = self.tokenizer.pad_token_id
        self._prompt_cache: dict[tuple[str, str], str] = {}
        self._prefix_ids: list[int] | None = None
        digits = [self.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
        self.digit_ids = set(digits)

    def prompt_text(self, question: str, context: str = "bare") -> str:
        if (question, context) not in self._prompt_cache:
            from PIL import Image

            messages = question_messages(Image.new("RGB", (28, 28)), question)
            tools = None
            if context == "tool":
                system, tools = tool_context()
                messages = [system, *messages]
            self._prompt_cache[question, context] = self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, tools=tools
            )
        return self._prompt_cache[question, context]

    def prefix_ids(self) -> list[int]:
        """The token ids every `tool` prompt starts with: the system turn and the tool schemas."""
        if self._prefix_ids is None:
            text = self.prompt_text("?", "tool")
            head = text[: text.index("<|im_start|>user")]
            self._prefix_ids = self.tokenizer(head, add_special_tokens=False)["input_ids"]
        return self._prefix_ids

    def batches(self, examples: list[Example]) -> list[dict[str, Any]]:
        """The examples as one batch per context (bare rows, then tool rows)."""
        out = []
        for context in ("bare", "tool"):
            group = [e for e in examples if e.context == context]
            if group:
                out.append(self(group))
        return out

    def reply_ids(self, reply: str) -> list[int]:
        return self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.end_id]

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        """Model inputs of examples of one context; a tool batch also carries `prefix_ids`, the
        shared system-turn tokens every row starts with (see `prefix_forward`)."""
        import torch

        contexts = {e.context for e in examples}
        if len(contexts) != 1:
            raise ValueError(f"one context per batch, got {sorted(contexts)}")
        prompts = [self.prompt_text(e.question, e.context) for e in examples]
        self.tokenizer.padding_side = "right"
        encoded = self.processor(
            text=prompts, images=[e.image for e in examples], return_tensors="pt", padding=True
        )
        rows, labels, weights = [], [], []
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        for ids, length, example in zip(encoded["input_ids"], lengths, examples):
            ids = ids[:length].tolist()
            reply = self.reply_ids(example.reply)
            rows.append(ids + reply)
            labels.append([-100] * len(ids) + reply)
            weights.append([0.0] * len(ids) + self.reply_weights(reply, example.skill))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        label_t = torch.full((len(rows), width), -100, dtype=torch.long)
        weight_t = torch.zeros((len(rows), width))
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, lab, w) in enumerate(zip(rows, labels, weights)):
            input_ids[i, : len(r)] = torch.tensor(r)
            label_t[i, : len(r)] = torch.tensor(lab)
            weight_t[i, : len(r)] = torch.tensor(w)
            mask[i, : len(r)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "pixel_values": encoded["pixel_values"],
            "image_grid_thw": encoded["image_grid_thw"],
            "mm_token_type_ids": (input_ids == self.image_id).long(),
            "labels": label_t,
            "weights": weight_t,
        }
        if contexts == {"tool"}:
            prefix = self.prefix_ids()
            if input_ids[:, : len(prefix)].ne(torch.tensor(prefix)).any():
                raise ValueError("a tool prompt does not start with the shared system turn")
            batch["prefix_ids"] = torch.tensor([prefix])
        return batch

    def reply_weights(self, reply: list[int], skill: str) -> list[float]:
        """Loss weight of each reply token: `digit_weight` on a grounding reply's digits."""
        if skill not in ("ground", "tool") or self.digit_weight == 1.0:
            return [1.0] * len(reply)
        return [self.digit_weight if t in self.digit_ids else 1.0 for t in reply]


# ---------------------------------------------------------------------------------------------
# Loss


def prefix_forward(model, batch: dict[str, Any]) -> Any:
    """Last hidden states of a batch whose rows all start with `batch["prefix_ids"]`, for the
    positions after that prefix.

    The prefix runs once, without gradient, and its key/value cache is repeated over the rows;
    the rest of each row attends to it as in a full forward pass (the hidden states agree to
    about 1e-6). The prefix's own representation gets no gradient: only what follows is trained
    to read it.
    """
    import torch

    prefix = batch["prefix_ids"]
    n_rows, n_prefix = batch["input_ids"].shape[0], prefix.shape[1]
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    with torch.no_grad():
        cache = model.model(
            input_ids=prefix, position_ids=positions[:, :1, :n_prefix], use_cache=True
        ).past_key_values
    cache.batch_repeat_interleave(n_rows)
    out = model.model(
        input_ids=batch["input_ids"][:, n_prefix:],
        attention_mask=batch["attention_mask"],
        position_ids=positions[:, :, n_prefix:],
        past_key_values=cache,
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        mm_token_type_ids=batch["mm_token_type_ids"][:, n_prefix:],
        use_cache=True,
    )
    return out.last_hidden_state


def batch_hidden(model, batch: dict[str, Any]) -> tuple[Any, int]:
    """Last hidden states of a Batcher batch, and how many leading positions they skip (the
    shared prefix of a tool batch, run once by `prefix_forward`; 0 for a bare batch)."""
    if "prefix_ids" in batch:
        return prefix_forward(model, batch), batch["prefix_ids"].shape[1]
    hidden = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        use_cache=False,
    ).last_hidden_state
    return hidden, 0


def reply_loss(model, batch: dict[str, Any], recipe: SeeingRecipe, vocab: Any, generator) -> Any:
    """Weighted cross-entropy over reply tokens, the LM head applied only at those positions.

    Each position's softmax runs over `vocab` (every token any reply uses) plus
    `recipe.sampled_negatives` random tokens; `recipe.full_vocab_positions` random positions
    also get the exact full-vocabulary loss. A batch with `prefix_ids` runs its shared prefix
    once (`prefix_forward`).
    """
    import torch
    import torch.nn.functional as F

    hidden, skip = batch_hidden(model, batch)
    # the hidden state at position t predicts token t + 1 (replies never start in the prefix)
    targets = batch["labels"][:, skip + 1 :]
    weights = batch["weights"][:, skip + 1 :]
    where = targets != -100
    h = hidden[:, :-1][where]  # [P, d]
    y = targets[where]
    w = weights[:, :][where]
    head = model.lm_head.weight  # tied with the embedding
    n_vocab = head.shape[0]
    negatives = torch.randint(0, n_vocab, (recipe.sampled_negatives,), generator=generator)
    candidates = torch.unique(torch.cat([vocab, negatives, y]))
    index = torch.searchsorted(candidates, y)
    logits = h @ head[candidates].T
    token_loss = F.cross_entropy(logits, index, reduction="none")
    if recipe.loss_normalization == "example":
        # each row's weights sum to 1 over its reply tokens, then rows are averaged
        share = (weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-9))[where]
        loss = (token_loss * share).sum() / targets.shape[0]
    else:
        loss = (token_loss * w).sum() / w.sum()
    k = min(recipe.full_vocab_positions, h.shape[0])
    if k:
        pick = torch.randperm(h.shape[0], generator=generator)[:k]
        full = F.cross_entropy(h[pick] @ head.T, y[pick])
        loss = loss + 0.25 * full
    return loss


def step_loss(
    model, batcher: Batcher, examples: list[Example], recipe: SeeingRecipe, vocab: Any, generator
) -> Any:
    """The loss of one training step: `reply_loss` per context (bare rows, tool rows), averaged
    over rows."""
    return sum(
        reply_loss(model, batch, recipe, vocab, generator) * batch["input_ids"].shape[0]
        for batch in batcher.batches(examples)
    ) / len(examples)


# ---------------------------------------------------------------------------------------------
# Evaluation


def generate_replies(model, processor, examples: list[Example], max_new_tokens: int) -> list[str]:
    """Greedy replies through plain `generate` over the whole vocabulary (left padded)."""
    import torch

    tokenizer = processor.tokenizer
    prompts = [
        processor.apply_chat_template(
            messages_for(e), tokenize=False, add_generation_prompt=True, tools=tools_for(e)
        )
        for e in examples
    ]
    tokenizer.padding_side = "left"
    inputs = processor(
        text=prompts, images=[e.image for e in examples], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    replies = tokenizer.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=False
    )
    return [r.split("<|im_end|>")[0].replace("<|endoftext|>", "") for r in replies]


def evaluate(
    model, processor, skill: str, seeds: list[int], batch_size: int = 50, bare: bool = False
) -> dict[str, Any]:
    """Held-out figures of one skill on `seeds` (all below EVAL_SEEDS_END), with 95% CIs.

    `bare` asks counting questions without "Answer with a number."
    """
    from boxgym.testing.seeing_scoring import score_replies

    examples = [make_example(skill, s) for s in seeds]
    if bare:
        examples = [replace(e, question=strip_answer_hint(e.question)) for e in examples]
    max_new = {"list": 40, "ground": 160, "tool": 240}.get(skill, 12)
    replies: list[str] = []
    model.eval()
    for i in range(0, len(examples), batch_size):
        replies += generate_replies(model, processor, examples[i : i + batch_size], max_new)
    model.train()
    if skill == "tool":
        return score_tool_replies(examples, replies)
    return score_replies(skill, examples, replies)


def score_tool_replies(examples: list[Example], replies: list[str]) -> dict[str, Any]:
    """A `tool` reply played as the first turn of its episode in the env: the env's count
    accuracy, grounding F1, valid-call rate and reward (the episode ends there: a reply that
    did not answer counts as wrong)."""
    from boxgym.rollouts.metrics import bootstrap_mean_ci

    env = tool_env()
    names = {  # our name: the env's metric
        "count_accuracy": "count_correct",
        "enumeration_f1": "enumeration_f1",
        "grounding_f1": "grounding_f1",
        "valid_call_rate": "valid_call_rate",
        "answered": "answered",
    }
    values: dict[str, list[float]] = {name: [] for name in (*names, "reward")}
    for example, reply in zip(examples, replies):
        env.reset(seed=example.seed, options={"task": example.task})
        _, reward, _, _, info = env.step(reply)
        metrics = info.get("metrics", {})
        for name, metric in names.items():
            values[name].append(float(metrics.get(metric) or 0.0))
        values["reward"].append(float(reward))
    out = {}
    for name, v in values.items():
        got = bootstrap_mean_ci(v, seed=0)  # {"mean", "ci95": [lo, hi], "n"}
        out[name] = {"mean": got["mean"], "lo": got["ci95"][0], "hi": got["ci95"][1], "n": got["n"]}
    out["examples"] = [{"reply": r, "truth": e.reply} for e, r in list(zip(examples, replies))[:3]]
    return out


def quick_count_accuracy(model, batcher: Batcher, seeds: list[int]) -> float:
    """Share of held-out `count` scenes whose greedy first reply token is the right number."""
    import torch

    examples = [make_example("count", s) for s in seeds]
    batch = batcher(examples)
    model.eval()
    with torch.no_grad():
        hidden, _ = batch_hidden(model, batch)  # bare count rows: no prefix
    model.train()
    first = (batch["labels"] != -100).int().argmax(dim=1) - 1
    h = hidden[torch.arange(len(examples)), first]
    guess = (h @ model.lm_head.weight.T).argmax(dim=-1)
    truth = batch["labels"][torch.arange(len(examples)), first + 1]
    return float((guess == truth).float().mean())


# ---------------------------------------------------------------------------------------------
# The build


@dataclass
class Progress:
    step: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    checks: list[tuple[int, float, float]] = field(default_factory=list)  # step, minutes, acc
    ground_checks: list[tuple[int, float, float]] = field(default_factory=list)  # ..., F1
    # step, minutes, tool-use count accuracy, tool-use grounding F1
    tool_checks: list[tuple[int, float, float, float]] = field(default_factory=list)
    count_stage_minutes: float | None = None


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


def reply_vocabulary(batcher: Batcher):
    """Every token id that any skill's replies can use (sorted tensor)."""
    import torch

    from boxgym.data.vocabulary import CLUTTER_KINDS, COLOURS, SHAPES

    texts = [str(d) for d in range(10)] + ["(", ")", ",", "),(", ", ", "\n"]
    texts += [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f" {c}" for c in COLOURS]
    texts += [*CLUTTER_KINDS, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>"]
    texts += ["<|box_end|>", "<|im_end|>"]
    ids = set()
    for text in texts:
        ids.update(batcher.tokenizer(text, add_special_tokens=False)["input_ids"])
    for seed in range(200):  # everything real replies use, whatever the vocabulary lists
        for skill in SKILLS:
            ids.update(batcher.reply_ids(make_example(skill, EVAL_SEEDS_END + 7 * seed + 3).reply))
    return torch.tensor(sorted(ids))


def build_seeing_model(
    out_dir: str | os.PathLike[str],
    recipe: SeeingRecipe | None = None,
    *,
    threads: int | None = None,
    save_every: int = 250,
    check_every: int = 100,
    ground_check_every: int = 250,
    check_scenes: int = 128,
    eval_scenes: int = 500,
    ground_eval_scenes: int = 200,
    progress: bool = True,
    log=print,
) -> Path:
    """Train (or resume, or reuse) the seeing checkpoint of `recipe` in `out_dir`.

    Returns:
        `out_dir` as a Path, holding the checkpoint, `recipe.json` and `results.json`.
    """
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    from boxgym.testing.tiny_model import build_processor

    recipe = recipe or SeeingRecipe()
    out = Path(out_dir).expanduser().resolve()
    if is_built(out, recipe):
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} holds something else (no matching recipe.json); choose an empty --out"
        )
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)

    processor = build_processor()
    batcher = Batcher(processor, recipe.digit_weight)
    vocab = reply_vocabulary(batcher)
    state_file = partial / "state.pt"
    torch.manual_seed(recipe.seed)
    model = Qwen2VLForConditionalGeneration(seeing_config(recipe))
    model.generation_config = GenerationConfig(
        bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=False
    )
    use_linear_patch_embedding(model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        betas=(0.9, 0.98),
        fused=True,
    )
    prog = Progress()
    base = built_base(out, recipe)
    if state_file.is_file():
        saved = torch.load(state_file, weights_only=False)
        if saved["recipe"] != recipe.identity():
            raise FileExistsError(
                f"{partial} holds a build of another recipe; delete it or use another --out"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        prog = Progress(**saved["progress"])
        log(f"resuming the seeing-model build at step {prog.step}/{recipe.total_steps}")
    elif base is not None:
        # through from_pretrained: the saved names are Qwen2-VL's checkpoint names, not ours
        model.load_state_dict(Qwen2VLForConditionalGeneration.from_pretrained(base).state_dict())
        prog = Progress(**json.loads((base / "training_log.json").read_text()))
        log(f"continuing the built {base.name} (step {prog.step}) with the later stages")
    (partial / "recipe.json").write_text(json.dumps(recipe.identity(), indent=1))

    check_seeds = list(range(check_scenes))  # held out: below EVAL_SEEDS_END
    generator = torch.Generator().manual_seed(recipe.seed * 1000 + prog.step)
    model.train()
    bar = tqdm(
        total=recipe.total_steps,
        initial=prog.step,
        desc="seeing model",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    started = time.time() - prog.seconds

    def save_state() -> None:
        prog.seconds = time.time() - started
        tmp = partial / "state.pt.tmp"
        torch.save(
            {
                "recipe": recipe.identity(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "progress": asdict(prog),
            },
            tmp,
        )
        os.replace(tmp, state_file)

    acc = prog.checks[-1][2] if prog.checks else float("nan")
    ground = prog.ground_checks[-1][2] if prog.ground_checks else float("nan")
    tool_count = tool_f1 = float("nan")  # the last held-out check in the env's context
    while prog.step < recipe.total_steps:
        step = prog.step
        if step in (recipe.tool_start, recipe.polish_start):
            # the tool and polish stages start afresh (so they can start from a built
            # checkpoint): no optimiser moments carried over, the loss's sampling reseeded
            optimizer.state.clear()
            generator.manual_seed(recipe.seed * 1000 + step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step)
        loss = step_loss(model, batcher, training_examples(recipe, step), recipe, vocab, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        prog.step += 1
        loss_value = loss.item()
        prog.losses.append((prog.step, round(loss_value, 4)))
        if prog.step % check_every == 0 or prog.step == recipe.count_steps:
            acc = quick_count_accuracy(model, batcher, check_seeds)
            minutes = (time.time() - started) / 60
            prog.checks.append((prog.step, round(minutes, 2), acc))
            if prog.step == recipe.count_steps:
                prog.count_stage_minutes = round(minutes, 2)
        if prog.step > recipe.count_steps and prog.step % ground_check_every == 0:
            got = evaluate(model, processor, "ground", check_seeds[:32])
            ground = got["f1"]["mean"]
            prog.ground_checks.append((prog.step, round((time.time() - started) / 60, 2), ground))
            if recipe.stage(step) in ("tool", "polish"):
                got = evaluate(model, processor, "tool", check_seeds[:32])
                tool_count = got["count_accuracy"]["mean"]
                tool_f1 = got["grounding_f1"]["mean"]
                minutes = round((time.time() - started) / 60, 2)
                prog.tool_checks.append((prog.step, minutes, tool_count, tool_f1))
            log(
                f"step {prog.step}: held-out grounding F1 {ground:.3f}, count acc {acc:.3f}"
                + ("" if math.isnan(tool_f1) else f", in the env: count acc {tool_count:.3f}")
            )
        stage = recipe.stage(step)
        bar.set_postfix_str(
            f"{stage} loss {loss_value:.3f} held-out count acc {acc:.2f} ground F1 {ground:.2f}"
            + ("" if math.isnan(tool_count) else f" env count acc {tool_count:.2f}")
        )
        bar.update(1)
        if prog.step % save_every == 0 or prog.step == recipe.count_steps:
            save_state()
            if prog.step == recipe.count_steps:
                save_checkpoint(model, processor, partial / "count-stage")
    bar.close()
    save_state()

    log("evaluating on held-out scenes ...")
    train_minutes = round((time.time() - started) / 60, 2)
    results = final_results(model, processor, recipe, prog, eval_scenes, ground_eval_scenes)
    results["minutes"] = train_minutes
    save_checkpoint(model, processor, partial / "checkpoint")
    staging = partial / "checkpoint"
    (staging / "recipe.json").write_text(json.dumps(recipe.identity(), indent=1))
    (staging / "results.json").write_text(json.dumps(results, indent=1))
    (staging / "training_log.json").write_text(json.dumps(asdict(prog)))
    if out.exists():
        out.rmdir()
    os.replace(staging, out)
    shutil.rmtree(partial, ignore_errors=True)
    return out


def use_linear_patch_embedding(model) -> None:
    """Run the vision tower's patch embedding as one matrix product (a training-speed change only).

    Qwen2-VL's `PatchEmbed` is a Conv3d whose kernel equals its stride and its input, so it is a
    linear map of each flattened patch; oneDNN's Conv3d takes about 130 ms for a batch of 32
    224-px images on one core, the same product as `F.linear` a few ms. The weights and the
    saved checkpoint are unchanged.
    """
    import types

    import torch.nn.functional as F

    embed = model.model.visual.patch_embed

    def forward(self, hidden_states):
        weight = self.proj.weight
        flat = hidden_states.to(weight.dtype).reshape(-1, weight[0].numel())
        return F.linear(flat, weight.reshape(weight.shape[0], -1))

    embed.forward = types.MethodType(forward, embed)


def save_checkpoint(model, processor, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def final_results(
    model, processor, recipe: SeeingRecipe, prog: Progress, eval_scenes: int, ground_scenes: int
) -> dict[str, Any]:
    """Held-out figures of every skill (seeds below EVAL_SEEDS_END, never trained on)."""
    seeds = list(range(EVAL_SEEDS_END - eval_scenes, EVAL_SEEDS_END))
    ground_seeds = seeds[:ground_scenes]
    results: dict[str, Any] = {
        "recipe_key": recipe.key(),
        "steps": prog.step,
        "count_stage_steps": recipe.count_steps,
        "count_stage_minutes": prog.count_stage_minutes,
        "held_out_seeds": [seeds[0], seeds[-1] + 1],
        "count": evaluate(model, processor, "count", seeds),
        "count_bare_question": evaluate(model, processor, "count", ground_seeds, bare=True),
        "count_clutter": evaluate(model, processor, "count_clutter", ground_seeds),
        "ground": evaluate(model, processor, "ground", ground_seeds),
        "list": evaluate(model, processor, "list", ground_seeds),
        "checks": prog.checks,
        "ground_checks": prog.ground_checks,
    }
    if recipe.tool_steps:
        results["tool"] = evaluate(model, processor, "tool", ground_seeds[:100], batch_size=25)
        results["tool_checks"] = prog.tool_checks
    return results


def rescore(path: str | os.PathLike[str], eval_scenes: int = 500, ground_scenes: int = 200) -> dict:
    """Evaluate a finished checkpoint again (held-out, greedy, plain `from_pretrained`) and
    rewrite its `results.json`, keeping the build's steps and minutes.

    For a checkpoint whose results were written by an older scoring; the answers are the same
    (greedy decoding on the same seeds), only what is computed from them can differ.
    """
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    path = Path(path)
    recipe = SeeingRecipe.from_identity(json.loads((path / "recipe.json").read_text()))
    old = json.loads((path / "results.json").read_text())
    prog = Progress(**json.loads((path / "training_log.json").read_text()))
    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    results = final_results(model, processor, recipe, prog, eval_scenes, ground_scenes)
    results["minutes"] = old.get("minutes")
    (path / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _as_tuple(value: list) -> tuple:
    return tuple(_as_tuple(v) if isinstance(v, list) else v for v in value)


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
    from boxgym.testing.tiny_model import cache_dir

    return cache_dir() / f"seeing-qwen2-vl-{SeeingRecipe().key()}"


def recipe_with(overrides: list[str]) -> SeeingRecipe:
    """The default recipe with `key=value` overrides (values parsed as JSON where they parse)."""
    recipe = SeeingRecipe()
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


def run_cli(args: argparse.Namespace) -> int:
    """`boxgym tiny-model --seeing`: build (or reuse) the seeing checkpoint and print its figures."""
    recipe = recipe_with(args.set or [])
    out = Path(args.out) if args.out else seeing_model_path()
    if recipe != SeeingRecipe() and not args.out:
        out = out.with_name(f"seeing-qwen2-vl-{recipe.key()}")
    started = time.time()
    path = build_seeing_model(out, recipe, threads=args.threads)
    results = json.loads((path / "results.json").read_text())
    print(summary_line(results))
    print(f"({time.time() - started:.1f} s this call)")
    print(path)
    return 0


def summary_line(results: dict[str, Any]) -> str:
    c, g, lst = results["count"], results["ground"], results["list"]
    labelled = ""
    if "labelled_precision" in g:
        labelled = (
            f" (labels agreeing too: {g['labelled_precision']['mean']:.3f} / "
            f"{g['labelled_recall']['mean']:.3f})"
        )
    tool = ""
    if "tool" in results:
        t = results["tool"]
        tool = (
            f"; with the env's system turn and tools: count accuracy "
            f"{t['count_accuracy']['mean']:.3f}, grounding F1 {t['grounding_f1']['mean']:.3f}"
        )
    return (
        f"count accuracy {c['accuracy']['mean']:.3f} [{c['accuracy']['lo']:.3f}, "
        f"{c['accuracy']['hi']:.3f}] (majority {c['majority_baseline']:.3f}); boxes at IoU>=0.5: "
        f"precision {g['precision']['mean']:.3f} recall {g['recall']['mean']:.3f}{labelled}; "
        f"listing F1 {lst['f1']['mean']:.3f}{tool}; {results['steps']} steps, "
        f"{results['minutes']} min"
    )
