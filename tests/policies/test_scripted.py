"""Scripted policies against the real env: the oracle is perfect, noisy in between, random safe."""

from __future__ import annotations

import numpy as np
import pytest

from boxgym.data.scenes import make_scene_task
from boxgym.data.task import GroundTruthObject, Task
from boxgym.env import BoxGymEnv, EnvConfig
from boxgym.env.parsing import parse_tool_calls
from boxgym.policies.registry import make_policy
from boxgym.policies.scripted import (
    NoisyPolicy,
    OraclePolicy,
    RandomPolicy,
    SeededTask,
    calls_already_made,
    reading_order,
)

FAMILIES = ("screens", "shapes", "clutter")


def play(policy, task: Task, seed: int, config: EnvConfig | None = None) -> tuple[float, dict]:
    """One episode, one conversation at a time; returns (total reward, final info)."""
    env = BoxGymEnv(config=config or EnvConfig())
    messages, _ = env.reset(seed=seed, options={"task": task})
    conversation = list(messages)
    total, info = 0.0, {}
    for _ in range(100):
        (text,) = policy.act([conversation], env.tool_schemas, [SeededTask(task, seed)])
        new, reward, terminated, truncated, info = env.step(text)
        conversation.extend(new)
        total += reward
        if terminated or truncated:
            return total, info
    raise AssertionError("episode did not end")


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_reaches_max_reward_and_exact_count(family: str) -> None:
    oracle = OraclePolicy()
    for i in range(12):
        task = make_scene_task(family, seed=1000 + i, difficulty="hard" if i % 3 == 2 else "easy")
        reward, info = play(oracle, task, seed=i)
        metrics = info["metrics"]
        assert metrics["count_correct"] == 1.0, task.id
        assert reward == pytest.approx(metrics["max_reward"]), (task.id, info["reward_components"])
        assert metrics["valid_call_rate"] == 1.0
        assert info["failure"] == "none"


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_in_grounding_format_reaches_max_reward(family: str) -> None:
    oracle = OraclePolicy(call_format="grounding")
    for i in range(4):
        task = make_scene_task(family, seed=2000 + i, difficulty="easy")
        (text,) = oracle.act([[]], [], [SeededTask(task, i)])
        assert "<|box_start|>" in text and '"draw_box"' not in text
        reward, info = play(oracle, task, seed=i)
        assert reward == pytest.approx(info["metrics"]["max_reward"]), info["reward_components"]
        assert info["metrics"]["grounding_f1"] == 1.0


def test_grounding_format_needs_the_qwen_frame() -> None:
    with pytest.raises(ValueError, match="qwen"):
        OraclePolicy(call_format="grounding", frame="pixels")
    with pytest.raises(ValueError, match="call_format"):
        OraclePolicy(call_format="xml")


@pytest.mark.parametrize("frame", ["pixels", "unit"])
def test_oracle_in_other_coordinate_frames(frame: str) -> None:
    task = make_scene_task("shapes", seed=7, difficulty="easy")
    reward, info = play(
        OraclePolicy(frame=frame), task, seed=0, config=EnvConfig(coordinate_frame=frame)
    )
    assert reward == pytest.approx(info["metrics"]["max_reward"])


def test_oracle_answers_count_verify_and_point_tasks() -> None:
    image = make_scene_task("screens", seed=3).images[0]
    w, h = image.size
    cases = [
        Task("c", [image], "How many?", "count", answer={"count": 4}),
        Task("v", [image], "Is it true?", "verify", answer={"value": False}),
        Task("p", [image], "Point at it.", "point", answer={"point": [w * 0.3, h * 0.6]}),
    ]
    for task in cases:
        reward, info = play(OraclePolicy(), task, seed=0)
        assert info["metrics"]["answer_correct"] == 1.0, task.kind
        assert reward == pytest.approx(info["metrics"]["max_reward"]), task.kind


def test_oracle_spreads_calls_over_turns() -> None:
    task = make_scene_task("clutter", seed=5, difficulty="hard")  # 40-60 objects
    oracle = OraclePolicy(calls_per_turn=8)
    reward, info = play(oracle, task, seed=0, config=EnvConfig(max_calls_per_turn=8))
    assert info["metrics"]["num_turns"] == -(-(len(task.objects) + 1) // 8)
    assert reward == pytest.approx(info["metrics"]["max_reward"])


def test_reading_order_is_rows_then_columns() -> None:
    def obj(x: float, y: float) -> GroundTruthObject:
        return GroundTruthObject(box=(x, y, x + 20, y + 20), label="o")

    objects = [obj(100, 105), obj(10, 100), obj(50, 10), obj(5, 12)]
    ordered = [o.box[:2] for o in reading_order(objects)]
    assert ordered == [(5, 12), (50, 10), (10, 100), (100, 105)]


def test_noisy_scores_between_random_and_oracle() -> None:
    rewards = {"oracle": [], "noisy": [], "random": []}
    policies = {
        "oracle": OraclePolicy(),
        "noisy": NoisyPolicy(seed=1),
        "random": RandomPolicy(seed=1),
    }
    for i in range(15):
        task = make_scene_task(FAMILIES[i % 3], seed=200 + i)
        for name, policy in policies.items():
            rewards[name].append(play(policy, task, seed=i)[0])
    means = {k: float(np.mean(v)) for k, v in rewards.items()}
    assert means["random"] < means["noisy"] < means["oracle"], means


def test_noisy_makes_and_corrects_mistakes() -> None:
    noisy = NoisyPolicy(
        miss_rate=0.2, duplicate_rate=0.5, wrong_label_rate=0.5, correction_rate=0.5, seed=3
    )
    names = set()
    for i in range(10):
        task = make_scene_task("clutter", seed=i)
        for name, _ in noisy.plan(task, episode_seed=i):
            names.add(name)
    assert {"draw_box", "remove_box", "label", "answer"} <= names


def test_random_never_raises_and_always_ends() -> None:
    policy = RandomPolicy(seed=0)
    config = EnvConfig(max_turns=6)
    for i in range(30):
        task = make_scene_task(FAMILIES[i % 3], seed=i, difficulty="hard" if i % 2 else "easy")
        play(policy, task, seed=i, config=config)  # raises AssertionError if it never ends


def test_random_emits_malformed_calls() -> None:
    policy = RandomPolicy(seed=0)
    task = make_scene_task("screens", seed=1)
    texts = []
    for turn in range(40):
        conversation = [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}] * turn
        texts += policy.act([conversation], [], [SeededTask(task, 9)])
    joined = "\n".join(texts)
    assert "NaN" in joined and "<|box_start|>" in joined
    errors = sum(len(parse_tool_calls(t).errors) for t in texts)
    assert errors > 5


def test_policies_are_stateless_and_batch_independent() -> None:
    tasks = [make_scene_task("shapes", seed=s) for s in range(4)]
    items = [SeededTask(t, 10 + i) for i, t in enumerate(tasks)]
    for name in ("oracle", "noisy", "random"):
        policy = make_policy(name, seed=5)
        convs = [[] for _ in tasks]
        batched = policy.act(convs, [], items)
        single = [policy.act([c], [], [it])[0] for c, it in zip(convs, items)]
        reversed_ = policy.act(convs[::-1], [], items[::-1])[::-1]
        assert batched == single == reversed_, name


def test_group_samples_differ_for_noisy() -> None:
    task = make_scene_task("clutter", seed=2)
    noisy = NoisyPolicy(seed=0)
    texts = {noisy.act([[]], [], [SeededTask(task, s)])[0] for s in range(6)}
    assert len(texts) > 1


def test_progress_is_read_from_the_conversation() -> None:
    task = make_scene_task("clutter", seed=4, difficulty="medium")
    oracle = OraclePolicy(calls_per_turn=3)
    (first,) = oracle.act([[]], [], [task])
    conversation = [{"role": "assistant", "content": [{"type": "text", "text": first}]}]
    assert calls_already_made(conversation) == 3
    (second,) = oracle.act([conversation], [], [task])
    assert first != second and second.count("<tool_call>") == 3


def test_scripted_policies_need_tasks() -> None:
    with pytest.raises(ValueError, match="needs one task per conversation"):
        OraclePolicy().act([[]], [])
    with pytest.raises(TypeError, match="ground truth"):
        OraclePolicy().act([[]], [], ["not a task"])


def test_registry_rejects_unknown_and_drops_foreign_kwargs() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("telepathy")
    policy = make_policy("oracle", temperature=0.7, model=None, calls_per_turn=4)
    assert policy.calls_per_turn == 4
    with pytest.raises(TypeError, match="takes no argument"):
        make_policy("oracle", strict=True, temperature=0.7)
    with pytest.raises(ValueError, match="miss_rate"):
        make_policy("noisy", miss_rate=2.0)
