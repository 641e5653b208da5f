"""Run summaries: means with 95% bootstrap intervals, pass@k over groups, failure counts, timing.

Episodes of one task (the G samples of a group) are not independent, so intervals come from a
cluster bootstrap: groups are resampled with replacement and the metric is the mean over every
episode of the resampled groups. Metrics that do not apply to an episode (e.g. grounding F1 on a
count-only task) are stored as null and left out of that metric's mean.

pass@k uses the unbiased estimator of Chen et al. (2021): for a group with n samples of which c
succeeded, pass@k = 1 - C(n-c, k) / C(n, k), averaged over groups. Avg@k is the mean success rate
over the k samples of each group, averaged over groups.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# The headline metrics, in display order, with what they mean.
HEADLINE_METRICS: dict[str, str] = {
    "reward": "the env's total reward",
    "success": "answer fully correct (count, and items/value/point where the task has them)",
    "count_accuracy": "answered count equals the true count",
    "count_abs_error": "|answered count - true count|, over answered episodes only (see answered)",
    "answered": "episodes that ended with an answer call",
    "enumeration_f1": "F1 of answered item labels vs true labels (multiset)",
    "grounding_f1": "F1 of drawn boxes matched one-to-one at IoU >= 0.5 with agreeing labels",
    "valid_call_rate": "attempted tool calls (malformed ones included) that ran without error; "
    "episodes without any call attempt are left out",
    "calls": "tool calls attempted per episode (malformed ones included)",
    "turns": "assistant turns per episode",
}

BOOTSTRAP_RESAMPLES = 1000


def bootstrap_mean_ci(
    values: Iterable[float | None],
    groups: Iterable[Any] | None = None,
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> dict[str, Any]:
    """Mean and percentile bootstrap interval, resampling whole groups when `groups` is given.

    Returns `{"mean", "ci95": [lo, hi], "n"}`; None values are ignored; with no values the mean
    and interval are None.
    """
    vals = list(values)
    keys = list(groups) if groups is not None else list(range(len(vals)))
    if len(keys) != len(vals):
        raise ValueError("values and groups must have the same length")
    sums: dict[Any, float] = defaultdict(float)
    counts: dict[Any, int] = defaultdict(int)
    for key, value in zip(keys, vals):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        sums[key] += float(value)
        counts[key] += 1
    n = sum(counts.values())
    if n == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    order = list(sums)
    s = np.array([sums[k] for k in order], dtype=np.float64)
    c = np.array([counts[k] for k in order], dtype=np.float64)
    mean = float(s.sum() / c.sum())
    if len(order) == 1:
        return {"mean": mean, "ci95": [mean, mean], "n": n}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(order), size=(resamples, len(order)))
    boot = s[idx].sum(axis=1) / c[idx].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return {"mean": mean, "ci95": [float(lo), float(hi)], "n": n}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one group: probability that k of the n samples include a success."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i), the numerically stable form of 1 - C(n-c,k)/C(n,k).
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _ks(group_size: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= group_size]
    if group_size not in ks:
        ks.append(group_size)
    return ks


def group_of(episode: dict[str, Any]) -> str:
    """The group an episode belongs to: its policy and task (the G samples of one task)."""
    return f"{episode.get('policy') or ''}|{episode['key']['task_id']}"


def group_scores(episodes: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """pass@k and Avg@k over the groups (episodes sharing policy and task), with bootstrap intervals.

    Only groups with the run's full group size count, so a partial run does not skew pass@k.
    """
    groups: dict[str, list[bool]] = defaultdict(list)
    for ep in episodes:
        success = (ep.get("metrics") or {}).get("success")
        if success is None:
            continue
        groups[group_of(ep)].append(bool(success))
    if not groups:
        return {"group_size": 0, "groups": 0, "pass_at_k": {}, "avg_at_k": None}
    size = Counter(len(v) for v in groups.values()).most_common(1)[0][0]
    full = {g: v for g, v in groups.items() if len(v) == size}
    out: dict[str, Any] = {"group_size": size, "groups": len(full), "pass_at_k": {}}
    for k in _ks(size):
        per_group = [pass_at_k(size, sum(v), k) for v in full.values()]
        out["pass_at_k"][str(k)] = bootstrap_mean_ci(per_group, seed=seed)
    avg = [sum(v) / len(v) for v in full.values()]
    out["avg_at_k"] = {"k": size, **bootstrap_mean_ci(avg, seed=seed)}
    return out


def _metric_table(episodes: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    names: list[str] = list(HEADLINE_METRICS)
    for ep in episodes:
        for name, value in (ep.get("metrics") or {}).items():
            if name not in names and (value is None or isinstance(value, (int, float))):
                names.append(name)
    groups = [group_of(ep) for ep in episodes]
    table = {}
    for name in names:
        values = []
        for ep in episodes:
            value = (ep.get("metrics") or {}).get(name)
            values.append(float(value) if isinstance(value, (int, float)) else None)
        table[name] = bootstrap_mean_ci(values, groups, seed=seed)
    return table


def difficulty_of(episode: dict[str, Any]) -> str:
    """The episode's difficulty bucket (from the task's meta), or "unknown"."""
    meta = (episode.get("task") or {}).get("meta") or {}
    return str(meta.get("difficulty", "unknown"))


def summarize(
    episodes: list[dict[str, Any]],
    *,
    seed: int = 0,
    timing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run summary: overall and per difficulty/source/policy metrics, pass@k, failures."""
    summary: dict[str, Any] = {
        "episodes": len(episodes),
        "metric_help": HEADLINE_METRICS,
        "metrics": _metric_table(episodes, seed),
        **group_scores(episodes, seed=seed),
        "failures": dict(sorted(Counter(ep.get("failure", "unknown") for ep in episodes).items())),
    }
    for bucket_name, bucket_of in (
        ("by_difficulty", difficulty_of),
        ("by_source", lambda ep: str((ep.get("task") or {}).get("source") or "unknown")),
        ("by_policy", lambda ep: str(ep.get("policy") or "unknown")),
    ):
        buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ep in episodes:
            buckets[bucket_of(ep)].append(ep)
        summary[bucket_name] = {
            name: {
                "episodes": len(eps),
                "metrics": _metric_table(eps, seed),
                **{k: v for k, v in group_scores(eps, seed=seed).items() if k == "pass_at_k"},
            }
            for name, eps in sorted(buckets.items())
        }
    summary["timing"] = timing if timing is not None else episode_timing(episodes)
    return summary


def episode_timing(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The time split summed over stored episodes (policy share vs env and storage)."""
    totals: dict[str, float] = defaultdict(float)
    for ep in episodes:
        for name, value in (ep.get("timing") or {}).items():
            if isinstance(value, (int, float)):
                totals[name] += float(value)
    out: dict[str, Any] = {k: round(v, 6) for k, v in sorted(totals.items())}
    busy = totals.get("policy_s", 0.0) + totals.get("env_s", 0.0) + totals.get("record_s", 0.0)
    if busy > 0:
        out["policy_fraction"] = round(totals.get("policy_s", 0.0) / busy, 4)
    return out


def write_summary(
    run_dir: str | Path,
    episodes: list[dict[str, Any]],
    *,
    seed: int = 0,
    timing: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `summary.json` into a run directory (renamed into place) and return the summary.

    Args:
        timing: the run's summed session timing (`combine_sessions`); None sums the episodes'.
        extra: further top-level fields (a sharded run's shard progress).
    """
    run_dir = Path(run_dir)
    summary = {**summarize(episodes, seed=seed, timing=timing), **(extra or {})}
    tmp = run_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    tmp.replace(run_dir / "summary.json")
    return summary


def combine_sessions(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the run-level timing of every session of a (possibly resumed) run."""
    totals: dict[str, float] = defaultdict(float)
    for session in sessions:
        for name, value in session.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[name] += float(value)
    out: dict[str, Any] = {k: round(v, 6) for k, v in sorted(totals.items())}
    out["sessions"] = len(sessions)
    wall = totals.get("wall_s", 0.0)
    if wall > 0:
        out["policy_fraction_of_wall"] = round(totals.get("policy_s", 0.0) / wall, 4)
        out["outside_policy_fraction_of_wall"] = round(1.0 - totals.get("policy_s", 0.0) / wall, 4)
        out["episodes_per_s"] = round(totals.get("episodes", 0.0) / wall, 3)
    return out


def format_table(summary: dict[str, Any], names: list[str] | None = None) -> str:
    """A plain-text table of the headline metrics (mean [lo, hi])."""
    names = names or [
        "reward",
        "success",
        "count_accuracy",
        "count_abs_error",
        "answered",
        "enumeration_f1",
        "grounding_f1",
        "valid_call_rate",
        "calls",
    ]
    rows = []
    for name in names:
        entry = summary["metrics"].get(name)
        if not entry or entry["mean"] is None:
            continue
        lo, hi = entry["ci95"]
        rows.append(f"  {name:<18} {entry['mean']:8.3f}  [{lo:.3f}, {hi:.3f}]  n={entry['n']}")
    return "\n".join(rows)
