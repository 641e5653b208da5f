"""The run configs' own checks: the GRPO combinations that cannot work are refused up front."""

from __future__ import annotations

import pytest

from boxgym.train.config import load_config
from boxgym.train.run_configs import GRPORunConfig


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget_check=maybe"], "budget_check must be error, warn or off"),
        (["trainer.num_iterations=2"], r"fix trainer.num_iterations: 2 \(needs 1\)"),
        (["trainer.use_vllm=true", "trainer.beta=0.1"], "trainer.use_vllm: True"),
        (
            [
                "env.env_kwargs={image_history: all}",
                "trainer.use_vllm=true",
                "trainer.vllm_mode=server",
                "lora.qlora=true",
            ],
            "needs trainer.vllm_mode=colocate",
        ),
    ],
)
def test_grpo_refuses_combinations_that_cannot_run(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(GRPORunConfig, None, overrides)


def test_grpo_over_every_image_may_use_trls_own_tool_loop():
    config = load_config(
        GRPORunConfig,
        None,
        ["env.env_kwargs={image_history: all}", "trainer.num_iterations=2"],
    )
    assert config.trainer["num_iterations"] == 2
