"""GRPO over the turns of image_history: last episodes (`boxgym.train.turn_grpo`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from boxgym.train.turn_grpo import group_advantages, shared_prefix_length

pytestmark = pytest.mark.slow


def test_group_advantages_are_trls():
    advantages, zero_std = group_advantages([1.0, 0.0, 2.0, 2.0], group_size=2)
    assert advantages[0] > 0 > advantages[1] and advantages[2] == advantages[3] == 0
    assert zero_std == 0.5


def test_the_shared_prefix_ends_with_the_first_turn():
    assert shared_prefix_length([[1, 2, 9, 5], [1, 2, 9, 6, 7]], end_of_turn=9) == 3
    assert shared_prefix_length([[1, 2, 9, 5], [1, 3, 9, 6]], end_of_turn=9) == 0


def turn_rows(processor):
    """Three turns of mark-and-look episodes, as `play_turns` records them."""
    from boxgym.models.marking_skills import count_task, step_messages
    from boxgym.train.turn_grpo import encode_prompts

    config = {"max_image_pixels": 224 * 224, "crop_max_pixels": 224 * 224}
    states = []
    for seed, k in ((0, 0), (1, 1), (2, 2)):
        messages, tools = step_messages(count_task(seed, 3), seed, k, config)
        states.append(messages)
    prompt_ids, images, _ = encode_prompts(processor, states, tools)
    replies = [processor.tokenizer.encode(f"<tool_call>{'x' * (3 + r)}", add_special_tokens=False)
               for r in range(3)]  # fmt: skip
    return [
        {"episode": r, "prompt_ids": p, "completion_ids": [*c, 151645], "images": im}
        for r, (p, c, im) in enumerate(zip(prompt_ids, replies, images))
    ]


def test_the_shared_prefix_forward_gives_a_full_forwards_log_probabilities(tiny_model_path):
    """The loss's forward over the turn rows (the system turn once, every row continuing from
    its keys and values) equals TRL's full forward over each whole row, gradients included."""
    import torch
    from transformers import AutoModelForImageTextToText
    from trl.trainer.utils import add_fused_lm_head

    from boxgym.policies.prompting import load_processor
    from boxgym.train.turn_grpo import shared_prefix_logps, turn_batch

    processor = load_processor(str(tiny_model_path))
    model = AutoModelForImageTextToText.from_pretrained(str(tiny_model_path))
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    trainer = SimpleNamespace(
        processing_class=processor,
        _tokenizer=processor.tokenizer,
        accelerator=SimpleNamespace(device="cpu"),
    )
    turns = turn_rows(processor)
    batch = turn_batch(trainer, turns, torch.tensor([1.0, -1.0, 0.5]), [True, True, True])
    assert len(trainer._turn_prefix) > 1000  # the system turn and the tool schemas
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    keep = batch["completion_ids"].shape[1]
    fast, entropy = shared_prefix_logps(
        model, trainer._turn_prefix, ids, mask, keep, 2, batch["pixel_values"],
        batch["image_grid_thw"], batch["num_images"], batch["mm_token_type_ids"], True,
    )  # fmt: skip
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-keep] = -100
    full = model(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        labels=labels,
        fused_lm_head=True,
    )
    scored = batch["completion_mask"].bool()
    assert torch.allclose(fast[scored], full.log_probs[:, -keep:][scored], atol=2e-4)
    assert torch.allclose(entropy[scored], full.entropy[:, -keep:][scored], atol=2e-4)
    fast[scored].sum().backward()
    grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # the shared prefix is trained too


def test_grpo_over_turns_trains_two_steps(tmp_path, tiny_model_path):
    from test_smoke import log_history, lora_tensors, train

    config = yaml.safe_load(Path("configs/grpo_tiny.yaml").read_text())
    config.pop("run_dir")  # a fresh LoRA adapter, no SFT run to start from
    config["model"]["path"] = str(tiny_model_path)
    config["env"]["scene_knobs"] = {
        "question": "count", "count": [1, 2], "image_size": 224, "distractors": 0,
    }  # fmt: skip
    config["env"]["env_kwargs"] = {
        "max_image_pixels": 50176, "crop_max_pixels": 50176, "max_turns": 2,
        "image_history": "last",
    }  # fmt: skip
    config["tasks"]["num_tasks"] = 2
    config["trainer"].update(
        output_dir=str(tmp_path / "grpo"),
        max_steps=2,
        max_completion_length=16,
        save_steps=2,
        learning_rate=1e-2,
    )
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    train("grpo", "--config", str(path))
    logged = [e for e in log_history(tmp_path / "grpo") if "loss" in e]
    assert len(logged) == 2
    for entry in logged:  # 2 episodes a step, 2 turns each: one row per turn
        assert entry["rollout/turn_rows"] == 4.0
        for key in ("reward", "frac_reward_zero_std", "rollout/over_turn", "rollout/num_calls"):
            assert key in entry
    assert (tmp_path / "grpo" / "adapter" / "adapter_config.json").is_file()
    assert lora_tensors(tmp_path / "grpo" / "adapter")
