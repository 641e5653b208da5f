"""Does sampling ever list the question's label? The exploration signal GRPO would need.

In the learning proof's scenes every object is the question's kind, so the right `answer` items
are the question's label repeated: a text skill (copy the label) that GRPO can only reinforce if
some samples of a group already do it. This samples G replies per held-out `tool` scene of the
seeing model's own distribution (its env context: system turn, tools, the env's question), plays
each as the episode's first turn in the env, and counts the samples whose enumeration F1 exceeds
0.5 and the groups with any non-zero enumeration F1.

    python experiments/enumeration_signal.py --model ~/.cache/boxgym/seeing-qwen2-vl-<key> --scenes 16 --group 8
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a seeing checkpoint folder")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--group", type=int, default=8, help="samples per scene")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from boxgym.models.evaluation import score_tool_replies
    from boxgym.models.skills import make_example, messages_for, tool_env, tools_for

    torch.set_num_threads(args.threads)
    model = Qwen2VLForConditionalGeneration.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    processor.tokenizer.padding_side = "left"
    examples = [make_example("tool", seed) for seed in range(990_000, 990_000 + args.scenes)]
    prompts = [
        processor.apply_chat_template(
            messages_for(e), tokenize=False, add_generation_prompt=True, tools=tools_for(e)
        )
        for e in examples
    ]
    inputs = processor(
        text=prompts, images=[e.image for e in examples], return_tensors="pt", padding=True
    )
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=240,
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            num_return_sequences=args.group,
        )
    texts = processor.tokenizer.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=False
    )
    replies = [t.split("<|im_end|>")[0].replace("<|endoftext|>", "") for t in texts]
    repeated = [e for e in examples for _ in range(args.group)]
    scores = score_tool_replies(repeated, replies)
    env, f1s = tool_env(), []
    for example, reply in zip(repeated, replies, strict=True):
        env.reset(seed=example.seed, options={"task": example.task})
        *_, info = env.step(reply)
        f1s.append(float(info.get("metrics", {}).get("enumeration_f1") or 0.0))
    groups = [f1s[i : i + args.group] for i in range(0, len(f1s), args.group)]
    result = {
        "model": args.model,
        "samples": len(f1s),
        "samples_enumeration_f1_over_half": sum(f > 0.5 for f in f1s),
        "groups_with_nonzero_enumeration_f1": sum(max(g) > 0 for g in groups),
        "groups": len(groups),
        **{k: v for k, v in scores.items() if k != "examples"},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
