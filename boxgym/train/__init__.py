"""Training: SFT warm start and GRPO with TRL on LoRA adapters (see docs/training.md)."""
