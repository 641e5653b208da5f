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

import functools
import json
import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator
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
# Most cluster draws held at once by the bootstrap (the resamples are made in chunks of rows).
BOOTSTRAP_CHUNK_DRAWS = 2**21


def bootstrap_ratios(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Cluster-bootstrap intervals of sum/count means for many metrics at once.

    `sums` and `counts` are (clusters, metrics): each cluster's total and number of values per
    metric. Clusters are resampled with replacement, the same draws for every metric; each
    resample's mean is its clusters' summed totals over their summed counts. The draws become
    per-cluster weights, `resamples` rows of them in chunks of `BOOTSTRAP_CHUNK_DRAWS`, so memory
    stays bounded and the work is one matrix product per chunk: O(resamples x clusters x
    metrics), linear in the number of episodes.

    Returns one `{"mean", "ci95": [lo, hi], "n"}` per metric (None where it has no values; a
    point interval where only one cluster has values).
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    clusters, width = sums.shape
    total_s, total_c = sums.sum(axis=0), counts.sum(axis=0)
    clusters_with = (counts > 0).sum(axis=0)
    need = [m for m in range(width) if total_c[m] > 0 and clusters_with[m] > 1]
    boot = np.empty((resamples, len(need)))
    if need:
        s, c = sums[:, need], counts[:, need]
        for begin, weights in _bootstrap_weights(clusters, resamples, seed):
            with np.errstate(invalid="ignore", divide="ignore"):
                boot[begin : begin + len(weights)] = (weights @ s) / (weights @ c)
    alpha = (1.0 - level) / 2.0
    out: list[dict[str, Any]] = []
    for m in range(width):
        n = int(total_c[m])
        if n == 0:
            out.append({"mean": None, "ci95": [None, None], "n": 0})
            continue
        mean = float(total_s[m] / total_c[m])
        if clusters_with[m] <= 1:
            out.append({"mean": mean, "ci95": [mean, mean], "n": n})
            continue
        lo, hi = np.nanquantile(boot[:, need.index(m)], [alpha, 1.0 - alpha])
        out.append({"mean": mean, "ci95": [float(lo), float(hi)], "n": n})
    return out


def _bootstrap_weights(
    clusters: int, resamples: int, seed: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, per-cluster weights) chunks of the bootstrap's resamples, `resamples` rows of
    `clusters` draws with replacement from `default_rng(seed)`, at most `BOOTSTRAP_CHUNK_DRAWS`
    draws a chunk. A run's summary asks for the same draws many times (every metric table and
    pass@k of one set of groups), so the last single-chunk set is kept and handed out again."""
    rows = max(1, BOOTSTRAP_CHUNK_DRAWS // clusters)
    if rows >= resamples:
        yield 0, _single_chunk_weights(clusters, resamples, seed)
        return
    rng = np.random.default_rng(seed)
    for begin in range(0, resamples, rows):
        yield begin, _draw_weights(rng, clusters, min(rows, resamples - begin))


@functools.lru_cache(maxsize=1)
def _single_chunk_weights(clusters: int, resamples: int, seed: int) -> np.ndarray:
    weights = _draw_weights(np.random.default_rng(seed), clusters, resamples)
    weights.flags.writeable = False
    return weights


def _draw_weights(rng: np.random.Generator, clusters: int, rows: int) -> np.ndarray:
    draws = rng.integers(0, clusters, size=(rows, clusters))
    draws += (np.arange(rows) * clusters)[:, None]
    counts = np.bincount(draws.ravel(), minlength=rows * clusters)
    return counts.reshape(rows, clusters).astype(np.float64)


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
    if not sums:
        return {"mean": None, "ci95": [None, None], "n": 0}
    s = np.array([[sums[k]] for k in sums])
    c = np.array([[counts[k]] for k in sums], dtype=np.float64)
    return bootstrap_ratios(s, c, seed=seed, resamples=resamples, level=level)[0]


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


def difficulty_of(episode: dict[str, Any]) -> str:
    """The episode's difficulty bucket (from the task's meta), or "unknown"."""
    meta = (episode.get("task") or {}).get("meta") or {}
    return str(meta.get("difficulty", "unknown"))


def source_of(episode: dict[str, Any]) -> str:
    """The episode's task source (scene family or dataset), or "unknown"."""
    return str((episode.get("task") or {}).get("source") or "unknown")


def policy_of(episode: dict[str, Any]) -> str:
    return str(episode.get("policy") or "unknown")


BUCKETS = {"by_difficulty": difficulty_of, "by_source": source_of, "by_policy": policy_of}


class EpisodeColumns:
    """What a summary needs from each episode, as columns: records are read once, not kept.

    Per episode: every numeric metric (NaN where missing or not a number), its group, its
    difficulty/source/policy bucket and its failure; timings are summed. 100,000 episodes take
    a few tens of MB, so `boxgym view` and a resumed run summarise any run in bounded memory.
    """

    def __init__(self) -> None:
        self.n = 0
        self.names: list[str] = list(HEADLINE_METRICS)  # headline first, then as first seen
        self._values: dict[str, array] = {name: array("d") for name in self.names}
        self._codes: dict[str, tuple[array, dict[str, int]]] = {
            key: (array("l"), {}) for key in ("group", "failure", *BUCKETS)
        }
        self._timing: dict[str, float] = defaultdict(float)

    def add(self, episode: dict[str, Any]) -> None:
        """Add one episode record (or any dict with its key, policy, task, metrics, failure)."""
        metrics = episode.get("metrics") or {}
        for name, value in metrics.items():
            if name not in self._values and (value is None or isinstance(value, (int, float))):
                self.names.append(name)
                self._values[name] = array("d", [math.nan]) * self.n
        for name, column in self._values.items():
            value = metrics.get(name)
            column.append(float(value) if isinstance(value, (int, float)) else math.nan)
        labels = {
            "group": group_of(episode),
            "failure": str(episode.get("failure", "unknown")),
            **{key: bucket_of(episode) for key, bucket_of in BUCKETS.items()},
        }
        for key, label in labels.items():
            codes, names = self._codes[key]
            codes.append(names.setdefault(label, len(names)))
        for name, value in (episode.get("timing") or {}).items():
            if isinstance(value, (int, float)):
                self._timing[name] += float(value)
        self.n += 1

    def values(self, name: str) -> np.ndarray:
        return np.array(self._values[name], dtype=np.float64)

    def codes(self, key: str) -> tuple[np.ndarray, list[str]]:
        """Integer codes of a label column ("group", "failure" or a bucket) and their labels."""
        codes, names = self._codes[key]
        return np.array(codes, dtype=np.int64), list(names)

    def timing(self) -> dict[str, Any]:
        """The time split summed over the episodes (policy share vs env and storage)."""
        totals = self._timing
        out: dict[str, Any] = {k: round(v, 6) for k, v in sorted(totals.items())}
        busy = sum(totals.get(k, 0.0) for k in ("policy_s", "env_s", "record_s"))
        if busy > 0:
            out["policy_fraction"] = round(totals.get("policy_s", 0.0) / busy, 4)
        return out


def _metric_table(
    columns: EpisodeColumns, rows: np.ndarray, groups: np.ndarray, seed: int
) -> dict[str, Any]:
    """Each metric's mean and cluster-bootstrap interval over episodes `rows` (groups: their
    group codes); non-headline metrics without a value in these rows are left out."""
    _, inverse = np.unique(groups, return_inverse=True)
    clusters = int(inverse.max()) + 1 if len(inverse) else 0
    names, sums, counts = [], [], []
    for name in columns.names:
        values = columns.values(name)[rows]
        valid = ~np.isnan(values)
        if name not in HEADLINE_METRICS and not valid.any():
            continue
        names.append(name)
        sums.append(np.bincount(inverse[valid], weights=values[valid], minlength=clusters))
        counts.append(np.bincount(inverse[valid], minlength=clusters).astype(np.float64))
    if clusters == 0:
        return {name: {"mean": None, "ci95": [None, None], "n": 0} for name in names}
    results = bootstrap_ratios(np.stack(sums, 1), np.stack(counts, 1), seed=seed)
    return dict(zip(names, results))


def _group_scores(
    columns: EpisodeColumns,
    rows: np.ndarray,
    groups: np.ndarray,
    seed: int,
    *,
    with_avg: bool = True,
) -> dict[str, Any]:
    """pass@k (and Avg@k unless `with_avg` is False) over the full-size groups among `rows`,
    every k's interval from one bootstrap (the same draws for each, as separate calls with one
    seed would make)."""
    success = columns.values("success")[rows]
    valid = ~np.isnan(success)
    if not valid.any():
        return {"group_size": 0, "groups": 0, "pass_at_k": {}, "avg_at_k": None}
    _, inverse = np.unique(groups[valid], return_inverse=True)
    sizes = np.bincount(inverse)
    wins = np.bincount(inverse, weights=(success[valid] != 0).astype(np.float64))
    size = int(np.bincount(sizes).argmax())  # the most common group size (smallest on ties)
    full = sizes == size
    c = wins[full].astype(np.int64)
    out: dict[str, Any] = {"group_size": size, "groups": int(full.sum()), "pass_at_k": {}}
    ks = _ks(size)
    scores = [np.array([pass_at_k(size, j, k) for j in range(size + 1)])[c] for k in ks]
    if with_avg:
        scores.append(c / size)
    results = bootstrap_ratios(np.stack(scores, 1), np.ones((len(c), len(scores))), seed=seed)
    out["pass_at_k"] = {str(k): result for k, result in zip(ks, results)}
    if with_avg:
        out["avg_at_k"] = {"k": size, **results[-1]}
    return out


def group_scores(episodes: Iterable[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """pass@k and Avg@k over the groups (episodes sharing policy and task), with bootstrap intervals.

    Only groups with the run's full group size count, so a partial run does not skew pass@k.
    """
    columns = EpisodeColumns()
    for episode in episodes:
        columns.add(episode)
    groups, _ = columns.codes("group")
    return _group_scores(columns, np.arange(columns.n), groups, seed)


def summarize(
    episodes: Iterable[dict[str, Any]] | EpisodeColumns,
    *,
    seed: int = 0,
    timing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run summary: overall and per difficulty/source/policy metrics, pass@k, failures.

    `episodes` may be records (read once, in any iterable) or an `EpisodeColumns` filled as
    the records went by.
    """
    if isinstance(episodes, EpisodeColumns):
        columns = episodes
    else:
        columns = EpisodeColumns()
        for episode in episodes:
            columns.add(episode)
    groups, _ = columns.codes("group")
    every = np.arange(columns.n)
    failure_codes, failure_names = columns.codes("failure")
    failure_counts = np.bincount(failure_codes, minlength=len(failure_names))
    summary: dict[str, Any] = {
        "episodes": columns.n,
        "metric_help": HEADLINE_METRICS,
        "metrics": _metric_table(columns, every, groups, seed),
        **_group_scores(columns, every, groups, seed),
        "failures": {
            name: int(failure_counts[i])
            for i, name in sorted(enumerate(failure_names), key=lambda x: x[1])
        },
    }
    for bucket_name in BUCKETS:
        codes, labels = columns.codes(bucket_name)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
        entries = {}
        for i, label in enumerate(labels):
            rows = np.sort(order[bounds[i] : bounds[i + 1]])
            entries[label] = {
                "episodes": len(rows),
                "metrics": _metric_table(columns, rows, groups[rows], seed),
                "pass_at_k": _group_scores(columns, rows, groups[rows], seed, with_avg=False)[
                    "pass_at_k"
                ],
            }
        summary[bucket_name] = dict(sorted(entries.items()))
    summary["timing"] = timing if timing is not None else columns.timing()
    return summary


def episode_timing(episodes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The time split summed over stored episodes (policy share vs env and storage)."""
    columns = EpisodeColumns()
    for episode in episodes:
        columns.add(episode)
    return columns.timing()


def write_summary(
    run_dir: str | Path,
    episodes: Iterable[dict[str, Any]] | EpisodeColumns,
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
