"""Classification metrics against hand-computed values and scikit-learn's own report; the confusion-matrix PNG."""

from __future__ import annotations

import pytest
from PIL import Image
from sklearn.metrics import classification_report

from dlforge.errors import DlforgeError
from dlforge.metrics.classification import classification_metrics, plot_confusion_matrix

TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PRED = [0, 1, 0, 1, 1, 2, 0, 2, 1, 0]
NAMES = ["neg", "neu", "pos"]


def test_scores_match_hand_computed_values():
    m = classification_metrics(TRUE, PRED, NAMES)
    assert m["accuracy"] == pytest.approx(7 / 10)
    # rows = true class, columns = predicted class
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [1, 1, 2]]
    neg = m["per_class"]["neg"]
    assert neg["precision"] == pytest.approx(3 / 4) and neg["recall"] == pytest.approx(3 / 4)
    assert neg["support"] == 4
    neu = m["per_class"]["neu"]
    assert neu["precision"] == pytest.approx(2 / 4) and neu["recall"] == 1.0
    assert neu["f1"] == pytest.approx(2 * 0.5 / 1.5)
    f1s = [m["per_class"][n]["f1"] for n in NAMES]
    assert m["macro_f1"] == pytest.approx(sum(f1s) / 3)


def test_scores_agree_with_scikit_learn_report():
    m = classification_metrics(TRUE, PRED, NAMES)
    ref = classification_report(TRUE, PRED, target_names=NAMES, output_dict=True, zero_division=0)
    assert m["macro_f1"] == pytest.approx(ref["macro avg"]["f1-score"])
    for name in NAMES:
        ours, theirs = m["per_class"][name], ref[name]
        assert (ours["precision"], ours["recall"], ours["f1"], ours["support"]) == pytest.approx(
            (theirs["precision"], theirs["recall"], theirs["f1-score"], theirs["support"]))


def test_a_class_never_seen_or_predicted_counts_as_zero():
    m = classification_metrics([0, 1, 0], [0, 1, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"][2] == [0, 0, 0]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(DlforgeError, match="3 true labels but 2 predictions"):
        classification_metrics([0, 1, 0], [0, 1], ["a", "b"])
    with pytest.raises(DlforgeError, match="empty"):
        classification_metrics([], [], ["a", "b"])
    with pytest.raises(DlforgeError, match="2 label names"):
        plot_confusion_matrix([[1, 0, 0], [0, 1, 0], [0, 0, 1]], ["a", "b"], "unused.png")


@pytest.mark.parametrize("n", [3, 40])
def test_confusion_matrix_png_is_small_and_written_atomically(tmp_path, n):
    matrix = [[(i == j) * 5 + (i + j) % 3 for j in range(n)] for i in range(n)]
    names = [f"class-{i}-with-a-long-name" for i in range(n)]
    path = plot_confusion_matrix(matrix, names, tmp_path / "cm.png", title="test")
    assert path == tmp_path / "cm.png" and [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temp file left
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] <= 1000 and image.size[1] <= 1000
    assert path.stat().st_size < 200_000
