"""The `hf` policy: a transformers VLM (optionally with a PEFT LoRA adapter) decoding in batches.

Conversations are rendered by `boxgym.policies.prompting` and decoded `batch_size` at a time
with left padding, by the policy's own loop over the model's forward and KV cache
(`HFPolicy._decode`): per step one token per live row, logits for the last position only, the
vision special tokens banned, temperature / top-k / top-p, then an exact draw from the softmax
(`draw_by_rejection`, or `draw_from` after top-k / top-p); rows leave the batch at `<|im_end|>`. On the tiny model on a CPU this
is what makes batching pay: transformers `generate`'s fixed per-step cost dominated at batch 1
and its vocabulary-sized passes (a full cumulative sum, an argmax over processed logits) at
batch 16. Greedy decoding gives `generate`'s tokens (tested, logits included).

Every reply draws from its own random stream, seeded from `seed`, the prompt and how many
replies to that prompt were drawn before: a conversation gets the same reply alone or inside any
batch, the global RNG is untouched, and `reseed` restarts the streams.

Prompts are not re-encoded from scratch: the policy keeps the keys and values of each prompt it
encodes and continues the next turn's prompt (and the shared system turn of every conversation)
from them; see `HFPolicy._continue_from_cache`. `reuse_prompts=False` encodes every prompt in
full.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from boxgym.policies.base import Conversation
from boxgym.policies.decoding import (
    UNIFORMS_PER_STEP,
    draw_by_rejection,
    draw_from,
    roomy_layer,
)
from boxgym.policies.image_cache import image_key, with_image_cache
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

# Rows from which the LM head runs as oneDNN's linear over a packed weight (see `_next_logits`).
PACKED_HEAD_MIN_ROWS = 4

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
        self._end_of_turn_id = self.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self._vision_ids = torch.tensor(vision_token_ids(self.processor), device=self.device)
        self._stop_ids = torch.tensor(stop_token_ids(self.processor), device=self.device)
        self._pad_id = self.processor.tokenizer.pad_token_id
        # the module whose `rope_deltas` hold 3D rotary offsets (Qwen2-VL's inner model)
        self._rope_owner = getattr(self.model, "model", self.model)
        head = self.model.get_output_embeddings()
        # the LM head's weight when the head is a plain bias-free projection after `.model`
        self._head = (
            head.weight
            if self._rope_owner is not self.model and getattr(head, "bias", None) is None
            else None
        )
        # on a CPU in float32 with oneDNN, the head runs packed from PACKED_HEAD_MIN_ROWS rows up
        self._packable = (
            self._head is not None
            and self.device == "cpu"
            and self.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        )
        self._packed = None  # the packed head, built on first use (`_packed_head`)
        # prompt token ids -> (per layer (keys, values) of shape [kv heads, tokens, dim],
        # 3D rotary offset of the tokens after it), least recently used first
        self._prompts: dict[PromptKey, tuple[list[Any], int]] = {}
        self._prompt_arrays: dict[PromptKey, Any] = {}  # their token ids as arrays

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
        with torch.inference_mode():
            if not self.reuse_prompts:
                ready = {**inputs, "past_key_values": self._empty_cache()}
                return self._decode(ready, self._row_uniforms(inputs, images))
            ready, columns, used = self._continue_from_cache(inputs, images)
            return self._decode(
                ready,
                self._row_uniforms(inputs, images),
                lambda: self._keep_prompts(ready, columns, images, used),
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

    def _next_logits(self, step: dict[str, Any]):
        """The next-token logits of each row, [rows, vocab], after one forward step.

        The LM head is applied to the last position only. On a CPU in float32 it runs, from
        `PACKED_HEAD_MIN_ROWS` rows up, as oneDNN's linear over a weight packed once for it
        (`_packed_head`): at 16 rows over Qwen's 151,657 tokens that is about 5 ms instead of
        8, the largest single cost of a batched step with the tiny model. Fewer rows (a
        matrix-vector product, bound by reading the weight) run as `weight @ hidden.T`, which
        the packed kernel is slower at; the result is then a transposed view.
        """
        torch = self._torch
        if self._head is None:
            return self.model(**step, logits_to_keep=1).logits[:, -1]
        hidden = self._rope_owner(**step).last_hidden_state[:, -1]
        if self._packable and hidden.shape[0] >= PACKED_HEAD_MIN_ROWS:
            packed = self._packed_head()
            return torch.ops.mkldnn._linear_pointwise(hidden, packed, None, "none", [], "")
        return torch.mm(self._head, hidden.t()).t()

    def _packed_head(self):
        """The LM head weight packed for oneDNN's linear (a second copy of the head: 38.8 MB on
        the tiny model), packed on first use."""
        if self._packed is None:
            self._packed = self._torch.ops.mkldnn._reorder_linear_weight(
                self._head, self.batch_size
            )
        return self._packed

    def _pick(self, logits, uniforms):
        """One token per row from next-token logits laid out [rows, vocab] (modified in place)."""
        torch = self._torch
        logits[:, self._vision_ids] = float("-inf")
        if self.temperature == 0:
            return logits.argmax(-1)
        if self.temperature != 1.0:
            logits.div_(self.temperature)
        if self.top_k > 0 or self.top_p < 1.0:
            from transformers import TopKLogitsWarper, TopPLogitsWarper

            rows = logits.contiguous()
            if self.top_k > 0:
                rows = TopKLogitsWarper(self.top_k)(None, rows)
            if self.top_p < 1.0:
                rows = TopPLogitsWarper(self.top_p)(None, rows)
            return draw_from(torch.softmax(rows.float(), dim=-1), uniforms[:, 0])
        return draw_by_rejection(logits, uniforms)

    def _decode(self, ready: dict[str, Any], uniforms, after_prefill=None) -> list[list[int]]:
        """The replies, decoded one token per step over the model's forward and KV cache.

        The prompt's positions (Qwen2-VL's 3D rotary ones included) are computed once exactly as
        `generate` computes them, then each step advances them by one. Rows that emit a stop
        token leave the batch (and the cache); the loop ends when none is left.
        `after_prefill` runs once the cache holds the prompts (for `_keep_prompts`).
        """
        torch = self._torch
        model = self.model
        ids, mask, cache = ready["input_ids"], ready["attention_mask"], ready["past_key_values"]
        past = cache.get_seq_length()
        extras = {key: value for key, value in ready.items() if key != "input_ids"}
        positions = model._prepare_position_ids_for_generation(ids, extras)
        step = {
            **{key: value for key, value in extras.items() if key != "mm_token_type_ids"},
            "input_ids": ids[:, past:],
            "position_ids": positions[..., past:],
            "use_cache": True,
        }
        if "mm_token_type_ids" in ready:
            step["mm_token_type_ids"] = ready["mm_token_type_ids"][:, past:]
        rows = ids.shape[0]
        replies: list[list[int]] = [[] for _ in range(rows)]
        live = list(range(rows))
        positions = positions[..., -1:]
        for index in range(self.max_new_tokens):
            logits = self._next_logits(step)
            if index == 0 and after_prefill is not None:
                after_prefill()
            tokens = self._pick(logits, uniforms[live, index])
            for row, token in zip(live, tokens.tolist()):
                replies[row].append(token)
            stopped = torch.isin(tokens, self._stop_ids)
            if index == self.max_new_tokens - 1:
                break
            if bool(stopped.any()):
                keep = (~stopped).nonzero()[:, 0]
                if keep.numel() == 0:
                    break
                live = [live[k] for k in keep.tolist()]
                tokens, mask, positions = tokens[keep], mask[keep], positions[:, keep]
                cache.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions + 1
            step = {
                "input_ids": tokens[:, None],
                "attention_mask": mask,
                "position_ids": positions,
                "past_key_values": cache,
                "use_cache": True,
            }
        return replies

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
        rest is free of images (their 3D rotary offsets then come from the kept prompt). A batch
        with new images continues each row from the longest image-free start it shares with a
        kept prompt (`_image_free_starts`: under `image_history: last` that is the whole earlier
        conversation up to the image just dropped, so a turn encodes only what changed), and
        its positions are computed over the whole prompt as usual.

        Returns:
            The model inputs (rearranged, cache included) for `_decode`, per row the
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
            cached = self._image_free_starts(tokens, vision)
            used = set()
            # with images, `_decode` computes the offsets over the whole prompts; without, 0
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

    def _image_free_starts(self, rows: list[PromptKey], vision) -> list[PromptKey | None]:
        """Per row, a kept image-free prompt to continue from: the longest start free of image
        tokens that the row shares with any kept prompt (kept now as a prompt of its own, its
        keys and values cut from the longer one's, which causal attention leaves unchanged),
        else the shared first turn, else None."""
        import numpy as np

        shared = self._shared_first_turn(rows, vision)
        out: list[PromptKey | None] = []
        for (tokens, _), seen, first in zip(rows, vision, shared):
            limit = len(tokens) - 1  # at least one token is left to encode
            if bool(seen.any()):
                limit = min(limit, int(seen.nonzero()[0, 0]))
            row = np.asarray(tokens[:limit])
            best, size = first, len(first[0]) if first else 0
            for key in list(self._prompts):
                kept = self._prompt_array(key)
                m = min(len(kept), limit)
                if m <= size:
                    continue
                differ = np.flatnonzero(kept[:m] != row[:m])
                common = int(differ[0]) if differ.size else m
                if common > size:
                    best, size = key, common
            if best is not None and len(best[0]) != size:
                layers, _delta = self._prompts[best]
                cut = (tuple(tokens[:size]), ())
                self._remember(cut, [(k[:, :size], v[:, :size]) for k, v in layers], 0)
                best = cut
            out.append(best)
        return out

    def _prompt_array(self, key: PromptKey):
        """A kept prompt's token ids as a numpy array (made once per prompt)."""
        import numpy as np

        array = self._prompt_arrays.get(key)
        if array is None:
            array = self._prompt_arrays[key] = np.asarray(key[0])
        return array

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
            dropped = next(iter(self._prompts))
            self._prompts.pop(dropped)
            self._prompt_arrays.pop(dropped, None)

    def _empty_cache(self):
        """A `DynamicCache` whose plain layers keep room for `max_new_tokens` more tokens."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        roomy = roomy_layer()
        for index, layer in enumerate(cache.layers):
            if type(layer) is DynamicLayer:
                cache.layers[index] = roomy()
                cache.layers[index].room = self.max_new_tokens + 1
        return cache

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
        """Keep each row's prompt keys and values (from the cache the prefill filled).

        The prompts in `superseded` are dropped: each was extended by a row's new prompt.
        """
        torch = self._torch
        for key in superseded:
            self._prompts.pop(key, None)
            self._prompt_arrays.pop(key, None)
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
