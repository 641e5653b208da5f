"""`BoxGymEnv`: a Gymnasium environment where a VLM answers questions about images with tools.

An observation is the conversation so far in the transformers multimodal chat format; an action
is the model's raw assistant text. `step` parses the tool calls in the text, runs them in order
on the episode's `Toolbox`, and returns the new messages (the assistant turn, then one tool
message per call). The reward is paid when the episode ends: by `answer` (terminated) or by the
turn or call budget (truncated). Nothing raises out of `step`: every problem comes back to the
model as a message and to the caller in `info`.

`info` after each step:
    turn, calls (name, arguments, source, ok, result text of each call), errors (every error
    message shown to the model this turn), boxes (live boxes: id, label, image, box in the
    env's frame, pixels), answer (None until answered), reward, reward_components (at the end:
    weighted components and "total"), metrics (flat numbers: num_calls, num_invalid_calls,
    valid_call_rate, num_turns, num_boxes, answered, truncated, calls_<tool>, and at the end
    count_correct, count_abs_error, enumeration_f1/precision/recall, grounding_f1/...,
    answer_correct, format, reward, max_reward), failure ("in_progress" until the end, then
    "none", "truncated", "wrong_count", "wrong_items", "wrong_answer", "wrong_point",
    "poor_grounding", "invalid_calls", "over_budget" or "env_error"; a failure kind names a
    reward component that is scored on the task and fell short, so a maximum-reward episode
    is "none") and ground_truth. A `step` before `reset` returns only error and failure
    ("not_reset").
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

import gymnasium as gym
import numpy as np

from boxgym.choices import DIFFICULTY_NAMES, SCENE_FAMILY_NAMES
from boxgym.data.task import Task
from boxgym.env.config import EnvConfig
from boxgym.env.history import keep_images
from boxgym.env.parsing import ParseError, parse_tool_calls, valid_unicode
from boxgym.env.prompts import system_prompt
from boxgym.env.rewards import EpisodeOutcome, RewardComponents, score_episode
from boxgym.env.spaces import AssistantTextSpace, ConversationSpace
from boxgym.tools.frames import frame_to_pixels, pixels_to_frame
from boxgym.tools.schema import tool_schemas
from boxgym.tools.toolbox import TOOL_NAMES, Toolbox

NO_CALL_MESSAGE = (
    "Error: no tool call was found in your reply. Call a tool with "
    '<tool_call>{"name": ..., "arguments": {...}}</tool_call>, or call answer to finish.'
)

_SCHEMAS: list[dict[str, Any]] | None = None


def _schemas() -> list[dict[str, Any]]:
    global _SCHEMAS
    if _SCHEMAS is None:
        _SCHEMAS = tool_schemas(Toolbox)
    return copy.deepcopy(_SCHEMAS)


def _text_message(role: str, text: str, name: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role, "content": [{"type": "text", "text": text}]}
    if name is not None:
        message["name"] = name
    return message


class BoxGymEnv(gym.Env[list, str]):
    """Multi-object counting and listing with image tools.

    Args:
        family: a procedural scene family ("screens", "shapes", "clutter"); each reset draws a
            scene seed from `self.np_random`. None when tasks are passed in.
        difficulty: "easy", "medium" or "hard" (scene families only).
        scene_kwargs: extra knobs for `make_scene_task`.
        tasks: a list of `Task`s to draw from (uniformly, with `self.np_random`).
        config: an `EnvConfig` or a mapping of its fields.
        render_mode: None or "rgb_array" (the marked-up first working image).
        **config_overrides: `EnvConfig` fields to override, e.g. `max_turns=6`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}

    def __init__(
        self,
        family: str | None = None,
        difficulty: str = "easy",
        scene_kwargs: dict[str, Any] | None = None,
        tasks: list[Task] | None = None,
        config: EnvConfig | dict[str, Any] | None = None,
        render_mode: str | None = None,
        **config_overrides: Any,
    ) -> None:
        if config is None:
            config = EnvConfig()
        elif isinstance(config, dict):
            config = EnvConfig.from_dict(config)
        if config_overrides:
            config = config.replace(**config_overrides)
        if family is not None and family not in SCENE_FAMILY_NAMES:
            raise ValueError(f"unknown scene family {family!r}; choose one of {SCENE_FAMILY_NAMES}")
        if difficulty not in DIFFICULTY_NAMES:
            raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {DIFFICULTY_NAMES}")
        if tasks is not None:
            tasks = list(tasks)
            if not tasks or not all(isinstance(t, Task) for t in tasks):
                raise ValueError("tasks must be a non-empty list of boxgym.data.Task")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}")
        self.config = config  # every limit and option
        self.family = family  # procedural scene family, or None
        self.difficulty = difficulty
        self.scene_kwargs = dict(scene_kwargs or {})
        self.tasks = tasks  # tasks to draw from, or None
        self.render_mode = render_mode
        self.observation_space = ConversationSpace()
        self.action_space = AssistantTextSpace(config.max_action_chars)
        self._toolbox = Toolbox(**config.toolbox_kwargs())
        self._task: Task | None = None
        self._ground_truth_json = "{}"  # the task's ground truth, serialised at reset
        self._messages: list[dict[str, Any]] = []
        self._reset_counters()

    # ------------------------------------------------------------------ accessors

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        """JSON schemas of the tools (transformers `get_json_schema` format), for `tools=`."""
        return _schemas()

    @property
    def tool_names(self) -> tuple[str, ...]:
        return TOOL_NAMES

    @property
    def task(self) -> Task | None:
        """The current episode's task."""
        return self._task

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation so far as the model sees it: every message, with the images that
        `config.image_history` keeps (a new list; unchanged messages are shared)."""
        return keep_images(self._messages, self.config.image_history)

    @property
    def toolbox(self) -> Toolbox:
        return self._toolbox

    @property
    def done(self) -> bool:
        return self._terminated or self._truncated

    # ----------------------------------------------------------------------- reset

    def _reset_counters(self) -> None:
        self._turns = 0
        self._calls = 0
        self._invalid_calls = 0  # calls that failed + malformed calls
        self._parse_errors = 0  # malformed calls (never run)
        self._failed_calls = 0  # calls run that returned an error
        self._empty_turns = 0  # replies without any call
        self._tool_counts: Counter[str] = Counter()
        self._terminated = False
        self._truncated = False
        self._components: RewardComponents | None = None
        self._final_info: dict[str, Any] | None = None

    def _draw_task(self, options: dict[str, Any]) -> Task:
        if options.get("task") is not None:
            task = options["task"]
            if not isinstance(task, Task):
                raise TypeError(f"options['task'] must be a boxgym Task, got {type(task).__name__}")
            return task
        if options.get("task_index") is not None:
            if self.tasks is None:
                raise ValueError("options['task_index'] needs an env built with tasks=[...]")
            index = int(options["task_index"])
            if not 0 <= index < len(self.tasks):
                raise IndexError(f"task_index {index} is out of range for {len(self.tasks)} tasks")
            return self.tasks[index]
        if self.tasks is not None:
            return self.tasks[int(self.np_random.integers(len(self.tasks)))]
        if self.family is not None:
            from boxgym.data.scenes import make_scene_task

            seed = int(self.np_random.integers(0, 2**31 - 1))
            return make_scene_task(self.family, seed, self.difficulty, **self.scene_kwargs)
        raise ValueError(
            "this env has no scene family and no tasks: pass family=..., tasks=[...], "
            "or reset(options={'task': task})"
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Start an episode; returns (the system and user messages, info).

        `options` may carry {"task": Task} or {"task_index": i} to choose the task.
        """
        super().reset(seed=seed)
        task = self._draw_task(options or {})
        self._task = task
        # Serialised once per episode; each info gets a fresh copy parsed from it (Gymnasium
        # wants new info data on every call), several times cheaper than a deep copy.
        self._ground_truth_json = json.dumps(task.ground_truth())
        self._reset_counters()
        self._toolbox._start(task.images, kind=task.kind)
        messages: list[dict[str, Any]] = []
        if self.config.system_prompt:
            text = system_prompt(
                task.kind,
                self.config.coordinate_frame,
                len(task.images),
                max_calls_per_turn=self.config.max_calls_per_turn,
                max_turns=self.config.max_turns,
                marks_shown=self.config.draw_box_returns in ("image", "both"),
            )
            messages.append(_text_message("system", text))
        content: list[dict[str, Any]] = [
            {"type": "image", "image": im.copy()} for im in self._toolbox.view_images
        ]
        content.append({"type": "text", "text": task.question})
        messages.append({"role": "user", "content": content})
        self._messages = list(messages)
        info = {
            "task_id": task.id,
            "kind": task.kind,
            "ground_truth": json.loads(self._ground_truth_json),
            "image_sizes": [list(s) for s in self._toolbox.image_sizes],
            "view_sizes": [list(im.size) for im in self._toolbox.view_images],
            "coordinate_frame": self.config.coordinate_frame,
            "max_reward": self.config.reward.max_total(task),
        }
        return messages, info

    # ------------------------------------------------------------------------ step

    def step(self, action: str) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """Run the tool calls in `action` (raw assistant text); see the module docstring."""
        if self._task is None:
            message = _text_message(
                "user", "Error: the environment was not reset; call reset() first."
            )
            return (
                [message],
                0.0,
                False,
                True,
                {"error": "step before reset", "failure": "not_reset"},
            )
        if self.done:
            message = _text_message(
                "user", "Error: this episode has ended; call reset() to start a new one."
            )
            info = copy.deepcopy(self._final_info or {})
            info.update(
                error="step after the episode ended",
                calls=[],
                errors=[message["content"][0]["text"]],
            )
            return [message], 0.0, self._terminated, self._truncated, info
        try:
            return self._step(valid_unicode(action) if isinstance(action, str) else action)
        except Exception as error:  # the last resort: never let an exception out of step
            self._truncated = True
            message = _text_message(
                "user", f"Error: the environment failed on this reply ({type(error).__name__})."
            )
            self._messages.append(message)
            info = self._episode_info(
                [], [f"internal error: {type(error).__name__}: {error}"], failure="env_error"
            )
            return [message], float(info["reward"]), False, True, info

    def _step(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        config = self.config
        text = action if isinstance(action, str) else ""
        self._turns += 1
        new: list[dict[str, Any]] = [_text_message("assistant", text)]
        records: list[dict[str, Any]] = []
        errors: list[str] = []
        if not isinstance(action, str):
            errors.append(
                f"the action must be a string (the raw assistant text), got {type(action).__name__}"
            )
            new.append(_text_message("user", f"Error: {errors[-1]}"))
            self._invalid_calls += 1
        parsed = parse_tool_calls(
            text, max_chars=config.max_action_chars, max_calls=config.max_calls_per_turn
        )
        budget_refused = 0
        for item in parsed.items:
            if isinstance(item, ParseError):
                self._invalid_calls += 1
                self._parse_errors += 1
                errors.append(item.message)
                new.append(
                    _text_message(
                        "tool", f"Error: {item.message}", name=item.name or "invalid_call"
                    )
                )
                records.append(
                    {
                        "name": item.name,
                        "arguments": None,
                        "ok": False,
                        "result": f"Error: {item.message}",
                    }
                )
                continue
            if self._calls >= config.max_calls:
                budget_refused += 1
                continue
            arguments = self._frame_arguments(item.arguments, item.frame)
            self._calls += 1
            self._tool_counts[item.name] += 1
            blocks, ok = self._toolbox._call(item.name, arguments)
            result_text = " ".join(b["text"] for b in blocks if b.get("type") == "text")
            if not ok:
                self._invalid_calls += 1
                self._failed_calls += 1
                errors.append(result_text)
            new.append({"role": "tool", "name": item.name, "content": blocks})
            records.append(
                {
                    "name": item.name,
                    "arguments": item.arguments,
                    "source": item.source,
                    "ok": ok,
                    "result": result_text,
                }
            )
        if budget_refused:
            message = f"the episode's call budget ({config.max_calls}) is used up; {budget_refused} call(s) were not run"
            errors.append(message)
            new.append(_text_message("user", f"Error: {message}"))
        if not parsed.items and isinstance(action, str):
            self._empty_turns += 1
            errors.append("no tool call in the reply")
            new.append(_text_message("user", NO_CALL_MESSAGE))
        self._messages.extend(new)
        self._terminated = self._toolbox.answered
        self._truncated = not self._terminated and (
            self._turns >= config.max_turns or self._calls >= config.max_calls
        )
        info = self._episode_info(records, errors)
        return new, float(info["reward"]), self._terminated, self._truncated, info

    def _frame_arguments(self, arguments: dict[str, Any], frame: str | None) -> dict[str, Any]:
        """Convert a grounding call's qwen-frame box to the env's frame (other calls unchanged)."""
        if frame is None or frame == self.config.coordinate_frame:
            return arguments
        size = self._toolbox.image_sizes[0]
        box = (arguments["x1"], arguments["y1"], arguments["x2"], arguments["y2"])
        converted = pixels_to_frame(
            frame_to_pixels(box, frame, size), self.config.coordinate_frame, size
        )
        return {**arguments, **dict(zip(("x1", "y1", "x2", "y2"), converted))}

    # ------------------------------------------------------------------------ info

    def _outcome(self) -> EpisodeOutcome:
        return EpisodeOutcome(
            boxes=[(b.label, b.image, b.pixels) for b in self._toolbox.boxes],
            answer=self._toolbox.final_answer,
            num_calls=self._calls,
            num_invalid_calls=self._invalid_calls,
            num_turns=self._turns,
            empty_turns=self._empty_turns,
            tool_images=self._toolbox.tool_images_returned,
            truncated=self._truncated,
        )

    def _metrics(self, components: RewardComponents | None) -> dict[str, float]:
        attempted = self._calls + self._parse_errors
        metrics: dict[str, float] = {
            "num_calls": float(self._calls),
            "num_invalid_calls": float(self._invalid_calls),
            "num_malformed_calls": float(self._parse_errors),
            "valid_call_rate": (self._calls - self._failed_calls) / attempted if attempted else 0.0,
            "num_turns": float(self._turns),
            "num_empty_turns": float(self._empty_turns),
            "num_boxes": float(self._toolbox.box_count),
            "tool_images": float(self._toolbox.tool_images_returned),
            "answered": float(self._toolbox.answered),
            "truncated": float(self._truncated),
        }
        for name in TOOL_NAMES:
            metrics[f"calls_{name}"] = float(self._tool_counts.get(name, 0))
        if components is not None:
            for key, value in components.scores.items():
                if value == value:  # skip NaN (not applicable)
                    metrics[key] = float(value)
            metrics["reward"] = components.total
            metrics["max_reward"] = self.config.reward.max_total(self._task)
        return metrics

    def _failure(self, components: RewardComponents) -> str:
        """The first scored component that fell short of its best, as a failure kind.

        Only components that are enabled, applicable to the task and weighted above zero are
        looked at, so an episode at the maximum reward always ends as "none". An episode
        ends only by an answer or by truncation, so an unanswered one is "truncated".
        """
        if not self._toolbox.answered:
            return "truncated"
        config = self.config.reward
        scored = {name for name in config.applicable(self._task) if getattr(config, name) > 0}
        scores, values = components.scores, components.values
        kind = self._task.kind
        short_of_best = (
            ("count_exact", "count_correct", "wrong_count"),
            ("enumeration_f1", "enumeration_f1", "wrong_items"),
            (
                "answer_correct",
                "answer_correct",
                "wrong_point" if kind == "point" else "wrong_answer",
            ),
            ("grounding_f1", "grounding_f1", "poor_grounding"),
            ("format", "format", "invalid_calls"),
        )
        for component, score, failure in short_of_best:
            if component in scored and scores.get(score, 0.0) < 1:
                return failure
        if "invalid_call_penalty" in scored and values.get("invalid_call_penalty", 0.0) < 0:
            return "invalid_calls"
        if any(values.get(name, 0.0) < 0 for name in ("call_penalty", "turn_penalty")):
            return "over_budget"
        return "none"

    def _episode_info(
        self, records: list[dict[str, Any]], errors: list[str], failure: str | None = None
    ) -> dict[str, Any]:
        done = self._terminated or self._truncated
        components = (
            score_episode(self._task, self._outcome(), self.config.reward) if done else None
        )
        self._components = components
        boxes = self._toolbox._boxes_json()
        info: dict[str, Any] = {
            "turn": self._turns,
            "calls": records,
            "errors": errors,
            "boxes": boxes,
            "answer": self._toolbox.final_answer,
            "reward": components.total if components else 0.0,
            "reward_components": components.to_dict() if components else {},
            "metrics": self._metrics(components),
            "failure": (failure or self._failure(components)) if components else "in_progress",
            "ground_truth": json.loads(self._ground_truth_json),
        }
        if done:
            self._final_info = info
        return info

    # ---------------------------------------------------------------------- render

    def render(self) -> np.ndarray | None:
        """The first working image with the live boxes drawn, as an (H, W, 3) array."""
        if self.render_mode != "rgb_array" or self._task is None:
            return None
        return np.asarray(self._toolbox._marked_image(0))
