"""The `Policy` contract: one batched call per turn for all live episodes.

Messages are in the transformers multimodal chat format, exactly as the environment emits them:

    {"role": "system" | "user" | "assistant" | "tool",
     "content": [{"type": "image", "image": PIL.Image} | {"type": "text", "text": str}, ...]}

Tool messages also carry "name" (the tool called). An assistant message's text is the model's raw
output (tool calls inside `<tool_call>...</tool_call>`), so replaying it reproduces the tokens.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
Conversation = list[Message]


@runtime_checkable
class Policy(Protocol):
    """Anything that turns conversations into assistant texts.

    `act` receives every live episode's conversation so far, plus the JSON schemas of the tools
    (rendered into the prompt by the chat template's `tools=` argument), and returns one raw
    assistant text per conversation, in order. `tasks` gives scripted policies the ground truth;
    model policies ignore it.

    A policy that fails part-way (a server that dies with some requests answered) may set
    `partial = {conversation index: text}` on the exception it raises: the runner steps and
    stores those conversations before it reports the failure.
    """

    name: str

    def act(
        self,
        conversations: list[Conversation],
        tools: list[dict[str, Any]],
        tasks: list[Any] | None = None,
    ) -> list[str]: ...
