"""Loading run configs: YAML + overrides, validation messages, the shipped configs, the `train`
verb."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from boxgym.config import apply_overrides, parse_yaml
from boxgym.train.config import describe, load_config, trl_args
from boxgym.train.run_configs import GRPORunConfig, SFTRunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_yaml_reads_scientific_floats():
    assert parse_yaml("lr: 1e-4\nn: 3\nx: [2.5e3, a]") == {"lr": 1e-4, "n": 3, "x": [2500.0, "a"]}


def test_overrides_set_nested_keys_and_parse_values():
    data = apply_overrides(
        {"lora": {"rank": 8}},
        ["lora.rank=16", "trainer.max_steps=5", "env.scene_knobs={count: [1, 3]}"],
    )
    assert data == {
        "lora": {"rank": 16},
        "trainer": {"max_steps": 5},
        "env": {"scene_knobs": {"count": [1, 3]}},
    }
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["lora.rank"])


def test_load_config_builds_sections_and_keeps_trainer_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lora: {rank: 4}\ntrainer: {output_dir: out, max_steps: 3}\n")
    config = load_config(SFTRunConfig, path, ["mixture.num_examples=5"])
    assert config.lora.rank == 4 and config.mixture.num_examples == 5
    assert config.trainer["max_steps"] == 3 and config.trainer["report_to"] == ["tensorboard"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.rnak=4"], "did you mean 'rank'"),
        (["lora.rank=0"], "lora.rank must be >= 1"),
        (["lora.dropout=1.5"], r"lora.dropout must be in \[0, 1\)"),
        (["env.family=cats"], "env.family must be one of"),
        (["model.dtype=int3"], "model.dtype must be one of"),
        (["mixture.weights={nlvr2: 1}"], "needs mixture.paths.nlvr2"),
        (["mixture.weights={kittens: 1}"], "unknown sources"),
        (["trainer.output_dir="], "trainer.output_dir is required"),
        (["lora.rank=8.5"], "lora.rank: Input should be a valid integer"),
        (["lora.rank=eight"], r"lora.rank: .*got 'eight'"),
        (["mixture.num_examples=[1]"], "mixture.num_examples: Input should be a valid integer"),
        (["init_adapter=[a]"], "init_adapter"),
    ],
)
def test_bad_configs_say_how_to_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(SFTRunConfig, None, overrides)


def test_trainer_types_and_names_are_checked_against_trl():
    from trl import SFTConfig

    from boxgym.config import check_trainer
    from boxgym.train.config import check_trainer_section

    for override, message in [
        ("trainer.max_steps=ten", "trainer.max_steps: Input should be a valid integer"),
        ("trainer.learning_rat=1e-4", "did you mean 'learning_rate'"),
        ("trainer.learning_rate=fast", "trainer.learning_rate"),
    ]:
        config = load_config(SFTRunConfig, None, [override])
        with pytest.raises(ValueError, match=message):
            check_trainer_section(config)
    check_trainer(SFTConfig, {"output_dir": "x", "max_steps": 3, "report_to": ["tensorboard"]})


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(SFTRunConfig, tmp_path / "nope.yaml")


def test_trainer_options_are_checked_by_trl():
    from trl import SFTConfig

    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        trl_args(SFTConfig, {"output_dir": "x", "learnin_rate": 1e-3})


def test_tiny_configs_chain_by_their_run_dir():
    sft = load_config(SFTRunConfig, CONFIGS / "sft_tiny.yaml")
    grpo = load_config(GRPORunConfig, CONFIGS / "grpo_tiny.yaml")
    assert grpo.init_adapter == str(Path(sft.trainer["output_dir"]) / "adapter")
    assert grpo.trainer["output_dir"] == str(Path(grpo.run_dir) / "grpo")


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_parse(name):
    assert "sft" in name or "grpo" in name, "configs/*.yaml are training configs"
    cls = GRPORunConfig if "grpo" in name else SFTRunConfig
    import dataclasses

    from trl import GRPOConfig, SFTConfig

    config = load_config(cls, CONFIGS / name)
    trl_config = GRPOConfig if cls is GRPORunConfig else SFTConfig
    known = {f.name for f in dataclasses.fields(trl_config)}
    assert set(config.trainer) <= known, (
        f"unknown {trl_config.__name__} keys: {set(config.trainer) - known}"
    )


def test_describe_lists_every_section_key():
    lines = "\n".join(describe(GRPORunConfig))
    for key in (
        "lora.rank",
        "env.family",
        "tasks.num_tasks",
        "model.image_max_pixels",
        "init_adapter",
    ):
        assert key in lines
    assert "lora.rank (int, default 8)" in lines
    assert "smol2operator" not in lines and "pixmo-count" in lines


def test_train_verb_help_and_dry_run(capsys):
    from boxgym.train import commands

    parser = argparse.ArgumentParser(prog="boxgym train")
    commands.add_arguments(parser, "train")
    args = parser.parse_args(
        ["sft", "--config", str(CONFIGS / "sft_tiny.yaml"), "--set", "lora.rank=4", "--dry-run"]
    )
    assert commands.run(args) == 0
    assert '"rank": 4' in capsys.readouterr().out
    from boxgym.cli import main as boxgym

    assert boxgym(["train", "grpo", "--set", "lora.rank=-1"]) == 2
    assert "lora.rank must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["grpo", "--help"])
    assert "environment_factory" in capsys.readouterr().out
