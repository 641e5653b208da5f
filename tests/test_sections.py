"""The run config sections: their checks, and the LoRA section's PEFT config."""

from __future__ import annotations

import pytest

from boxgym.sections import (
    DecodingSection,
    EnvSection,
    LoraSection,
    ModelSection,
    TaskSection,
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EnvSection(env_kwargs={"max_turn": 3}), "did you mean 'max_turns'"),
        (lambda: EnvSection(reward_kwargs={"kittens": 1}), "unknown RewardConfig field"),
        (lambda: EnvSection(env_kwargs={"max_turns": 0}), "env.env_kwargs: EnvConfig.max_turns"),
        (
            lambda: EnvSection(reward_kwargs={"format": "high"}),
            "env.reward_kwargs: RewardConfig.format",
        ),
        (lambda: EnvSection(difficulty="brutal"), "env.difficulty must be one of"),
        (
            lambda: ModelSection(image_min_pixels=3136, image_max_pixels=1568),
            "must not exceed",
        ),
        (lambda: ModelSection(image_max_pixels=100), "one 28x28 patch"),
        (lambda: TaskSection(dataset="nlvr2"), "needs tasks.dataset_path"),
        (
            lambda: TaskSection(dataset="nlvr2", dataset_path="x", path="mine.jsonl"),
            "not both",
        ),
        (lambda: DecodingSection(top_p=0.0), r"decoding.top_p must be in \(0, 1\]"),
        (lambda: DecodingSection(max_new_tokens=0), "decoding.max_new_tokens must be >= 1"),
    ],
)
def test_sections_refuse_bad_values_naming_the_key(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_default_lora_targets_only_the_language_model(tiny_model_path):
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_model_path))
    peft_model = get_peft_model(model, LoraSection().to_peft())
    wrapped = {name for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    assert wrapped, "no module got a LoRA adapter"
    assert all(".language_model." in name for name in wrapped)
    projections = {name.split(".")[-2] for name in wrapped}
    assert projections == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
