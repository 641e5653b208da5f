"""`SeeingRecipe` is validated like every config: a bad `--set` of `tiny-model --seeing` is one
line and exit 2 before any folder exists, and the default recipe keeps its published key."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from boxgym.models.recipe import SeeingRecipe, recipe_with

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)

BAD_SETS = [
    ("batch_size=0", "batch_size must be an integer from 1 to 4096, got 0"),
    ("lr=nan", "lr must be a finite number above 0, got nan"),
    ("lr=1e400", "lr must be a finite number above 0, got inf"),
    ("full_steps=-100", "full_steps must be an integer from 0 to"),
    ("count_mix=[]", "count_mix must be at least one [skill, share] pair"),
    ('count_mix=[["cnt", 1]]', "count_mix must be [skill, share] pairs with skills from count"),
    ('full_mix=[["ground", 0]]', "full_mix must be [skill, share] pairs with finite shares"),
    ("text_heads=3", "text_heads (3) must divide text_hidden (128)"),
    ("mrope_section=5", "mrope_section must be 3 integers summing to half the text head"),
    ("mrope_section=[1,2,3]", "summing to half the text head dimension (16"),
    ("text_hidden=100000000", "text_hidden must be an integer from 1 to 4096"),
    ("batch_size=true", "batch_size must be a number"),
    ("full_steps=ten", "full_steps: Input should be a valid integer"),
    ("ful_steps=10", "did you mean 'full_steps'"),
    ("count_steps=0", "count_steps + full_steps must be at least 1"),
]


def test_the_default_recipe_keeps_its_key_and_passes() -> None:
    assert SeeingRecipe().key() == "ebc2f42b91"  # as test_seeing.py pins it: validation keeps it
    assert recipe_with([]) == SeeingRecipe()
    assert recipe_with(["mrope_section=[4,6,6]", "lr=2e-3"]).mrope_section == (4, 6, 6)


@pytest.mark.parametrize(("item", "needle"), BAD_SETS)
def test_a_bad_field_is_refused_naming_it(item: str, needle: str) -> None:
    changes = [item] if item != "count_steps=0" else ["count_steps=0", "full_steps=0"]
    with pytest.raises(ValueError) as caught:
        recipe_with(changes)
    message = str(caught.value)
    assert needle in message and "\n" not in message and len(message) < 400, message


def test_a_recipe_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="text_kv_heads"):
        replace(SeeingRecipe(), text_kv_heads=3)


@pytest.mark.slow
def test_the_command_refuses_before_any_folder_exists(tmp_path) -> None:
    argv = [sys.executable, "-m", "boxgym.cli", "tiny-model"]
    for item, needle in BAD_SETS[:9]:
        out = tmp_path / "seeing"
        done = subprocess.run(
            [*argv, "--seeing", "--out", str(out), "--set", item],
            capture_output=True, text=True, timeout=120, env=ENV,
        )  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith("error: bad recipe") and needle in lines[0], lines[0]
        assert not out.exists() and not out.with_name("seeing.partial").exists()
    done = subprocess.run(
        [*argv, "--out", str(tmp_path / "tiny"), "--set", "batch_size=8"],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    assert done.returncode == 2 and "add --seeing" in done.stderr, done.stderr
    assert not (tmp_path / "tiny").exists()
