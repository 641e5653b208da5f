"""The one runner every study shares: settings -> measure -> table with CIs -> four files.

results.csv    one row per condition: the factor values, n, and per metric
               `<metric>_mean`, `<metric>_lo`, `<metric>_hi` (95% bootstrap interval)
results.json   settings, model, timing, the same rows, the study's extra results and sections,
               and where it came from: command, commit, checkpoint key and date
plot.png       each plotted metric against the varied factor, with CI bands
report.md      what varied, what was fixed, model, adapter, seeds, table, plot, command
examples.jsonl one line per measured example (the raw material of the table)
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from boxgym.rollouts.metrics import bootstrap_mean_ci
from boxgym.studies.base import METRIC_HELP, Study, StudyOutput, resolve_settings

OUTPUT_FILES = ("results.csv", "results.json", "plot.png", "report.md")


def condition_key(record: dict[str, Any], factors: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(record.get(f) for f in factors)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def aggregate(
    records: list[dict[str, Any]], factors: tuple[str, ...], metrics: tuple[str, ...], seed: int = 0
) -> list[dict[str, Any]]:
    """One row per condition (in first-seen order): factor values, n, mean/lo/hi per metric.

    A metric that does not apply to a condition (every value None) has None mean and bounds.
    Records that carry `cluster` are resampled by cluster (e.g. the samples of one task).
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(condition_key(record, factors), []).append(record)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(factors, key))
        row["n"] = len(members)
        clusters = [m.get("cluster", i) for i, m in enumerate(members)]
        for metric in metrics:
            ci = bootstrap_mean_ci([_number(m.get(metric)) for m in members], clusters, seed=seed)
            row[f"{metric}_mean"] = ci["mean"]
            row[f"{metric}_lo"], row[f"{metric}_hi"] = ci["ci95"]
        rows.append(row)
    return sort_rows(rows, factors)


def sort_rows(rows: list[dict[str, Any]], factors: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows ordered factor by factor: numbers ascending, other values in first-seen order."""
    orders = {f: list(dict.fromkeys(r[f] for r in rows)) for f in factors}

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        out = []
        for f in factors:
            value = row[f]
            numeric = all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in orders[f]
            )
            out.append(value if numeric else orders[f].index(value))
        return tuple(out)

    return sorted(rows, key=key)


def columns(study: Study) -> list[str]:
    """The results.csv header."""
    cols = [*study.factors, "n"]
    for metric in study.metrics:
        cols += [f"{metric}_mean", f"{metric}_lo", f"{metric}_hi"]
    return cols


def majority_baselines(records: list[dict[str, Any]]) -> dict[str, float]:
    """`{"count_accuracy": share}`: the accuracy of always answering the most common true count
    of the measured examples (empty when the records carry no true count)."""
    counts = [r["true_count"] for r in records if isinstance(r.get("true_count"), int)]
    if not counts:
        return {}
    return {"count_accuracy": max(counts.count(c) for c in set(counts)) / len(counts)}


def write_csv(path: Path, study: Study, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(study))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns(study)})


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown_table(study: Study, rows: list[dict[str, Any]]) -> str:
    """The table as markdown: factor values, n, and `mean [lo, hi]` per metric that applies."""
    shown = [m for m in study.metrics if any(r.get(f"{m}_mean") is not None for r in rows)]
    head = [*study.factors, "n", *shown]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [_fmt(row[f]) for f in study.factors] + [str(row["n"])]
        for m in shown:
            mean = row.get(f"{m}_mean")
            cells.append(
                "–"
                if mean is None
                else f"{_fmt(mean)} [{_fmt(row[f'{m}_lo'])}, {_fmt(row[f'{m}_hi'])}]"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_report(
    path: Path,
    study: Study,
    settings: dict[str, Any],
    model: dict[str, Any],
    rows: list[dict[str, Any]],
    output: StudyOutput,
    command: str,
    seconds: float,
    origin: dict[str, Any] | None = None,
) -> None:
    origin = origin or {}
    fixed = {k: v for k, v in settings.items() if k not in study.factors}
    legend = "\n".join(
        f"- `{m}`: {METRIC_HELP.get(m, '')}"
        for m in study.metrics
        if any(r.get(f"{m}_mean") is not None for r in rows)
    )
    text = f"""# Study `{study.name}`

{study.question}

- varied: {", ".join(f"`{f}`" for f in study.factors)}
- fixed: {study.fixed_help or "everything else, as in the settings below"}
- model: `{model.get("model")}` (argument `{model.get("model_argument")}`), adapter: `{model.get("adapter")}`, device `{model.get("device")}`, dtype `{model.get("dtype")}`
- seeds: {_seed_text(settings)}
- examples: {sum(r["n"] for r in rows)} in {len(rows)} conditions; run time {seconds:.0f} s
- command: `{command}`
- commit `{origin.get("commit")}`, checkpoint `{origin.get("checkpoint")}`, date {origin.get("date")}

## Results (mean [95% bootstrap CI])

{markdown_table(study, rows)}

{legend}

![plot](plot.png)

{output.notes}

## Settings

```yaml
{settings_text(fixed)}
```
"""
    path.write_text(text, encoding="utf-8")


def settings_text(settings: dict[str, Any]) -> str:
    """One `key: value` line per setting (values as compact JSON)."""
    return "\n".join(f"{k}: {json.dumps(_json_safe(v))}" for k, v in settings.items())


def _seed_text(settings: dict[str, Any]) -> str:
    base = settings.get("seed_base")
    n = settings.get("n")
    if base is None:
        return "see settings"
    if n is None:
        return f"scene seeds from {base}"
    return f"scene seeds {base} .. {int(base) + int(n) - 1} (the same in every condition)"


def run_study(
    study: Study,
    lab: Any,
    out: str | Path,
    *,
    quick: bool = False,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Run `study` with `lab`'s model and write its files into `out`.

    Returns:
        The results.json content.
    """
    from boxgym.provenance import checkpoint_key, provenance
    from boxgym.studies.plots import plot_study

    settings = resolve_settings(study, quick, list(overrides or []), flags)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lab.out_dir = out  # where a study may keep bulky by-products (e.g. episodes)
    started = time.perf_counter()
    output = study.measure(lab, settings)
    seconds = time.perf_counter() - started
    if not output.records:
        raise ValueError(f"study {study.name!r} measured nothing: check its settings")
    rows = aggregate(output.records, study.factors, study.metrics)
    model = lab.describe()
    with (out / "examples.jsonl").open("w", encoding="utf-8") as handle:
        for record in output.records:
            handle.write(json.dumps(_json_safe(record), ensure_ascii=False) + "\n")
    write_csv(out / "results.csv", study, rows)
    baselines = majority_baselines(output.records)
    plot_study(out / "plot.png", study, rows, model, output, baselines)
    result = {
        "study": study.name,
        "question": study.question,
        "factors": list(study.factors),
        "metrics": list(study.metrics),
        "settings": settings,
        "quick": quick,
        "model": model,
        **provenance(command or None),
        "checkpoint": checkpoint_key(model.get("model")),
        "seconds": round(seconds, 2),
        "rows": rows,
        **({"majority_baselines": baselines} if baselines else {}),
        **({"extra": output.extra} if output.extra else {}),
        **({"notes": output.notes} if output.notes else {}),
    }
    clash = set(output.sections) & set(result)
    if clash:
        raise ValueError(f"study {study.name!r}: sections {sorted(clash)} clash with the runner's")
    result.update(output.sections)
    (out / "results.json").write_text(
        json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    origin = {k: result[k] for k in ("commit", "checkpoint", "date")}
    write_report(out / "report.md", study, settings, model, rows, output, command, seconds, origin)
    return result
