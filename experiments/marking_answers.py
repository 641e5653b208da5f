"""What each arm of a marking study answered, by true count: the share of scenes with each
answer (None: no answer), read from the study's examples.jsonl.

    python experiments/marking_answers.py runs/marking-jitter --json results/marking_answers_9d8ed7555b.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter, defaultdict
from pathlib import Path

from boxgym.provenance import provenance


def answers_by_count(examples: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm and true count, each answer's share of the scenes (answers as strings)."""
    seen: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for example in examples:
        seen[example["arm"], example["true_count"]][str(example["answer"])] += 1
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (arm, n), counts in sorted(seen.items()):
        total = sum(counts.values())
        out[arm][str(n)] = {a: round(c / total, 4) for a, c in counts.most_common()}
    return dict(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a marking study's --out folder")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    study = Path(args.study)
    results = json.loads((study / "results.json").read_text())
    with open(study / "examples.jsonl") as handle:
        examples = [json.loads(line) for line in handle if line.strip()]
    report = {
        **provenance(shlex.join(["python", *sys.argv])),
        "checkpoint": results["checkpoint"],
        "study": {k: results[k] for k in ("command", "commit", "date")},
        "answers_by_count": answers_by_count(examples),
    }
    Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
