"""What a study is: its question, its factors and metrics, its settings, and how it measures.

A study's `measure(lab, settings)` returns one record per measured example: the condition's
factor values, the metric values (None where a metric does not apply) and anything worth keeping
per example. The runner groups records by their factor values into conditions and reports each
metric's mean with a 95% bootstrap interval.

Settings are a plain mapping with defaults (the full study), a `quick` overlay (a small, fast
version) and `--set key=value` overrides on top (dotted keys reach into nested mappings, values
are YAML: `--set sizes=[0.5,1]`, `--set knobs.count=[1,3]`). A few settings have a flag of
their own (`SETTING_FLAGS`: `--sft-steps 150` is `--set sft_steps=150`; `--sft-set KEY=VALUE`
adds one item to the list setting `sft_set`).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Every metric a study may report, with what it means (the report's legend).
METRIC_HELP: dict[str, str] = {
    "count_accuracy": "answered count equals the true count",
    "count_abs_error": "|answered - true| (no number in the reply, or one above 999, counts as 0)",
    "count_rel_error": "|answered - true| / true",
    "enumeration_f1": "F1 of answered labels vs true labels (multiset)",
    "grounding_f1": "F1 of answered boxes matched one-to-one at IoU >= 0.5 with agreeing labels",
    "answered": "the reply held a usable answer",
    "answer_tokens": "tokens in the model's reply",
    "image_tokens": "image tokens the model saw (after the 2x2 merge)",
    "objects_crossing": "fraction of objects whose box crosses a 28-px patch line",
    "object_side_patches": "mean longer side of the true boxes as shown, in 28-px patches",
    "reward": "the env's total reward",
    "valid_call_rate": "tool calls that ran without error",
    "episodes_that_box": "the episode drew at least one box",
    "bits_per_token": "summed surprisal / completion tokens, in bits",
    "bits_per_example": "summed surprisal over an example's completion tokens, in bits",
    "completion_tokens": "completion (assistant) tokens per example",
    "answer_bits": "surprisal of the answer tokens, in bits",
    "probe_accuracy": "held-out accuracy of a linear probe predicting the true count",
    "probe_abs_error": "|probe prediction - true count| on the held-out split",
    "majority_accuracy": "accuracy of always guessing the training split's most common count",
    "tool_calls_per_episode": "tool calls attempted per episode (malformed ones included)",
}

# Flags of `boxgym study` that stand for one setting each, of the same name with underscores:
# flag -> (argparse type, what it does). `str_list` flags append one item to a list setting per
# use; `bool` flags set the setting to true.
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "--eval-tasks": ("int", "held-out scenes evaluated at each stage"),
    "--sft-steps": ("int", "SFT steps (default: the SFT config's trainer.max_steps)"),
    "--grpo-steps": ("int", "GRPO steps (default: the GRPO config's trainer.max_steps)"),
    "--sft-set": ("str_list", "override of the SFT config, KEY=VALUE (repeatable)"),
    "--grpo-set": ("str_list", "override of the GRPO config, KEY=VALUE (repeatable)"),
    "--proof": ("str", "a learning-proof output folder whose tool arms to compare"),
    "--resume": ("bool", "continue the stages a killed run in --out left unfinished"),
}


def setting_name(flag: str) -> str:
    """The setting a flag of `SETTING_FLAGS` stands for: `--sft-steps` -> `sft_steps`."""
    return flag.removeprefix("--").replace("-", "_")


@dataclass
class StudyOutput:
    """What `measure` returns.

    Attributes:
        records: one dict per example: factor values, metric values, extras.
        extra: study-specific results for `results.json` (e.g. the LoRA rank table).
        notes: markdown for the report, after the table (e.g. that rank table).
        plot: optional callable(fig) drawing extra panels; None uses the standard plot.
        sections: top-level sections of `results.json` (e.g. the learning proof's "sft" and
            "grpo"), beside the runner's own keys.
    """

    records: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    plot: Callable[[Any, list[dict[str, Any]]], None] | None = None
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """One research question and how to measure it.

    Attributes:
        name: what `boxgym study NAME` takes.
        question: the question, one sentence.
        factors: the condition's columns, in table order (what varies).
        metrics: the metrics reported, in table order.
        defaults: the full study's settings.
        quick: overrides of `defaults` for `--quick`.
        measure: (lab, settings) -> StudyOutput.
        plot_x: the factor on the plot's x axis.
        plot_hue: the factor drawn as separate lines (None: one line).
        plot_metrics: the metrics plotted (one panel each).
        fixed_help: what is held fixed, in words, for the report.
        plot_log_x: a base-2 logarithmic x axis (sizes, token budgets).
        setting_hint: added to the message for an unknown setting (where a setting went).
    """

    name: str
    question: str
    factors: tuple[str, ...]
    metrics: tuple[str, ...]
    defaults: dict[str, Any]
    quick: dict[str, Any]
    measure: Callable[[Any, dict[str, Any]], StudyOutput]
    plot_x: str
    plot_hue: str | None = None
    plot_metrics: tuple[str, ...] = ("count_accuracy",)
    fixed_help: str = ""
    plot_log_x: bool = False
    setting_hint: str = ""


def resolve_settings(
    study: Study,
    quick: bool,
    overrides: list[str],
    flags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The study's settings: defaults, the quick overlay when asked, `key=value` overrides, then
    the values of the `SETTING_FLAGS` given (flag -> value; a list for `str_list` flags).

    Raises:
        ValueError: for an override that is not `key=value`, or an override or flag that names
            a setting the study does not have.
    """
    from boxgym.config import apply_overrides

    settings = copy.deepcopy(study.defaults)
    if quick:
        settings.update(copy.deepcopy(study.quick))
    for item in overrides:
        key = item.split("=", 1)[0].strip().split(".")[0]
        if "=" in item and key not in settings:
            close = difflib.get_close_matches(key, list(settings), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown setting {key!r} for study {study.name!r}{hint}; known: "
                f"{', '.join(sorted(settings))}{study.setting_hint}"
            )
    apply_overrides(settings, overrides)
    for flag, value in (flags or {}).items():
        name = setting_name(flag)
        if name not in settings:
            raise ValueError(
                f"{flag} is not an option of study {study.name!r} (no setting {name!r})"
            )
        if SETTING_FLAGS[flag][0] == "str_list":
            settings[name] = [*(settings[name] or []), *value]
        else:
            settings[name] = value
    for key, default in study.defaults.items():
        value = settings[key]
        if isinstance(default, list) and not isinstance(value, list):
            settings[key] = [value]  # `--set sizes=1` means the one-element list
    return settings
