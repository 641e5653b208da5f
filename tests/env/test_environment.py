from __future__ import annotations

import importlib.util
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from handmade_tasks import make_task, oracle_turns
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import boxgym
from boxgym.data.task import GroundTruthObject, Task
from boxgym.env import BoxGymEnv, EnvConfig
from boxgym.env.parsing import format_tool_call
from boxgym.tools.canvas import fit_to_patch_grid

HAVE_SCENES = importlib.util.find_spec("boxgym.data.scenes") is not None
TASKS = [make_task(n, seed=n) for n in (3, 5, 8)]


def make_env(env_id: str, **kwargs) -> gym.Env:
    if env_id == "boxgym/Tasks-v0":
        kwargs.setdefault("tasks", TASKS)
    elif not HAVE_SCENES:
        pytest.skip("boxgym.data.scenes is not available yet")
    return gym.make(env_id, **kwargs)


def image_blocks(messages):
    return [b["image"] for m in messages for b in m["content"] if b["type"] == "image"]


def comparable(messages):
    """Messages with images replaced by their size and bytes, for equality checks."""
    out = []
    for m in messages:
        blocks = [
            ("image", b["image"].size, b["image"].tobytes())
            if b["type"] == "image"
            else ("text", b["text"])
            for b in m["content"]
        ]
        out.append((m["role"], m.get("name"), blocks))
    return out


@pytest.mark.parametrize("env_id", sorted(boxgym.ENV_IDS))
def test_check_env(env_id):
    env = make_env(env_id)
    check_env(env.unwrapped)


@pytest.mark.parametrize("env_id", sorted(boxgym.ENV_IDS))
def test_same_seed_gives_identical_episodes(env_id):
    a, b = make_env(env_id), make_env(env_id)
    for seed in (0, 7):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert comparable(obs_a) == comparable(obs_b) and info_a == info_b
        a.action_space.seed(seed)
        for _ in range(4):
            action = a.action_space.sample()
            out_a, out_b = a.step(action), b.step(action)
            assert comparable(out_a[0]) == comparable(out_b[0])
            assert out_a[1:] == out_b[1:]
            if out_a[2] or out_a[3]:
                break


@pytest.mark.parametrize("env_id", sorted(boxgym.ENV_IDS))
def test_pickling_mid_episode(env_id):
    env = make_env(env_id).unwrapped
    env.reset(seed=3)
    env.step(
        format_tool_call("draw_box", {"x1": 10, "y1": 10, "x2": 200, "y2": 200, "label": "thing"})
    )
    clone = pickle.loads(pickle.dumps(env))
    action = format_tool_call("crop", {"x1": 0, "y1": 0, "x2": 500, "y2": 500})
    out_a, out_b = env.step(action), clone.step(action)
    assert comparable(out_a[0]) == comparable(out_b[0]) and out_a[1:] == out_b[1:]
    assert comparable(env.messages) == comparable(clone.messages)


def test_oracle_reaches_the_maximum_and_info_is_complete():
    env = BoxGymEnv(tasks=TASKS)
    for index, task in enumerate(TASKS):
        obs, info = env.reset(seed=index, options={"task_index": index})
        assert [m["role"] for m in obs] == ["system", "user"]
        for text in oracle_turns(task):
            _new, reward, terminated, truncated, info = env.step(text)
        assert terminated and not truncated
        assert reward == pytest.approx(
            info["max_reward"] if "max_reward" in info else info["metrics"]["max_reward"]
        )
        assert info["failure"] == "none"
        metrics = info["metrics"]
        assert (
            metrics["count_correct"] == 1
            and metrics["enumeration_f1"] == 1
            and metrics["grounding_f1"] == 1
        )
        assert metrics["num_boxes"] == len(task.objects) and metrics["answered"] == 1
        assert metrics["valid_call_rate"] == 1 and metrics["num_invalid_calls"] == 0
        assert all(isinstance(v, float) for v in metrics.values())
        assert info["ground_truth"] == task.ground_truth()
        assert len(info["boxes"]) == len(task.objects)
        assert {"id", "label", "image", "box", "pixels"} <= set(info["boxes"][0])
        assert set(info["reward_components"]) >= {
            "count_exact",
            "enumeration_f1",
            "grounding_f1",
            "format",
            "total",
        }


def test_new_messages_follow_the_message_format():
    env = BoxGymEnv(tasks=TASKS[:1], max_calls_per_turn=8, image_history="all")
    obs, _ = env.reset(seed=0)
    text = oracle_turns(TASKS[0], per_turn=8)[0]
    new, _reward, _terminated, _truncated, _info = env.step(text)
    assert new[0] == {"role": "assistant", "content": [{"type": "text", "text": text}]}
    assert [m["name"] for m in new[1:]] == ["draw_box"] * 3 + ["answer"]
    assert env.messages == obs + new
    for picture in image_blocks(obs + new):
        w, h = picture.size
        assert w % 28 == 0 and h % 28 == 0 and w * h <= env.config.max_image_pixels
        assert fit_to_patch_grid(
            w, h, env.config.min_image_pixels, env.config.max_image_pixels
        ) == (w, h)


def test_reward_paid_at_the_end_only_and_step_after_end_is_an_error():
    env = BoxGymEnv(tasks=TASKS[:1])
    env.reset(seed=0)
    _new, reward, terminated, _truncated, info = env.step(
        format_tool_call("draw_box", {"x1": 1, "y1": 1, "x2": 100, "y2": 100, "label": "a"})
    )
    assert (
        reward == 0.0
        and not terminated
        and info["failure"] == "in_progress"
        and info["reward_components"] == {}
    )
    env.step(format_tool_call("answer", {"count": 3, "items": ["a"]}))
    new, reward, terminated, _truncated, info = env.step(
        format_tool_call("answer", {"count": 3, "items": []})
    )
    assert terminated and reward == 0.0 and "episode has ended" in new[0]["content"][0]["text"]


def test_step_before_reset_does_not_raise():
    new, _reward, _terminated, truncated, _info = BoxGymEnv(tasks=TASKS).step("hello")
    assert truncated and "reset" in new[0]["content"][0]["text"]


def test_truncation_by_turns_and_calls():
    env = BoxGymEnv(tasks=TASKS[:1], max_turns=2)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step("thinking...")
    assert not truncated and "no tool call" in env.messages[-1]["content"][0]["text"]
    _, reward, terminated, truncated, info = env.step("still thinking")
    assert truncated and not terminated and info["failure"] == "truncated" and reward < 0
    env = BoxGymEnv(tasks=TASKS[:1], max_calls=3, max_calls_per_turn=3)
    env.reset(seed=0)
    call = format_tool_call("crop", {"x1": 0, "y1": 0, "x2": 900, "y2": 900})
    _new, _, _, truncated, info = env.step(call * 5)
    assert truncated and info["metrics"]["num_calls"] == 3
    assert any("were not run" in e for e in info["errors"])


def test_invalid_calls_reach_the_model_and_are_counted():
    env = BoxGymEnv(tasks=TASKS[:1], max_calls_per_turn=8)
    env.reset(seed=0)
    text = (
        "<tool_call>{bad}</tool_call>"
        + format_tool_call("remove_box", {"box_id": 4})
        + format_tool_call("zoom", {})
    )
    new, _, _, _, info = env.step(text)
    texts = [b["text"] for m in new[1:] for b in m["content"] if b["type"] == "text"]
    assert len(texts) == 3 and all(t.startswith("Error:") for t in texts)
    assert len(info["errors"]) == 3 and info["metrics"]["num_invalid_calls"] == 3
    assert info["metrics"]["num_malformed_calls"] == 2 and info["metrics"]["num_calls"] == 1
    assert info["metrics"]["valid_call_rate"] == 0.0
    _, _, _, _, info = env.step(
        format_tool_call("draw_box", {"x1": 1, "y1": 1, "x2": 100, "y2": 100, "label": "a"})
    )
    assert info["metrics"]["valid_call_rate"] == pytest.approx(1 / 4)


def test_native_grounding_in_other_frames():
    task = TASKS[0]
    for frame in ("qwen", "pixels", "unit"):
        env = BoxGymEnv(tasks=[task], coordinate_frame=frame)
        env.reset(seed=0)
        _, _, _, _, info = env.step(
            "<|object_ref_start|>red square<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>"
        )
        (box,) = info["boxes"]
        assert box["pixels"] == pytest.approx([64.0, 96.0, 320.0, 288.0])
        if frame == "qwen":
            assert box["box"] == [100, 200, 500, 600]


def test_oracle_in_every_frame_and_return_mode():
    task = TASKS[1]
    for frame in ("qwen", "pixels", "unit"):
        for mode in ("image", "crop", "both", "text"):
            env = BoxGymEnv(tasks=[task], coordinate_frame=frame, draw_box_returns=mode)
            env.reset(seed=0)
            for text in oracle_turns(task, frame):
                _, reward, terminated, _, info = env.step(text)
            assert terminated and reward == pytest.approx(info["metrics"]["max_reward"]), (
                frame,
                mode,
            )


def verify_task() -> Task:
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    return Task(
        id="v",
        images=[image, image.copy()],
        question="Both images are red.",
        kind="verify",
        answer={"value": True},
    )


def point_task() -> Task:
    image = Image.new("RGB", (400, 400), (255, 255, 255))
    obj = GroundTruthObject(box=(100.0, 100.0, 200.0, 200.0), label="square")
    return Task(
        id="p",
        images=[image],
        question="Point at the square.",
        kind="point",
        objects=[obj],
        answer={"point": [150, 150]},
    )


def test_verify_and_point_tasks():
    env = BoxGymEnv(tasks=[verify_task()])
    obs, _ = env.reset(seed=0)
    assert len(image_blocks(obs)) == 2 and "two images" in obs[0]["content"][0]["text"]
    _, reward, terminated, _, info = env.step(format_tool_call("answer", {"value": True}))
    assert (
        terminated
        and reward == pytest.approx(info["metrics"]["max_reward"])
        and info["failure"] == "none"
    )
    env.reset(seed=0)
    _, reward, _, _, info = env.step(format_tool_call("answer", {"value": False}))
    assert info["failure"] == "wrong_answer" and reward < info["metrics"]["max_reward"]
    env = BoxGymEnv(tasks=[point_task()])
    env.reset(seed=0)
    _, reward, _, _, info = env.step(format_tool_call("answer", {"x": 300, "y": 300}))
    assert info["metrics"]["answer_correct"] == 1
    env.reset(seed=0)
    _, reward, _, _, info = env.step(format_tool_call("answer", {"x": 900, "y": 900}))
    assert info["failure"] == "wrong_point"


def test_count_only_task_episode():
    task = make_task(4, kind="count")
    env = BoxGymEnv(tasks=[task])
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(format_tool_call("answer", {"count": 4}))
    assert terminated and reward == pytest.approx(1.2) and info["failure"] == "none"
    assert "grounding_f1" not in info["metrics"]


def test_reset_options_and_env_accessors():
    env = BoxGymEnv(tasks=TASKS)
    env.reset(seed=0, options={"task": TASKS[2]})
    assert env.task is TASKS[2]
    env.reset(options={"task_index": 1})
    assert env.task is TASKS[1]
    assert [s["function"]["name"] for s in env.tool_schemas] == [
        "draw_box",
        "crop",
        "label",
        "remove_box",
        "answer",
    ]
    with pytest.raises(ValueError, match="no scene family and no tasks"):
        BoxGymEnv().reset()
    with pytest.raises(ValueError, match="unknown scene family"):
        BoxGymEnv(family="kitchens")
    with pytest.raises(ValueError, match="unknown EnvConfig field"):
        BoxGymEnv(tasks=TASKS, max_turn=3)


def test_gymnasium_make_passes_config_overrides():
    env = gym.make("boxgym/Tasks-v0", tasks=TASKS, max_turns=3, coordinate_frame="unit")
    assert env.unwrapped.config.max_turns == 3 and env.unwrapped.config.coordinate_frame == "unit"
    env.reset(seed=0)
    assert isinstance(env.render(), type(None))
    env = gym.make("boxgym/Tasks-v0", tasks=TASKS, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.shape[2] == 3


def test_env_config_validation_and_yaml_round_trip():
    with pytest.raises(ValueError, match="max_turns should be greater than or equal to 1, got 0"):
        EnvConfig(max_turns=0)
    with pytest.raises(ValueError, match="coordinate_frame"):
        EnvConfig(coordinate_frame="percent")
    with pytest.raises(ValueError, match="draw_box_returns"):
        EnvConfig(draw_box_returns="video")
    with pytest.raises(ValueError, match="below min_image_pixels"):
        EnvConfig(max_image_pixels=1000, min_image_pixels=3136)
    with pytest.raises(ValueError, match="exceeds max_calls"):
        EnvConfig(max_calls=5, max_calls_per_turn=10)
    for field, value, message in [
        ("crop_shows_boxes", "false", "crop_shows_boxes should be a valid boolean"),
        ("system_prompt", 1, "system_prompt should be a valid boolean"),
        ("max_turns", 3.0, "max_turns should be a valid integer"),
        ("max_turns", True, "max_turns should be a valid integer"),
        ("coordinate_frame", ["qwen"], "coordinate_frame should be 'qwen', 'pixels' or 'unit'"),
        ("mark_style", "glow", "mark_style should be"),
    ]:
        with pytest.raises(ValueError, match=message):
            EnvConfig.from_dict({field: value})
    config = EnvConfig.from_dict({"max_turns": 4, "reward": {"format": 0.5}})
    assert config.reward.format == 0.5
    assert EnvConfig.from_dict(config.to_dict()) == config


junk = st.sampled_from(
    [
        "<tool_call>",
        "</tool_call>",
        '{"name": "draw_box", "arguments": {"x1": 10, "y1": 10, "x2": 500, "y2": 600, "label": "a"}}',
        '{"name": "crop", "arguments": {"x1": 0, "y1": 0, "x2": 1000, "y2": 1000}}',
        '{"name": "answer", "arguments": {"count": 3}}',
        '{"name": "label", "arguments": {"box_id": 1, "label": "b"}}',
        '{"name": "remove_box", "arguments": {"box_id": 2}}',
        '{"name": "draw_box", "arguments": {"x1": NaN}}',
        "<|object_ref_start|>x<|object_ref_end|>",
        "<|box_start|>(1,1),(900,900)<|box_end|>",
        "\n",
        "}",
        "{",
        "[[[[",
    ]
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.lists(st.one_of(junk, st.text(max_size=20)), max_size=30).map("".join),
        min_size=1,
        max_size=5,
    )
)
def test_arbitrary_replies_never_raise_and_limits_hold(replies):
    env = BoxGymEnv(
        tasks=TASKS[:1],
        max_turns=4,
        max_calls_per_turn=6,
        max_calls=12,
        max_boxes=4,
        max_action_chars=600,
    )
    env.reset(seed=0)
    for text in replies:
        new, reward, terminated, truncated, info = env.step(text)
        assert new[0]["role"] == "assistant" and new[0]["content"][0]["text"] == text
        replies_to_model = [b["text"] for m in new[1:] for b in m["content"] if b["type"] == "text"]
        error_texts = [t for t in replies_to_model if t.startswith("Error:")]
        assert len(error_texts) == len(info["errors"])  # every error reaches the model
        assert len([m for m in new if m["role"] == "tool"]) <= 6 + 2
        assert info["metrics"]["num_boxes"] <= 4 and info["metrics"]["num_calls"] <= 12
        for picture in image_blocks(new):
            w, h = picture.size
            assert w % 28 == 0 and h % 28 == 0 and w * h <= env.config.max_image_pixels
        if terminated or truncated:
            assert info["failure"] != "in_progress" and np.isfinite(reward)
            break


@pytest.mark.skipif(not HAVE_SCENES, reason="boxgym.data.scenes is not available yet")
@pytest.mark.parametrize("family", ["screens", "shapes", "clutter"])
def test_oracle_scores_the_maximum_on_scene_families(family):
    for difficulty in ("easy", "medium", "hard"):
        env = BoxGymEnv(family=family, difficulty=difficulty)
        ids = set()
        for seed in range(3):
            env.reset(seed=seed)
            ids.add(env.task.id)
            for text in oracle_turns(env.task):
                _, reward, terminated, truncated, info = env.step(text)
                if terminated or truncated:
                    break
            assert terminated and info["failure"] == "none", (
                family,
                difficulty,
                seed,
                info["failure"],
            )
            assert reward == pytest.approx(info["metrics"]["max_reward"])
        assert len(ids) == 3  # scene seeds come from np_random: a new scene per seed


def test_extra_calls_are_reported_as_over_budget():
    task = TASKS[0]
    env = BoxGymEnv(tasks=[task], max_calls_per_turn=8)
    env.reset(seed=0)
    crop = format_tool_call("crop", {"x1": 0, "y1": 0, "x2": 500, "y2": 500})
    env.step(crop * 8)
    for text in oracle_turns(task):
        _, reward, _, _, info = env.step(text)
    assert info["failure"] == "over_budget" and reward < info["metrics"]["max_reward"]
    assert info["reward_components"]["call_penalty"] < 0


def test_every_image_shown_is_left_unchanged_by_qwen2_vl_smart_resize():
    smart_resize = pytest.importorskip(
        "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    ).smart_resize
    sizes = [(1024, 1024), (333, 1500), (90, 60), (1920, 1080)]
    tasks = [make_task(4, size=s) for s in sizes]
    for mode in ("image", "crop", "both"):
        env = BoxGymEnv(
            tasks=tasks,
            draw_box_returns=mode,
            min_image_pixels=56 * 56,
            max_image_pixels=640 * 28 * 28,
        )
        for index, task in enumerate(tasks):
            obs, _ = env.reset(seed=0, options={"task_index": index})
            new = []
            crop = format_tool_call("crop", {"x1": 100, "y1": 100, "x2": 130, "y2": 900})
            new += env.step(crop)[0]
            for text in oracle_turns(task):
                new += env.step(text)[0]
            pictures = image_blocks(obs + new)
            assert len(pictures) >= 2
            for picture in pictures:
                w, h = picture.size
                expected = smart_resize(
                    h, w, factor=28, min_pixels=56 * 56, max_pixels=640 * 28 * 28
                )
                assert expected == (h, w), (task.images[0].size, mode, picture.size)


@pytest.mark.parametrize("action", [None, 123, b"<tool_call>", ["draw_box"], {"name": "answer"}])
def test_non_text_actions_are_errors_not_exceptions(action):
    env = BoxGymEnv(tasks=TASKS[:1])
    env.reset(seed=0)
    new, _reward, terminated, _truncated, info = env.step(action)
    assert new[0]["role"] == "assistant" and new[0]["content"][0]["text"] == ""
    assert "must be a string" in new[1]["content"][0]["text"]
    assert info["metrics"]["num_invalid_calls"] == 1 and not terminated


def test_an_internal_failure_ends_the_episode_without_raising(monkeypatch):
    env = BoxGymEnv(tasks=TASKS[:1])
    env.reset(seed=0)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(env.toolbox, "_call", broken)
    new, _reward, _terminated, truncated, info = env.step(
        format_tool_call("answer", {"count": 1, "items": []})
    )
    assert truncated and info["failure"] == "env_error" and "boom" in info["errors"][0]
    assert "failed" in new[-1]["content"][0]["text"]


def test_a_perfect_point_answer_on_a_boxed_object_has_no_failure():
    # Grounding is not scored on point tasks, so a right point is a perfect episode.
    obj = GroundTruthObject(box=(190.0, 140.0, 210.0, 160.0), label="dot")
    task = Task(
        id="pt",
        images=[Image.new("RGB", (400, 300), (255, 255, 255))],
        question="Point at the dot.",
        kind="point",
        objects=[obj],
        answer={"point": [200, 150]},
    )
    env = BoxGymEnv(tasks=[task])
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(format_tool_call("answer", {"x": 505, "y": 520}))
    assert terminated and reward == pytest.approx(info["metrics"]["max_reward"]) == 1.2
    assert info["failure"] == "none"


def test_failure_kinds_follow_the_scored_components():
    task = make_task(3)
    items = [o.label for o in task.objects]
    answer = format_tool_call("answer", {"count": 3, "items": items})
    without_grounding = EnvConfig(
        reward={"components": ["count_exact", "enumeration_f1", "format"]}
    )
    env = BoxGymEnv(tasks=[task], config=without_grounding)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(answer)
    assert reward == pytest.approx(info["metrics"]["max_reward"]) and info["failure"] == "none"
    env = BoxGymEnv(tasks=[task])  # grounding scored: the same answer without boxes falls short
    env.reset(seed=0)
    _, reward, _, _, info = env.step(answer)
    assert reward < info["metrics"]["max_reward"] and info["failure"] == "poor_grounding"


def test_a_small_image_cap_alone_also_caps_crops():
    """Lowering max_image_pixels needs no matching crop cap: crops stay within it, on the grid."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    env = BoxGymEnv(family="shapes", max_image_pixels=224 * 224, image_history="all")
    env.reset(seed=0)
    _, _, _, _, info = env.step(
        '<tool_call>{"name": "crop", "arguments": {"x1": 0, "y1": 0, "x2": 40, "y2": 40}}</tool_call>'
    )
    images = [
        part["image"]
        for message in env.messages
        for part in message["content"]
        if part["type"] == "image"
    ]
    assert len(images) == 2, info["errors"]
    for image in images:
        width, height = image.size
        assert width * height <= 224 * 224
        assert smart_resize(height, width, min_pixels=3136, max_pixels=224 * 224) == (height, width)
