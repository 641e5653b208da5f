"""`ChatBatcher`: training batches of whole conversations, rendered as every policy renders them.

A `Chat` example (`boxgym.models.marking_skills`) is a conversation up to a reply: it is rendered
by the one prompt renderer (`boxgym.policies.prompting.render_chat`, the env's tool schemas in
the system turn), so a training row is token for token the prompt a rollout gives the model at
that state, followed by the reply. Rows are right padded; only reply tokens are labels.

Rows that start with the same system turn (the env's instructions and tool schemas, about 1,500
tokens) are batched together and carry that shared prefix as `prefix_ids`, so the loss runs it
once per batch (`boxgym.models.loss.prefix_forward`).
"""

from __future__ import annotations

from typing import Any

from boxgym.models.marking_skills import Chat

USER_TURN = "<|im_start|>user"


class ChatBatcher:
    """Turns `Chat` examples into model inputs with the reply tokens as labels.

    Args:
        processor: the checkpoint's processor (boxgym's chat template is used whatever it holds).
        digit_weight: loss weight of digit tokens in replies that hold boxes.
    """

    def __init__(self, processor: Any, digit_weight: float = 1.0) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.digit_weight = digit_weight
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.pad_id = self.tokenizer.pad_token_id
        self.digit_ids = {self.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
        self.box_id = self.tokenizer.convert_tokens_to_ids("<|box_start|>")
        self._prefix_cache: dict[str, list[int]] = {}

    def prompt_text(self, example: Chat) -> str:
        from boxgym.policies.prompting import render_chat

        return render_chat(self.processor, example.messages, example.tools)

    def reply_ids(self, reply: str) -> list[int]:
        return self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.end_id]

    def batches(self, examples: list[Chat]) -> list[dict[str, Any]]:
        """The examples as one batch per shared system turn (rows without one together)."""
        texts = [self.prompt_text(e) for e in examples]
        groups: dict[str, list[int]] = {}
        for index, text in enumerate(texts):
            head = text[: text.index(USER_TURN)] if text.startswith("<|im_start|>system") else ""
            groups.setdefault(head, []).append(index)
        return [
            self.batch([examples[i] for i in rows], [texts[i] for i in rows], head)
            for head, rows in groups.items()
        ]

    def prefix_ids(self, head: str) -> list[int]:
        if head not in self._prefix_cache:
            self._prefix_cache[head] = self.tokenizer(head, add_special_tokens=False)["input_ids"]
        return self._prefix_cache[head]

    def batch(self, examples: list[Chat], texts: list[str], head: str = "") -> dict[str, Any]:
        """Model inputs of examples whose prompts all start with `head` (right padded)."""
        import torch

        images = [
            part["image"].convert("RGB")
            for e in examples
            for m in e.messages
            for part in m["content"]
            if part["type"] == "image"
        ]
        self.tokenizer.padding_side = "right"
        encoded = self.processor(
            text=texts, images=images or None, return_tensors="pt", padding=True
        )
        rows, labels, weights = [], [], []
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        for ids, length, example in zip(encoded["input_ids"], lengths, examples):
            ids = ids[:length].tolist()
            reply = self.reply_ids(example.reply)
            rows.append(ids + reply)
            labels.append([-100] * len(ids) + reply)
            weights.append([0.0] * len(ids) + self.reply_weights(reply))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        label_t = torch.full((len(rows), width), -100, dtype=torch.long)
        weight_t = torch.zeros((len(rows), width))
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, lab, w) in enumerate(zip(rows, labels, weights)):
            input_ids[i, : len(r)] = torch.tensor(r)
            label_t[i, : len(r)] = torch.tensor(lab)
            weight_t[i, : len(r)] = torch.tensor(w)
            mask[i, : len(r)] = 1
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "mm_token_type_ids": (input_ids == self.image_id).long(),
            "labels": label_t,
            "weights": weight_t,
        }
        if images:
            batch["pixel_values"] = encoded["pixel_values"]
            batch["image_grid_thw"] = encoded["image_grid_thw"]
        if head:
            prefix = self.prefix_ids(head)
            if input_ids[:, : len(prefix)].ne(torch.tensor(prefix)).any():
                raise ValueError("a prompt does not start with its group's system turn")
            batch["prefix_ids"] = torch.tensor([prefix])
        return batch

    def reply_weights(self, reply: list[int]) -> list[float]:
        """Loss weight of each reply token: `digit_weight` on the digits of a reply with boxes."""
        if self.digit_weight == 1.0 or self.box_id not in reply:
            return [1.0] * len(reply)
        return [self.digit_weight if t in self.digit_ids else 1.0 for t in reply]
