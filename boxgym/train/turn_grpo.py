"""GRPO over the turns of `image_history: last` episodes: one training row per reply.

TRL's tool loop trains an episode as one token sequence holding every image its tools returned.
Under `image_history: last` each reply was written seeing only the latest image, so no single
sequence holds what every reply saw. Here the GRPO trainer plays its episodes itself, turn by
turn, in the env (`BoxGymEnv`, the GRPO config's env and tasks): each turn's prompt is the
conversation as the env keeps it, rendered by the one prompt renderer; the reply comes from
TRL's own generation (`_generate_single_turn`, the model being trained, its sampling settings).
When the episodes end, each turn becomes one row of TRL's loss: its prompt, its reply as the
completion, and its episode's advantage (the env's reward, normalised within the task's group
of `num_generations` episodes, as TRL does). A turn's policy gradient is then exactly that of
the reply given what the model saw.

Every row starts with the env's system turn and tool schemas (about 1,500 tokens, the same for
all): the loss runs it once per forward, with gradient, and every row continues from its
keys and values (`shared_prefix_logps`), and the LM head scores only the reply tokens.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

# The env's failure kinds of an episode cut by its turn or call budget without an answer.
OVER_TURN_FAILURES = ("truncated",)


def encode_prompts(processor: Any, conversations: list[list[dict]], tools: list[dict]) -> tuple:
    """Per conversation: its prompt token ids (image placeholders expanded) and its images; and
    the processed images of them all (`pixel_values`, `image_grid_thw`)."""
    from boxgym.policies.prompting import conversation_images, render_chat

    prompt_ids, images = [], []
    for conversation in conversations:
        text = render_chat(processor, conversation, tools)
        own = [im.convert("RGB") for im in conversation_images(conversation)]
        encoded = processor(text=[text], images=own or None, return_tensors="pt")
        prompt_ids.append(encoded["input_ids"][0].tolist())
        images.append(own)
    flat = [image for own in images for image in own]
    fields = dict(processor.image_processor(images=flat, return_tensors="pt")) if flat else {}
    return prompt_ids, images, fields


def play_turns(trainer: Any, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Play one episode per dataset row with the model being trained, all in lockstep.

    Returns:
        The turns (`episode`, `prompt_ids`, `completion_ids`, `images`) in the order played,
        and per episode its reward, metrics, failure and whether it ran over its budget.
    """
    from boxgym.env import BoxGymEnv
    from boxgym.policies.prompting import clean_completion
    from boxgym.train.trl_environment import task_from_row

    processor = trainer.processing_class
    envs = []
    for row in rows:
        env = BoxGymEnv(config=trainer.env_config)
        task = task_from_row(row, trainer.scene_knobs)
        env.reset(seed=int(row["seed"]), options={"task": task})
        envs.append(env)
    tools = envs[0].tool_schemas if envs else []
    turns: list[dict] = []
    infos: list[dict] = [{} for _ in envs]
    live = list(range(len(envs)))
    while live:
        prompt_ids, images, fields = encode_prompts(
            processor, [envs[i].messages for i in live], tools
        )
        completions, _ = trainer._generate_single_turn(
            prompt_ids, images, fields, num_generations=1, has_tool_images=bool(fields)
        )
        texts = processor.tokenizer.batch_decode(completions, skip_special_tokens=False)
        still = []
        for j, index in enumerate(live):
            turns.append(
                {"episode": index, "prompt_ids": prompt_ids[j],
                 "completion_ids": list(completions[j]), "images": images[j]}
            )  # fmt: skip
            _, reward, terminated, truncated, info = envs[index].step(clean_completion(texts[j]))
            if terminated or truncated:
                infos[index] = {**info, "reward": float(reward)}
            else:
                still.append(index)
        live = still
    episodes = [
        {
            "reward": info.get("reward", 0.0),
            "metrics": info.get("metrics", {}),
            "failure": info.get("failure", ""),
            "over_turn": info.get("failure") in OVER_TURN_FAILURES,
        }
        for info in infos
    ]
    return turns, episodes


def group_advantages(rewards: list[float], group_size: int, scale: bool = True) -> tuple:
    """Per episode, its reward minus its group's mean (over `std + 1e-4` when `scale`), as TRL
    computes them for consecutive groups of `group_size`; and the share of groups whose rewards
    are all equal (no learning signal)."""
    import torch

    r = torch.tensor(rewards, dtype=torch.float32).view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    advantages = r - mean
    if scale:
        advantages = advantages / (std + 1e-4)
    zero_std = torch.isclose(std, torch.zeros_like(std)).float().mean().item()
    return advantages.view(-1), zero_std


def shared_prefix_length(prompts: list[list[int]], end_of_turn: int) -> int:
    """How many leading tokens every prompt shares, up to the end of its first turn (the system
    turn and the tool schemas): the prefix the loss runs once."""
    first = prompts[0]
    if end_of_turn not in first:
        return 0
    size = first.index(end_of_turn) + 1
    if any(p[:size] != first[:size] or len(p) <= size for p in prompts):
        return 0
    return size


def turn_batch(trainer: Any, turns: list[dict], advantages: Any, keep: list[bool]) -> dict:
    """TRL's loss inputs for the turns: each prompt as [shared prefix, padding, the rest], the
    replies right padded, each row's advantage its episode's, over-turn episodes masked when
    `keep` says so."""
    import torch

    tokenizer = trainer._tokenizer
    pad = tokenizer.pad_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [t["prompt_ids"] for t in turns]
    size = shared_prefix_length(prompts, end_of_turn)
    rest = max(len(p) - size for p in prompts)
    width = max(len(t["completion_ids"]) for t in turns)
    prompt_ids = torch.full((len(turns), size + rest), pad, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.full((len(turns), width), pad, dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for r, t in enumerate(turns):
        p, c = t["prompt_ids"], t["completion_ids"]
        prompt_ids[r, :size] = torch.tensor(p[:size])
        prompt_mask[r, :size] = 1
        if len(p) > size:
            prompt_ids[r, size + rest - (len(p) - size) :] = torch.tensor(p[size:])
            prompt_mask[r, size + rest - (len(p) - size) :] = 1
        completion_ids[r, : len(c)] = torch.tensor(c)
        completion_mask[r, : len(c)] = int(keep[t["episode"]])
    flat = [image for t in turns for image in t["images"]]
    fields = dict(trainer.processing_class.image_processor(images=flat, return_tensors="pt"))
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    device = trainer.accelerator.device
    batch = {
        "prompt_ids": prompt_ids.to(device),
        "prompt_mask": prompt_mask.to(device),
        "completion_ids": completion_ids.to(device),
        "completion_mask": completion_mask.to(device),
        "advantages": torch.stack([advantages[t["episode"]] for t in turns]).to(device),
        "num_items_in_batch": completion_mask.sum().to(device),
        "num_images": [len(t["images"]) for t in turns],
        "mm_token_type_ids": (ids == image_pad).long().to(device),
    }
    if flat:
        batch["pixel_values"] = fields["pixel_values"].to(device)
        batch["image_grid_thw"] = fields["image_grid_thw"].to(device)
    trainer._turn_prefix = prompt_ids[0, :size].tolist()
    return batch


def shared_prefix_logps(
    model: Any,
    prefix: list[int],
    input_ids: Any,
    attention_mask: Any,
    logits_to_keep: int,
    batch_size: int,
    pixel_values: Any,
    image_grid_thw: Any,
    num_images: list[int],
    mm_token_type_ids: Any,
    compute_entropy: bool,
) -> tuple[Any, Any]:
    """Per-token log-probabilities (and entropies) of the completions of rows that all start with
    `prefix`: the prefix runs once, with gradient, and each chunk of `batch_size` rows continues
    from its keys and values, the fused LM head scoring only the completion tokens.

    Positions (Qwen2-VL's 3D rotary ones) are computed over the whole rows, padding excluded,
    as a full forward computes them.
    """
    import torch
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = base.model
    n = len(prefix)
    prefix_ids = input_ids[:1, :n]
    cum_images = [0, *torch.tensor(num_images).cumsum(0).tolist()]
    cum_rows = None  # per sample, where its images' patches start in `pixel_values`
    if image_grid_thw is not None:
        per_image = image_grid_thw.prod(dim=-1)
        per_sample = [int(per_image[a:b].sum()) for a, b in itertools.pairwise(cum_images)]
        cum_rows = [0, *torch.tensor(per_sample).cumsum(0).tolist()]
    positions_all, _ = backbone.get_rope_index(
        input_ids,
        mm_token_type_ids=mm_token_type_ids,
        image_grid_thw=image_grid_thw,
        attention_mask=attention_mask,
    )
    prefix_out = backbone(
        input_ids=prefix_ids, position_ids=positions_all[:, :1, :n], use_cache=True
    )
    prefix_layers = [(layer.keys, layer.values) for layer in prefix_out.past_key_values.layers]
    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        end = min(start + batch_size, input_ids.size(0))
        rows = end - start
        cache = DynamicCache(config=base.config)
        for index, (keys, values) in enumerate(prefix_layers):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
        ids = input_ids[start:end]
        labels = ids.masked_fill(attention_mask[start:end] == 0, -100)
        labels[:, :-logits_to_keep] = -100
        inputs = {
            "input_ids": ids[:, n:],
            "attention_mask": attention_mask[start:end],
            "position_ids": positions_all[:, start:end, n:],
            "past_key_values": cache,
            "mm_token_type_ids": mm_token_type_ids[start:end, n:],
            "labels": labels[:, n:],
        }
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values[cum_rows[start] : cum_rows[end]]
            inputs["image_grid_thw"] = image_grid_thw[cum_images[start] : cum_images[end]]
        out = model(**inputs, fused_lm_head=True)
        all_logps.append(out.log_probs[:, -logits_to_keep:])
        if compute_entropy:
            all_entropies.append(out.entropy[:, -logits_to_keep:])
    logps = torch.cat(all_logps, dim=0)
    entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
    return logps, entropies


def log_turn_metrics(
    trainer: Any, episodes: list[dict], turns: list[dict], zero_std: float
) -> None:
    """The rollout's figures into TRL's logged metrics (averaged per logging step)."""
    metrics = trainer._metrics["train"]
    rewards = [e["reward"] for e in episodes]
    mean = sum(rewards) / len(rewards)
    metrics["reward"].append(mean)
    metrics["reward_std"].append(math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)))
    metrics["frac_reward_zero_std"].append(zero_std)
    metrics["rollout/turn_rows"].append(float(len(turns)))
    metrics["rollout/over_turn"].append(sum(e["over_turn"] for e in episodes) / len(episodes))
    for name in ("count_correct", "num_calls", "num_boxes", "valid_call_rate", "answered"):
        values = [float(e["metrics"].get(name) or 0.0) for e in episodes]
        metrics[f"rollout/{name}"].append(sum(values) / len(values))
    boxing = [float((e["metrics"].get("calls_draw_box") or 0.0) > 0) for e in episodes]
    metrics["rollout/episodes_that_box"].append(sum(boxing) / len(boxing))
