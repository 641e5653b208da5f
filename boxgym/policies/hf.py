"""The `hf` policy: a transformers VLM (optionally with a PEFT LoRA adapter) acting through `generate`.

Conversations are rendered by `boxgym.policies.prompting` and generated in batches of
`batch_size` with left padding.

Sampling runs inside `generate` as logits processors: after the temperature, top-k and top-p
warpers, `CategoricalDraw` draws the token from the warped softmax by inverse CDF, and greedy
decoding keeps it (cheaper than `torch.multinomial` on a CPU, see its docstring). Each batch
draws from its own generator, seeded from `seed` and the number of batches drawn before, so
results are reproducible and the global RNG is untouched.
"""

from __future__ import annotations

import os
from typing import Any

from boxgym.policies.base import Conversation
from boxgym.policies.prompting import (
    clean_completion,
    load_processor,
    prepare_inputs,
    stop_token_ids,
    vision_token_ids,
)

DTYPES = ("auto", "bfloat16", "float16", "float32")


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


class BannedTokens:
    """A logits processor that makes some tokens impossible (here: the vision special tokens).

    Same effect as `generate(suppress_tokens=...)`, which rebuilds a vocabulary-sized mask with
    `torch.isin` at every step (about a tenth of the tiny model's decode time on a CPU); this
    writes -inf into the few banned columns instead.
    """

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = list(token_ids)

    def __call__(self, input_ids, scores):
        scores[:, self.token_ids] = float("-inf")
        return scores


class CategoricalDraw:
    """Draws one token per row from softmax(logits) by inverse CDF; greedy decoding then picks it.

    Returns logits that are 0 at the drawn token and -inf elsewhere. One uniform number per row
    (a cumulative sum and a binary search) instead of `torch.multinomial`, whose CPU kernel draws
    an exponential variate for every vocabulary entry: about 3 ms per row and step over Qwen's
    151k tokens, half of the tiny model's batched decode time. Banned or filtered tokens (-inf)
    have zero mass and are never drawn.
    """

    def __init__(self, generator) -> None:
        self.generator = generator

    def __call__(self, input_ids, scores):
        import torch

        cdf = torch.softmax(scores.float(), dim=-1).cumsum_(dim=-1)
        uniform = (
            torch.rand((scores.shape[0], 1), generator=self.generator, device=scores.device)
            * cdf[:, -1:]
        )
        picks = torch.searchsorted(cdf, uniform, right=True).clamp_(max=scores.shape[-1] - 1)
        drawn = torch.full_like(scores, float("-inf"))
        return drawn.scatter_(1, picks, 0.0)


class HFPolicy:
    """A transformers `generate` policy over Qwen2-VL-style checkpoints.

    Args:
        model: checkpoint path or hub name; None means the tiny offline model.
        adapter: directory of a PEFT LoRA adapter to apply (merged for inference).
        device: "auto", "cpu", "cuda", "cuda:1", "mps", ...
        dtype: "auto" (bf16 on a capable GPU, else fp32), "bfloat16", "float16" or "float32".
        batch_size: conversations per `generate` call.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass (1.0 is off).
        top_k: top-k sampling (0 is off).
        max_new_tokens: tokens generated per turn at most.
        seed: base seed; the same seed and calls give the same texts on the same device.
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

        from boxgym.testing.tiny_model import resolve_model

        self.model_path = resolve_model(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batches_drawn = 0
        self.processor = load_processor(self.model_path)
        net = AutoModelForImageTextToText.from_pretrained(self.model_path, dtype=self.dtype)
        if adapter is not None:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, str(adapter)).merge_and_unload()
        self.adapter = None if adapter is None else str(adapter)
        self.model = net.to(self.device).eval()
        self._torch = torch

    def generation_kwargs(self, generator=None) -> dict[str, Any]:
        """The knobs as `generate` keyword arguments (overriding the checkpoint's defaults).

        Decoding is greedy over processed logits: banned vision tokens, then for sampling the
        temperature, top-k and top-p warpers and a categorical draw from `generator`.
        """
        from transformers import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        processors: list[Any] = [BannedTokens(vision_token_ids(self.processor))]
        if self.temperature > 0:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
            processors.append(CategoricalDraw(generator))
        return {
            "max_new_tokens": self.max_new_tokens,
            "eos_token_id": stop_token_ids(self.processor),
            "pad_token_id": self.processor.tokenizer.pad_token_id,
            "logits_processor": LogitsProcessorList(processors),
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }

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
        torch = self._torch
        inputs = prepare_inputs(self.processor, conversations, tools).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        batch_seed = (self.seed * 1_000_003 + self.batches_drawn) % (2**63)
        self.batches_drawn += 1
        generator = torch.Generator(device=self.device).manual_seed(batch_seed)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **self.generation_kwargs(generator))
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        decoded = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        return [clean_completion(text) for text in decoded]
