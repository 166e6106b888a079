"""Anomaly detection: thresholds on synthetic scores, the report against hand-computed values, the plots, the
saved detector, and an autoencoder trained on one pattern that scores another one higher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.errors import DlforgeError
from dlforge.metrics.anomaly import (
    DETECTOR_FILE,
    AnomalyDetector,
    anomaly_report,
    anomaly_scores,
    best_f1_threshold,
    fit_detector,
    pick_threshold,
    plot_pr_curve,
    plot_score_histogram,
)
from dlforge.models.autoencoder import VAE, Autoencoder, AutoencoderConfig
from dlforge.models.autoencoder_tools import negative_elbo

SCORES = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.5, 0.05]
IS_ANOMALY = [0, 0, 1, 1, 0, 1, 0, 0]


def test_percentile_threshold_uses_the_normal_scores_only():
    normal = np.arange(101, dtype=float)  # 0..100: the 95th percentile is 95
    assert pick_threshold(normal) == pytest.approx(95.0)
    assert pick_threshold(torch.tensor(normal), percentile=50) == pytest.approx(50.0)
    with_anomalies = np.r_[normal, 1000.0, 2000.0]
    labels = np.r_[np.zeros(101), 1, 1]
    assert pick_threshold(with_anomalies, labels) == pytest.approx(95.0)
    assert (torch.as_tensor(normal) > pick_threshold(normal)).float().mean() == pytest.approx(5 / 101)


def test_f1_threshold_is_the_best_cut_between_distinct_scores():
    # flagging the top 2 (0.9, 0.8) gives F1 = 2·2 / (2 + 3) = 0.8, the best cut; it lies half-way to 0.5
    threshold, f1 = best_f1_threshold(SCORES, IS_ANOMALY)
    assert threshold == pytest.approx(0.65) and f1 == pytest.approx(0.8)
    assert pick_threshold(SCORES, IS_ANOMALY, method="f1") == pytest.approx(0.65)
    assert best_f1_threshold([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx((0.5, 2 / 3))  # ties stay together
    threshold, f1 = best_f1_threshold([0.2, 0.3], [1, 1])  # everything is an anomaly: flag all
    assert threshold < 0.2 and f1 == 1.0


def test_threshold_errors_are_one_line():
    with pytest.raises(DlforgeError, match="needs labelled validation scores"):
        pick_threshold(SCORES, method="f1")
    with pytest.raises(DlforgeError, match="needs some anomalies"):
        pick_threshold(SCORES, [0] * 8, method="f1")
    with pytest.raises(DlforgeError, match="method must be one of"):
        pick_threshold(SCORES, method="otsu")
    with pytest.raises(DlforgeError, match="8 scores but 3"):
        pick_threshold(SCORES, [0, 0, 1])
    with pytest.raises(DlforgeError, match="NaN"):
        pick_threshold([0.1, float("nan")], [0, 1], method="f1")
    with pytest.raises(DlforgeError, match="empty"):
        pick_threshold([])


def test_report_matches_hand_computed_values():
    r = anomaly_report(SCORES, IS_ANOMALY, threshold=0.45)
    # flagged: 0.8, 0.9 (anomalies) and 0.5 (normal); missed: 0.35
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 1, 4)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["accuracy"] == pytest.approx(6 / 8)
    # ROC-AUC: of the 15 (anomaly, normal) pairs, 0.35 beats 3 normals and 0.8, 0.9 beat all 5
    assert r["roc_auc"] == pytest.approx(13 / 15)
    # average precision: recall steps of 1/3 at precisions 1, 1 and 3/5
    assert r["pr_auc"] == pytest.approx((1 + 1 + 0.6) / 3)
    assert (r["n"], r["n_anomalies"], r["threshold"]) == (8, 3, 0.45)
    json.dumps(r)  # plain JSON values


def test_separable_scores_have_perfect_aucs_and_one_class_has_none():
    r = anomaly_report([0.1, 0.2, 0.3, 5.0, 6.0], [0, 0, 0, 1, 1], threshold=1.0)
    assert r["roc_auc"] == 1.0 and r["pr_auc"] == 1.0 and r["f1"] == 1.0
    r = anomaly_report([0.1, 0.2, 3.0], [0, 0, 0], threshold=1.0)
    assert r["roc_auc"] is None and r["pr_auc"] is None and r["fp"] == 1


def test_plots_are_written_as_png(tmp_path):
    pr = plot_pr_curve(SCORES, IS_ANOMALY, tmp_path / "pr.png", threshold=0.45)
    hist = plot_score_histogram(np.r_[np.geomspace(1e-4, 1e-1, 20), 1.0], [0] * 20 + [1], tmp_path / "h.png",
                                threshold=0.05)
    for path in (pr, hist):
        with Image.open(path) as picture:
            assert picture.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png", "pr.png"]
    with pytest.raises(DlforgeError, match="needs some anomalies"):
        plot_pr_curve(SCORES, [0] * 8, tmp_path / "none.png")


def test_detector_saves_and_loads_beside_the_model(tmp_path):
    detector = fit_detector(SCORES, IS_ANOMALY, method="f1", score="elbo")
    assert detector.threshold == pytest.approx(0.65) and detector.percentile is None
    assert detector.stats["n"] == 5  # statistics of the normal scores
    assert detector.validation["f1"] == pytest.approx(0.8)
    path = detector.save(tmp_path)
    assert path == tmp_path / DETECTOR_FILE and json.loads(path.read_text())["format"] == "dlforge-anomaly-detector"
    again = AnomalyDetector.load(tmp_path)
    assert again == detector
    assert again.predict(SCORES).tolist() == [s > 0.65 for s in SCORES]
    plain = fit_detector(np.arange(101.0))
    assert plain.method == "percentile" and plain.threshold == pytest.approx(95.0) and plain.validation is None
    with pytest.raises(DlforgeError, match="no anomaly detector"):
        AnomalyDetector.load(tmp_path / "missing")
    (tmp_path / "bad.json").write_text('{"threshold": 1}')
    with pytest.raises(DlforgeError, match="not a dlforge anomaly detector"):
        AnomalyDetector.load(tmp_path / "bad.json")


def stripes(n: int, vertical: bool, seed: int) -> torch.Tensor:
    """(n, 1, 16, 16) in [-1, 1]: stripes two pixels wide at a random phase, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.randint(0, 4, (n, 1, 1), generator=g)
    line = ((torch.arange(16).view(1, 16, 1) + phase) // 2 % 2).float() * 2 - 1  # (n, 16, 1): along the rows
    x = line.expand(n, 16, 16)
    x = x.transpose(1, 2) if vertical else x
    return (x.unsqueeze(1) + 0.1 * torch.randn(n, 1, 16, 16, generator=g)).clamp(-1, 1)


def test_an_autoencoder_trained_on_one_pattern_scores_another_higher():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(image_size=16, channels=1, latent_dim=4, hidden_sizes=[64]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        loss = model(stripes(32, vertical=False, seed=step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    normal, odd = stripes(40, vertical=False, seed=10_000), stripes(40, vertical=True, seed=10_001)
    s_normal, s_odd = anomaly_scores(model, normal, batch_size=16), anomaly_scores(model, odd)
    assert s_normal.shape == (40,) and s_odd.min() > s_normal.max()
    detector = fit_detector(anomaly_scores(model, stripes(40, vertical=False, seed=10_002)), percentile=95)
    report = anomaly_report(torch.cat([s_normal, s_odd]), [0] * 40 + [1] * 40, detector.threshold)
    assert report["roc_auc"] == 1.0 and report["recall"] == 1.0 and report["precision"] > 0.85
    # uint8 images score like the same images in [-1, 1]; the batch size does not matter
    as_uint8 = ((normal + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(anomaly_scores(model, as_uint8, batch_size=7),
                               anomaly_scores(model, as_uint8.float() / 127.5 - 1))


def test_vae_elbo_scores_are_its_negative_elbo():
    torch.manual_seed(0)
    model = VAE(AutoencoderConfig(image_size=8, latent_dim=2, hidden_sizes=[16]))
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(anomaly_scores(model, x, score="elbo"), negative_elbo(model, x))
    assert anomaly_scores(model, x).shape == (6,)
    with pytest.raises(DlforgeError, match="score must be one of"):
        anomaly_scores(model, x, score="likelihood")
