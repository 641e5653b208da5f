"""The real vLLM engine for the tests marked `vllm`: a `vllm serve` process and a TCP relay.

Those tests run in .venv-vllm (`make test-vllm`: vLLM's CPU build, its own torch and
transformers); in .venv they are skipped. One server serves a whole test session (it takes a
minute or two to start on two cores); `VLLMServer` starts it in its own process group on a free
loopback port, waits for `/health`, and stops or kills the whole group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REQUIRE_VARIABLE = "BOXGYM_REQUIRE_VLLM"
SKIP_REASON = (
    "needs vLLM's CPU build: `make test-vllm` runs these in .venv-vllm "
    f"(set {REQUIRE_VARIABLE}=1 to make a missing engine a failure)"
)

# What vLLM's CPU backend needs besides the model: the KV cache size in GiB (its default, 4,
# is more than a test needs) and no thread pinning (pinning fights the other processes on a
# shared machine).
ENGINE_ENVIRONMENT = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# Images per prompt the test server takes: the longest test episode's images fit.
SERVER_IMAGE_LIMIT = 16
# What the test engines skip to start in seconds rather than minutes on two cores: torch.compile
# (eager mode) and the warm-up on an image of the processor's largest size (12.8M pixels, the
# 2B model's bound; here 2,048 image tokens, twice what the env ever shows, so every test image
# is processed exactly as transformers processes it). Users' engines keep vLLM's defaults.
FAST_START = {"enforce_eager": True, "mm_processor_kwargs": {"max_pixels": 2048 * 28 * 28}}


def oracle_prompts(turns: int = 3) -> tuple[list[list[dict]], list[dict]]:
    """The conversation before each of an oracle episode's first `turns` turns on a screens
    scene, one call a turn (so a tool image is in the later ones), and the env's tool schemas."""
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.policies.scripted import OraclePolicy, SeededTask
    from boxgym.rollouts.commands import scene_tasks

    task = scene_tasks(["screens"], 1, 0, "easy")[0]
    env = BoxGymEnv(config=EnvConfig(max_calls_per_turn=1))
    messages, _ = env.reset(seed=0, options={"task": task})
    conversation, prompts = list(messages), []
    oracle = OraclePolicy(call_format="grounding")
    while not env.done and len(prompts) < turns:
        prompts.append(list(conversation))
        (text,) = oracle.act([conversation], env.tool_schemas, [SeededTask(task, 0)])
        new, *_ = env.step(text)
        conversation.extend(new)
    return prompts, env.tool_schemas


def vllm_importable() -> bool:
    """Whether this interpreter has vLLM (the tests marked `vllm` can run)."""
    return importlib.util.find_spec("vllm") is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_command(model: str | os.PathLike[str], port: int) -> list[str]:
    """`vllm serve` as this interpreter runs it (the `vllm` console script fails on the CPU
    build: its distribution is named `vllm-cpu`, so `importlib.metadata` finds no `vllm`)."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "8192", "--seed", "0",
        "--limit-mm-per-prompt", f'{{"image": {SERVER_IMAGE_LIMIT}, "video": 0}}',
        "--enforce-eager", "--mm-processor-kwargs", json.dumps(FAST_START["mm_processor_kwargs"]),
    ]  # fmt: skip


class VLLMServer:
    """One `vllm serve` subprocess (its output in `log`), restartable on the same port."""

    def __init__(self, model: str | os.PathLike[str], log: Path) -> None:
        self.model = str(model)
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None
        self.starts: list[float] = []  # seconds each start took

    def start(self, timeout_s: float = 1200.0) -> None:
        """Start the server and wait until `/health` answers 200 (minutes on a busy machine)."""
        began = time.monotonic()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                serve_command(self.model, self.port),
                env={**os.environ, **ENGINE_ENVIRONMENT},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() - began > timeout_s:
                    self.stop()
                    tail = self.log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(
                        f"vllm serve did not come up; its log ends:\n{tail}"
                    ) from None
                time.sleep(1.0)
        self.starts.append(time.monotonic() - began)

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server and its engine processes at once (a crash, not a shutdown)."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        """Shut the server down (SIGTERM to its group; SIGKILL after 30 s)."""
        if self.process is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal(signal.SIGKILL)  # engine processes left behind by the shutdown

    def requests_answered(self) -> int:
        """Chat completions this server answered 200 to so far (its access log)."""
        text = self.log.read_text(errors="replace")
        return text.count('"POST /v1/chat/completions HTTP/1.1" 200')


class TcpRelay:
    """A second loopback address for a server: forwards every connection to `target_port` and
    counts the HTTP requests that went through it. Tests use it as a second replica URL."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(65536):
                if count:
                    with self._lock:
                        self.requests += data.count(b"POST /v1/")
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
