"""plot.png: each plotted metric against the varied factor, one line per hue, 95% CI bands.

A numeric x axis gets lines with shaded bands; a categorical one (filters, presentation modes)
gets points with error bars. matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxgym.studies.base import Study, StudyOutput


def _is_numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def draw_metric(
    ax: Any,
    rows: list[dict[str, Any]],
    x: str,
    hue: str | None,
    metric: str,
    log_x: bool = False,
) -> bool:
    """Draw `metric` against `x` on `ax`; False when no row has the metric."""
    if all(r.get(f"{metric}_mean") is None for r in rows):
        return False
    hues = list(dict.fromkeys(r.get(hue) for r in rows)) if hue else [None]
    xs_all = list(dict.fromkeys(r[x] for r in rows))
    numeric = _is_numeric(xs_all)
    position = {v: i for i, v in enumerate(xs_all)}
    width = 0.8 / max(1, len(hues))
    for k, h in enumerate(hues):
        mine = [r for r in rows if (hue is None or r.get(hue) == h)]
        mine = [r for r in mine if r.get(f"{metric}_mean") is not None]
        if not mine:
            continue
        if numeric:
            mine.sort(key=lambda r: r[x])
        label = f"{hue}={h}" if hue else None
        means = [r[f"{metric}_mean"] for r in mine]
        los = [r[f"{metric}_lo"] for r in mine]
        his = [r[f"{metric}_hi"] for r in mine]
        if numeric:
            xs = [r[x] for r in mine]
            (line,) = ax.plot(xs, means, marker="o", label=label)
            ax.fill_between(xs, los, his, alpha=0.2, color=line.get_color())
        else:
            xs = [position[r[x]] + (k - (len(hues) - 1) / 2) * width for r in mine]
            err = [[m - lo for m, lo in zip(means, los)], [hi - m for m, hi in zip(means, his)]]
            ax.errorbar(xs, means, yerr=err, fmt="o", capsize=4, label=label)
    if numeric and log_x and all(v > 0 for v in xs_all):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(xs_all), [f"{v:g}" for v in sorted(xs_all)])
        ax.minorticks_off()
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all], rotation=20)
        ax.set_xlim(-0.6, len(xs_all) - 0.4)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if hue and len(hues) > 1:
        ax.legend(fontsize=8)
    return True


def plot_study(
    path: Path, study: Study, rows: list[dict[str, Any]], model: dict[str, Any], output: StudyOutput
) -> None:
    """Write the study's plot to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if output.plot is not None:
        fig = plt.figure(figsize=(11, 4.5))
        output.plot(fig, rows)
    else:
        metrics = [
            m for m in study.plot_metrics if any(r.get(f"{m}_mean") is not None for r in rows)
        ]
        metrics = metrics or [study.metrics[0]]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            draw_metric(ax, rows, study.plot_x, study.plot_hue, metric, study.plot_log_x)
    name = Path(str(model.get("model") or "")).name or str(model.get("model"))
    adapter = f" + {Path(str(model['adapter'])).name}" if model.get("adapter") else ""
    fig.suptitle(f"{study.name}: {name}{adapter} (95% CI)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
