"""Summary statistics: bootstrap intervals, pass@k, buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boxgym.rollouts.metrics import bootstrap_mean_ci, pass_at_k, summarize


def episode(
    task: str, sample: int, success: float, reward: float, difficulty: str = "easy"
) -> dict:
    return {
        "key": {"task_id": task, "sample": sample},
        "task": {"meta": {"difficulty": difficulty}, "source": "screens"},
        "policy": "noisy",
        "metrics": {
            "success": success,
            "reward": reward,
            "count_accuracy": success,
            "grounding_f1": None,
        },
        "failure": "none" if success else "wrong_count",
        "timing": {"policy_s": 0.1, "env_s": 0.3},
    }


def test_bootstrap_ci_contains_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_mean_ci(rng.normal(1.0, 1.0, 20).tolist(), seed=1)
    large = bootstrap_mean_ci(rng.normal(1.0, 1.0, 2000).tolist(), seed=1)
    for ci in (small, large):
        lo, hi = ci["ci95"]
        assert lo <= ci["mean"] <= hi
    assert (large["ci95"][1] - large["ci95"][0]) < (small["ci95"][1] - small["ci95"][0]) / 4
    assert large["ci95"][0] < 1.0 < large["ci95"][1]
    assert bootstrap_mean_ci([1.0, 2.0, 3.0], seed=3) == bootstrap_mean_ci([1.0, 2.0, 3.0], seed=3)


def test_bootstrap_ignores_none_and_handles_degenerate() -> None:
    assert bootstrap_mean_ci([None, None])["mean"] is None
    one = bootstrap_mean_ci([2.0, None])
    assert one["mean"] == 2.0 and one["ci95"] == [2.0, 2.0] and one["n"] == 1
    const = bootstrap_mean_ci([1.0] * 10)
    assert const["ci95"] == [1.0, 1.0]


def test_cluster_bootstrap_is_wider_for_correlated_groups() -> None:
    # 20 groups of 8 identical samples: effectively 20 observations, not 160.
    values = [float(g % 2) for g in range(20) for _ in range(8)]
    groups = [g for g in range(20) for _ in range(8)]
    clustered = bootstrap_mean_ci(values, groups, seed=0)
    naive = bootstrap_mean_ci(values, seed=0)
    width = lambda c: c["ci95"][1] - c["ci95"][0]  # noqa: E731
    assert width(clustered) > 1.8 * width(naive)


def test_pass_at_k_matches_the_combinatorial_definition() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_summary_pass_at_k_avg_buckets_and_failures() -> None:
    eps = []
    for t in range(10):
        for s in range(4):
            ok = float(s < t % 4)  # group t has t%4 successes out of 4
            eps.append(episode(f"t{t}", s, ok, 2.0 * ok, "easy" if t < 5 else "hard"))
    summary = summarize(eps, seed=0)
    assert summary["episodes"] == 40 and summary["group_size"] == 4 and summary["groups"] == 10
    expected_p1 = np.mean([(t % 4) / 4 for t in range(10)])
    assert summary["pass_at_k"]["1"]["mean"] == pytest.approx(expected_p1)
    assert summary["avg_at_k"]["mean"] == pytest.approx(expected_p1)
    expected_p4 = np.mean([1.0 if t % 4 else 0.0 for t in range(10)])
    assert summary["pass_at_k"]["4"]["mean"] == pytest.approx(expected_p4)
    assert (
        summary["pass_at_k"]["4"]["mean"]
        >= summary["pass_at_k"]["2"]["mean"]
        >= summary["pass_at_k"]["1"]["mean"]
    )
    assert set(summary["by_difficulty"]) == {"easy", "hard"}
    assert summary["by_difficulty"]["easy"]["episodes"] == 20
    assert summary["metrics"]["grounding_f1"]["mean"] is None
    successes = sum(t % 4 for t in range(10))
    assert summary["failures"] == {"none": successes, "wrong_count": 40 - successes}
    assert summary["timing"]["policy_fraction"] == pytest.approx(0.25)
    lo, hi = summary["metrics"]["reward"]["ci95"]
    assert 0 <= lo <= summary["metrics"]["reward"]["mean"] <= hi <= 2


def test_bootstrap_draws_depend_only_on_seed_and_clusters_whatever_was_asked_before() -> None:
    from boxgym.rollouts import metrics

    rng = np.random.default_rng(5)
    sums, ones = rng.random((40, 2)), np.ones((40, 2))
    first = metrics.bootstrap_ratios(sums, ones, seed=0)
    metrics.bootstrap_ratios(rng.random((41, 1)), np.ones((41, 1)), seed=0)  # other clusters
    metrics.bootstrap_ratios(sums, ones, seed=1)  # another seed
    assert metrics.bootstrap_ratios(sums, ones, seed=0) == first
    # One column at a time draws the same resamples as both at once.
    alone = [metrics.bootstrap_ratios(sums[:, [m]], ones[:, [m]], seed=0)[0] for m in range(2)]
    for a, b in zip(alone, first, strict=True):
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-12)
        assert a["ci95"] == pytest.approx(b["ci95"], abs=1e-12)
    # Past the single-chunk size the resamples come in chunks (and are not kept).
    big = 2 * metrics.BOOTSTRAP_CHUNK_DRAWS // metrics.BOOTSTRAP_RESAMPLES + 3
    chunked = metrics.bootstrap_ratios(np.arange(big, dtype=float)[:, None], np.ones((big, 1)))
    lo, hi = chunked[0]["ci95"]
    assert lo < (big - 1) / 2 < hi


def test_pass_at_k_of_one_bootstrap_equals_one_bootstrap_per_k() -> None:
    from boxgym.rollouts.metrics import bootstrap_ratios

    rng = np.random.default_rng(2)
    episodes = [
        episode(f"t{t}", s, float(rng.random() < 0.4 + 0.05 * (t % 5)), 1.0)
        for t in range(30)
        for s in range(4)
    ]
    summary = summarize(episodes)
    wins = np.array(
        [sum(e["metrics"]["success"] for e in episodes[4 * t : 4 * t + 4]) for t in range(30)]
    )
    for k in ("1", "2", "4"):
        table = np.array([pass_at_k(4, c, int(k)) for c in range(5)])
        alone = bootstrap_ratios(table[wins.astype(int)][:, None], np.ones((30, 1)))[0]
        assert summary["pass_at_k"][k]["ci95"] == pytest.approx(alone["ci95"], abs=1e-12)
        assert summary["pass_at_k"][k]["mean"] == pytest.approx(alone["mean"], abs=1e-12)
    avg = bootstrap_ratios((wins / 4)[:, None], np.ones((30, 1)))[0]
    assert summary["avg_at_k"]["ci95"] == pytest.approx(avg["ci95"], abs=1e-12)
    assert summary["by_difficulty"]["easy"]["pass_at_k"] == summary["pass_at_k"]
