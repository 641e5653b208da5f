"""The SFT mixture: tool-use episodes run through the real env, as chat conversations.

Every row is an episode: a scripted policy (the oracle, or the noisy policy that makes and then
fixes mistakes) acts in `BoxGymEnv` on a task, and the env's full conversation (system, user
image(s) + question, assistant turns with their raw `<tool_call>` text, tool results with the
images the tools really returned) becomes the row, with the env's tool schemas. Sources:

- `oracle`, `noisy`: procedural scenes (`env.family`, `env.difficulty`), scene seeds
  `first_scene_seed`, +1, ...
- `nlvr2` (verify), `aguvis-stage-1`/`aguvis-stage-2` (Smol2Operator grounding as point tasks),
  `pixmo-count`, `countbench` (counting): tasks from `boxgym.data.loaders.load_dataset_tasks`
  with the local copy in `mixture.paths`; the oracle answers them through the same tools.

Rows: `{"messages", "tools", "images", "source", "task_id", "reward"}`. `images` lists the
conversation's images in placeholder order (TRL's vision-dataset detection keys on it).

Under `image_history: last` a reply was written seeing only the latest image, so one conversation
cannot hold every turn as it was seen: such an episode also keeps `turn_prompts`, the
conversation each reply was written to, and becomes one training example per turn
(`to_sft_dataset`), the loss on that turn's reply only.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from typing import Any

from boxgym.choices import MIXTURE_SOURCES, SCRIPTED_SOURCES

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = MIXTURE_SOURCES
NOISY_DEFAULTS: dict[str, Any] = {"miss_rate": 0.0, "correction_rate": 1.0, "count_error_rate": 0.0}
# Env failure labels of episodes whose final answer is wrong or missing.
WRONG_ENDINGS = (
    "wrong_count",
    "wrong_items",
    "wrong_answer",
    "wrong_point",
    "truncated",
    "no_answer",
    "env_error",
)
MAX_TURNS_GUARD = 64  # a scripted policy that never finishes is a bug; stop rather than hang


def source_counts(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` rows over sources in proportion to `weights` (largest remainder)."""
    positive = {s: w for s, w in weights.items() if w > 0}
    norm = sum(positive.values())
    exact = {s: total * w / norm for s, w in positive.items()}
    counts = {s: int(v) for s, v in exact.items()}
    leftover = total - sum(counts.values())
    for source in sorted(exact, key=lambda s: exact[s] - counts[s], reverse=True)[:leftover]:
        counts[source] += 1
    return counts


def make_env(env_section: Any) -> Any:
    """A `BoxGymEnv` configured by the `env` section."""
    from boxgym.env import BoxGymEnv

    return BoxGymEnv(config=env_section.env_config())


def scene_task(env_section: Any, seed: int) -> Any:
    """The procedural task for `seed` in the env section's family and difficulty."""
    from boxgym.data.scenes import make_scene_task

    return make_scene_task(
        env_section.family, seed, env_section.difficulty, **env_section.scene_knobs
    )


def run_episode(env: Any, policy: Any, task: Any, seed: int) -> dict[str, Any]:
    """Play one episode of `policy` on `task`; the finished conversation as an SFT row."""
    from boxgym.policies.prompting import conversation_images
    from boxgym.policies.scripted import SeededTask

    env.reset(seed=seed, options={"task": task})
    tools = env.tool_schemas
    reward, info, done, turns = 0.0, {}, False, 0
    prompts = []  # the conversation each reply was written to
    while not done:
        turns += 1
        if turns > MAX_TURNS_GUARD:
            raise RuntimeError(
                f"policy {policy.name!r} did not finish task {task.id} in {MAX_TURNS_GUARD} turns"
            )
        prompts.append(env.messages)
        text = policy.act([prompts[-1]], tools, [SeededTask(task, seed)])[0]
        new, reward, terminated, truncated, info = env.step(text)
        prompts[-1] = [*prompts[-1], new[0]]  # with the reply: one training example
        done = terminated or truncated
    messages = list(env.messages)
    row = {
        "messages": messages,
        "tools": tools,
        "images": conversation_images(messages),
        "source": policy.name,
        "task_id": task.id,
        "reward": float(reward),
        "answered": bool(terminated),
        "metrics": dict(info.get("metrics", {})),
        "failure": str(info.get("failure", "")),
    }
    if env.config.image_history != "all":
        row["turn_prompts"] = prompts
    return row


# SFT reads the training split; CountBenchQA has only a test split.
DEFAULT_SPLITS: dict[str, str] = {"countbench": "test"}


def _dataset_tasks(name: str, path: str, split: str, count: int) -> list[Any]:
    from boxgym.data.loaders import load_dataset_tasks

    result = load_dataset_tasks(name, path=path, split=split, limit=count, role="train")
    if not result.tasks:
        raise ValueError(
            f"mixture source {name!r} at {path!r} gave no training rows in split {split!r} "
            f"({result.summary()}); eval rows are never used for training (boxgym.data.splits)"
        )
    log.info("%s: %s", name, result.summary())
    return result.tasks


def build_mixture(mixture: Any, env_section: Any) -> list[dict[str, Any]]:
    """All SFT rows of the mixture, shuffled with `mixture.seed`.

    Noisy episodes default to correcting every mistake they make (`correction_rate` 1, no
    misses, no wrong final counts; override with `mixture.noisy_kwargs`) and are kept only when
    the final answer is right, so the model sees mistakes followed by their fixes, not mistakes
    left standing.
    """
    from boxgym.policies.registry import make_policy

    counts = source_counts(mixture.num_examples, mixture.weights)
    env = make_env(env_section)
    rows: list[dict[str, Any]] = []
    for source, count in counts.items():
        if source in SCRIPTED_SOURCES:
            kwargs = (
                {**NOISY_DEFAULTS, "seed": mixture.seed, **mixture.noisy_kwargs}
                if source == "noisy"
                else dict(mixture.oracle_kwargs)
            )
            policy = make_policy(source, **kwargs)
            made, seed = 0, mixture.first_scene_seed
            while made < count:
                if seed - mixture.first_scene_seed > 20 * count + 100:
                    raise RuntimeError(f"too few usable {source} episodes: {made} of {count}")
                row = run_episode(env, policy, scene_task(env_section, seed), seed)
                seed += 1
                if source == "noisy" and row["failure"] in WRONG_ENDINGS:
                    continue
                rows.append(row)
                made += 1
        else:
            policy = make_policy("oracle")
            split = mixture.splits.get(source, DEFAULT_SPLITS.get(source, "train"))
            tasks = _dataset_tasks(source, mixture.paths[source], split, count)
            for i in range(count):
                task = tasks[i % len(tasks)]
                row = run_episode(env, policy, task, mixture.seed + i)
                row["source"] = source
                rows.append(row)
    random.Random(mixture.seed).shuffle(rows)
    return rows


def to_sft_dataset(rows: list[dict[str, Any]]) -> Any:
    """The rows as a `datasets.Dataset` in TRL's vision format: `messages` + `images` (+ `tools`
    as JSON text, `source`, `task_id`)."""
    import datasets

    from boxgym.train.collator import detach_images

    if not rows:
        raise ValueError("the SFT mixture is empty: give some source a positive weight")
    records = []
    for row in rows:
        # an episode of turns that saw different images: one example per turn, its reply learnt
        examples = row.get("turn_prompts") or [row["messages"]]
        for conversation in examples:
            messages, images = detach_images(conversation)
            records.append(
                {
                    "messages": messages,
                    "images": images,
                    "tools": json.dumps(row["tools"]),
                    "source": row["source"],
                    "task_id": str(row["task_id"]),
                    "last_turn_only": "turn_prompts" in row,
                }
            )
    return datasets.Dataset.from_list(records)


def mixture_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per source."""
    return dict(Counter(row["source"] for row in rows))
