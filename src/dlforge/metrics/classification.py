"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1 and a confusion-matrix plot.

The numbers come from scikit-learn (the optional extra `dlforge[eval]`), so they match what users
compute themselves; `classification_metrics` returns plain JSON-able values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DlforgeError
from ..io import atomic_save_figure, pyplot


def _sklearn_metrics():
    try:
        from sklearn import metrics
    except ImportError as e:
        raise DlforgeError("classification metrics need scikit-learn: pip install 'dlforge[eval]'") from e
    return metrics


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]) -> dict:
    """Scores of predicted class ids against true ones; class i is called label_names[i].

    Returns {"accuracy", "macro_f1", "per_class": {name: {precision, recall, f1, support}},
    "confusion_matrix": rows = true class, columns = predicted class}. Classes absent from both
    y_true and y_pred still get a row (zeros) and count in the macro average as 0, as in scikit-learn.
    """
    if len(y_true) != len(y_pred):
        raise DlforgeError(f"got {len(y_true)} true labels but {len(y_pred)} predictions")
    if not len(y_true):
        raise DlforgeError("no examples to score: the evaluation set is empty")
    m = _sklearn_metrics()
    ids = list(range(len(label_names)))
    precision, recall, f1, support = m.precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(m.accuracy_score(y_true, y_pred)),
        "macro_f1": float(m.f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {str(name): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(label_names, precision, recall, f1, support)},
        "confusion_matrix": m.confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: str | Path,
                          title: str | None = None) -> Path:
    """Write a small PNG of the confusion matrix (counts, rows = true, columns = predicted) atomically."""
    plt = pyplot()
    import numpy as np

    counts = np.asarray(matrix)
    n = len(label_names)
    if counts.shape != (n, n):
        raise DlforgeError(f"the confusion matrix is {counts.shape}, but there are {n} label names")
    side = min(10.0, 2.5 + 0.45 * n)  # grows with the classes, stays small
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # colour by row share: per-class recall
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(n)
    names = [str(x) if len(str(x)) <= 14 else str(x)[:13] + "…" for x in label_names]
    ax.set_xticks(ticks, names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    if n <= 30:  # counts in the cells while they stay legible
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix", fontsize=9)
    return atomic_save_figure(fig, path)
