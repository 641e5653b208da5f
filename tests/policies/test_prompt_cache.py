"""The prompt cache's bookkeeping: which kept prompt a row continues, what is kept, what goes."""

from __future__ import annotations

import pytest

from boxgym.policies.prompt_cache import KEPT_PROMPTS, PromptCache

VISION = 99  # the image placeholder token in these prompts


def cache():
    import torch

    return PromptCache(
        model=None,
        rope_owner=None,
        vision_ids=torch.tensor([VISION]),
        end_of_turn_id=7,
        pad_id=0,
        device="cpu",
    )


def layers(tokens: int, value: float = 1.0):
    """One layer of keys and values for `tokens` tokens: [kv heads 2, tokens, dim 4]."""
    import torch

    keys = torch.arange(tokens, dtype=torch.float32)[None, :, None].expand(2, tokens, 4) * value
    return [(keys.clone(), -keys.clone())]


def test_a_row_continues_the_longest_kept_prompt_it_extends():
    kept = cache()
    kept._remember(((1, 2), ()), layers(2), 0, batch_size=1)
    kept._remember(((1, 2, 3, 4), ("img-a",)), layers(4), 5, batch_size=1)
    kept._remember(((1, 2, 3, 9), ()), layers(4), 0, batch_size=1)
    assert kept._longest_kept(((1, 2, 3, 4, 5), ("img-a", "img-b"))) == ((1, 2, 3, 4), ("img-a",))
    # its images must match too, and at least one token must be left to encode
    assert kept._longest_kept(((1, 2, 3, 4, 5), ("img-c",))) == ((1, 2), ())
    assert kept._longest_kept(((1, 2), ())) is None
    # the prompt continued from is now the most recently used
    assert list(kept.prompts)[-1] == ((1, 2), ())


def test_the_least_recently_used_prompts_go_beyond_the_limit():
    kept = cache()
    for i in range(KEPT_PROMPTS + 3):
        kept._remember(((i, i + 1), ()), layers(2), 0, batch_size=1)
    assert len(kept.prompts) == KEPT_PROMPTS
    assert ((0, 1), ()) not in kept.prompts and ((3, 4), ()) in kept.prompts
    # a larger batch keeps 4 prompts per row
    for i in range(100, 100 + 4 * 20):
        kept._remember(((i, i + 1), ()), layers(2), 0, batch_size=20)
    assert len(kept.prompts) == 80


@pytest.mark.parametrize("with_image", [False, True])
def test_an_image_free_start_is_cut_from_a_longer_kept_prompt(with_image):
    import torch

    kept = cache()
    kept._remember(((3, 4, 5, 6, 8), ()), layers(5), 0, batch_size=1)
    row = (3, 4, 5, VISION, 2) if with_image else (3, 4, 5, 1, 2)
    vision = [torch.tensor([t == VISION for t in row])]
    (start,) = kept._image_free_starts([(row, ("img",) if with_image else ())], vision, 1)
    assert start == ((3, 4, 5), ())  # the shared start, stopping before any image
    keys, values = kept.prompts[start][0][0]
    full_keys, _ = kept.prompts[((3, 4, 5, 6, 8), ())][0][0]
    assert keys.shape == (2, 3, 4) and torch.equal(keys, full_keys[:, :3])
    assert torch.equal(values, -keys)


def test_a_start_chosen_for_one_row_outlives_the_cuts_made_for_the_next_rows():
    """A full cache: row 0 continues the least recently used prompt, and the starts cut for
    the rows after it must not push that prompt out before the batch is laid out."""
    import torch

    kept = cache()
    kept._remember(((3, 4, 5, 6), ()), layers(4), 0, batch_size=1)  # the oldest
    for i in range(KEPT_PROMPTS - 1):
        kept._remember(((50 + i, 1, 2, 3, 4), ()), layers(5), 0, batch_size=1)
    rows = [((3, 4, 5, 6, 1), ()), *[((50 + i, 1, 2, 9, 9), ()) for i in range(8)]]
    vision = [torch.tensor([t == VISION for t in row]) for row, _ in rows]
    starts = kept._image_free_starts(rows, vision, 1)
    assert starts[0] == ((3, 4, 5, 6), ())
    assert starts[1:] == [((50 + i, 1, 2), ()) for i in range(8)]
    assert all(start in kept.prompts for start in starts)
    assert len(kept.prompts) == KEPT_PROMPTS
