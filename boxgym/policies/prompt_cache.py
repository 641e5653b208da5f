"""The `hf` policy's prompt cache: keys and values of encoded prompts, continued by later prompts.

Attention prefill grows with the square of the prompt, and in a rollout most of each prompt was
encoded before: the system turn (instructions and tool schemas, about 1,400 tokens with the
env's defaults) is the same in every conversation, and turn t's prompt is turn t-1's prompt plus
the reply and the env's answer. `PromptCache` keeps the keys and values of every prompt the
policy encodes (by token ids and image digests: every image is the same placeholder token) and
lays out the next batch so that each row continues from the longest kept prompt it extends
(`PromptCache.continue_from`); the texts are the same as encoding every prompt in full.

torch and numpy are imported where used, so importing this module is light.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

# Prompts kept at least (4 x the policy's batch size when that is more).
KEPT_PROMPTS = 64

# A prompt: its token ids and the digests of its images, in order.
PromptKey = tuple[tuple[int, ...], tuple[str, ...]]


class PromptCache:
    """The kept prompts of one policy's model, least recently used first.

    Args:
        model: the transformers model the prompts are encoded by (it encodes the shared first
            turn itself).
        rope_owner: the module whose `rope_deltas` hold the 3D rotary offsets of the batch.
        vision_ids: the image placeholder token ids (a tensor on `device`).
        end_of_turn_id: the token that ends a chat turn (`<|im_end|>`).
        pad_id: the tokenizer's padding token.
        device: where the model lives.
    """

    def __init__(
        self,
        model: Any,
        rope_owner: Any,
        vision_ids: Any,
        end_of_turn_id: int,
        pad_id: int,
        device: str,
    ) -> None:
        self._model = model
        self._rope_owner = rope_owner
        self._vision_ids = vision_ids
        self._end_of_turn_id = end_of_turn_id
        self._pad_id = pad_id
        self._device = device
        # prompt -> (per layer (keys, values) of shape [kv heads, tokens, dim], 3D rotary offset
        # of the tokens after it), least recently used first
        self.prompts: dict[PromptKey, tuple[list[Any], int]] = {}
        self._arrays: dict[PromptKey, Any] = {}  # their token ids as numpy arrays

    def continue_from(
        self,
        inputs: Any,
        images: list[tuple[str, ...]],
        *,
        empty_cache: Callable[[], Any],
        batch_size: int,
    ) -> tuple[dict[str, Any], list[list[int]], set[PromptKey]]:
        """Generation inputs that continue each row from the longest prompt already encoded.

        Each row continues from the longest kept prompt its tokens start with; failing that,
        from the shared image-free first turn, encoded once. Rows are laid out `[pad, cached,
        pad, rest]`: positions are counted over unmasked tokens, so no real token's position or
        what it attends to changes.

        A row may continue from one of its own earlier prompts only while every row's uncached
        rest is free of images (their 3D rotary offsets then come from the kept prompt). A batch
        with new images continues each row from the longest image-free start it shares with a
        kept prompt (`_image_free_starts`: under `image_history: last` that is the whole earlier
        conversation up to the image just dropped, so a turn encodes only what changed), and
        its positions are computed over the whole prompt as usual.

        Args:
            inputs: the processor's batch (left padded) on the model's device.
            images: per row, the digests of its images in prompt order.
            empty_cache: makes a fresh KV cache for the decode.
            batch_size: the policy's batch size (how many prompts are kept depends on it).

        Returns:
            The model inputs (rearranged, cache included) for the decode loop, per row the
            columns of its prompt tokens, and the rows' own earlier prompts continued from (the
            new prompts supersede them), for `keep`.
        """
        import torch

        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        rows, width = ids.shape
        lengths = [int(n) for n in mask.sum(dim=1)]
        real = [ids[r, width - lengths[r] :] for r in range(rows)]
        tokens = [(tuple(row.tolist()), own) for row, own in zip(real, images)]
        vision = [torch.isin(row, self._vision_ids) for row in real]
        cached = [self._longest_kept(row) for row in tokens]
        sizes = [len(key[0]) if key else 0 for key in cached]
        if any(bool(seen[size:].any()) for seen, size in zip(vision, sizes)) or not any(cached):
            cached = self._image_free_starts(tokens, vision, batch_size)
            used = set()
            # with images, the decode computes the offsets over the whole prompts; without, 0
            rope_deltas = None if any(bool(seen.any()) for seen in vision) else [0] * rows
        else:
            rope_deltas = [self.prompts[key][1] if key else 0 for key in cached]
            used = {key for key in cached if key and key[1]}  # shared image-free turns stay
        sizes = [len(key[0]) if key else 0 for key in cached]
        if not any(sizes):
            columns = [list(range(width - n, width)) for n in lengths]
            return {**inputs, "past_key_values": empty_cache()}, columns, used
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
        out["past_key_values"] = self._stacked_cache(cached, head, empty_cache())
        return out, columns, used

    def keep(
        self,
        inputs: dict[str, Any],
        columns: list[list[int]],
        images: list[tuple[str, ...]],
        superseded: set[PromptKey],
        batch_size: int,
    ) -> None:
        """Keep each row's prompt keys and values (from the cache the prefill filled).

        The prompts in `superseded` are dropped: each was extended by a row's new prompt.
        """
        import torch

        for key in superseded:
            self.prompts.pop(key, None)
            self._arrays.pop(key, None)
        cache = inputs["past_key_values"]
        deltas = getattr(self._rope_owner, "rope_deltas", None)
        for r, cols in enumerate(columns):
            index = torch.tensor(cols, device=self._device)
            key = (tuple(inputs["input_ids"][r, index].tolist()), images[r])
            layers = [
                (
                    layer.keys[r].index_select(1, index),
                    layer.values[r].index_select(1, index),
                )
                for layer in cache.layers
            ]
            delta = 0 if deltas is None else int(deltas[r if deltas.shape[0] > 1 else 0, 0])
            self._remember(key, layers, delta, batch_size)

    def _longest_kept(self, row: PromptKey) -> PromptKey | None:
        """The longest kept prompt that `row` (tokens, image digests) extends, or None."""
        best = None
        tokens, images = row
        for key in self.prompts:
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
            self.prompts[best] = self.prompts.pop(best)  # most recently used last
        return best

    def _image_free_starts(
        self, rows: list[PromptKey], vision: list[Any], batch_size: int
    ) -> list[PromptKey | None]:
        """Per row, a kept image-free prompt to continue from: the longest start free of image
        tokens that the row shares with any kept prompt (kept now as a prompt of its own, its
        keys and values cut from the longer one's, which causal attention leaves unchanged),
        else the shared first turn, else None."""
        import numpy as np

        shared = self._shared_first_turn(rows, vision, batch_size)
        out: list[PromptKey | None] = []
        for (tokens, _), seen, first in zip(rows, vision, shared):
            limit = len(tokens) - 1  # at least one token is left to encode
            if bool(seen.any()):
                limit = min(limit, int(seen.nonzero()[0, 0]))
            row = np.asarray(tokens[:limit])
            best, size = first, len(first[0]) if first else 0
            for key in list(self.prompts):
                kept = self._prompt_array(key)
                m = min(len(kept), limit)
                if m <= size:
                    continue
                differ = np.flatnonzero(kept[:m] != row[:m])
                common = int(differ[0]) if differ.size else m
                if common > size:
                    best, size = key, common
            if best is not None and len(best[0]) != size:
                layers, _delta = self.prompts[best]
                cut = (tuple(tokens[:size]), ())
                cut_layers = [(k[:, :size], v[:, :size]) for k, v in layers]
                # the starts chosen for earlier rows of this batch must outlive this one
                self._remember(cut, cut_layers, 0, batch_size, keep={*out, *shared})
                best = cut
            out.append(best)
        return out

    def _prompt_array(self, key: PromptKey) -> Any:
        """A kept prompt's token ids as a numpy array (made once per prompt)."""
        import numpy as np

        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = np.asarray(key[0])
        return array

    def _shared_first_turn(
        self, rows: list[PromptKey], vision: list[Any], batch_size: int
    ) -> list[PromptKey | None]:
        """Per row, the shared first turn to continue from (encoded now if new), or Nones.

        Applies when every row opens with the same image-free turn and goes on after it.
        """
        import torch

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
        if key not in self.prompts:
            ids = torch.tensor([prefix], device=self._device)
            out = self._model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                use_cache=True,
                logits_to_keep=1,
            )
            layers = [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]
            self._remember(key, layers, 0, batch_size)
        return [key] * len(rows)

    def _remember(
        self,
        key: PromptKey,
        layers: list[Any],
        rope_delta: int,
        batch_size: int,
        keep: Collection[PromptKey | None] = (),
    ) -> None:
        """Keep a prompt, dropping the least recently used beyond the limit (never one in
        `keep`, the prompts the batch being laid out continues from)."""
        self.prompts[key] = (layers, rope_delta)
        limit = max(KEPT_PROMPTS, 4 * batch_size)
        droppable = (k for k in list(self.prompts) if k != key and k not in keep)
        while len(self.prompts) > limit:
            dropped = next(droppable, None)
            if dropped is None:
                break
            self.prompts.pop(dropped)
            self._arrays.pop(dropped, None)

    def _stacked_cache(self, cached: list[PromptKey | None], head: int, cache: Any) -> Any:
        """`cache` (empty) filled with `head` columns: each row's kept keys and values, right
        aligned."""
        import torch

        some = next(key for key in cached if key)
        for index, (keys, _) in enumerate(self.prompts[some][0]):
            heads, _, dim = keys.shape
            shape = (len(cached), heads, head, dim)
            stacked_keys = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            stacked_values = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            for r, key in enumerate(cached):
                if key:
                    row_keys, row_values = self.prompts[key][0][index]
                    stacked_keys[r, :, head - len(key[0]) :] = row_keys
                    stacked_values[r, :, head - len(key[0]) :] = row_values
            cache.update(stacked_keys, stacked_values, index)
        return cache
