from __future__ import annotations

import pytest

from boxgym.env.prompts import system_prompt


@pytest.mark.parametrize("kind", ["enumerate", "count", "verify", "point"])
@pytest.mark.parametrize("frame", ["qwen", "pixels", "unit"])
def test_prompt_names_the_tools_the_kind_needs_and_the_frame(kind, frame):
    text = system_prompt(kind, frame, max_calls_per_turn=10, max_turns=12)
    assert "<tool_call>" in text and "answer" in text
    assert {"qwen": "0 to 1000", "pixels": "pixels", "unit": "0 to 1"}[frame] in text
    assert {"enumerate": "items", "count": "count", "verify": "true or false", "point": "x and y"}[
        kind
    ] in text
    assert "at most 10 tool calls per reply" in text and "at most 12 replies" in text
    assert '"type": "function"' not in text  # schemas go through the chat template's tools=


def test_two_images_and_bad_arguments():
    assert "image=1" in system_prompt("verify", num_images=2)
    with pytest.raises(ValueError, match="unknown task kind"):
        system_prompt("caption")
    with pytest.raises(ValueError, match="unknown coordinate frame"):
        system_prompt("count", "percent")
