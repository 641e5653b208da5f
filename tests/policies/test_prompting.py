from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from boxgym.policies import prompting

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "draw_box",
            "description": "Draw a labelled box.",
            "parameters": {
                "type": "object",
                "properties": {
                    "x1": {"type": "integer", "description": "Left edge."},
                    "label": {"type": "string", "description": "What the box holds."},
                },
                "required": ["x1", "label"],
            },
        },
    }
]
RAW_CALL = '<tool_call>{"name": "draw_box", "arguments": {"x1": 3, "label": "tv"}}</tool_call>'


def conversation(turns: int = 1) -> list[dict]:
    """system + user(image, question), then `turns - 1` rounds of assistant call + tool image."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Count the screens."}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (112, 84), "red")},
                {"type": "text", "text": "How many screens?"},
            ],
        },
    ]
    for turn in range(turns - 1):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": RAW_CALL}]})
        messages.append(
            {
                "role": "tool",
                "name": "draw_box",
                "content": [
                    {"type": "image", "image": Image.new("RGB", (84, 56 + 28 * turn), "blue")},
                    {"type": "text", "text": f"Box {turn + 1} drawn."},
                ],
            }
        )
    return messages


@pytest.fixture(scope="module")
def processor(tiny_model_path):
    return prompting.load_processor(tiny_model_path)


def test_vendored_template_is_trls_qwen3_vl_template():
    from trl.chat_template_utils import qwen3_vl_chat_template

    assert qwen3_vl_chat_template == prompting.CHAT_TEMPLATE


def test_render_puts_tools_in_system_turn_and_tool_results_in_a_user_turn(processor):
    text = prompting.render_chat(processor, conversation(2), TOOLS)
    assert text.startswith("<|im_start|>system\nCount the screens.\n\n# Tools\n")
    assert '"name": "draw_box"' in text
    assert f"<|im_start|>assistant\n{RAW_CALL}<|im_end|>\n" in text
    assert (
        "<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>"
        "Box 1 drawn.\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ) in text
    assert text.count("<|image_pad|>") == 2
    assert text.endswith("<|im_start|>assistant\n")
    assert not prompting.render_chat(processor, conversation(2), TOOLS, False).endswith(
        "assistant\n"
    )


def test_no_tools_renders_no_tool_preamble(processor):
    assert "# Tools" not in prompting.render_chat(processor, conversation(), [])


def test_image_tokens_match_image_features_with_tool_images(processor, tiny_model_path):
    """TRL #5663/#6274: tool-returned images must give as many image tokens as features."""
    import torch
    from transformers import AutoModelForImageTextToText

    batch = prompting.prepare_inputs(processor, [conversation(3), conversation(1)], TOOLS)
    grid = batch["image_grid_thw"]
    assert grid.shape[0] == 4  # 3 images in the first conversation, 1 in the second
    image_tokens = int((batch["input_ids"] == 151655).sum())
    assert image_tokens == int(grid.prod(-1).sum()) // 4
    assert batch["attention_mask"][1, 0] == 0  # left padded
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_vision_tokens_in_text_are_neutralised(processor):
    """TRL #3847: a sampled image token in the raw text must not create a phantom image slot."""
    messages = conversation(2)
    messages[2]["content"][0]["text"] = "look <|image_pad|><|vision_start|>" + RAW_CALL
    batch = prompting.prepare_inputs(processor, [messages], TOOLS)
    assert (
        int((batch["input_ids"] == 151655).sum())
        == int(batch["image_grid_thw"].prod(-1).sum()) // 4
    )
    assert "look " + RAW_CALL in prompting.render_chat(processor, messages, TOOLS)
    assert messages[2]["content"][0]["text"].startswith("look <|image_pad|>")  # input untouched


def test_clean_completion():
    assert prompting.clean_completion(RAW_CALL + "<|im_end|><|endoftext|>") == RAW_CALL
    assert prompting.clean_completion("a<|image_pad|>b<|im_end|>junk") == "ab"
    kept = "<|object_ref_start|>tv<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    assert prompting.clean_completion(kept) == kept


def test_suppressed_and_stop_ids(processor):
    assert prompting.vision_token_ids(processor) == [151652, 151653, 151654, 151655, 151656]
    assert prompting.stop_token_ids(processor) == [151645, 151643]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "non-empty"),
        ([{"role": "robot", "content": []}], "role must be one of"),
        ([{"role": "user", "content": [{"type": "image", "image": "x.png"}]}], "PIL.Image"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unknown content part"),
        ([{"role": "user", "content": 3}], "content must be"),
    ],
)
def test_bad_messages_give_clear_errors(processor, messages, message):
    with pytest.raises(ValueError, match=message):
        prompting.render_chat(processor, messages, TOOLS)


def test_string_content_is_accepted(processor):
    text = prompting.render_chat(processor, [{"role": "user", "content": "hi"}], None)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokens_equal_trl_grpo_multi_turn_concatenation(processor):
    """Our tokens for a 3-turn state == TRL 1.16 GRPO's: prompt + completion + tool suffix.

    GRPOTrainer renders the first prompt with `apply_chat_template(tools=...)`, then extends it
    turn by turn with the sampled completion ids (ending in <|im_end|>) and the ids of the tool
    messages from `_get_tool_suffix_ids`. This calls those very methods on a stand-in `self`.
    """
    from trl import GRPOTrainer

    tokenizer = processor.tokenizer
    trainer = SimpleNamespace(
        processing_class=processor,
        _tokenizer=tokenizer,
        _is_vlm=True,
        chat_template=None,  # GRPO keeps a prefix-preserving template as is
        chat_template_kwargs={},
        environment_factories={None: object},
        _batch_environments=[None],
        _env_tools={None: TOOLS},
    )
    full = conversation(3)
    ids, _, _ = GRPOTrainer._tokenize_prompts(trainer, [full[:2]])
    trl_ids = list(ids[0])
    for index in range(2, len(full), 2):
        completion = [
            *tokenizer(full[index]["content"][0]["text"]).input_ids,
            tokenizer.eos_token_id,
        ]
        suffix = GRPOTrainer._get_tool_suffix_ids(trainer, [full[index + 1]])
        trl_ids += completion + list(suffix)
    ours = prompting.prepare_inputs(processor, [full], TOOLS)["input_ids"][0].tolist()
    assert ours == trl_ids


def test_real_env_episode_renders_like_trl_and_fits_the_model(processor, tiny_model_path):
    """A real env state (prompt, a draw_box turn with its image result, a crop turn)."""
    import torch
    from transformers import AutoModelForImageTextToText
    from trl import GRPOTrainer

    from boxgym.data.scenes import make_scene_task
    from boxgym.env import BoxGymEnv
    from boxgym.env.parsing import format_tool_call

    env = BoxGymEnv(family="screens", image_history="all")  # TRL keeps every image
    env.reset(seed=0, options={"task": make_scene_task("screens", seed=0)})
    prompt = list(env.messages)
    env.step(
        format_tool_call("draw_box", {"x1": 10, "y1": 10, "x2": 400, "y2": 300, "label": "tv"})
    )
    env.step(format_tool_call("crop", {"x1": 0, "y1": 0, "x2": 500, "y2": 500}))
    full = env.messages
    tools = env.tool_schemas
    trainer = SimpleNamespace(
        processing_class=processor,
        _tokenizer=processor.tokenizer,
        _is_vlm=True,
        chat_template=None,
        chat_template_kwargs={},
        environment_factories={None: object},
        _batch_environments=[None],
        _env_tools={None: tools},
    )
    ids, _, _ = GRPOTrainer._tokenize_prompts(trainer, [prompt])
    trl_ids = list(ids[0])
    index = len(prompt)
    while index < len(full):
        assert full[index]["role"] == "assistant"
        text = full[index]["content"][0]["text"]
        trl_ids += [*processor.tokenizer(text).input_ids, processor.tokenizer.eos_token_id]
        results = []
        index += 1
        while index < len(full) and full[index]["role"] == "tool":
            results.append(full[index])
            index += 1
        trl_ids += list(GRPOTrainer._get_tool_suffix_ids(trainer, results))
    batch = prompting.prepare_inputs(processor, [full], tools)
    assert batch["input_ids"][0].tolist() == trl_ids
    assert batch["image_grid_thw"].shape[0] == len(prompting.conversation_images(full)) >= 3
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    with torch.inference_mode():
        model(**batch, logits_to_keep=1)  # raises if image tokens and features disagree
