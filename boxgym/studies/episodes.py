"""Tool-use episodes for the studies: play a policy on held-out tasks through the rollout runner,
store the episodes, and read each back as one study record.

Shared by every study that measures tool use (presentation, learning-proof, boxing): the same
runner, store and metrics as `boxgym rollout`, so a study's figures are the rollouts' figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The rollouts' metrics a tool-use record carries (see `boxgym.rollouts.episode`).
EPISODE_METRICS = (
    "count_accuracy",
    "count_abs_error",
    "enumeration_f1",
    "grounding_f1",
    "valid_call_rate",
    "reward",
    "answered",
)


def play_episodes(
    policy: Any,
    tasks: Sequence[Any],
    make_env: Callable[[], Any],
    store: Any,
    *,
    seed: int,
    batch_size: int | None,
    run_name: str,
) -> list[dict[str, Any]]:
    """One episode of `policy` per task, stored in `store`; the stored records, in task order.

    Keys already in the store are kept (a resumed stage finishes only what is missing).
    """
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import read_episodes

    try:
        run_rollouts(
            tasks,
            policy,
            make_env,
            store,
            group_size=1,
            seed=seed,
            batch_size=batch_size,
            progress=True,
            run_info={"policy": "hf", "run": run_name},
        )
    finally:
        store.close()
    records = read_episodes(store.episodes_path).episodes
    return sorted(records, key=lambda r: r["key"]["task_index"])


def fresh_store(run_dir: Path, store_class: type | None = None, *args: Any) -> Any:
    """An episode store in `run_dir` that starts empty (a study run's own by-product)."""
    from boxgym.rollouts.store import EpisodeStore

    if (run_dir / "episodes.jsonl").exists():
        (run_dir / "episodes.jsonl").unlink()
    return (store_class or EpisodeStore)(run_dir, *args)


def episode_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The study metrics of one stored episode: the rollouts' own, `count_rel_error`,
    `tool_calls_per_episode`, `episodes_that_box` (1 when it drew a box at all), the true
    count, the failure kind and the scene seed."""
    metrics = record.get("metrics") or {}
    truth = (record.get("task") or {}).get("answer", {}).get("count")
    abs_err = metrics.get("count_abs_error")
    return {
        **{name: metrics.get(name) for name in EPISODE_METRICS},
        "count_rel_error": (abs_err / truth)
        if isinstance(abs_err, (int, float)) and truth
        else None,
        "tool_calls_per_episode": metrics.get("calls"),
        "episodes_that_box": float((metrics.get("calls_draw_box") or 0) > 0),
        "turns": metrics.get("turns"),
        "true_count": truth,
        "failure": record.get("failure"),
        "seed": (record.get("task") or {}).get("meta", {}).get("seed"),
    }
