"""What a run verb (`episodes`, `rollout`, `eval`) runs with: one `RunSettings`, built once from
the flags and the run config (`build_run_settings`).

The flags are derived from the fields of the option dataclasses here and of `EnvConfig`
(`boxgym.flags`); the run config (`--config`, `--set`) is `RunConfig`, the sections every verb
shares (`boxgym.sections`), so a model trained on a distribution is evaluated on it with the same
file. A flag given wins; the config fills the rest; the fields' defaults fill what neither gave.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from boxgym.choices import DIFFICULTY_NAMES, DTYPES
from boxgym.config import load_config, typed_section, validate
from boxgym.env.config import EnvConfig
from boxgym.flags import given
from boxgym.sections import (
    DecodingSection,
    EnvSection,
    LoraSection,
    MixtureSection,
    ModelSection,
    TaskSection,
)

POLICY_NAMES: tuple[str, ...] = ("oracle", "noisy", "random", "hf", "vllm", "openai")
SCRIPTED_POLICIES: tuple[str, ...] = POLICY_NAMES[:3]
# Episodes in flight by default. The lockstep runner stores an episode when it ends; with hf on
# a CPU one turn of 64 conversations takes minutes, so fewer live episodes get results on disk
# (and on the progress bar) sooner, at little cost to the batch's throughput.
DEFAULT_MAX_LIVE = {"hf": 16}
# The env's options that are flags of the run verbs (the rest are set in the run config).
ENV_FLAGS: tuple[str, ...] = (
    "max_turns",
    "max_calls_per_turn",
    "max_calls",
    "coordinate_frame",
    "draw_box_returns",
    "max_image_pixels",
    "system_prompt",
)


@typed_section
@dataclass
class RunConfig:
    """What `rollout`, `eval` and `episodes` read from a run config (`--config`, `--set`).

    The training sections are validated too, so one file serves every verb: a model trained
    on `env.scene_knobs: {count: [1, 3], image_size: 224}` is evaluated on that distribution.
    """

    model: ModelSection = field(
        default_factory=ModelSection, metadata={"help": "The model (model.path, model.dtype)."}
    )
    env: EnvSection = field(
        default_factory=EnvSection,
        metadata={"help": "Scene family, difficulty, scene knobs, env and reward options."},
    )
    tasks: TaskSection = field(
        default_factory=TaskSection, metadata={"help": "tasks.path: your own tasks."}
    )
    decoding: DecodingSection = field(
        default_factory=DecodingSection, metadata={"help": "Sampling of model policies."}
    )
    lora: LoraSection = field(default_factory=LoraSection, metadata={"help": "Training only."})
    mixture: MixtureSection = field(
        default_factory=MixtureSection, metadata={"help": "Training only."}
    )
    init_adapter: str | None = field(default=None, metadata={"help": "Training only."})
    resume_from_checkpoint: str | bool | None = field(
        default=None, metadata={"help": "Training only."}
    )
    run_dir: str | None = field(
        default=None, metadata={"help": "The training run's folder (see train --help-config)."}
    )
    trainer: dict[str, Any] = field(default_factory=dict, metadata={"help": "Training only."})
    budget_check: str = field(default="error", metadata={"help": "GRPO only."})
    over_turn_masking: bool = field(default=False, metadata={"help": "GRPO only."})


@typed_section
@dataclass
class SessionOptions:
    """Where a run goes and how it is run: the `run` flags."""

    out: str | None = field(default=None, metadata={"help": "run directory to write"})
    seed: int = field(
        default=0, metadata={"help": "run seed: tasks, envs and sampling derive from it"}
    )
    group_size: int = field(default=1, metadata={"help": "samples per task (G)"})
    resume: bool = field(
        default=False, metadata={"help": "finish the missing episodes of an existing run"}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "delete an existing run in --out first"}
    )
    shard: str | None = field(
        default=None,
        metadata={
            "metavar": "I/N",
            "help": "run only shard I of N (tasks I, I+N, I+2N, ...) into the shared --out; "
            "start the N shards from any processes or machines that share the folder "
            "(docs/rollouts.md)",
        },
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "most conversations per policy call (default: all live)"}
    )
    max_live: int | None = field(
        default=None,
        metadata={
            "help": "most episodes in flight at once (memory bound; default 64, 16 for --policy "
            "hf so that on a CPU the first episodes finish, and are stored, within minutes)"
        },
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "processes running episodes (default 1). A scripted policy runs whole "
            "episodes in each; a model policy (hf, vllm, openai) stays in this process and "
            "batches over every live episode while the workers run the envs, recording and "
            "image storage"
        },
    )
    # Scripted policies with --workers run as a model policy runs (tests, benchmarks).
    policy_in_parent: bool = field(default=False, metadata={"hidden": True})
    no_progress: bool = field(default=False, metadata={"help": "no progress bar"})
    no_page: bool = field(default=False, metadata={"help": "do not write index.html"})
    # Seconds each policy call sleeps (tests use it to stop a run part-way).
    policy_delay_s: float = field(default=0.0, metadata={"flag": "--policy-delay", "hidden": True})
    zero_shot: bool = field(
        default=False,
        metadata={
            "flag": "--no-tools",
            "help": "zero-shot: no tools, one plain reply, the answer read out of the text "
            "(boxgym.env.zero_shot; scripted policies answer in words)",
        },
    )


@typed_section
@dataclass
class PolicyOptions:
    """Which policy plays the episodes and how it is built (`make_policy`): the `policy` flags.

    The run config fills `model` and `dtype` (model.path, model.dtype) for hf and vllm, and the
    sampling (`decoding`); a flag given wins.
    """

    policy: Literal["oracle", "noisy", "random", "hf", "vllm", "openai"] = "hf"
    calls_per_turn: int | None = field(
        default=None,
        metadata={
            "help": "scripted policies: calls per assistant turn (default: the env's "
            "max_calls_per_turn)"
        },
    )
    model: str | None = field(
        default=None, metadata={"help": "checkpoint path or name (default: the tiny offline model)"}
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter directory"})
    temperature: float | None = field(
        default=None, metadata={"help": "sampling temperature (0: greedy)"}
    )
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass"})
    top_k: int | None = field(default=None, metadata={"help": "top-k sampling"})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "most tokens per assistant turn"}
    )
    device: str | None = field(default=None, metadata={"help": "hf: auto, cpu, cuda, ..."})
    dtype: str | None = field(
        default=None, metadata={"help": f"hf: one of {', '.join(DTYPES)}", "choices": DTYPES}
    )
    base_url: list[str] | None = field(
        default=None,
        metadata={
            "help": "openai: the server's /v1 URL; repeat it for replicas (requests round-robin)"
        },
    )
    dialect: Literal["vllm", "generic"] | None = field(
        default=None,
        metadata={
            "help": "openai: 'vllm' (vllm serve: tool_choice none, special tokens kept; "
            "default) or 'generic' (standard fields only: hosted APIs, transformers serve)"
        },
    )
    api_key: str | None = field(default=None, metadata={"help": "openai: API key (default: none)"})
    max_concurrency: int | None = field(
        default=None, metadata={"help": "openai: requests in flight at once"}
    )
    timeout: float | None = field(
        default=None, metadata={"help": "openai: seconds per request, whole (default 120)"}
    )
    max_retries: int | None = field(
        default=None, metadata={"help": "openai: further attempts after a failure (default 3)"}
    )
    gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "vllm: GPU memory fraction"}
    )
    max_model_len: int | None = field(default=None, metadata={"help": "vllm: context length"})
    tensor_parallel_size: int | None = field(
        default=None, metadata={"help": "vllm: GPUs one engine spans"}
    )
    limit_mm_per_prompt: int | None = field(
        default=None,
        metadata={
            "help": "vllm: images per prompt at most (default: the most an episode can hold)"
        },
    )

    @property
    def scripted(self) -> bool:
        return self.policy in SCRIPTED_POLICIES

    def constructor_options(self) -> dict[str, Any]:
        """The options given (not None), as the policy's constructor takes them."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in values.items() if k != "policy" and v is not None}


@typed_section
@dataclass
class TaskSource:
    """Which tasks a run plays: procedural scenes (`episodes`, `rollout`) or your own tasks."""

    scene: str | None = field(
        default=None,
        metadata={
            "help": "scene family, a comma-separated list of them, or 'all' (tasks alternate "
            "families; default: the config's env.family, else screens)"
        },
    )
    difficulty: str | None = field(
        default=None,
        metadata={
            "help": "scene difficulty (default: the config's env.difficulty, else easy)",
            "choices": DIFFICULTY_NAMES,
        },
    )
    n: int | None = field(
        default=None,
        metadata={
            "help": "number of tasks (default 16 for episodes, 64 for rollout; with --tasks: "
            "all of them)"
        },
    )
    # Your tasks: the flags are `boxgym.data.loaders.user_tasks.add_tasks_arguments`.
    tasks: str | None = None
    columns: str | None = None
    tasks_split: str | None = None
    # The run config's env.scene_knobs (no flag: `--set env.scene_knobs.KNOB=VALUE`).
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSettings:
    """Everything one run verb runs with, built once by `build_run_settings`."""

    session: SessionOptions
    policy: PolicyOptions
    env: EnvConfig
    source: TaskSource


def read_run_config(args: argparse.Namespace) -> RunConfig | None:
    """The run config `--config` and `--set` name (validated), or None when neither was used."""
    if not args.config and not args.config_overrides:
        return None
    return load_config(RunConfig, args.config, args.config_overrides)


def build_run_settings(args: argparse.Namespace) -> RunSettings:
    """The run's settings: each flag given, the run config (`--config`, `--set`) for what no
    flag gave, and the fields' defaults for the rest.

    Raises:
        UserError: a bad config key or value (`ConfigError`).
        ValueError: an env flag `EnvConfig` refuses.
    """
    config = read_run_config(args)
    session = validate(SessionOptions, given(SessionOptions, args))
    from_flags = given(PolicyOptions, args)
    policy_name = from_flags.get("policy", PolicyOptions.policy)
    source_flags = given(TaskSource, args)
    policy_base: dict[str, Any] = {}
    source_base: dict[str, Any] = {}
    if config is not None:
        if policy_name in ("hf", "vllm"):
            policy_base["model"] = config.model.path
        if policy_name == "hf":
            policy_base["dtype"] = config.model.dtype
        policy_base.update(dataclasses.asdict(config.decoding))
        source_base = {
            "scene": config.env.family,
            "difficulty": config.env.difficulty,
            "tasks": config.tasks.path,
            "knobs": dict(config.env.scene_knobs),
        }
        if config.tasks.columns:
            source_base["columns"] = ",".join(f"{k}={v}" for k, v in config.tasks.columns.items())
    policy = validate(PolicyOptions, {**_set(policy_base), **from_flags})
    source = validate(TaskSource, {**_set(source_base), **source_flags})
    env = config.env.env_config() if config is not None else EnvConfig()
    env = env.replace(**given(EnvConfig, args))
    return RunSettings(session=session, policy=policy, env=env, source=source)


def _set(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
