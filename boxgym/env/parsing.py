"""Parsing the model's raw assistant text into tool calls, and the canonical text of a call.

Two syntaxes are accepted, in text order:

- Hermes/Qwen JSON: ``<tool_call>{"name": "draw_box", "arguments": {...}}</tool_call>``
  (several per turn; ``arguments`` may also be a JSON string; whitespace and a ```json fence
  inside the tags are tolerated).
- Qwen2-VL's native grounding:
  ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``, read as
  a ``draw_box`` in the qwen frame (0-1000). Several boxes right after one label share it.

Anything malformed (bad JSON, unknown tool, unclosed tag, over the limits) becomes a
`ParseError` whose message is written for the model to read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from boxgym.tools.toolbox import TOOL_NAMES

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
REF_OPEN, REF_CLOSE = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_OPEN, BOX_CLOSE = "<|box_start|>", "<|box_end|>"

DEFAULT_MAX_CHARS = 8000
DEFAULT_MAX_CALLS = 10

_OPEN_RE = re.compile(
    re.escape(TOOL_CALL_OPEN) + "|" + re.escape(REF_OPEN) + "|" + re.escape(BOX_OPEN)
)
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX_RE = re.compile(rf"^\s*\({_NUM},{_NUM}\)\s*,?\s*\({_NUM},{_NUM}\)\s*$")
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One parsed call. `frame` is set when the syntax fixes the coordinate frame (grounding)."""

    name: str
    arguments: dict[str, Any]
    source: str = "tool_call"  # "tool_call" or "grounding"
    span: tuple[int, int] = (0, 0)
    frame: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arguments": self.arguments,
            "source": self.source,
            "frame": self.frame,
        }


@dataclass(frozen=True)
class ParseError:
    """A malformed call; `message` is shown to the model as the call's result."""

    message: str
    span: tuple[int, int] = (0, 0)
    name: str | None = None  # the tool the call named, when known

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "name": self.name}


@dataclass
class ParseResult:
    """Calls and errors in text order, plus what the limits cut off."""

    items: list[ToolCall | ParseError] = field(default_factory=list)
    chars_read: int = 0
    text_truncated: bool = False  # the text was longer than max_chars
    calls_dropped: int = 0  # calls beyond max_calls, not run

    @property
    def calls(self) -> list[ToolCall]:
        return [item for item in self.items if isinstance(item, ToolCall)]

    @property
    def errors(self) -> list[ParseError]:
        return [item for item in self.items if isinstance(item, ParseError)]


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The canonical text of one call, as a model should emit it (Hermes style, one JSON line).

    Example: ``<tool_call>\\n{"name": "answer", "arguments": {"count": 3}}\\n</tool_call>``.
    """
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"


def format_tool_calls(calls: list[tuple[str, dict[str, Any]]]) -> str:
    """Several canonical calls, one per line block, for one assistant turn."""
    return "\n".join(format_tool_call(name, arguments) for name, arguments in calls)


def valid_unicode(text: str) -> str:
    """`text` with every lone surrogate (e.g. a half emoji, `\\ud83d`) replaced by U+FFFD.

    Such text cannot be encoded as UTF-8, so it could not be written to a file or a page; a
    surrogate pair split into two code points is joined back into its character.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_problem(error: BaseException) -> str:
    """What was wrong with a JSON text, in a few words for the model."""
    if isinstance(error, json.JSONDecodeError):
        return error.msg
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return "a number with too many digits"  # int() refuses > 4300 digits (CVE-2020-10735)


def _parse_json_call(body: str, tool_names: tuple[str, ...]) -> ToolCall | str:
    fenced = _FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1)
    body = body.strip()
    if not body:
        return 'the <tool_call> is empty; put {"name": ..., "arguments": {...}} inside it'
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        return f"the tool call is not valid JSON ({_json_problem(error)}) in: {_short(body)}"
    if not isinstance(data, dict):
        return 'a tool call must be a JSON object {"name": ..., "arguments": {...}}'
    name = data.get("name")
    if not isinstance(name, str):
        return 'the tool call has no "name" string'
    if name not in tool_names:
        return f"unknown tool {_short(name, 40)!r}; the tools are {', '.join(tool_names)}"
    extra = sorted(set(data) - {"name", "arguments"})
    if extra:
        return f'{name}: unexpected key(s) {", ".join(map(repr, extra))} next to name; put arguments inside "arguments"'
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return f'{name}: "arguments" is a string that is not valid JSON'
    if not isinstance(arguments, dict):
        return f'{name}: "arguments" must be a JSON object, got {type(arguments).__name__}'
    return ToolCall(name=name, arguments=arguments)


def parse_tool_calls(
    text: str,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_calls: int = DEFAULT_MAX_CALLS,
    tool_names: tuple[str, ...] = TOOL_NAMES,
) -> ParseResult:
    """Parse every tool call in `text` (only its first `max_chars` characters), in text order.

    At most `max_calls` calls are returned; any after those are counted in `calls_dropped` and
    reported by one error. Errors are capped the same way, so the result is bounded.
    """
    result = ParseResult()
    if not isinstance(text, str):
        result.items.append(ParseError(f"the reply must be text, got {type(text).__name__}"))
        return result
    if len(text) > max_chars:
        result.text_truncated = True
        text = text[:max_chars]
    result.chars_read = len(text)
    items = result.items
    n_calls = n_errors = 0
    label: str | None = None  # the label of the last grounding reference, while boxes follow it
    label_end = -1  # where that reference (or its last box) ended
    pos = 0

    def add(item: ToolCall | ParseError) -> bool:
        """Append `item`; False once the limits are reached (stop parsing)."""
        nonlocal n_calls, n_errors
        if isinstance(item, ToolCall):
            if n_calls >= max_calls:
                result.calls_dropped += 1
                return True
            n_calls += 1
        else:
            if n_errors >= max_calls:
                return False
            n_errors += 1
        items.append(item)
        return True

    while pos < len(text):
        match = _OPEN_RE.search(text, pos)
        if match is None:
            break
        start, body_start = match.start(), match.end()
        tag = match.group(0)
        if tag == TOOL_CALL_OPEN:
            end = text.find(TOOL_CALL_CLOSE, body_start)
            reopen = text.find(TOOL_CALL_OPEN, body_start)
            if end == -1 or (reopen != -1 and reopen < end):
                stop = reopen if reopen != -1 else len(text)
                msg = "a <tool_call> was not closed with </tool_call>"
                if result.text_truncated and reopen == -1:
                    msg += f" (only the first {max_chars} characters of a reply are read)"
                if not add(ParseError(msg, (start, stop))):
                    break
                pos = stop
                continue
            parsed = _parse_json_call(text[body_start:end], tool_names)
            span = (start, end + len(TOOL_CALL_CLOSE))
            if isinstance(parsed, str):
                item: ToolCall | ParseError = ParseError(parsed, span)
            else:
                item = ToolCall(parsed.name, parsed.arguments, "tool_call", span)
            if not add(item):
                break
            pos = span[1]
            label = None
        elif tag == REF_OPEN:
            end = text.find(REF_CLOSE, body_start)
            if end == -1:
                if not add(
                    ParseError(
                        "an <|object_ref_start|> was not closed with <|object_ref_end|>",
                        (start, len(text)),
                    )
                ):
                    break
                break
            label = " ".join(text[body_start:end].split())
            pos = label_end = end + len(REF_CLOSE)
        else:  # BOX_OPEN
            end = text.find(BOX_CLOSE, body_start)
            if end == -1:
                add(
                    ParseError(
                        "a <|box_start|> was not closed with <|box_end|>", (start, len(text))
                    )
                )
                break
            span = (start, end + len(BOX_CLOSE))
            pos = span[1]
            attached = label is not None and text[label_end:start].strip(" \t\r\n,") == ""
            box = _BOX_RE.match(text[body_start:end])
            if box is None:
                item = ParseError(
                    f"a grounded box must look like <|box_start|>(x1,y1),(x2,y2)<|box_end|>, got {_short(text[body_start:end], 40)!r}",
                    span,
                    "draw_box",
                )
            elif not attached or not label:
                item = ParseError(
                    "a grounded box needs a label right before it: <|object_ref_start|>label<|object_ref_end|>",
                    span,
                    "draw_box",
                )
            else:
                x1, y1, x2, y2 = (float(v) if "." in v else int(v) for v in box.groups())
                item = ToolCall(
                    "draw_box",
                    {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": label},
                    "grounding",
                    span,
                    "qwen",
                )
                label_end = span[1]
            if not add(item):
                break
    if result.calls_dropped:
        items.append(
            ParseError(
                f"{result.calls_dropped} tool call(s) after the first {max_calls} in this reply were not run; "
                f"make at most {max_calls} call{'s' if max_calls != 1 else ''} per reply"
            )
        )
    if result.text_truncated:
        items.append(
            ParseError(
                f"the reply was longer than {max_chars} characters; only the first {max_chars} were read"
            )
        )
    return result
