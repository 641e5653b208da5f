from __future__ import annotations

from PIL import Image

from boxgym.env.parsing import parse_tool_calls
from boxgym.env.spaces import AssistantTextSpace, ConversationSpace, is_message


def test_conversation_space_checks_the_message_format():
    space = ConversationSpace(seed=0)
    image = Image.new("RGB", (28, 28))
    good = [
        {"role": "system", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "q"}],
        },
        {"role": "tool", "name": "crop", "content": [{"type": "text", "text": "ok"}]},
    ]
    assert space.contains(good)
    assert space.contains(space.sample())
    assert not space.contains([{"role": "robot", "content": []}])
    assert not space.contains([{"role": "user", "content": "plain string"}])
    assert not space.contains(
        [{"role": "user", "content": [{"type": "image", "image": "path.png"}]}]
    )
    assert not is_message({"role": "tool", "content": [{"type": "text", "text": "no name"}]})
    assert not space.contains("not a list")


def test_assistant_text_space_samples_are_reproducible_and_parseable():
    a, b = AssistantTextSpace(max_chars=500, seed=3), AssistantTextSpace(max_chars=500, seed=3)
    samples = [a.sample() for _ in range(30)]
    assert samples == [b.sample() for _ in range(30)]
    assert all(a.contains(s) and len(s) <= 500 for s in samples)
    assert not a.contains(3)
    results = [parse_tool_calls(s) for s in samples]
    assert any(r.calls for r in results) and any(r.errors for r in results)  # a mix of both
