"""Decoding pieces of the `hf` policy: the token pick (greedy, or an exact draw from the softmax
by rejection or by a two-level inverse CDF, after top-k / top-p) and a KV-cache layer that grows
in place. They import torch/transformers inside, so importing this module is light.
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


# Proposals per row and step of `draw_by_rejection` before it falls back to `draw_from`.
REJECTION_TRIES = 16

# Uniform numbers a row uses per step: the fallback's, then (block, position, acceptance) per try.
UNIFORMS_PER_STEP = 1 + 3 * REJECTION_TRIES


def draw_by_rejection(logits, uniforms):
    """Per row, a token drawn exactly from `softmax(logits)` without a vocabulary-wide softmax.

    Rejection sampling from block maxima: with m_b the largest logit of block b (of `DRAW_BLOCK`
    tokens) and M the largest of all, a proposal picks block b with probability proportional to
    size_b * exp(m_b - M), a token t of it uniformly, and is accepted with probability
    exp(logit_t - m_b). The accepted token has probability exp(logit_t - M) / Z, which is the
    softmax. The vocabulary-wide work is one max per block (an exponential per token is what a
    softmax costs: about 2 ms a step for 16 rows over Qwen's 151,657 tokens on this CPU). Each
    row makes `REJECTION_TRIES` proposals at once; a row whose proposals are all rejected (a flat
    distribution with a few high logits per block) draws with `draw_from` instead, which is
    still exact: a draw that follows rejected proposals is a draw from the same softmax.

    Args:
        logits: [rows, vocab] float; banned tokens at -inf (never drawn).
        uniforms: [rows, UNIFORMS_PER_STEP] numbers in [0, 1): column 0 is the fallback's, then
            (block, position, acceptance) for each try.
    """
    import torch

    rows, vocab = logits.shape
    device = logits.device
    full = vocab // DRAW_BLOCK
    maxima = logits[:, : full * DRAW_BLOCK].reshape(rows, full, DRAW_BLOCK).amax(-1)
    sizes = torch.full((full,), DRAW_BLOCK, dtype=torch.long, device=device)
    if vocab > full * DRAW_BLOCK:
        maxima = torch.cat([maxima, logits[:, full * DRAW_BLOCK :].amax(-1, keepdim=True)], 1)
        sizes = torch.cat([sizes, sizes.new_tensor([vocab - full * DRAW_BLOCK])])
    maxima = maxima.double()
    top = maxima.amax(-1, keepdim=True)
    weights = (maxima - top).exp() * sizes  # blocks of banned tokens only weigh 0
    cdf = weights.cumsum(-1)
    numbers = torch.arange(weights.shape[1], device=device)
    last_block = ((weights > 0) * numbers).amax(-1, keepdim=True)
    uniforms = uniforms.to(device=device, dtype=torch.float64)
    tries = (uniforms.shape[1] - 1) // 3
    block_u, position_u, accept_u = (uniforms[:, 1 + k :: 3][:, :tries] for k in range(3))
    block = torch.searchsorted(cdf, block_u * cdf[:, -1:], right=True)
    block = torch.minimum(block, last_block)
    size = sizes[block]
    token = block * DRAW_BLOCK + torch.minimum((position_u * size).long(), size - 1)
    chance = (logits.gather(1, token).double() - maxima.gather(1, block)).exp()
    accepted = accept_u < chance
    first = accepted.to(torch.uint8).argmax(-1, keepdim=True)  # the first accepted try
    picks = token.gather(1, first)[:, 0]
    missed = ~accepted.any(-1)
    if bool(missed.any()):
        rest = missed.nonzero()[:, 0]
        probs = torch.softmax(logits[rest].float(), dim=-1)
        picks[rest] = draw_from(probs, uniforms[rest, 0])
    return picks


def pick_tokens(logits, uniforms, banned, temperature: float, top_k: int, top_p: float):
    """One token per row from next-token logits laid out [rows, vocab] (modified in place).

    The `banned` token ids are never picked; temperature 0 is greedy (argmax), otherwise the
    logits are divided by `temperature` and, with top-k (`top_k` > 0) or nucleus (`top_p` < 1)
    filtering, drawn from the filtered softmax (`draw_from`), else by `draw_by_rejection`.
    `uniforms` are the rows' numbers for this step, [rows, UNIFORMS_PER_STEP].
    """
    import torch

    logits[:, banned] = float("-inf")
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits.div_(temperature)
    if top_k > 0 or top_p < 1.0:
        from transformers import TopKLogitsWarper, TopPLogitsWarper

        rows = logits.contiguous()
        if top_k > 0:
            rows = TopKLogitsWarper(top_k)(None, rows)
        if top_p < 1.0:
            rows = TopPLogitsWarper(top_p)(None, rows)
        return draw_from(torch.softmax(rows.float(), dim=-1), uniforms[:, 0])
    return draw_by_rejection(logits, uniforms)
