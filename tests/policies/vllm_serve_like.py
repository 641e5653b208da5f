"""A loopback chat-completions server that enforces what `vllm serve` 0.33 enforces.

Rules, each read from vLLM 0.33's source (wheel `vllm-0.33.0`):
- `tools: []` answers 400 (`ChatCompletionRequest.check_tool_usage`,
  `vllm/entrypoints/openai/chat_completion/protocol.py`).
- `tools` without `tool_choice` means `tool_choice="auto"` (same validator).
- Without `--tool-call-parser`, "auto" answers 400 '"auto" tool choice requires
  --enable-auto-tool-choice and --tool-call-parser to be set', and "required" or a named tool
  answers 400 too; only a missing/None or "none" choice passes (`vllm/renderers/online_renderer.py`).
- The reply's special tokens are stripped unless the body says `skip_special_tokens: false`
  (None means true: `to_sampling_params` in protocol.py); the server does not parse tool calls,
  so the content is the raw text.

The model behind it is a callable from our conversation format to the raw assistant text.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from boxgym.models.tiny import QWEN2_VL_SPECIAL_TOKENS

AUTO_ERROR = (
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
)


def strip_special_tokens(text: str) -> str:
    """What vLLM's detokenizer leaves of `text` with skip_special_tokens=True (Qwen2-VL)."""
    for token in QWEN2_VL_SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text


def from_openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-completions messages back in boxgym's format (images decoded from data URLs)."""
    out = []
    for message in messages:
        content = message.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "text", "text": content})
        for part in content if isinstance(content, list) else []:
            if part["type"] == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                image = Image.open(io.BytesIO(base64.b64decode(data)))
                parts.append({"type": "image", "image": image.convert("RGB")})
            else:
                parts.append({"type": "text", "text": part["text"]})
        converted = {"role": message["role"], "content": parts}
        if "name" in message:
            converted["name"] = message["name"]
        out.append(converted)
    return out


def check_request(body: dict[str, Any]) -> str | None:
    """The 400 message vLLM 0.33 (no tool parser) answers `body` with, or None."""
    tools = body.get("tools")
    if tools == []:
        return "`tools` must not be an empty array."
    choice = body.get("tool_choice", "auto" if tools else None)
    if choice in (None, "none"):
        return None
    if choice == "auto":
        return AUTO_ERROR
    return f"tool_choice={choice!r} requires --tool-call-parser to be set"


class VLLMServeLike:
    """A real HTTP server on 127.0.0.1 answering /v1/chat/completions by vLLM's rules."""

    def __init__(self, reply: Callable[[list[dict[str, Any]], dict[str, Any]], str]) -> None:
        self.reply = reply
        self.bodies: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.bodies.append(body)
                error = check_request(body)
                if error is not None:
                    with lock:
                        server.rejected.append(error)
                    payload: dict[str, Any] = {
                        "error": {"message": error, "type": "BadRequestError", "code": 400}
                    }
                    code = 400
                else:
                    text = server.reply(from_openai_messages(body["messages"]), body)
                    skip = body.get("skip_special_tokens")
                    if skip is None or skip:
                        text = strip_special_tokens(text)
                    message = {"role": "assistant", "content": text, "tool_calls": []}
                    payload = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    }
                    code = 200
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
