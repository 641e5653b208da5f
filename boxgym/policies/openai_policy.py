"""The `openai` policy: chat completions against any OpenAI-compatible server.

Works with `vllm serve`, `transformers serve` and hosted APIs. Images travel as base64 PNG data
URLs; the tool schemas go in `tools=`, so the server's chat template renders them. For the same
tokens as every other boxgym path, serve the model with boxgym's template, e.g.
`vllm serve Qwen/Qwen2-VL-2B-Instruct --chat-template <boxgym>/policies/chat_template.jinja`
(`chat_template_path()` gives the file); the tiny checkpoint already carries it.

Requests run concurrently on at most `max_concurrency` threads. Retries are the openai client's
own (`max_retries`: connection errors, timeouts, 408/409/429 and 5xx, with its exponential
backoff). Each attempt has a whole-request deadline of `timeout` seconds (`DeadlineTransport`):
httpx's timeouts are per read, so a server that trickles a byte a second would never time out.
When the server cannot be reached after the retries, or answers with something that is not a
chat completion, `act` fails fast with one line naming the URL and the cause. Several
`base_url`s (a fleet of `vllm serve` replicas) share the requests round-robin by request index.

What a `vllm serve` (0.33) request must carry, read from its source:
- `tool_choice`: vLLM turns a missing `tool_choice` into "auto" when `tools` are given
  (`ChatCompletionRequest.check_tool_usage` in
  `vllm/entrypoints/openai/chat_completion/protocol.py`), and "auto", "required" or a named tool
  answer HTTP 400 unless the server runs with a `--tool-call-parser`
  (`vllm/renderers/online_renderer.py`). "none" passes on every server and still renders the
  tools into the prompt through the chat template (unless the server was started with
  `--exclude-tools-when-tool-choice-none`, which would hide the tools from the model: do not use
  it); the reply comes back as raw text, which the env parses itself. So the "vllm" dialect
  sends `tool_choice="none"` (as TRL 1.16's own vLLM client does, trl/generation/vllm_client.py).
- `skip_special_tokens`: None means true (`to_sampling_params` in the same protocol file), which
  strips Qwen2-VL's `<|object_ref_start|>`/`<|box_start|>` grounding tokens from the reply; the
  "vllm" dialect sends false, and `spaces_between_special_tokens` false, because vLLM's
  detokenizer otherwise joins the pieces around added tokens with spaces
  (`vllm/tokenizers/detokenizer_utils.py`).
- The tool schemas: vLLM validates `tools` into its `FunctionDefinition` model, which keeps
  only name, description, parameters and strict (`vllm/entrypoints/generate/base/protocol.py`),
  so a schema's `return` entry (TRL and the env write one) never reaches the chat template and
  the model sees other tokens than in training. The "vllm" dialect also sends the schemas as
  `chat_template_kwargs={"tools": ...}`, which vLLM passes to the template over its own copy
  (`merge_kwargs` in `vllm/renderers/params.py`): the served prompt is then token for token the
  one `render_chat` makes (tested against a real `vllm serve`).
The "generic" dialect (hosted APIs, `transformers serve`, which answers 422 to unknown fields)
sends standard fields only, with `tool_choice="auto"`, and re-serialises structured tool calls.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from importlib.resources import files
from pathlib import Path
from typing import Any

from PIL import Image

from boxgym.errors import ServerError
from boxgym.policies.base import Conversation
from boxgym.policies.prompting import clean_completion, normalize_messages

DIALECTS: tuple[str, ...] = ("vllm", "generic")
# vLLM's own sampling fields, sent in the request body beside the standard ones.
VLLM_EXTRA_BODY: dict[str, Any] = {
    "skip_special_tokens": False,
    "spaces_between_special_tokens": False,
}


class ServerUnreachableError(ServerError, ConnectionError):
    """The OpenAI-compatible server did not answer (refused, timed out, or kept failing)."""


def chat_template_path() -> Path:
    """Path of boxgym's chat template, for `vllm serve --chat-template`."""
    return Path(str(files("boxgym.policies") / "chat_template.jinja"))


def image_data_url(image: Image.Image) -> str:
    """`image` as a `data:image/png;base64,...` URL (lossless, so the server sees our pixels)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_openai_messages(messages: Conversation) -> list[dict[str, Any]]:
    """Our multimodal messages in the chat-completions format.

    Text parts stay text parts, images become `image_url` parts; assistant turns carry the raw
    text (tool calls inside it), tool results keep their role and name.
    """
    converted = []
    for message in normalize_messages(messages):
        parts: list[dict[str, Any]] = []
        for part in message["content"]:
            if part["type"] == "image":
                parts.append(
                    {"type": "image_url", "image_url": {"url": image_data_url(part["image"])}}
                )
            else:
                parts.append({"type": "text", "text": part["text"]})
        out: dict[str, Any] = {"role": message["role"]}
        if message["role"] in ("system", "assistant"):
            out["content"] = "".join(p["text"] for p in parts if p["type"] == "text")
        else:
            out["content"] = parts
        if message["role"] == "tool":
            out["name"] = message["name"]
        converted.append(out)
    return converted


def completion_text(message: Any) -> str:
    """The raw assistant text of a chat-completion message, tool calls in `<tool_call>` form.

    Servers that parse tool calls return them as structured `tool_calls` and strip them from the
    content; they are re-serialised with the env's canonical `format_tool_calls`.
    """
    from boxgym.env.parsing import format_tool_calls

    blocks = [message.content] if message.content else []
    for call in message.tool_calls or []:
        function = call.function
        try:
            arguments = json.loads(function.arguments) if function.arguments else {}
        except json.JSONDecodeError:
            # Keep the malformed arguments verbatim: the env's parser reports them to the model.
            name = json.dumps(function.name)
            blocks.append(
                f'<tool_call>\n{{"name": {name}, "arguments": {function.arguments}}}\n</tool_call>'
            )
            continue
        blocks.append(format_tool_calls([(function.name, arguments)]))
    return clean_completion("\n".join(blocks))


class OpenAIPolicy:
    """A policy that asks an OpenAI-compatible chat-completions server.

    Args:
        base_url: the server's API root, e.g. "http://127.0.0.1:8000/v1", or a list of them
            (replicas serving the same model): request i of the run goes to base_url[i % n].
        model: the model name the server knows.
        api_key: sent as bearer token (local servers accept anything).
        max_concurrency: requests in flight at most.
        timeout: seconds per attempt, for the whole request (connect, send, answer).
        max_retries: further attempts after a failed one (the openai client's retries:
            connection, timeout, 408, 409, 429, 5xx; its exponential backoff).
        temperature, top_p, max_new_tokens: decoding knobs.
        seed: base seed; request i of the run gets seed + i (servers that honour it repeat).
        stop: extra stop strings. Servers end the turn at the model's eos (`<|im_end|>`) by
            themselves; `transformers serve` 5.23 fails on stop strings with VLM processors.
        dialect: "vllm" (`vllm serve`: tool_choice "none", special tokens kept) or "generic"
            (standard fields only, tool_choice "auto"); see the module docstring.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | list[str] = "http://127.0.0.1:8000/v1",
        model: str = "default",
        api_key: str = "EMPTY",
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 3,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = 0,
        stop: list[str] | None = None,
        dialect: str = "vllm",
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0 or timeout <= 0:
            raise ValueError("max_retries must be >= 0 and timeout > 0")
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError(
                f"base_url must be a URL or a non-empty list of URLs, got {base_url!r}"
            )
        try:
            import openai
        except ImportError as error:
            raise ImportError(
                "the openai policy needs the `openai` client: pip install boxgym[model]"
            ) from error
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.dialect = dialect
        self.model = str(model)
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.stop = list(stop) if stop else None
        self.requests_sent = 0
        self.tokens_generated = 0  # completion tokens the server reported (progress tokens/s)
        self._openai = openai
        self._clients = [
            openai.OpenAI(
                base_url=url,
                api_key=api_key,
                timeout=timeout,
                max_retries=max_retries,
                http_client=openai.DefaultHttpxClient(
                    transport=DeadlineTransport(deadline_s=timeout), timeout=timeout
                ),
            )
            for url in self.base_urls
        ]
        self._client = self._clients[0]
        self._lock = threading.Lock()

    def request_kwargs(self, index: int) -> dict[str, Any]:
        """The decoding knobs as chat-completions arguments for the run's request `index`."""
        kwargs: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_new_tokens,
        }
        if self.stop:
            kwargs["stop"] = self.stop
        if self.seed is not None:
            kwargs["seed"] = self.seed + index
        return kwargs

    def tool_kwargs(self, tools: list[dict[str, Any]]) -> dict[str, Any]:
        """`tools` and the dialect's `tool_choice`; nothing when there are no tools (vLLM
        rejects an empty `tools` list)."""
        if not tools:
            return {}
        return {"tools": tools, "tool_choice": "none" if self.dialect == "vllm" else "auto"}

    def extra_body(self, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
        """vLLM's own request fields for the "vllm" dialect (special tokens kept, the tool
        schemas handed to the chat template whole); None for the "generic" dialect."""
        if self.dialect != "vllm":
            return None
        body = dict(VLLM_EXTRA_BODY)
        if tools:
            body["chat_template_kwargs"] = {"tools": tools}
        return body

    def act(
        self,
        conversations: list[Conversation],
        tools: list[dict[str, Any]],
        tasks: list[Any] | None = None,
    ) -> list[str]:
        """One raw assistant text per conversation; requests run concurrently, order is kept."""
        with self._lock:
            first = self.requests_sent
            self.requests_sent += len(conversations)
        payloads = [to_openai_messages(c) for c in conversations]
        results: list[str] = [""] * len(conversations)
        stop = threading.Event()

        def one(i: int) -> None:
            results[i] = self._complete(payloads[i], tools, first + i, stop)

        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(one, i) for i in range(len(conversations))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                stop.set()  # queued requests return at once instead of being sent
                for future in futures:
                    future.cancel()
        if failed:
            # Requests already in flight were allowed to finish (the pool waits for them):
            # their answers go back with the error.
            answered = {
                i: results[i]
                for i, f in enumerate(futures)
                if f.done() and not f.cancelled() and f.exception() is None
            }
            error = failed[0].exception()
            error.partial = answered  # type: ignore[union-attr]  # see boxgym.policies.base
            raise error
        return results

    def _complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        index: int,
        stop: threading.Event,
    ) -> str:
        openai = self._openai
        client = self._clients[index % len(self._clients)]
        url = self.base_urls[index % len(self._clients)]
        if stop.is_set():
            raise ServerUnreachableError(f"request abandoned: {url} already failed")
        attempts = f"{self.max_retries + 1} attempt(s), {self.timeout:g}s each"
        try:
            response = client.chat.completions.create(
                model=self.model,
                messages=messages,
                **self.tool_kwargs(tools),
                **self.request_kwargs(index),
                extra_body=self.extra_body(tools),
            )
        except openai.APITimeoutError as error:
            raise ServerUnreachableError(
                f"{url} did not answer in time ({attempts}); is the server overloaded? "
                "raise --timeout or lower --max-concurrency"
            ) from error
        except openai.APIConnectionError as error:
            raise ServerUnreachableError(
                f"cannot reach {url} ({attempts}: {error.__cause__ or error}); "
                "is the server running there? check --base-url"
            ) from error
        except openai.APIStatusError as error:
            retried = error.status_code in (408, 409, 429) or error.status_code >= 500
            raise ServerError(
                f"{url} rejected the request ({error.status_code}"
                + (f" after {attempts}" if retried else "")
                + f"): {_short(error.message)}; check the server's log, --model and the options"
            ) from error
        except openai.APIResponseValidationError as error:
            raise ServerError(
                f"{url} answered with something that is not a chat completion "
                f"({_short(str(error))}); is --base-url an OpenAI-compatible /v1 endpoint?"
            ) from error
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise ServerError(
                f"{url} answered with something that is not a chat completion "
                f"({_short(str(response))!r}); is --base-url an OpenAI-compatible /v1 endpoint?"
            )
        usage = getattr(response, "usage", None)
        if usage is not None and isinstance(getattr(usage, "completion_tokens", None), int):
            with self._lock:
                self.tokens_generated += usage.completion_tokens
        return completion_text(choices[0].message)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DeadlineTransport:
    """An httpx transport that ends a request `deadline_s` after it started, however it trickles.

    httpx's own timeouts bound each read, not the whole response. This wraps the default
    transport, bounds the wait for the headers by the per-read timeout (set on the client) and
    checks the deadline after every chunk of the body, raising `ReadTimeout` (which the openai
    client retries and reports as `APITimeoutError`).
    """

    def __init__(self, deadline_s: float, inner: Any = None) -> None:
        import httpx2

        self.deadline_s = deadline_s
        self._httpx = httpx2
        self._inner = inner if inner is not None else httpx2.HTTPTransport()

    def handle_request(self, request: Any) -> Any:
        httpx = self._httpx
        deadline = time.monotonic() + self.deadline_s
        response = self._inner.handle_request(request)
        inner_stream = response.stream
        limit = self.deadline_s

        class _Stream(httpx.SyncByteStream):
            def __iter__(self) -> Any:
                for chunk in inner_stream:
                    if time.monotonic() > deadline:
                        inner_stream.close()
                        raise httpx.ReadTimeout(
                            f"the whole-request deadline of {limit:g}s passed", request=request
                        )
                    yield chunk

            def close(self) -> None:
                inner_stream.close()

        response.stream = _Stream()
        return response

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> DeadlineTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
