"""Smoke runs of the real `boxgym train` commands as subprocesses on the tiny model.

SFT runs two steps with checkpoints, is resumed from its checkpoint for a third, and its adapter
warm-starts GRPO. The untrained tiny model never writes a tool call by itself, so the GRPO run
forces one through a standard generation option: `generation_kwargs.sequence_bias` (passed by
TRL to transformers' `GenerationConfig`) makes `generate` write a fixed draw_box + answer reply.
Everything after generation is the real path: TRL parses the calls, runs them on the env
adapter's tools, feeds the returned images back into the next generation, and scores the
episode with the env's reward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SMALL = [
    "--set", "mixture.num_examples=4",
    "--set", "trainer.per_device_train_batch_size=2",
    "--set", "trainer.save_steps=1",
    "--set", "trainer.logging_steps=1",
]  # fmt: skip


def train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "train", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def log_history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "trainer_state.json").read_text())["log_history"]


def lora_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_path) -> Path:
    out = tmp_path_factory.mktemp("sft")
    model = ["--set", f"model.path={tiny_model_path}"]
    train(
        "sft",
        "--config",
        "configs/sft_tiny.yaml",
        "--output-dir",
        str(out),
        "--set",
        "trainer.max_steps=2",
        *SMALL,
        *model,
    )
    first = log_history(out)
    stamp = (out / "checkpoint-2" / "adapter_model.safetensors").stat().st_mtime_ns
    (out / "first_run.json").write_text(json.dumps({"history": first, "checkpoint_2_mtime": stamp}))
    train(
        "sft",
        "--config",
        "configs/sft_tiny.yaml",
        "--output-dir",
        str(out),
        "--set",
        "trainer.max_steps=3",
        "--resume",
        *SMALL,
        *model,
    )
    return out


def test_sft_logs_loss_trains_lora_and_resumes(sft_run):
    record = json.loads((sft_run / "first_run.json").read_text())
    first = [e for e in record["history"] if "loss" in e]
    assert [e["step"] for e in first] == [1, 2] and all(e["loss"] > 0 for e in first)
    losses = [e for e in log_history(sft_run) if "loss" in e]
    # the resumed run restored steps 1-2 from checkpoint-2 (left untouched) and trained step 3
    assert [e["step"] for e in losses] == [1, 2, 3] and losses[:2] == first
    assert (sft_run / "checkpoint-2" / "adapter_model.safetensors").stat().st_mtime_ns == record[
        "checkpoint_2_mtime"
    ]
    assert list((sft_run / "runs").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    checkpoint = sft_run / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file() and (
        checkpoint / "adapter_model.safetensors"
    ).is_file()
    # LoRA B matrices start at zero: after training they are not
    tensors = lora_tensors(sft_run / "adapter")
    lora_b = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())
    assert all("language_model" in k for k in tensors)
    before = lora_tensors(checkpoint)
    assert any(not (before[k] == tensors[k]).all() for k in tensors), "step 3 changed nothing"


def test_sft_adapter_loads_in_the_hf_policy(sft_run, tiny_model_path):
    from boxgym.policies.hf import HFPolicy

    policy = HFPolicy(
        model=str(tiny_model_path),
        adapter=str(sft_run / "adapter"),
        device="cpu",
        max_new_tokens=4,
        temperature=0,
    )
    assert policy.adapter == str(sft_run / "adapter")


def forced_reply_bias(tiny_model_path: Path) -> list:
    """`sequence_bias` entries that make generate write one draw_box + answer reply, then stop."""
    from transformers import AutoTokenizer

    from boxgym.env.parsing import format_tool_calls

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_path))
    text = format_tool_calls(
        [
            ("draw_box", {"x1": 100, "y1": 100, "x2": 600, "y2": 600, "label": "shape"}),
            ("answer", {"count": 1, "items": ["shape"]}),
        ]
    )
    ids = [
        *tokenizer.encode(text, add_special_tokens=False),
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    # the k-th token is biased by 50*(k+1) once the first k are written, so it outranks every
    # shorter (earlier) match; a sequence of one token is biased unconditionally
    return [[ids[: k + 1], 50.0 * (k + 1)] for k in range(len(ids))]


def test_grpo_runs_tools_feeds_images_back_and_saves_adapter(sft_run, tmp_path, tiny_model_path):
    config = yaml.safe_load((ROOT / "configs" / "grpo_tiny.yaml").read_text())
    config["model"]["path"] = str(tiny_model_path)
    config["init_adapter"] = str(sft_run / "adapter")
    config["env"]["env_kwargs"]["max_turns"] = 2  # one tool round, then a final generation
    config["tasks"]["num_tasks"] = 2
    config["trainer"].update(
        output_dir=str(tmp_path / "grpo"),
        max_steps=1,
        max_completion_length=400,
        save_steps=1,
        generation_kwargs={"sequence_bias": forced_reply_bias(tiny_model_path)},
    )
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    train("grpo", "--config", str(path))

    (logged,) = [e for e in log_history(tmp_path / "grpo") if "loss" in e]
    # TRL parsed and ran the calls on our adapter's tools ...
    assert logged["tools/call_frequency"] > 0
    assert logged["rollout/tool_calls"] >= 2 and logged["rollout/calls_draw_box"] >= 1
    assert logged["rollout/answered"] == 1.0 and logged["rollout/invalid_call_rate"] == 0.0
    # ... the draw_box image came back into the conversation and into the next generation ...
    assert logged["rollout/tool_images"] >= 1
    assert logged["rollout/generations_with_tool_images"] >= 1
    assert logged["rollout/images_in_tool_generations"] >= 2  # the scene + the marked-up image
    # ... and the env scored it: the count is wrong or right, the components are all logged
    for key in (
        "reward/total",
        "reward/count_exact",
        "reward/grounding_f1",
        "rollout/count_accuracy",
        "reward",
    ):
        assert key in logged
    assert logged["completions/mean_length"] > 0
    assert (tmp_path / "grpo" / "adapter" / "adapter_config.json").is_file()
    assert list((tmp_path / "grpo" / "runs").rglob("events.out.tfevents.*"))
    started = lora_tensors(sft_run / "adapter")
    ended = lora_tensors(tmp_path / "grpo" / "adapter")
    assert started.keys() == ended.keys()
