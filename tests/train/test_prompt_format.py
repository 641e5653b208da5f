"""One prompt format: SFT rows, GRPO prompts (as TRL builds them with our environment_factory
adapter) and rollout prompts (the prompt renderer on the env's messages) give the same tokens
and the same image tokens for the same state. Also: SFT labels cover assistant tokens only."""

from __future__ import annotations

import pytest
import torch

from boxgym.sections import EnvSection, MixtureSection

ENV = EnvSection(
    family="shapes",
    difficulty="easy",
    scene_knobs={"count": [2, 2], "image_size": 224, "distractors": 0},
    env_kwargs={
        "max_image_pixels": 50176,
        "crop_max_pixels": 50176,
        "max_turns": 3,
        "max_calls_per_turn": 8,
        "image_history": "all",
    },
)
SEED = 7


@pytest.fixture(scope="module")
def processor(tiny_model_path):
    from boxgym.sections import ModelSection
    from boxgym.train.modeling import load_training_processor

    return load_training_processor(ModelSection(path=str(tiny_model_path)))


@pytest.fixture(scope="module")
def episode():
    """An oracle episode on scene SEED, as the SFT mixture builds it."""
    from boxgym.policies.registry import make_policy
    from boxgym.train.mixture import make_env, run_episode, scene_task

    env = make_env(ENV)
    row = run_episode(env, make_policy("oracle"), scene_task(ENV, SEED), SEED)
    assert row["answered"] and len(row["images"]) >= 2, "the oracle should box objects and answer"
    return row


@pytest.fixture(scope="module")
def sft_encoded(processor, episode):
    """The SFT row after the Arrow round trip (messages + images), encoded by the collator."""
    from boxgym.train.collator import ConversationCollator
    from boxgym.train.mixture import to_sft_dataset

    row = to_sft_dataset([episode])[0]
    return ConversationCollator(processor).encode(row)


@pytest.fixture(scope="module")
def grpo_trainer(tiny_model_path, tmp_path_factory):
    """The real BoxGymGRPOTrainer (not run), its dataset starting at scene SEED."""
    from boxgym.sections import ModelSection, TaskSection
    from boxgym.train.grpo import build_grpo_trainer
    from boxgym.train.run_configs import GRPORunConfig

    config = GRPORunConfig(
        model=ModelSection(path=str(tiny_model_path)),
        env=ENV,
        tasks=TaskSection(num_tasks=2, first_seed=SEED),
        trainer={
            "output_dir": str(tmp_path_factory.mktemp("grpo")),
            "per_device_train_batch_size": 2,
            "num_generations": 2,
            "report_to": [],
        },
    )
    return build_grpo_trainer(config)


def rollout_inputs(processor, messages, tools):
    from boxgym.policies.prompting import prepare_inputs

    return prepare_inputs(processor, [messages], tools, add_generation_prompt=True)


@pytest.mark.slow
def test_sft_labels_cover_assistant_tokens_only(processor, sft_encoded, episode):
    ids, labels = sft_encoded["input_ids"], sft_encoded["labels"]
    tokenizer = processor.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_pad in ids
    learned = [t for t, lab in zip(ids, labels) if lab != -100]
    assert all(lab in (-100, t) for t, lab in zip(ids, labels))
    assert image_pad not in learned
    text = tokenizer.decode(learned)
    assistant = [m for m in episode["messages"] if m["role"] == "assistant"]
    expected = "".join(m["content"][0]["text"] + "<|im_end|>" for m in assistant)
    assert text == expected
    # tool results (they mention "drawn at") and the question are never learned
    assert "drawn at" not in text and "<tool_response>" not in text
    assert "How many" not in text


def test_collated_batch_masks_padding_and_keeps_image_tensors(processor, episode):
    from boxgym.train.collator import ConversationCollator

    short = dict(episode, messages=episode["messages"][:3])
    batch = ConversationCollator(processor)([episode, short])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    pad_positions = batch["attention_mask"] == 0
    assert pad_positions.any() and (batch["labels"][pad_positions] == -100).all()
    assert batch["image_grid_thw"].shape[0] == len(episode["images"]) + 1
    assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape


@pytest.mark.slow
def test_sft_rollout_and_grpo_prompts_render_identically(
    processor, sft_encoded, episode, grpo_trainer
):
    messages, tools = episode["messages"], episode["tools"]
    rollout = rollout_inputs(processor, messages[:2], tools)
    rollout_ids = rollout["input_ids"][0].tolist()

    # SFT: the rollout prompt is a prefix of the SFT sequence (up to the first assistant turn).
    assert sft_encoded["input_ids"][: len(rollout_ids)] == rollout_ids
    first = sft_encoded["images"]
    assert torch.equal(first["image_grid_thw"][:1], rollout["image_grid_thw"])
    n = rollout["pixel_values"].shape[0]
    assert torch.equal(first["pixel_values"][:n], rollout["pixel_values"])

    # GRPO: TRL's prompt = the row's prompt with reset()'s content appended to the last user
    # message (TRL 1.16 `_generate_and_score_completions`), tokenized by the real trainer's
    # `_tokenize_prompts` with the environment's methods as tools=.
    trainer = grpo_trainer
    row = trainer.train_dataset[0]
    assert row["seed"] == SEED
    observation = trainer._environment_pool[None][0].reset(**row)
    prompt = row["prompt"]
    prompt = [*prompt[:-1], {**prompt[-1], "content": prompt[-1]["content"] + observation}]
    trainer._batch_environments = [None]
    prompt_ids, images, fields = trainer._tokenize_prompts([prompt])
    assert list(prompt_ids[0]) == rollout_ids
    assert torch.equal(fields["image_grid_thw"], rollout["image_grid_thw"])
    assert torch.equal(fields["pixel_values"], rollout["pixel_values"])
    assert len(images[0]) == 1


def test_tool_results_with_images_render_identically_in_trl_and_rollouts(processor, episode):
    """A later state: the tokens TRL appends after a tool call (its `_get_tool_suffix_ids` recipe)
    equal the rollout renderer's tokens between the assistant turn and the next generation."""
    from trl.data_utils import prepare_multimodal_messages

    messages, tools = episode["messages"], episode["tools"]
    turn_end = next(i for i, m in enumerate(messages) if m["role"] == "assistant") + 1
    tool_messages = []
    for message in messages[turn_end:]:
        if message["role"] != "tool":
            break
        tool_messages.append(message)
    assert any(p["type"] == "image" for m in tool_messages for p in m["content"])

    before = rollout_inputs(processor, messages[:2], tools)["input_ids"][0].tolist()
    after = rollout_inputs(processor, messages[: turn_end + len(tool_messages)], tools)[
        "input_ids"
    ][0].tolist()
    # the assistant turn's own tokens end with <|im_end|>; what follows is the tool suffix
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_turn = after.index(eos, len(before)) + 1
    rollout_suffix = after[end_of_turn:]

    # TRL's recipe (GRPOTrainer._get_tool_suffix_ids), with the tool messages as TRL builds them
    dummy = [
        {"role": "user", "content": "dummy"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": tool_messages[0]["name"], "arguments": {}},
                }
            ],
        },
    ]
    trl_tools = [
        {"role": "tool", "name": m["name"], "content": m["content"]} for m in tool_messages
    ]
    dummy, trl_tools = prepare_multimodal_messages(dummy), prepare_multimodal_messages(trl_tools)
    prefix = processor.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True)[0]
    full = processor.apply_chat_template(
        dummy + trl_tools, add_generation_prompt=True, tokenize=True
    )[0]
    prefix = prefix[: max(i for i, t in enumerate(prefix) if t == eos) + 1]
    assert full[: len(prefix)] == prefix
    assert full[len(prefix) :] == rollout_suffix


def test_mixture_rows_are_real_env_episodes():
    from boxgym.train.mixture import build_mixture, mixture_counts, source_counts

    assert source_counts(7, {"oracle": 3, "noisy": 1}) == {"oracle": 5, "noisy": 2}
    rows = build_mixture(MixtureSection(num_examples=4, weights={"oracle": 1, "noisy": 1}), ENV)
    assert mixture_counts(rows) == {"oracle": 2, "noisy": 2}
    for row in rows:
        assert row["answered"]
        roles = [m["role"] for m in row["messages"]]
        assert roles[:3] == ["system", "user", "assistant"] and "tool" in roles
        assert row["images"] and all(im.size == (224, 224) for im in row["images"])


def test_dataset_sources_become_env_episodes(tmp_path):
    """NLVR2 (verify, two images), Smol2Operator (point) and counting sets from local copies in
    their real schema (D's sample writer), answered through the env's tools."""
    from boxgym.data.loaders.samples import write_sample_dataset
    from boxgym.train.mixture import build_mixture, mixture_counts

    sources = {
        "nlvr2": "train",
        "aguvis-stage-1": "train",
        "pixmo-count": "train",
        "countbench": "test",
    }
    # countbench: row 6 is the first with the train role (boxgym.data.splits)
    paths = {
        name: str(
            write_sample_dataset(
                name, tmp_path / name, splits=(split,), n=7 if name == "countbench" else 2
            )
        )
        for name, split in sources.items()
    }
    mixture = MixtureSection(num_examples=4, weights=dict.fromkeys(sources, 1.0), paths=paths)
    rows = build_mixture(mixture, ENV)
    assert mixture_counts(rows) == dict.fromkeys(sources, 1)
    for row in rows:
        assert row["answered"] and row["failure"] == "none", (row["source"], row["failure"])
        calls = row["messages"][2]["content"][0]["text"]
        assert '"name": "answer"' in calls
    nlvr2 = next(r for r in rows if r["source"] == "nlvr2")
    assert len(nlvr2["messages"][1]["content"]) == 3  # two images + the statement


def test_a_last_image_episode_trains_each_reply_on_the_image_it_saw(processor):
    """Under image_history last each turn saw only its latest image: one example per turn, the
    loss on that turn's reply only, and each prompt the conversation the reply was written to."""
    from boxgym.policies.prompting import prepare_inputs
    from boxgym.policies.registry import make_policy
    from boxgym.train.collator import ConversationCollator
    from boxgym.train.mixture import make_env, run_episode, scene_task, to_sft_dataset

    section = EnvSection(
        family="shapes",
        difficulty="easy",
        scene_knobs={"count": [3, 3], "image_size": 224, "distractors": 0},
        env_kwargs={"max_image_pixels": 50176, "crop_max_pixels": 50176},
    )
    env = make_env(section)
    assert env.config.image_history == "last" and env.config.max_calls_per_turn == 1
    row = run_episode(env, make_policy("oracle"), scene_task(section, SEED), SEED)
    assert row["reward"] == pytest.approx(row["metrics"]["max_reward"])
    dataset = to_sft_dataset([row])
    assert len(dataset) == 4 and all(dataset["last_turn_only"])  # 3 boxes, then the answer
    collator = ConversationCollator(processor)
    turn_start = processor.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    for k, record in enumerate(dataset):
        assert len(record["images"]) == 1
        encoded = collator.encode(record)
        labelled = [t for t in encoded["labels"] if t != -100]
        reply = processor.tokenizer.decode(labelled)
        assert reply == row["turn_prompts"][k][-1]["content"][0]["text"] + "<|im_end|>"
        # the prompt is what a rollout renders for that turn, token for token
        prompt = prepare_inputs(processor, [row["turn_prompts"][k][:-1]], row["tools"])
        ids = prompt["input_ids"][0].tolist()
        assert ids[-len(turn_start) :] == turn_start and encoded["input_ids"][: len(ids)] == ids


def test_grpo_over_turns_asks_for_one_generation_per_step():
    from boxgym.train.run_configs import GRPORunConfig

    GRPORunConfig(
        env=EnvSection(env_kwargs={"image_history": "last"}), trainer={"output_dir": "runs/x"}
    )
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        GRPORunConfig(
            env=EnvSection(env_kwargs={"image_history": "last"}),
            trainer={"output_dir": "runs/x", "gradient_accumulation_steps": 2},
        )
