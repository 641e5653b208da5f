"""The openai policy against `vllm serve`'s rules (a loopback server enforcing them) and, where
vLLM's protocol module imports, against vLLM's own request model."""

from __future__ import annotations

import json

import pytest
from vllm_serve_like import AUTO_ERROR, VLLMServeLike, check_request, strip_special_tokens

from boxgym.env import BoxGymEnv, EnvConfig
from boxgym.errors import ServerError
from boxgym.policies.image_cache import image_key
from boxgym.policies.openai_policy import OpenAIPolicy, to_openai_messages
from boxgym.policies.scripted import OraclePolicy, SeededTask
from boxgym.rollouts.commands import scene_tasks
from boxgym.rollouts.runner import run_rollouts
from boxgym.rollouts.store import EpisodeStore, read_episodes


def first_image(conversation: list[dict]) -> bytes:
    for message in conversation:
        for part in message["content"]:
            if part["type"] == "image":
                return image_key(part["image"])
    raise AssertionError("no image in the conversation")


@pytest.fixture
def oracle_server():
    """A vLLM-like server whose model is the grounding-format oracle of two screen tasks."""
    tasks = scene_tasks(["screens"], 2, 0, "easy")
    by_image = {}
    for task in tasks:
        messages, _ = BoxGymEnv(config=EnvConfig(image_history="all")).reset(
            seed=0, options={"task": task}
        )
        by_image[first_image(messages)] = task
    oracle = OraclePolicy(call_format="grounding")

    def reply(conversation, body):
        task = by_image[first_image(conversation)]
        return oracle.act([conversation], [], [SeededTask(task, 0)])[0]

    server = VLLMServeLike(reply)
    yield server, tasks
    server.close()


def run(tasks, policy, out):
    with EpisodeStore(out) as store:
        run_rollouts(
            tasks,
            policy,
            lambda: BoxGymEnv(config=EnvConfig(image_history="all")),
            store,
            progress=False,
        )
    return sorted(read_episodes(out).episodes, key=lambda e: e["key"]["task_index"])


@pytest.mark.slow
def test_grounding_rollout_completes_against_vllm_rules(oracle_server, tmp_path):
    server, tasks = oracle_server
    policy = OpenAIPolicy(base_url=server.url, model="m", max_retries=0)
    served = run(tasks, policy, tmp_path / "served")
    direct = run(tasks, OraclePolicy(call_format="grounding"), tmp_path / "direct")
    assert not server.rejected
    assert all(body["tool_choice"] == "none" for body in server.bodies)
    assert all(body["skip_special_tokens"] is False for body in server.bodies)
    assert [e["reward"] for e in served] == [e["reward"] for e in direct]
    assert all(e["metrics"]["success"] for e in served)
    # the grounding tokens survived the round trip: every box was a grounded call
    texts = [t["assistant"] for e in served for t in e["turns"]]
    assert any("<|box_start|>" in text for text in texts)


@pytest.mark.slow
def test_request_without_tool_choice_is_what_vllm_rejects(oracle_server):
    server, _ = oracle_server
    policy = OpenAIPolicy(base_url=server.url, model="m", max_retries=0, dialect="generic")
    conversation = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    tools = [{"type": "function", "function": {"name": "answer", "parameters": {}}}]
    with pytest.raises(ServerError, match="rejected the request \\(400\\)"):
        policy.act([conversation], tools)
    assert server.rejected == [AUTO_ERROR]
    # the rules themselves: a missing choice is "auto"; "none" passes; no tools, no check
    assert check_request({"tools": tools}) == AUTO_ERROR
    assert check_request({"tools": tools, "tool_choice": "none"}) is None
    assert check_request({}) is None


def test_special_tokens_are_stripped_unless_asked_to_keep_them():
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    assert strip_special_tokens(text) == "cat(1,2),(3,4)"
    policy = OpenAIPolicy(base_url="http://127.0.0.1:9/v1", model="m")
    assert policy.request_kwargs(0)["extra_body"] == {
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }
    assert "extra_body" not in OpenAIPolicy(model="m", dialect="generic").request_kwargs(0)
    assert policy.tool_kwargs([]) == {}  # zero-shot: no tools, no tool_choice


@pytest.mark.slow
def test_requests_spread_over_several_base_urls(oracle_server, tmp_path):
    server, tasks = oracle_server
    other = VLLMServeLike(server.reply)
    try:
        policy = OpenAIPolicy(base_url=[server.url, other.url], model="m", max_retries=0)
        episodes = run(tasks, policy, tmp_path / "fleet")
        assert all(e["metrics"]["success"] for e in episodes)
        assert len(server.bodies) > 0 and len(other.bodies) > 0
    finally:
        other.close()
    with pytest.raises(ValueError, match="base_url"):
        OpenAIPolicy(base_url=[], model="m")


def test_request_body_validates_against_vllms_own_request_model():
    """Runs where vLLM's protocol module imports (vLLM installed, or its wheel's source on
    PYTHONPATH with its light dependencies); skipped elsewhere."""
    protocol = pytest.importorskip("vllm.entrypoints.openai.chat_completion.protocol")
    policy = OpenAIPolicy(base_url="http://127.0.0.1:9/v1", model="m", seed=3)
    conversation = [{"role": "user", "content": [{"type": "text", "text": "How many?"}]}]
    tools = [{"type": "function", "function": {"name": "answer", "parameters": {}}}]
    kwargs = policy.request_kwargs(0)
    body = {
        "model": "m",
        "messages": to_openai_messages(conversation),
        **policy.tool_kwargs(tools),
        **{k: v for k, v in kwargs.items() if k != "extra_body"},
        **kwargs["extra_body"],
    }
    request = protocol.ChatCompletionRequest.model_validate(json.loads(json.dumps(body)))
    assert request.tool_choice == "none"
    params = request.to_sampling_params(256, {})
    assert params.skip_special_tokens is False and params.spaces_between_special_tokens is False
    without = {k: v for k, v in body.items() if k != "tool_choice"}
    assert protocol.ChatCompletionRequest.model_validate(without).tool_choice == "auto"
