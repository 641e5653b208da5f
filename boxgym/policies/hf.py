"""The `hf` policy: a transformers VLM (optionally with a PEFT LoRA adapter) acting through `generate`.

Conversations are rendered by `boxgym.policies.prompting` and generated in batches of
`batch_size` with left padding.

Sampling runs inside `generate` as logits processors: after the temperature, top-k and top-p
warpers, `CategoricalDraw` draws the token from the warped softmax by inverse CDF, and greedy
decoding keeps it (cheaper than `torch.multinomial` on a CPU, see its docstring). Each batch
draws from its own generator, seeded from `seed` and the number of batches drawn before, so
results are reproducible and the global RNG is untouched.

Prompts are not re-encoded from scratch: the policy keeps the keys and values of each prompt it
encodes and continues the next turn's prompt (and the shared system turn of every conversation)
from them, which on the tiny model on a CPU makes a 12-turn rollout about 1.7x faster at batch 1
and 16; see `HFPolicy._continue_from_cache`. `reuse_prompts=False` encodes every prompt in full.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from boxgym.policies.base import Conversation
from boxgym.policies.prompting import (
    END_OF_TURN,
    clean_completion,
    conversation_images,
    load_processor,
    prepare_inputs,
    stop_token_ids,
    vision_token_ids,
)

# Prompts whose keys and values a policy keeps at least (4 x batch_size when that is more).
KEPT_PROMPTS = 64

# A prompt: its token ids and the digests of its images, in order.
PromptKey = tuple[tuple[int, ...], tuple[str, ...]]

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


def image_digests(conversation: Conversation) -> tuple[str, ...]:
    """A digest of each image of `conversation` (mode, size and pixels), in prompt order."""
    digests = []
    for image in conversation_images(conversation):
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(f"{image.mode} {image.size}".encode())
        digests.append(digest.hexdigest())
    return tuple(digests)


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
        reuse_prompts: continue each prompt from the keys and values of the longest prompt
            already encoded that it extends (see `_continue_from_cache`); the texts are the
            same, the cost is memory for one prompt per live conversation.
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
        self.reuse_prompts = reuse_prompts
        self.batches_drawn = 0
        self.processor = load_processor(self.model_path)
        net = AutoModelForImageTextToText.from_pretrained(self.model_path, dtype=self.dtype)
        if adapter is not None:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, str(adapter)).merge_and_unload()
        self.adapter = None if adapter is None else str(adapter)
        self.model = net.to(self.device).eval()
        self._torch = torch
        self._end_of_turn_id = self.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self._vision_ids = torch.tensor(vision_token_ids(self.processor), device=self.device)
        self._pad_id = self.processor.tokenizer.pad_token_id
        # the module whose `rope_deltas` hold 3D rotary offsets (Qwen2-VL's inner model)
        self._rope_owner = getattr(self.model, "model", self.model)
        # prompt token ids -> (per layer (keys, values) of shape [kv heads, tokens, dim],
        # 3D rotary offset of the tokens after it), least recently used first
        self._prompts: dict[PromptKey, tuple[list[Any], int]] = {}

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
            if not self.reuse_prompts:
                ready = dict(inputs)
                output = self.model.generate(**ready, **self.generation_kwargs(generator))
            else:
                images = [image_digests(conversation) for conversation in conversations]
                ready, columns, used = self._continue_from_cache(inputs, images)
                output = self.model.generate(**ready, **self.generation_kwargs(generator))
                self._keep_prompts(ready, columns, images, used)
        # the rearranged prompt may be wider than the processor's
        new_tokens = output[:, ready["input_ids"].shape[1] :]
        decoded = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        return [clean_completion(text) for text in decoded]

    def _continue_from_cache(
        self, inputs, images: list[tuple[str, ...]]
    ) -> tuple[dict[str, Any], list[list[int]], set[PromptKey]]:
        """Generation inputs that continue each row from the longest prompt already encoded.

        Attention prefill grows with the square of the prompt, and in a rollout most of each
        prompt was encoded before: the system turn (instructions and tool schemas, about 1,400
        tokens with the env's defaults) is the same in every conversation, and turn t's prompt
        is turn t-1's prompt plus the reply and the env's answer. The keys and values of every
        prompt are kept (`_prompts`, by token ids and image digests: every image is the same
        placeholder token), and each row continues from the longest kept prompt its tokens
        start with; failing that, from the shared image-free first turn,
        encoded once. Rows are laid out `[pad, cached, pad, rest]`: positions are counted over
        unmasked tokens, so no real token's position or what it attends to changes.

        A row may continue from one of its own earlier prompts only while every row's uncached
        rest is free of images (their 3D rotary offsets then come from the kept prompt); a batch
        with new images continues from the shared first turn only, and its positions are
        computed over the whole prompt as usual.

        Returns:
            The `generate` keyword arguments (inputs rearranged, cache included), per row the
            columns of its prompt tokens, and the rows' own earlier prompts continued from (the
            new prompts supersede them), for `_keep_prompts`.
        """
        torch = self._torch
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rows, width = ids.shape
        lengths = [int(n) for n in mask.sum(dim=1)]
        real = [ids[r, width - lengths[r] :] for r in range(rows)]
        tokens = [(tuple(row.tolist()), own) for row, own in zip(real, images)]
        vision = [torch.isin(row, self._vision_ids) for row in real]
        cached = [self._longest_kept(row) for row in tokens]
        sizes = [len(key[0]) if key else 0 for key in cached]
        if any(bool(seen[size:].any()) for seen, size in zip(vision, sizes)) or not any(cached):
            cached = self._shared_first_turn(tokens, vision)
            used = set()
            # with images, `generate` computes the offsets over the whole prompts; without, 0
            rope_deltas = None if any(bool(seen.any()) for seen in vision) else [0] * rows
        else:
            rope_deltas = [self._prompts[key][1] if key else 0 for key in cached]
            used = {key for key in cached if key and key[1]}  # shared image-free turns stay
        sizes = [len(key[0]) if key else 0 for key in cached]
        if not any(sizes):
            columns = [list(range(width - n, width)) for n in lengths]
            return {**inputs, "past_key_values": self._empty_cache()}, columns, used
        # new layout: [pad, cached prefix, pad, rest] per row
        head = max(sizes)
        tail = max(n - c for n, c in zip(lengths, sizes))
        source = torch.full((rows, head + tail), -1, dtype=torch.long)
        columns = []
        for r, (n, c) in enumerate(zip(lengths, sizes)):
            start = width - n
            source[r, head - c : head] = torch.arange(start, start + c)
            source[r, head + tail - (n - c) :] = torch.arange(start + c, width)
            columns.append([*range(head - c, head), *range(head + tail - (n - c), head + tail)])
        valid = source >= 0
        gather = source.clamp(min=0).to(ids.device)
        valid = valid.to(ids.device)
        out = dict(inputs)
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.dim() == 2 and value.shape == (rows, width):
                moved = value.gather(1, gather)
                fill = self._pad_id if key == "input_ids" else 0
                out[key] = torch.where(valid, moved, torch.full_like(moved, fill))
        if rope_deltas is not None:
            # the kept prompts hold every image: no vision input, offsets from the kept prompts
            for key in ("pixel_values", "image_grid_thw"):
                out.pop(key, None)
            self._rope_owner.rope_deltas = torch.tensor(
                rope_deltas, dtype=torch.long, device=ids.device
            )[:, None]
        out["past_key_values"] = self._stacked_cache(cached, head)
        return out, columns, used

    def _longest_kept(self, row: PromptKey) -> PromptKey | None:
        """The longest kept prompt that `row` (tokens, image digests) extends, or None."""
        best = None
        tokens, images = row
        for key in self._prompts:
            size = len(key[0])
            if (
                size < len(tokens)
                and (best is None or size > len(best[0]))
                and tokens[size - 1] == key[0][-1]
                and tokens[:size] == key[0]
                and images[: len(key[1])] == key[1]
            ):
                best = key
        if best is not None:
            self._prompts[best] = self._prompts.pop(best)  # most recently used last
        return best

    def _shared_first_turn(self, rows: list[PromptKey], vision) -> list[PromptKey | None]:
        """Per row, the shared first turn to continue from (encoded now if new), or Nones.

        Applies when every row opens with the same image-free turn and goes on after it.
        """
        first = rows[0][0]
        if self._end_of_turn_id not in first:
            return [None] * len(rows)
        size = first.index(self._end_of_turn_id) + 1
        prefix = first[:size]
        if size < 2 or bool(vision[0][:size].any()):
            return [None] * len(rows)
        if any(len(row) <= size or row[:size] != prefix for row, _ in rows):
            return [None] * len(rows)
        key = (prefix, ())
        if key not in self._prompts:
            ids = self._torch.tensor([prefix], device=self.device)
            out = self.model(
                input_ids=ids,
                attention_mask=self._torch.ones_like(ids),
                use_cache=True,
                logits_to_keep=1,
            )
            layers = [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]
            self._remember(key, layers, 0)
        return [key] * len(rows)

    def _remember(self, key: PromptKey, layers: list[Any], rope_delta: int) -> None:
        self._prompts[key] = (layers, rope_delta)
        limit = max(KEPT_PROMPTS, 4 * self.batch_size)
        while len(self._prompts) > limit:
            self._prompts.pop(next(iter(self._prompts)))

    def _empty_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _stacked_cache(self, cached, head: int):
        """A `DynamicCache` of `head` columns: each row's kept keys and values, right aligned."""
        torch = self._torch
        cache = self._empty_cache()
        some = next(key for key in cached if key)
        for index, (keys, _) in enumerate(self._prompts[some][0]):
            heads, _, dim = keys.shape
            shape = (len(cached), heads, head, dim)
            stacked_keys = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            stacked_values = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            for r, key in enumerate(cached):
                if key:
                    row_keys, row_values = self._prompts[key][0][index]
                    stacked_keys[r, :, head - len(key[0]) :] = row_keys
                    stacked_values[r, :, head - len(key[0]) :] = row_values
            cache.update(stacked_keys, stacked_values, index)
        return cache

    def _keep_prompts(
        self,
        inputs: dict[str, Any],
        columns: list[list[int]],
        images: list[tuple[str, ...]],
        superseded: set[PromptKey],
    ) -> None:
        """Keep each row's prompt keys and values (from the cache `generate` filled).

        The prompts in `superseded` are dropped: each was extended by a row's new prompt.
        """
        torch = self._torch
        for key in superseded:
            self._prompts.pop(key, None)
        cache = inputs["past_key_values"]
        deltas = getattr(self._rope_owner, "rope_deltas", None)
        for r, cols in enumerate(columns):
            index = torch.tensor(cols, device=self.device)
            key = (tuple(inputs["input_ids"][r, index].tolist()), images[r])
            layers = [
                (
                    layer.keys[r].index_select(1, index),
                    layer.values[r].index_select(1, index),
                )
                for layer in cache.layers
            ]
            delta = 0 if deltas is None else int(deltas[r if deltas.shape[0] > 1 else 0, 0])
            self._remember(key, layers, delta)
