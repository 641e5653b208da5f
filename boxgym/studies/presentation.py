"""`presentation`: what should `draw_box` show the model? Marked image, crop, both, or text only.

Tool-using episodes in the real env on held-out scenes (the seeing model's distribution by
default), one condition per `EnvConfig.draw_box_returns`:

- `image`: the whole image with every live box drawn and numbered;
- `crop`: a crop around the new box (upscaled to `crop_min_side`);
- `both`: the marked image and the crop;
- `text`: only the text confirmation, no image.

The policy is the `hf` policy (greedy), usually with a tool-using LoRA adapter (`--adapter`,
e.g. an SFT adapter from `boxgym train sft`); the report names the adapter, or says there was
none (a base model that has never seen the tools mostly fails to call them, and the study then
measures that). Episodes are stored under `OUT/episodes/<mode>/` (open them with `boxgym view`).
Metrics are the rollouts' own (count accuracy, enumeration and grounding F1, valid-call rate,
reward) plus answer tokens (all assistant tokens of the episode) and image tokens (every image
the model was shown, tool results included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxgym.studies.base import Study, StudyOutput
from boxgym.studies.direct import DIRECT_DEFAULTS, scene_tasks
from boxgym.studies.episodes import episode_metrics, fresh_store, play_episodes

MODES = ("image", "crop", "both", "text")


def _store_class() -> type:
    from boxgym.rollouts.store import EpisodeStore

    class TokenCountingStore(EpisodeStore):
        """An episode store that also remembers each stored image's token count."""

        def __init__(self, out_dir: Path, count: Any) -> None:
            super().__init__(out_dir)
            self.count = count
            self.tokens: dict[str, int] = {}

        def put_image(self, image: Any) -> str:
            sha = super().put_image(image)
            if sha not in self.tokens:
                self.tokens[sha] = self.count(image)
            return sha

    return TokenCountingStore


def _images(messages: list[dict[str, Any]]) -> list[str]:
    return [
        part["image"]
        for message in messages
        for part in message.get("content") or []
        if isinstance(part, dict)
        and part.get("type") == "image"
        and isinstance(part.get("image"), str)
    ]


def episode_record(
    record: dict[str, Any], mode: str, lab: Any, tokens: dict[str, int]
) -> dict[str, Any]:
    """One study record from a stored episode."""
    shown = _images(record.get("prompt") or [])
    for turn in record.get("turns") or []:
        shown += _images(turn.get("tool_results") or [])
    return {
        "draw_box_returns": mode,
        **episode_metrics(record),
        "answer_tokens": float(
            sum(lab.count_tokens(t.get("assistant") or "") for t in record.get("turns") or [])
        ),
        "image_tokens": float(sum(tokens.get(sha, 0) for sha in shown)),
    }


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    from boxgym.env import BoxGymEnv, EnvConfig

    bad = [m for m in settings["modes"] if m not in MODES]
    if bad:
        raise ValueError(f"setting modes: unknown {bad}; choose from {list(MODES)}")
    tasks = scene_tasks(settings)
    root = Path(getattr(lab, "out_dir", None) or ".") / "episodes"
    records = []
    for mode in settings["modes"]:
        config = EnvConfig.from_dict({**settings["env_kwargs"], "draw_box_returns": mode})
        store = fresh_store(root / mode, _store_class(), lab.image_tokens)
        episodes = play_episodes(
            lab.policy,
            tasks,
            lambda config=config: BoxGymEnv(config=config),
            store,
            seed=int(settings["seed_base"]),
            batch_size=lab.batch_size,
            run_name=f"presentation-{mode}",
        )
        records += [episode_record(r, mode, lab, store.tokens) for r in episodes]
    adapter = lab.describe().get("adapter")
    notes = (
        f"Adapter: `{adapter}`."
        if adapter
        else "No adapter: the base model, which was not trained to call the tools."
    )
    return StudyOutput(records=records, notes=notes)


STUDY = Study(
    name="presentation",
    question="What should draw_box return to the model: the marked image, a crop, both, or text "
    "only? Tool-using episodes with each, same scenes.",
    factors=("draw_box_returns",),
    metrics=(
        "count_accuracy",
        "count_abs_error",
        "count_rel_error",
        "enumeration_f1",
        "grounding_f1",
        "valid_call_rate",
        "reward",
        "answered",
        "answer_tokens",
        "image_tokens",
    ),
    defaults={
        **{
            k: v
            for k, v in DIRECT_DEFAULTS.items()
            if k not in ("task", "question", "ground_question")
        },
        "n": 64,
        "modes": list(MODES),
        "env_kwargs": {"max_turns": 8, "max_image_pixels": 50176, "crop_max_pixels": 50176},
        "max_new_tokens": 256,
    },
    quick={"n": 16},
    measure=measure,
    plot_x="draw_box_returns",
    plot_metrics=("count_accuracy", "enumeration_f1", "grounding_f1", "image_tokens"),
    fixed_help="the scenes, the policy (greedy) and the env's limits; only what draw_box "
    "returns changes",
)
