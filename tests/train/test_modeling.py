"""`boxgym.train.modeling.attach_adapter`: a continued adapter can keep its saved modules frozen."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")


def _trainable(model) -> tuple[set[str], set[str]]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n for n in names if ".modules_to_save." in n}, {n for n in names if "lora_" in n}


def test_train_saved_modules_false_freezes_the_head_copy_only(tiny_model_path, tmp_path):
    from boxgym.sections import LoraSection, ModelSection
    from boxgym.train.modeling import attach_adapter, load_base_model

    lora = LoraSection(rank=4, alpha=8, dropout=0.0, modules_to_save=["lm_head"])
    model_section = ModelSection(path=str(tiny_model_path), dtype="float32")
    fresh = attach_adapter(load_base_model(model_section, lora), lora)
    saved, lora_names = _trainable(fresh)
    assert saved and lora_names  # the head copy trains by default
    fresh.save_pretrained(str(tmp_path / "adapter"))

    frozen = LoraSection(**{**lora.__dict__, "train_saved_modules": False})
    continued = attach_adapter(
        load_base_model(model_section, frozen), frozen, str(tmp_path / "adapter")
    )
    saved, lora_names = _trainable(continued)
    assert not saved and lora_names
    continued_default = attach_adapter(
        load_base_model(model_section, lora), lora, str(tmp_path / "adapter")
    )
    assert _trainable(continued_default)[0]
