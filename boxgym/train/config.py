"""Training configs: YAML files parsed into dataclasses, with `--set key=value` overrides.

A run config has sections (`model`, `lora`, `env`, `mixture` or `tasks`) that are boxgym's own
dataclasses, and a `trainer` section that is passed through to TRL's `SFTConfig`/`GRPOConfig`
(so every TRL option works, validated by TRL's own dataclass). Overrides use dotted paths:
`--set lora.rank=16 --set trainer.max_steps=5`; values are parsed as YAML (`true`, `3`, `[a, b]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxgym.config import ConfigError, check_trainer, parse_yaml, typed_section, validate
from boxgym.config import describe as describe_schema
from boxgym.errors import describe_value

# LoRA on the language model's seven projections only: the vision tower stays frozen, and vLLM
# (which merges LoRA into its weights) never sees a vision-tower adapter it would ignore.
LANGUAGE_MODEL_TARGETS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


DTYPES = ("auto", "float32", "bfloat16", "float16")
SCENE_FAMILIES = ("screens", "shapes", "clutter")
LEVELS = ("easy", "medium", "hard")


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
        default="shapes", metadata={"help": f"Procedural scene family, one of {SCENE_FAMILIES}."}
    )
    difficulty: str = field(
        default="easy", metadata={"help": f"Scene difficulty, one of {LEVELS}."}
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
        if self.family not in SCENE_FAMILIES:
            raise ValueError(
                f"env.family must be one of {SCENE_FAMILIES}, got {describe_value(self.family)}"
            )
        if self.difficulty not in LEVELS:
            raise ValueError(
                f"env.difficulty must be one of {LEVELS}, got {describe_value(self.difficulty)}"
            )
        import dataclasses
        import difflib

        from boxgym.env.config import EnvConfig
        from boxgym.env.rewards import RewardConfig

        for name, options in (("env_kwargs", EnvConfig), ("reward_kwargs", RewardConfig)):
            known = [f.name for f in dataclasses.fields(options)]
            for key in getattr(self, name):
                if key not in known:
                    close = difflib.get_close_matches(key, known, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {known}"
                    raise ValueError(
                        f"env.{name}.{key} is not an option of {options.__name__}{hint}"
                    )


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
        from boxgym.train.mixture import SOURCES

        if self.num_examples < 1:
            raise ValueError(f"mixture.num_examples must be >= 1, got {self.num_examples}")
        from boxgym.data.splits import check_training_seeds

        # build_mixture tries at most 20 * count + 100 seeds per scripted source
        last = self.first_scene_seed + 20 * self.num_examples + 100
        check_training_seeds("mixture", self.first_scene_seed, last)
        unknown = set(self.weights) - set(SOURCES)
        if unknown:
            raise ValueError(
                f"mixture.weights has unknown sources {sorted(unknown)}; known: {SOURCES}"
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


def _default_trainer() -> dict[str, Any]:
    return {"output_dir": "runs/train", "report_to": ["tensorboard"], "logging_steps": 1}


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


# Help of the fields that SFTRunConfig and GRPORunConfig share.
_RESUME_HELP = {"help": "A checkpoint directory, or true for the latest one in output_dir."}
_RUN_DIR_HELP = {
    "help": "One run's folder: SFT writes RUN_DIR/sft, GRPO writes RUN_DIR/grpo and starts "
    "from RUN_DIR/sft/adapter (unless init_adapter says otherwise), evaluation reads "
    "RUN_DIR/grpo/adapter. Set it with --run-dir; trainer.output_dir, when given, wins."
}
_DECODING_HELP = {"help": "Sampling of the run verbs (rollout, eval); not used by training."}


@typed_section
@dataclass
class SFTRunConfig:
    """`boxgym train sft`: SFTTrainer + LoRA on the mixture."""

    model: ModelSection = field(
        default_factory=ModelSection, metadata={"help": "The base model and its processor."}
    )
    lora: LoraSection = field(
        default_factory=LoraSection, metadata={"help": "The LoRA adapter trained on it."}
    )
    env: EnvSection = field(
        default_factory=EnvSection, metadata={"help": "The environment episodes run in."}
    )
    mixture: MixtureSection = field(
        default_factory=MixtureSection, metadata={"help": "Sources and weights of the SFT rows."}
    )
    init_adapter: str | None = field(
        default=None, metadata={"help": "Continue training this LoRA adapter directory."}
    )
    resume_from_checkpoint: str | bool | None = field(default=None, metadata=_RESUME_HELP)
    run_dir: str | None = field(default=None, metadata=_RUN_DIR_HELP)
    decoding: DecodingSection = field(default_factory=DecodingSection, metadata=_DECODING_HELP)
    trainer: dict[str, Any] = field(
        default_factory=_default_trainer,
        metadata={"help": "Passed to trl.SFTConfig (output_dir, max_steps, learning_rate, ...)."},
    )

    def __post_init__(self) -> None:
        _check_trainer(self.trainer)


@typed_section
@dataclass
class GRPORunConfig:
    """`boxgym train grpo`: GRPOTrainer + LoRA with the env behind environment_factory."""

    model: ModelSection = field(
        default_factory=ModelSection, metadata={"help": "The base model and its processor."}
    )
    lora: LoraSection = field(
        default_factory=LoraSection, metadata={"help": "The LoRA adapter trained on it."}
    )
    env: EnvSection = field(
        default_factory=EnvSection, metadata={"help": "The environment episodes run in."}
    )
    tasks: TaskSection = field(
        default_factory=TaskSection, metadata={"help": "The tasks GRPO trains on."}
    )
    init_adapter: str | None = field(
        default=None,
        metadata={"help": "Start from this LoRA adapter (e.g. the SFT run's output_dir/adapter)."},
    )
    resume_from_checkpoint: str | bool | None = field(default=None, metadata=_RESUME_HELP)
    run_dir: str | None = field(default=None, metadata=_RUN_DIR_HELP)
    decoding: DecodingSection = field(default_factory=DecodingSection, metadata=_DECODING_HELP)
    budget_check: str = field(
        default="error",
        metadata={
            "help": "At start-up, measure the oracle's episodes on the first tasks and compare "
            "with trainer.max_completion_length (and vllm_max_model_length): error, warn or off."
        },
    )
    over_turn_masking: bool = field(
        default=False,
        metadata={
            "help": "Mask episodes that ran over the turn or call budget unanswered out of the "
            "loss (Mini-o3's over-turn masking; TRL's mask_truncated_completions only masks "
            "completions cut by max_completion_length)."
        },
    )
    trainer: dict[str, Any] = field(
        default_factory=_default_trainer,
        metadata={"help": "Passed to trl.GRPOConfig (num_generations, use_vllm, vllm_mode, ...)."},
    )

    def __post_init__(self) -> None:
        _check_trainer(self.trainer)
        if self.budget_check not in ("error", "warn", "off"):
            raise ValueError(
                f"budget_check must be error, warn or off, got {describe_value(self.budget_check)}"
            )
        # Under image_history last (the env's default) the trainer plays the turns itself and
        # trains one row per turn (boxgym.train.turn_grpo): rows then vary in number, so each
        # step generates and trains on its own rows at once, on the policy that generated them.
        if self.env.env_kwargs.get("image_history", "last") == "last":
            trainer = self.trainer
            problems = [
                f"{key}: {describe_value(trainer[key])} (needs {want!r})"
                for key, want in (
                    ("gradient_accumulation_steps", 1),
                    ("steps_per_generation", 1),
                    ("num_iterations", 1),
                    ("use_vllm", False),
                    ("beta", 0.0),
                )
                if key in trainer and trainer[key] != want
            ]
            if problems:
                raise ValueError(
                    "GRPO over the turns of an image_history: last env trains each step's rows "
                    "at once on the policy that generated them, without vLLM or a reference "
                    f"model; fix trainer.{', trainer.'.join(problems)} (or set "
                    "env.env_kwargs.image_history: all for TRL's own tool loop)"
                )
        # TRL 1.16 colocate mode passes quantization="bitsandbytes" to vllm.LLM when the model
        # holds bnb Linear4bit layers (trl/generation/vllm_generation.py), so QLoRA works there;
        # server mode pushes weights to a separately started server, never checked with 4-bit.
        mode = self.trainer.get("vllm_mode", "colocate")
        if self.trainer.get("use_vllm") and self.lora.qlora and mode != "colocate":
            raise ValueError(
                "lora.qlora with trainer.use_vllm needs trainer.vllm_mode=colocate (TRL passes "
                "the 4-bit quantization to its own vLLM engine only); set vllm_mode: colocate "
                "or lora.qlora: false"
            )


def _check_trainer(trainer: dict[str, Any]) -> None:
    if not isinstance(trainer, dict):
        raise ValueError(
            f"`trainer` must be a mapping of TRL options, got {type(trainer).__name__}"
        )
    if not trainer.get("output_dir"):
        raise ValueError(
            "trainer.output_dir is required (where checkpoints, logs and the adapter go)"
        )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a nested mapping in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"override {item[:80]!r} must look like key=value (e.g. trainer.max_steps=5)"
            )
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ValueError(f"override {item[:80]!r} has an empty key")
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {path.strip()!r}: {key!r} is not a section")
            node = child
        try:
            node[keys[-1]] = parse_yaml(raw) if raw.strip() else None
        except ConfigError as error:
            raise ConfigError(f"--set {path.strip()}: {error}") from None
    return data


def load_config(cls: type, path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read a YAML run config, apply overrides, and validate it as `cls` (pydantic).

    Raises:
        ConfigError: an unknown key (with the closest known one), a value of the wrong type,
            a bad value, or a missing file; the message names the key and the fix.
        yaml.YAMLError: a file that is not YAML (a tab, say); `boxgym.errors.explain` turns it
            into one line with the position.
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if file.is_dir():
            raise ConfigError(
                f"config {str(file)!r} is a folder; give a YAML file (configs/*.yaml)"
            )
        if not file.is_file():
            raise ConfigError(f"config file {str(file)!r} does not exist; check the path")
        try:
            loaded = parse_yaml(file.read_text(encoding="utf-8")) or {}
        except ConfigError as error:
            raise ConfigError(f"config file {str(file)!r}: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(file)!r} must hold a mapping at the top level")
        data = loaded
    apply_overrides(data, list(overrides or []))
    if cls is RunConfig:
        return validate(cls, data)
    run_dir = data.get("run_dir")
    if run_dir and not (data.get("trainer") or {}).get("output_dir"):
        data.setdefault("trainer", {})
        data["trainer"] = {
            **(data["trainer"] or {}),
            "output_dir": str(Path(run_dir) / _stage(cls)),
        }
    if run_dir and cls is GRPORunConfig and data.get("init_adapter") in (None, "auto"):
        data["init_adapter"] = str(Path(run_dir) / "sft" / "adapter")
    elif data.get("init_adapter") == "auto":
        raise ConfigError("init_adapter: auto needs run_dir (--run-dir): the SFT run to start from")
    if "trainer" in data:
        if not isinstance(data["trainer"], dict) and data["trainer"] is not None:
            raise ConfigError(
                "`trainer` must be a mapping of TRL options (trainer: {max_steps: 5})"
            )
        data["trainer"] = {**_default_trainer(), **(data["trainer"] or {})}
    return validate(cls, data)


def _stage(cls: type) -> str:
    return "sft" if cls is SFTRunConfig else "grpo"


def trl_args(config_cls: type, trainer: dict[str, Any], **forced: Any) -> Any:
    """Build a TRL config dataclass from the `trainer` section, naming bad keys helpfully."""
    check_trainer(config_cls, trainer)
    return config_cls(**{**trainer, **forced})


def check_trainer_section(config: Any) -> None:
    """Validate `config.trainer` against TRL's SFTConfig / GRPOConfig (imports TRL)."""
    if isinstance(config, SFTRunConfig):
        from trl import SFTConfig as trl_config
    else:
        from trl import GRPOConfig as trl_config
    check_trainer(trl_config, config.trainer)


def device_defaults() -> dict[str, Any]:
    """Trainer defaults that depend on the machine: bf16 only where a GPU supports it."""
    import torch

    return {"bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}


def describe(cls: type) -> list[str]:
    """`--help-config`: every key with its type, default and help, generated from the schema."""
    return describe_schema(cls)
