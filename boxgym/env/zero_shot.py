"""Zero-shot mode: the task without tools, one plain reply, the answer read out of the text.

Published numbers for CountBenchQA, PixMo-Count or NLVR2 come from a model that sees the image(s)
and the question and answers in words, scored by extracting the answer from the text (as
lmms-eval does). `ZeroShotEnv` is that protocol on top of `BoxGymEnv`: no system prompt and no
tool schemas (`tool_schemas` is empty, so every policy renders the chat without tools), the
question followed by a short answer instruction, one turn. The reply is read by
`extract_answer` and recorded as the env's own `answer` call, so the score, metrics and failure
kinds are the env's (`count_correct`, `answer_correct`, ...); a reply with no readable answer
ends the episode unanswered ("truncated").

Answer extraction (documented rules, applied to the reply with `<think>` blocks removed):
- count / enumerate: the LAST integer in the reply, written in digits ("3", "there are 3.")
  or as an English number word from zero to twenty ("three"); "3.0" reads as 3. Enumerate
  tasks are scored on the count only (items=[]), as published counting numbers are.
- verify: the FIRST of the words true/false/yes/no (case-insensitive, whole words).
- point: the FIRST pair of numbers written "(x, y)" or "x, y", in the env's coordinate frame.
"""

from __future__ import annotations

import re
from typing import Any

from boxgym.env.environment import BoxGymEnv
from boxgym.env.parsing import format_tool_call
from boxgym.env.prompts import FRAME_TEXT

NUMBER_WORDS: dict[str, int] = {
    word: value
    for value, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_NUMBER = re.compile(
    r"(?<![\w.])(\d+)(?:\.0+)?(?![\w.]*\d)|\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE
)
_TRUTH = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)
_POINT = re.compile(r"\(?\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)?")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)

INSTRUCTIONS: dict[str, str] = {
    "count": "Answer with a single number.",
    "enumerate": "Answer with a single number.",
    "verify": "Answer with true or false.",
    "point": "Answer with the point as (x, y). {frame}",
}


def extract_answer(text: str, kind: str) -> dict[str, Any] | None:
    """The `answer` arguments a plain reply gives for a task of `kind`, or None (see module)."""
    text = _THINK.sub(" ", text)
    if kind in ("count", "enumerate"):
        found = _NUMBER.findall(text)
        if not found:
            return None
        digits, word = found[-1]
        count = int(digits) if digits else NUMBER_WORDS[word.lower()]
        return {"count": count, "items": []} if kind == "enumerate" else {"count": count}
    if kind == "verify":
        match = _TRUTH.search(text)
        return None if match is None else {"value": match.group(1).lower() in ("true", "yes")}
    if kind == "point":
        match = _POINT.search(text)
        return None if match is None else {"x": float(match.group(1)), "y": float(match.group(2))}
    raise ValueError(f"unknown task kind {kind!r}")


def zero_shot_question(question: str, kind: str, frame: str) -> str:
    """The question followed by the answer instruction for `kind`."""
    return f"{question}\n{INSTRUCTIONS[kind].format(frame=FRAME_TEXT[frame])}"


class ZeroShotEnv(BoxGymEnv):
    """`BoxGymEnv` without tools: one plain reply, scored by `extract_answer` (see module).

    Takes `BoxGymEnv`'s arguments; `system_prompt` is off and `max_turns` is 1 whatever the
    config says.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = self.config.replace(system_prompt=False, max_turns=1)

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        """No tools: the chat is rendered without them."""
        return []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The user message: the image(s), the question and the answer instruction."""
        messages, info = super().reset(seed=seed, options=options)
        task = self.task
        assert task is not None
        user = messages[-1]
        text = zero_shot_question(task.question, task.kind, self.config.coordinate_frame)
        user["content"] = [
            part if part.get("type") != "text" else {"type": "text", "text": text}
            for part in user["content"]
        ]
        info["zero_shot"] = True
        return messages, info

    def step(self, action: str) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """Read the answer out of the plain reply and score it as the env's `answer` call."""
        if self.task is None or self.done or not isinstance(action, str):
            return super().step(action)
        arguments = extract_answer(action, self.task.kind)
        call = "" if arguments is None else format_tool_call("answer", arguments)
        new, reward, terminated, truncated, info = super().step(call)
        # the conversation keeps the model's own words, not the call they were read as
        new[0]["content"] = [{"type": "text", "text": action}]
        new[1:] = []
        info["extracted_answer"] = arguments
        return new, reward, terminated, truncated, info
