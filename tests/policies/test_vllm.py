"""The `vllm` policy: its knobs and image budget everywhere; the real offline engine (vLLM's
CPU build, one engine for the module) where vLLM is installed (`make test-vllm`)."""

from __future__ import annotations

import importlib.util
import os

import pytest
from PIL import Image

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


def test_bad_knobs_are_rejected_before_vllm_is_loaded(tiny_model_path):
    from boxgym.policies.vllm import VLLMPolicy

    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMPolicy(model=tiny_model_path, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="data_parallel_size"):
        VLLMPolicy(model=tiny_model_path, engine_kwargs={"data_parallel_size": 2})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_missing_vllm_names_the_install(tiny_model_path):
    from boxgym.policies.vllm import VLLMPolicy

    with pytest.raises(ImportError, match="make vllm"):
        VLLMPolicy(model=tiny_model_path)


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


def test_rollout_derives_the_engine_image_limit_from_the_env(monkeypatch, tmp_path):
    import boxgym.policies.registry as registry
    from boxgym.policies.scripted import OraclePolicy
    from boxgym.rollouts.commands import main as run_verbs

    seen = {}

    def fake_make_policy(name, **kwargs):  # what the engine would be given, without one
        seen.update(kwargs)
        return OraclePolicy()

    monkeypatch.setattr(registry, "make_policy", fake_make_policy)
    argv = ["rollout", "--policy", "vllm", "--scene", "shapes", "--n", "1", "--group-size", "1"]
    argv += ["--max-turns", "3", "--max-calls-per-turn", "4", "--no-progress", "--no-page"]
    assert run_verbs([*argv, "--out", str(tmp_path / "run")]) == 0
    assert seen["limit_mm_per_prompt"] == 1 + 3 * 4


# ------------------------------------------------------------------------- the real engine

# A small episode budget: two turns of one call each, so at most 1 + 2 images an episode.
SMALL_EPISODES = {"max_turns": 2, "max_calls_per_turn": 1}


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    """The policy with a real `vllm.LLM` of the tiny checkpoint, its image limit derived from
    the small episode budget (3)."""
    from vllm_engine import ENGINE_ENVIRONMENT, FAST_START

    from boxgym.env import EnvConfig
    from boxgym.policies.vllm import VLLMPolicy, episode_image_limit

    saved = {k: os.environ.get(k) for k in ENGINE_ENVIRONMENT}
    os.environ.update(ENGINE_ENVIRONMENT)
    limit = episode_image_limit(EnvConfig(**SMALL_EPISODES), 1)
    policy = VLLMPolicy(
        model=tiny_model_path,
        limit_mm_per_prompt=limit,
        max_new_tokens=12,
        dtype="float32",
        # a step budget below two prompts: prefills are split across steps
        engine_kwargs={**FAST_START, "max_num_batched_tokens": 2048},
    )
    yield policy
    policy.llm.llm_engine.engine_core.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.vllm
def test_engine_sees_our_prompt_token_for_token(engine):
    """The rendered text plus images as multi_modal_data: vLLM's Qwen2-VL processor expands
    them into exactly the ids `prepare_inputs` gives the hf policy, tool images included."""
    from vllm import SamplingParams
    from vllm_engine import oracle_prompts

    from boxgym.policies.prompting import prepare_inputs

    prompts, tools = oracle_prompts(2)
    assert any(m["role"] == "tool" for m in prompts[-1])  # a tool image in the last prompt
    outputs = engine.llm.generate(
        [engine.engine_prompt(c, tools) for c in prompts],
        SamplingParams(max_tokens=1),
        use_tqdm=False,
    )
    for conversation, output in zip(prompts, outputs):
        ours = prepare_inputs(engine.processor, [conversation], tools)["input_ids"][0].tolist()
        assert list(output.prompt_token_ids) == ours


@pytest.mark.vllm
def test_rollout_through_the_offline_engine(engine, tmp_path):
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.rollouts.commands import scene_tasks
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import EpisodeStore, read_episodes

    engine.requests_sent = engine.tokens_generated = 0
    tasks = scene_tasks(["shapes", "screens"], 2, 0, "easy")
    config = EnvConfig(**SMALL_EPISODES)
    with EpisodeStore(tmp_path / "run") as store:
        run_rollouts(
            tasks, engine, lambda: BoxGymEnv(config=config), store, group_size=2, progress=False
        )
    episodes = read_episodes(tmp_path / "run").episodes
    assert len(episodes) == 4
    turns = [t for e in episodes for t in e["turns"]]
    assert engine.requests_sent == len(turns)
    assert engine.tokens_generated >= len(turns)  # counted for the progress bar's tokens/s
    for turn in turns:  # cut at the end of the turn, no vision token left in the text
        assert "<|im_end|>" not in turn["assistant"] and "<|image_pad|>" not in turn["assistant"]


@pytest.mark.vllm
def test_request_seeds_make_replies_repeatable(engine):
    """Request i samples with seed + i: the same requests give the same replies, two copies
    of one conversation in a batch get different ones."""
    batch = [conversation(1), conversation(1)]
    engine.requests_sent = 0
    first = engine.act(batch, TOOLS)
    engine.requests_sent = 0
    assert engine.act(batch, TOOLS) == first
    assert first[0] != first[1]


@pytest.mark.vllm
def test_more_images_than_the_limit_are_refused(engine):
    """The policy refuses before generating; the engine itself enforces the limit it was built
    with (vLLM's own check)."""
    from vllm import SamplingParams

    from boxgym.policies.prompting import conversation_images, render_chat

    too_many = conversation(engine.limit_mm_per_prompt + 1)
    with pytest.raises(ValueError, match=f"limit_mm_per_prompt is {engine.limit_mm_per_prompt}"):
        engine.act([too_many], TOOLS)
    prompt = {
        "prompt": render_chat(engine.processor, too_many, TOOLS),
        "multi_modal_data": {"image": conversation_images(too_many)},
    }
    with pytest.raises(Exception, match=f"At most {engine.limit_mm_per_prompt} image"):
        engine.llm.generate([prompt], SamplingParams(max_tokens=1), use_tqdm=False)


@pytest.mark.vllm
def test_vision_tokens_are_banned(engine):
    """Sampling restricted to the five vision tokens and one word: with the policy's
    `logit_bias` the engine only ever picks the word; without it, mostly vision tokens."""
    from vllm import SamplingParams

    from boxgym.policies.prompting import vision_token_ids

    vision = vision_token_ids(engine.processor)
    word = 9707  # "Hello"
    ban = engine.sampling_params(0).logit_bias
    assert set(ban) == set(vision) and set(ban.values()) == {-100.0}
    prompt = engine.engine_prompt(conversation(1), TOOLS)

    def sample(logit_bias):
        params = SamplingParams(
            temperature=1.0, max_tokens=8, seed=0, allowed_token_ids=[*vision, word],
            logit_bias=logit_bias, ignore_eos=True,
        )  # fmt: skip
        (output,) = engine.llm.generate([prompt], params, use_tqdm=False)
        return list(output.outputs[0].token_ids)

    assert sample(ban) == [word] * 8
    assert set(sample(None)) & set(vision)


@pytest.mark.vllm
def test_many_long_seeded_conversations_in_one_batch(engine):
    """Eight scene conversations with the env's tools (about 1,700 prompt tokens each) in one
    `generate`, every request seeded, the step budget 2,048 tokens: prefills are split across
    steps, which kills vLLM 0.32's CPU engine ("CPU Generator does not use offset") unless
    boxgym's vLLM plugin is loaded (boxgym/policies/vllm_plugin.py)."""
    from importlib.metadata import entry_points

    plugins = {e.value for e in entry_points(group="vllm.general_plugins")}
    assert "boxgym.policies.vllm_plugin:register" in plugins
    from boxgym.env import BoxGymEnv, EnvConfig
    from boxgym.rollouts.commands import scene_tasks

    batch, tools = [], []
    for task in scene_tasks(["shapes", "screens"], 8, 0, "easy"):
        env = BoxGymEnv(config=EnvConfig(**SMALL_EPISODES))
        messages, _ = env.reset(seed=0, options={"task": task})
        batch.append(list(messages))
        tools = env.tool_schemas
    texts = engine.act(batch, tools)
    assert len(texts) == 8 and all(isinstance(t, str) for t in texts)
