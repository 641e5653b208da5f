"""The marking model: its skills, a few build steps, plain-transformers loading, the study."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from boxgym.models.marking import (
    ARMS,
    MarkingRecipe,
    base_path,
    build_marking_model,
    reply_correct,
    training_chats,
)
from boxgym.models.marking_skills import (
    EVAL_SEEDS_END,
    MAX_OBJECTS,
    SKILLS,
    count_task,
    make_chat,
    marking_order,
)

# A small recipe: the real stages and rows, a tiny network, a few steps.
SMALL = MarkingRecipe(
    text_hidden=64,
    text_layers=1,
    text_intermediate=128,
    mrope_section=(2, 7, 7),
    text_heads=2,
    vision_depth=1,
    vision_embed=32,
    vision_heads=2,
    batch_size=6,
    warmup_steps=1,
    count_steps=2,
    ground_steps=2,
    arm_steps=10,
    arm_lr=3e-3,
    sampled_negatives=64,
    full_vocab_positions=4,
)
BUILD_KW = dict(
    threads=2, save_every=5, check_every=5, check_scenes=4, eval_scenes=2, progress=False
)


def images_in(messages) -> int:
    return sum(1 for m in messages for p in m["content"] if p["type"] == "image")


@pytest.mark.parametrize("skill", SKILLS)
def test_every_skill_is_deterministic_and_its_own_reply_is_right(skill):
    for seed in (EVAL_SEEDS_END + 3, EVAL_SEEDS_END + 4):
        a, b = make_chat(skill, seed), make_chat(skill, seed)
        assert a.reply == b.reply and reply_correct(a, a.reply)
        assert images_in(a.messages) == (0 if skill == "copy" else 1)  # only the latest image
        if a.task is not None:
            assert a.task.images[0].size == (336, 336)
            top = MAX_OBJECTS if skill == "glance12" else 5
            assert 1 <= a.task.count <= top


def test_a_step_example_boxes_the_next_object_or_answers():
    for seed in range(EVAL_SEEDS_END, EVAL_SEEDS_END + 20):
        chat = make_chat("step_marked", seed)
        k = sum(1 for m in chat.messages if m["role"] == "assistant")
        n = chat.task.count
        if k == n:
            answer = {"name": "answer", "arguments": {"count": n}}
            assert chat.reply == f"<tool_call>\n{json.dumps(answer)}\n</tool_call>"
        else:
            assert chat.reply.startswith("<|object_ref_start|>shape<|object_ref_end|><|box_start|>")
        assert chat.tools is not None and chat.messages[0]["role"] == "system"
        assert "image comes back with every box drawn" in chat.messages[0]["content"][0]["text"]
        text = make_chat("step_text", seed)
        assert "come back as text" in text.messages[0]["content"][0]["text"]


def test_12_shapes_fit_every_held_out_scene_and_the_order_takes_the_first_unboxed():
    for seed in range(30):
        task = count_task(seed, 12)
        order = marking_order(task.objects)
        assert len(order) == 12 and {id(o) for o in order} == {id(o) for o in task.objects}


def test_training_rows_are_never_held_out_scenes():
    for step in (0, 5, 13):
        assert all(c.seed >= EVAL_SEEDS_END for c in training_chats(SMALL, step))


def test_recipe_keys_and_validation():
    assert SMALL.key() != replace(SMALL, arm="G").key()
    assert SMALL.base_key() == replace(SMALL, arm="G", arm_steps=3).base_key()
    assert MarkingRecipe.from_identity(SMALL.identity()) == SMALL
    with pytest.raises(ValueError, match="arm must be one of"):
        MarkingRecipe(arm="X")
    with pytest.raises(ValueError, match="lr must be"):
        MarkingRecipe(lr=float("nan"))
    assert set(ARMS) == {"G", "G12", "M", "T", "O"}


def test_mark_jitter_keys_only_the_arms_it_changes():
    # the default recipe's key is pinned: the cached marking models keep resolving
    assert MarkingRecipe().key() == "44acd3a18c"
    strays = replace(SMALL, mark_jitter=0.4)
    assert strays.key() != SMALL.key() and strays.base_key() == SMALL.base_key()
    assert MarkingRecipe.from_identity(strays.identity()) == strays
    for arm in ("G", "G12", "O"):  # no step rows: the same checkpoint as without it
        assert replace(strays, arm=arm).key() == replace(SMALL, arm=arm).key()
    assert replace(strays, arm="T").key() != replace(SMALL, arm="T").key()
    with pytest.raises(ValueError, match="mark_jitter"):
        MarkingRecipe(mark_jitter=0.9)


def test_a_step_example_strays_as_far_as_its_jitter():
    import numpy as np

    from boxgym.models.marking_skills import jittered

    rng = np.random.default_rng(0)
    box = (100.0, 100.0, 160.0, 160.0)
    moved = np.array([jittered(box, rng, (336, 336), 0.4) for _ in range(200)]) - box
    assert np.abs(moved).max() <= 0.4 * 60 + 1e-9 and np.abs(moved).max() > 0.3 * 60
    near = make_chat("step_marked", EVAL_SEEDS_END + 3)
    far = make_chat("step_marked", EVAL_SEEDS_END + 3, jitter=0.4)
    assert near.reply == far.reply  # the same scene and step; only the earlier marks stray


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("marking") / "marking-qwen2-vl-small"
    return build_marking_model(out, SMALL, **BUILD_KW)


@pytest.mark.slow
def test_a_few_step_skill_steps_lower_its_loss_and_the_base_is_kept(built):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from boxgym.models.chat_batches import ChatBatcher
    from boxgym.models.loss import reply_loss
    from boxgym.models.marking import chat_vocabulary
    from boxgym.models.tiny import build_processor

    base = base_path(SMALL, built)
    assert (base / "results.json").is_file() and (built / "results.json").is_file()
    log = json.loads((built / "training_log.json").read_text())
    assert log["step"] == SMALL.total_steps
    batcher = ChatBatcher(build_processor(), SMALL.digit_weight)
    vocab = chat_vocabulary(batcher, SMALL)
    rows = [c for c in training_chats(SMALL, SMALL.base_steps) if c.skill == "step_marked"]
    assert rows

    def loss_of(path) -> float:
        model = Qwen2VLForConditionalGeneration.from_pretrained(path)
        exact = replace(SMALL, sampled_negatives=0, full_vocab_positions=0)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return float(
                sum(reply_loss(model, b, exact, vocab, generator) for b in batcher.batches(rows))
            )

    assert loss_of(built) < loss_of(base)
    results = json.loads((built / "results.json").read_text())
    assert results["arm"] == "M" and results["commit"] and results["recipe_key"] == SMALL.key()
    assert "step_marked" in results and "glance" in results


@pytest.mark.slow
def test_the_checkpoint_answers_through_plain_transformers_with_the_same_prompt(built):
    code = f"""
import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
from boxgym.models.marking_skills import make_chat
from boxgym.policies.prompting import render_chat
path = {str(built)!r}
model = Qwen2VLForConditionalGeneration.from_pretrained(path)
processor = AutoProcessor.from_pretrained(path)
chat = make_chat("step_marked", 17)
text = processor.apply_chat_template(chat.messages, tools=chat.tools, add_generation_prompt=True, tokenize=False)
assert text == render_chat(processor, chat.messages, chat.tools), "plain transformers renders another prompt"
image = [p["image"] for m in chat.messages for p in m["content"] if p["type"] == "image"]
inputs = processor(text=[text], images=image, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
print(out.shape[1] - inputs["input_ids"].shape[1])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) >= 1


@pytest.mark.slow
def test_the_quick_study_runs_end_to_end(built, tmp_path):
    out = tmp_path / "study"
    argv = [
        sys.executable, "-m", "boxgym.cli", "study", "marking", "--model", str(built), "--out",
        str(out), "--quick", "--set", "counts=[1,6]", "--set", "per_count=2",
        "--set", "build_eval_scenes=2",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    result = json.loads((out / "results.json").read_text())
    assert set(result["arms"]) == {"G", "G12", "M", "T", "O"}
    for arm in result["arms"].values():
        assert set(arm["by_count"]) == {"1", "6"} and {"mean", "lo", "hi", "n"} <= set(arm["6-12"])
    assert set(result["paired"]) == {"M-G", "M-G12", "M-T"}
    assert set(result["steps"]) == {"M", "T"}
    assert result["commit"] and (out / "plot.png").is_file()
    episodes = out / "episodes" / "M" / "episodes.jsonl"
    assert len(episodes.read_text().splitlines()) == 4
