"""The `vllm` policy: vLLM's offline engine (`vllm.LLM`), on a GPU or with vLLM's CPU build.

Prompt texts come from boxgym's renderer (`boxgym.policies.prompting.render_chat`), so vLLM sees
the same tokens as every other path; the conversation's images travel as `multi_modal_data`
and vLLM's Qwen2-VL processor expands each `<|image_pad|>` placeholder, exactly as transformers
does. One `llm.generate` call per turn carries every live conversation, each with its own
`SamplingParams` seed (so results do not depend on how conversations are batched).

Written against vLLM's documented API:
`LLM(model=..., limit_mm_per_prompt={"image": n}, max_model_len=..., enable_prefix_caching=...,
gpu_memory_utilization=..., seed=..., enable_lora=..., max_lora_rank=...)`,
`llm.generate([{"prompt": ..., "multi_modal_data": {"image": [...]}}], sampling_params,
lora_request=LoRARequest(name, id, path))`. LoRA adapters should target the language model only:
vLLM does not apply LoRA to Qwen2-VL's vision tower. On a CPU (`make vllm`, vLLM 0.32's CPU
build) `gpu_memory_utilization` is not used: the KV cache takes `VLLM_CPU_KVCACHE_SPACE` GiB
(vLLM's default 4), and "auto" dtype runs a float32 checkpoint in bfloat16.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from boxgym.policies.base import Conversation
from boxgym.policies.prompting import (
    END_OF_TURN,
    clean_completion,
    conversation_images,
    load_processor,
    render_chat,
    stop_token_ids,
    vision_token_ids,
)

INSTALL_HINT = (
    "the vllm policy needs vLLM: `make vllm` builds .venv-vllm with its CPU build (docs/install.md); "
    "on a CUDA machine pip install boxgym[vllm]"
)


def episode_image_limit(env_config: Any, task_images: int = 1) -> int:
    """The most images one episode's conversation can hold: the task's images plus one image per
    call that can return one (two with `draw_box_returns="both"`), for as many calls as the turn
    and call budgets allow. `limit_mm_per_prompt` must be at least this, or `generate` raises
    part-way through a run (vLLM's check in its multimodal input processing)."""
    calls = min(env_config.max_calls, env_config.max_turns * env_config.max_calls_per_turn)
    per_call = 2 if env_config.draw_box_returns == "both" else 1
    return int(task_images) + calls * per_call


def import_vllm() -> Any:
    """vLLM's `LLM`, `SamplingParams` and `LoRARequest`, or an ImportError naming the extra."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, LoRARequest=LoRARequest)


class VLLMPolicy:
    """A policy backed by a `vllm.LLM` engine.

    Args:
        model: checkpoint path or hub name; None means the tiny offline model.
        adapter: directory of a PEFT LoRA adapter served through vLLM's LoRA support.
        max_lora_rank: the largest LoRA rank the engine accepts (when `adapter` is set).
        gpu_memory_utilization: fraction of GPU memory vLLM may take.
        max_model_len: context length to allocate for (prompt + completion).
        limit_mm_per_prompt: images per prompt at most (the task's images plus tool images);
            `boxgym rollout/eval --policy vllm` sets it to `episode_image_limit(env config,
            the run's largest task image count)` unless given.
        enable_prefix_caching: reuse the KV cache of shared prefixes (turns, groups).
        dtype: "auto", "bfloat16", "float16" or "float32".
        temperature, top_p, top_k, max_new_tokens: decoding knobs (top_k 0 is off).
        seed: engine seed; request i of the run samples with seed + i.
        tensor_parallel_size: GPUs one engine spans (`vllm.LLM(tensor_parallel_size=...)`).
            Data parallelism is not offered here: vLLM 0.33's `LLM` refuses
            `data_parallel_size > 1` in one process (vllm/entrypoints/llm.py); run several
            `vllm serve` replicas and give the `openai` policy their URLs, or `--shard` runs.
        engine_kwargs: further `vllm.LLM` keyword arguments.
    """

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        adapter: str | os.PathLike[str] | None = None,
        max_lora_rank: int = 64,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 8192,
        limit_mm_per_prompt: int = 8,
        enable_prefix_caching: bool = True,
        dtype: str = "auto",
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 256,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if int((engine_kwargs or {}).get("data_parallel_size", 1)) > 1:
            raise ValueError(
                "vLLM's offline engine does not take data_parallel_size > 1 in one process; run "
                "several `vllm serve` replicas with --policy openai --base-url URL1 --base-url "
                "URL2 ..., or split the run with --shard i/n"
            )
        if limit_mm_per_prompt < 1 or max_model_len < 1 or max_new_tokens < 1:
            raise ValueError("limit_mm_per_prompt, max_model_len and max_new_tokens must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and top_p in (0, 1], got {temperature}, {top_p}"
            )
        from boxgym.models.cache import resolve_model

        self.api = import_vllm()
        self.model_path = resolve_model(model)
        self.processor = load_processor(self.model_path)
        self.limit_mm_per_prompt = limit_mm_per_prompt
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.requests_sent = 0
        self.tokens_generated = 0  # reply tokens so far (the progress bar's tokens/s)
        self.adapter = None if adapter is None else str(adapter)
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "limit_mm_per_prompt": {"image": limit_mm_per_prompt},
            "enable_prefix_caching": enable_prefix_caching,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if self.adapter is not None:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
        kwargs.update(engine_kwargs or {})
        self.engine_kwargs = kwargs
        self.llm = self.api.LLM(**kwargs)
        self.lora_request = (
            None
            if self.adapter is None
            else self.api.LoRARequest("boxgym-adapter", 1, self.adapter)
        )

    def sampling_params(self, index: int) -> Any:
        """The `SamplingParams` of the run's request `index`: stop at the end of the turn,
        vision tokens banned (a sampled one would break the next turn's image count)."""
        return self.api.SamplingParams(
            n=1,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k if self.top_k > 0 else -1,
            max_tokens=self.max_new_tokens,
            seed=self.seed + index,
            stop=[END_OF_TURN],
            stop_token_ids=stop_token_ids(self.processor),
            logit_bias={token: -100.0 for token in vision_token_ids(self.processor)},
            skip_special_tokens=False,  # keep Qwen2-VL grounding tokens for the env's parser
        )

    def engine_prompt(self, conversation: Conversation, tools: list[dict[str, Any]]) -> dict:
        """One `llm.generate` prompt: our rendered text plus the images as multi_modal_data."""
        images = conversation_images(conversation)
        if len(images) > self.limit_mm_per_prompt:
            raise ValueError(
                f"a conversation holds {len(images)} images but limit_mm_per_prompt is "
                f"{self.limit_mm_per_prompt}; raise it or lower the env's turn/crop budget"
            )
        prompt: dict[str, Any] = {"prompt": render_chat(self.processor, conversation, tools)}
        if images:
            prompt["multi_modal_data"] = {"image": [image.convert("RGB") for image in images]}
        return prompt

    def act(
        self,
        conversations: list[Conversation],
        tools: list[dict[str, Any]],
        tasks: list[Any] | None = None,
    ) -> list[str]:
        """One raw assistant text per conversation, from one batched `llm.generate` call."""
        if not conversations:
            return []
        prompts = [self.engine_prompt(c, tools) for c in conversations]
        params = [self.sampling_params(self.requests_sent + i) for i in range(len(prompts))]
        self.requests_sent += len(prompts)
        kwargs: dict[str, Any] = {"use_tqdm": False}
        if self.lora_request is not None:
            kwargs["lora_request"] = self.lora_request
        outputs = self.llm.generate(prompts, params, **kwargs)
        self.tokens_generated += sum(len(output.outputs[0].token_ids) for output in outputs)
        return [clean_completion(output.outputs[0].text) for output in outputs]
