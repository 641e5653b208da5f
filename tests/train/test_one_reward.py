"""One episode, one reward: the same turns score the same in `BoxGymEnv.step` and in GRPO.

Scripted episodes are played in the env, then replayed through the GRPO path as TRL 1.16's
tool loop runs it (trl/trainer/grpo_trainer.py `_tool_call_loop`): each completion parsed by
the trainer's parser (`completion_message`), every call dispatched to the adapter, one more
generation after each round of calls while iterations remain, the loop ending at a reply
without calls or at `max_tool_calling_iterations`.
"""

from __future__ import annotations

import contextlib

import pytest

from boxgym.env.parsing import format_tool_call
from boxgym.policies.registry import make_policy
from boxgym.policies.scripted import SeededTask
from boxgym.sections import EnvSection
from boxgym.train import trl_environment as te
from boxgym.train.mixture import make_env, scene_task

SECTION = EnvSection(
    family="shapes",
    difficulty="easy",
    scene_knobs={"count": [2, 3], "image_size": 224, "distractors": 0},
    env_kwargs={
        "max_image_pixels": 50176,
        "crop_max_pixels": 50176,
        "max_turns": 3,
        "max_calls_per_turn": 8,
        "image_history": "all",
    },
)
# What a model writes after the env ended the episode (TRL generates once more): a call that
# must not count.
AFTER_THE_END = format_tool_call("draw_box", {"x1": 1, "y1": 1, "x2": 9, "y2": 9, "label": "x"})


def scripted_texts(section: EnvSection, policy_name: str, seed: int, **policy_kwargs) -> list[str]:
    """The assistant texts of a scripted episode played in the env until it ends."""
    env, task = make_env(section), scene_task(section, seed)
    policy = make_policy(policy_name, **policy_kwargs)
    messages, _ = env.reset(seed=seed, options={"task": task})
    conversation, texts = list(messages), []
    while not env.done:
        text = policy.act([conversation], env.tool_schemas, [SeededTask(task, seed)])[0]
        texts.append(text)
        new, *_ = env.step(text)
        conversation.extend(new)
    return texts


def env_reward(section: EnvSection, seed: int, texts: list[str]) -> float:
    env = make_env(section)
    env.reset(seed=seed, options={"task": scene_task(section, seed)})
    reward = 0.0
    for text in texts:
        if env.done:
            break
        _, reward, *_ = env.step(text)
    assert env.done, "a replayed episode must end in the env (answer or budget)"
    return reward


def grpo_reward(section: EnvSection, seed: int, texts: list[str]) -> float:
    """TRL's tool loop over `texts` with the adapter; the trainer's default iteration cap."""
    config = make_env(section).config
    instance = te.environment_class(section)()
    instance.reset(family=section.family, difficulty=section.difficulty, seed=seed)
    max_iterations = config.max_turns  # boxgym's GRPO default (`grpo_args`)
    te.GENERATION_ROUND[0] += 1
    message = te.completion_message(texts[0], config)
    index = iteration = 0
    while message.get("tool_calls") and iteration < max_iterations:
        for call in message["tool_calls"]:
            function = call["function"]
            with contextlib.suppress(Exception):  # TRL answers a raising tool with an error
                getattr(instance, function["name"])(**function["arguments"])
        te.GENERATION_ROUND[0] += 1
        index += 1
        text = texts[index] if index < len(texts) else AFTER_THE_END
        message = te.completion_message(text, config)
        iteration += 1
    return instance.get_reward()


def episodes() -> list[tuple[str, EnvSection, int, list[str]]]:
    pixels = EnvSection(
        family=SECTION.family,
        difficulty=SECTION.difficulty,
        scene_knobs=SECTION.scene_knobs,
        env_kwargs={**SECTION.env_kwargs, "coordinate_frame": "pixels"},
    )
    out = []
    for seed in (1, 2):
        oracle = scripted_texts(SECTION, "oracle", seed, calls_per_turn=2)
        out.append(("oracle json", SECTION, seed, oracle))
        grounding = scripted_texts(
            SECTION, "oracle", seed, calls_per_turn=2, call_format="grounding"
        )
        out.append(("oracle grounding", SECTION, seed, grounding))
        out.append(("grounding, env in pixels", pixels, seed, grounding))
        noisy = scripted_texts(SECTION, "noisy", seed, calls_per_turn=2)
        out.append(("noisy", SECTION, seed, noisy))
        # calls after `answer` in the answering turn: the env runs them and they fail
        out.append(
            ("calls after answer", SECTION, seed, [*oracle[:-1], oracle[-1] + AFTER_THE_END * 2])
        )
        # a malformed call and an unknown tool in the first turn
        broken = '<tool_call>{"name": "draw_box", "arguments": {"x1": </tool_call>'
        unknown = format_tool_call("zoom", {"factor": 2})
        out.append(("malformed calls", SECTION, seed, [oracle[0] + broken + unknown, *oracle[1:]]))
        # never answers: the turn budget ends it
        stuck = [format_tool_call("crop", {"x1": 0, "y1": 0, "x2": 500, "y2": 500})] * 3
        out.append(("turn budget", SECTION, seed, stuck))
    return out


@pytest.mark.parametrize(("name", "section", "seed", "texts"), episodes())
def test_same_turns_same_reward_in_env_and_grpo(name, section, seed, texts) -> None:
    assert grpo_reward(section, seed, texts) == pytest.approx(env_reward(section, seed, texts))


def test_grounding_calls_parse_as_draw_box_calls() -> None:
    config = make_env(SECTION).config
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|><|im_end|>"
    message = te.completion_message(text, config)
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "draw_box"
    assert call["function"]["arguments"]["label"] == "cat"
    assert call["function"]["arguments"][te.FRAME_KEY] == "qwen"
    assert "tool_calls" not in te.completion_message("just words", config)


def test_over_turn_episodes_are_flagged_and_masked() -> None:
    from boxgym.train.grpo import over_turn_keep_mask

    stuck = [format_tool_call("crop", {"x1": 0, "y1": 0, "x2": 500, "y2": 500})] * 3
    instances = []
    for texts in (stuck, scripted_texts(SECTION, "oracle", 1, calls_per_turn=2)):
        instance = te.environment_class(SECTION)()
        instance.reset(family=SECTION.family, difficulty=SECTION.difficulty, seed=1)
        for text in texts:
            te.GENERATION_ROUND[0] += 1
            for call in te.completion_message(text, make_env(SECTION).config).get("tool_calls", []):
                getattr(instance, call["function"]["name"])(**call["function"]["arguments"])
        instances.append(instance)
    assert [i.over_turn for i in instances] == [True, False]
    assert over_turn_keep_mask(instances).tolist() == [0.0, 1.0]
    assert over_turn_keep_mask(instances[1:]) is None
