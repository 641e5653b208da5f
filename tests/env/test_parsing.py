from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from boxgym.env.parsing import ParseError, ToolCall, format_tool_call, parse_tool_calls


def test_several_json_calls_in_text_order():
    text = (
        "Let me look.\n"
        + format_tool_call(
            "draw_box", {"x1": 1, "y1": 2, "x2": 30, "y2": 40, "label": "red square"}
        )
        + " then "
        + '<tool_call>  {"name": "crop", "arguments": "{\\"x1\\": 0, \\"y1\\": 0, \\"x2\\": 5, \\"y2\\": 5}"} \n</tool_call>'
    )
    result = parse_tool_calls(text)
    assert [c.name for c in result.calls] == ["draw_box", "crop"]
    assert result.calls[1].arguments == {"x1": 0, "y1": 0, "x2": 5, "y2": 5}
    assert result.errors == []


def test_format_tool_call_round_trips():
    arguments = {"count": 3, "items": ["red square", "écran"]}
    text = format_tool_call("answer", arguments)
    assert (
        text
        == '<tool_call>\n{"name": "answer", "arguments": {"count": 3, "items": ["red square", "écran"]}}\n</tool_call>'
    )
    (call,) = parse_tool_calls(text).calls
    assert (call.name, call.arguments) == ("answer", arguments)


def test_native_grounding_becomes_draw_box_in_qwen_frame():
    text = (
        "<|object_ref_start|>tv screen<|object_ref_end|><|box_start|>(10,20),(300, 400)<|box_end|>"
        "<|box_start|>(500,20),(600,400)<|box_end|> and " + format_tool_call("answer", {"count": 2})
    )
    result = parse_tool_calls(text)
    assert [c.name for c in result.calls] == ["draw_box", "draw_box", "answer"]
    first, second = result.calls[:2]
    assert first.arguments == {"x1": 10, "y1": 20, "x2": 300, "y2": 400, "label": "tv screen"}
    assert first.frame == "qwen" and first.source == "grounding"
    assert second.arguments["label"] == "tv screen"


def test_malformed_calls_become_errors_in_order():
    text = (
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"name": "zoom", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "crop", "arguments": [1]}</tool_call>'
        "<|box_start|>(1,2),(3,4)<|box_end|>"
        "<|object_ref_start|>a<|object_ref_end|><|box_start|>1,2,3,4<|box_end|>"
        '<tool_call>{"name": "answer", "arguments": {"count": 1}}'
    )
    result = parse_tool_calls(text)
    messages = [e.message for e in result.errors]
    assert result.calls == []
    assert "not valid JSON" in messages[0]
    assert "unknown tool 'zoom'" in messages[1]
    assert "must be a JSON object" in messages[2]
    assert "needs a label" in messages[3]
    assert "must look like" in messages[4]
    assert "not closed" in messages[5]


def test_limits_on_calls_and_characters():
    call = format_tool_call("remove_box", {"box_id": 1})
    result = parse_tool_calls(call * 15, max_calls=10)
    assert len(result.calls) == 10 and result.calls_dropped == 5
    assert "were not run" in result.errors[-1].message
    result = parse_tool_calls(call * 15, max_chars=len(call) * 2 + 15)
    assert (
        len(result.calls) == 2 and result.text_truncated and result.chars_read == len(call) * 2 + 15
    )
    assert any("not closed" in e.message for e in result.errors)


def test_non_text_is_an_error():
    assert parse_tool_calls(None).errors[0].message.startswith("the reply must be text")  # type: ignore[arg-type]


fragments = st.sampled_from(
    [
        "<tool_call>",
        "</tool_call>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "(1,2),(3,4)",
        '{"name": "draw_box", "arguments": {"x1": 1}}',
        '{"name":',
        "}",
        "```json",
        "\n",
        " ",
        "label",
        "NaN",
        '"arguments": "{\\"a\\"',
        "[" * 50,
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(fragments, st.text(max_size=30)), max_size=40),
    st.integers(1, 12),
    st.integers(1, 2000),
)
def test_arbitrary_text_parses_within_limits(parts, max_calls, max_chars):
    text = "".join(parts)
    result = parse_tool_calls(text, max_chars=max_chars, max_calls=max_calls)
    assert len(result.calls) <= max_calls
    assert len(result.errors) <= max_calls + 2
    assert result.chars_read <= max_chars
    for item in result.items:
        assert isinstance(item, (ToolCall, ParseError))
        if isinstance(item, ParseError):
            assert item.message
        else:
            json.dumps(item.arguments)
