"""GRPO with vLLM generating, on vLLM's CPU build (run in .venv-vllm by `make test-vllm`).

Colocate mode runs for real: `boxgym train grpo` with `trainer.use_vllm` on the tiny model. The
untrained model never writes a tool call, so the run forces one with TRL's
`vllm_structured_outputs_regex` (vLLM's structured outputs: the reply must match the regex);
everything after generation is the real path. The weight sync into the colocated engine is
checked on its own: the engine answers with the weights it was sent. Server mode needs CUDA on
the trainer (NCCL); on a CPU it is refused with one line, and the half that can run here, TRL's
client generating through a real `vllm serve`, is tested against the session's server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from vllm_engine import ENGINE_ENVIRONMENT

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    **ENGINE_ENVIRONMENT,
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}
ENV.pop("BOXGYM_DEBUG", None)


def grpo_config(tmp_path: Path, tiny_model_path: Path, **trainer) -> Path:
    """configs/grpo_tiny.yaml on the tiny model, no SFT adapter, 2 tasks, the given trainer
    settings over it; written to tmp_path/grpo.yaml."""
    config = yaml.safe_load((ROOT / "configs" / "grpo_tiny.yaml").read_text())
    config["model"]["path"] = str(tiny_model_path)
    config["run_dir"] = None
    config["env"]["env_kwargs"]["max_turns"] = 2  # one tool round, then a final generation
    config["tasks"]["num_tasks"] = 2
    config["trainer"].update(output_dir=str(tmp_path / "grpo"), **trainer)
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def forced_reply() -> str:
    """One draw_box + answer reply, as the env's parser reads it."""
    from boxgym.env.parsing import format_tool_calls

    return format_tool_calls(
        [
            ("draw_box", {"x1": 100, "y1": 100, "x2": 600, "y2": 600, "label": "shape"}),
            ("answer", {"count": 1, "items": ["shape"]}),
        ]
    )


def train_grpo(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "train", "grpo", "--config", str(config)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_grpo_with_colocated_vllm_runs_tools_and_saves_the_adapter(tmp_path, tiny_model_path):
    config = grpo_config(
        tmp_path,
        tiny_model_path,
        max_steps=2,
        max_completion_length=400,
        save_steps=2,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=8192,
        vllm_structured_outputs_regex=re.escape(forced_reply()),
    )
    done = train_grpo(config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = json.loads((tmp_path / "grpo" / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e]
    assert len(steps) == 2  # the second step generated after a weight sync
    for logged in steps:
        # vLLM wrote the reply, TRL parsed and ran the calls on the env's tools ...
        assert logged["rollout/calls_draw_box"] >= 1 and logged["rollout/answered"] == 1.0
        assert logged["rollout/invalid_call_rate"] == 0.0
        # ... the marked-up image went back into vLLM's next generation ...
        assert logged["rollout/generations_with_tool_images"] >= 1
        assert logged["rollout/images_in_tool_generations"] >= 2
        # ... and the env scored it
        assert "reward/count_exact" in logged and "reward/total" in logged
    assert (tmp_path / "grpo" / "adapter" / "adapter_config.json").is_file()


# Builds a colocated engine exactly as TRL 1.16 does (in-process, external_launcher), pushes
# weights through `reload_weights_on_cpu`, and prints what greedy decoding gives before, with
# the sent weights, and with the originals sent back; beside it what transformers gives with the
# sent weights. The sent weights zero every attention and MLP output projection of the language
# model, which makes its answer easy to tell from the original's.
SYNC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForImageTextToText
    from trl.trainer.utils import ensure_master_addr_port
    from vllm import LLM, SamplingParams

    from boxgym.train.grpo import reload_weights_on_cpu

    def main(path):
        import os
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        ensure_master_addr_port()
        llm = LLM(model=path, max_model_len=2048, distributed_executor_backend="external_launcher",
                  seed=0, max_num_batched_tokens=4096, logprobs_mode="processed_logprobs")
        prompt = [{"prompt_token_ids": [151644, 872, 198, 9707, 1879, 151645, 198]}]
        greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)

        def answer():
            return list(llm.generate(prompt, greedy, use_tqdm=False)[0].outputs[0].token_ids)

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        original = {n: p.data.clone() for n, p in model.named_parameters()}
        sent = {n: (torch.zeros_like(t) if ("o_proj" in n or "down_proj" in n)
                    and "language_model" in n else t) for n, t in original.items()}
        weights = {"now": original}
        generation = SimpleNamespace(llm=llm, _iter_named_params=lambda: iter(weights["now"].items()))
        reload_weights_on_cpu(generation)
        before = answer()
        weights["now"] = sent
        generation.sync_weights()
        after = answer()
        weights["now"] = original
        generation.sync_weights()
        restored = answer()
        model.load_state_dict(sent, strict=False)
        ids = torch.tensor([prompt[0]["prompt_token_ids"]])
        expected = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False,
                                  min_new_tokens=6)[0, ids.shape[1]:].tolist()
        print(json.dumps({"before": before, "after": after, "restored": restored,
                          "transformers": expected}))

    if __name__ == "__main__":
        main(sys.argv[1])
    """
)


def test_colocated_weight_sync_reaches_the_cpu_engine(tmp_path, tiny_model_path):
    script = tmp_path / "sync.py"
    script.write_text(SYNC_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model_path)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["after"] == result["transformers"]  # the engine runs on the sent weights
    assert result["after"] != result["before"]
    assert result["restored"] == result["before"]  # and on the originals once sent back


def test_grpo_server_mode_on_a_cpu_is_one_clear_error(tmp_path, tiny_model_path, vllm_server):
    config = grpo_config(
        tmp_path,
        tiny_model_path,
        use_vllm=True,
        vllm_mode="server",
        vllm_server_base_url=vllm_server.url.removesuffix("/v1"),
    )
    done = train_grpo(config)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "vllm_mode=server needs a CUDA GPU" in last
    assert "colocate" in last


def test_trl_client_generates_through_vllm_serve_with_the_vision_ban(
    vllm_server, tiny_model_path, tmp_path
):
    """Server mode's generation half on this CPU: TRL's `VLLMClient.generate` against the real
    server, with the `logit_bias` boxgym's GRPO config adds (sampling restricted to the vision
    tokens and one word, so the ban decides)."""
    from trl.generation.vllm_client import VLLMClient

    from boxgym.policies.prompting import load_processor, vision_token_ids
    from boxgym.train.config import load_config
    from boxgym.train.grpo import grpo_args
    from boxgym.train.run_configs import GRPORunConfig

    processor = load_processor(tiny_model_path)
    path = grpo_config(tmp_path, tiny_model_path, use_vllm=True, vllm_mode="server")
    kwargs = grpo_args(load_config(GRPORunConfig, path), processor).generation_kwargs
    assert set(kwargs["logit_bias"]) == set(vision_token_ids(processor))
    vision, word = vision_token_ids(processor), 9707
    client = VLLMClient(base_url=vllm_server.url.removesuffix("/v1"), connection_timeout=60)
    out = client.generate(
        ["How many shapes are there?"],
        max_tokens=8,
        generation_kwargs={**kwargs, "allowed_token_ids": [*vision, word], "ignore_eos": True},
    )
    assert out["completion_ids"] == [[word] * 8]
