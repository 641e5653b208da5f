"""The openai policy against a real `vllm serve` (vLLM's CPU build) of the tiny checkpoint.

One server for the session (`vllm_server` in tests/conftest.py); a `TcpRelay` in front of it is
the second replica URL. The last test kills the server mid-run and starts it again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from vllm_engine import TcpRelay, oracle_prompts

from boxgym.errors import ServerError
from boxgym.policies.openai_policy import OpenAIPolicy, to_openai_messages
from boxgym.policies.prompting import load_processor, prepare_inputs
from boxgym.rollouts.shards import Shard, read_run

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)
BOX_START = 151648  # <|box_start|>, a grounding token


def boxgym(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def rollout_args(url: str, out: Path, *more: str) -> list[str | Path]:
    return [
        "rollout", "--policy", "openai", "--base-url", url, "--model", "tiny",
        "--scene", "shapes", "--max-new-tokens", "24", "--max-turns", "2", "--no-progress",
        "--no-page", "--out", out, *more,
    ]  # fmt: skip


def test_the_server_sees_our_prompt_token_for_token(vllm_server, tiny_model_path):
    """Tool schemas, the system prompt, images and tool images: what vLLM tokenizes for the
    policy's request is what `prepare_inputs` gives the hf policy, id for id."""
    processor = load_processor(tiny_model_path)
    policy = OpenAIPolicy(base_url=vllm_server.url, model="tiny", max_new_tokens=1)
    prompts, tools = oracle_prompts()
    assert any(m["role"] == "tool" for m in prompts[-1])  # a tool image is in the last one
    for conversation in prompts:
        body = {
            "model": "tiny",
            "messages": to_openai_messages(conversation),
            "add_generation_prompt": True,
            **policy.tool_kwargs(tools),
            **policy.extra_body(tools),
        }
        served = requests.post(f"{vllm_server.url[:-3]}/tokenize", json=body, timeout=60)
        assert served.status_code == 200, served.text
        ours = prepare_inputs(processor, [conversation], tools)["input_ids"][0].tolist()
        assert served.json()["tokens"] == ours
    # vLLM drops a schema's "return" entry from `tools`: without the template kwargs the model
    # would see other tokens than in training
    body.pop("chat_template_kwargs")
    served = requests.post(f"{vllm_server.url[:-3]}/tokenize", json=body, timeout=60)
    assert served.json()["tokens"] != ours
    # and a real completion reports the same prompt length
    response = policy._client.chat.completions.create(
        model="tiny",
        messages=to_openai_messages(prompts[-1]),
        max_tokens=1,
        **policy.tool_kwargs(tools),
        extra_body=policy.extra_body(tools),
    )
    assert response.usage.prompt_tokens == len(
        prepare_inputs(processor, [prompts[-1]], tools)["input_ids"][0]
    )


def test_rollout_against_vllm_serve_stores_every_episode(vllm_server, tmp_path):
    before = vllm_server.requests_answered()
    done = boxgym(*rollout_args(vllm_server.url, tmp_path / "run", "--n", "2", "--group-size", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    episodes = read_run(tmp_path / "run").episodes
    assert len(episodes) == 4
    turns = sum(len(e["turns"]) for e in episodes)
    assert vllm_server.requests_answered() - before == turns
    assert all(isinstance(t["assistant"], str) for e in episodes for t in e["turns"])


def test_grounding_tokens_are_kept_and_vision_tokens_cleaned(vllm_server):
    """A bias makes the model write `<|box_start|>`: the vllm dialect's reply keeps it; the
    generic dialect (vLLM's default skip_special_tokens) loses it."""

    def reply(dialect: str) -> str:
        policy = OpenAIPolicy(
            base_url=vllm_server.url, model="tiny", max_new_tokens=3, dialect=dialect
        )
        ask = policy.request_kwargs
        policy.request_kwargs = lambda i: {**ask(i), "logit_bias": {str(BOX_START): 100}}
        conversation = [{"role": "user", "content": [{"type": "text", "text": "Where?"}]}]
        return policy.act([conversation], [])[0]

    assert reply("vllm") == "<|box_start|>" * 3
    assert reply("generic") == ""


def test_a_request_vllm_rejects_is_one_clear_error(vllm_server):
    """Tools with tool_choice "auto" (the generic dialect) on a server without a tool parser:
    vLLM answers 400, the policy raises naming the URL and the status."""
    policy = OpenAIPolicy(base_url=vllm_server.url, model="tiny", max_retries=0, dialect="generic")
    _, tools = oracle_prompts(1)
    conversation = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    with pytest.raises(ServerError, match=r"rejected the request \(400\).*auto"):
        policy.act([conversation], tools)


def test_requests_spread_over_two_base_urls(vllm_server, tmp_path):
    first, second = TcpRelay(vllm_server.port), TcpRelay(vllm_server.port)
    try:
        done = boxgym(
            *rollout_args(first.url, tmp_path / "run", "--n", "2", "--group-size", "2"),
            "--base-url", second.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        turns = sum(len(e["turns"]) for e in read_run(tmp_path / "run").episodes)
        assert first.requests > 0 and second.requests > 0
        assert first.requests + second.requests == turns
    finally:
        first.close()
        second.close()


def test_two_shards_against_two_servers_make_one_run(vllm_server, tmp_path):
    relays = [TcpRelay(vllm_server.port), TcpRelay(vllm_server.port)]
    out = tmp_path / "run"
    try:
        procs = []
        for i, relay in enumerate(relays):
            args = rollout_args(
                relay.url, out, "--n", "3", "--group-size", "1", "--shard", f"{i}/2"
            )
            command = [sys.executable, "-m", "boxgym.cli", *map(str, args)]
            procs.append(
                subprocess.Popen(
                    command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
        union = read_run(out)
        assert not union.report()
        assert union.stored == {Shard(0, 2): 2, Shard(1, 2): 1}
        assert sorted(e["key"]["task_index"] for e in union.episodes) == [0, 1, 2]
        assert all(relay.requests > 0 for relay in relays)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["episodes"] == 3 and summary["shards"]["complete"] == 2
    finally:
        for relay in relays:
            relay.close()


def test_server_killed_mid_run_then_resume(vllm_server, tmp_path):
    """The server dies part-way: the run stops with one line naming the URL and keeps the
    finished episodes; with the server back, `--resume` finishes the run."""
    out = tmp_path / "run"
    args = rollout_args(
        vllm_server.url,
        out,
        "--n",
        "8",
        "--group-size",
        "1",
        "--max-live",
        "1",
        "--max-retries",
        "0",
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "boxgym.cli", *map(str, args), "--policy-delay", "0.3"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        episodes = out / "episodes.jsonl"
        while time.monotonic() < deadline and run.poll() is None:
            if episodes.exists() and len(episodes.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before the server was killed"
        vllm_server.kill()
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error:") and vllm_server.url in err
    kept = len(read_run(out).episodes)
    assert 2 <= kept < 8
    vllm_server.start()
    done = boxgym(*args, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(e["key"]["task_index"] for e in read_run(out).episodes) == list(range(8))
