"""Token budgets of a GRPO run, derived from its scene settings, checked at start-up.

TRL counts everything after the prompt against `max_completion_length`: the assistant turns and
the tool results, images included (trl/trainer/grpo_trainer.py `_tool_call_loop` drops tool
results that would push past it, and cuts the generation after them). A budget smaller than a
perfect episode means TRL cuts exactly the episodes that should earn the most. `episode_tokens`
measures the oracle's episodes on the run's first tasks; `check_episode_budget` refuses a
config whose budget cannot hold the longest of them.

Token counts: the tokenizer's count of the rendered chat plus, per image, Qwen2-VL's
`height * width / 28**2` vision tokens minus its one `<|image_pad|>` placeholder (the env's
images are already multiples of 28 on each side, within the processor's pixel bounds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PATCH_AREA = 28 * 28
SAMPLE_TASKS = 8


@dataclass(frozen=True)
class EpisodeTokens:
    """Prompt and completion tokens of one perfect (oracle) episode."""

    task_id: str
    prompt: int
    completion: int


def conversation_tokens(
    processor: Any, messages: list[dict[str, Any]], tools: Any, **kw: Any
) -> int:
    """Tokens of `messages` as the model sees them (vision tokens expanded)."""
    from boxgym.policies.prompting import conversation_images, render_chat

    text = render_chat(processor, messages, tools, **kw)
    tokenizer = getattr(processor, "tokenizer", processor)
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    for image in conversation_images(messages):
        count += image.size[0] * image.size[1] // PATCH_AREA - 1
    return count


def episode_tokens(config: Any, processor: Any, sample: int = SAMPLE_TASKS) -> list[EpisodeTokens]:
    """The oracle's episodes on the run's first `sample` tasks, measured in tokens."""
    from boxgym.policies.registry import make_policy
    from boxgym.train.mixture import make_env, run_episode, scene_task
    from boxgym.train.trl_environment import task_from_row

    env, oracle = make_env(config.env), make_policy("oracle")
    tasks_section = config.tasks
    out = []
    for index in range(min(sample, tasks_section.num_tasks)):
        if tasks_section.dataset:
            row = {
                "dataset": tasks_section.dataset,
                "dataset_path": tasks_section.dataset_path,
                "dataset_split": tasks_section.dataset_split,
                "task_index": index,
            }
            task, seed = task_from_row(row), index
        else:
            seed = tasks_section.first_seed + index
            task = scene_task(config.env, seed)
        row = run_episode(env, oracle, task, seed)
        messages, tools = row["messages"], row["tools"]
        first_turn = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = conversation_tokens(processor, messages[:first_turn], tools)
        full = conversation_tokens(processor, messages, tools, add_generation_prompt=False)
        out.append(EpisodeTokens(str(task.id), prompt, full - prompt))
    return out


def check_episode_budget(config: Any, processor: Any, args: Any, sample: int = SAMPLE_TASKS) -> int:
    """Raise ValueError when a perfect episode cannot fit `args.max_completion_length` (or, with
    vLLM, its context `vllm_max_model_length`); returns the longest completion measured."""
    measured = episode_tokens(config, processor, sample)
    if not measured:
        return 0
    longest = max(measured, key=lambda e: e.completion)
    budget = int(args.max_completion_length)
    if longest.completion > budget:
        raise ValueError(
            f"a perfect episode cannot fit: the oracle's episode on task {longest.task_id} needs "
            f"{longest.completion} completion tokens (turns and tool results, images included) "
            f"but trainer.max_completion_length is {budget}; raise it to at least "
            f"{longest.completion}, or lower env.env_kwargs.max_image_pixels / the scene's "
            "object count"
        )
    context = getattr(args, "vllm_max_model_length", None)
    if getattr(args, "use_vllm", False) and context:
        total = max(e.prompt + e.completion for e in measured)
        if total > int(context):
            raise ValueError(
                f"a perfect episode needs {total} tokens of context but "
                f"trainer.vllm_max_model_length is {context}; raise it to at least {total}"
            )
    return longest.completion
