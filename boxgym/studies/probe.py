"""`probe`: where the count lives. Linear probes on hidden states, stage by stage.

The model reads each held-out scene with the counting question (one forward pass, no
generation). At every stage the hidden states are mean-pooled:

- `vision`: the vision tower's last block, before the merger, over the image's 14-px patches;
- `merger`: after the merger (the 2x2 merge and projection), over the image tokens;
- `layer_i`: the language model's hidden state after layer i (i = 0 is the embeddings it reads,
  where the image tokens hold the merger's output) at the image tokens (`image`) and at the last
  prompt token (`last`, where the answer is about to be generated).

For each stage a multinomial logistic regression (scikit-learn, standardised features) is fitted
on a training split and scored on a held-out split (stratified by the true count; the same split
for every stage). Accuracy is per held-out example with a 95% bootstrap interval; the majority
class of the training split is the baseline. After "Counting to Four is still a Chore for VLMs"
(2026), which finds counting evidence strongest at the modality projection.
"""

from __future__ import annotations

from typing import Any

from boxgym.studies.base import Study, StudyOutput
from boxgym.studies.direct import DIRECT_DEFAULTS, conversation, scene_tasks


def stage_parts(stage: str) -> tuple[int, str]:
    """(depth, position) of a stage name: vision -2, merger -1, layer_i i."""
    if stage == "vision":
        return -2, "image"
    if stage == "merger":
        return -1, "image"
    _, index, position = stage.split("_")
    return int(index), position


def fit_probe(
    features: Any, labels: Any, train: Any, test: Any, c: float, seed: int
) -> tuple[Any, Any]:
    """Fit a standardised logistic regression on `train` rows; predictions for `test` rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed)
    )
    probe.fit(features[train], labels[train])
    return probe.predict(features[test]), probe


def split(labels: Any, test_fraction: float, seed: int) -> tuple[Any, Any]:
    """Train and test indices, stratified by label when every label has two examples."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    counts = np.bincount(labels - labels.min())
    stratify = labels if counts[counts > 0].min() >= 2 else None
    return train_test_split(index, test_size=test_fraction, random_state=seed, stratify=stratify)


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    import numpy as np

    fraction = float(settings["test_fraction"])
    if not 0 < fraction < 1:
        raise ValueError(f"setting test_fraction must lie in (0, 1), got {fraction}")
    tasks = scene_tasks(settings)
    labels = np.array([t.count for t in tasks])
    if len(set(labels.tolist())) < 2:
        raise ValueError("every scene has the same count: widen knobs.count so a probe has classes")
    features = lab.hidden_features([conversation(t.images[0], settings["question"]) for t in tasks])
    train, test = split(labels, fraction, int(settings["seed"]))
    values, counts = np.unique(labels[train], return_counts=True)
    majority = int(values[counts.argmax()])
    records = []
    for stage, matrix in features.items():
        predicted, _ = fit_probe(
            matrix, labels, train, test, float(settings["c"]), int(settings["seed"])
        )
        depth, position = stage_parts(stage)
        for i, guess in zip(test, predicted):
            records.append(
                {
                    "depth": depth,
                    "stage": stage,
                    "position": position,
                    "probe_accuracy": float(guess == labels[i]),
                    "probe_abs_error": float(abs(int(guess) - int(labels[i]))),
                    "majority_accuracy": float(labels[i] == majority),
                    "true_count": int(labels[i]),
                    "seed": tasks[i].meta.get("seed"),
                }
            )
    baseline = float(np.mean(labels[test] == majority))
    extra = {
        "train_examples": len(train),
        "test_examples": len(test),
        "majority_class": majority,
        "majority_accuracy": baseline,
        "feature_widths": {k: int(v.shape[1]) for k, v in features.items()},
    }
    notes = (
        f"Held-out split: {len(test)} of {len(labels)} scenes (train {len(train)}); majority "
        f"class {majority} scores {baseline:.3f} on it. Depth -2 is the vision tower's output, "
        "-1 the merger's, i >= 0 the language model after layer i (0: its input embeddings)."
    )

    def plot(fig: Any, rows: list[dict[str, Any]]) -> None:
        from boxgym.studies.plots import draw_metric

        ax = fig.add_subplot(1, 1, 1)
        draw_metric(ax, rows, "depth", "position", "probe_accuracy")
        ax.axhline(
            baseline,
            color="grey",
            linestyle=":",
            label=f"always the most common count ({baseline:.2f})",
        )
        ax.set_xticks(
            sorted({r["depth"] for r in rows}),
            [
                {-2: "vision", -1: "merger"}.get(d, f"L{d}")
                for d in sorted({r["depth"] for r in rows})
            ],
        )
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)

    return StudyOutput(records=records, extra=extra, notes=notes, plot=plot)


STUDY = Study(
    name="probe",
    question="Where does the count live? Held-out accuracy of linear probes predicting the true "
    "count from hidden states at each stage (vision tower, merger, each language-model layer at "
    "the image tokens and at the last prompt token).",
    factors=("depth", "stage", "position"),
    metrics=("probe_accuracy", "probe_abs_error", "majority_accuracy"),
    defaults={
        **{k: v for k, v in DIRECT_DEFAULTS.items() if k not in ("task", "ground_question")},
        "n": 600,
        "test_fraction": 0.3,
        "c": 1.0,
        "seed": 0,
    },
    quick={"n": 300},
    measure=measure,
    plot_x="depth",
    plot_hue="position",
    plot_metrics=("probe_accuracy",),
    fixed_help="the scenes and the question; the probe's split, regularisation and seed",
)
