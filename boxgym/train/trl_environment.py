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
- tool calls are parsed the env's way: the trainer (`boxgym.train.grpo`) replaces TRL's
  `parse_response` with `completion_message`, which reads a completion with the env's
  `parse_tool_calls` (Hermes JSON and Qwen2-VL grounding tokens, the per-turn call limit), so
  grounding-token calls run in GRPO as in rollouts; malformed calls reach `_run_call` as calls
  carrying the env's error text and count as the env counts them.
- `get_reward` scores the episode with the env's `score_episode`, counting what `BoxGymEnv.step`
  counts for the same turns (one turn per generation): calls after `answer` in the answering
  turn are run and fail as in the env; generations after the env would have ended the episode
  (after the answering turn, after `max_turns` turns, or after the turn that used up
  `max_calls`) are not part of the episode. `tests/train/test_one_reward.py` replays scripted
  episodes through both and compares the rewards.
- `over_turn`: the episode hit the turn or call budget without an answer; with the GRPO
  option `over_turn_masking` the trainer masks such completions out of the loss (Mini-o3).
Finished episodes' metrics go to `EPISODE_LOG`, which the GRPO trainer drains into its logs.

Known difference from `BoxGymEnv.step`: a reply without any call ends TRL's episode (one empty
turn, unanswered), where the env would ask again.
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
# Private argument keys `completion_message` adds to a call (TRL passes arguments through).
PARSE_ERROR_KEY = "_boxgym_parse_error"
FRAME_KEY = "_boxgym_frame"
END_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")


def completion_message(text: str, env_config: Any) -> dict[str, Any]:
    """A completion as TRL's assistant message, its tool calls parsed the env's way.

    Each item of `parse_tool_calls(text)` becomes a TRL tool call: a valid call with its
    arguments (a grounding call also carries its frame under `FRAME_KEY`), a malformed one as a
    call of its tool (or `draw_box` when the name is unknown) carrying the env's error message
    under `PARSE_ERROR_KEY`. No items: no `tool_calls`, which ends TRL's episode.
    """
    from boxgym.env.parsing import ParseError, parse_tool_calls

    for token in END_TOKENS:
        text = text.split(token, 1)[0]
    parsed = parse_tool_calls(
        text, max_chars=env_config.max_action_chars, max_calls=env_config.max_calls_per_turn
    )
    calls = []
    for item in parsed.items:
        if isinstance(item, ParseError):
            name = item.name if item.name in TOOL_NAMES else TOOL_NAMES[0]
            arguments: dict[str, Any] = {PARSE_ERROR_KEY: item.message}
        else:
            name, arguments = item.name, dict(item.arguments)
            if item.frame is not None:
                arguments[FRAME_KEY] = item.frame
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


def env_parse_response(env_config: Any) -> Any:
    """A stand-in for `trl.chat_template_utils.parse_response` that parses the env's way."""

    def parse_response(
        tokenizer: Any, ids: list[int], prefix: Any = None, tools: Any = None
    ) -> dict[str, Any]:
        text = tokenizer.decode(ids, skip_special_tokens=False)
        return completion_message(text, env_config)

    return parse_response


_TASK_CACHE: dict[tuple[str, str, str | None], list[Any]] = {}


def task_from_row(row: dict[str, Any], scene_knobs: dict[str, Any] | None = None) -> Any:
    """The `Task` a GRPO dataset row names.

    Rows are either `{"family", "difficulty", "seed"}` (a procedural scene, built with
    `scene_knobs`) or `{"dataset", "dataset_path", "dataset_split"?, "task_index"}` (a loader
    task) or `{"user_tasks", "columns"?, "task_index"}` (the user's photos). A dataset or photo
    folder is read once per process and kept as a `LazyTasks`: its rows' undecoded cells, each
    image decoded again when an episode starts, so a process does not hold the split's pixels.

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
            _TASK_CACHE[key] = load_user_tasks(row["user_tasks"], columns=columns, lazy=True).tasks
        tasks = _TASK_CACHE[key]
        return tasks[int(row["task_index"]) % len(tasks)]
    if row.get("dataset"):
        from boxgym.data.loaders import load_dataset_tasks

        key = (row["dataset"], row["dataset_path"], row.get("dataset_split"))
        if key not in _TASK_CACHE:
            _TASK_CACHE[key] = load_dataset_tasks(
                row["dataset"],
                path=row["dataset_path"],
                split=row.get("dataset_split"),
                role="train",  # never an eval suite's row (boxgym.data.splits)
                lazy=True,
            ).tasks
        tasks = _TASK_CACHE[key]
        if not tasks:
            raise ValueError(
                f"dataset {row['dataset']!r} at {row['dataset_path']!r} has no training rows in "
                f"split {row.get('dataset_split')!r}; eval rows are never trained on "
                "(boxgym.data.splits)"
            )
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
        from boxgym.sections import EnvSection
        from boxgym.train.mixture import make_env

        self._env = make_env(self.env_section or EnvSection())
        self._started = False
        self._clear()

    def _clear(self) -> None:
        self._calls = 0  # calls run (valid or not), as the env counts them
        self._invalid = 0  # calls that returned an error, and malformed calls
        self._refused = 0  # calls refused by the per-turn or episode call budget (not invalid)
        self._rounds: list[int] = []  # generation round of each call (malformed ones too)
        self._run_rounds: list[int] = []  # generation round of each call run
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
        config = self._env.config
        current = GENERATION_ROUND[0]
        if self._ended_before(current):  # the env would have ended the episode by now
            return [{"type": "text", "text": ANSWER_GIVEN_MESSAGE}]
        self._rounds.append(current)  # this generation is one of the episode's turns
        parse_error = kwargs.pop(PARSE_ERROR_KEY, None)
        frame = kwargs.pop(FRAME_KEY, None)
        if parse_error is not None:  # malformed: never run, counted invalid, as in the env
            self._invalid += 1
            return [{"type": "text", "text": f"Error: {parse_error}"}]
        if args:  # TRL passes keywords; map stray positionals onto the signature's names
            names = [p for p in inspect.signature(getattr(Toolbox, name)).parameters if p != "self"]
            kwargs = {**dict(zip(names, args)), **kwargs}
        if frame is not None and name == "draw_box":
            kwargs = self._env._frame_arguments(kwargs, frame)
        if self._run_rounds.count(current) >= config.max_calls_per_turn:
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
        self._run_rounds.append(current)
        self._tool_counts[name] = self._tool_counts.get(name, 0) + 1
        blocks, ok = self._env.toolbox._call(name, kwargs)
        if not ok:
            self._invalid += 1
        if self._env.toolbox.answered and self._closing is None:
            self._closing = {"turns": len(set(self._rounds)), "round": current}
        return blocks

    def _ended_before(self, current: int) -> bool:
        """Whether the env would have ended the episode before generation `current`: it was
        answered, or the turn or call budget was used up, in an earlier turn."""
        if not self._rounds or current == self._rounds[-1]:
            return False
        config = self._env.config
        if self._closing is not None:
            return True
        return len(set(self._rounds)) >= config.max_turns or self._calls >= config.max_calls

    @property
    def over_turn(self) -> bool:
        """The episode ended unanswered by the turn or call budget (Mini-o3's over-turn)."""
        config = self._env.config
        return self._closing is None and (
            len(set(self._rounds)) >= config.max_turns or self._calls >= config.max_calls
        )

    def _outcome(self) -> Any:
        from boxgym.env import EpisodeOutcome

        toolbox = self._env.toolbox
        if self._closing is not None:
            turns, empty, truncated = self._closing["turns"], 0, False
        elif self.over_turn:  # the env truncated at the budget: no further turn
            turns, empty, truncated = len(set(self._rounds)), 0, True
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
            num_invalid_calls=self._invalid,
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
