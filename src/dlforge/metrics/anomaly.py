"""Anomaly detection with an autoencoder: per-image scores, a threshold, a report, plots and the saved detector.

An autoencoder trained on normal images only reconstructs them well and other images badly, so the score of an
image is its reconstruction error (mean squared error over pixels on the [-1, 1] scale, "mse"), or for a VAE its
negative ELBO in nats ("elbo"). An image is flagged as an anomaly when its score is ABOVE the threshold.

    scores = anomaly_scores(model, images)                          # (N,) per image
    detector = fit_detector(val_scores, val_labels=None, method="percentile", percentile=95)
        # percentile: the given percentile of the NORMAL validation scores (about 5 % false alarms at 95);
        # f1: the cut that maximises F1 on labelled validation scores (labels: 1 = anomaly, 0 = normal)
    detector.save(model_dir); AnomalyDetector.load(model_dir)     # anomaly_detector.json beside the model
    anomaly_report(test_scores, test_is_anomaly, detector.threshold)   # precision, recall, F1, ROC-AUC, PR-AUC
    plot_pr_curve(...), plot_score_histogram(...)

The report's numbers come from scikit-learn (the optional extra `dlforge[eval]`); scoring and thresholds do not
need it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DlforgeError
from ..io import atomic_save_figure, atomic_write_json, pyplot
from ..models.autoencoder_tools import as_signed_images, eval_mode, negative_elbo
from ..paths import model_file

SCORES = ("mse", "elbo")
METHODS = ("percentile", "f1")
DETECTOR_FILE = "anomaly_detector.json"
DETECTOR_FORMAT = "dlforge-anomaly-detector"


def anomaly_scores(model, images: torch.Tensor, batch_size: int = 256, score: str = "mse") -> torch.Tensor:
    """Per-image anomaly scores (N,) on the CPU; images (N, C, H, W) float in [-1, 1] or uint8.

    score "mse": mean squared error between the image and its reconstruction (VAE: decoded posterior mean);
    "elbo": the VAE's negative ELBO in nats (one posterior sample, seeded: deterministic)."""
    if score not in SCORES:
        raise DlforgeError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if score == "elbo":
        return negative_elbo(model, images, k=1, batch_size=batch_size)
    device, out = next(model.parameters()).device, []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = as_signed_images(images[start: start + batch_size]).to(device)  # (B, C, H, W)
            out.append(((model.reconstruct(x) - x) ** 2).flatten(1).mean(1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _as_array(values, name: str, dtype=np.float64) -> np.ndarray:
    if torch.is_tensor(values):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=dtype).reshape(-1)
    if not len(array):
        raise DlforgeError(f"no {name} given: the set is empty")
    return array


def _check_pair(scores, is_anomaly) -> tuple[np.ndarray, np.ndarray]:
    s, y = _as_array(scores, "scores"), _as_array(is_anomaly, "labels").astype(bool)
    if len(s) != len(y):
        raise DlforgeError(f"got {len(s)} scores but {len(y)} anomaly labels")
    if not np.isfinite(s).all():
        raise DlforgeError("some anomaly scores are NaN or infinite: check the model and the images")
    return s, y


def best_f1_threshold(scores, is_anomaly) -> tuple[float, float]:
    """(threshold, F1) of the cut "score > threshold" with the highest F1 (ties: the fewest images flagged).

    Cuts lie half-way between consecutive distinct scores (below the lowest score to flag everything)."""
    s, y = _check_pair(scores, is_anomaly)
    if not y.any():
        raise DlforgeError("method 'f1' needs some anomalies among the validation labels: use 'percentile'")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_value = np.r_[s[1:] != s[:-1], True]  # cut after position i flags the top i+1 images
    flagged = np.arange(1, len(s) + 1)[last_of_value]
    tp = np.cumsum(y)[last_of_value]
    f1 = 2 * tp / (flagged + y.sum())  # 2·TP / (TP + FP + TP + FN)
    best = int(np.argmax(f1))
    i = flagged[best] - 1  # index of the lowest flagged score
    threshold = (s[i] + s[i + 1]) / 2 if i + 1 < len(s) else np.nextafter(s[i], -np.inf)
    return float(threshold), float(f1[best])


def check_threshold_settings(method: str, percentile: float) -> None:
    """The threshold method and percentile, checked (also before a detector's training starts)."""
    if method not in METHODS:
        raise DlforgeError(f"threshold method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0 < percentile < 100:  # (NaN fails this too)
        raise DlforgeError(f"percentile must be between 0 and 100, got {percentile}")


def pick_threshold(scores_val, labels_val=None, method: str = "percentile", percentile: float = 95.0) -> float:
    """The anomaly threshold from validation scores (labels_val: 1 = anomaly, 0 = normal, or None = all normal).

    percentile: that percentile of the normal scores (linear interpolation), so about (100 − percentile) % of
    normal images score above it; f1: the cut maximising F1 on the labelled scores."""
    check_threshold_settings(method, percentile)
    if method == "f1":
        if labels_val is None:
            raise DlforgeError("method 'f1' needs labelled validation scores (1 = anomaly): pass labels, "
                               "or use method 'percentile' on normal images")
        return best_f1_threshold(scores_val, labels_val)[0]
    s = _as_array(scores_val, "validation scores")
    if labels_val is not None:
        s, y = _check_pair(s, labels_val)
        s = s[~y]
        if not len(s):
            raise DlforgeError("every validation image is labelled an anomaly: the percentile needs normal ones")
    return float(np.percentile(s, percentile))


def score_stats(scores) -> dict:
    s = _as_array(scores, "scores")
    p50, p90, p95, p99 = np.percentile(s, [50, 90, 95, 99])
    return {"n": int(len(s)), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99)}


def _sklearn_metrics():
    try:
        from sklearn import metrics
    except ImportError as e:
        raise DlforgeError("anomaly metrics need scikit-learn: pip install 'dlforge[eval]'") from e
    return metrics


def anomaly_report(scores, is_anomaly, threshold: float) -> dict:
    """Precision, recall, F1 (anomaly = positive class, flagged when score > threshold), ROC-AUC and PR-AUC
    (average precision), with the confusion counts. The AUCs are None when only one class is present."""
    s, y = _check_pair(scores, is_anomaly)
    m = _sklearn_metrics()
    pred = s > threshold
    precision, recall, f1, _ = m.precision_recall_fscore_support(y, pred, average="binary", pos_label=True,
                                                                 zero_division=0)
    both = 0 < y.sum() < len(y)
    return {
        "threshold": float(threshold), "n": int(len(s)), "n_anomalies": int(y.sum()),
        "precision": float(precision), "recall": float(recall), "f1": float(f1),
        "accuracy": float((pred == y).mean()),
        "roc_auc": float(m.roc_auc_score(y, s)) if both else None,
        "pr_auc": float(m.average_precision_score(y, s)) if both else None,
        "tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()), "fn": int((~pred & y).sum()),
        "tn": int((~pred & ~y).sum()),
    }


def plot_pr_curve(scores, is_anomaly, path: str | Path, threshold: float | None = None,
                  title: str | None = None) -> Path:
    """Precision-recall curve (anomaly = positive) as a PNG, written atomically; marks the threshold's point."""
    plt = pyplot()

    s, y = _check_pair(scores, is_anomaly)
    if not y.any():
        raise DlforgeError("a precision-recall curve needs some anomalies among the labels")
    m = _sklearn_metrics()
    precision, recall, _ = m.precision_recall_curve(y, s)
    ap = m.average_precision_score(y, s)
    fig, ax = plt.subplots(figsize=(5.0, 4.2), dpi=100)
    ax.step(recall, precision, where="post", label=f"AP = {ap:.3f}")
    ax.axhline(y.mean(), color="grey", linestyle=":", linewidth=1, label=f"chance = {y.mean():.3f}")
    if threshold is not None:
        pred = s > threshold
        tp = int((pred & y).sum())
        p_at, r_at = (tp / pred.sum() if pred.sum() else 1.0), tp / y.sum()
        ax.plot([r_at], [p_at], "o", color="crimson", label=f"threshold {threshold:.4g}: P={p_at:.2f} R={r_at:.2f}")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or f"anomaly detection: precision-recall ({len(s)} images, {int(y.sum())} anomalies)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    return atomic_save_figure(fig, path)


def plot_score_histogram(scores, is_anomaly, path: str | Path, threshold: float | None = None,
                         title: str | None = None) -> Path:
    """Histograms of the normal and anomalous images' scores, each normalised (the classes are often very
    unequal in size), with log-spaced bins when positive scores span decades; PNG written atomically."""
    plt = pyplot()

    s, y = _check_pair(scores, is_anomaly)
    log_bins = bool(s.min() > 0 and s.max() / s.min() > 20)  # reconstruction errors often span decades
    if log_bins:
        bins = np.geomspace(s.min(), s.max(), 50)
    else:
        bins = np.linspace(s.min(), s.max(), 50) if s.max() > s.min() else 10
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for chosen, name, colour in ((~y, "normal", "tab:blue"), (y, "anomaly", "tab:red")):
        if chosen.any():
            ax.hist(s[chosen], bins=bins, alpha=0.55, color=colour, density=True,
                    label=f"{name} ({int(chosen.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    if log_bins:
        ax.set_xscale("log")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("density (each class sums to 1)")
    ax.set_title(title or "anomaly scores", fontsize=9)
    ax.legend(fontsize=8)
    return atomic_save_figure(fig, path)


@dataclass
class AnomalyDetector:
    """A fitted threshold on one kind of score; saved as anomaly_detector.json beside the model files."""

    threshold: float
    score: str = "mse"  # mse | elbo (see anomaly_scores)
    method: str = "percentile"  # percentile | f1
    percentile: float | None = 95.0  # only for method percentile
    stats: dict = field(default_factory=dict)  # score_stats of the validation scores the threshold came from
    validation: dict | None = None  # anomaly_report on labelled validation scores, when there were labels

    def predict(self, scores) -> torch.Tensor:
        """True where an image is an anomaly (score above the threshold): bool (N,)."""
        return torch.as_tensor(_as_array(scores, "scores") > self.threshold)

    def to_dict(self) -> dict:
        return {"format": DETECTOR_FORMAT, "version": 1, **asdict(self)}

    def save(self, directory: str | Path) -> Path:
        """Write <directory>/anomaly_detector.json atomically (the directory of the model's files)."""
        path = Path(directory) / DETECTOR_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> AnomalyDetector:
        """Read <directory>/anomaly_detector.json (or the file itself when given its path)."""
        path = Path(directory)
        path = model_file(path / DETECTOR_FILE if path.is_dir() else path)
        if not path.is_file():
            raise DlforgeError(f"no anomaly detector at {path}: fit one first (dlforge anomaly fit)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DlforgeError(f"{path} is not a readable anomaly detector ({e}): fit it again") from e
        if not isinstance(d, dict) or d.pop("format", None) != DETECTOR_FORMAT:
            raise DlforgeError(f"{path} is not a dlforge anomaly detector file: fit it again")
        d.pop("version", None)
        try:
            return cls(**d)
        except TypeError as e:
            raise DlforgeError(f"{path} has unexpected fields ({e}): fit the detector again") from e


def fit_detector(scores_val, labels_val=None, method: str = "percentile", percentile: float = 95.0,
                 score: str = "mse") -> AnomalyDetector:
    """Pick the threshold (see pick_threshold) and keep the normal validation scores' statistics; with labels of
    both kinds (and scikit-learn installed) the detector also keeps its report on the validation scores."""
    if score not in SCORES:
        raise DlforgeError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    threshold = pick_threshold(scores_val, labels_val, method, percentile)
    s = _as_array(scores_val, "validation scores")
    validation = None
    if labels_val is not None:
        s_all, y = _check_pair(s, labels_val)
        s = s_all[~y] if (~y).any() else s_all
        if y.any() and (~y).any() and importlib.util.find_spec("sklearn") is not None:
            validation = anomaly_report(s_all, y, threshold)
    return AnomalyDetector(threshold=threshold, score=score, method=method,
                           percentile=float(percentile) if method == "percentile" else None,
                           stats=score_stats(s), validation=validation)
