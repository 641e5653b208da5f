"""The standard study plot: units on every axis, the whole [0, 1] for shares, the majority line
on accuracy, and the legend below the panels, off the data."""

from __future__ import annotations

import pytest

from boxgym.studies import load_study
from boxgym.studies.base import StudyOutput
from boxgym.studies.plots import AXIS_LABELS, study_figure


def rows() -> list[dict]:
    out = []
    for size in (0.5, 1, 2):
        for grid, acc in (("aligned", 0.61), ("random", 0.63)):
            out.append(
                {
                    "object_size": size,
                    "grid": grid,
                    "n": 40,
                    "count_accuracy_mean": acc,
                    "count_accuracy_lo": acc - 0.1,
                    "count_accuracy_hi": acc + 0.1,
                    "count_abs_error_mean": 1.5,
                    "count_abs_error_lo": 1.0,
                    "count_abs_error_hi": 2.0,
                }
            )
    return out


@pytest.mark.slow
def test_axes_have_units_shares_span_0_to_1_and_the_legend_sits_below():
    import matplotlib.pyplot as plt

    study = load_study("patch-grid")
    fig = study_figure(
        study, rows(), {"model": "m"}, StudyOutput(records=[]), {"count_accuracy": 0.3}
    )
    try:
        accuracy, error = fig.axes[:2]
        assert (
            accuracy.get_ylim()[0] <= 0 and accuracy.get_ylim()[1] >= 1
        )  # 0.61 vs 0.63 looks close
        assert error.get_ylim()[0] == 0
        for ax in (accuracy, error):
            assert ax.get_xlabel() == AXIS_LABELS["object_size"]
            assert "(" in ax.get_ylabel()  # a unit
            assert ax.get_legend() is None
        majority = [line for line in accuracy.get_lines() if line.get_linestyle() == ":"]
        assert [line.get_ydata()[0] for line in majority] == [0.3]
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert {"aligned", "random", "always the most common count (0.30)"} <= set(labels)
        fig.canvas.draw()
        legend_top = legend.get_window_extent().y1
        assert all(legend_top <= ax.get_window_extent().y0 for ax in fig.axes)
    finally:
        plt.close(fig)
