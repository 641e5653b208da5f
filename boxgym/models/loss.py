"""The seeing model's training loss: weighted cross-entropy over reply tokens only.

The LM head is applied only at reply positions, over the reply vocabulary plus sampled negatives,
plus the exact full-vocabulary loss at a random subset of positions (so greedy decoding over the
whole vocabulary stays right, which the held-out evaluation checks with plain `generate`). Rows
that share a long prefix (the env's system turn and tool schemas) run it once (`prefix_forward`).
"""

from __future__ import annotations

from typing import Any

from boxgym.models.batches import Batcher
from boxgym.models.recipe import SeeingRecipe
from boxgym.models.skills import Example


def prefix_forward(model, batch: dict[str, Any]) -> Any:
    """Last hidden states of a batch whose rows all start with `batch["prefix_ids"]`, for the
    positions after that prefix.

    The prefix runs once, without gradient, and its key/value cache is repeated over the rows;
    the rest of each row attends to it as in a full forward pass (the hidden states agree to
    about 1e-6). The prefix's own representation gets no gradient: only what follows is trained
    to read it.
    """
    import torch

    prefix = batch["prefix_ids"]
    n_rows, n_prefix = batch["input_ids"].shape[0], prefix.shape[1]
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch.get("image_grid_thw"),
        attention_mask=batch["attention_mask"],
    )
    with torch.no_grad():
        cache = model.model(
            input_ids=prefix, position_ids=positions[:, :1, :n_prefix], use_cache=True
        ).past_key_values
    cache.batch_repeat_interleave(n_rows)
    out = model.model(
        input_ids=batch["input_ids"][:, n_prefix:],
        attention_mask=batch["attention_mask"],
        position_ids=positions[:, :, n_prefix:],
        past_key_values=cache,
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=batch.get("image_grid_thw"),
        mm_token_type_ids=batch["mm_token_type_ids"][:, n_prefix:],
        use_cache=True,
    )
    return out.last_hidden_state


def batch_hidden(model, batch: dict[str, Any]) -> tuple[Any, int]:
    """Last hidden states of a Batcher batch, and how many leading positions they skip (the
    shared prefix of a tool batch, run once by `prefix_forward`; 0 for a bare batch)."""
    if "prefix_ids" in batch:
        return prefix_forward(model, batch), batch["prefix_ids"].shape[1]
    hidden = model.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=batch.get("image_grid_thw"),
        mm_token_type_ids=batch["mm_token_type_ids"],
        use_cache=False,
    ).last_hidden_state
    return hidden, 0


def reply_loss(model, batch: dict[str, Any], recipe: SeeingRecipe, vocab: Any, generator) -> Any:
    """Weighted cross-entropy over reply tokens, the LM head applied only at those positions.

    Each position's softmax runs over `vocab` (every token any reply uses) plus
    `recipe.sampled_negatives` random tokens; `recipe.full_vocab_positions` random positions
    also get the exact full-vocabulary loss. A batch with `prefix_ids` runs its shared prefix
    once (`prefix_forward`).
    """
    import torch
    import torch.nn.functional as F

    hidden, skip = batch_hidden(model, batch)
    # the hidden state at position t predicts token t + 1 (replies never start in the prefix)
    targets = batch["labels"][:, skip + 1 :]
    weights = batch["weights"][:, skip + 1 :]
    where = targets != -100
    h = hidden[:, :-1][where]  # [P, d]
    y = targets[where]
    w = weights[:, :][where]
    head = model.lm_head.weight  # tied with the embedding
    n_vocab = head.shape[0]
    negatives = torch.randint(0, n_vocab, (recipe.sampled_negatives,), generator=generator)
    candidates = torch.unique(torch.cat([vocab, negatives, y]))
    index = torch.searchsorted(candidates, y)
    logits = h @ head[candidates].T
    token_loss = F.cross_entropy(logits, index, reduction="none")
    if recipe.loss_normalization == "example":
        # each row's weights sum to 1 over its reply tokens, then rows are averaged
        share = (weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-9))[where]
        loss = (token_loss * share).sum() / targets.shape[0]
    else:
        loss = (token_loss * w).sum() / w.sum()
    k = min(recipe.full_vocab_positions, h.shape[0])
    if k:
        pick = torch.randperm(h.shape[0], generator=generator)[:k]
        full = F.cross_entropy(h[pick] @ head.T, y[pick])
        loss = loss + 0.25 * full
    return loss


def step_loss(
    model, batcher: Batcher, examples: list[Example], recipe: SeeingRecipe, vocab: Any, generator
) -> Any:
    """The loss of one training step: `reply_loss` per context (bare rows, tool rows), averaged
    over rows."""
    return sum(
        reply_loss(model, batch, recipe, vocab, generator) * batch["input_ids"].shape[0]
        for batch in batcher.batches(examples)
    ) / len(examples)
