"""`EpisodeRecorder`: turns one episode's env traffic into the stored JSON record.

A record (one line of `episodes.jsonl`):

    key            {"task_id", "task_index", "sample"}: the episode's identity within the run
    policy, ...    the run fields the runner passes (policy name, run name)
    seed           the episode seed (env reset and scripted-policy randomness)
    task           the task's ground truth (`Task.ground_truth()`) plus "images": [ref, ...]
    prompt         the messages before the first assistant turn, images as references
    turns          per turn: "turn", "assistant" (raw text), "calls" and "errors" (parsed),
                   "tool_results" (tool messages, images as sha), "reward", "info" (the rest of
                   the env's step info that is small and JSON-able)
    reward         total reward (sum over steps); reward_components: the final step's components
    metrics        the headline metrics (see `boxgym.rollouts.metrics.HEADLINE_METRICS`) and the
                   env's own metrics
    final_answer   the answer the env recorded, or null
    terminated, truncated, failure, error
    timing         {"policy_s", "env_s", "record_s"}: the only nondeterministic fields

Everything goes through `to_jsonable`: numpy scalars become numbers, tuples lists, objects with
`to_json()` their JSON, non-finite floats the strings "nan"/"inf"/"-inf", PIL images stored
image references.

An image block in a message is `{"type": "image", "image": ref}`. When the image is one the
env derived from a task image (a working view, a marked-up image, a crop: it carries a recipe,
`boxgym.tools.recipes`), the block is `{"type": "image", "image": <ref of that task image>,
"recipe": {...}}` and nothing is encoded: `render_recipe` rebuilds the pixels, the viewer draws
the recipe over the stored task image.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from boxgym.data.task import Task
from boxgym.rollouts.store import EpisodeStore
from boxgym.tools.recipes import image_recipe

# Step-info keys stored elsewhere in the record (or too large / not data) and not under "info".
_INFO_SKIP = {
    "calls", "errors", "parsed", "metrics", "reward_components", "ground_truth", "task",
    "messages", "boxes", "final_answer", "answer", "reward",
}  # fmt: skip


def to_jsonable(value: Any, store: EpisodeStore | None = None, depth: int = 0) -> Any:
    """A JSON-safe copy of `value` (see the module docstring)."""
    if depth > 40:
        return repr(value)[:200]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), store, depth + 1)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), store, depth + 1)
    if isinstance(value, Image.Image):
        return (
            store.put_image(value)
            if store is not None
            else f"<image {value.size[0]}x{value.size[1]}>"
        )
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, store, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, store, depth + 1) for v in value]
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_jsonable(to_json(), store, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), store, depth + 1)
    return repr(value)[:500]


def plain_jsonable(value: Any, store: EpisodeStore | None = None) -> Any:
    """`to_jsonable(value)` through the C JSON codec when `value` is plain JSON data with
    string keys (several times faster); NaN, images, numpy and other objects make the codec
    refuse it and take `to_jsonable`'s path."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return to_jsonable(value, store)
    return json.loads(text)


def serialize_message(
    message: dict[str, Any], store: EpisodeStore, sources: list[str] | None = None
) -> dict[str, Any]:
    """A chat message with each image replaced by its stored reference.

    `sources` are the references of the task's images: an image with a recipe on one of them
    is stored as that reference plus the recipe, without encoding it.
    """
    out: dict[str, Any] = {"role": message.get("role")}
    if message.get("name") is not None:
        out["name"] = message["name"]
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = [{"type": "text", "text": content}]
        return out
    blocks = []
    for block in content or []:
        if not isinstance(block, dict):
            blocks.append({"type": "text", "text": str(block)})
        elif block.get("type") == "image" and isinstance(block.get("image"), Image.Image):
            recipe = image_recipe(block["image"])
            if recipe is not None and sources and 0 <= recipe.get("source", -1) < len(sources):
                ref = sources[recipe["source"]]
                blocks.append({"type": "image", "image": ref, "recipe": recipe})
            else:
                blocks.append({"type": "image", "image": store.put_image(block["image"])})
        else:
            blocks.append(to_jsonable(block, store))
    out["content"] = blocks
    return out


def _first(mapping: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in mapping and mapping[name] is not None:
            return mapping[name]
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
        return float(value)
    return None


class EpisodeRecorder:
    """Collects one episode as it runs and produces its record."""

    def __init__(
        self,
        store: EpisodeStore,
        task: Task,
        task_index: int,
        sample: int,
        seed: int,
        run_info: dict[str, Any],
    ) -> None:
        self.store = store
        self.task = task
        self.timing: dict[str, float] = {"policy_s": 0.0, "env_s": 0.0, "record_s": 0.0}
        self._record: dict[str, Any] = {
            "key": {"task_id": task.id, "task_index": task_index, "sample": sample},
            **to_jsonable(run_info),
            "seed": seed,
            "task": {
                **plain_jsonable(task.ground_truth()),
                "images": [store.put_image(im) for im in task.images],
            },
            "prompt": [],
            "turns": [],
        }
        self._last_info: dict[str, Any] = {}
        self._reward = 0.0
        self._terminated = False
        self._truncated = False
        self._failure: str | None = None
        self._error: str | None = None

    def set_prompt(self, messages: list[dict[str, Any]]) -> None:
        sources = self._record["task"]["images"]
        self._record["prompt"] = [serialize_message(m, self.store, sources) for m in messages]

    def add_turn(
        self, text: str, new_messages: list[dict[str, Any]], reward: float, info: dict[str, Any]
    ) -> None:
        """Record one step: the assistant text, the parsed calls, the tool results."""
        self._reward += reward if math.isfinite(reward) else 0.0
        self._last_info = info or {}
        sources = self._record["task"]["images"]
        tool_results = [
            serialize_message(m, self.store, sources)
            for m in new_messages
            if m.get("role") != "assistant"
        ]
        extra = {k: v for k, v in self._last_info.items() if k not in _INFO_SKIP}
        self._record["turns"].append(
            {
                "turn": len(self._record["turns"]) + 1,
                "assistant": text,
                "calls": plain_jsonable(
                    _first(self._last_info, "calls", "parsed") or [], self.store
                ),
                "errors": plain_jsonable(self._last_info.get("errors") or [], self.store),
                "tool_results": tool_results,
                "reward": reward if math.isfinite(reward) else None,
                "info": plain_jsonable(extra, self.store),
            }
        )

    def finish(self, terminated: bool, truncated: bool, info: dict[str, Any]) -> None:
        self._terminated, self._truncated = terminated, truncated
        self._last_info = info or self._last_info

    def fail(self, kind: str, error: str) -> None:
        """End the episode as a failure of the machinery (env error, runaway turns)."""
        self._failure, self._error = kind, error

    # -- the record -------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        info = self._last_info
        env_metrics = plain_jsonable(info.get("metrics") or {}, self.store)
        components = plain_jsonable(info.get("reward_components") or {}, self.store)
        final_answer = to_jsonable(_first(info, "final_answer", "answer"), self.store)
        metrics = self._headline(env_metrics, final_answer)
        for name, value in env_metrics.items():
            metrics.setdefault(name, value)
        record = self._record
        record["reward"] = round(self._reward, 10)
        record["reward_components"] = components
        record["metrics"] = metrics
        record["final_answer"] = final_answer
        record["terminated"] = self._terminated
        record["truncated"] = self._truncated
        env_failure = info.get("failure")
        if not isinstance(env_failure, str) or env_failure == "in_progress":
            env_failure = None
        record["failure"] = self._failure or env_failure or self._classify(metrics, final_answer)
        record["error"] = self._error
        record["timing"] = {k: round(v, 6) for k, v in self.timing.items()}
        return record

    def _headline(self, env: dict[str, Any], final_answer: Any) -> dict[str, Any]:
        """The metrics every summary reports, from the env's metrics (null where they do not apply)."""
        task = self.task
        # Calls attempted: every parsed call record, malformed ones included.
        calls = sum(len(t["calls"]) for t in self._record["turns"])
        true_count = task.count
        answered = final_answer.get("count") if isinstance(final_answer, dict) else None
        answered = (
            answered if isinstance(answered, int) and not isinstance(answered, bool) else None
        )
        count_acc = _number(_first(env, "count_correct", "count_exact", "count_accuracy"))
        if count_acc is None and true_count is not None:
            count_acc = float(answered == true_count)
        # Over answered episodes only: an episode without an answer has no count error (it is
        # counted by `answered` instead of as if it had answered 0).
        abs_err = _number(_first(env, "count_abs_error", "abs_count_error"))
        if abs_err is None and true_count is not None and answered is not None:
            abs_err = float(abs(answered - true_count))
        if answered is None:
            abs_err = None
        # Valid-call rate from the call records: attempted calls (malformed ones included) that
        # ran without error; null when the episode attempted no call at all.
        records = [c for t in self._record["turns"] for c in t["calls"] if isinstance(c, dict)]
        if not records:
            valid_rate = None
        elif all("ok" in c for c in records):
            valid_rate = sum(1 for c in records if c["ok"]) / len(records)
        else:
            valid_rate = _number(_first(env, "valid_call_rate"))
        success = _number(_first(env, "success", "correct", "answer_correct"))
        enum_f1 = _number(_first(env, "enumeration_f1", "enum_f1", "items_f1"))
        if success is None:
            success = self._success(count_acc, enum_f1, env)
        return {
            "reward": round(self._reward, 10),
            "success": success,
            "count_accuracy": count_acc if true_count is not None else None,
            "count_abs_error": abs_err if true_count is not None else None,
            "enumeration_f1": enum_f1 if task.kind == "enumerate" else None,
            "grounding_f1": _number(_first(env, "grounding_f1")) if task.has_boxes else None,
            "valid_call_rate": valid_rate,
            "calls": float(calls),
            "turns": float(len(self._record["turns"])),
            "answered": float(final_answer is not None),
            "answered_count": answered,
        }

    def _success(
        self, count_acc: float | None, enum_f1: float | None, env: dict[str, Any]
    ) -> float | None:
        kind = self.task.kind
        if kind == "enumerate":
            if count_acc is None:
                return None
            return float(count_acc == 1.0 and (enum_f1 is None or enum_f1 >= 1.0 - 1e-9))
        if kind == "count":
            return count_acc
        return _number(_first(env, "value_correct", "point_correct", "answer_correct"))

    def _classify(self, metrics: dict[str, Any], final_answer: Any) -> str:
        """A failure kind when the env gave none: "none" (success) or what went wrong first."""
        if final_answer is None:
            if metrics.get("valid_call_rate") in (0.0, None) and metrics.get("calls", 0) >= 0:
                return "no_valid_calls" if self._truncated else "no_answer"
            return "no_answer"
        if metrics.get("success") == 1.0:
            return "none"
        if metrics.get("count_accuracy") == 0.0:
            return "wrong_count"
        if self.task.kind == "enumerate" and (metrics.get("enumeration_f1") or 0.0) < 1.0:
            return "wrong_items"
        return "wrong_answer"


def task_error_record(
    task_id: str, task_index: int, sample: int, seed: int, run_info: dict[str, Any], error: str
) -> dict[str, Any]:
    """The record of an episode whose task could not be built (its image vanished or no longer
    decodes): failure `task_error` with the reason, no turns, no metrics but a zero reward."""
    return {
        "key": {"task_id": task_id, "task_index": task_index, "sample": sample},
        **to_jsonable(run_info),
        "seed": seed,
        "task": {"id": task_id, "images": []},
        "prompt": [],
        "turns": [],
        "reward": 0.0,
        "reward_components": {},
        "metrics": {"reward": 0.0, "turns": 0.0, "calls": 0.0, "answered": 0.0},
        "final_answer": None,
        "terminated": False,
        "truncated": False,
        "failure": "task_error",
        "error": error,
        "timing": {"policy_s": 0.0, "env_s": 0.0, "record_s": 0.0},
    }
