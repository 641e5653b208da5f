"""Loading the base model, its processor and the LoRA adapter for training, and saving the result.

Both trainers build the model the same way: the base checkpoint (the tiny model when none is
named), frozen; a LoRA adapter on the language model's projections, fresh or continued from
`init_adapter`; QLoRA (4-bit NF4 base) as a GPU option. The final adapter is written to
`output_dir/adapter` with the processor beside it, which is what `HFPolicy(adapter=DIR)` and
`boxgym rollout --policy hf --adapter DIR` load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxgym.sections import LoraSection, ModelSection

ADAPTER_DIRNAME = "adapter"


def load_training_processor(section: ModelSection) -> Any:
    """A fresh processor (training mutates it) with boxgym's chat template and pixel caps."""
    from transformers import AutoProcessor

    from boxgym.models.cache import resolve_model
    from boxgym.policies.prompting import CHAT_TEMPLATE

    processor = AutoProcessor.from_pretrained(resolve_model(section.path))
    processor.chat_template = CHAT_TEMPLATE
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and (section.image_min_pixels or section.image_max_pixels):
        size = dict(image_processor.size)
        if section.image_min_pixels:
            size["shortest_edge"] = section.image_min_pixels
        if section.image_max_pixels:
            size["longest_edge"] = section.image_max_pixels
        image_processor.size = {
            "shortest_edge": size["shortest_edge"],
            "longest_edge": size["longest_edge"],
        }
    return processor


def _torch_dtype(name: str) -> Any:
    import torch

    return {
        "auto": "auto",
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }[name]


def load_base_model(section: ModelSection, lora: LoraSection) -> Any:
    """The frozen base model (4-bit when `lora.qlora`)."""
    from transformers import AutoModelForImageTextToText

    from boxgym.models.cache import resolve_model

    kwargs: dict[str, Any] = {"dtype": _torch_dtype(section.dtype)}
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    if lora.qlora:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                "lora.qlora needs a CUDA GPU (bitsandbytes 4-bit); set lora.qlora=false"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "lora.qlora needs bitsandbytes: pip install 'boxgym[qlora]'"
            ) from error
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForImageTextToText.from_pretrained(resolve_model(section.path), **kwargs)
    if lora.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


def attach_adapter(model: Any, lora: LoraSection, init_adapter: str | None = None) -> Any:
    """`model` wrapped in a trainable LoRA adapter: a fresh one, or `init_adapter` continued.

    Raises:
        ValueError: when `init_adapter` is not an adapter directory, or no module matches.
    """
    from peft import PeftModel, get_peft_model

    if init_adapter:
        path = Path(init_adapter)
        if not (path / "adapter_config.json").is_file():
            raise ValueError(
                f"init_adapter {init_adapter!r} has no adapter_config.json: point it at a saved "
                "adapter, e.g. <sft output_dir>/adapter"
            )
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
    else:
        try:
            peft_model = get_peft_model(model, lora.to_peft())
        except ValueError as error:
            raise ValueError(
                f"lora.target_modules {lora.target_modules!r} matched no module of the model: "
                f"{error}"
            ) from error
    if not lora.train_saved_modules:
        for name, param in peft_model.named_parameters():
            if ".modules_to_save." in name:
                param.requires_grad_(False)
    return peft_model


def lora_parameters(model: Any) -> dict[str, Any]:
    """The trainable LoRA tensors by name (detached CPU copies), to compare before and after."""
    return {
        name: param.detach().cpu().clone()
        for name, param in model.named_parameters()
        if "lora_" in name and param.requires_grad
    }


def save_adapter(model: Any, processor: Any, output_dir: str | Path) -> Path:
    """Write the LoRA adapter and the processor to `output_dir/adapter`; returns that path."""
    out = Path(output_dir) / ADAPTER_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
