from __future__ import annotations

import random

import numpy as np
import pytest
from handmade_tasks import make_task

from boxgym.env.rewards import (
    EpisodeOutcome,
    RewardConfig,
    grounding_scores,
    iou_matrix,
    score_episode,
)


def perfect(task, **overrides) -> EpisodeOutcome:
    outcome = EpisodeOutcome(
        boxes=[(o.label, o.image, o.box) for o in task.objects],
        answer=dict(task.answer),
        num_calls=len(task.objects) + 1,
        num_turns=1 + len(task.objects) // 8,
        tool_images=len(task.objects),
    )
    for key, value in overrides.items():
        setattr(outcome, key, value)
    return outcome


def total(task, outcome, config=None) -> float:
    return score_episode(task, outcome, config or RewardConfig()).total


def test_perfect_enumeration_scores_the_maximum():
    config = RewardConfig()
    for n in (1, 5, 12, 30):
        task = make_task(n)
        components = score_episode(task, perfect(task), config)
        assert components.total == pytest.approx(config.max_total(task))
        assert components.values["call_penalty"] == 0 and components.values["turn_penalty"] == 0


def test_one_missed_object_lowers_the_reward():
    task = make_task(5)
    best = total(task, perfect(task))
    missed = perfect(
        task, boxes=perfect(task).boxes[1:], answer={"count": 4, "items": task.answer["items"][1:]}
    )
    assert total(task, missed) < best
    only_box_missed = perfect(task, boxes=perfect(task).boxes[1:])
    assert total(task, only_box_missed) < best


def test_duplicate_boxes_never_raise_the_reward():
    task = make_task(5)
    base = perfect(task)
    previous = total(task, base)
    for k in range(1, 6):
        duplicated = perfect(task, boxes=base.boxes + base.boxes[:k], num_calls=base.num_calls + k)
        score = total(task, duplicated)
        assert score < previous
        previous = score


def test_hundred_boxes_on_five_objects_score_below_perfect():
    task = make_task(5)
    rng = np.random.default_rng(0)
    boxes = list(perfect(task).boxes)
    for _ in range(95):
        x, y = rng.uniform(0, 600), rng.uniform(0, 440)
        boxes.append(("red square", 0, (x, y, x + 40, y + 40)))
    spam = perfect(task, boxes=boxes, num_calls=101, num_turns=10)
    assert total(task, spam) < total(task, perfect(task))
    # also when every object is boxed many times with the right label
    spam2 = perfect(task, boxes=perfect(task).boxes * 20, num_calls=101, num_turns=10)
    assert total(task, spam2) < total(task, perfect(task))


def test_box_order_does_not_matter():
    task = make_task(12)
    boxes = [*list(perfect(task).boxes)[:-2], ("blue square", 0, (1, 1, 30, 30))]
    shuffled = boxes[:]
    random.Random(3).shuffle(shuffled)
    a = score_episode(task, perfect(task, boxes=boxes))
    b = score_episode(task, perfect(task, boxes=shuffled))
    assert a.to_dict() == b.to_dict()


def test_labels_must_agree_and_are_normalised():
    task = make_task(4)
    relabelled = [
        ("Red Squares", i, b) if lab == "red square" else (lab, i, b)
        for lab, i, b in perfect(task).boxes
    ]
    assert grounding_scores(relabelled, task)[2] == 1.0
    wrong = [("purple hexagon", i, b) for _, i, b in perfect(task).boxes]
    assert grounding_scores(wrong, task) == (0.0, 0.0, 0.0)
    answer = {"count": 4, "items": ["THE " + label.upper() for label in task.answer["items"]]}
    assert score_episode(task, perfect(task, answer=answer)).scores["enumeration_f1"] == 1.0


def test_grounding_needs_iou_above_threshold_and_is_one_to_one():
    task = make_task(1)
    x1, y1, x2, y2 = task.objects[0].box
    w = x2 - x1
    shifted = ("red square", 0, (x1 + 0.6 * w, y1, x2 + 0.6 * w, y2))
    assert grounding_scores([shifted], task)[2] == 0.0
    slightly = ("red square", 0, (x1 + 0.1 * w, y1, x2 + 0.1 * w, y2))
    assert grounding_scores([slightly, slightly], task) == (0.5, 1.0, pytest.approx(2 / 3))


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], dtype=float)
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    iou = iou_matrix(a, b)
    assert iou[0, 0] == 1.0 and iou[0, 1] == 0.0 and iou[1, 0] == pytest.approx(25 / 175)
    assert iou_matrix(a[:0], b).shape == (0, 2)


def test_count_only_task_scores_count_and_format():
    task = make_task(7, kind="count")
    config = RewardConfig()
    assert set(config.applicable(task)) == {
        "count_exact",
        "format",
        "call_penalty",
        "turn_penalty",
        "invalid_call_penalty",
    }
    right = EpisodeOutcome(answer={"count": 7}, num_calls=1, num_turns=1)
    wrong = EpisodeOutcome(answer={"count": 6}, num_calls=1, num_turns=1)
    assert total(task, right) == pytest.approx(config.max_total(task)) == pytest.approx(1.2)
    assert total(task, wrong) == pytest.approx(0.2)
    assert score_episode(task, wrong).scores["count_abs_error"] == 1.0


def test_no_answer_and_penalties_are_bounded():
    task = make_task(5)
    config = RewardConfig()
    nothing = EpisodeOutcome(
        num_calls=100, num_invalid_calls=100, num_turns=12, empty_turns=3, truncated=True
    )
    components = score_episode(task, nothing, config)
    assert components.values["count_exact"] == 0 and components.values["format"] == 0
    assert components.values["call_penalty"] == -config.call_penalty_cap
    assert components.values["turn_penalty"] == -config.turn_penalty_cap
    assert components.values["invalid_call_penalty"] == -config.invalid_call_penalty_cap
    floor = -(config.call_penalty_cap + config.turn_penalty_cap + config.invalid_call_penalty_cap)
    assert components.total == pytest.approx(floor)


def test_tool_bonus_only_with_a_right_answer_and_a_tool_image():
    task = make_task(3)
    config = RewardConfig(components=(*RewardConfig().components, "tool_bonus"))
    assert score_episode(task, perfect(task), config).values["tool_bonus"] == config.tool_bonus
    assert score_episode(task, perfect(task, tool_images=0), config).values["tool_bonus"] == 0
    wrong = perfect(task, answer={"count": 2, "items": task.answer["items"]})
    assert score_episode(task, wrong, config).values["tool_bonus"] == 0
    assert score_episode(task, perfect(task), config).total == pytest.approx(config.max_total(task))


def test_components_can_be_switched_off_and_weighted():
    task = make_task(3)
    config = RewardConfig(components=("count_exact",), count_exact=2.0)
    assert score_episode(task, perfect(task), config).to_dict() == {
        "count_exact": 2.0,
        "total": 2.0,
    }


def test_config_validation():
    with pytest.raises(ValueError, match="unknown reward component"):
        RewardConfig(components=("speed",))
    with pytest.raises(ValueError, match="iou_threshold"):
        RewardConfig(iou_threshold=0)
    with pytest.raises(ValueError, match="format should be greater than or equal to 0, got -1"):
        RewardConfig(format=-1)
    with pytest.raises(ValueError, match="unknown RewardConfig field"):
        RewardConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match=r"\['count_exact'\] listed more than once"):
        RewardConfig(components=("count_exact", "count_exact", "format"))
    with pytest.raises(ValueError, match="list of component names"):
        RewardConfig.from_dict({"components": "count_exact"})
    with pytest.raises(ValueError, match="free_extra_calls should be a valid integer"):
        RewardConfig(free_extra_calls=2.5)
    with pytest.raises(ValueError, match="format should be a valid number"):
        RewardConfig.from_dict({"format": True})
    with pytest.raises(ValueError, match="format should be a finite number"):
        RewardConfig(format=float("inf"))
    with pytest.raises(ValueError, match="did you mean 'count_exact'"):
        RewardConfig.from_dict({"count_exactly": 1})
    assert RewardConfig(format=1).format == 1.0 and RewardConfig(
        components=["format"]
    ).components == ("format",)
    assert RewardConfig.from_dict(RewardConfig().to_dict()) == RewardConfig()
