"""The marking tiny Qwen2-VL: a base that counts and grounds, continued into one arm of the
marking study (by default M, which plays the mark-and-look loop).

`MarkingRecipe` fixes everything a checkpoint depends on. A build has three stages, one warm-up
and cosine schedule each, every parameter trained, fresh scenes every step (`marking_skills`):

1. ``count``: mostly ``glance`` (1-5 shapes), some ``ground`` and ``copy``;
2. ``ground``: mostly ``ground``, ``glance`` and ``copy`` kept;
3. ``arm``: the arm's continuation (`ARM_MIXES`), from a fresh optimiser state at `arm_lr`.

Stages 1-2 are the *base*, the same for every arm: it is saved as its own checkpoint beside the
arm's (`base_path`), so the other arms of the study continue it instead of training it again,
and every arm gets the same continuation budget (steps, rows, learning rate). The architecture
is the seeing model's (`boxgym.models.recipe`): text head dimension 32, M-RoPE sections (2, 7, 7),
rope theta 10; images of 336 px (144 image tokens), where 12 shapes of 2-3 patches fit.
"""

from __future__ import annotations

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

from boxgym.models.marking_skills import (
    EVAL_SEEDS_END,
    JITTER,
    SKILLS,
    Chat,
    make_chat,
    marking_order,
)
from boxgym.provenance import provenance

BUILD_VERSION = "1"
ARMS: tuple[str, ...] = ("G", "G12", "M", "T", "O")
# Each arm's continuation: skill -> share of the rows.
ARM_MIXES: dict[str, tuple[tuple[str, float], ...]] = {
    "G": (("glance", 0.9), ("copy", 0.1)),
    "G12": (("glance12", 0.9), ("copy", 0.1)),
    "M": (("step_marked", 0.7), ("glance", 0.2), ("copy", 0.1)),
    "T": (("step_text", 0.7), ("glance", 0.2), ("copy", 0.1)),
    "O": (("one_reply", 0.7), ("glance", 0.2), ("copy", 0.1)),
}
# The skill an arm is played with in the study.
ARM_SKILL: dict[str, str] = {
    "G": "glance",
    "G12": "glance12",
    "M": "step_marked",
    "T": "step_text",
    "O": "one_reply",
}
ARM_FIELDS = ("arm", "arm_steps", "arm_lr", "mark_style", "mark_jitter")
# Fields that enter a recipe's identity only where they change what is built (away from their
# default, in an arm that uses them), so that the keys of the recipes built before them hold.
OPTIONAL_FIELDS: dict[str, tuple[Any, tuple[str, ...]]] = {"mark_jitter": (JITTER, ("M", "T"))}


@dataclass(frozen=True)
class MarkingRecipe:
    """Everything that determines a marking checkpoint (its hash names the cache entry)."""

    # Architecture (as the seeing model's)
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
    digit_weight: float = 2.0
    loss_normalization: str = "example"
    full_vocab_positions: int = 32
    sampled_negatives: int = 1024
    seed: int = 0
    # The base: stage 1 (count) and stage 2 (ground)
    count_steps: int = 800
    count_mix: tuple[tuple[str, float], ...] = (("glance", 0.75), ("ground", 0.15), ("copy", 0.1))
    ground_steps: int = 2600
    ground_mix: tuple[tuple[str, float], ...] = (("ground", 0.65), ("glance", 0.25), ("copy", 0.1))
    # share of the ground stage over which grounding scenes grow from 1 shape to 5 (the count
    # stage's grounding scenes hold 1 or 2)
    ground_curriculum: float = 0.3
    # Stage 3: the arm's continuation
    arm: str = "M"
    arm_steps: int = 1000
    arm_lr: float = 5e-4
    mark_style: str = "fill"  # how the loop's marks look (arm M)
    # how far the earlier boxes of a step example (arms M and T) stray: each edge by up to this
    # share of the object's side
    mark_jitter: float = JITTER

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {self.arm!r}")
        for name, mix in (("count_mix", self.count_mix), ("ground_mix", self.ground_mix)):
            unknown = [s for s, _ in mix if s not in SKILLS]
            if unknown or not mix or any(not w > 0 for _, w in mix):
                raise ValueError(f"{name}: skills from {SKILLS} with positive shares, got {mix}")
        for name in ("batch_size", "count_steps", "ground_steps", "arm_steps", "warmup_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise ValueError(
                    f"{name} must be a whole number >= 0 (batch_size >= 1), got {value!r}"
                )
        if not (isinstance(self.mark_jitter, (int, float)) and 0 <= self.mark_jitter <= 0.5):
            raise ValueError(
                f"mark_jitter must be a share between 0 and 0.5, got {self.mark_jitter!r}"
            )
        for name in ("lr", "arm_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")

    def identity(self) -> dict[str, Any]:
        data = json.loads(json.dumps(asdict(self)))
        for name, (default, arms) in OPTIONAL_FIELDS.items():
            if data[name] == default or self.arm not in arms:
                del data[name]
        return data

    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha1(f"marking-v{BUILD_VERSION}:{blob}".encode()).hexdigest()[:10]

    def base_key(self) -> str:
        """The key of stages 1-2, shared by every arm."""
        data = {k: v for k, v in self.identity().items() if k not in ARM_FIELDS}
        blob = json.dumps(data, sort_keys=True)
        return hashlib.sha1(f"marking-base-v{BUILD_VERSION}:{blob}".encode()).hexdigest()[:10]

    @property
    def base_steps(self) -> int:
        return self.count_steps + self.ground_steps

    @property
    def total_steps(self) -> int:
        return self.base_steps + self.arm_steps

    def stage(self, step: int) -> tuple[str, int, int, float, tuple[tuple[str, float], ...]]:
        """(name, first step, length, peak lr, mix) of the stage holding `step`."""
        if step < self.count_steps:
            return "count", 0, self.count_steps, self.lr, self.count_mix
        if step < self.base_steps:
            return "ground", self.count_steps, self.ground_steps, self.lr, self.ground_mix
        return "arm", self.base_steps, self.arm_steps, self.arm_lr, ARM_MIXES[self.arm]

    @classmethod
    def from_identity(cls, data: dict[str, Any]) -> MarkingRecipe:
        def tup(v: Any) -> Any:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v

        return cls(**{k: tup(v) for k, v in data.items()})


def lr_at(recipe: MarkingRecipe, step: int) -> float:
    """Warm-up then cosine decay, restarted at the start of each stage."""
    _name, start, length, peak, _mix = recipe.stage(step)
    t = step - start
    if t < recipe.warmup_steps:
        return peak * (t + 1) / recipe.warmup_steps
    frac = (t - recipe.warmup_steps) / max(1, length - recipe.warmup_steps)
    floor = recipe.min_lr_ratio
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_seed(recipe: MarkingRecipe, step: int, row: int) -> int:
    """The scene seed of one training row: always at or above EVAL_SEEDS_END."""
    return EVAL_SEEDS_END + recipe.seed * 100_000_000 + step * recipe.batch_size + row


def training_chats(recipe: MarkingRecipe, step: int) -> list[Chat]:
    """The rows of one step: skills drawn from the stage's mixture with the step's seed."""
    import numpy as np

    _name, _start, _length, _peak, mix = recipe.stage(step)
    names = [name for name, _ in mix]
    weights = np.array([w for _, w in mix], dtype=float)
    rng = np.random.default_rng([recipe.seed, step, 11])
    skills = rng.choice(names, size=recipe.batch_size, p=weights / weights.sum())
    cap = ground_cap(recipe, step)
    return [
        make_chat(
            str(skill),
            train_seed(recipe, step, row),
            recipe.mark_style,
            top=cap if skill == "ground" else None,
            jitter=recipe.mark_jitter,
        )
        for row, skill in enumerate(skills)
    ]


def ground_cap(recipe: MarkingRecipe, step: int) -> int:
    """The most shapes a grounding scene of `step` holds: 2 in the count stage, then 1 growing
    to 5 over the first `ground_curriculum` of the ground stage, 5 after."""
    name, start, length, _peak, _mix = recipe.stage(step)
    if name == "count":
        return 2
    if name == "arm":
        return 5
    into = (step - start) / max(1, length * recipe.ground_curriculum)
    return min(5, 1 + int(into * 5))


# ---------------------------------------------------------------------------------------------
# Cache


def marking_path(recipe: MarkingRecipe | None = None) -> Path:
    """Where the checkpoint of `recipe` (default: the default recipe) lives in the cache."""
    from boxgym.models.cache import cache_dir

    return cache_dir() / f"marking-qwen2-vl-{(recipe or MarkingRecipe()).key()}"


def base_path(recipe: MarkingRecipe, out: Path | None = None) -> Path:
    """Where the base of `recipe` lives: beside `out` (default: in the cache)."""
    folder = (out or marking_path(recipe)).parent
    return folder / f"marking-qwen2-vl-base-{recipe.base_key()}"


def is_built(path: Path, identity: dict[str, Any]) -> bool:
    try:
        return (path / "results.json").is_file() and json.loads(
            (path / "recipe.json").read_text()
        ) == identity
    except (OSError, ValueError):
        return False


def base_identity(recipe: MarkingRecipe) -> dict[str, Any]:
    return {"base_of": {k: v for k, v in recipe.identity().items() if k not in ARM_FIELDS}}


# ---------------------------------------------------------------------------------------------
# Evaluation


def generate_chat_replies(model, processor, chats: list[Chat], max_new_tokens: int) -> list[str]:
    """Greedy replies through plain `generate` (left padded), prompts as every policy renders."""
    import torch

    from boxgym.policies.prompting import prepare_inputs

    inputs = prepare_inputs(processor, [c.messages for c in chats], chats[0].tools)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    replies = processor.tokenizer.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=False
    )
    return [r.split("<|im_end|>")[0].replace("<|endoftext|>", "") for r in replies]


def reply_correct(chat: Chat, reply: str) -> bool:
    """Whether a reply is the right one: the count (glance, copy), the next unmarked object's
    box at IoU >= 0.5 or the right count when none is left (step), the count (one reply)."""
    from boxgym.env.parsing import parse_tool_calls
    from boxgym.models.scoring import box_scores, read_boxes, read_count

    calls = parse_tool_calls(reply, max_calls=64).calls
    answers = [c.arguments.get("count") for c in calls if c.name == "answer"]
    truth = chat.reply
    if chat.skill in ("glance", "glance12", "copy"):
        return read_count(reply) == int(truth)
    if chat.skill == "ground":
        return box_scores(read_boxes(reply, chat.task.images[0].size), chat.task)[2] == 1.0
    n = chat.task.count
    if chat.skill == "one_reply" or "<tool_call>" in truth:  # the answer is due
        return answers[:1] == [n] and (chat.skill == "one_reply" or len(calls) == 1)
    boxes = read_boxes(reply, chat.task.images[0].size)
    if len(calls) != 1 or len(boxes) != 1:
        return False
    k = sum(1 for m in chat.messages if m["role"] == "assistant")
    target = replace(chat.task, objects=[marking_order(chat.task.objects)[k]])
    return box_scores(boxes, target)[1] == 1.0


def held_out_accuracy(
    model, processor, skill: str, seeds: list[int], mark_style: str, jitter: float = JITTER
) -> dict:
    """Share of held-out examples of `skill` answered right, with its 95% CI."""
    from boxgym.models.scoring import ci

    chats = [make_chat(skill, s, mark_style, jitter=jitter) for s in seeds]
    max_new = {"one_reply": 200, "ground": 160}.get(skill, 40)
    right: list[float] = []
    model.eval()
    for i in range(0, len(chats), 25):
        part = chats[i : i + 25]
        groups: dict[bool, list[Chat]] = {}
        for chat in part:  # one prompt batch per tool set (with or without the system turn)
            groups.setdefault(chat.tools is not None, []).append(chat)
        for group in groups.values():
            replies = generate_chat_replies(model, processor, group, max_new)
            right += [float(reply_correct(c, r)) for c, r in zip(group, replies)]
    model.train()
    return ci(right)


def final_results(model, processor, recipe: MarkingRecipe, scenes: int) -> dict[str, Any]:
    """Held-out figures of the skills this checkpoint was trained on (seeds never trained on)."""
    seeds = list(range(EVAL_SEEDS_END - scenes, EVAL_SEEDS_END))
    results: dict[str, Any] = {
        "recipe_key": recipe.key(),
        "held_out_seeds": [seeds[0], seeds[-1] + 1],
    }
    skills = ["glance", "copy", "ground"]
    if recipe.arm_steps:
        skills.append(ARM_SKILL[recipe.arm])
    for skill in dict.fromkeys(skills):
        results[skill] = held_out_accuracy(
            model, processor, skill, seeds, recipe.mark_style, recipe.mark_jitter
        )
    return results


# ---------------------------------------------------------------------------------------------
# The build


@dataclass
class Progress:
    step: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    checks: list[tuple[int, float, float]] = field(default_factory=list)  # step, minutes, glance


def quick_glance_accuracy(model, batcher: Any, seeds: list[int]) -> float:
    """Share of held-out glance scenes (1-5 shapes) whose greedy first reply token is right."""
    import torch

    from boxgym.models.loss import batch_hidden

    chats = [make_chat("glance", s) for s in seeds]
    batch = batcher.batch(chats, [batcher.prompt_text(c) for c in chats])
    model.eval()
    with torch.no_grad():
        hidden, _ = batch_hidden(model, batch)
    model.train()
    first = (batch["labels"] != -100).int().argmax(dim=1) - 1
    rows = torch.arange(len(chats))
    guess = (hidden[rows, first] @ model.lm_head.weight.T).argmax(dim=-1)
    return float((guess == batch["labels"][rows, first + 1]).float().mean())


def build_marking_model(
    out_dir: str | os.PathLike[str] | None = None,
    recipe: MarkingRecipe | None = None,
    *,
    threads: int | None = None,
    save_every: int = 100,
    check_every: int = 100,
    check_scenes: int = 64,
    eval_scenes: int = 200,
    progress: bool = True,
    log=print,
) -> Path:
    """Train (or resume, or reuse) the marking checkpoint of `recipe` in `out_dir`.

    The base (stages 1-2) is built first into `base_path(recipe, out)` unless it is there, then
    continued with the arm. Both are resumable: a state every `save_every` steps in
    `<folder>.partial/`.

    Returns:
        The checkpoint folder, holding `recipe.json`, `results.json` and `training_log.json`.
    """
    import torch

    recipe = recipe or MarkingRecipe()
    out = Path(out_dir).expanduser().resolve() if out_dir else marking_path(recipe)
    if is_built(out, recipe.identity()):
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} holds something else (no matching recipe.json); choose an empty --out"
        )
    if threads:
        torch.set_num_threads(threads)
    base = base_path(recipe, out)
    base_recipe = replace(recipe, arm_steps=0)
    if not is_built(base, base_identity(recipe)):
        _train(base, base_recipe, base_identity(recipe), None, save_every, check_every,
               check_scenes, eval_scenes, progress, log)  # fmt: skip
    _train(out, recipe, recipe.identity(), base, save_every, check_every, check_scenes,
           eval_scenes, progress, log)  # fmt: skip
    return out


def _train(
    out: Path,
    recipe: MarkingRecipe,
    identity: dict[str, Any],
    base: Path | None,
    save_every: int,
    check_every: int,
    check_scenes: int,
    eval_scenes: int,
    progress: bool,
    log,
) -> None:
    """Train `recipe`'s steps into `out`: every step from scratch (`base` None) or the arm's
    steps continuing the built `base`."""
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    from boxgym.models.build import save_checkpoint, use_linear_patch_embedding
    from boxgym.models.chat_batches import ChatBatcher
    from boxgym.models.loss import reply_loss
    from boxgym.models.recipe import seeing_config
    from boxgym.models.tiny import build_processor

    origin = provenance()
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    batcher = ChatBatcher(processor, recipe.digit_weight)
    vocab = chat_vocabulary(batcher, recipe)
    torch.manual_seed(recipe.seed)
    model = Qwen2VLForConditionalGeneration(seeing_config(recipe))
    model.generation_config = GenerationConfig(
        bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=False
    )
    use_linear_patch_embedding(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), fused=True)
    prog = Progress()
    state_file = partial / "state.pt"
    if state_file.is_file():
        saved = torch.load(state_file, weights_only=False)
        if saved["identity"] != identity:
            raise FileExistsError(
                f"{partial} holds a build of another recipe; delete it or use another --out"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        prog = Progress(**saved["progress"])
        log(f"resuming the marking-model build at step {prog.step}/{recipe.total_steps}")
    elif base is not None:
        model.load_state_dict(Qwen2VLForConditionalGeneration.from_pretrained(base).state_dict())
        prog = Progress(**json.loads((base / "training_log.json").read_text()))
        log(f"continuing the base {base.name} (step {prog.step}) with arm {recipe.arm}")
    check_seeds = list(range(check_scenes))  # held out: below EVAL_SEEDS_END
    generator = torch.Generator().manual_seed(recipe.seed * 1000 + prog.step)
    started = time.time() - prog.seconds

    def save_state() -> None:
        prog.seconds = time.time() - started
        tmp = partial / "state.pt.tmp"
        torch.save({"identity": identity, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "progress": asdict(prog)}, tmp)  # fmt: skip
        os.replace(tmp, state_file)

    bar = tqdm(total=recipe.total_steps, initial=prog.step, desc=f"marking model ({out.name})",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    acc = prog.checks[-1][2] if prog.checks else float("nan")
    model.train()
    while prog.step < recipe.total_steps:
        step = prog.step
        stage = recipe.stage(step)
        if step == stage[1] and step > 0:  # each stage starts with a fresh optimiser state
            optimizer.state.clear()
            generator.manual_seed(recipe.seed * 1000 + step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step)
        chats = training_chats(recipe, step)
        loss = sum(
            reply_loss(model, batch, recipe, vocab, generator) * batch["input_ids"].shape[0]
            for batch in batcher.batches(chats)
        ) / len(chats)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        prog.step += 1
        prog.losses.append((prog.step, round(loss.item(), 4)))
        if prog.step % check_every == 0:
            acc = quick_glance_accuracy(model, batcher, check_seeds)
            prog.checks.append((prog.step, round((time.time() - started) / 60, 2), acc))
        bar.set_postfix_str(f"{stage[0]} loss {loss.item():.3f} held-out glance acc {acc:.2f}")
        bar.update(1)
        if prog.step % save_every == 0:
            save_state()
    bar.close()
    save_state()
    log("evaluating on held-out scenes ...")
    minutes = round((time.time() - started) / 60, 2)
    results = final_results(model, processor, recipe, eval_scenes)
    results.update(steps=prog.step, minutes=minutes, arm=recipe.arm if recipe.arm_steps else None)
    results.update(origin)  # the commit the build ran from, not the one at its end
    results["checkpoint"] = out.name
    staging = partial / "checkpoint"
    save_checkpoint(model, processor, staging)
    (staging / "recipe.json").write_text(json.dumps(identity, indent=1))
    (staging / "results.json").write_text(json.dumps(results, indent=1))
    (staging / "training_log.json").write_text(json.dumps(asdict(prog)))
    if out.exists():
        out.rmdir()
    os.replace(staging, out)
    shutil.rmtree(partial, ignore_errors=True)


def chat_vocabulary(batcher: Any, recipe: MarkingRecipe) -> Any:
    """Every token id the replies of any skill use (sorted tensor), from real replies."""
    import torch

    ids: set[int] = set()
    for d in range(10):
        ids.update(batcher.reply_ids(str(d)))
    for seed in range(120):
        for skill in ("glance12", "copy", "ground", "step_marked", "one_reply"):
            chat = make_chat(skill, EVAL_SEEDS_END + 7 * seed + 3, recipe.mark_style)
            ids.update(batcher.reply_ids(chat.reply))
    return torch.tensor(sorted(ids))


def summary_line(results: dict[str, Any]) -> str:
    parts = []
    for skill in ("glance", "copy", "ground", "step_marked", "step_text", "one_reply"):
        if skill in results:
            r = results[skill]
            parts.append(f"{skill} {r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]")
    return (
        f"held-out accuracy: {'; '.join(parts)}; {results['steps']} steps, {results['minutes']} min"
    )
