"""`build_seeing_model`: train (or resume, or reuse) a seeing checkpoint from its recipe.

Every parameter of a small `Qwen2VLForConditionalGeneration` is trained from scratch on the skills
of `boxgym.models.skills`, fresh scenes every step, and the checkpoint is saved so that it loads
like any Qwen2-VL (`Qwen2VLForConditionalGeneration.from_pretrained`, `AutoProcessor`). The build is
resumable (a checkpoint every `save_every` steps in `<out>.partial/`) and cached:
`out_dir/recipe.json` records the recipe, so a second call with the same recipe returns at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from boxgym.models.batches import Batcher, reply_vocabulary, training_examples
from boxgym.models.cache import built_base, is_built
from boxgym.models.evaluation import evaluate, final_results, quick_count_accuracy
from boxgym.models.loss import step_loss
from boxgym.models.recipe import SeeingRecipe, lr_at, seeing_config


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

    from boxgym.models.tiny import build_processor

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
