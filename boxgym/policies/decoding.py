"""Decoding pieces of the `hf` policy: an exact two-level inverse-CDF sampler and a KV-cache layer
that grows in place. Both import torch/transformers inside, so importing this module is light.
"""

from __future__ import annotations

from functools import cache


@cache
def roomy_layer():
    """A transformers `DynamicLayer` subclass that appends keys and values into spare room.

    `DynamicLayer.update` concatenates, copying the whole cache at every decode step (at batch 16
    on the tiny model that copy is about a sixth of a step); this one keeps `room` free columns
    after the tokens and writes new ones in place. `keys` and `values` are views of the buffers.
    """
    import torch
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        room = 64

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._buffers = None
            length = self.get_seq_length()
            end = length + key_states.shape[-2]
            if self._buffers is None or end > self._buffers[0].shape[-2]:
                shape = (*key_states.shape[:-2], end + self.room, key_states.shape[-1])
                grown = tuple(key_states.new_empty(shape) for _ in range(2))
                if length:
                    grown[0][..., :length, :] = self.keys
                    grown[1][..., :length, :] = self.values
                self._buffers = grown
            self._buffers[0][..., length:end, :] = key_states
            self._buffers[1][..., length:end, :] = value_states
            self.keys = self._buffers[0][..., :end, :]
            self.values = self._buffers[1][..., :end, :]
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            if self.get_seq_length() > 0:
                end = self.keys.shape[-2]
                self._buffers = tuple(buffer[indices] for buffer in self._buffers)
                self.keys = self._buffers[0][..., :end, :]
                self.values = self._buffers[1][..., :end, :]

    del torch
    return RoomyLayer


# Vocabulary block size of `draw_from`'s two-level search.
DRAW_BLOCK = 512


def draw_from(probs, uniforms):
    """Per row, the token whose cumulative probability first exceeds `uniforms` x the row's mass.

    An exact inverse-CDF draw from each row of `probs` ([rows, vocab], float) given one uniform
    number in [0, 1) per row, in two levels: the cumulative sum runs over the sums of blocks of
    `DRAW_BLOCK` tokens, then inside the one block the target falls in, so the only full-vocabulary
    pass is one block-wise sum (a full cumulative sum over Qwen's 151,657 tokens costs more than
    the softmax before it). `probs` may be a transposed view of a [vocab, rows] tensor (the `hf`
    policy's layout); the block sums then run in that layout. Tokens of zero probability (banned,
    filtered) are never drawn.
    """
    import torch

    rows, vocab = probs.shape
    full = vocab // DRAW_BLOCK
    if rows > 1 and probs.t().is_contiguous():
        # stored vocabulary-major (the transpose of the policy's [vocab, rows] softmax): sum
        # the blocks in that layout; reshaping the transposed view would copy the whole of it
        by_vocab = probs.t()
        sums = by_vocab[: full * DRAW_BLOCK].view(full, DRAW_BLOCK, rows).sum(1).t()
        tail = by_vocab[full * DRAW_BLOCK :].sum(0)[:, None]
    else:
        sums = probs[:, : full * DRAW_BLOCK].reshape(rows, full, DRAW_BLOCK).sum(-1)
        tail = probs[:, full * DRAW_BLOCK :].sum(-1, keepdim=True)
    if vocab > full * DRAW_BLOCK:
        sums = torch.cat([sums, tail], dim=1)
    sums = sums.double()
    cdf = sums.cumsum(-1)
    target = uniforms.double().to(probs.device) * cdf[:, -1]
    numbers = torch.arange(sums.shape[1], device=probs.device)
    last_block = ((sums > 0) * numbers).amax(-1)  # rounding must not land past the mass
    block = torch.searchsorted(cdf, target[:, None], right=True).squeeze(1)
    block = torch.minimum(block, last_block)
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    index = block[:, None] * DRAW_BLOCK + torch.arange(DRAW_BLOCK, device=probs.device)
    inside = probs.gather(1, index.clamp(max=vocab - 1)).double() * (index < vocab)
    within = inside.cumsum(-1)
    rest = (target - before).clamp(min=0.0)
    pick = torch.searchsorted(within, rest[:, None], right=True).squeeze(1)
    positions = torch.arange(DRAW_BLOCK, device=probs.device)
    pick = torch.minimum(pick, ((inside > 0) * positions).amax(-1))
    return block * DRAW_BLOCK + pick
