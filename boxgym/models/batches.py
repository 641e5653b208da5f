"""Training batches of the seeing model: which skills a step draws, and their token tensors.

Every row is a function of `(recipe, step, row)`: its scene seed (`train_seed`, always at or above
`EVAL_SEEDS_END`, so training and held-out scenes are disjoint by construction), its skill (the
stage's mixture) and its question. `Batcher` renders the rows with the chat template and marks the
reply tokens as labels.

A ``tool`` row's prompt is about 1,460 tokens of system turn and schemas, the same for every row,
then about 90 of image and question: a tool batch carries that shared prefix (`prefix_ids`) so the
loss runs it once per step (`boxgym.models.loss.prefix_forward`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from boxgym.models.recipe import SeeingRecipe
from boxgym.models.skills import (
    EVAL_SEEDS_END,
    GROUND_PHRASINGS,
    SKILLS,
    Example,
    make_example,
    question_messages,
    tool_context,
)


def train_seed(recipe: SeeingRecipe, step: int, row: int) -> int:
    """The scene seed of one training row: always at or above EVAL_SEEDS_END."""
    return EVAL_SEEDS_END + (recipe.seed * 10_000_000 + step * recipe.batch_size + row)


def skills_for_step(recipe: SeeingRecipe, step: int) -> list[str]:
    """The skills of the rows of a step: the stage's mixture, drawn from the step's seed."""
    import numpy as np

    mix = {
        "count": recipe.count_mix,
        "full": recipe.full_mix,
        "tool": recipe.tool_mix,
        "polish": recipe.polish_mix,
    }[recipe.stage(step)]
    names = [name for name, _ in mix]
    weights = np.array([w for _, w in mix], dtype=float)
    rng = np.random.default_rng([recipe.seed, step, 7])
    return list(rng.choice(names, size=recipe.batch_size, p=weights / weights.sum()))


def max_objects_for_step(recipe: SeeingRecipe, step: int) -> int:
    """The curriculum: grounding scenes hold at most 2 objects at the start of the full stage."""
    if recipe.stage(step) != "full":
        return 5
    into = (step - recipe.count_steps) / max(1, recipe.full_steps * recipe.ground_curriculum)
    return min(5, 2 + int(into * 4))


def training_examples(recipe: SeeingRecipe, step: int) -> list[Example]:
    cap = max_objects_for_step(recipe, step)
    examples = []
    for row, skill in enumerate(skills_for_step(recipe, step)):
        seed = train_seed(recipe, step, row)
        example = make_example(skill, seed, max_count=cap if skill == "ground" else 5)
        if skill.startswith("count") and bare_question(seed, recipe.bare_question_share):
            example = replace(example, question=strip_answer_hint(example.question))
        if skill == "ground":
            example = replace(example, question=ground_question(seed, recipe.ground_phrasings))
        examples.append(example)
    return examples


def bare_question(seed: int, share: float) -> bool:
    """Whether the counting row of `seed` is asked without "Answer with a number." """
    return (seed * 2654435761 % 1000) < share * 1000


def ground_question(seed: int, phrasings: int) -> str:
    """The grounding question of the row of `seed`: one of the first `phrasings` of
    `GROUND_PHRASINGS`, drawn by seed."""
    if not 1 <= phrasings <= len(GROUND_PHRASINGS):
        raise ValueError(f"ground_phrasings must be 1 to {len(GROUND_PHRASINGS)}, got {phrasings}")
    return GROUND_PHRASINGS[(seed * 2246822519 >> 7) % phrasings]


def strip_answer_hint(question: str) -> str:
    return question.replace(" Answer with a number.", "")


class Batcher:
    """Turns examples into model inputs with the reply tokens as labels (right padded)."""

    def __init__(self, processor, digit_weight: float = 1.0) -> None:
        self.processor = processor
        self.digit_weight = digit_weight
        self.tokenizer = processor.tokenizer
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.pad_id = self.tokenizer.pad_token_id
        self._prompt_cache: dict[tuple[str, str], str] = {}
        self._prefix_ids: list[int] | None = None
        digits = [self.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
        self.digit_ids = set(digits)

    def prompt_text(self, question: str, context: str = "bare") -> str:
        if (question, context) not in self._prompt_cache:
            from PIL import Image

            messages = question_messages(Image.new("RGB", (28, 28)), question)
            tools = None
            if context == "tool":
                system, tools = tool_context()
                messages = [system, *messages]
            self._prompt_cache[question, context] = self.processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, tools=tools
            )
        return self._prompt_cache[question, context]

    def prefix_ids(self) -> list[int]:
        """The token ids every `tool` prompt starts with: the system turn and the tool schemas."""
        if self._prefix_ids is None:
            text = self.prompt_text("?", "tool")
            head = text[: text.index("<|im_start|>user")]
            self._prefix_ids = self.tokenizer(head, add_special_tokens=False)["input_ids"]
        return self._prefix_ids

    def batches(self, examples: list[Example]) -> list[dict[str, Any]]:
        """The examples as one batch per context (bare rows, then tool rows)."""
        out = []
        for context in ("bare", "tool"):
            group = [e for e in examples if e.context == context]
            if group:
                out.append(self(group))
        return out

    def reply_ids(self, reply: str) -> list[int]:
        return self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.end_id]

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        """Model inputs of examples of one context; a tool batch also carries `prefix_ids`, the
        shared system-turn tokens every row starts with (see `prefix_forward`)."""
        import torch

        contexts = {e.context for e in examples}
        if len(contexts) != 1:
            raise ValueError(f"one context per batch, got {sorted(contexts)}")
        prompts = [self.prompt_text(e.question, e.context) for e in examples]
        self.tokenizer.padding_side = "right"
        encoded = self.processor(
            text=prompts, images=[e.image for e in examples], return_tensors="pt", padding=True
        )
        rows, labels, weights = [], [], []
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        for ids, length, example in zip(encoded["input_ids"], lengths, examples):
            ids = ids[:length].tolist()
            reply = self.reply_ids(example.reply)
            rows.append(ids + reply)
            labels.append([-100] * len(ids) + reply)
            weights.append([0.0] * len(ids) + self.reply_weights(reply, example.skill))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        label_t = torch.full((len(rows), width), -100, dtype=torch.long)
        weight_t = torch.zeros((len(rows), width))
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, lab, w) in enumerate(zip(rows, labels, weights)):
            input_ids[i, : len(r)] = torch.tensor(r)
            label_t[i, : len(r)] = torch.tensor(lab)
            weight_t[i, : len(r)] = torch.tensor(w)
            mask[i, : len(r)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "pixel_values": encoded["pixel_values"],
            "image_grid_thw": encoded["image_grid_thw"],
            "mm_token_type_ids": (input_ids == self.image_id).long(),
            "labels": label_t,
            "weights": weight_t,
        }
        if contexts == {"tool"}:
            prefix = self.prefix_ids()
            if input_ids[:, : len(prefix)].ne(torch.tensor(prefix)).any():
                raise ValueError("a tool prompt does not start with the shared system turn")
            batch["prefix_ids"] = torch.tensor([prefix])
        return batch

    def reply_weights(self, reply: list[int], skill: str) -> list[float]:
        """Loss weight of each reply token: `digit_weight` on a grounding reply's digits."""
        if skill not in ("ground", "tool") or self.digit_weight == 1.0:
            return [1.0] * len(reply)
        return [self.digit_weight if t in self.digit_ids else 1.0 for t in reply]


def reply_vocabulary(batcher: Batcher):
    """Every token id that any skill's replies can use (sorted tensor)."""
    import torch

    from boxgym.data.vocabulary import CLUTTER_KINDS, COLOURS, SHAPES

    texts = [str(d) for d in range(10)] + ["(", ")", ",", "),(", ", ", "\n"]
    texts += [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f" {c}" for c in COLOURS]
    texts += [*CLUTTER_KINDS, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>"]
    texts += ["<|box_end|>", "<|im_end|>"]
    ids = set()
    for text in texts:
        ids.update(batcher.tokenizer(text, add_special_tokens=False)["input_ids"])
    for seed in range(200):  # everything real replies use, whatever the vocabulary lists
        for skill in SKILLS:
            ids.update(batcher.reply_ids(make_example(skill, EVAL_SEEDS_END + 7 * seed + 3).reply))
    return torch.tensor(sorted(ids))
