"""One typed config for every verb: YAML sections validated by pydantic at load time.

The sections (`model`, `lora`, `env`, `mixture`, `tasks`, `decoding`, `trainer`) are dataclasses
with help text on every field (`boxgym.train.config`); `validate` checks a mapping against one
with pydantic, so a wrong type (`max_steps: ten`, `lora.rank: 8.5`) or an unknown key
(`lora.rnak`) fails at load time, `--dry-run` included, with the key, what was expected and the
closest known key. The `trainer` section is TRL's own config (`SFTConfig` / `GRPOConfig`):
`check_trainer` validates each key against that dataclass's field and its type the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from boxgym.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value or key is wrong; the message names the key and the fix."""


# Unknown keys are errors; "8" for an int is accepted (YAML and --set already give numbers).
SECTION_CONFIG = ConfigDict(extra="forbid")


def typed_section(cls: type) -> type:
    """Mark a config dataclass for validation: unknown keys are refused."""
    cls.__pydantic_config__ = SECTION_CONFIG  # type: ignore[attr-defined]
    return cls


def validate(cls: type, data: dict[str, Any]) -> Any:
    """Build the dataclass `cls` from `data`, or raise `UserError` naming the bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, cls)) from None


def _fields_at(cls: type | None, loc: tuple[Any, ...]) -> list[str]:
    """Names of the fields of the (nested) dataclass at `loc`, for suggestions."""
    for key in loc:
        if cls is None or not dataclasses.is_dataclass(cls):
            return []
        hints = typing.get_type_hints(cls)
        if key not in hints:
            break
        cls = hints[key]
    if cls is not None and dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return []


def format_validation_error(error: ValidationError, cls: type | None = None) -> str:
    """pydantic's errors as one line: each bad key, the problem, the input, a suggestion."""
    parts = []
    for item in error.errors()[:3]:
        loc = tuple(item.get("loc", ()))
        key = ".".join(str(k) for k in loc) or "config"
        kind = item.get("type", "")
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            known = _fields_at(cls, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1) if loc else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if not close and known:
                hint = f"; known keys there: {', '.join(known)}"
            parts.append(f"unknown config key {key!r}{hint}")
            continue
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        given = item.get("input")
        shown = f" (got {given!r})" if kind != "value_error" and not isinstance(given, dict) else ""
        parts.append(f"{key}: {message}{shown}")
    more = len(error.errors()) - 3
    tail = f" (+{more} more)" if more > 0 else ""
    return "bad config: " + "; ".join(parts) + tail + "; fix the YAML file or the --set value"


def check_trainer(trl_config_cls: type, trainer: dict[str, Any], section: str = "trainer") -> None:
    """Each `trainer` key must be a field of TRL's config, with a value of that field's type.

    Raises:
        UserError: naming the key, the expected type and the closest known key.
    """
    fields = {f.name: f for f in dataclasses.fields(trl_config_cls)}
    try:
        hints = typing.get_type_hints(trl_config_cls)
    except Exception:  # a forward reference TRL does not export: check names only
        hints = {}
    for key, value in trainer.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key '{section}.{key}' (not an option of "
                f"trl.{trl_config_cls.__name__}){hint}"
            )
        if value is None or key not in hints:
            continue
        try:
            adapter = TypeAdapter(hints[key])
        except Exception:  # a type pydantic cannot build a schema for: TRL checks it itself
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as error:
            first = error.errors()[0]
            raise ConfigError(
                f"bad config: {section}.{key}: {first.get('msg', 'invalid')} (got {value!r}); "
                "fix the YAML file or the --set value"
            ) from None


def describe(cls: type, prefix: str = "") -> list[str]:
    """`--help-config`: one `key (type, default): help` line per field, from the schema."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints.get(f.name)
        help_text = f.metadata.get("help", "")
        if dataclasses.is_dataclass(kind):
            lines.append(f"{prefix}{f.name}:  {help_text}")
            lines.extend(describe(kind, prefix=f"{prefix}{f.name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        type_name = _type_name(kind)
        indent = "  " if prefix else ""
        lines.append(f"{indent}{prefix}{f.name} ({type_name}, default {default!r}): {help_text}")
    return lines


def _type_name(kind: Any) -> str:
    text = getattr(kind, "__name__", None) if isinstance(kind, type) else None
    return text or str(kind).replace("typing.", "")
