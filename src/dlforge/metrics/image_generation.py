"""Scores for generated images, computed with a dlforge ImageClassifier trained on the real data.

- Conditional accuracy: the fraction of samples G(z, y) that the classifier assigns to the class y asked for.
- Fréchet distance on the dlforge classifier's features: fit a Gaussian to the classifier's penultimate
  features of each image set and take the Fréchet (2-Wasserstein) distance between the two Gaussians

      d² = ‖μ_a − μ_b‖² + tr(Σ_a) + tr(Σ_b) − 2 tr((Σ_a^½ Σ_b Σ_a^½)^½)

  (Dowson & Landau, 1982; the formula behind FID, Heusel et al., 2017). tr((Σ_a Σ_b)^½) equals the last trace
  because Σ_a Σ_b is similar to the symmetric PSD Σ_a^½ Σ_b Σ_a^½, whose root comes from an eigendecomposition
  in float64: stable for singular covariances, so no ε·I offset and no imaginary parts to discard.
  This is NOT FID: the features come from a small classifier trained by dlforge, not from Inception-v3, so
  the numbers are comparable only between runs scored with the same classifier checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import DlforgeError

FRECHET_NAME = "Fréchet distance on the dlforge classifier's features"


def _float64(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().to("cpu", torch.float64)
    if t.dim() != 2 or t.shape[0] < 2:
        raise DlforgeError(f"{what} must be a (N, D) matrix with N >= 2 rows, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DlforgeError(f"{what} holds NaN or infinite values")
    return t


def _mean_and_covariance(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = features.mean(dim=0)  # (D,)
    centred = features - mean  # (N, D)
    return mean, centred.T @ centred / (features.shape[0] - 1)  # (D,), (D, D) unbiased, as numpy.cov


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues → 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D) (tensors or arrays).

    Computed in float64; rounding below zero (identical sets) is reported as 0.0."""
    a, b = _float64(features_a, "features_a"), _float64(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise DlforgeError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]} (use the same classifier for both)")
    mean_a, cov_a = _mean_and_covariance(a)
    mean_b, cov_b = _mean_and_covariance(b)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a  # (D, D) symmetric PSD, similar to Σ_a Σ_b
    middle = (middle + middle.T) / 2
    trace_root = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    value = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return max(0.0, float(value))


def _batches(classifier: nn.Module, images: torch.Tensor, batch_size: int, fn):
    """fn(batch) for each batch of images on the classifier's device, in eval mode and without gradients."""
    if batch_size < 1:
        raise DlforgeError(f"batch_size must be >= 1, got {batch_size}")
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            return [fn(images[i:i + batch_size].to(device, torch.float32)).cpu()
                    for i in range(0, images.shape[0], batch_size)]
    finally:
        classifier.train(was_training)


def classifier_features(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The classifier's penultimate features (N, D) float32 on the CPU of images (N, C, H, W) in [-1, 1]."""
    return torch.cat(_batches(classifier, images, batch_size, classifier.features)).float()


def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted class ids (N,) (long, CPU) of images (N, C, H, W) in [-1, 1]."""
    return torch.cat(_batches(classifier, images, batch_size, lambda x: classifier(x).logits.argmax(dim=-1)))


def conditional_accuracy(classifier: nn.Module, images: torch.Tensor, labels, batch_size: int = 500) -> float:
    """Fraction of images the classifier assigns to the class in `labels` (N,) (the class each was made for)."""
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if labels.shape != (images.shape[0],):
        raise DlforgeError(f"need one label per image: {images.shape[0]} images, labels of shape "
                           f"{tuple(labels.shape)}")
    if not len(labels):
        raise DlforgeError("no images to score")
    return float((classify(classifier, images, batch_size) == labels).double().mean())


def evaluate_samples(classifier: nn.Module, generated: torch.Tensor, labels=None, reference_features=None,
                     batch_size: int = 500) -> dict:
    """Score generated images (N, C, H, W) in [-1, 1] with the evaluation classifier.

    {"accuracy": conditional accuracy against `labels` (the classes asked for; None without labels),
     "frechet": Fréchet distance between the generated images' features and `reference_features` (N_ref, D)
     (classifier_features of real held-out images; None without them)}."""
    accuracy = None if labels is None else conditional_accuracy(classifier, generated, labels, batch_size)
    frechet = None
    if reference_features is not None:
        frechet = frechet_distance(classifier_features(classifier, generated, batch_size), reference_features)
    return {"accuracy": accuracy, "frechet": frechet}
