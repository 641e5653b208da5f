"""The information study against a by-hand computation, and its LoRA arithmetic."""

from __future__ import annotations

import math

import pytest

from boxgym.studies.information import (
    SEEING_ENV,
    lora_params_per_rank,
    meta_model,
    peft_lora_params,
    rank_table,
    smallest_rank,
)


def by_hand_bits(lab, row) -> tuple[float, int]:
    """Score each assistant turn as generation sees it: the prompt up to that turn rendered with
    the generation prompt, then the turn's text and <|im_end|>, one forward pass per turn, and
    -log2 p of each of those tokens from the full-vocabulary softmax in float64."""
    import torch

    from boxgym.policies.prompting import prepare_inputs

    model, tokenizer = lab.policy.model, lab.tokenizer
    bits, tokens = 0.0, 0
    messages = row["messages"]
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = prepare_inputs(lab.processor, [messages[:k]], row["tools"])
        text = "".join(p["text"] for p in message["content"] if p["type"] == "text")
        answer = tokenizer.encode(text + "<|im_end|>", add_special_tokens=False)
        inputs = dict(prompt)
        n = prompt["input_ids"].shape[1]
        extra = torch.tensor([answer])
        inputs["input_ids"] = torch.cat([prompt["input_ids"], extra], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        for key, value in prompt.items():
            if (
                key not in ("input_ids", "attention_mask")
                and value.dim() == 2
                and value.shape[1] == n
            ):
                inputs[key] = torch.cat([value, torch.zeros_like(extra)], dim=1)
        keep = len(answer) + 1  # the last positions: the one before the answer, and the answer's
        with torch.no_grad():
            logits = model(**inputs, logits_to_keep=keep).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for i, token in enumerate(answer):
            bits -= float(logp[i, token]) / math.log(2)  # row i predicts position n + i
        tokens += len(answer)
    return bits, tokens


@pytest.mark.slow
def test_completion_bits_match_a_by_hand_computation_on_two_examples(lab):
    from boxgym.sections import EnvSection, MixtureSection
    from boxgym.train.mixture import build_mixture

    rows = build_mixture(
        MixtureSection(num_examples=2, weights={"oracle": 1}), EnvSection(**SEEING_ENV)
    )
    scored = lab.completion_bits(rows)  # both rows in one left-padded batch
    assert len(scored) == 2
    for row, got in zip(rows, scored):
        bits, tokens = by_hand_bits(lab, row)
        assert got["tokens"] == tokens
        assert got["bits"] == pytest.approx(bits, rel=1e-4)
        assert sum(got["token_bits"]) == pytest.approx(bits, rel=1e-4)


def test_lora_parameters_per_rank_by_hand_and_by_peft(tiny_model_path):
    from boxgym.sections import LANGUAGE_MODEL_TARGETS

    model = meta_model(str(tiny_model_path))
    per_rank, names = lora_params_per_rank(model, LANGUAGE_MODEL_TARGETS)
    # tiny text model: hidden 64, MLP 128, 4 query heads and 2 kv heads of 16: per layer
    # q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64; 2 layers
    assert per_rank == 2 * (128 + 96 + 96 + 128 + 192 + 192 + 192) == 2048
    assert len(names) == 14
    assert peft_lora_params(model, LANGUAGE_MODEL_TARGETS, 4) == 4 * per_rank
    assert (
        peft_lora_params(model, ["q_proj", "v_proj"], 2)
        == 2 * lora_params_per_rank(model, ["q_proj", "v_proj"])[0]
    )


def test_smallest_rank_and_table():
    assert smallest_rank(8910, 2048, 2.0) == 3  # 2 x 2048 x 3 = 12288 >= 8910 > 8192
    assert smallest_rank(8192, 2048, 2.0) == 2
    assert smallest_rank(0.5, 2048, 2.0) == 1
    table = rank_table({"sft": 8192.0, "rl": 1000.0}, 2048, [1, 2, 4], 2.0)
    assert [r["lora_params"] for r in table] == [2048, 4096, 8192]
    assert table[1]["capacity/sft"] == pytest.approx(1.0)
    assert table[0]["capacity/rl"] == pytest.approx(4.096)
