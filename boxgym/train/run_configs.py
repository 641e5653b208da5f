"""The training configs: what the two `train` verbs read from a YAML file and `--set` overrides.

`SFTRunConfig` and `GRPORunConfig` (the run verbs' is `boxgym.rollouts.options.RunConfig`).
Each holds the sections of `boxgym.sections` and a `trainer` section passed
through to TRL's `SFTConfig` / `GRPOConfig` (checked against them by
`boxgym.train.config.check_trainer_section`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from boxgym.config import typed_section
from boxgym.errors import describe_value
from boxgym.sections import (
    DecodingSection,
    EnvSection,
    LoraSection,
    MixtureSection,
    ModelSection,
    TaskSection,
)


def default_trainer() -> dict[str, Any]:
    """The `trainer` section's defaults; a config's own `trainer` keys are laid over them."""
    return {"output_dir": "runs/train", "report_to": ["tensorboard"], "logging_steps": 1}


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
        default_factory=default_trainer,
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
        default_factory=default_trainer,
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
