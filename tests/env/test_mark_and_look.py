"""The mark-and-look protocol: one call a turn, the marked image back, the latest image kept."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from boxgym.data.scenes import make_scene_task
from boxgym.env import BoxGymEnv, EnvConfig
from boxgym.env.config import ONE_REPLY
from boxgym.env.history import keep_images
from boxgym.env.parsing import format_tool_call
from boxgym.policies.scripted import OraclePolicy, SeededTask
from boxgym.tools.canvas import MARK_COLOUR, PALETTE
from boxgym.tools.toolbox import Toolbox

TWELVE = dict(
    image_size=336, object_size=(2.0, 3.0), grid="aligned", count=(12, 12), distractors=(0, 0)
)


def images_in(conversation) -> int:
    return sum(1 for m in conversation for p in m["content"] if p["type"] == "image")


def play(env: BoxGymEnv, policy, task, seed: int = 0):
    """One episode the way the rollout runner keeps its conversation; (conversations seen,
    final info)."""
    messages, _ = env.reset(seed=seed, options={"task": task})
    conversation, seen = list(messages), []
    for _ in range(200):
        seen.append(conversation)
        (text,) = policy.act([conversation], env.tool_schemas, [SeededTask(task, seed)])
        new, _reward, terminated, truncated, info = env.step(text)
        conversation = keep_images([*conversation, *new], env.config.image_history)
        if terminated or truncated:
            return seen, info
    raise AssertionError("the episode did not end")


def test_the_oracle_plays_one_box_a_turn_to_the_maximum_at_12_objects():
    task = make_scene_task("shapes", 3, "easy", **TWELVE)
    assert task.count == 12
    env = BoxGymEnv()  # the defaults are the protocol
    assert env.config.max_calls_per_turn == 1 and env.config.image_history == "last"
    seen, info = play(env, OraclePolicy(), task)
    assert info["failure"] == "none"
    assert info["reward"] == pytest.approx(info["metrics"]["max_reward"])
    assert info["metrics"]["num_turns"] == 13 and info["metrics"]["num_boxes"] == 12
    # every turn the model sees exactly one image, the latest: marks 0, 1, ..., 12
    assert [images_in(c) for c in seen] == [1] * 13
    assert env.messages == keep_images(env._messages, "last")


def test_image_history_all_keeps_every_image_and_the_texts_are_the_same():
    task = make_scene_task("shapes", 3, "easy", **TWELVE)
    seen_last, _ = play(BoxGymEnv(image_history="last"), OraclePolicy(), task)
    seen_all, info = play(BoxGymEnv(image_history="all"), OraclePolicy(), task)
    assert info["failure"] == "none"
    assert [images_in(c) for c in seen_all] == list(range(1, 14))

    def texts(conversation):
        return [[p.get("text") for p in m["content"] if p["type"] == "text"] for m in conversation]

    assert texts(seen_all[-1]) == texts(seen_last[-1])


def test_the_tool_text_comes_before_its_image():
    env = BoxGymEnv(family="shapes")
    env.reset(seed=0)
    call = format_tool_call("draw_box", {"x1": 1, "y1": 1, "x2": 300, "y2": 300, "label": "a"})
    new, *_ = env.step(call)
    assert [p["type"] for p in new[1]["content"]] == ["text", "image"]


def test_a_reply_with_several_calls_runs_the_first_and_refuses_the_rest():
    env = BoxGymEnv(family="shapes")
    env.reset(seed=0)
    call = format_tool_call("draw_box", {"x1": 1, "y1": 1, "x2": 300, "y2": 300, "label": "a"})
    _, _, _, _, info = env.step(call * 3)
    assert info["metrics"]["num_boxes"] == 1 and info["metrics"]["num_invalid_calls"] == 1
    assert "2 tool call(s) after the first 1 in this reply were not run" in info["errors"][0]
    assert "make at most 1 call per reply" in info["errors"][0]


def test_box_count_text_can_be_switched_off():
    on, off = (
        Toolbox([task_image()], kind="count"),
        Toolbox([task_image()], kind="count", box_count_text=False),
    )
    a = on.draw_box(10, 10, 300, 300, "shape")[0]["text"]
    b = off.draw_box(10, 10, 300, 300, "shape")[0]["text"]
    assert a.startswith('Box 1 "shape"') and a.endswith("1 box so far.")
    assert b == 'Box "shape" drawn at (10, 10, 300, 300).'


def task_image():
    from PIL import Image

    return Image.new("RGB", (336, 336), (246, 244, 236))


@pytest.mark.parametrize("style", ["tag", "outline", "fill"])
def test_mark_styles(style):
    box = Toolbox([task_image()], kind="count", mark_style=style)
    blocks = box.draw_box(300, 300, 700, 700, "shape")
    pixels = np.asarray(blocks[-1]["image"]).reshape(-1, 3)
    centre = np.asarray(blocks[-1]["image"])[168, 168]
    colours = {tuple(p) for p in pixels}
    if style == "fill":
        assert tuple(centre) == MARK_COLOUR  # the marked object is covered
    else:
        assert tuple(centre) == (246, 244, 236)  # the inside stays visible
        assert (PALETTE[0] if style == "tag" else MARK_COLOUR) in colours


def scene_colours() -> list[tuple[int, int, int]]:
    """Every RGB triple written in the scene families' source and the named label colours."""
    from boxgym.data.vocabulary import COLOURS

    found = list(COLOURS.values())
    root = Path(__file__).resolve().parents[2] / "boxgym" / "data" / "scenes"
    for path in root.glob("*.py"):
        for r, g, b in re.findall(r"\((\d{1,3}), (\d{1,3}), (\d{1,3})\)", path.read_text()):
            found.append((int(r), int(g), int(b)))
    return found


def test_no_mark_colour_is_a_scene_colour():
    scene = scene_colours()
    assert len(scene) > 30
    for mark in PALETTE:
        nearest = min(math.dist(mark, colour) for colour in scene)
        assert nearest >= 90, (mark, nearest)  # scene colours are jittered by at most 8


def test_the_prompt_says_what_the_protocol_is():
    loop = BoxGymEnv(family="shapes").reset(seed=0)[0][0]["content"][0]["text"]
    text_only = BoxGymEnv(family="shapes", draw_box_returns="text").reset(seed=0)[0][0]
    one_reply = BoxGymEnv(family="shapes", config=EnvConfig(**ONE_REPLY)).reset(seed=0)[0][0]
    assert "make one call per reply" in loop and "image comes back with every box" in loop
    assert "come back as text" in text_only["content"][0]["text"]
    one_reply_text = one_reply["content"][0]["text"]
    assert "several calls in one reply" in one_reply_text and "one object" not in one_reply_text
