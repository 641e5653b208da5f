"""`boxgym.train.grpo`: the CPU speed-up around TRL's fused LM head changes no number."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")


def _logprobs_and_grads(model, input_ids, labels):
    model.zero_grad()
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    out.log_probs.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.entropy.detach(), grads


@pytest.mark.slow
def test_completion_only_scoring_matches_every_position_scoring(tiny_model_path):
    import trl.trainer.utils as trl_utils
    from transformers import Qwen2VLForConditionalGeneration
    from trl.trainer.utils import add_fused_lm_head

    from boxgym.train.grpo import lm_head_scores_completions_only

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_model_path)).float()
    add_fused_lm_head(model, temperature=0.9, outputs=("log_probs", "entropy"))
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 151_000, (3, 40), generator=gen)
    labels = input_ids.clone()
    labels[:, :-8] = -100  # the completion: the last 8 tokens, as TRL's `logits_to_keep` marks
    labels[1, -3:] = -100  # and a padded row

    original = trl_utils._use_triton
    full = _logprobs_and_grads(model, input_ids, labels)
    with lm_head_scores_completions_only():
        assert trl_utils._use_triton(torch.device("cpu"))
        compact = _logprobs_and_grads(model, input_ids, labels)
    assert trl_utils._use_triton is original  # restored

    mask = labels[:, 1:] != -100
    assert torch.allclose(full[0][mask], compact[0][mask], atol=1e-5)
    assert torch.allclose(full[1][mask], compact[1][mask], atol=1e-5)
    assert (compact[0][~mask] == 0).all()
    assert full[2].keys() == compact[2].keys() and full[2]
    for name, grad in full[2].items():
        assert torch.allclose(grad, compact[2][name], atol=1e-5, rtol=1e-4), name


def test_the_patch_is_undone_when_the_call_fails():
    import trl.trainer.utils as trl_utils

    from boxgym.train.grpo import lm_head_scores_completions_only

    original = trl_utils._use_triton
    with pytest.raises(RuntimeError), lm_head_scores_completions_only():
        raise RuntimeError("boom")
    assert trl_utils._use_triton is original
