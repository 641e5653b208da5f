"""SFT batches rendered by THE prompt renderer, with the loss on assistant tokens only.

TRL's own vision collator does not pass `tools=` to the chat template, so it would render a
different system turn than rollouts and GRPO do. This collator renders every conversation with
`boxgym.policies.prompting.prepare_inputs` and the conversation's own tool schemas (exactly what
the hf policy and GRPO's prompt tokenizer see), then keeps labels only inside assistant turns:
the tokens after `<|im_start|>assistant\\n` up to and including `<|im_end|>`. System, user, tool
results and image tokens are set to -100.
"""

from __future__ import annotations

import json
from typing import Any

IGNORE_INDEX = -100


def detach_images(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages with each image part reduced to `{"type": "image"}`, and the images in order.

    This is the `messages` + `images` row format of TRL's vision datasets (Arrow cannot hold a
    PIL image inside free-form message content).
    """
    stripped, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for part in content:
            if part.get("type") == "image":
                images.append(part["image"])
                parts.append({"type": "image", "text": None})
            else:
                parts.append({"type": "text", "text": str(part.get("text", ""))})
        out = {"role": message["role"], "content": parts, "name": message.get("name")}
        stripped.append(out)
    return stripped, images


def attach_images(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """The inverse of `detach_images`: image parts get their images back, in order.

    Raises:
        ValueError: when the number of image parts and images differ.
    """
    pending = list(images)
    out = []
    for message in messages:
        parts = []
        for part in message["content"]:
            if part.get("type") == "image":
                if not pending:
                    raise ValueError("a row has more image parts in its messages than images")
                parts.append({"type": "image", "image": pending.pop(0)})
            else:
                parts.append({"type": "text", "text": part.get("text") or ""})
        restored = {"role": message["role"], "content": parts}
        if message["role"] == "tool":
            restored["name"] = message.get("name") or "tool"
        out.append(restored)
    if pending:
        raise ValueError(f"a row has {len(pending)} more images than image parts in its messages")
    return out


def assistant_token_mask(input_ids: list[int], turn_start: list[int], turn_end: int) -> list[int]:
    """1 for tokens inside assistant turns (their end-of-turn token included), 0 elsewhere.

    Args:
        input_ids: one unpadded or padded sequence.
        turn_start: the ids of `<|im_start|>assistant\\n`.
        turn_end: the id of `<|im_end|>`.
    """
    mask = [0] * len(input_ids)
    width = len(turn_start)
    i = 0
    while i <= len(input_ids) - width:
        if input_ids[i : i + width] == turn_start:
            j = i + width
            while j < len(input_ids):
                mask[j] = 1
                if input_ids[j] == turn_end:
                    break
                j += 1
            i = j + 1
        else:
            i += 1
    return mask


def last_span(mask: list[bool]) -> list[bool]:
    """`mask` with only its last run of True left True."""
    end = max(i for i, m in enumerate(mask) if m) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [start <= i < end for i in range(len(mask))]


class ConversationCollator:
    """Collates rows `{"messages", "images", "tools"}` into model inputs with masked labels.

    `messages` may hold PIL images in place, or `{"type": "image"}` parts filled from `images`
    (the Arrow form); `tools` is a list of JSON schemas or its JSON text. Each row is rendered
    on its own (rows may carry different tool sets) and the batch is left padded, like the hf
    policy's inputs. Every assistant token is a label, or with `last_turn_only` true in the
    row those of the last assistant turn only (a turn of an `image_history: last` episode).
    """

    def __init__(self, processor: Any, max_length: int | None = None) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.turn_start = self.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.turn_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.max_length = max_length

    def encode(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row's `input_ids`, `labels` and image tensors (no padding)."""
        from boxgym.policies.prompting import prepare_inputs

        messages = row["messages"]
        if any(
            p.get("type") == "image" and p.get("image") is None
            for m in messages
            for p in m["content"]
        ):
            messages = attach_images(messages, row.get("images") or [])
        tools = row.get("tools")
        if isinstance(tools, str):
            tools = json.loads(tools)
        features = prepare_inputs(
            self.processor, [messages], tools or None, add_generation_prompt=False
        )
        ids = features["input_ids"][0].tolist()
        mask = assistant_token_mask(ids, self.turn_start, self.turn_end)
        if not any(mask):
            raise ValueError("an SFT row has no assistant turn: nothing to learn from it")
        if row.get("last_turn_only"):
            mask = last_span(mask)
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(
                f"an SFT row renders to {len(ids)} tokens > max_length {self.max_length}: raise "
                "trainer.max_length, lower the image pixel cap, or shorten the episodes"
            )
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        out: dict[str, Any] = {"input_ids": ids, "labels": labels, "per_token": {}, "images": {}}
        for key, value in features.items():
            if key in ("input_ids", "attention_mask"):
                continue
            if value.dim() == 2 and value.shape[0] == 1 and value.shape[1] == len(ids):
                out["per_token"][key] = value[0].tolist()  # e.g. mm_token_type_ids
            else:
                out["images"][key] = value  # pixel_values, image_grid_thw
        return out

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        encoded = [self.encode(row) for row in rows]
        width = max(len(e["input_ids"]) for e in encoded)
        input_ids, labels, attention = [], [], []
        per_token: dict[str, list[list[int]]] = {}
        for e in encoded:
            pad = width - len(e["input_ids"])
            input_ids.append([self.pad_id] * pad + e["input_ids"])
            labels.append([IGNORE_INDEX] * pad + e["labels"])
            attention.append([0] * pad + [1] * len(e["input_ids"]))
            for key, values in e["per_token"].items():
                per_token.setdefault(key, []).append([0] * pad + values)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        for key, rows in per_token.items():
            if len(rows) == len(encoded):
                batch[key] = torch.tensor(rows, dtype=torch.long)
        for key in {k for e in encoded for k in e["images"]}:
            batch[key] = torch.cat([e["images"][key] for e in encoded if key in e["images"]], dim=0)
        return batch
