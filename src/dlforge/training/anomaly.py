"""Anomaly detection recipe: train an autoencoder on normal images, fit a threshold, score new images.

This is what `dlforge anomaly fit` and `dlforge anomaly score` run:

    fit_anomaly_detector("shared/data/mnist", "runs/normal-3", normal="3")   # an AE on the 3s only
    score_anomalies("runs/normal-3", "shared/data/mnist", split="test", out="runs/normal-3/test")

`normal` names the normal classes (comma-separated) of labelled data; without it every training image is normal.
The threshold comes from held-out data: `method="percentile"` takes that percentile of the held-out normal images'
scores; `method="f1"` takes the best-F1 cut on the held-out normal images plus as many held-out images of the other
classes (which the autoencoder never saw). Scoring labelled data whose normal classes are known writes a report
(precision, recall, F1, ROC-AUC, PR-AUC), a PR curve and a score histogram; every run writes scores.csv.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ..data.images import ImageSet, load_image_set, select_classes
from ..errors import DlforgeError
from ..hub.json_files import read_json_object
from ..io import atomic_write_json, atomic_write_text
from ..metrics.anomaly import (
    AnomalyDetector,
    anomaly_report,
    anomaly_scores,
    check_threshold_settings,
    fit_detector,
    plot_pr_curve,
    plot_score_histogram,
)
from ..models import load_pretrained, resolve_model_dir
from .images import ImageDataConfig, load_run_data, run_batches, train_image_model

ANOMALY_KINDS = ("ae", "vae")


def _other_classes(data: ImageSet, normal: str | None, count: int, seed: int) -> torch.Tensor:
    """Up to `count` training images outside the normal classes, chosen by the seed: the anomalies for F1."""
    if normal is None or data.labels is None:
        return data.images[:0]
    normal_ids = [data.classes.index(name.strip()) for name in normal.split(",")]
    others = torch.nonzero(~torch.isin(data.labels, torch.tensor(normal_ids))).flatten()
    pick = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))[:count]]
    return data.images[pick]


def fit_anomaly_detector(data: str | Path, out: str | Path, normal: str | None = None, kind: str = "ae",
                         preset: str = "mnist", overrides: dict | None = None, method: str = "percentile",
                         percentile: float = 95.0, seed: int | None = None, resume: bool = False,
                         progress: bool = True, overwrite: bool = False) -> AnomalyDetector:
    """Train `kind` (ae or vae) on the normal images of `data`, then fit and save the threshold (the detector is
    written as anomaly_detector.json into the run folder and beside the best model)."""
    if kind not in ANOMALY_KINDS:
        raise DlforgeError(f"anomaly detection trains an ae or a vae, not {kind!r}")
    check_threshold_settings(method, percentile)  # before the training, not after it
    out = Path(out)
    overrides = dict(overrides or {})
    if normal is not None:
        overrides["only_classes"] = normal
    train_image_model(kind, data, out, preset=preset, overrides=overrides, resume=resume, seed=seed,
                      progress=progress, overwrite=overwrite)
    return refit_threshold(out, method=method, percentile=percentile)


def refit_threshold(run_dir: str | Path, method: str = "percentile", percentile: float = 95.0) -> AnomalyDetector:
    """(Re)fit the threshold of a trained anomaly run on its held-out images, and save the detector."""
    run_dir = Path(run_dir)
    run = read_json_object(run_dir / "run.json", "the run folder is damaged; fit it again")
    model, _ = load_pretrained(run_dir)
    all_images = load_run_data(run)
    normal = ImageDataConfig(**run["data_settings"]).only_classes
    validation = run_batches(run, all_images, use_labels=False).validation.images  # held-out normal images
    anomalies = _other_classes(all_images, normal, len(validation), seed=run["train"].get("seed", 1337))
    if method == "f1" and not len(anomalies):
        raise DlforgeError("method f1 needs held-out anomalies: give labelled data and the normal class(es), "
                           "or use method percentile")
    images = torch.cat([validation, anomalies]) if method == "f1" else validation
    labels = torch.cat([torch.zeros(len(validation)), torch.ones(len(anomalies))]) if method == "f1" else None
    detector = fit_detector(anomaly_scores(model, images), labels, method=method, percentile=percentile)
    detector.save(run_dir)
    detector.save(resolve_model_dir(run_dir))
    return detector


def score_anomalies(run_dir: str | Path, data: str | Path, out: str | Path, split: str = "test",
                    normal: str | None = None) -> dict:
    """Score the images of `data` (its `split`) with a fitted detector; write scores.csv to `out`, and when the
    data is labelled and the normal classes are known (`normal`, default: the run's), report.json, pr_curve.png
    and scores.png. Returns the report (or score counts when there is no ground truth)."""
    run_dir, out = Path(run_dir), Path(out)
    model, _ = load_pretrained(run_dir)
    if model.kind not in ANOMALY_KINDS:
        raise DlforgeError(f"{run_dir} holds a {model.kind} model: anomaly scoring needs an ae or vae run "
                           "(dlforge anomaly fit)")
    detector = AnomalyDetector.load(run_dir / "anomaly_detector.json" if (run_dir / "anomaly_detector.json").is_file()
                                    else resolve_model_dir(run_dir))
    run_file = run_dir / "run.json"
    if normal is None and run_file.is_file():
        normal = read_json_object(run_file, "the run folder is damaged; fit it again")["data_settings"].get(
            "only_classes")
    images = load_image_set(data, split, model.config.image_size, model.config.channels)
    scores = anomaly_scores(model, images.images, score=detector.score)
    flagged = detector.predict(scores)
    truth = None
    if normal is not None and images.labels is not None:
        normal_set = select_classes(images, normal)  # checks the names
        normal_ids = torch.tensor(sorted({int(i) for i in normal_set.labels.unique()}))
        truth = ~torch.isin(images.labels, normal_ids)
    _write_scores_csv(out / "scores.csv", scores, flagged, images.labels, truth)
    if truth is None:
        result = {"n": len(scores), "flagged": int(flagged.sum()), "threshold": detector.threshold}
    else:
        result = anomaly_report(scores, truth, detector.threshold)
        title = f"normal: {normal}" + ("" if result["roc_auc"] is None else
                                        f"; ROC-AUC {result['roc_auc']:.3f}, PR-AUC {result['pr_auc']:.3f}")
        plot_pr_curve(scores, truth, out / "pr_curve.png", threshold=detector.threshold, title=title)
        plot_score_histogram(scores, truth, out / "scores.png", threshold=detector.threshold, title=title)
    atomic_write_json(out / "report.json", result)
    return result


def _write_scores_csv(path: Path, scores, flagged, labels, truth) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "label", "score", "flagged", "is_anomaly"])
    for i, score in enumerate(scores.tolist()):
        writer.writerow([i, "" if labels is None else int(labels[i]), f"{score:.6g}", int(flagged[i]),
                         "" if truth is None else int(truth[i])])
    atomic_write_text(path, buf.getvalue())
