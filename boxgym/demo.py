"""`python -m boxgym.demo --out runs/demo` (what `make demo` runs).

Scripted episodes of the oracle, noisy and random policies over the three scene families, one run
directory per policy (`<out>/<policy>/`, each with its episodes, summary and page), plus one page
over all of them (`<out>/index.html`, filterable by policy). Prints a table of the metrics and
where the pages are. No model and no torch: it runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

from boxgym.choices import DIFFICULTY_NAMES

POLICIES = ("oracle", "noisy", "random")
COLUMNS = (
    ("reward", "reward"),
    ("success", "success"),
    ("count_accuracy", "count acc"),
    ("count_abs_error", "count err"),
    ("enumeration_f1", "enum F1"),
    ("grounding_f1", "ground F1"),
    ("valid_call_rate", "valid calls"),
    ("calls", "calls/ep"),
)


def metrics_table(summaries: dict[str, dict]) -> str:
    """Policies as rows, headline metrics (mean) as columns, plus max reward and failures."""
    header = f"{'policy':<8}" + "".join(f"{title:>12}" for _, title in COLUMNS) + "   failures"
    lines = [header, "-" * len(header)]
    for policy, summary in summaries.items():
        cells = []
        for name, _ in COLUMNS:
            mean = summary["metrics"].get(name, {}).get("mean")
            cells.append(f"{mean:>12.3f}" if mean is not None else f"{'-':>12}")
        failures = ", ".join(f"{k} {v}" for k, v in summary["failures"].items())
        lines.append(f"{policy:<8}" + "".join(cells) + f"   {failures}")
    return "\n".join(lines)


def run_demo(
    out: Path, *, n: int = 12, group_size: int = 2, seed: int = 0, difficulty: str = "easy"
) -> dict[str, dict]:
    """Run the three scripted policies and write the pages; returns each policy's summary."""
    from boxgym.rollouts.commands import main as run_verb
    from boxgym.rollouts.metrics import summarize
    from boxgym.rollouts.store import read_episodes
    from boxgym.rollouts.viewer import write_index

    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    combined: list[dict] = []
    for policy in POLICIES:
        run_dir = out / policy
        argv = [
            "episodes", "--scene", "all", "--policy", policy, "--n", str(n), "--group-size", str(group_size),
            "--seed", str(seed), "--difficulty", difficulty, "--out", str(run_dir), "--overwrite", "--no-progress",
        ]  # fmt: skip
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            code = run_verb(argv)
        if code != 0:
            raise RuntimeError(f"the {policy} run failed (exit {code}):\n{quiet.getvalue()}")
        episodes = read_episodes(run_dir).episodes
        summaries[policy] = summarize(episodes, seed=seed)
        combined.extend({**ep, "page_base": f"{policy}/"} for ep in episodes)
    summary = summarize(combined, seed=seed)
    write_index(
        out,
        combined,
        summary,
        title=f"boxgym demo: scripted policies over screens, shapes and clutter ({difficulty})",
    )
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m boxgym.demo", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--out", default="runs/demo", help="output directory (replaced if it holds a demo)"
    )
    parser.add_argument(
        "--n", type=int, default=12, help="tasks per policy (spread over the three families)"
    )
    parser.add_argument("--group-size", type=int, default=2, help="samples per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", default="easy", choices=DIFFICULTY_NAMES)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    try:
        summaries = run_demo(
            out, n=args.n, group_size=args.group_size, seed=args.seed, difficulty=args.difficulty
        )
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    episodes = sum(s["episodes"] for s in summaries.values())
    print(f"boxgym demo: {episodes} scripted episodes in {time.perf_counter() - start:.1f}s "
          f"({args.n} tasks x {args.group_size} samples per policy; means over episodes)\n")  # fmt: skip
    print(metrics_table(summaries))
    print(f"\npage (all policies): {(out / 'index.html').resolve()}")
    for policy in summaries:
        print(f"  {policy:<7} {(out / policy / 'index.html').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
