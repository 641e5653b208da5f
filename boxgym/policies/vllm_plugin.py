"""boxgym's vLLM plugin: a fix that vLLM's CPU build needs for boxgym's seeded requests.

Registered as a `vllm.general_plugins` entry point (pyproject.toml), so vLLM loads it in each
of its processes (API server, engine core, workers) wherever boxgym is installed beside it:
the offline `vllm` policy, `vllm serve` for the `openai` policy and TRL's colocated engine alike.

The fix: every boxgym request carries its own seed (request i samples with seed + i). When a
request's prefill is split across engine steps (its prompt did not fit the step's token
budget, or its image did not fit the encoder budget), the token sampled at the end of a partial
step is thrown away, and vLLM 0.32 rewinds the request's generator by its Philox offset
(`gen.set_offset(gen.get_offset() - 4)` in `GPUModelRunner._bookkeeping_sync`,
vllm/v1/worker/gpu_model_runner.py). A CPU generator has no offset, so the worker raises
"RuntimeError: CPU Generator does not use offset" and the engine dies (seen with three seeded
1,500-token prompts and a 2,048-token step budget, and in a `vllm serve` test run). On a CPU
engine the plugin leaves those generators out of that rewind: the discarded draw stays drawn,
so a seeded request's samples are repeatable for the same schedule of steps, not across
schedules (on a GPU they are both, and the plugin does nothing there).
"""

from __future__ import annotations

from typing import Any


def register() -> None:
    """vLLM's plugin hook: patch the model runner on a CPU platform (idempotent)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._bookkeeping_sync
    if getattr(original, "boxgym_cpu_generators", False):
        return

    def bookkeeping_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        import numpy as np

        generators = self.input_batch.generators
        discarded = np.nonzero(self.discard_request_mask.np[: self.input_batch.num_reqs])[0]
        held = {int(i): generators.pop(int(i)) for i in discarded if int(i) in generators}
        try:
            return original(self, *args, **kwargs)
        finally:
            generators.update(held)

    bookkeeping_sync.boxgym_cpu_generators = True  # type: ignore[attr-defined]
    GPUModelRunner._bookkeeping_sync = bookkeeping_sync
