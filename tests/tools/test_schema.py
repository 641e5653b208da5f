from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pytest

from boxgym.tools.schema import SchemaError, function_schema, tool_schemas
from boxgym.tools.toolbox import TOOL_NAMES, Toolbox

get_json_schema = pytest.importorskip("transformers.utils").get_json_schema


def test_schemas_equal_transformers_get_json_schema():
    box = Toolbox()
    ours = tool_schemas(box)
    assert [s["function"]["name"] for s in ours] == list(TOOL_NAMES)
    assert ours == [get_json_schema(getattr(box, name)) for name in TOOL_NAMES]
    assert tool_schemas(Toolbox) == ours


def test_every_argument_is_described():
    for schema in tool_schemas(Toolbox):
        for name, prop in schema["function"]["parameters"]["properties"].items():
            assert prop["description"], name


def test_functions_with_literals_unions_and_choices():
    def pick(mode: Literal["a", "b"], n: int | str, xs: dict[str, float], tag: str = "q") -> None:
        """Pick one.

        Args:
            mode: The mode.
            n: A number
                or a name.
            xs: Weights.
            tag: A tag. (choices: ["q", "r"])
        """

    assert tool_schemas([pick]) == [get_json_schema(pick)]


def test_missing_descriptions_and_hints_are_errors():
    def f(x: int) -> None:
        """No args block."""

    def g(x) -> None:
        """G.

        Args:
            x: thing.
        """

    with pytest.raises(SchemaError, match="no description"):
        function_schema(f)
    with pytest.raises(SchemaError, match="no type hint"):
        function_schema(g)


def test_import_boxgym_stays_light():
    code = (
        "import sys, boxgym, boxgym.env, boxgym.tools;"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'scipy', 'datasets') if m in sys.modules];"
        "print(heavy); assert not heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
