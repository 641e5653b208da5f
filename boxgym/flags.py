"""Command-line flags derived from a config dataclass's fields, and the values read back by field
name: the way `transformers.HfArgumentParser` derives TRL's flags from its config dataclasses, so
no table copies flags onto config fields by hand.

A field `max_new_tokens` becomes `--max-new-tokens` (metadata `flag` names it otherwise), typed
from its annotation: `int`, `float`, `str` (`X | None` alike), `Literal[...]` (the choices),
`list[X]` (the flag repeats) and `bool` (a switch: `--name` turns on a field that is off by
default, `--no-name` turns off one that is on). The field's metadata gives the rest: `help`
(`flag_help` where the flag reads differently from the field, as a `--no-` switch does),
`choices`, `metavar`, and `hidden` to keep a flag out of `--help`.

Every flag defaults to None unless the verb passes a default, so `given` tells what the command
line set from what it left to the config file or to the field's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal


def flag_name(field: dataclasses.Field) -> str:
    """The flag of `field`: its metadata's `flag`, else `--name` (`--no-name` for a switch that
    turns off a field that is on by default)."""
    if field.metadata.get("flag"):
        return field.metadata["flag"]
    name = field.name.replace("_", "-")
    return f"--no-{name}" if field.default is True else f"--{name}"


def add_flags(
    group: Any,
    cls: type,
    names: Sequence[str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    required: Collection[str] = (),
) -> None:
    """Add a flag for each field of the dataclass `cls` (or those in `names`, in that order) to
    `group` (a parser or an argument group).

    Args:
        defaults: a verb's own default for some fields (the flag then reads that value when left
            out, instead of None).
        choices: a verb's narrower choices for some fields.
        required: fields whose flag must be given.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    defaults, choices = defaults or {}, choices or {}
    for name in names if names is not None else list(fields):
        field = fields[name]
        kind = _without_none(hints[name])
        meta = field.metadata
        help_text = meta.get("flag_help", meta.get("help"))
        options: dict[str, Any] = {
            "dest": name,
            "default": defaults.get(name),
            "help": argparse.SUPPRESS if meta.get("hidden") else help_text,
        }
        if name in required:
            options["required"] = True
        if kind is bool:
            options.update(action="store_const", const=field.default is not True)
        elif typing.get_origin(kind) is list:
            options.update(action="append", type=typing.get_args(kind)[0])
        elif typing.get_origin(kind) is Literal:
            options.update(choices=typing.get_args(kind))
        else:
            options["type"] = kind
        if name in choices or "choices" in meta:
            options["choices"] = tuple(choices.get(name, meta.get("choices")))
        if "metavar" in meta:
            options["metavar"] = meta["metavar"]
        group.add_argument(flag_name(field), **options)


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of the dataclass `cls` that the command line set: each field whose flag is on
    `args` with a value (a flag left out reads None)."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return {name: value for name, value in values.items() if value is not None}


def _without_none(kind: Any) -> Any:
    """`X` from `X | None` (or `Optional[X]`); `kind` itself otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind
