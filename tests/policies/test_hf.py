from __future__ import annotations

import pytest
from PIL import Image

from boxgym.policies.base import Policy
from boxgym.policies.decoding import UNIFORMS_PER_STEP

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


@pytest.mark.slow
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
    policy.reseed(seed)
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


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_vision_tokens_are_never_picked(sampler, temperature):
    import torch

    sampler.temperature = temperature
    logits = torch.zeros(64, 151657)  # [rows, vocab]
    logits[:, sampler._vision_ids] = 100.0  # all the mass on banned tokens
    logits[:, 42] = 1.0
    picks = sampler._pick(logits, torch.rand(64, UNIFORMS_PER_STEP, dtype=torch.float64))
    assert not torch.isin(picks, sampler._vision_ids).any()
    if temperature == 0:
        assert (picks == 42).all()


@pytest.mark.slow
def test_draw_from_samples_the_softmax():
    import torch

    from boxgym.policies.decoding import DRAW_BLOCK, draw_from

    vocab = 2 * DRAW_BLOCK + 7  # two full blocks and a short tail
    logits = torch.full((vocab,), float("-inf"))
    logits[[0, 5, DRAW_BLOCK - 1, DRAW_BLOCK + 3, vocab - 2]] = torch.tensor(
        [1.0, 0.0, 2.0, 0.5, 1.5]
    )
    probs = logits.softmax(-1).repeat(40000, 1)
    picks = draw_from(probs, torch.rand(40000, generator=torch.Generator().manual_seed(0)))
    frequencies = torch.bincount(picks, minlength=vocab).float() / len(picks)
    assert torch.allclose(frequencies, probs[0], atol=0.01)
    assert frequencies[probs[0] == 0].sum() == 0
    edges = torch.tensor([0.0, 1 - 1e-12])  # the extremes land on the first and last live tokens
    assert draw_from(probs[:2], edges).tolist() == [0, vocab - 2]


@pytest.mark.parametrize("spread", [0.5, 4.0])
@pytest.mark.slow
def test_draw_by_rejection_samples_the_softmax(spread):
    """Exact frequencies for a smooth and a spiky distribution (the spiky one often falls back)."""
    import torch

    from boxgym.policies.decoding import DRAW_BLOCK, UNIFORMS_PER_STEP, draw_by_rejection

    generator = torch.Generator().manual_seed(3)
    vocab = 3 * DRAW_BLOCK + 11
    row = torch.randn(vocab, generator=generator) * spread
    row[[7, DRAW_BLOCK + 1]] = float("-inf")  # banned
    row[2 * DRAW_BLOCK : 3 * DRAW_BLOCK] = float("-inf")  # a whole banned block
    logits = row.repeat(60000, 1)
    uniforms = torch.rand(60000, UNIFORMS_PER_STEP, generator=generator, dtype=torch.float64)
    picks = draw_by_rejection(logits, uniforms)
    frequencies = torch.bincount(picks, minlength=vocab).double() / len(picks)
    expected = row.double().softmax(-1)
    assert frequencies[expected == 0].sum() == 0
    # total variation distance against the softmax: sampling noise alone gives about 0.05-0.1
    assert 0.5 * (frequencies - expected).abs().sum() < 0.12


def test_draw_from_gives_the_same_tokens_in_either_layout():
    import torch

    from boxgym.policies.decoding import DRAW_BLOCK, draw_from

    generator = torch.Generator().manual_seed(1)
    by_vocab = torch.randn(5 * DRAW_BLOCK + 33, 16, generator=generator).softmax(0)
    uniforms = torch.rand(16, generator=generator, dtype=torch.float64)
    rows_view = by_vocab.t()  # the policy's layout, transposed: not contiguous
    assert not rows_view.is_contiguous()
    assert (
        draw_from(rows_view, uniforms).tolist()
        == draw_from(rows_view.contiguous(), uniforms).tolist()
    )


def test_a_conversation_gets_the_same_reply_alone_or_in_a_batch(sampler):
    batch = [conversation(color) for color in ("red", "blue", "green", "white")] * 4
    batch[5] = conversation("black", "Count the shapes.")
    together = draw(sampler, batch, 4, temperature=1.0, batch_size=16)
    assert len(set(together)) == 16  # the repeats of one prompt get fresh draws
    alone = draw(sampler, [batch[5]], 4, batch_size=1)
    assert alone == [together[5]]
    first_four = draw(sampler, batch[:4], 4, batch_size=4)
    assert first_four == together[:4]


def test_rows_that_stop_leave_the_batch_without_changing_the_others(sampler):
    import torch

    batch = [conversation(color) for color in ("red", "blue", "green", "white")]
    kept, sampler.temperature = sampler._stop_ids, 1.0
    try:  # half the vocabulary stops a reply: rows stop at different steps
        sampler._stop_ids = torch.arange(0, 151657, 2)
        sampler.reseed(1)
        together = sampler._reply_tokens(batch, TOOLS)
        alone = []
        for item in batch:
            sampler.reseed(1)
            alone.extend(sampler._reply_tokens([item], TOOLS))
    finally:
        sampler._stop_ids = kept
    assert together == alone
    assert all(reply[-1] % 2 == 0 or len(reply) == 10 for reply in together)
    assert len({len(reply) for reply in together}) > 1


def three_turns(policy, seed, temperature):
    """Texts of a 3-turn conversation: an image question, a tool reply with an image, text."""
    policy.reseed(seed)
    policy.temperature = temperature
    policy._prompts.clear()
    chat = [
        {"role": "system", "content": [{"type": "text", "text": "You count things."}]},
        *conversation("red"),
    ]
    texts = []
    for turn in range(3):
        text = policy.act([chat], TOOLS)[0]
        texts.append(text)
        chat.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        if turn == 0:
            chat.append(
                {
                    "role": "tool",
                    "name": "crop",
                    "content": [
                        {"type": "image", "image": Image.new("RGB", (56, 28), "blue")},
                        {"type": "text", "text": "Cropped."},
                    ],
                }
            )
        else:
            chat.append({"role": "user", "content": [{"type": "text", "text": "And now?"}]})
    return texts


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prompt_reuse_gives_the_same_texts(make_policy, temperature):
    reusing = make_policy(reuse_prompts=True, max_new_tokens=6)
    encoding = make_policy(reuse_prompts=False, max_new_tokens=6)
    texts = three_turns(reusing, 5, temperature)
    assert len(reusing._prompts) >= 2  # the turns were continued from kept prompts
    assert texts == three_turns(encoding, 5, temperature)


@pytest.mark.parametrize("reuse_prompts", [False, True])
def test_lean_decoding_matches_generate_step_for_step(make_policy, reuse_prompts):
    """Same tokens and logits as `model.generate` (Qwen2-VL's 3D rotary positions included)."""
    import torch

    from boxgym.policies.prompting import prepare_inputs

    policy = make_policy(temperature=0, max_new_tokens=6, reuse_prompts=reuse_prompts)
    batch = [
        conversation("red"),
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": Image.new("RGB", (112, 28), "blue")},
                    {"type": "text", "text": "What is the longest side?"},
                    {"type": "image", "image": Image.new("RGB", (28, 56), "green")},
                ],
            }
        ],
    ]
    seen = []
    pick = policy._pick

    def recording(logits, uniforms):
        seen.append(logits.clone())
        return pick(logits, uniforms)

    policy._pick = recording
    policy.act(batch[:1], TOOLS)  # with reuse, the next call continues the shared first turn
    seen.clear()
    replies = policy._reply_tokens(batch, TOOLS)
    inputs = prepare_inputs(policy.processor, batch, TOOLS)
    with torch.inference_mode():
        out = policy.model.generate(
            **inputs,
            max_new_tokens=6,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            suppress_tokens=policy._vision_ids.tolist(),
            eos_token_id=policy._stop_ids.tolist(),
            pad_token_id=policy._pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    assert replies == out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
    assert len(seen) == len(out.logits) == 6
    for ours, theirs in zip(seen, out.logits):
        assert torch.allclose(ours, theirs, atol=1e-4)


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


def test_the_model_head_path_gives_the_same_replies(sampler):
    """Without a plain LM head the policy calls the whole model; the replies do not change."""
    batch = [conversation("red"), conversation("blue", "Count them.")]
    fast = draw(sampler, batch, 3, temperature=1.0, batch_size=2)
    head, sampler._head = sampler._head, None
    try:
        assert draw(sampler, batch, 3) == fast
    finally:
        sampler._head = head


@pytest.mark.slow
def test_top_k_and_top_p_keep_only_the_top_tokens(make_policy):
    import torch

    policy = make_policy(temperature=1.0, top_k=3)
    logits = torch.zeros(200, 151657)  # [rows, vocab]
    logits[:, [10, 20, 30, 40]] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    picks = policy._pick(logits.clone(), torch.rand(200, UNIFORMS_PER_STEP, dtype=torch.float64))
    assert set(picks.tolist()) == {10, 20, 30}
    policy.top_k, policy.top_p = 0, 0.5
    logits[:, 10] = 12.5  # about 64% of the mass: without top_p a third of the picks differ
    picks = policy._pick(logits.clone(), torch.rand(200, UNIFORMS_PER_STEP, dtype=torch.float64))
    assert set(picks.tolist()) == {10}


def mark_and_look_states():
    """The conversations of a mark-and-look episode before each of its 4 replies (the oracle's
    boxes, the marked image back, only the latest image kept)."""
    from boxgym.data.scenes import make_scene_task
    from boxgym.env import BoxGymEnv
    from boxgym.env.history import keep_images
    from boxgym.policies.scripted import OraclePolicy, SeededTask

    task = make_scene_task("shapes", 3, "easy", count=(3, 3), image_size=224, distractors=(0, 0))
    env = BoxGymEnv(max_image_pixels=224 * 224, crop_max_pixels=224 * 224)
    messages, _ = env.reset(seed=0, options={"task": task})
    conversation, states = list(messages), []
    for _ in range(4):
        states.append(list(conversation))
        (text,) = OraclePolicy().act([conversation], env.tool_schemas, [SeededTask(task, 0)])
        new, *_ = env.step(text)
        conversation = keep_images([*conversation, *new], "last")
    return states, env.tool_schemas


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_turn_whose_earlier_image_was_dropped_continues_the_kept_text(make_policy, temperature):
    """Under image_history last each turn drops the image before it: the policy continues from
    the conversation's image-free start, encoded at the turn before, with the same texts."""
    states, tools = mark_and_look_states()
    texts = {}
    for reuse in (True, False):
        policy = make_policy(reuse_prompts=reuse, max_new_tokens=6)
        policy.reseed(3)
        policy.temperature = temperature
        texts[reuse] = [policy.act([state], tools)[0] for state in states]
        if reuse:
            lengths = sorted(len(key[0]) for key in policy._prompts if not key[1])
            first_turn = lengths[0]
            assert len(lengths) >= 3 and lengths[-1] > first_turn  # image-free starts were cut
    assert texts[True] == texts[False]
