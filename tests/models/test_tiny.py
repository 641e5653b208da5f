from __future__ import annotations

import argparse
import json

import pytest

from boxgym.errors import UserError
from boxgym.models import cache, commands
from boxgym.models import tiny as tiny_model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.mark.slow
def test_special_tokens_have_qwen2_vl_ids(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tiny_model.QWEN2_VL_SPECIAL_TOKENS]
    assert ids == list(range(151643, 151657))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 151643
    assert len(tokenizer) == 151657


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [9707, 1879]),
        (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
            [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198],
        ),
        ("2024", [17, 15, 17, 19]),  # Qwen2 splits digits one by one
        ("<|im_start|>user\n", [151644, 872, 198]),
        ("<|im_start|>assistant\n", [151644, 77091, 198]),
    ],
)
def test_known_qwen2_tokenizations(tokenizer, text, ids):
    assert tokenizer(text).input_ids == ids
    assert tokenizer.decode(ids) == text


def test_checkpoint_has_qwen2_vl_layout_and_tool_template(tiny_model_path):
    from boxgym.policies.prompting import CHAT_TEMPLATE

    config = json.loads((tiny_model_path / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert config["image_token_id"] == 151655
    assert (tiny_model_path / "chat_template.jinja").read_text() == CHAT_TEMPLATE


@pytest.mark.slow
def test_processor_is_real_qwen2_vl_and_trl_recognises_tools(tiny_model_path):
    from transformers import (
        AutoProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from trl.chat_template_utils import add_response_schema, supports_tool_calling

    processor = AutoProcessor.from_pretrained(tiny_model_path)
    assert isinstance(processor, Qwen2VLProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen2VLVideoProcessor)
    assert supports_tool_calling(processor)
    add_response_schema(processor)  # raises on a template TRL does not know


def test_model_loads_and_generates(tiny_model_path):
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2VLForConditionalGeneration

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    assert 5e6 < model.num_parameters() < 2e7
    out = model.generate(
        input_ids=torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]]),
        max_new_tokens=3,
        do_sample=False,
    )
    assert out.shape == (1, 12)


def test_text_heads_are_a_size_vllms_cpu_attention_serves(tiny_model_path):
    from boxgym.models.recipe import SeeingRecipe, seeing_config

    config = json.loads((tiny_model_path / "config.json").read_text())["text_config"]
    assert config["hidden_size"] // config["num_attention_heads"] in tiny_model.VLLM_CPU_HEAD_SIZES
    seeing = seeing_config(SeeingRecipe()).text_config
    assert seeing.hidden_size // seeing.num_attention_heads in tiny_model.VLLM_CPU_HEAD_SIZES


def test_build_reuses_a_complete_checkpoint(tiny_model_path):
    before = (tiny_model_path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.build_tiny_model(tiny_model_path) == tiny_model_path
    assert (tiny_model_path / "model.safetensors").stat().st_mtime_ns == before


def test_default_model_path_uses_boxgym_cache(monkeypatch, tmp_path, tiny_model_path):
    assert tiny_model_path.name == f"tiny-qwen2-vl-v{tiny_model.BUILD_VERSION}"
    monkeypatch.setenv("BOXGYM_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path
    assert cache.resolve_model("some/model") == "some/model"


def test_verb_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    parser = argparse.ArgumentParser()
    commands.add_arguments(parser, "tiny-model")
    with pytest.raises(UserError, match="holds no tiny-model checkpoint"):  # one line, exit 2
        commands.run(parser.parse_args(["--out", str(tmp_path)]))
    assert (tmp_path / "notes.txt").read_text() == "mine"
