"""Loading a run config: a YAML file and `--set key=value` overrides, validated as one object.

A run config (`boxgym.train.run_configs`) has sections (`model`, `lora`, `env`, `mixture` or
`tasks`) that are boxgym's own dataclasses (`boxgym.train.sections`), and a `trainer` section
that is passed through to TRL's `SFTConfig`/`GRPOConfig` (so every TRL option works, validated by
TRL's own dataclass). Overrides use dotted paths: `--set lora.rank=16 --set
trainer.max_steps=5`; values are parsed as YAML (`true`, `3`, `[a, b]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxgym.config import ConfigError, check_trainer, parse_yaml, validate
from boxgym.config import describe as describe_schema
from boxgym.train.run_configs import GRPORunConfig, RunConfig, SFTRunConfig, default_trainer


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a nested mapping in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"override {item[:80]!r} must look like key=value (e.g. trainer.max_steps=5)"
            )
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ValueError(f"override {item[:80]!r} has an empty key")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {path.strip()!r}: {key!r} is not a section")
            node = child
        try:
            node[keys[-1]] = parse_yaml(raw) if raw.strip() else None
        except ConfigError as error:
            raise ConfigError(f"--set {path.strip()}: {error}") from None
    return data


def load_config(cls: type, path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read a YAML run config, apply overrides, and validate it as `cls` (pydantic).

    Raises:
        ConfigError: an unknown key (with the closest known one), a value of the wrong type,
            a bad value, or a missing file; the message names the key and the fix.
        yaml.YAMLError: a file that is not YAML (a tab, say); `boxgym.errors.explain` turns it
            into one line with the position.
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if file.is_dir():
            raise ConfigError(
                f"config {str(file)!r} is a folder; give a YAML file (configs/*.yaml)"
            )
        if not file.is_file():
            raise ConfigError(f"config file {str(file)!r} does not exist; check the path")
        try:
            loaded = parse_yaml(file.read_text(encoding="utf-8")) or {}
        except ConfigError as error:
            raise ConfigError(f"config file {str(file)!r}: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(file)!r} must hold a mapping at the top level")
        data = loaded
    apply_overrides(data, list(overrides or []))
    if cls is RunConfig:
        return validate(cls, data)
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
