"""The typed sections of a run config: `model`, `lora`, `env`, `mixture`, `tasks`, `decoding`.

Each is a dataclass with help text on every field, validated by pydantic when a config is
loaded (`boxgym.config.load_config`); `__post_init__` refuses bad values with a message that
names the key and the fix. Every verb reads the same sections: the run verbs' config is
`boxgym.rollouts.options.RunConfig`, training's `boxgym.train.run_configs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from boxgym.choices import DIFFICULTY_NAMES, DTYPES, MIXTURE_SOURCES, SCENE_FAMILY_NAMES
from boxgym.config import typed_section
from boxgym.errors import describe_value

# LoRA on the language model's seven projections only: the vision tower stays frozen, and vLLM
# (which merges LoRA into its weights) never sees a vision-tower adapter it would ignore.
LANGUAGE_MODEL_TARGETS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


@typed_section
@dataclass
class ModelSection:
    """Which model and processor to load, and how images are sized for it."""

    path: str | None = field(
        default=None,
        metadata={
            "help": "Model directory or hub id (e.g. Qwen/Qwen2-VL-2B-Instruct). Empty: the tiny "
            "offline Qwen2-VL built by `boxgym tiny-model` (built on first use)."
        },
    )
    dtype: str = field(
        default="float32",
        metadata={"help": f"Weights dtype, one of {DTYPES}. bfloat16 on a GPU, float32 on a CPU."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "transformers attention kernel (sdpa, flash_attention_2); empty: default."
        },
    )
    image_min_pixels: int | None = field(
        default=None,
        metadata={"help": "Processor min_pixels; empty keeps the processor's value."},
    )
    image_max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Processor max_pixels (caps image tokens: pixels / 784). Empty keeps the "
            "processor's value. Should match the env's image pixel cap."
        },
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"model.dtype must be one of {DTYPES}, got {describe_value(self.dtype)}"
            )
        for name in ("image_min_pixels", "image_max_pixels"):
            value = getattr(self, name)
            if value is not None and value < 784:
                raise ValueError(f"model.{name} must be >= 784 (one 28x28 patch), got {value}")
        if (
            self.image_min_pixels is not None
            and self.image_max_pixels is not None
            and self.image_min_pixels > self.image_max_pixels
        ):
            raise ValueError("model.image_min_pixels must not exceed model.image_max_pixels")


@typed_section
@dataclass
class LoraSection:
    """The LoRA adapter that is trained (the base model stays frozen)."""

    rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / rank)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: str | list[str] = field(
        default=LANGUAGE_MODEL_TARGETS,
        metadata={
            "help": "A regex matched against full module names, or a list of module-name "
            "suffixes. Default: the language model's q/k/v/o/gate/up/down projections."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter (PEFT modules_to_save), "
            "e.g. [model.language_model.norm]. The tiny model needs its final norm here: with "
            "a frozen random 64-wide head, LoRA alone cannot raise any token's logit far."
        },
    )
    train_saved_modules: bool = field(
        default=True,
        metadata={
            "help": "Train the modules_to_save copies too. false freezes them (only the LoRA "
            "matrices train), e.g. GRPO continuing an SFT adapter whose untied head copy should "
            "stay as SFT left it: Adam moves every row of a 151,657-word head by about the "
            "learning rate at each step, however small that row's gradient."
        },
    )
    qlora: bool = field(
        default=False,
        metadata={
            "help": "Load the base model in 4-bit NF4 (bitsandbytes) and train LoRA on top. "
            "GPU only; needs `pip install boxgym[qlora]`."
        },
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha < 1:
            raise ValueError(f"lora.alpha must be >= 1, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty: give a regex or a list of module names")

    def to_peft(self) -> Any:
        """The `peft.LoraConfig` for this section."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=list(self.modules_to_save) if self.modules_to_save else None,
            task_type="CAUSAL_LM",
        )


@typed_section
@dataclass
class EnvSection:
    """The environment episodes run in (scripted SFT episodes and GRPO rollouts)."""

    family: str = field(
        default="shapes",
        metadata={"help": f"Procedural scene family, one of {SCENE_FAMILY_NAMES}."},
    )
    difficulty: str = field(
        default="easy", metadata={"help": f"Scene difficulty, one of {DIFFICULTY_NAMES}."}
    )
    scene_knobs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Extra knobs for make_scene_task (e.g. {min_objects: 1, max_objects: 3})."
        },
    )
    env_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments for boxgym.env.EnvConfig (turn limits, frame, ...)."},
    )
    reward_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments for boxgym.env.RewardConfig (component weights)."},
    )

    def __post_init__(self) -> None:
        if self.family not in SCENE_FAMILY_NAMES:
            raise ValueError(
                f"env.family must be one of {SCENE_FAMILY_NAMES}, got {describe_value(self.family)}"
            )
        if self.difficulty not in DIFFICULTY_NAMES:
            raise ValueError(
                f"env.difficulty must be one of {DIFFICULTY_NAMES}, got {describe_value(self.difficulty)}"
            )
        self.env_config()  # every env and reward option checked now, at load time

    def env_config(self) -> Any:
        """The `EnvConfig` (with its `RewardConfig`) that `env_kwargs` and `reward_kwargs` set.

        Raises:
            ValueError: an unknown key (with the closest known one) or a bad value, named as
                the config's key (`env.env_kwargs.max_turns`).
        """
        from boxgym.config import unknown_keys
        from boxgym.env.config import EnvConfig
        from boxgym.env.rewards import RewardConfig

        for name, options in (("env_kwargs", EnvConfig), ("reward_kwargs", RewardConfig)):
            problem = unknown_keys(options, getattr(self, name))
            if problem:
                raise ValueError(f"env.{name}: {problem}")
        try:
            reward = RewardConfig(**self.reward_kwargs)
        except ValueError as error:
            raise ValueError(f"env.reward_kwargs: {error}") from None
        try:
            return EnvConfig(**self.env_kwargs, reward=reward)
        except ValueError as error:
            raise ValueError(f"env.env_kwargs: {error}") from None


@typed_section
@dataclass
class MixtureSection:
    """The SFT mixture: weights per source and where dataset copies live."""

    num_examples: int = field(default=64, metadata={"help": "Rows in the mixed SFT dataset."})
    seed: int = field(default=0, metadata={"help": "Seed for scene seeds, noise and the mix."})
    first_scene_seed: int = field(
        default=0,
        metadata={
            "help": "Scripted episodes use scene seeds first_scene_seed, +1, ... (held-out "
            "evaluation should use seeds outside this range)."
        },
    )
    weights: dict[str, float] = field(
        default_factory=lambda: {"oracle": 1.0},
        metadata={
            "help": "Relative weight per source: oracle, noisy (scripted episodes that fix their "
            "own mistakes), nlvr2, aguvis-stage-1, aguvis-stage-2, pixmo-count, countbench. A "
            "dataset source needs a local path in `paths`."
        },
    )
    paths: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Local dataset copies by source name (hub ids also work with hub access)."
        },
    )
    splits: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Split per dataset source; default `train` (`test` for countbench, which "
            "has no other)."
        },
    )
    noisy_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Keyword arguments for the `noisy` scripted policy (error rates)."},
    )
    oracle_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Keyword arguments for the `oracle` scripted policy (e.g. call_format: "
            "grounding, to draw boxes in Qwen2-VL's own grounding format)."
        },
    )

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError(f"mixture.num_examples must be >= 1, got {self.num_examples}")
        from boxgym.data.splits import check_training_seeds

        # build_mixture tries at most 20 * count + 100 seeds per scripted source
        last = self.first_scene_seed + 20 * self.num_examples + 100
        check_training_seeds("mixture", self.first_scene_seed, last)
        unknown = set(self.weights) - set(MIXTURE_SOURCES)
        if unknown:
            raise ValueError(
                f"mixture.weights has unknown sources {sorted(unknown)}; known: {MIXTURE_SOURCES}"
            )
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("mixture.weights must be >= 0 with a positive sum")
        for source, weight in self.weights.items():
            if weight > 0 and source not in ("oracle", "noisy") and source not in self.paths:
                raise ValueError(
                    f"mixture.weights.{source} > 0 needs mixture.paths.{source} (a local copy or hub id)"
                )


@typed_section
@dataclass
class TaskSection:
    """The GRPO prompt dataset: one row per task, rebuilt into a Task by the env adapter's reset."""

    num_tasks: int = field(default=32, metadata={"help": "Rows in the GRPO dataset."})
    first_seed: int = field(
        default=100_000, metadata={"help": "Scene seeds first_seed, +1, ... (unseen by SFT)."}
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Train on a loader's tasks instead of scenes: nlvr2, aguvis-stage-1, "
            "aguvis-stage-2, pixmo-count or countbench (needs dataset_path)."
        },
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "Local copy (or hub id) of `dataset`."}
    )
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split of `dataset`; empty: the loader's default."}
    )
    path: str | None = field(
        default=None,
        metadata={
            "help": "Your tasks (what --tasks takes): an image folder with metadata.jsonl/.csv, "
            "a .jsonl/.csv/.parquet task file, or a hub id. Used by rollout/eval/episodes and, "
            "for GRPO, instead of scenes."
        },
    )
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Your column names for `path` (what --columns takes): {count: n_screens}."
        },
    )

    def __post_init__(self) -> None:
        if self.num_tasks < 1:
            raise ValueError(f"tasks.num_tasks must be >= 1, got {self.num_tasks}")
        if not self.dataset:
            from boxgym.data.splits import check_training_seeds

            check_training_seeds("tasks", self.first_seed, self.first_seed + self.num_tasks - 1)
        if self.dataset and not self.dataset_path:
            raise ValueError("tasks.dataset needs tasks.dataset_path (a local copy or a hub id)")
        if self.dataset and self.path:
            raise ValueError("give tasks.dataset or tasks.path (your own tasks), not both")


@typed_section
@dataclass
class DecodingSection:
    """How the run verbs (rollout, eval) sample from a model policy; flags on the command line win."""

    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature; empty: the policy's default."}
    )
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling; empty: off."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Most tokens per assistant turn."}
    )

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"decoding.temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"decoding.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"decoding.max_new_tokens must be >= 1, got {self.max_new_tokens}")
