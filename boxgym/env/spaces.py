"""Gymnasium spaces for chat conversations (observations) and raw assistant text (actions).

Like Minigrid's `MissionSpace`: small custom spaces whose `contains` checks the structure and
whose `sample` draws plausible members from the space's own `np_random`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from gymnasium.spaces import Space
from PIL import Image

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


def _valid_block(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    if block.get("type") == "text":
        return isinstance(block.get("text"), str)
    if block.get("type") == "image":
        return isinstance(block.get("image"), Image.Image)
    return False


def is_message(message: Any) -> bool:
    """Whether `message` is one chat message in the transformers multimodal format."""
    return (
        isinstance(message, dict)
        and message.get("role") in ROLES
        and isinstance(message.get("content"), list)
        and all(_valid_block(b) for b in message["content"])
        and (message["role"] != "tool" or isinstance(message.get("name"), str))
    )


class ConversationSpace(Space[list]):
    """Lists of chat messages: `{"role", "content": [{"type": "text"|"image", ...}], "name"?}`."""

    def __init__(self, max_messages: int = 1000, seed: int | np.random.Generator | None = None):
        self.max_messages = max_messages
        super().__init__(None, None, seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and len(x) <= self.max_messages and all(is_message(m) for m in x)

    def sample(self, mask: Any = None, probability: Any = None) -> list:
        rng = self.np_random
        side = 28 * int(rng.integers(1, 5))
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        return [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": Image.fromarray(pixels)},
                    {"type": "text", "text": "How many objects are there?"},
                ],
            },
        ]

    def __repr__(self) -> str:
        return f"ConversationSpace(max_messages={self.max_messages})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConversationSpace) and other.max_messages == self.max_messages


_TOOLS = ("draw_box", "crop", "label", "remove_box", "answer", "zoom")
_JUNK = (
    "<tool_call>",
    "</tool_call>",
    "{",
    "}",
    '"name"',
    ":",
    "<|box_start|>",
    "(1,2),(3,4)",
    "<|box_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "NaN",
    "1e999",
    "null",
    " ",
    "\n",
)


class AssistantTextSpace(Space[str]):
    """Raw assistant replies: any string. `sample` mixes tool calls, broken calls and junk.

    Only the first `max_chars` characters of a reply are parsed by the env; longer strings are
    still members of the space.
    """

    def __init__(self, max_chars: int = 8000, seed: int | np.random.Generator | None = None):
        self.max_chars = max_chars
        super().__init__(None, str, seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, str)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        rng = self.np_random
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            choice = int(rng.integers(0, 3))
            if choice == 0:
                name = _TOOLS[int(rng.integers(0, len(_TOOLS)))]
                x1, y1 = (int(v) for v in rng.integers(-50, 900, size=2))
                args = {
                    "x1": x1,
                    "y1": y1,
                    "x2": x1 + int(rng.integers(-10, 300)),
                    "y2": y1 + int(rng.integers(-10, 300)),
                    "label": "object",
                }
                if name == "answer":
                    args = {
                        "count": int(rng.integers(0, 12)),
                        "items": ["object"] * int(rng.integers(0, 4)),
                    }
                elif name in ("label", "remove_box"):
                    args = {"box_id": int(rng.integers(0, 5)), "label": "thing"}
                    if name == "remove_box":
                        args.pop("label")
                parts.append(
                    "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"
                )
            elif choice == 1:
                parts.append(
                    "".join(
                        _JUNK[int(i)]
                        for i in rng.integers(0, len(_JUNK), size=int(rng.integers(1, 12)))
                    )
                )
            else:
                parts.append("I see some objects.")
        return " ".join(parts)[: self.max_chars]

    def __repr__(self) -> str:
        return f"AssistantTextSpace(max_chars={self.max_chars})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AssistantTextSpace) and other.max_chars == self.max_chars
