"""`boxgym train grpo`: GRPO on a LoRA adapter with the env behind TRL's `environment_factory`.

Reads top to bottom: the prompt dataset (one row per task: the env's system message and what
`reset` needs to rebuild the task), the model with its adapter (fresh, or continued from the SFT
run's `init_adapter`), and `GRPOTrainer` with `BoxGymToolEnv`: TRL generates (transformers on a
CPU; vLLM colocate or server on GPUs via `trainer.use_vllm`), runs the tool calls on the env's
toolbox, feeds the tool images back, and takes the env's reward from `get_reward`.

Logged every step besides TRL's own metrics (`reward`, `completions/mean_length`,
`tools/call_frequency`, ...): `reward/<component>` and `reward/total` from the env, and
`rollout/count_accuracy`, `rollout/tool_calls`, `rollout/invalid_call_rate`, `rollout/turns`,
`rollout/answered`, `rollout/calls_<tool>`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boxgym.train.config import device_defaults, trl_args
from boxgym.train.run_configs import GRPORunConfig

log = logging.getLogger(__name__)


def grpo_args(config: GRPORunConfig, processor: Any = None) -> Any:
    """The `trl.GRPOConfig`: the `trainer` section over boxgym's defaults.

    `max_tool_calling_iterations` defaults to the env's turn budget: TRL runs the calls of a
    generation only while iterations remain, so with `max_turns` iterations the calls of the
    last allowed turn still run (one generation more follows; the env adapter ignores it). The
    vision special tokens are banned in generation (a sampled one would break the image/feature
    count, TRL #3847): `suppress_tokens` on the transformers path, `logit_bias` -100 on the vLLM
    path (`SamplingParams(**generation_kwargs)` in trl/generation/vllm_generation.py for
    colocate; the OpenAI `logit_bias` field in server mode).
    """
    from trl import GRPOConfig

    from boxgym.env import EnvConfig

    env_config = EnvConfig(**config.env.env_kwargs)
    defaults: dict[str, Any] = {
        **device_defaults(),
        "gradient_checkpointing": False,
        "save_strategy": "steps",
        "report_to": ["tensorboard"],
        "max_tool_calling_iterations": env_config.max_turns,
        "log_completions": False,
    }
    if env_config.image_history == "last":  # one row per turn (boxgym.train.turn_grpo)
        defaults.update(steps_per_generation=1, gradient_accumulation_steps=1, beta=0.0)
    trainer = {**defaults, **config.trainer}
    if processor is not None:
        from boxgym.policies.prompting import vision_token_ids

        kwargs = dict(trainer.get("generation_kwargs") or {})
        if trainer.get("use_vllm"):
            kwargs.setdefault("logit_bias", dict.fromkeys(vision_token_ids(processor), -100.0))
        else:
            kwargs.setdefault("suppress_tokens", vision_token_ids(processor))
        trainer["generation_kwargs"] = kwargs
    return trl_args(GRPOConfig, trainer, remove_unused_columns=False)


def _trainer_class() -> type:
    import trl.trainer.grpo_trainer as grpo_module
    from trl import GRPOTrainer

    from boxgym.train import trl_environment

    class BoxGymGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that renders the tools in the env's order, parses tool calls the env's
        way, marks generation rounds (env turn counting), optionally masks over-turn episodes
        out of the loss, and logs the env's metrics."""

        def __init__(
            self,
            *args: Any,
            env_config: Any = None,
            over_turn_masking: bool = False,
            scene_knobs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            from boxgym.env import EnvConfig

            self.env_config = env_config if env_config is not None else EnvConfig()
            self.over_turn_masking = over_turn_masking
            self.scene_knobs = dict(scene_knobs or {})
            # under image_history last each reply saw only the latest image: the trainer plays
            # the turns itself and trains one row per turn (boxgym.train.turn_grpo)
            self.turn_rows = self.env_config.image_history == "last"
            self._turn_prefix: list[int] = []
            super().__init__(*args, **kwargs)
            # TRL lists an environment's tools alphabetically (inspect.getmembers); the env, the
            # rollouts and the SFT data render them in TOOL_NAMES order. The order is part of the
            # prompt's tokens, so put TRL's schema lists in the env's order (execution looks
            # tools up by name and is unaffected).
            for name, tools in self._env_tools.items():
                self._env_tools[name] = trl_environment.in_tool_order(tools)
            self.tools = trl_environment.in_tool_order(self.tools)
            if self.use_vllm and self.vllm_mode == "colocate":
                reload_weights_on_cpu(self.vllm_generation)

        def _generate(self, prompts: list) -> Any:
            # TRL 1.16 parses every completion with the module-level `parse_response`
            # (trl/trainer/grpo_trainer.py, in `_generate` and `_tool_call_loop`); parse with
            # the env's parser instead, so grounding-token calls and malformed calls are read
            # exactly as `BoxGymEnv.step` reads them.
            original = grpo_module.parse_response
            grpo_module.parse_response = trl_environment.env_parse_response(self.env_config)
            try:
                return super()._generate(prompts)
            finally:
                grpo_module.parse_response = original

        def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
            with lm_head_scores_completions_only():
                if self.turn_rows and self._turn_prefix:
                    return self._turn_logps(*args, **kwargs)
                return super()._get_per_token_logps_and_entropies(*args, **kwargs)

        def _turn_logps(
            self,
            model: Any,
            input_ids: Any,
            attention_mask: Any,
            logits_to_keep: int,
            batch_size: int | None = None,
            compute_entropy: bool = False,
            **fields: Any,
        ) -> Any:
            from boxgym.train.turn_grpo import shared_prefix_logps

            logps, entropies = shared_prefix_logps(
                model,
                self._turn_prefix,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size or input_ids.size(0),
                fields.get("pixel_values"),
                fields.get("image_grid_thw"),
                fields.get("num_images") or [0] * input_ids.size(0),
                fields.get("mm_token_type_ids"),
                compute_entropy,
            )
            return logps, entropies, None

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            if self.turn_rows:
                return self._turn_rollouts(inputs)
            output = super()._generate_and_score_completions(inputs)
            if self.over_turn_masking and self.environments:
                keep = over_turn_keep_mask(self.environments)
                if keep is not None:
                    mask = output["completion_mask"]
                    output["completion_mask"] = mask * keep.to(mask.device, mask.dtype)[:, None]
            return output

        def _turn_rollouts(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            from boxgym.train.turn_grpo import (
                group_advantages,
                log_turn_metrics,
                play_turns,
                turn_batch,
            )

            turns, episodes = play_turns(self, inputs)
            advantages, zero_std = group_advantages(
                [e["reward"] for e in episodes], self.num_generations, self.scale_rewards != "none"
            )
            keep = [not (self.over_turn_masking and e["over_turn"]) for e in episodes]
            log_turn_metrics(self, episodes, turns, zero_std)
            return turn_batch(self, turns, advantages, keep)

        def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
            trl_environment.GENERATION_ROUND[0] += 1
            if kwargs.get("has_tool_images"):
                images = args[1] if len(args) > 1 else kwargs.get("images")
                trl_environment.TOOL_IMAGE_ROUNDS.append(sum(len(x or []) for x in images or []))
            return super()._generate_single_turn(*args, **kwargs)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            episodes = list(trl_environment.EPISODE_LOG)
            trl_environment.EPISODE_LOG.clear()
            if episodes and "loss" in logs:
                keys = sorted({k for e in episodes for k in e})
                for key in keys:
                    values = [e[key] for e in episodes if key in e]
                    logs[key] = sum(values) / len(values)
                logs["rollout/episodes"] = float(len(episodes))
                rounds = list(trl_environment.TOOL_IMAGE_ROUNDS)
                trl_environment.TOOL_IMAGE_ROUNDS.clear()
                # generations whose inputs held images the tools returned, and how many images
                logs["rollout/generations_with_tool_images"] = float(len(rounds))
                logs["rollout/images_in_tool_generations"] = float(sum(rounds))
            super().log(logs, start_time)

    return BoxGymGRPOTrainer


def reload_weights_on_cpu(generation: Any) -> None:
    """Make TRL's colocated weight sync work with vLLM's CPU build.

    TRL 1.16 pushes the trained weights into the colocated engine parameter by parameter with
    the model's `load_weights` (`VLLMGeneration.sync_weights`, trl/generation/vllm_generation.py).
    vLLM's CPU backend packs every linear layer's weight for its GEMM kernels once loaded and
    leaves an empty parameter behind (`dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`
    in vllm/model_executor/layers/linear.py, vLLM 0.32), so that call fails ("Attempted to load
    weight (torch.Size([96, 32])) into parameter (torch.Size([0]))"). The model runner's
    `reload_weights` (vllm/model_executor/model_loader/reload/) rebuilds the parameters, loads
    the weights and packs them again: on a CPU engine the sync goes through it. On other
    platforms TRL's own sync is kept.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    llm = generation.llm
    runner = llm.llm_engine.model_executor.driver_worker.model_runner

    def sync_weights() -> None:
        runner.reload_weights(
            weights_iterator=generation._iter_named_params(), is_checkpoint_format=True
        )
        llm.reset_prefix_cache()

    generation.sync_weights = sync_weights


@contextmanager
def lm_head_scores_completions_only() -> Iterator[None]:
    """Make TRL 1.16's fused LM head score only the completion tokens on CPU too.

    `add_fused_lm_head` (trl/trainer/utils.py) projects the hidden states onto the vocabulary
    in chunks; on Triton devices it keeps only the positions with a label (`compact`), but
    elsewhere it scores every position, prompt included, so that the tile shapes stay fixed
    for compilers such as Neuron's. On CPU nothing is compiled, and a GRPO prompt of 1,700
    tokens with 150 completion tokens then sends about 12x the needed rows through the
    151,657-word head, forward and backward (most of a step's time here). The choice is read
    from the module-level `_use_triton`; this swaps it for one that also answers yes on CPU for
    the duration of the call. The kernels themselves check their own `_use_triton`
    (trl/kernels/chunked_logprob.py), so they still run the torch fallback.
    """
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def over_turn_keep_mask(environments: list[Any]) -> Any:
    """A float tensor, 0 for each rollout whose episode ran over the turn or call budget without
    an answer (Mini-o3's over-turn masking: such completions carry no policy gradient), 1
    otherwise; None when no rollout ran over."""
    import torch

    over = [bool(getattr(env, "over_turn", False)) for env in environments]
    if not any(over):
        return None
    return torch.tensor([0.0 if o else 1.0 for o in over])


def check_vllm_mode(args: Any) -> None:
    """Refuse vLLM's server mode on a trainer without CUDA, before anything is loaded.

    TRL 1.16 pushes the trained weights to a `vllm serve` over vLLM's NCCL weight-transfer
    engine, and `VLLMClient.init_communicator` raises NotImplementedError for any other device
    ("Weight synchronization runs on vLLM's NCCL weight-transfer engine, which needs a CUDA
    device"); colocate mode runs on a CPU (`reload_weights_on_cpu`).
    """
    import torch

    from boxgym.errors import UserError

    if args.use_vllm and args.vllm_mode == "server" and not torch.cuda.is_available():
        raise UserError(
            "trainer.vllm_mode=server needs a CUDA GPU on the trainer: TRL sends the trained "
            "weights to the vLLM server over NCCL; on a CPU set trainer.vllm_mode: colocate"
        )


def build_grpo_trainer(config: GRPORunConfig) -> Any:
    """The configured `GRPOTrainer` (model, adapter, prompt dataset, environment), not yet run."""
    from datasets import Dataset

    from boxgym.train.mixture import make_env
    from boxgym.train.modeling import attach_adapter, load_base_model, load_training_processor
    from boxgym.train.trl_environment import environment_class, grpo_prompt_rows

    def env_config(section: Any) -> Any:
        return make_env(section).config

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    processor = load_training_processor(config.model)
    args = grpo_args(config, processor)
    check_vllm_mode(args)
    if config.budget_check != "off":
        from boxgym.train.budget import check_episode_budget

        try:
            longest = check_episode_budget(config, processor, args)
            log.info("budget: the longest perfect episode needs %d completion tokens", longest)
        except ValueError as error:
            if config.budget_check == "error":
                raise
            log.warning("%s", error)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    rows = grpo_prompt_rows(config.env, config.tasks)
    (output_dir / "tasks.json").write_text(json.dumps([r["task_id"] for r in rows], indent=2))
    model = attach_adapter(
        load_base_model(config.model, config.lora), config.lora, config.init_adapter
    )
    return _trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        environment_factory=environment_class(config.env),
        env_config=env_config(config.env),
        over_turn_masking=config.over_turn_masking,
        scene_knobs=config.env.scene_knobs,
    )


def run_grpo(config: GRPORunConfig) -> Path:
    """Train and save the adapter; returns `output_dir/adapter`."""
    from boxgym.train.modeling import save_adapter

    trainer = build_grpo_trainer(config)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    adapter_dir = save_adapter(trainer.model, trainer.processing_class, trainer.args.output_dir)
    trainer.save_state()
    return adapter_dir
