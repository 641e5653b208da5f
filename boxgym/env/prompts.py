"""System instructions per task kind and coordinate frame.

The tool schemas are NOT written here: whoever tokenizes renders them with the chat template's
`tools=` argument (as TRL does), so every path sees the same tokens. These instructions say how
to use the tools for the task at hand and how coordinates are written.
"""

from __future__ import annotations

from boxgym.tools.frames import check_frame

FRAME_TEXT: dict[str, str] = {
    "qwen": (
        "Coordinates are integers from 0 to 1000 relative to the image: x=0 is the left edge, "
        "x=1000 the right edge, y=0 the top, y=1000 the bottom, whatever the image's size."
    ),
    "pixels": "Coordinates are pixels of the original image, (0, 0) at the top-left corner.",
    "unit": (
        "Coordinates are numbers from 0 to 1 relative to the image: x=0 is the left edge, "
        "x=1 the right edge, y=0 the top, y=1 the bottom."
    ),
}

# What to do for each task kind. The counting kinds say how the boxes are used, which depends on
# the protocol: `LOOP_TEXT` when a reply holds one call and the marked image comes back (mark and
# look), `ONE_REPLY_TEXT` when one reply may box everything and answer.
LOOP_TEXT: dict[str, str] = {
    "enumerate": (
        "Go through the objects one at a time. In each reply, call draw_box on one object that "
        "has no box yet, with a short label saying what it is; {seen} When every object is boxed, "
        "call answer with count (how many) and items (one label per object). Use crop to look "
        "closely at small or crowded areas, label to fix a label and remove_box to undo a mistake."
    ),
    "count": (
        "Count one object at a time. In each reply, call draw_box on one object that has no box "
        "yet; {seen} When every object is boxed, call answer with count. Use crop to look "
        "closely at crowded areas and remove_box to undo a mistake."
    ),
}
SEEN_TEXT: dict[bool, str] = {
    True: "the image comes back with every box drawn, so you can see which objects are done.",
    False: "the boxes drawn so far come back as text.",
}
ONE_REPLY_TEXT: dict[str, str] = {
    "enumerate": (
        "Call draw_box once per object, with a short label saying what it is, then call answer "
        "with count (how many) and items (one label per object); one reply may hold every call. "
        "Use crop to look closely at small or crowded areas, label to fix a label and remove_box "
        "to undo a mistake."
    ),
    "count": (
        "Count carefully: you may call draw_box once per object to keep track of the ones "
        "counted, and crop to look closely at crowded areas. Then call answer with count."
    ),
}
OTHER_KIND_TEXT: dict[str, str] = {
    "verify": (
        "Decide whether the statement is true of the image(s). You may crop to look closely and "
        "draw_box to mark what you check. Then call answer with value true or false."
    ),
    "point": (
        "Find the object asked for. You may crop to look closely. Then call answer with x and y, "
        "a point on that object."
    ),
}
KINDS: tuple[str, ...] = ("enumerate", "count", "verify", "point")

PREAMBLE = (
    "You are a careful visual assistant. You answer questions about images by calling tools. "
    'Call a tool by writing <tool_call>{"name": ..., "arguments": {...}}</tool_call>; '
)
ONE_CALL = "make one call per reply. Its result comes back in the next message."
SEVERAL_CALLS = (
    "you may make several calls in one reply. The tools' results come back in the next message."
)


def system_prompt(
    kind: str,
    frame: str = "qwen",
    num_images: int = 1,
    max_calls_per_turn: int | None = None,
    max_turns: int | None = None,
    marks_shown: bool = True,
) -> str:
    """The system instructions for a task of `kind` with coordinates in `frame`.

    `max_calls_per_turn` 1 gives the mark-and-look wording (one object per reply), anything else
    the one-reply wording; `marks_shown` says whether draw_box answers with the marked image.
    `max_calls_per_turn` and `max_turns`, when given, are stated so the limits are explicit.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; choose one of {KINDS}")
    check_frame(frame)
    one_call = max_calls_per_turn == 1
    if kind in OTHER_KIND_TEXT:
        task_text = OTHER_KIND_TEXT[kind]
    elif one_call:
        task_text = LOOP_TEXT[kind].format(seen=SEEN_TEXT[marks_shown])
    else:
        task_text = ONE_REPLY_TEXT[kind]
    parts = [PREAMBLE + (ONE_CALL if one_call else SEVERAL_CALLS), task_text, FRAME_TEXT[frame]]
    if num_images > 1:
        parts.append("There are two images: pass image=0 for the first and image=1 for the second.")
    limits = []
    if max_calls_per_turn is not None and not one_call:
        limits.append(f"at most {max_calls_per_turn} tool calls per reply")
    if max_turns is not None:
        limits.append(f"at most {max_turns} replies")
    ending = "The episode ends when you call answer"
    parts.append(ending + (f" ({' and '.join(limits)})." if limits else "."))
    return "\n\n".join(parts)
