"""The environment_factory adapter: same schemas, messages and reward as `BoxGymEnv`."""

from __future__ import annotations

import inspect

import pytest
from transformers.utils import get_json_schema

from boxgym.sections import EnvSection, TaskSection
from boxgym.train import trl_environment as te

ENV = EnvSection(
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


def oracle_calls(task):
    """The oracle's calls for `task`, one list per assistant turn, and its raw texts."""
    from boxgym.env.parsing import parse_tool_calls
    from boxgym.policies.registry import make_policy
    from boxgym.train.mixture import make_env

    env, policy = make_env(ENV), make_policy("oracle", calls_per_turn=2)
    env.reset(seed=1, options={"task": task})
    turns, texts, done, reward = [], [], False, None
    while not done:
        text = policy.act([env.messages], env.tool_schemas, [task])[0]
        texts.append(text)
        turns.append([(c.name, c.arguments) for c in parse_tool_calls(text).items])
        _, reward, terminated, truncated, _ = env.step(text)
        done = terminated or truncated
    return turns, reward, env


def play(instance, turns):
    """Run `turns` of calls on the adapter, bumping the generation round before each turn."""
    results = []
    for calls in turns:
        te.GENERATION_ROUND[0] += 1
        for name, arguments in calls:
            results.append(getattr(instance, name)(**arguments))
    return results


@pytest.fixture()
def row_and_task():
    rows = te.grpo_prompt_rows(ENV, TaskSection(num_tasks=1, first_seed=5))
    return rows[0], te.task_from_row(rows[0], ENV.scene_knobs)


def test_tool_schemas_are_the_envs_in_the_envs_order(row_and_task):
    from boxgym.train.mixture import make_env

    cls = te.environment_class(ENV)
    instance = cls()
    methods = [
        getattr(instance, name)
        for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]
    assert [get_json_schema(m) for m in te.in_tool_order(methods)] == make_env(ENV).tool_schemas


def test_adapter_reward_and_messages_equal_the_envs(row_and_task):
    row, task = row_and_task
    turns, env_reward, env = oracle_calls(task)
    assert len(turns) >= 2, "the oracle at 2 calls a turn should need several turns"
    instance = te.environment_class(ENV)()
    content = instance.reset(**row)
    assert [p["type"] for p in content] == ["image", "text"] and content[1]["text"] == task.question
    results = play(instance, turns)
    env_tool_contents = [m["content"] for m in env.messages if m["role"] == "tool"]
    assert len(results) == len(env_tool_contents)
    for ours, theirs in zip(results, env_tool_contents):
        assert [p["type"] for p in ours] == [p["type"] for p in theirs]
        assert [p.get("text") for p in ours] == [p.get("text") for p in theirs]
    te.EPISODE_LOG.clear()
    assert instance.get_reward() == pytest.approx(env_reward)
    (logged,) = te.EPISODE_LOG
    assert logged["rollout/turns"] == len(turns) and logged["rollout/count_accuracy"] == 1.0
    assert logged["rollout/invalid_call_rate"] == 0.0 and logged["reward/total"] == pytest.approx(
        env_reward
    )


def test_calls_after_the_answer_are_refused_and_do_not_count(row_and_task):
    row, task = row_and_task
    turns, env_reward, _ = oracle_calls(task)
    instance = te.environment_class(ENV)()
    instance.reset(**row)
    play(instance, turns)
    te.GENERATION_ROUND[0] += 1
    late = instance.draw_box(x1=1, y1=1, x2=50, y2=50, label="late")
    assert late[0]["text"] == te.ANSWER_GIVEN_MESSAGE
    assert instance.get_reward() == pytest.approx(env_reward)


def test_an_unanswered_episode_scores_as_the_env_scores_no_answer(row_and_task):
    row, _ = row_and_task
    instance = te.environment_class(ENV)()
    instance.reset(**row)
    te.GENERATION_ROUND[0] += 1
    bad = instance.draw_box(x1=500, y1=500, x2=100, y2=100, label="x")
    assert bad[-1]["text"].startswith("Error:")
    te.GENERATION_ROUND[0] += 1  # the model's next reply made no call: TRL ends the episode
    te.EPISODE_LOG.clear()
    reward = instance.get_reward()
    (logged,) = te.EPISODE_LOG
    assert logged["rollout/answered"] == 0.0 and logged["rollout/invalid_call_rate"] == 1.0
    assert reward <= 0.0


def test_rows_name_their_task_or_fail_clearly():
    with pytest.raises(ValueError, match="needs `family`"):
        te.task_from_row({"prompt": []})


def test_photo_rows_read_their_folder_once_and_decode_each_image_on_access(tmp_path, monkeypatch):
    import json

    from PIL import Image

    from boxgym.data.lazy_tasks import LazyTasks

    for i, name in enumerate("abc"):
        Image.new("RGB", (40, 30), (10 * i, 90, 200)).save(tmp_path / f"{name}.png")
    rows = [{"file_name": f"{n}.png", "count": i + 1} for i, n in enumerate("abc")]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(te, "_TASK_CACHE", {})
    opened = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real(*a, **k))
    task = te.task_from_row({"user_tasks": str(tmp_path), "task_index": 5})  # 5 % 3: task c
    (cached,) = te._TASK_CACHE.values()
    assert isinstance(cached, LazyTasks) and len(cached) == 3
    assert task.id == "c" and task.count == 3
    before = len(opened)
    assert te.task_from_row({"user_tasks": str(tmp_path), "task_index": 0}).id == "a"
    assert len(opened) > before  # decoded when asked for, not held from the first read
    assert len(te._TASK_CACHE) == 1  # the folder was read once
