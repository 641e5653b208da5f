from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from boxgym.env.parsing import format_tool_call
from boxgym.errors import ServerError
from boxgym.policies.base import Policy
from boxgym.policies.openai_policy import (
    OpenAIPolicy,
    ServerUnreachableError,
    to_openai_messages,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "answer",
            "description": "Give the final answer.",
            "parameters": {
                "type": "object",
                "properties": {"count": {"type": "integer", "description": "How many."}},
                "required": ["count"],
            },
        },
    }
]


def conversation(with_tool_turn: bool = False) -> list[dict]:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Count."}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (56, 84), "red")},
                {"type": "text", "text": "How many?"},
            ],
        },
    ]
    if with_tool_turn:
        messages += [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": format_tool_call("answer", {"count": 1})}],
            },
            {
                "role": "tool",
                "name": "answer",
                "content": [
                    {"type": "image", "image": Image.new("RGB", (56, 56), "blue")},
                    {"type": "text", "text": "Noted."},
                ],
            },
        ]
    return messages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_messages_convert_to_chat_completions_format():
    converted = to_openai_messages(conversation(with_tool_turn=True))
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "tool"]
    assert converted[0]["content"] == "Count."
    assert converted[1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert converted[2]["content"].startswith("<tool_call>")
    assert converted[3]["name"] == "answer"
    assert converted[3]["content"][1] == {"type": "text", "text": "Noted."}


class StubChatServer:
    """A real loopback HTTP server answering chat completions, counting requests in flight."""

    def __init__(self, delay: float = 0.05, fail_first: int = 0, status: int = 503) -> None:
        self.delay, self.fail_first, self.status = delay, fail_first, status
        self.in_flight = self.max_in_flight = self.requests = 0
        self.bodies: list[dict] = []
        lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.requests += 1
                    number = stub.requests
                    stub.bodies.append(body)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                time.sleep(stub.delay)
                with lock:
                    stub.in_flight -= 1
                if number <= stub.fail_first:
                    payload, code = {"error": {"message": "busy"}}, stub.status
                else:
                    payload, code = stub.completion(body), 200
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def completion(body: dict) -> dict:
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "answer", "arguments": json.dumps({"count": body["seed"]})},
        }
        message = {"role": "assistant", "content": "I count.", "tool_calls": [call]}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = StubChatServer()
    yield server
    server.close()


@pytest.mark.slow
def test_concurrency_is_bounded_order_kept_and_tool_calls_reserialised(stub):
    policy = OpenAIPolicy(
        base_url=stub.url, model="m", max_concurrency=3, seed=10, stop=["<|im_end|>"]
    )
    assert isinstance(policy, Policy)
    texts = policy.act([conversation()] * 9, TOOLS)
    assert stub.requests == 9
    assert stub.max_in_flight == 3  # used the bound, never exceeded it
    assert texts == [f"I count.\n{format_tool_call('answer', {'count': 10 + i})}" for i in range(9)]
    body = stub.bodies[0]
    assert body["tools"] == TOOLS and body["stop"] == ["<|im_end|>"]
    assert body["tool_choice"] == "none" and body["skip_special_tokens"] is False
    assert body["max_tokens"] == 256 and body["temperature"] == 1.0


@pytest.mark.slow
def test_server_errors_are_retried_with_backoff():
    server = StubChatServer(delay=0, fail_first=2, status=503)
    try:
        policy = OpenAIPolicy(base_url=server.url, model="m", max_retries=2)
        assert policy.act([conversation()], TOOLS)[0].startswith("I count.")
        assert server.requests == 3
    finally:
        server.close()


@pytest.mark.slow
def test_client_errors_are_not_retried():
    server = StubChatServer(delay=0, fail_first=5, status=400)
    try:
        policy = OpenAIPolicy(base_url=server.url, model="m", max_retries=3)
        with pytest.raises(ServerError, match="rejected the request \\(400\\)"):
            policy.act([conversation()], TOOLS)
        assert server.requests == 1
    finally:
        server.close()


@pytest.mark.slow
def test_unreachable_server_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    policy = OpenAIPolicy(base_url=url, model="m", max_retries=2, timeout=2)
    start = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=url.replace(".", "\\.")) as error:
        policy.act([conversation()] * 20, TOOLS)
    assert "3 attempt(s)" in str(error.value)
    assert time.monotonic() - start < 10


@pytest.fixture(scope="module")
def transformers_server(tiny_model_path):
    """`transformers serve` with the tiny checkpoint on a free loopback port, CPU only."""
    port = free_port()
    cli = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(
        [
            str(cli),
            "serve",
            str(tiny_model_path),
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240  # a loaded 2-core machine needs minutes to import and load
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()  # reading stderr of a live process would block for ever
                    _, err = process.communicate(timeout=30)
                    raise RuntimeError(
                        f"transformers serve did not come up: {err.decode()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_real_transformers_serve_with_tiny_model(transformers_server, tiny_model_path):
    policy = OpenAIPolicy(
        base_url=transformers_server,
        model=str(tiny_model_path),
        max_concurrency=2,
        max_new_tokens=6,
        seed=1,
        timeout=60,
        dialect="generic",  # transformers serve answers 422 to vLLM's extra fields
    )
    texts = policy.act([conversation(), conversation(with_tool_turn=True)], TOOLS)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    for text in texts:
        assert "<|im_end|>" not in text and "<|image_pad|>" not in text


@pytest.mark.slow
def test_server_sees_the_same_prompt_tokens_as_our_renderer(transformers_server, tiny_model_path):
    from boxgym.policies.prompting import load_processor, prepare_inputs

    policy = OpenAIPolicy(
        base_url=transformers_server, model=str(tiny_model_path), timeout=60, dialect="generic"
    )
    processor = load_processor(tiny_model_path)
    messages = conversation(with_tool_turn=True)
    response = policy._client.chat.completions.create(
        model=policy.model, messages=to_openai_messages(messages), tools=TOOLS, max_tokens=1
    )
    ours = prepare_inputs(processor, [messages], TOOLS)["input_ids"].shape[1]
    assert response.usage.prompt_tokens == ours


def test_vllm_dialect_sends_vllms_own_fields_and_the_whole_tool_schemas():
    """What the vllm dialect adds for `vllm serve` (tested against the real server in
    test_vllm_serve.py); the generic dialect sends standard fields only."""
    policy = OpenAIPolicy(base_url="http://127.0.0.1:9/v1", model="m")
    assert policy.extra_body(TOOLS) == {
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "chat_template_kwargs": {"tools": TOOLS},
    }
    assert policy.tool_kwargs(TOOLS) == {"tools": TOOLS, "tool_choice": "none"}
    assert "chat_template_kwargs" not in policy.extra_body([])
    assert policy.tool_kwargs([]) == {}  # zero-shot: no tools, no tool_choice
    generic = OpenAIPolicy(model="m", dialect="generic")
    assert generic.extra_body(TOOLS) is None
    assert generic.tool_kwargs(TOOLS)["tool_choice"] == "auto"
