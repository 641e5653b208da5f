"""`boxgym train sft`: supervised warm start of a LoRA adapter with TRL's `SFTTrainer`.

Reads top to bottom: build the mixture (scripted episodes run through the real env, and
dataset tasks), load the base model and attach LoRA, train with a collator that renders each
conversation through THE prompt renderer (tool schemas included, loss on assistant tokens only),
then save the adapter to `output_dir/adapter`. TensorBoard logs go to `output_dir/runs`;
checkpoints (`output_dir/checkpoint-N`) hold the adapter and the optimizer state, and
`resume_from_checkpoint` continues from one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from boxgym.train.config import device_defaults, trl_args
from boxgym.train.run_configs import SFTRunConfig

log = logging.getLogger(__name__)


def assistant_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> tuple[Any, dict[str, float]]:
    """Next-token cross-entropy on the labelled (assistant) positions only.

    The vocabulary projection runs only where a label follows (`logits_to_keep` as a boolean
    mask): Qwen2's 151,657-token head over every prompt, tool-result and image position is what
    dominates an SFT step otherwise (about 25x on the tiny model).

    Returns:
        The loss (summed over tokens and divided by `num_items_in_batch` or the token count) and
        metrics: `mean_token_accuracy`, `assistant_tokens`.
    """
    import torch

    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != -100
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    outputs = model(**model_inputs, use_cache=False, logits_to_keep=keep)
    logits = outputs.logits.float()
    logits = logits.reshape(-1, logits.shape[-1])
    wanted = targets[keep[:, :-1]]
    total = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else wanted.numel()
    loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == wanted).float().mean().item() if wanted.numel() else 0.0
    return loss, {"mean_token_accuracy": accuracy, "assistant_tokens": float(wanted.numel())}


def _trainer_class() -> type:
    from trl import SFTTrainer

    class AssistantSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss projects to the vocabulary only at assistant positions."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, metrics = assistant_loss(model, inputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            for key, value in metrics.items():
                self._metrics[mode][key].append(value)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return AssistantSFTTrainer


def sft_args(config: SFTRunConfig) -> Any:
    """The `trl.SFTConfig`: the `trainer` section plus what this collator needs."""
    from trl import SFTConfig

    defaults = {
        **device_defaults(),
        "gradient_checkpointing": False,
        "save_strategy": "steps",
        "report_to": ["tensorboard"],
        "max_length": None,  # rows hold images: the collator rejects an over-long row instead
    }
    return trl_args(
        SFTConfig,
        {**defaults, **config.trainer},
        # Rows are rendered by ConversationCollator; TRL must not drop or re-tokenize columns.
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        assistant_only_loss=False,  # the collator masks non-assistant tokens itself
    )


def run_sft(config: SFTRunConfig, rows: list[dict[str, Any]] | None = None) -> Path:
    """Train and save the adapter; returns `output_dir/adapter`.

    `rows` (conversations in the mixture's row format) replace the configured mixture, for
    studies that train on rows they build themselves.
    """
    from boxgym.train.collator import ConversationCollator
    from boxgym.train.mixture import build_mixture, mixture_counts, to_sft_dataset
    from boxgym.train.modeling import (
        attach_adapter,
        load_base_model,
        load_training_processor,
        save_adapter,
    )

    args = sft_args(config)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    if rows is None:
        rows = build_mixture(config.mixture, config.env)
    counts = mixture_counts(rows)
    log.info("SFT mixture: %d rows %s", len(rows), counts)
    (output_dir / "mixture.json").write_text(
        json.dumps({"rows": len(rows), "sources": counts}, indent=2)
    )

    processor = load_training_processor(config.model)
    model = attach_adapter(
        load_base_model(config.model, config.lora), config.lora, config.init_adapter
    )
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=to_sft_dataset(rows),
        processing_class=processor,
        data_collator=ConversationCollator(processor, max_length=args.max_length),
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    adapter_dir = save_adapter(trainer.model, processor, output_dir)
    trainer.save_state()
    return adapter_dir
