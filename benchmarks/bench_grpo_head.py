"""The GRPO loss's LM head on CPU: TRL's every-position scoring against completion-only scoring.

    python benchmarks/bench_grpo_head.py                       # the seeing checkpoint, proof shapes
    python benchmarks/bench_grpo_head.py --model tiny --rows 16 --prompt 1700 --completion 150

TRL 1.16's fused LM head scores every position of a row (prompt included) on devices without
Triton; `boxgym.train.grpo.lm_head_scores_completions_only` makes it score only the completion
tokens, as it already does on GPUs. This times one forward + backward of the model with GRPO's
labels (prompt masked), text only, both ways, alternating, median of `--repeats`, and checks
that the log-probabilities agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import Qwen2VLForConditionalGeneration
    from trl.trainer.utils import add_fused_lm_head

    from boxgym.models.cache import resolve_model
    from boxgym.train.grpo import lm_head_scores_completions_only

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seeing", help="`seeing`, `tiny` or a checkpoint path")
    parser.add_argument("--rows", type=int, default=16, help="rows per step (GRPO's batch)")
    parser.add_argument("--prompt", type=int, default=1700, help="prompt tokens per row")
    parser.add_argument("--completion", type=int, default=150, help="completion tokens per row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = Qwen2VLForConditionalGeneration.from_pretrained(resolve_model(args.model)).float()
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    gen = torch.Generator().manual_seed(0)
    length = args.prompt + args.completion
    input_ids = torch.randint(0, 151_000, (args.rows, length), generator=gen)
    labels = input_ids.clone()
    labels[:, : args.prompt] = -100

    def step() -> tuple[float, torch.Tensor]:
        model.zero_grad()
        t0 = time.perf_counter()
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return time.perf_counter() - t0, out.log_probs.detach()

    every, compact = [], []
    for _ in range(args.repeats):
        seconds, full = step()
        every.append(seconds)
        with lm_head_scores_completions_only():
            seconds, only = step()
        compact.append(seconds)
    agree = float((full - only).abs().max())
    result = {
        "model": args.model,
        "rows": args.rows,
        "prompt_tokens": args.prompt,
        "completion_tokens": args.completion,
        "threads": args.threads,
        "every_position_s": round(statistics.median(every), 3),
        "completions_only_s": round(statistics.median(compact), 3),
        "speedup": round(statistics.median(every) / statistics.median(compact), 2),
        "max_logprob_difference": agree,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
