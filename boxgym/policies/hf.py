"""The `hf` policy: a transformers VLM (optionally with a PEFT LoRA adapter) decoding in batches.

Conversations are rendered by `boxgym.policies.prompting` and decoded `batch_size` at a time
with left padding, by the policy's own loop over the model's forward and KV cache
(`boxgym.policies.decode_loop`): per step one token per live row, logits for the last position
only, the vision special tokens banned, temperature / top-k / top-p, then an exact draw from the
softmax (`boxgym.policies.decoding.pick_tokens`); rows leave the batch at `<|im_end|>`. Greedy
decoding gives `generate`'s tokens (tested, logits included).

Every reply draws from its own random stream, seeded from `seed`, the prompt and how many
replies to that prompt were drawn before: a conversation gets the same reply alone or inside any
batch, the global RNG is untouched, and `reseed` restarts the streams.

Prompts are not re-encoded from scratch: the policy keeps the keys and values of each prompt it
encodes and continues the next turn's prompt (and the shared system turn of every conversation)
from them (`boxgym.policies.prompt_cache`). `reuse_prompts=False` encodes every prompt in full.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from boxgym.choices import DTYPES
from boxgym.policies.base import Conversation
from boxgym.policies.decode_loop import DecodeLoop
from boxgym.policies.decoding import UNIFORMS_PER_STEP, pick_tokens
from boxgym.policies.image_cache import image_key, with_image_cache
from boxgym.policies.prompt_cache import PromptCache
from boxgym.policies.prompting import (
    END_OF_TURN,
    clean_completion,
    conversation_images,
    load_processor,
    prepare_inputs,
    stop_token_ids,
    vision_token_ids,
)


def pick_device(device: str = "auto") -> str:
    """`device` itself, or for "auto" the best available: cuda, then mps, then cpu."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str):
    """The torch dtype: "auto" means bfloat16 on a GPU that supports it, float32 otherwise."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def image_digests(conversation: Conversation) -> tuple[str, ...]:
    """A digest of each image of `conversation` (mode, size and pixels), in prompt order."""
    return tuple(image_key(image).hex() for image in conversation_images(conversation))


class HFPolicy:
    """A transformers policy over Qwen2-VL-style checkpoints, decoding with its own loop.

    Args:
        model: checkpoint path or hub name; None means the tiny offline model.
        adapter: directory of a PEFT LoRA adapter to apply (merged for inference).
        device: "auto", "cpu", "cuda", "cuda:1", "mps", ...
        dtype: "auto" (bf16 on a capable GPU, else fp32), "bfloat16", "float16" or "float32".
        batch_size: conversations decoded together.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass (1.0 is off).
        top_k: top-k sampling (0 is off).
        max_new_tokens: tokens generated per turn at most.
        seed: base seed of the per-reply random streams (see `_row_uniforms`); the same seed
            and calls give the same texts on the same device.
        reuse_prompts: continue each prompt from the keys and values of the longest prompt
            already encoded that it extends (see `PromptCache.continue_from`); the texts are
            the same, the cost is memory for one prompt per live conversation.
    """

    name = "hf"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        adapter: str | os.PathLike[str] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 256,
        seed: int = 0,
        reuse_prompts: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        import torch
        from transformers import AutoModelForImageTextToText

        from boxgym.models.cache import resolve_model

        self.model_path = resolve_model(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.tokens_generated = 0  # reply tokens so far (the progress bar's tokens/s)
        self.seed = seed
        self.reuse_prompts = reuse_prompts
        self.batches_drawn = 0
        # prompt digest -> how many times a reply to it was drawn (each draw has its own stream)
        self._draws: dict[bytes, int] = {}
        # the shared processor, but each distinct image is processed once (every turn re-renders
        # the whole conversation, images included)
        self.processor = with_image_cache(load_processor(self.model_path))
        net = AutoModelForImageTextToText.from_pretrained(self.model_path, dtype=self.dtype)
        if adapter is not None:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, str(adapter)).merge_and_unload()
        self.adapter = None if adapter is None else str(adapter)
        self.model = net.to(self.device).eval()
        self._torch = torch
        self._vision_ids = torch.tensor(vision_token_ids(self.processor), device=self.device)
        self._stop_ids = torch.tensor(stop_token_ids(self.processor), device=self.device)
        self._pad_id = self.processor.tokenizer.pad_token_id
        self._decoder = DecodeLoop(self.model, self.device, self.dtype)
        self._prompt_cache = PromptCache(
            self.model,
            self._decoder.rope_owner,
            self._vision_ids,
            self.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN),
            self._pad_id,
            self.device,
        )

    @property
    def _prompts(self) -> dict:
        """The kept prompts (`PromptCache.prompts`), least recently used first."""
        return self._prompt_cache.prompts

    @property
    def _head(self) -> Any:
        """The LM head weight the decode loop applies; None runs the whole model for logits."""
        return self._decoder.head

    @_head.setter
    def _head(self, weight: Any) -> None:
        self._decoder.head = weight

    def act(
        self,
        conversations: list[Conversation],
        tools: list[dict[str, Any]],
        tasks: list[Any] | None = None,
    ) -> list[str]:
        """One raw assistant text per conversation, generated `batch_size` at a time."""
        texts: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            texts.extend(self._generate(conversations[start : start + self.batch_size], tools))
        return texts

    def _generate(
        self, conversations: list[Conversation], tools: list[dict[str, Any]]
    ) -> list[str]:
        replies = self._reply_tokens(conversations, tools)
        self.tokens_generated += sum(len(r) for r in replies)
        decoded = self.processor.tokenizer.batch_decode(replies, skip_special_tokens=False)
        return [clean_completion(text) for text in decoded]

    def _reply_tokens(
        self, conversations: list[Conversation], tools: list[dict[str, Any]]
    ) -> list[list[int]]:
        """Per conversation, the generated token ids (up to and including a stop token)."""
        torch = self._torch
        inputs = prepare_inputs(self.processor, conversations, tools).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        images = [image_digests(conversation) for conversation in conversations]
        settings = {
            "pick": self._pick,
            "stop_ids": self._stop_ids,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
        }
        with torch.inference_mode():
            if not self.reuse_prompts:
                ready = {**inputs, "past_key_values": self._empty_cache()}
                return self._decoder.decode(ready, self._row_uniforms(inputs, images), **settings)
            ready, columns, used = self._prompt_cache.continue_from(
                inputs, images, empty_cache=self._empty_cache, batch_size=self.batch_size
            )
            return self._decoder.decode(
                ready,
                self._row_uniforms(inputs, images),
                after_prefill=lambda: self._prompt_cache.keep(
                    ready, columns, images, used, self.batch_size
                ),
                **settings,
            )

    def reseed(self, seed: int) -> None:
        """Restart every random stream from `seed`, as if the policy had just been built."""
        self.seed = seed
        self.batches_drawn = 0
        self._draws.clear()

    def _row_uniforms(self, inputs, images: list[tuple[str, ...]]):
        """Per row, uniform numbers [max_new_tokens, UNIFORMS_PER_STEP]: step t uses row t.

        A row's numbers depend only on the seed, its prompt (tokens and image digests) and how
        many replies to that prompt the policy drew before, so a conversation gets the same reply
        alone or in any batch, and repeated prompts (a group of one task) get fresh draws.
        """
        torch = self._torch
        self.batches_drawn += 1
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rows = []
        for r, own in enumerate(images):
            tokens = ids[r][mask[r].bool()].to("cpu", torch.int64).numpy().tobytes()
            digest = hashlib.blake2b(tokens, digest_size=16)
            digest.update("\n".join(own).encode())
            prompt = digest.digest()
            drawn = self._draws.get(prompt, 0)
            self._draws[prompt] = drawn + 1
            stream = hashlib.blake2b(prompt, digest_size=8)
            stream.update(f"{self.seed} {drawn}".encode())
            generator = torch.Generator().manual_seed(int.from_bytes(stream.digest()) >> 1)
            rows.append(
                torch.rand(
                    (self.max_new_tokens, UNIFORMS_PER_STEP),
                    generator=generator,
                    dtype=torch.float64,
                )
            )
        return torch.stack(rows)

    def _pick(self, logits, uniforms):
        """One token per row from next-token logits [rows, vocab], with this policy's sampling
        (`pick_tokens`; the logits are modified in place)."""
        return pick_tokens(
            logits, uniforms, self._vision_ids, self.temperature, self.top_k, self.top_p
        )

    def _empty_cache(self):
        """A fresh KV cache with room for a reply of `max_new_tokens`."""
        return self._decoder.empty_cache(self.max_new_tokens)
