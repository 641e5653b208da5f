"""Zero-shot mode: answer extraction rules and the env scoring a plain reply."""

from __future__ import annotations

import pytest

from boxgym.data.loaders.samples import write_sample_dataset
from boxgym.env.zero_shot import ZeroShotEnv, extract_answer
from boxgym.rollouts.suites import SUITES, suite_tasks


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("2", "count", {"count": 2}),
        ("There are 3 dogs.", "count", {"count": 3}),
        ("three", "count", {"count": 3}),
        ("I see 4 cats, so 5.0 in all", "count", {"count": 5}),  # the last number
        ("<think>7?</think> Answer: 2", "count", {"count": 2}),
        ("2.5", "count", None),
        ("no idea", "count", None),
        ("6", "enumerate", {"count": 6, "items": []}),
        ("True.", "verify", {"value": True}),
        ("No, the statement is false", "verify", {"value": False}),  # the first word
        ("maybe", "verify", None),
        ("The point is (512, 300).", "point", {"x": 512.0, "y": 300.0}),
        ("somewhere", "point", None),
    ],
)
def test_answer_extraction_rules(text, kind, expected) -> None:
    assert extract_answer(text, kind) == expected


@pytest.fixture(scope="module")
def countbench_task(tmp_path_factory):
    path = write_sample_dataset(
        "countbench", tmp_path_factory.mktemp("cb") / "cb", layout="jsonl", splits=("test",)
    )
    tasks, _ = suite_tasks(SUITES["countbench"], data_path=str(path), limit=1)
    return tasks[0]


def test_a_correct_plain_answer_scores_as_correct(countbench_task) -> None:
    env = ZeroShotEnv()
    assert env.tool_schemas == []
    messages, _ = env.reset(seed=0, options={"task": countbench_task})
    assert [m["role"] for m in messages] == ["user"]  # no system prompt about tools
    assert messages[0]["content"][-1]["text"].endswith("Answer with a single number.")
    truth = countbench_task.answer["count"]
    new, reward, terminated, truncated, info = env.step(f"There are {truth}.")
    assert terminated and not truncated
    assert info["metrics"]["count_correct"] == 1.0 and info["failure"] == "none"
    assert reward == pytest.approx(info["metrics"]["max_reward"])
    assert new == [
        {"role": "assistant", "content": [{"type": "text", "text": f"There are {truth}."}]}
    ]


def test_a_wrong_or_unreadable_plain_answer_does_not(countbench_task) -> None:
    env = ZeroShotEnv()
    env.reset(seed=0, options={"task": countbench_task})
    _, _, terminated, _, info = env.step(str(countbench_task.answer["count"] + 1))
    assert terminated and info["failure"] == "wrong_count"
    env.reset(seed=0, options={"task": countbench_task})
    _, _, terminated, truncated, info = env.step("I cannot tell.")
    assert truncated and not terminated and info["failure"] == "truncated"
