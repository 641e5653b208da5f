"""The env behind TRL's `environment_factory`: same tools, schemas, frame, messages and reward.

TRL (1.16) creates one instance per rollout, calls `reset(**row)` with the dataset row, appends
what it returns to the row's last user message, exposes every public method as a tool (schema
from its signature and docstring), calls the tools the model asks for, feeds their content
blocks (images included) back as tool messages, and finally calls `get_reward()`.

`BoxGymToolEnv` maps that onto boxgym:
- `reset` builds the task from the row (a scene family + seed + difficulty, or a dataset task),
  resets a `BoxGymEnv` on it and returns the env's user content (working images + question).
  The row's `prompt` already holds the env's system message (`grpo_prompt_rows`), so the prompt
  TRL renders is exactly the env's first two messages.
- the tool methods are `Toolbox`'s own tools (same signatures and docstrings, so TRL derives the
  env's schemas) and run on the env's toolbox, with the env's checks and error texts.
- `get_reward` scores the episode with the env's `score_episode`, counting turns the way the env
  does (one turn per generation that made calls); calls after `answer` are not part of the
  episode (the env would have ended it).
Finished episodes' metrics go to `EPISODE_LOG`, which the GRPO trainer drains into its logs.

Known difference from `BoxGymEnv.step`: calls TRL cannot parse or dispatch (malformed JSON, an
unknown tool name, a Python-level argument error) are answered by TRL itself
(`{'error': ...}`) and counted in TRL's `tools/failure_frequency`, not here.
"""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar

from boxgym.tools.toolbox import TOOL_NAMES, Toolbox

# Generation rounds so far in this process. The GRPO trainer bumps it before every generation,
# so the calls an instance runs between two bumps belong to one assistant turn.
GENERATION_ROUND: list[int] = [0]
# Metrics of finished episodes, drained by the trainer's `log` (one dict per rollout).
EPISODE_LOG: list[dict[str, float]] = []
# Per generation that TRL ran with tool-returned images in its inputs: the number of images.
TOOL_IMAGE_ROUNDS: list[int] = []
ANSWER_GIVEN_MESSAGE = "Error: the answer was already given; the episode is over."

_TASK_CACHE: dict[tuple[str, str, str | None], list[Any]] = {}


def task_from_row(row: dict[str, Any], scene_knobs: dict[str, Any] | None = None) -> Any:
    """The `Task` a GRPO dataset row names.

    Rows are either `{"family", "difficulty", "seed"}` (a procedural scene, built with
    `scene_knobs`) or `{"dataset", "dataset_path", "dataset_split"?, "task_index"}` (a loader
    task).

    Raises:
        ValueError: when the row names neither.
    """
    if row.get("family"):
        from boxgym.data.scenes import make_scene_task

        knobs = scene_knobs or {}
        return make_scene_task(
            row["family"], int(row["seed"]), row.get("difficulty") or "easy", **knobs
        )
    if row.get("user_tasks"):
        from boxgym.data.loaders.user_tasks import load_user_tasks

        columns = json.loads(row.get("columns") or "{}")
        key = ("user", row["user_tasks"], row.get("columns") or "{}")
        if key not in _TASK_CACHE:
            _TASK_CACHE[key] = load_user_tasks(row["user_tasks"], columns=columns).tasks
        tasks = _TASK_CACHE[key]
        return tasks[int(row["task_index"]) % len(tasks)]
    if row.get("dataset"):
        from boxgym.data.loaders import load_dataset_tasks

        key = (row["dataset"], row["dataset_path"], row.get("dataset_split"))
        if key not in _TASK_CACHE:
            _TASK_CACHE[key] = load_dataset_tasks(
                row["dataset"], path=row["dataset_path"], split=row.get("dataset_split")
            ).tasks
        tasks = _TASK_CACHE[key]
        if not tasks:
            raise ValueError(f"dataset {row['dataset']!r} at {row['dataset_path']!r} has no tasks")
        return tasks[int(row["task_index"]) % len(tasks)]
    raise ValueError(
        f"a GRPO row needs `family` + `seed` (a scene) or `dataset` + `task_index`; got keys {sorted(row)}"
    )


def _tool(name: str) -> Any:
    """A method with `Toolbox.<name>`'s signature and docstring that runs on the episode."""
    original = getattr(Toolbox, name)

    @functools.wraps(original)
    def method(self: BoxGymToolEnv, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self._run_call(name, args, kwargs)

    return method


class BoxGymToolEnv:
    """One rollout's environment for TRL's `GRPOTrainer(environment_factory=...)`.

    Configure with `environment_class(env_section)`, which returns a subclass bound to an
    `EnvSection` (TRL calls the factory without arguments).
    """

    env_section: ClassVar[Any] = None  # the EnvSection every instance is built from

    def __init__(self) -> None:
        from boxgym.train.config import EnvSection
        from boxgym.train.mixture import make_env

        self._env = make_env(self.env_section or EnvSection())
        self._started = False
        self._clear()

    def _clear(self) -> None:
        self._calls = 0  # calls run (valid or not), up to the answer
        self._invalid = 0  # calls that returned an error
        self._refused = 0  # calls refused by the per-turn or episode call budget
        self._rounds: list[int] = []  # generation round of each call run
        self._closing: dict[str, Any] | None = None  # the outcome frozen at `answer`
        self._tool_counts: dict[str, int] = dict.fromkeys(TOOL_NAMES, 0)
        self._reward: float | None = None

    # ------------------------------------------------------------------ TRL contract

    def reset(self, **row: Any) -> list[dict[str, Any]]:
        """Start the row's episode; returns the user content (images, then the question)."""
        section = self.env_section
        task = task_from_row(row, section.scene_knobs if section is not None else None)
        seed = row.get("seed")
        messages, _ = self._env.reset(
            seed=None if seed is None else int(seed), options={"task": task}
        )
        self._started = True
        self._clear()
        self._start_round = GENERATION_ROUND[0]
        return list(messages[-1]["content"])

    draw_box = _tool("draw_box")
    crop = _tool("crop")
    label = _tool("label")
    remove_box = _tool("remove_box")
    answer = _tool("answer")

    def get_reward(self) -> float:
        """The env's total reward for the episode (its components go to `EPISODE_LOG`)."""
        from boxgym.env import score_episode

        if self._reward is not None:
            return self._reward
        if not self._started:
            raise RuntimeError("get_reward before reset")
        outcome = self._outcome()
        config = self._env.config.reward
        components = score_episode(self._env.task, outcome, config)
        self._reward = float(components.total)
        EPISODE_LOG.append(self._episode_metrics(outcome, components))
        return self._reward

    # ---------------------------------------------------------------------- episode

    def _run_call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        import inspect

        if not self._started:
            return [{"type": "text", "text": "Error: the environment was not reset."}]
        if self._closing is not None:  # the env ends the episode at `answer`
            return [{"type": "text", "text": ANSWER_GIVEN_MESSAGE}]
        if args:  # TRL passes keywords; map stray positionals onto the signature's names
            names = [p for p in inspect.signature(getattr(Toolbox, name)).parameters if p != "self"]
            kwargs = {**dict(zip(names, args)), **kwargs}
        config = self._env.config
        current = GENERATION_ROUND[0]
        if self._rounds.count(current) >= config.max_calls_per_turn:
            self._refused += 1
            return [
                {
                    "type": "text",
                    "text": f"Error: at most {config.max_calls_per_turn} calls are run per turn; this one was not.",
                }
            ]
        if self._calls >= config.max_calls:
            self._refused += 1
            return [
                {
                    "type": "text",
                    "text": f"Error: the episode's call budget ({config.max_calls}) is used up.",
                }
            ]
        self._calls += 1
        self._rounds.append(current)
        self._tool_counts[name] = self._tool_counts.get(name, 0) + 1
        blocks, ok = self._env.toolbox._call(name, kwargs)
        if not ok:
            self._invalid += 1
        if self._env.toolbox.answered:
            self._closing = {"turns": len(set(self._rounds)), "truncated": False}
        return blocks

    def _outcome(self) -> Any:
        from boxgym.env import EpisodeOutcome

        toolbox = self._env.toolbox
        if self._closing is not None:
            turns, empty, truncated = self._closing["turns"], 0, False
        else:
            turns = len(set(self._rounds))
            # TRL ends an episode at the first reply without calls (one empty turn) or at its
            # iteration/length cap (a truncation); either way there is no answer.
            generated_after = GENERATION_ROUND[0] > (
                max(self._rounds) if self._rounds else self._start_round
            )
            empty = 1 if generated_after or not self._rounds else 0
            turns += empty
            truncated = True
        return EpisodeOutcome(
            boxes=[(b.label, b.image, b.pixels) for b in toolbox.boxes],
            answer=toolbox.final_answer,
            num_calls=self._calls,
            num_invalid_calls=self._invalid + self._refused + empty,
            num_turns=turns,
            empty_turns=empty,
            tool_images=toolbox.tool_images_returned,
            truncated=truncated,
        )

    def _episode_metrics(self, outcome: Any, components: Any) -> dict[str, float]:
        task = self._env.task
        metrics: dict[str, float] = {
            f"reward/{k}": float(v) for k, v in components.to_dict().items()
        }
        metrics["reward/total"] = float(components.total)
        answer = outcome.answer or {}
        if task.count is not None:
            metrics["rollout/count_accuracy"] = float(answer.get("count") == task.count)
        attempted = outcome.num_calls + self._refused
        metrics["rollout/tool_calls"] = float(outcome.num_calls)
        metrics["rollout/invalid_call_rate"] = (
            (self._invalid + self._refused) / attempted if attempted else 0.0
        )
        metrics["rollout/turns"] = float(outcome.num_turns)
        metrics["rollout/answered"] = float(outcome.answer is not None)
        metrics["rollout/tool_images"] = float(outcome.tool_images)
        metrics["rollout/boxes"] = float(len(outcome.boxes))
        for name, count in self._tool_counts.items():
            metrics[f"rollout/calls_{name}"] = float(count)
        return metrics


def in_tool_order(tools: list[Any]) -> list[Any]:
    """Tools (callables) sorted into the env's order (`TOOL_NAMES`), others after them."""
    rank = {name: i for i, name in enumerate(TOOL_NAMES)}
    return sorted(tools, key=lambda tool: rank.get(getattr(tool, "__name__", ""), len(rank)))


def environment_class(env_section: Any) -> type[BoxGymToolEnv]:
    """A `BoxGymToolEnv` subclass bound to `env_section`, to pass as `environment_factory`."""
    return type("BoxGymToolEnv", (BoxGymToolEnv,), {"env_section": env_section})


def grpo_prompt_rows(env_section: Any, tasks_section: Any) -> list[dict[str, Any]]:
    """GRPO dataset rows: the env's system message as the prompt (the user content comes from
    `reset`), plus what `task_from_row` needs to rebuild the task.

    Scene rows use seeds `tasks.first_seed`, +1, ...; with `tasks.dataset` the rows are that
    loader's first `tasks.num_tasks` tasks.
    """
    from boxgym.train.mixture import make_env, scene_task

    env = make_env(env_section)
    rows = []
    for index in range(tasks_section.num_tasks):
        if getattr(tasks_section, "path", None):
            row: dict[str, Any] = {
                "user_tasks": tasks_section.path,
                "columns": json.dumps(dict(tasks_section.columns), sort_keys=True),
                "task_index": index,
                "seed": index,
            }
            task = task_from_row(row)
        elif tasks_section.dataset:
            row = {
                "dataset": tasks_section.dataset,
                "dataset_path": tasks_section.dataset_path,
                "dataset_split": tasks_section.dataset_split,
                "task_index": index,
                "seed": index,
            }
            task = task_from_row(row)
        else:
            seed = tasks_section.first_seed + index
            row = {"family": env_section.family, "difficulty": env_section.difficulty, "seed": seed}
            task = scene_task(env_section, seed)
        messages, _ = env.reset(seed=row["seed"], options={"task": task})
        prompt = [dict(m) for m in messages[:-1]]  # the system message, when the env has one
        prompt.append({"role": "user", "content": []})
        rows.append({"prompt": prompt, **row, "task_id": task.id})
    return rows
