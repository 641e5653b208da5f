"""Configs are bounded: YAML whose aliases expand past `MAX_YAML_VALUES` values, nesting past
`MAX_YAML_DEPTH` or an alias cycle is refused in one line, from `--set` and from a file, and no
message prints more than a line of the offending value."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from boxgym.config import ConfigError, parse_yaml
from boxgym.errors import describe_value

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)

# Nine levels, each repeating the one before nine times: 9**9 values from a few hundred bytes.
LEVELS = "abcdefghi"
BOMB = "[" + ", ".join(
    ["&a [x, x, x, x, x, x, x, x, x]"]
    + [f"&{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in pairwise(LEVELS)]
) + "]"  # fmt: skip


def test_parse_yaml_bounds_aliases_depth_and_cycles() -> None:
    assert parse_yaml("a: &a {x: 1}\nb: *a\nlr: 1e-4") == {"a": {"x": 1}, "b": {"x": 1}, "lr": 1e-4}
    for text, needle in [
        (BOMB, "more than 100,000 values once its aliases are expanded"),
        ("[" * 100 + "]" * 100, "nested more than 64 levels"),
        ("a: &a [1, *a]", "refers to itself"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            parse_yaml(text)


def test_describe_value_is_one_short_line_for_any_value() -> None:
    nested: list = ["x" * 10_000]
    for _ in range(50):
        nested = [nested, nested, nested]
    for value in (nested, "y" * 100_000, {i: i for i in range(10_000)}, 10**4000 - 1, 10**5000):
        text = describe_value(value)
        assert len(text) <= 80 and "\n" not in text


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip


@pytest.mark.slow
def test_a_bomb_or_a_folder_as_config_is_one_line(tmp_path) -> None:
    (tmp_path / "bomb.yaml").write_text(f"decoding:\n  temperature: {BOMB}\n")
    cases = [
        (["--set", f"decoding.temperature={BOMB}"], "--set decoding.temperature: YAML holds more"),
        (["--config", tmp_path / "bomb.yaml"], "bomb.yaml': YAML holds more than 100,000"),
        (["--config", tmp_path], "is a folder; give a YAML file"),
        (["--set", "decoding.temperature=[" + "1," * 50_000 + "1]"], "decoding.temperature"),
    ]
    for extra, needle in cases:
        done = run("episodes", "--n", "1", "--out", tmp_path / "never", *extra)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
        assert len(done.stderr) < 700
        assert not (tmp_path / "never").exists()
