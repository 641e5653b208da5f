"""The model under study, and the three things studies ask of it.

`Lab` loads the model once (through the `hf` policy: the same loading, adapter merging, device
and dtype choices, prompt renderer and batched greedy decoding as rollouts), and gives studies:

- `ask(conversations)`: the model's greedy replies;
- `completion_bits(rows)`: per row, the summed surprisal (bits) of its assistant tokens, exactly
  the tokens SFT trains on (rendered by the SFT collator, `boxgym.train.collator`);
- `hidden_features(conversations)`: mean-pooled hidden states at every stage (vision tower
  output, after the merger, each language-model layer at the image tokens and at the last prompt
  token), for linear probes.

Works the same on the tiny models on a CPU and on `Qwen/Qwen2-VL-2B-Instruct` on a GPU.
"""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

LN2 = math.log(2.0)


class Lab:
    """A model (and optional LoRA adapter) loaded once for a study.

    Args:
        model: checkpoint path, hub id, "tiny" or "seeing" (`resolve_model` names).
        adapter: a PEFT LoRA adapter directory, merged for inference.
        device: "auto", "cpu", "cuda", ...
        dtype: "auto", "bfloat16", "float16" or "float32".
        batch_size: conversations per forward pass or decoding batch.
        max_new_tokens: the reply budget of `ask`.
    """

    def __init__(
        self,
        model: str | None = None,
        adapter: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int = 32,
    ) -> None:
        self.model_name = model
        self.adapter = adapter
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._policy: Any = None

    @property
    def policy(self) -> Any:
        """The `HFPolicy` (greedy), loaded on first use."""
        if self._policy is None:
            from boxgym.models.cache import resolve_model
            from boxgym.policies.hf import HFPolicy

            self._policy = HFPolicy(
                model=resolve_model(self.model_name),
                adapter=self.adapter,
                device=self.device,
                dtype=self.dtype,
                batch_size=self.batch_size,
                temperature=0.0,
                max_new_tokens=self.max_new_tokens,
            )
        return self._policy

    @property
    def processor(self) -> Any:
        """The policy's processor, or the model's own when the policy has none (scripted)."""
        processor = getattr(self.policy, "processor", None)
        if processor is None:
            from boxgym.models.cache import resolve_model
            from boxgym.policies.prompting import load_processor

            processor = load_processor(resolve_model(self.model_name))
        return processor

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def describe(self) -> dict[str, Any]:
        """Model, adapter, device and dtype as they were actually loaded."""
        policy = self.policy
        return {
            "model": getattr(policy, "model_path", getattr(policy, "name", None)),
            "model_argument": self.model_name,
            "adapter": getattr(policy, "adapter", None),
            "device": getattr(policy, "device", None),
            "dtype": str(getattr(policy, "dtype", None)).removeprefix("torch."),
        }

    def ask(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        """The greedy reply to each conversation (no tools offered)."""
        return self.policy.act(conversations, tools=[])

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` (special tokens included as written)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def image_tokens(self, image: Image.Image) -> int:
        """Image tokens (after the 2x2 merge) the processor gives `image`."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        proc = self.processor.image_processor
        size = getattr(proc, "size", None) or {}
        min_pixels = size.get("shortest_edge") or getattr(proc, "min_pixels", None) or 3136
        max_pixels = size.get("longest_edge") or getattr(proc, "max_pixels", None) or 12845056
        patch = int(getattr(proc, "patch_size", 14))
        merge = int(getattr(proc, "merge_size", 2))
        w, h = image.size
        rh, rw = smart_resize(h, w, patch * merge, min_pixels, max_pixels)
        return (rh // (patch * merge)) * (rw // (patch * merge))

    def completion_bits(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per row, the surprisal of its assistant tokens under the model.

        Rows are SFT rows: `{"messages", "tools"}` (images inside the messages, or in `images`).
        Each is rendered by the SFT collator (tool schemas in the system turn, labels on the
        assistant turns only, their `<|im_end|>` included), so the tokens scored are exactly those
        SFT trains on.

        Returns:
            Per row `{"bits": summed -log2 p, "tokens": assistant tokens, "token_bits": [...]}`.
        """
        import torch

        from boxgym.train.collator import IGNORE_INDEX, ConversationCollator

        collator = ConversationCollator(self.processor)
        model = self.policy.model
        out: list[dict[str, Any]] = []
        for start in range(0, len(rows), self.batch_size):
            batch = collator(rows[start : start + self.batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
            labels = batch.pop("labels")
            targets = labels[:, 1:]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = targets != IGNORE_INDEX
            with torch.inference_mode():
                logits = model(**batch, use_cache=False, logits_to_keep=keep).logits
            logits = logits.reshape(-1, logits.shape[-1]).float()
            wanted = targets[keep[:, :-1]]
            nats = -torch.log_softmax(logits, dim=-1).gather(1, wanted[:, None])[:, 0]
            bits = (nats / LN2).double().cpu()
            row_of = keep.nonzero()[:, 0].cpu()
            for r in range(labels.shape[0]):
                own = bits[row_of == r]
                out.append(
                    {
                        "bits": float(own.sum()),
                        "tokens": int(own.numel()),
                        "token_bits": [round(float(b), 6) for b in own],
                    }
                )
        return out

    def hidden_features(self, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """Mean-pooled hidden states per stage for conversations with exactly one image each.

        Returns:
            `{stage: array [conversations, width]}` with stages `vision` (the vision tower's
            last block, before the merger, over the image's patches), `merger` (after the merger,
            over the image tokens), `layer_{i}_image` and `layer_{i}_last` for i = 0 (the
            embeddings the language model reads) .. number of layers.
        """
        import numpy as np
        import torch

        from boxgym.policies.prompting import prepare_inputs

        model = self.policy.model
        inner = getattr(model, "model", model)
        visual = inner.visual
        captured: dict[str, Any] = {}

        def hook(_module, _inputs, output):
            captured["vision"] = output.last_hidden_state
            captured["merger"] = output.pooler_output

        handle = visual.register_forward_hook(hook)
        image_token = model.config.image_token_id
        stages: dict[str, list[Any]] = {}
        try:
            for start in range(0, len(conversations), self.batch_size):
                chunk = conversations[start : start + self.batch_size]
                inputs = prepare_inputs(self.processor, chunk, None).to(model.device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
                grid = inputs["image_grid_thw"]
                if grid.shape[0] != len(chunk):
                    raise ValueError("hidden_features needs exactly one image per conversation")
                with torch.inference_mode():
                    outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1)
                patches = grid.prod(-1).tolist()
                merged = [p // visual.spatial_merge_size**2 for p in patches]
                for name, sizes in (("vision", patches), ("merger", merged)):
                    parts = torch.split(captured[name], sizes)
                    stages.setdefault(name, []).extend(p.float().mean(0).cpu() for p in parts)
                is_image = inputs["input_ids"] == image_token
                for i, hidden in enumerate(outputs.hidden_states):
                    hidden = hidden.float()
                    pooled = (hidden * is_image[..., None]).sum(1) / is_image.sum(1, keepdim=True)
                    stages.setdefault(f"layer_{i}_image", []).extend(pooled.cpu())
                    stages.setdefault(f"layer_{i}_last", []).extend(hidden[:, -1].cpu())
        finally:
            handle.remove()
        return {name: np.stack([v.numpy() for v in values]) for name, values in stages.items()}
