"""Smol2Operator's GUI grounding data (`smolagents/aguvis-stage-1`, `smolagents/aguvis-stage-2`).

Row schema: `images` (list of screenshots) and `texts` (list of turns, each a dict with `user`,
`assistant` and optionally `system`/`source`). The assistant text is Smol2Operator's unified
action API as Python calls with coordinates normalised to [0, 1]:

- stage 1: the bare action, e.g. `click(x=0.8875, y=0.2281)`;
- stage 2: reasoning and code, e.g. `<think>...</think>\\n<code>\\nclick(x=0.41, y=0.27)\\n</code>`.

Each turn whose (first) action is a point action becomes one `point` task: the screenshot, the
user's instruction as the question, and `answer={"point": [x_px, y_px]}` in pixels of the
screenshot. The hub repositories are divided into subsets (`CONFIGS`); task ids carry the
subset when one was named or defaulted: "aguvis-stage-1-seeclick-train-0000012-0". The screenshot of turn i is `images[i]` when there is one image per turn, else the
row's single image.

Mapping into our tool format (`aguvis_action_to_tool_call`), in Qwen2-VL's [0, 1000) frame:

| aguvis action                                   | kept? | our call                        |
|-------------------------------------------------|-------|---------------------------------|
| click, double_click, right_click, long_press,   | kept  | answer(x=round(1000*x),         |
| move_mouse (x, y)                               |       |        y=round(1000*y)), <= 999 |
| drag, swipe (from_coord, to_coord)              | drop  | two points; `answer` takes one  |
| type, press, scroll, wait, open_app,            | drop  | no location in the image to     |
| navigate_back, navigate_home, final_answer      |       | ground                          |

Only the location is kept: which button was used (double, right, long) does not change where
the target is, and our tools have no notion of it. When a turn's code holds several actions,
the first decides (it is the step taken on this screenshot). Malformed code, unknown call
shapes and coordinates outside [0, 1] raise `AguvisActionError`; the loader skips those turns.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Any

from boxgym.data.loaders.cells import BadRow, decode_image
from boxgym.data.loaders.common import DatasetLoader, RowContext
from boxgym.data.task import Task

REPOS = {
    "aguvis-stage-1": "smolagents/aguvis-stage-1",
    "aguvis-stage-2": "smolagents/aguvis-stage-2",
}
# The hub repositories are split into subsets (config names), one per source dataset; one must
# be named when reading from the hub. The defaults are the subsets Smol2Operator's own scripts
# load first: web grounding (stage 1) and Android control (stage 2).
CONFIGS = {
    "aguvis-stage-1": (
        "guienv",
        "omniact",
        "ricoig16k",
        "ricosca",
        "seeclick",
        "ui_refexp",
        "webui350k",
        "widget_captioning",
    ),
    "aguvis-stage-2": (
        "aitw",
        "amex",
        "android_control",
        "coat",
        "gui-odyssey",
        "guiact-web-multi",
        "guiact-web-single",
        "mind2web",
        "miniwob",
    ),
}
DEFAULT_CONFIGS = {"aguvis-stage-1": "seeclick", "aguvis-stage-2": "android_control"}
POINT_ACTIONS = ("click", "double_click", "right_click", "long_press", "move_mouse")
DROPPED_ACTIONS = {
    "drag": "two points; answer takes one",
    "swipe": "two points; answer takes one",
    "type": "no location",
    "press": "no location",
    "scroll": "no location",
    "wait": "no location",
    "open_app": "no location",
    "navigate_back": "no location",
    "navigate_home": "no location",
    "final_answer": "no location",
}
QWEN_FRAME_SIZE = 1000
_CODE = re.compile(r"<code>(.*?)</code>", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"^```[a-zA-Z]*\n?|\n?```$")


class AguvisActionError(ValueError):
    """An assistant text that holds no usable action (malformed, dropped kind, out of range)."""


@dataclass(frozen=True)
class AguvisAction:
    """One parsed call: `name(*args, **kwargs)` with literal arguments."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def point(self) -> tuple[float, float]:
        """The normalised (x, y) of a point action, checked to lie in [0, 1]."""
        if self.name not in POINT_ACTIONS:
            reason = DROPPED_ACTIONS.get(self.name, "unknown action")
            raise AguvisActionError(f"{self.name}() is not a point action ({reason})")
        if "x" in self.kwargs and "y" in self.kwargs:
            x, y = self.kwargs["x"], self.kwargs["y"]
        elif len(self.args) == 2:
            x, y = self.args
        else:
            raise AguvisActionError(f"{self.name}() needs x and y")
        for v in (x, y):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise AguvisActionError(f"{self.name}() coordinate {v!r} is not a number")
            if not 0.0 <= v <= 1.0:
                raise AguvisActionError(f"{self.name}() coordinate {v} outside [0, 1]")
        return float(x), float(y)


def action_code(text: str) -> str:
    """The code part of an assistant text: inside `<code>` if present, without `<think>`."""
    if not isinstance(text, str):
        raise AguvisActionError(f"assistant text is {type(text).__name__}, not str")
    blocks = _CODE.findall(text)
    code = "\n".join(blocks) if blocks else _THINK.sub("", text)
    if "<think>" in code or "<code>" in code:
        raise AguvisActionError("unterminated <think> or <code> block")
    return _FENCE.sub("", code.strip()).strip()


def parse_aguvis_actions(text: str) -> list[AguvisAction]:
    """All top-level calls in an assistant text, in order.

    Raises:
        AguvisActionError: no code, a syntax error, or a statement that is not a plain call
            with literal arguments.
    """
    code = action_code(text)
    if not code:
        raise AguvisActionError("no action in assistant text")
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as exc:
        raise AguvisActionError(f"unparsable action {code[:60]!r}: {exc.msg}") from exc
    actions = []
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            raise AguvisActionError(f"not a call: {ast.unparse(stmt)[:60]!r}")
        try:
            args = tuple(ast.literal_eval(a) for a in call.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        except ValueError as exc:
            raise AguvisActionError(f"non-literal argument in {ast.unparse(call)[:60]!r}") from exc
        actions.append(AguvisAction(call.func.id, args, kwargs))
    if not actions:
        raise AguvisActionError("no action in assistant text")
    return actions


def aguvis_action_to_tool_call(
    text: str, image_size: tuple[int, int], frame: str = "qwen"
) -> tuple[str, dict[str, Any]]:
    """Our tool call for an aguvis assistant text: ("answer", {"x": ..., "y": ...}).

    Args:
        text: the assistant text (stage 1 bare call or stage 2 think/code).
        image_size: (width, height) of the screenshot, for the "pixels" frame.
        frame: "qwen" (integers in [0, 1000), the default), "pixels" or "unit" ([0, 1]).

    Raises:
        AguvisActionError: malformed text, or a first action that is not a point action.
    """
    x, y = parse_aguvis_actions(text)[0].point()
    width, height = image_size
    if frame == "qwen":
        top = QWEN_FRAME_SIZE - 1
        return "answer", {
            "x": min(top, max(0, round(x * QWEN_FRAME_SIZE))),
            "y": min(top, max(0, round(y * QWEN_FRAME_SIZE))),
        }
    if frame == "pixels":
        return "answer", {"x": round(x * width, 1), "y": round(y * height, 1)}
    if frame == "unit":
        return "answer", {"x": x, "y": y}
    raise ValueError(f"frame must be 'qwen', 'pixels' or 'unit', got {frame!r}")


def _instruction(turn: dict[str, Any]) -> str:
    user = turn.get("user")
    if not isinstance(user, str):
        raise BadRow("missing instruction", repr(user)[:80])
    text = user.replace("<image>", "").strip()
    if not text:
        raise BadRow("missing instruction")
    return text


def _row_parts(row: dict[str, Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    images, texts = row.get("images"), row.get("texts")
    if not isinstance(images, list) or not images:
        raise BadRow("missing image", "images is empty or not a list")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, dict) for t in texts):
        raise BadRow("wrong type", "texts is not a list of turns")
    if len(images) != 1 and len(images) != len(texts):
        raise BadRow("ambiguous image for turn", f"{len(images)} images, {len(texts)} turns")
    return images, texts


def make_row_key(name: str) -> Any:
    def row_key(row: dict[str, Any], ctx: RowContext) -> str:
        subset = f"{ctx.config}-" if ctx.config else ""
        return f"{name}-{subset}{ctx.split}-{ctx.index:07d}"

    return row_key


def make_converter(name: str) -> Any:
    """The row converter for one stage (the stages share a schema; only the name differs)."""
    repo = REPOS[name]
    row_key = make_row_key(name)

    def row_to_tasks(row: dict[str, Any], ctx: RowContext) -> list[Task]:
        images, texts = _row_parts(row)
        decoded: dict[int, Any] = {}
        tasks, failures = [], []
        for turn_index, turn in enumerate(texts):
            try:
                action = parse_aguvis_actions(turn.get("assistant"))[0]
                point = action.point()
            except AguvisActionError as exc:
                failures.append(str(exc))
                continue
            image_index = 0 if len(images) == 1 else turn_index
            if image_index not in decoded:
                decoded[image_index] = decode_image(
                    images[image_index], ctx.base_dir, column=f"images[{image_index}]"
                )
            image = decoded[image_index]
            width, height = image.size
            name_args = aguvis_action_to_tool_call(turn["assistant"], (width, height))
            task_id = f"{row_key(row, ctx)}-{turn_index}"
            tasks.append(
                Task(
                    id=task_id,
                    images=[image],
                    question=_instruction(turn),
                    kind="point",
                    answer={"point": [point[0] * width, point[1] * height]},
                    source=name,
                    split=ctx.split,
                    meta={
                        "uid": task_id,
                        "dataset": repo,
                        "revision": ctx.revision,
                        "config": ctx.config,
                        "row": ctx.index,
                        "turn": turn_index,
                        "action": action.name,
                        "point_normalized": list(point),
                        "tool_call": {"name": name_args[0], "arguments": name_args[1]},
                        "assistant": turn["assistant"],
                        "system": turn.get("system"),
                        "image_sizes": [[width, height]],
                    },
                )
            )
        if not tasks:
            dropped = all(("not a point action" in f) for f in failures)
            raise BadRow("no point action" if dropped else "unparsable action", failures[0])
        return tasks

    return row_to_tasks


LOADERS = {
    name: DatasetLoader(
        name=name,
        repo=repo,
        default_split="train",
        convert=make_converter(name),
        row_key=make_row_key(name),
        description=f"Smol2Operator {name}: screenshot + instruction -> click point (point).",
        configs=CONFIGS[name],
        default_config=DEFAULT_CONFIGS[name],
    )
    for name, repo in REPOS.items()
}
