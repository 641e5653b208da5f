"""The run verbs' settings: flags derived from the options' fields, the run config filling what
no flag gave, one `RunSettings` built once."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from boxgym.choices import SCENE_FAMILY_NAMES
from boxgym.config import load_config
from boxgym.env.config import EnvConfig
from boxgym.errors import UserError
from boxgym.rollouts.commands import add_arguments
from boxgym.rollouts.options import (
    ENV_FLAGS,
    PolicyOptions,
    RunConfig,
    SessionOptions,
    build_run_settings,
)
from boxgym.train.config import load_config as load_training_config
from boxgym.train.run_configs import SFTRunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def settings(verb: str, *argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser, verb)
    args = parser.parse_args(list(argv))
    args.verb = verb
    return build_run_settings(args)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_serve_the_run_verbs(name):
    config = load_config(RunConfig, CONFIGS / name)
    assert config.env.family in SCENE_FAMILY_NAMES


def test_the_run_verbs_config_takes_the_training_sections_too():
    config = load_config(RunConfig, None, ["lora.rank=4", "decoding.temperature=0"])
    assert config.lora.rank == 4 and config.decoding.temperature == 0
    assert config.trainer == {}  # no trainer defaults: the run verbs never train
    assert load_training_config(SFTRunConfig, None).trainer["output_dir"] == "runs/train"


def test_every_option_field_has_its_flag_on_the_rollout_verb():
    parser = argparse.ArgumentParser()
    add_arguments(parser, "rollout")
    dests = {action.dest for action in parser._actions}
    for cls in (SessionOptions, PolicyOptions):
        assert {f.name for f in dataclasses.fields(cls)} <= dests
    assert set(ENV_FLAGS) <= dests
    flags = {flag for action in parser._actions for flag in action.option_strings}
    # the flag names users know, including the renamed and the switched-off ones
    assert {"--frame", "--no-system-prompt", "--no-tools", "--policy-delay", "--top-p"} <= flags


def test_defaults_without_flags_or_config():
    run = settings("rollout", "--out", "x")
    assert run.session.group_size == 4 and run.session.workers == 1 and not run.session.resume
    assert run.policy.policy == "hf" and run.policy.constructor_options() == {}
    assert run.env == EnvConfig()
    run = settings("episodes", "--out", "x")
    assert run.session.group_size == 1 and run.policy.policy == "oracle"


def test_flags_win_and_the_config_fills_the_rest(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {path: some/model, dtype: bfloat16}\n"
        "env: {family: clutter, difficulty: hard, scene_knobs: {count: [1, 2]},\n"
        "      env_kwargs: {max_turns: 7, coordinate_frame: pixels},\n"
        "      reward_kwargs: {format: 0.5}}\n"
        "decoding: {temperature: 0.7, top_k: 5}\n"
    )
    run = settings(
        "rollout", "--out", "x", "--config", str(config), "--temperature", "0",
        "--frame", "unit", "--no-system-prompt", "--set", "decoding.top_p=0.9",
    )  # fmt: skip
    assert run.policy.model == "some/model" and run.policy.dtype == "bfloat16"
    assert (run.policy.temperature, run.policy.top_k, run.policy.top_p) == (0, 5, 0.9)
    assert run.env.max_turns == 7 and run.env.coordinate_frame == "unit"
    assert run.env.system_prompt is False and run.env.reward.format == 0.5
    assert (run.source.scene, run.source.difficulty) == ("clutter", "hard")
    assert run.source.knobs == {"count": [1, 2]}
    # the config's model is an hf/vllm checkpoint: an openai run keeps its own --model
    assert (
        settings(
            "rollout", "--out", "x", "--config", str(config), "--policy", "openai"
        ).policy.model
        is None
    )


def test_a_bad_env_value_is_refused():
    with pytest.raises(ValueError, match="max_calls_per_turn"):
        settings("rollout", "--out", "x", "--max-calls-per-turn", "5", "--max-calls", "2")
    with pytest.raises(
        UserError, match=r"env\.env_kwargs: .*'max_turnz' \(did you mean 'max_turns'\?\)"
    ):
        settings("rollout", "--out", "x", "--set", "env.env_kwargs.max_turnz=3")
