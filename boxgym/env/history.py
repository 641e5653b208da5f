"""What a conversation keeps of the images shown in it (`EnvConfig.image_history`)."""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def _has_image(message: Message) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") == "image" for part in content
    )


def keep_images(conversation: list[Message], image_history: str) -> list[Message]:
    """`conversation` as the model sees it under `image_history`.

    "all" returns it unchanged. "last" keeps the images of the latest message that holds any and
    drops the image parts of every earlier message (their text stays), so the context holds one
    image turn however long the episode runs. Messages are not modified: a message that loses
    its images is a new dict.
    """
    if image_history == "all":
        return list(conversation)
    if image_history != "last":
        raise ValueError(f"image_history must be 'all' or 'last', got {image_history!r}")
    latest = max((i for i, m in enumerate(conversation) if _has_image(m)), default=-1)
    kept = []
    for index, message in enumerate(conversation):
        if index < latest and _has_image(message):
            content = [p for p in message["content"] if p.get("type") != "image"]
            message = {**message, "content": content}
        kept.append(message)
    return kept
