"""JSON schemas of the tools, derived from their signatures and Google-style docstrings.

The output is exactly what `transformers.utils.get_json_schema` produces for the same function
(a test compares them), so the schemas the env exposes, the ones TRL derives from the
`environment_factory` class, and the ones rendered into a chat template's `tools=` all agree.
This module does not import transformers.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import types
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from PIL import Image

_DESCRIPTION_RE = re.compile(r"^(.*?)[\n\s]*(Args:|Returns:|Raises:|\Z)", re.DOTALL)
_ARGS_RE = re.compile(r"\n\s*Args:\n(.*?)[\n\s]*(Returns:|Raises:|\Z)", re.DOTALL)
_ARGS_SPLIT_RE = re.compile(
    r"""
(?:^|\n)
([ \t]*)(\w+):\s*
(.*?)\s*
(?=\n(?!\1[ \t])[ \t]*\w+:|\Z)
""",
    re.DOTALL | re.VERBOSE,
)
_RETURNS_RE = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(Raises:|\Z)", re.DOTALL)
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_BASIC = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    dict: {"type": "object"},
    Any: {},
    Image.Image: {"type": "image"},
}


class SchemaError(ValueError):
    """A tool cannot be described: a missing type hint, docstring or argument description."""


def _enum(values: list) -> dict:
    kinds = list(dict.fromkeys(_SCALARS[type(v)] for v in values))
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


def _type_schema(hint: Any) -> dict:
    origin, args = get_origin(hint), get_args(hint)
    if origin is None:
        if hint in _BASIC:
            return dict(_BASIC[hint])
        raise SchemaError(
            f"cannot describe type hint {hint!r}; use basic types, list, dict, Literal or unions"
        )
    if origin is Union or origin is types.UnionType:
        subtypes = [_type_schema(t) for t in args if t is not type(None)]
        if len(subtypes) == 1:
            out = subtypes[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subtypes):
            names = sorted({s["type"] for s in subtypes})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": subtypes}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is Literal and args:
        return _enum(list(args))
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or ... in args:
            raise SchemaError(f"cannot describe {hint!r}; use list[...] for variable length")
        return {"type": "array", "prefixItems": [_type_schema(t) for t in args]}
    if origin is dict:
        out = {"type": "object"}
        if len(args) == 2:
            out["additionalProperties"] = _type_schema(args[1])
        return out
    raise SchemaError(f"cannot describe type hint {hint!r}")


def _parse_docstring(doc: str) -> tuple[str | None, dict[str, str], str | None]:
    description = _DESCRIPTION_RE.search(doc)
    args_block = _ARGS_RE.search(doc)
    returns = _RETURNS_RE.search(doc)
    arguments: dict[str, str] = {}
    if args_block is not None:
        block = "\n".join(line for line in args_block.group(1).split("\n") if line.strip())
        for match in _ARGS_SPLIT_RE.findall(block):
            arguments[match[1]] = re.sub(r"\s*\n+\s*", " ", match[2].strip())
    return (
        description.group(1).strip() if description else None,
        arguments,
        returns.group(1).strip() if returns else None,
    )


def function_schema(func: Callable) -> dict[str, Any]:
    """The `{"type": "function", "function": {...}}` schema of one function or bound method."""
    name = getattr(func, "__name__", "operation")
    doc = inspect.getdoc(func)
    if not doc:
        raise SchemaError(f"cannot describe {name}: it has no docstring")
    description, arg_docs, returns_doc = _parse_docstring(doc.strip())
    hints = get_type_hints(func)
    signature = inspect.signature(func)
    first = next(iter(signature.parameters), None)
    receiver = (
        first
        if first in {"self", "cls"}
        and signature.parameters[first].annotation == inspect.Parameter.empty
        else None
    )
    required = []
    for param_name, param in signature.parameters.items():
        if param_name == receiver:
            continue
        if param.annotation == inspect.Parameter.empty:
            raise SchemaError(f"argument {param_name} of {name} has no type hint")
        if param.default == inspect.Parameter.empty:
            required.append(param_name)
    properties: dict[str, Any] = {}
    for param_name, hint in hints.items():
        if param_name == receiver:
            continue
        if param_name == "return":
            with contextlib.suppress(SchemaError):
                properties["return"] = _type_schema(hint)
        else:
            properties[param_name] = _type_schema(hint)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return_schema = properties.pop("return", None)
    if return_schema is not None and returns_doc is not None:
        return_schema["description"] = returns_doc
    for arg, schema in properties.items():
        if arg not in arg_docs:
            raise SchemaError(
                f"cannot describe {name}: the docstring has no description for argument {arg!r}"
            )
        text = arg_docs[arg]
        choices = re.search(r"\(choices:\s*(.*?)\)\s*$", text, flags=re.IGNORECASE)
        if choices:
            schema["enum"] = [
                c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))
            ]
            text = choices.string[: choices.start()].strip()
        schema["description"] = text
    function: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if return_schema is not None:
        function["return"] = return_schema
    return {"type": "function", "function": function}


def tool_schemas(obj_or_functions: Any) -> list[dict[str, Any]]:
    """JSON schemas of a toolbox's tools (an instance or class) or of an iterable of functions.

    For an object, the tools are its public methods (as TRL's `environment_factory` sees them),
    minus `reset` and `get_reward`, in definition order.
    """
    if isinstance(obj_or_functions, Iterable) and not isinstance(obj_or_functions, (str, type)):
        return [function_schema(f) for f in obj_or_functions]
    cls = obj_or_functions if isinstance(obj_or_functions, type) else type(obj_or_functions)
    names = []
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if (
                inspect.isfunction(value)
                and not attr.startswith("_")
                and attr not in ("reset", "get_reward")
            ) and attr not in names:
                names.append(attr)
    return [function_schema(getattr(obj_or_functions, attr)) for attr in names]
