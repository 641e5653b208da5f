from __future__ import annotations

import pytest
from PIL import Image

from boxgym.policies.base import Policy

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "answer",
            "description": "Give the final answer.",
            "parameters": {
                "type": "object",
                "properties": {"count": {"type": "integer", "description": "How many."}},
                "required": ["count"],
            },
        },
    }
]


def conversation(color: str, question: str = "How many?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (56, 84), color)},
                {"type": "text", "text": question},
            ],
        }
    ]


@pytest.fixture(scope="module")
def make_policy(tiny_model_path):
    from boxgym.policies.hf import HFPolicy

    def make(**knobs):
        knobs.setdefault("max_new_tokens", 8)
        return HFPolicy(model=tiny_model_path, device="cpu", **knobs)

    return make


def test_is_a_policy_and_returns_one_text_per_conversation(make_policy):
    policy = make_policy(batch_size=2, temperature=1.0, seed=3)
    assert isinstance(policy, Policy)
    texts = policy.act([conversation("red"), conversation("blue"), conversation("green")], TOOLS)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert policy.batches_drawn == 2


@pytest.fixture(scope="module")
def sampler(make_policy):
    """One loaded model reused across tests by resetting its seed and batch counter."""
    return make_policy(temperature=1.0, max_new_tokens=10)


def draw(policy, batch, seed, **knobs):
    policy.seed, policy.batches_drawn = seed, 0
    for name, value in knobs.items():
        setattr(policy, name, value)
    return policy.act(batch, TOOLS)


def test_same_seed_same_texts_other_seed_differs(sampler):
    batch = [conversation("red"), conversation("blue", "Count them.")]
    first = draw(sampler, batch, 7, temperature=1.0, batch_size=2)
    assert draw(sampler, batch, 7) == first
    assert draw(sampler, batch, 8) != first


def test_greedy_ignores_seed_and_batching_keeps_order(sampler):
    batch = [conversation("red"), conversation("blue", "Count the things please.")]
    one_by_one = draw(sampler, batch, 1, temperature=0, batch_size=1)
    together = draw(sampler, batch, 2, temperature=0, batch_size=2)
    assert one_by_one == together


def test_outputs_never_hold_vision_tokens_or_turn_ends(sampler):
    texts = draw(sampler, [conversation("red")] * 4, 0, temperature=1.5, batch_size=4)
    for text in texts:
        for token in ("<|image_pad|>", "<|vision_start|>", "<|im_end|>", "<|endoftext|>"):
            assert token not in text


def test_generation_kwargs_override_checkpoint_defaults(make_policy):
    policy = make_policy(temperature=0.7, top_p=0.9, seed=0)
    kwargs = policy.generation_kwargs()
    assert kwargs["do_sample"] is False  # sampling happens through the Gumbel noise
    assert kwargs["eos_token_id"] == [151645, 151643]
    banned, temperature, top_p, noise = kwargs["logits_processor"]
    assert banned.token_ids == [151652, 151653, 151654, 151655, 151656]
    assert temperature.temperature == 0.7 and top_p.top_p == 0.9
    assert type(noise).__name__ == "CategoricalDraw"
    assert len(make_policy(temperature=0).generation_kwargs()["logits_processor"]) == 1


def test_bfloat16_runs(make_policy):
    import torch

    policy = make_policy(dtype="bfloat16", temperature=0)
    assert policy.model.dtype == torch.bfloat16
    assert len(policy.act([conversation("red")], TOOLS)) == 1


def test_lora_adapter_is_applied(make_policy, tiny_model_path, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = make_policy(temperature=0)
    adapted = make_policy(temperature=0, adapter=tmp_path / "adapter")
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(plain.model.state_dict()[name], adapted.model.state_dict()[name])


def test_banned_tokens_can_never_be_sampled():
    import torch

    from boxgym.policies.hf import BannedTokens

    scores = torch.zeros(2, 10)
    scores[:, 3] = 100.0
    out = BannedTokens([3, 7])(None, scores)
    assert torch.isinf(out[:, [3, 7]]).all() and (out[:, [0, 9]] == 0).all()
    assert not torch.multinomial(out.softmax(-1), 50, replacement=True).eq(3).any()


def test_categorical_draw_samples_the_softmax():
    import torch

    from boxgym.policies.hf import CategoricalDraw

    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf"), 0.5]]).repeat(20000, 1)
    logits[:, 1] = float("-inf")  # a banned token in the middle
    draw = CategoricalDraw(torch.Generator().manual_seed(0))
    out = draw(None, logits.clone())
    assert ((out == 0).sum(-1) == 1).all()
    picks = out.argmax(-1)
    frequencies = torch.bincount(picks, minlength=5).float() / len(picks)
    assert torch.allclose(frequencies, logits[0].softmax(-1), atol=0.01)
    assert frequencies[1] == 0 and frequencies[3] == 0


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_knobs_are_rejected(make_policy, knobs, message):
    with pytest.raises(ValueError, match=message):
        make_policy(**knobs)
