"""One typed config for every verb: YAML sections validated by pydantic at load time.

The sections (`model`, `lora`, `env`, `mixture`, `tasks`, `decoding`, `trainer`) are dataclasses
with help text on every field (`boxgym.sections`); `validate` checks a mapping against one
with pydantic, so a wrong type (`max_steps: ten`, `lora.rank: 8.5`) or an unknown key
(`lora.rnak`) fails at load time, `--dry-run` included, with the key, what was expected and the
closest known key. The `trainer` section is TRL's own config (`SFTConfig` / `GRPOConfig`):
`check_trainer` validates each key against that dataclass's field and its type the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError

from boxgym.errors import UserError, describe_value


class ConfigError(UserError, ValueError):
    """A config value or key is wrong; the message names the key and the fix."""


# The most a config's YAML may hold: values once every alias is expanded, and nesting. A run
# config has a few hundred values; an alias bomb (each level repeating the one before) holds
# billions while its text stays short.
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2-style floats (`1e-4` is a float, plain PyYAML reads a
    string) and bounds: at most `MAX_YAML_VALUES` values counting every alias expanded, at most
    `MAX_YAML_DEPTH` levels of nesting, no alias to a node still being read (a cycle)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to, once composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            node = self.anchors.get(anchor)
            if node is not None:
                if id(node) not in self._sizes:  # still being read: the alias is inside it
                    raise ConfigError(f"YAML alias *{anchor} refers to itself; remove the cycle")
                self._count(self._sizes[id(node)], f"alias *{anchor}")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise ConfigError(
                f"YAML nested more than {MAX_YAML_DEPTH} levels deep; a config needs a few"
            )
        try:
            start = self._values
            composed = super().compose_node(parent, index)
            self._count(1, "a value")
            self._sizes[id(composed)] = self._values - start
            return composed
        finally:
            self._depth -= 1

    def _count(self, added: int, what: str) -> None:
        self._values += added
        if self._values > MAX_YAML_VALUES:
            raise ConfigError(
                f"YAML holds more than {MAX_YAML_VALUES:,} values once its aliases are expanded "
                f"(at {what}); a config needs a few hundred: remove the repeated aliases"
            )


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text parsed safely and within bounds (`_Loader`), with `1e-4` read as a float.

    Raises:
        ConfigError: the text expands past `MAX_YAML_VALUES` values or `MAX_YAML_DEPTH` levels.
        yaml.YAMLError: text that is not YAML.
    """
    return yaml.load(text, Loader=_Loader)


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
        shown = (
            f" (got {describe_value(given)})"
            if kind != "value_error" and not isinstance(given, dict)
            else ""
        )
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
                f"bad config: {section}.{key}: {first.get('msg', 'invalid')} (got "
                f"{describe_value(value)}); fix the YAML file or the --set value"
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


def read_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty without one), with `--set` overrides applied.

    Raises:
        ConfigError: a missing file, a folder, a file whose top level is no mapping, or YAML
            past the bounds; the message names the file or key and the fix.
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
    return data


def load_config(cls: type, path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read a YAML config and its `--set` overrides (`read_config`) and validate it as `cls`.

    Raises:
        ConfigError: as `read_config`, or a key or value `cls` refuses (naming it and the fix).
        yaml.YAMLError: a file that is not YAML.
    """
    return validate(cls, read_config(path, overrides))


# Field types for options given in Python, YAML or flags alike: strict (no "8" for 8, no 1 for
# true, no true for 1), with their bounds, checked by `check_fields`.
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
WholeNumber = Annotated[int, Strict(), Field(ge=0)]
Weight = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Switch = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]

_FIELD_ADAPTERS: dict[type, dict[str, TypeAdapter]] = {}


def check_fields(instance: Any, skip: Collection[str] = ()) -> None:
    """Check each field of the dataclass `instance` against its annotation (pydantic; the types
    above carry the bounds) and store the validated value (a YAML list for a tuple field becomes
    a tuple). Call it from `__post_init__`; the cross-field checks follow it.

    Raises:
        ValueError: one line naming the first bad field, what it should be and what it got.
    """
    cls = type(instance)
    if cls not in _FIELD_ADAPTERS:
        hints = typing.get_type_hints(cls, include_extras=True)
        _FIELD_ADAPTERS[cls] = {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}
    for name, adapter in _FIELD_ADAPTERS[cls].items():
        if name in skip:
            continue
        value = getattr(instance, name)
        try:
            setattr(instance, name, adapter.validate_python(value))
        except ValidationError as error:
            message = str(error.errors()[0].get("msg", "is invalid"))
            message = message.replace("Input should", "should", 1)
            raise ValueError(
                f"{cls.__name__}.{name} {message}, got {describe_value(value)}"
            ) from None


def unknown_keys(cls: type, keys: Collection[str]) -> str | None:
    """A one-line complaint about the keys that are no field of the dataclass `cls`, with the
    closest field for each (and every field where one key has none); None when every key is a
    field."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(keys) - set(known))
    if not unknown:
        return None
    parts, guessed = [], True
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        guessed = guessed and bool(close)
    listed = "" if guessed else f"; known: {', '.join(known)}"
    return f"unknown {cls.__name__} field(s) {', '.join(parts)}{listed}"
