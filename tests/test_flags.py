"""Flags derived from a dataclass's fields (`boxgym.flags`), read back by field name."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from boxgym.flags import add_flags, given


@dataclass
class Options:
    max_new_tokens: int | None = field(default=None, metadata={"help": "most tokens"})
    temperature: float = 1.0
    mode: Literal["a", "b"] | None = None
    url: list[str] | None = None
    colour: str = field(default="red", metadata={"choices": ("red", "blue"), "flag": "--hue"})
    resume: bool = False
    page: bool = True
    secret: float = field(default=0.0, metadata={"hidden": True})


def parse(*argv: str, **options) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, Options, **options)
    return parser.parse_args(list(argv))


def test_each_field_becomes_a_typed_flag() -> None:
    args = parse(
        "--max-new-tokens", "8", "--temperature", "0.5", "--mode", "b", "--url", "u1",
        "--url", "u2", "--hue", "blue", "--resume", "--no-page", "--secret", "2",
    )  # fmt: skip
    assert given(Options, args) == {
        "max_new_tokens": 8, "temperature": 0.5, "mode": "b", "url": ["u1", "u2"],
        "colour": "blue", "resume": True, "page": False, "secret": 2.0,
    }  # fmt: skip


def test_a_flag_left_out_is_not_given() -> None:
    assert given(Options, parse()) == {}
    assert given(Options, parse(defaults={"temperature": 0.1})) == {"temperature": 0.1}


@pytest.mark.parametrize(
    "argv", [["--mode", "c"], ["--hue", "green"], ["--max-new-tokens", "many"], ["--colour", "red"]]
)
def test_bad_values_and_unknown_flags_are_refused(argv) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_names_choices_and_required() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, Options, ["mode"], choices={"mode": ("a",)}, required=("mode",))
    with pytest.raises(SystemExit):
        parser.parse_args([])
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "b"])
    assert given(Options, parser.parse_args(["--mode", "a"])) == {"mode": "a"}
    assert "--secret" not in parser.format_help()
