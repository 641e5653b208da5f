from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
from PIL import Image

from boxgym.policies.base import Policy
from boxgym.policies.prompting import load_processor, render_chat

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


def conversation(images: int = 1) -> list[dict]:
    content = [{"type": "image", "image": Image.new("RGB", (56, 56), "red")} for _ in range(images)]
    return [{"role": "user", "content": [*content, {"type": "text", "text": "How many?"}]}]


class StandInLLM:
    """Same surface as `vllm.LLM` for what the policy uses: the constructor and `generate`."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []

    def generate(self, prompts, sampling_params, use_tqdm=True, lora_request=None):
        self.calls.append((prompts, sampling_params, lora_request))
        texts = [
            f'<tool_call>{{"name": "answer", "arguments": {{"count": {p.kwargs["seed"]}}}}}</tool_call>'
            "<|image_pad|><|im_end|>"
            for p in sampling_params
        ]
        return [SimpleNamespace(outputs=[SimpleNamespace(text=t)]) for t in texts]


class StandInSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def stand_in_api():
    return SimpleNamespace(
        LLM=StandInLLM,
        SamplingParams=StandInSamplingParams,
        LoRARequest=lambda name, number, path: (name, number, path),
    )


@pytest.fixture
def make_policy(tiny_model_path):
    from boxgym.policies.vllm import VLLMPolicy

    def make(**knobs):
        return VLLMPolicy(model=tiny_model_path, vllm_api=stand_in_api(), **knobs)

    return make


def test_engine_gets_documented_arguments(make_policy, tiny_model_path):
    policy = make_policy(
        gpu_memory_utilization=0.3,
        max_model_len=4096,
        limit_mm_per_prompt=5,
        tensor_parallel_size=2,
    )
    assert isinstance(policy, Policy)
    assert policy.llm.kwargs == {
        "model": str(tiny_model_path),
        "dtype": "auto",
        "seed": 0,
        "gpu_memory_utilization": 0.3,
        "max_model_len": 4096,
        "limit_mm_per_prompt": {"image": 5},
        "enable_prefix_caching": True,
        "tensor_parallel_size": 2,
    }
    with pytest.raises(ValueError, match="data_parallel_size"):
        make_policy(engine_kwargs={"data_parallel_size": 2})


def test_prompts_are_our_rendering_with_images_as_multi_modal_data(make_policy, tiny_model_path):
    policy = make_policy(seed=5, temperature=0.8, top_p=0.9, max_new_tokens=32)
    batch = [conversation(2), conversation(1), [{"role": "user", "content": "no image"}]]
    texts = policy.act(batch, TOOLS)
    prompts, params, lora = policy.llm.calls[0]
    processor = load_processor(tiny_model_path)
    assert [p["prompt"] for p in prompts] == [render_chat(processor, c, TOOLS) for c in batch]
    assert [len(p.get("multi_modal_data", {}).get("image", [])) for p in prompts] == [2, 1, 0]
    assert lora is None
    first = params[0].kwargs
    assert first["temperature"] == 0.8 and first["top_p"] == 0.9 and first["max_tokens"] == 32
    assert first["stop"] == ["<|im_end|>"] and first["skip_special_tokens"] is False
    assert set(first["logit_bias"]) == {151652, 151653, 151654, 151655, 151656}
    assert [p.kwargs["seed"] for p in params] == [5, 6, 7]
    # completions are cut at the turn end and cleaned of vision tokens
    assert texts[0] == '<tool_call>{"name": "answer", "arguments": {"count": 5}}</tool_call>'
    policy.act(batch[:1], TOOLS)
    assert policy.llm.calls[1][1][0].kwargs["seed"] == 8  # seeds continue across turns


def test_adapter_is_served_as_lora_request(make_policy, tmp_path):
    policy = make_policy(adapter=tmp_path, max_lora_rank=16)
    assert policy.llm.kwargs["enable_lora"] is True and policy.llm.kwargs["max_lora_rank"] == 16
    policy.act([conversation()], TOOLS)
    assert policy.llm.calls[0][2] == ("boxgym-adapter", 1, str(tmp_path))


def test_too_many_images_for_the_engine_is_a_clear_error(make_policy):
    with pytest.raises(ValueError, match="limit_mm_per_prompt is 2"):
        make_policy(limit_mm_per_prompt=2).act([conversation(3)], TOOLS)


def test_bad_knobs_are_rejected(make_policy):
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        make_policy(gpu_memory_utilization=1.5)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_missing_vllm_names_the_extra(tiny_model_path):
    from boxgym.policies.vllm import VLLMPolicy

    with pytest.raises(ImportError, match=r"pip install boxgym\[vllm\]"):
        VLLMPolicy(model=tiny_model_path)


def _vllm_and_gpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.vllm
@pytest.mark.skipif(not _vllm_and_gpu(), reason="needs vLLM and a GPU")
def test_real_vllm_engine_with_tiny_model(tiny_model_path):
    from boxgym.policies.vllm import VLLMPolicy

    policy = VLLMPolicy(
        model=tiny_model_path, gpu_memory_utilization=0.2, max_model_len=2048, max_new_tokens=8
    )
    texts = policy.act([conversation(1), conversation(2)], TOOLS)
    assert len(texts) == 2 and all("<|image_pad|>" not in t for t in texts)


def test_image_limit_covers_the_largest_scripted_episode():
    """An oracle episode on many-object scenes holds more than vLLM's old default of 8 images;
    the derived limit covers every episode the env's budgets allow."""
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.policies.prompting import conversation_images
    from boxgym.policies.scripted import OraclePolicy, SeededTask
    from boxgym.policies.vllm import episode_image_limit
    from boxgym.rollouts.commands import scene_tasks

    config = EnvConfig()
    most = 0
    for task in scene_tasks(["screens"], 4, 3, "hard"):
        env = BoxGymEnv(config=config)
        messages, _ = env.reset(seed=0, options={"task": task})
        conversation = list(messages)
        while not env.done:
            (text,) = OraclePolicy().act([conversation], env.tool_schemas, [SeededTask(task, 0)])
            new, *_ = env.step(text)
            conversation.extend(new)
        most = max(most, len(conversation_images(conversation)))
    assert most > 8
    assert most <= episode_image_limit(config, 1)
    assert episode_image_limit(config.replace(draw_box_returns="both"), 2) > episode_image_limit(
        config, 2
    )


def test_rollout_sets_the_engine_image_limit_from_the_env(monkeypatch, tmp_path):
    import boxgym.policies.registry as registry
    from boxgym.policies.scripted import OraclePolicy
    from boxgym.rollouts.commands import main as run_verbs

    seen = {}

    def fake_make_policy(name, **kwargs):  # vLLM cannot run here: record what it would get
        seen.update(kwargs)
        return OraclePolicy()

    monkeypatch.setattr(registry, "make_policy", fake_make_policy)
    argv = ["rollout", "--policy", "vllm", "--scene", "shapes", "--n", "1", "--group-size", "1"]
    argv += ["--max-turns", "3", "--max-calls-per-turn", "4", "--no-progress", "--no-page"]
    assert run_verbs([*argv, "--out", str(tmp_path / "run")]) == 0
    assert seen["limit_mm_per_prompt"] == 1 + 3 * 4
