"""Loading a training config: a YAML file and `--set key=value` overrides (read by
`boxgym.config.read_config`), training's defaults, validated as one object.

A training config (`boxgym.train.run_configs`) has sections (`model`, `lora`, `env`, `mixture` or
`tasks`) that are boxgym's own dataclasses (`boxgym.sections`), and a `trainer` section
that is passed through to TRL's `SFTConfig`/`GRPOConfig` (so every TRL option works, validated by
TRL's own dataclass). Overrides use dotted paths: `--set lora.rank=16 --set
trainer.max_steps=5`; values are parsed as YAML (`true`, `3`, `[a, b]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxgym.config import ConfigError, check_trainer, read_config, validate
from boxgym.config import describe as describe_schema
from boxgym.train.run_configs import GRPORunConfig, SFTRunConfig, default_trainer


def load_config(cls: type, path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read a YAML training config, apply overrides and training's defaults (`run_dir`,
    `init_adapter: auto`, the `trainer` defaults), and validate it as `cls` (pydantic).

    Raises:
        ConfigError: as `boxgym.config.read_config`, or `init_adapter: auto` without `run_dir`.
        yaml.YAMLError: a file that is not YAML.
    """
    data = read_config(path, overrides)
    run_dir = data.get("run_dir")
    if run_dir and not (data.get("trainer") or {}).get("output_dir"):
        data.setdefault("trainer", {})
        data["trainer"] = {
            **(data["trainer"] or {}),
            "output_dir": str(Path(run_dir) / _stage(cls)),
        }
    if run_dir and cls is GRPORunConfig and data.get("init_adapter") in (None, "auto"):
        data["init_adapter"] = str(Path(run_dir) / "sft" / "adapter")
    elif data.get("init_adapter") == "auto":
        raise ConfigError("init_adapter: auto needs run_dir (--run-dir): the SFT run to start from")
    if "trainer" in data:
        if not isinstance(data["trainer"], dict) and data["trainer"] is not None:
            raise ConfigError(
                "`trainer` must be a mapping of TRL options (trainer: {max_steps: 5})"
            )
        data["trainer"] = {**default_trainer(), **(data["trainer"] or {})}
    return validate(cls, data)


def _stage(cls: type) -> str:
    return "sft" if cls is SFTRunConfig else "grpo"


def trl_args(config_cls: type, trainer: dict[str, Any], **forced: Any) -> Any:
    """Build a TRL config dataclass from the `trainer` section, naming bad keys helpfully."""
    check_trainer(config_cls, trainer)
    return config_cls(**{**trainer, **forced})


def check_trainer_section(config: Any) -> None:
    """Validate `config.trainer` against TRL's SFTConfig / GRPOConfig (imports TRL)."""
    if isinstance(config, SFTRunConfig):
        from trl import SFTConfig as trl_config
    else:
        from trl import GRPOConfig as trl_config
    check_trainer(trl_config, config.trainer)


def device_defaults() -> dict[str, Any]:
    """Trainer defaults that depend on the machine: bf16 only where a GPU supports it."""
    import torch

    return {"bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}


def describe(cls: type) -> list[str]:
    """`--help-config`: every key with its type, default and help, generated from the schema."""
    return describe_schema(cls)
