"""The 2B GRPO config's budget holds a perfect episode; the start-up check refuses one that cannot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from boxgym.train.budget import check_episode_budget
from boxgym.train.config import load_config
from boxgym.train.modeling import load_training_processor
from boxgym.train.run_configs import GRPORunConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config_and_processor():
    config = load_config(GRPORunConfig, ROOT / "configs" / "grpo_qwen2vl_2b.yaml")
    # the tiny checkpoint: Qwen2-VL's tokenizer token for token and its image-token math, here
    # with the 2B config's pixel bounds
    model = replace(config.model, path=None)
    return replace(config, model=model), load_training_processor(model)


@pytest.mark.slow
def test_the_2b_budget_holds_every_measured_perfect_episode(config_and_processor) -> None:
    config, processor = config_and_processor
    args = SimpleNamespace(**config.trainer)
    longest = check_episode_budget(config, processor, args)
    assert 2048 < longest <= config.trainer["max_completion_length"]


def test_a_budget_a_perfect_episode_cannot_fit_is_refused(config_and_processor) -> None:
    config, processor = config_and_processor
    args = SimpleNamespace(**{**config.trainer, "max_completion_length": 2048})
    with pytest.raises(ValueError, match="a perfect episode cannot fit"):
        check_episode_budget(config, processor, args)
    args = SimpleNamespace(**{**config.trainer, "vllm_max_model_length": 3000})
    with pytest.raises(ValueError, match="vllm_max_model_length"):
        check_episode_budget(config, processor, args)
