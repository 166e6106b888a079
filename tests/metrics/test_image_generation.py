"""Tests for dlforge.metrics.image_generation: the Fréchet distance and classifier-based sample scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlforge.errors import DlforgeError
from dlforge.metrics.image_generation import (
    classifier_features,
    classify,
    conditional_accuracy,
    evaluate_samples,
    frechet_distance,
)
from dlforge.models.outputs import ModelOutput


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The usual reference computation (scipy.linalg.sqrtm of Σ_a Σ_b, real part)."""
    linalg = pytest.importorskip("scipy.linalg")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))


def test_identical_sets_are_zero():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x.numpy(), x.clone()) == pytest.approx(0.0, abs=1e-8)  # arrays or tensors


def test_shifted_set_is_squared_mean_difference():
    x = np.random.default_rng(0).normal(size=(500, 8))
    shift = np.arange(8) * 0.25
    assert frechet_distance(x, x + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-9, abs=1e-9)


def test_gaussians_closed_form():
    """Two isotropic Gaussians: d² = ‖Δμ‖² + D(σ_a − σ_b)²; a large sample gets close."""
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(20_000, 4))
    b = rng.normal(1.0, 2.0, size=(20_000, 4))
    assert frechet_distance(a, b) == pytest.approx(4 * 1.0 + 4 * (2.0 - 1.0) ** 2, rel=0.03)


@pytest.mark.parametrize("n,d", [(300, 10), (40, 10), (8, 12)])  # full-rank, and singular covariances (n < d)
def test_matches_scipy_sqrtm_and_is_symmetric(n, d):
    rng = np.random.default_rng(n)
    mix = rng.normal(size=(d, d))
    a = rng.normal(size=(n, d)) @ mix
    b = rng.normal(size=(n + 5, d)) @ mix * 0.7 + 0.3
    ours = frechet_distance(a, b)
    assert ours == pytest.approx(scipy_frechet(a, b), rel=1e-6, abs=1e-6)
    assert frechet_distance(b, a) == pytest.approx(ours, rel=1e-7, abs=1e-7)  # √ of ~0 eigenvalues: ~1e-7
    assert ours > 0


def test_input_errors():
    with pytest.raises(DlforgeError, match="feature sizes"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(DlforgeError, match="N >= 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(DlforgeError, match="NaN"):
        frechet_distance(torch.full((3, 2), float("nan")), torch.randn(5, 2))


class BrightnessClassifier(nn.Module):
    """Class 1 when the mean pixel is positive; features = (mean, std). Records its mode during calls."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.modes = []

    def features(self, images):
        self.modes.append(self.training)
        flat = images.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1)], dim=1)

    def forward(self, images, labels=None):
        self.modes.append(self.training)
        mean = images.flatten(1).mean(1)
        return ModelOutput(logits=torch.stack([-mean, mean], dim=1))


def test_classifier_scores():
    classifier = BrightnessClassifier()  # left in training mode: the helpers switch to eval and back
    images = torch.cat([torch.full((3, 1, 4, 4), -0.5), torch.full((4, 1, 4, 4), 0.5)])
    assert classify(classifier, images, batch_size=2).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert conditional_accuracy(classifier, images, [0, 0, 0, 1, 1, 1, 1]) == 1.0
    assert conditional_accuracy(classifier, images, [1, 0, 0, 1, 1, 1, 0]) == pytest.approx(5 / 7)
    features = classifier_features(classifier, images, batch_size=3)
    assert features.shape == (7, 2) and features.dtype == torch.float32
    assert set(classifier.modes) == {False} and classifier.training
    with pytest.raises(DlforgeError, match="one label per image"):
        conditional_accuracy(classifier, images, [0, 1])

    reference = classifier_features(classifier, images)
    scores = evaluate_samples(classifier, images, labels=torch.tensor([0, 0, 0, 1, 1, 1, 1]),
                              reference_features=reference)
    assert scores["accuracy"] == 1.0 and scores["frechet"] == pytest.approx(0.0, abs=1e-9)
    shifted = evaluate_samples(classifier, images + 0.25, reference_features=reference)
    assert shifted["accuracy"] is None and shifted["frechet"] == pytest.approx(0.25 ** 2, rel=1e-4)
    assert evaluate_samples(classifier, images) == {"accuracy": None, "frechet": None}


def test_with_the_dlforge_classifier():
    from dlforge.models.small_cnn import ImageClassifier, ImageClassifierConfig

    torch.manual_seed(0)
    model = ImageClassifier(ImageClassifierConfig(width=4, hidden=8))
    images = torch.rand(10, 1, 28, 28) * 2 - 1
    features = classifier_features(model, images, batch_size=4)
    assert features.shape == (10, 8)
    torch.testing.assert_close(features, model.eval().features(images))
    with torch.no_grad():
        predicted = model(images).logits.argmax(-1)  # (10,)
    assert torch.equal(classify(model, images, batch_size=3), predicted)
    # labels that agree with the classifier on exactly the first 7 images score 0.7; the set against its own
    # features is at distance 0
    labels = torch.cat([predicted[:7], (predicted[7:] + 1) % 10])
    scores = evaluate_samples(model, images, labels=labels, reference_features=features)
    assert scores["accuracy"] == pytest.approx(0.7) and scores["frechet"] == pytest.approx(0.0, abs=1e-6)
