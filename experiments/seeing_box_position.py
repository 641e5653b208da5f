"""Where the seeing model's boxes go wrong: by object count, by place in the reply, and by where
in the text a box starts.

Qwen2-VL gives image tokens no absolute position: the vision tower has 2-D RoPE only, and in the
language model an image token at grid cell (h, w) has M-RoPE position (t0, t0 + h, t0 + w)
while a text token at p has (p, p, p). A reply token can therefore find an object's cell only
through the offsets p - t0 - h and p - t0 - w, and turn them into coordinates only if it knows
p - t0. A model that learnt coordinates at one fixed p (the first box after one fixed question)
puts a box elsewhere when the same box starts a few tokens later. Three measurements, greedy,
on held-out scenes (seeds below 1,000,000, never trained on):

1. `recall_by_count`, `box_on_an_object_by_position`: the grounding question on `--scenes`
   scenes (seeds 0-199; the build's own evaluation uses 999,500-999,699, another sample of the
   same distribution); recall at IoU >= 0.5 by the scene's object count, and, for each box of a
   reply in scenes of 2-5 objects, whether it lies at IoU >= 0.5 on any object.
2. `shift`: 1-object scenes; the reply is forced to start with the object's true label, with a
   trained label of 2, 3 or 4 tokens (the models name colours at chance, so any label is as
   familiar as the true one), or with made-up labels 1 token shorter or 1, 3 or 6 words longer,
   and the model writes the box: the share at IoU >= 0.5. Mainly the text position at which the
   box starts changes (the made-up labels also change the words).
3. `phrasings`: the same 1-object scenes asked each of `GROUND_PHRASINGS` (2 to 25 tokens).
4. `second_box`: 2-object scenes; the reply is forced to hold the first object's true box (its
   true label, or that label 3 words longer), and the model writes the second box: the share
   at IoU >= 0.5 on the second object. Does a later box depend on its text position as well?

    python experiments/seeing_box_position.py --model DIR --out OUT.json [--scenes 200] [--singles 100]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from boxgym.env.rewards import iou_matrix
from boxgym.models.cache import resolve_model
from boxgym.models.evaluation import generate_replies
from boxgym.models.scoring import box_scores, ci, read_boxes, score_replies
from boxgym.models.skills import GROUND_PHRASINGS, Example, make_example, messages_for

SHIFTS = {  # labels of the training vocabulary of 2, 3 and 4 tokens, then longer made-up ones
    "true label": "{label}",
    "'red circle' (2 tokens)": "red circle",
    "'red pentagon' (3 tokens)": "red pentagon",
    "'teal pentagon' (4 tokens)": "teal pentagon",
    "label 1 token shorter ('shape')": "shape",
    "label +1 word": "red {label}",
    "label +3 words": "red red red {label}",
    "label +6 words": "red red red red red red {label}",
}


def generate(
    model, processor, examples: list[Example], prefixes: list[str], max_new: int
) -> list[str]:
    """Greedy continuations of each prompt after a forced start of the reply (`prefixes`)."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    replies = []
    for i in range(0, len(examples), 25):
        chunk = examples[i : i + 25]
        prompts = [
            processor.apply_chat_template(
                messages_for(e), tokenize=False, add_generation_prompt=True
            )
            + prefix
            for e, prefix in zip(chunk, prefixes[i : i + 25])
        ]
        inputs = processor(
            text=prompts, images=[e.image for e in chunk], return_tensors="pt", padding=True
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
        texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :])
        replies += [p + t.split("<|im_end|>")[0] for p, t in zip(prefixes[i : i + 25], texts)]
    return replies


def first_box_hits(examples: list[Example], replies: list[str]) -> tuple[list[float], float]:
    """1.0 where the reply's first box lies at IoU >= 0.5 on the scene's only object; and the
    share of replies holding a box at all."""
    hits, boxed = [], 0
    for example, reply in zip(examples, replies):
        boxes = read_boxes(reply, example.image.size)
        boxed += bool(boxes)
        truth = np.asarray([example.task.objects[0].box], dtype=float)
        ok = bool(boxes) and iou_matrix(np.asarray([boxes[0][2]], float), truth)[0, 0] >= 0.5
        hits.append(float(ok))
    return hits, boxed / max(1, len(examples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="seeing", help="a seeing checkpoint (or 'seeing')")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenes", type=int, default=200, help="grounding scenes (part 1)")
    parser.add_argument("--singles", type=int, default=100, help="1-object scenes (parts 2, 3)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()
    started = time.time()
    result: dict = {"model": str(path), "scenes": args.scenes, "singles": args.singles}

    examples = [make_example("ground", seed) for seed in range(args.scenes)]
    replies = []
    for i in range(0, len(examples), 50):
        replies += generate_replies(model, processor, examples[i : i + 50], 400)
    result["all"] = {
        k: v for k, v in score_replies("ground", examples, replies).items() if k != "examples"
    }
    by_count: dict[str, list[float]] = {}
    by_position: dict[str, list[float]] = {}
    for example, reply in zip(examples, replies):
        boxes = read_boxes(reply, example.image.size)
        truth = np.asarray([o.box for o in example.task.objects], dtype=float)
        n = len(truth)
        recall = 0.0
        if boxes:
            iou = iou_matrix(np.asarray([b[2] for b in boxes], float), truth)
            recall = box_scores(boxes, example.task)[1]
            if n >= 2:
                for k in range(len(boxes)):
                    by_position.setdefault(str(k + 1), []).append(float(iou[k].max() >= 0.5))
        by_count.setdefault(str(n), []).append(recall)
    result["recall_by_count"] = {k: ci(v) for k, v in sorted(by_count.items())}
    result["box_on_an_object_by_position"] = {k: ci(v) for k, v in sorted(by_position.items())}
    print("recall by count", {k: round(v["mean"], 2) for k, v in result["recall_by_count"].items()})
    print(
        "boxes on an object by place in the reply",
        {k: round(v["mean"], 2) for k, v in result["box_on_an_object_by_position"].items()},
        flush=True,
    )

    singles = [e for e in (make_example("ground", s) for s in range(2000)) if e.task.count == 1]
    singles = singles[: args.singles]
    tokenizer = processor.tokenizer
    result["shift"] = {}
    for name, template in SHIFTS.items():
        prefixes = [
            f"<|object_ref_start|>{template.format(label=e.task.objects[0].label)}"
            "<|object_ref_end|><|box_start|>("
            for e in singles
        ]
        hits, boxed = first_box_hits(singles, generate(model, processor, singles, prefixes, 24))
        tokens = len(
            tokenizer(template.format(label="red triangle"))["input_ids"]
        )  # a 2-token label
        result["shift"][name] = {"label_tokens": tokens, "boxed": boxed, **ci(hits)}
        print(f"{name}: {tokens} label tokens, box IoU >= 0.5 {np.mean(hits):.2f}", flush=True)
    result["phrasings"] = {}
    for question in GROUND_PHRASINGS:
        asked = [Example(e.skill, e.seed, e.task, question, e.reply) for e in singles]
        replies = generate(model, processor, asked, [""] * len(asked), 48)
        hits, boxed = first_box_hits(asked, replies)
        tokens = len(tokenizer(question)["input_ids"])
        result["phrasings"][question] = {
            "question_tokens": tokens,
            "boxed": boxed,
            "first_reply": replies[0][:120],
            **ci(hits),
        }
        print(
            f"{tokens:>2} tokens: {np.mean(hits):.2f} (boxed {boxed:.2f})  {question}", flush=True
        )
    pairs = [e for e in (make_example("ground", s) for s in range(3000)) if e.task.count == 2]
    pairs = pairs[: args.singles]
    result["second_box"] = {}
    for name, pad in (("first box as trained", ""), ("first label +3 words", "red red red ")):
        prefixes = [
            e.reply.split("\n")[0].replace("start|>", f"start|>{pad}", 1) + "\n" for e in pairs
        ]
        replies = generate(model, processor, pairs, prefixes, 30)
        hits = []
        for example, reply in zip(pairs, replies):
            boxes = read_boxes(reply, example.image.size)
            truth = np.asarray([example.task.objects[1].box], dtype=float)
            ok = len(boxes) > 1 and iou_matrix(np.asarray([boxes[1][2]], float), truth)[0, 0] >= 0.5
            hits.append(float(ok))
        result["second_box"][name] = ci(hits)
        print(f"second box after the {name}: IoU >= 0.5 {np.mean(hits):.2f}", flush=True)
    result["seconds"] = round(time.time() - started)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
