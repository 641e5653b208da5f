"""The decode loop's LM head: packed, plain or the whole model, the same logits."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def model(tiny_model_path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_model_path).eval()


@pytest.mark.parametrize("rows", [1, 3, 6])
def test_next_logits_equal_the_whole_models(model, rows):
    """From PACKED_HEAD_MIN_ROWS rows up the head runs packed (on a CPU in float32), below it
    as a matrix product; either way, and without a plain head, the logits are the model's."""
    import torch

    from boxgym.policies.decode_loop import PACKED_HEAD_MIN_ROWS, DecodeLoop

    loop = DecodeLoop(model, "cpu", torch.float32)
    assert loop.head is not None
    ids = torch.randint(0, 1000, (rows, 7), generator=torch.Generator().manual_seed(rows))
    step = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        expected = model(**step).logits[:, -1]
        fast = loop.next_logits(step, batch_size=8)
        assert (loop._packed is not None) == (loop._packable and rows >= PACKED_HEAD_MIN_ROWS)
        loop.head = None
        whole = loop.next_logits(step, batch_size=8)
    assert fast.shape == expected.shape == whole.shape
    assert torch.allclose(fast, expected, atol=1e-4)
    assert torch.allclose(whole, expected, atol=1e-4)


def test_a_fresh_cache_keeps_room_for_a_reply(model):
    import torch

    from boxgym.policies.decode_loop import DecodeLoop

    cache = DecodeLoop(model, "cpu", torch.float32).empty_cache(max_new_tokens=12)
    assert cache.get_seq_length() == 0
    assert {layer.room for layer in cache.layers} == {13}
