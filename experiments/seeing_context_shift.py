"""Does the seeing model still ground when the env's system turn precedes its question?

The seeing model is trained with a bare user turn (image + question). Tool-use episodes put the
env's system turn (instructions, about 250 tokens, plus the five tool schemas, about 1,240 more)
before it. This asks the grounding question on 60 held-out scenes (seeds 999500-999559, never
trained on) three ways, greedy, and scores boxes at IoU >= 0.5:

    python experiments/seeing_context_shift.py OUT.json
"""

import json
import sys
import time

import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from boxgym.env import BoxGymEnv
from boxgym.models.cache import seeing_model_path
from boxgym.models.scoring import score_replies
from boxgym.models.skills import make_example, question_messages

torch.set_num_threads(2)
path = seeing_model_path()
proc = AutoProcessor.from_pretrained(path)
model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()
env = BoxGymEnv()
seeds = list(range(999_500, 999_560))
exs = [make_example("ground", s) for s in seeds]
task_msgs, _ = env.reset(options={"task": exs[0].task})
system = task_msgs[0]
tools = env.tool_schemas
out = {}
for name in ("trained prompt", "env system turn + tool schemas", "env system turn, no schemas"):
    prompts = []
    for e in exs:
        msgs = question_messages(e.image, e.question)
        kw = {}
        if name != "trained prompt":
            msgs = [system, *msgs]
            if "schemas" in name and "no" not in name:
                kw["tools"] = tools
        prompts.append(
            proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
        )
    proc.tokenizer.padding_side = "left"
    replies = []
    t = time.time()
    for i in range(0, len(exs), 20):
        inp = proc(
            text=prompts[i : i + 20],
            images=[e.image for e in exs[i : i + 20]],
            return_tensors="pt",
            padding=True,
        )
        with torch.no_grad():
            o = model.generate(**inp, max_new_tokens=160, do_sample=False)
        replies += [
            r.split("<|im_end|>")[0]
            for r in proc.tokenizer.batch_decode(
                o[:, inp["input_ids"].shape[1] :], skip_special_tokens=False
            )
        ]
    sc = score_replies("ground", exs, replies)
    out[name] = {k: sc[k] for k in ("precision", "recall", "count_from_boxes_accuracy")}
    out[name]["prompt_tokens"] = len(proc.tokenizer(prompts[0])["input_ids"])
    print(name, json.dumps(out[name]), round(time.time() - t), "s", flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
