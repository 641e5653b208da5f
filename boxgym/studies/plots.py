"""plot.png: each plotted metric against the varied factor, one line per hue, 95% CI bands.

A numeric x axis gets lines with shaded bands; a categorical one (filters, presentation modes)
gets points with error bars. Every axis names its quantity and unit; a metric bounded by 0 and 1
(accuracies, shares, F1) is drawn on the whole [0, 1] range, so a small difference looks small;
an accuracy panel carries the majority line (always answering the most common true count) where
the runner knows it; the legends sit below the panels, off the data. matplotlib runs headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boxgym.studies.base import Study, StudyOutput

# Metrics that are shares or scores in [0, 1]: their axis always spans [0, 1].
UNIT_INTERVAL = {
    "count_accuracy",
    "enumeration_f1",
    "grounding_f1",
    "answered",
    "objects_crossing",
    "valid_call_rate",
    "probe_accuracy",
    "majority_accuracy",
}
# Metrics whose majority line the runner supplies (always answering the most common count).
ACCURACIES = {"count_accuracy"}

# Axis labels with units, for metrics and factors; a name not here is written as it is.
AXIS_LABELS: dict[str, str] = {
    "count_accuracy": "count accuracy (share of scenes)",
    "count_abs_error": "|answer - true count| (objects)",
    "count_rel_error": "|answer - true| / true (share)",
    "enumeration_f1": "enumeration F1 (0-1)",
    "grounding_f1": "grounding F1 at IoU 0.5 (0-1)",
    "answered": "answered (share of scenes)",
    "answer_tokens": "reply length (tokens)",
    "image_tokens": "image tokens (after the 2x2 merge)",
    "objects_crossing": "objects crossing a 28-px line (share)",
    "object_side_patches": "object side (28-px patches)",
    "reward": "env reward (per episode)",
    "valid_call_rate": "valid tool calls (share of calls)",
    "tool_calls_per_episode": "tool calls (per episode)",
    "bits_per_token": "surprisal (bits per token)",
    "bits_per_example": "surprisal (bits per example)",
    "completion_tokens": "completion (tokens per example)",
    "answer_bits": "answer surprisal (bits)",
    "probe_accuracy": "probe accuracy (share of held-out scenes)",
    "probe_abs_error": "|probe - true count| (objects)",
    "majority_accuracy": "majority accuracy (share)",
    "object_size": "object size (28-px patches)",
    "grid": "placement on the 28-px grid",
    "tokens": "image tokens (after the 2x2 merge)",
    "filter": "resampling filter",
    "angle": "rotation (degrees)",
    "mode": "rotation mode",
    "true_count": "true count (objects)",
    "depth": "stage (vision tower, merger, language-model layer)",
    "draw_box_returns": "what draw_box returns",
    "source": "SFT source",
    "stage": "training stage",
    "arm": "arm",
}


def axis_label(name: str) -> str:
    return AXIS_LABELS.get(name, name)


def _is_numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def draw_metric(
    ax: Any,
    rows: list[dict[str, Any]],
    x: str,
    hue: str | None,
    metric: str,
    log_x: bool = False,
    baseline: float | None = None,
) -> bool:
    """Draw `metric` against `x` on `ax`; False when no row has the metric.

    `baseline`, when given, is drawn as a dotted line: the majority answer's accuracy.
    """
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
        label = str(h) if hue else None
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
    if baseline is not None:
        ax.axhline(
            baseline,
            color="grey",
            linestyle=":",
            label=f"always the most common count ({baseline:.2f})",
        )
    if numeric and log_x and all(v > 0 for v in xs_all):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(xs_all), [f"{v:g}" for v in sorted(xs_all)])
        ax.minorticks_off()
    elif numeric and all(isinstance(v, int) for v in xs_all) and len(xs_all) <= 20:
        ax.set_xticks(sorted(xs_all))
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all], rotation=20)
        ax.set_xlim(-0.6, len(xs_all) - 0.4)
    fix_y_range(ax, metric)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(metric))
    ax.grid(alpha=0.3)
    return True


def fix_y_range(ax: Any, metric: str) -> None:
    """[0, 1] for a share or score; from 0 for an error, a count or a size."""
    if metric in UNIT_INTERVAL:
        ax.set_ylim(-0.02, 1.02)
    elif metric != "reward":
        top = max(ax.get_ylim()[1], 0.0)
        ax.set_ylim(0, top * 1.08 or 1.0)


def legends_below(fig: Any, title: str | None = None) -> None:
    """One legend for the whole figure, below its panels: every labelled line, once."""
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                handles.setdefault(label, handle)
    if not handles:
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        return
    longest = max(len(label) for label in handles)
    fits = max(1, int(fig.get_figwidth() * 72 / (5 * longest + 30)))
    columns = min(len(handles), fits)
    rows = -(-len(handles) // columns) + (1 if title else 0)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=columns,
        fontsize=8,
        frameon=False,
        title=title,
        title_fontsize=8,
    )
    legend_inches = 0.1 + 0.19 * rows
    fig.set_figheight(fig.get_figheight() + legend_inches)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 0.94))


def study_figure(
    study: Study,
    rows: list[dict[str, Any]],
    model: dict[str, Any],
    output: StudyOutput,
    baselines: dict[str, float] | None = None,
) -> Any:
    """The study's figure; `baselines` maps an accuracy metric to its majority line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baselines = baselines or {}
    if output.plot is not None:
        fig = plt.figure(figsize=(11, 5))
        output.plot(fig, rows)
    else:
        metrics = [
            m for m in study.plot_metrics if any(r.get(f"{m}_mean") is not None for r in rows)
        ]
        metrics = metrics or [study.metrics[0]]
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(max(8.0, 5.2 * len(metrics)), 4.8), squeeze=False
        )
        for ax, metric in zip(axes[0], metrics):
            baseline = baselines.get(metric) if metric in ACCURACIES else None
            draw_metric(ax, rows, study.plot_x, study.plot_hue, metric, study.plot_log_x, baseline)
    name = Path(str(model.get("model") or "")).name or str(model.get("model"))
    adapter = f" + {Path(str(model['adapter'])).name}" if model.get("adapter") else ""
    fig.suptitle(f"{study.name}: {name}{adapter} (95% CI)", fontsize=11)
    legends_below(fig, axis_label(study.plot_hue) if study.plot_hue else None)
    return fig


def plot_study(
    path: Path,
    study: Study,
    rows: list[dict[str, Any]],
    model: dict[str, Any],
    output: StudyOutput,
    baselines: dict[str, float] | None = None,
) -> None:
    """Write the study's figure to `path`."""
    import matplotlib.pyplot as plt

    fig = study_figure(study, rows, model, output, baselines)
    fig.savefig(path, dpi=110)
    plt.close(fig)
