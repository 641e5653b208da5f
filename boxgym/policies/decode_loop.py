"""The `hf` policy's decode loop: replies one token per step over a model's forward and KV cache.

`DecodeLoop.decode` computes the prompt's positions (Qwen2-VL's 3D rotary ones included) once
exactly as transformers `generate` computes them, then advances them by one per step; each step
runs the model on one token per live row and the LM head on the last position only, and rows
leave the batch (and the cache) at a stop token. On the tiny model on a CPU this is what makes
batching pay: `generate`'s fixed per-step cost dominated at batch 1 and its vocabulary-sized
passes (a full cumulative sum, an argmax over processed logits) at batch 16.

Which token a row takes is the caller's `pick` (`boxgym.policies.decoding.pick_tokens`); torch
and transformers are imported where used, so importing this module is light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from boxgym.policies.decoding import roomy_layer

# Rows from which the LM head runs as oneDNN's linear over a packed weight (see `next_logits`).
PACKED_HEAD_MIN_ROWS = 4


class DecodeLoop:
    """Decoding over one loaded model: its forward, its LM head and fresh KV caches.

    Args:
        model: a transformers image-text-to-text model, in eval mode on `device`.
        device: where the model lives ("cpu", "cuda", ...).
        dtype: the model's torch dtype.
    """

    def __init__(self, model: Any, device: str, dtype: Any) -> None:
        import torch

        self.model = model
        # the module whose `rope_deltas` hold 3D rotary offsets (Qwen2-VL's inner model)
        self.rope_owner = getattr(model, "model", model)
        head = model.get_output_embeddings()
        # the LM head's weight when the head is a plain bias-free projection after `.model`;
        # None runs the whole model for logits
        self.head = (
            head.weight
            if self.rope_owner is not model and getattr(head, "bias", None) is None
            else None
        )
        # on a CPU in float32 with oneDNN, the head runs packed from PACKED_HEAD_MIN_ROWS rows up
        self._packable = (
            self.head is not None
            and device == "cpu"
            and dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        )
        self._packed = None  # the packed head, built on first use (`_packed_head`)

    def empty_cache(self, max_new_tokens: int) -> Any:
        """A `DynamicCache` whose plain layers keep room for a reply of `max_new_tokens`."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        roomy = roomy_layer()
        for index, layer in enumerate(cache.layers):
            if type(layer) is DynamicLayer:
                cache.layers[index] = roomy()
                cache.layers[index].room = max_new_tokens + 1
        return cache

    def next_logits(self, step: dict[str, Any], batch_size: int) -> Any:
        """The next-token logits of each row, [rows, vocab], after one forward step.

        The LM head is applied to the last position only. On a CPU in float32 it runs, from
        `PACKED_HEAD_MIN_ROWS` rows up, as oneDNN's linear over a weight packed once for it
        (`_packed_head`, for batches of `batch_size`): at 16 rows over Qwen's 151,657 tokens
        that is about 5 ms instead of 8, the largest single cost of a batched step with the
        tiny model. Fewer rows (a matrix-vector product, bound by reading the weight) run as
        `weight @ hidden.T`, which the packed kernel is slower at; the result is then a
        transposed view.
        """
        import torch

        if self.head is None:
            return self.model(**step, logits_to_keep=1).logits[:, -1]
        hidden = self.rope_owner(**step).last_hidden_state[:, -1]
        if self._packable and hidden.shape[0] >= PACKED_HEAD_MIN_ROWS:
            packed = self._packed_head(batch_size)
            return torch.ops.mkldnn._linear_pointwise(hidden, packed, None, "none", [], "")
        return torch.mm(self.head, hidden.t()).t()

    def _packed_head(self, batch_size: int) -> Any:
        """The LM head weight packed for oneDNN's linear (a second copy of the head: 38.8 MB on
        the tiny model), packed on first use."""
        if self._packed is None:
            import torch

            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.head, batch_size)
        return self._packed

    def decode(
        self,
        ready: dict[str, Any],
        uniforms: Any,
        *,
        pick: Callable[[Any, Any], Any],
        stop_ids: Any,
        max_new_tokens: int,
        batch_size: int,
        after_prefill: Callable[[], None] | None = None,
    ) -> list[list[int]]:
        """The replies' token ids, decoded one token per step (up to and including a stop token).

        Args:
            ready: the model inputs, `past_key_values` included (empty, or holding a prefix).
            uniforms: per row, [max_new_tokens, UNIFORMS_PER_STEP] uniform numbers; step t
                uses row t.
            pick: (logits [rows, vocab], uniforms [rows, UNIFORMS_PER_STEP]) -> one token per
                row; it may change the logits in place.
            stop_ids: the tokens that end a reply.
            max_new_tokens: tokens per reply at most.
            batch_size: the policy's batch size (the packed head is laid out for it).
            after_prefill: run once the cache holds the prompts (to keep them).
        """
        import torch

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
        for index in range(max_new_tokens):
            logits = self.next_logits(step, batch_size)
            if index == 0 and after_prefill is not None:
                after_prefill()
            tokens = pick(logits, uniforms[live, index])
            for row, token in zip(live, tokens.tolist()):
                replies[row].append(token)
            stopped = torch.isin(tokens, stop_ids)
            if index == max_new_tokens - 1:
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
