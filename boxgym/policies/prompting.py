"""The one prompt renderer: chat messages + the env's tool schemas -> chat text and model inputs.

Every path that tokenizes a conversation (the hf, vllm and openai policies, SFT data, GRPO
prompts) goes through this module, so one state renders to the same tokens everywhere.

The chat template is TRL's tool-capable Qwen3-VL template (`trl.chat_template_utils.
qwen3_vl_chat_template`), vendored byte for byte as `chat_template.jinja`: Qwen2-VL's own
template has no tool support and drops images inside tool messages (TRL #5663). With it:

- tool schemas render into the system turn (`tools=`), Hermes style;
- an assistant message's raw text renders verbatim between `<|im_start|>assistant\\n` and
  `<|im_end|>`, tool calls included as `<tool_call>...</tool_call>` text;
- consecutive tool messages render inside ONE user turn, each as
  `\\n<tool_response>\\n...\\n</tool_response>`, images as `<|vision_start|><|image_pad|><|vision_end|>`.

Vision special tokens inside message text would be counted as image placeholders by the
processor ("Image features and image tokens do not match", TRL #6274, #3847), so text parts are
cleaned of them before rendering, and model outputs are cleaned by `clean_completion`.
"""

from __future__ import annotations

import os
from functools import cache
from importlib.resources import files
from typing import Any

from PIL import Image

from boxgym.policies.base import Conversation, Message

CHAT_TEMPLATE: str = (files("boxgym.policies") / "chat_template.jinja").read_text(encoding="utf-8")

END_OF_TURN = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
IMAGE_PLACEHOLDER = "<|image_pad|>"
# Tokens that make the processor expect image/video features; never valid in message text.
VISION_SPECIAL_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
ROLES = ("system", "user", "assistant", "tool")


def strip_vision_tokens(text: str) -> str:
    """`text` without any vision special token (they would desynchronise images and tokens)."""
    for token in VISION_SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text


def clean_completion(text: str) -> str:
    """A decoded completion as the raw assistant text: cut at the end of the turn, no vision tokens.

    Grounding tokens (`<|box_start|>`, `<|object_ref_start|>`, ...) are kept: the env parses them.
    """
    for stop in (END_OF_TURN, END_OF_TEXT):
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    return strip_vision_tokens(text)


def _content_parts(message: Message, index: int) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ValueError(
            f"message {index} ({message.get('role')!r}): content must be a list of parts or a "
            f"string, got {type(content).__name__}"
        )
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": strip_vision_tokens(str(part.get("text", "")))})
        elif kind == "image":
            image = part.get("image")
            if not isinstance(image, Image.Image):
                raise ValueError(
                    f"message {index} ({message.get('role')!r}): an image part must hold a "
                    f"PIL.Image, got {type(image).__name__}"
                )
            parts.append({"type": "image", "image": image})
        else:
            raise ValueError(
                f"message {index} ({message.get('role')!r}): unknown content part {part!r}; "
                "expected {'type': 'text'|'image', ...}"
            )
    return parts


def normalize_messages(messages: Conversation) -> Conversation:
    """A checked copy of `messages` in the multimodal format the template renders.

    String contents become one text part; text parts lose vision special tokens; roles, part
    types and images are validated. The input is not modified.

    Raises:
        ValueError: naming the offending message when the format is wrong.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation must be a non-empty list of messages")
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(
                f"message {index}: role must be one of {ROLES}, got "
                f"{message.get('role') if isinstance(message, dict) else message!r}"
            )
        out: Message = {"role": message["role"], "content": _content_parts(message, index)}
        if message["role"] == "tool":
            out["name"] = str(message.get("name", "tool"))
        normalized.append(out)
    return normalized


def conversation_images(messages: Conversation) -> list[Image.Image]:
    """The images of a conversation in the order their placeholders appear in the rendered text."""
    return [
        part["image"]
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    ]


def render_chat(
    processor: Any,
    messages: Conversation,
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool = True,
) -> str:
    """The chat text for `messages` with the tool schemas in the system turn.

    Each image appears as one `<|vision_start|><|image_pad|><|vision_end|>`; the processor expands
    the placeholder to the image's token count. `processor` may also be a bare tokenizer.
    """
    text = processor.apply_chat_template(
        normalize_messages(messages),
        tools=tools or None,  # as TRL: an empty list would render the tool preamble
        chat_template=CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )
    if isinstance(text, list):  # processors return a batch of one
        text = text[0]
    return text


def prepare_inputs(
    processor: Any,
    conversations: list[Conversation],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool = True,
    return_tensors: str = "pt",
):
    """Batched model inputs for `conversations`: left padded, images taken from the messages.

    Returns:
        The processor's `BatchFeature`: `input_ids`, `attention_mask` and, when any conversation
        holds an image, `pixel_values` and `image_grid_thw` (images in conversation order).

    Raises:
        ValueError: when a rendered text's image placeholders and its images disagree.
    """
    texts, images = [], []
    for index, conversation in enumerate(conversations):
        text = render_chat(processor, conversation, tools, add_generation_prompt)
        own = conversation_images(conversation)
        if text.count(IMAGE_PLACEHOLDER) != len(own):
            raise ValueError(
                f"conversation {index}: {text.count(IMAGE_PLACEHOLDER)} image placeholders in the "
                f"rendered text but {len(own)} images in the messages"
            )
        texts.append(text)
        images.extend(own)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    return processor(
        text=texts,
        images=[image.convert("RGB") for image in images] or None,
        padding=True,
        padding_side="left",
        return_tensors=return_tensors,
    )


def vision_token_ids(processor: Any) -> list[int]:
    """Ids of the vision special tokens, to suppress in generation (a sampled one breaks replay)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in VISION_SPECIAL_TOKENS]
    return [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]


def stop_token_ids(processor: Any) -> list[int]:
    """Ids that end an assistant turn: `<|im_end|>` and `<|endoftext|>`."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in (END_OF_TURN, END_OF_TEXT)]
    return [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]


@cache
def _load_processor_cached(path: str) -> Any:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    processor.chat_template = CHAT_TEMPLATE
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return processor


def load_processor(model_path: str | os.PathLike[str] | None = None) -> Any:
    """The processor of a checkpoint with boxgym's chat template installed and left padding.

    `model_path` None means the tiny default model. Loaded once per path and process.
    """
    from boxgym.models.cache import resolve_model

    return _load_processor_cached(resolve_model(model_path))
