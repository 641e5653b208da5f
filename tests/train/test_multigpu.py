"""Past one GPU, checked as far as a CPU can: the shipped ZeRO configs pass `accelerate launch`'s
own parsing and validation, and the DeepSpeed extra is pinned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "stage"), [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_accelerate_launch_parses_and_validates_the_zero_configs(name, stage) -> None:
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    config = ROOT / "configs" / "grpo_qwen2vl_2b_multigpu.yaml"
    argv = ["--config_file", str(ROOT / "configs" / "accelerate" / name), "--num_processes", "2"]
    argv += ["-m", "boxgym.cli", "train", "grpo", "--config", str(config)]
    args = launch_command_parser().parse_args(argv)
    args, _defaults, _mixed_precision_from_config = _validate_launch_command(args)
    assert args.use_deepspeed and args.zero_stage == stage
    assert args.mixed_precision == "bf16" and args.num_processes == 2
    assert args.training_script == "boxgym.cli" and args.module
    # the script arguments are boxgym's own: they parse and the run config loads
    from boxgym.train.config import load_config
    from boxgym.train.run_configs import GRPORunConfig

    assert args.training_script_args[:3] == ["train", "grpo", "--config"]
    loaded = load_config(GRPORunConfig, args.training_script_args[3])
    assert loaded.trainer["max_completion_length"] >= 3038


def test_deepspeed_is_an_extra_with_a_pinned_version() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^deepspeed = \[.*"deepspeed>=', pyproject, re.M)
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^deepspeed==\d+\.\d+\.\d+$", constraints, re.M)
