"""Tests for dlforge.models.small_cnn: the small CNN image classifier used to score generated images."""

from __future__ import annotations

import pytest
import torch

from dlforge.errors import DlforgeError
from dlforge.models.small_cnn import ImageClassifier, ImageClassifierConfig
from dlforge.training.optim import make_adamw


def tiny_classifier(seed: int = 0, **overrides) -> ImageClassifier:
    base = dict(image_size=28, channels=1, num_classes=10, width=4, hidden=16)
    base.update(overrides)
    torch.manual_seed(seed)
    return ImageClassifier(ImageClassifierConfig(**base))


def test_config():
    assert ImageClassifier.kind == "image-classifier" and ImageClassifier.config_class is ImageClassifierConfig
    assert ImageClassifier.log_names == ()
    with pytest.raises(DlforgeError, match="num_classes"):
        ImageClassifierConfig(num_classes=0)
    with pytest.raises(DlforgeError, match="dropout"):
        ImageClassifierConfig(dropout=1.0)
    with pytest.raises(DlforgeError, match="unknown IMAGECLASSIFIER config keys: bogus"):
        ImageClassifierConfig.from_dict({"bogus": 1})
    # the default network is the usual ~0.2 M-parameter MNIST CNN
    n = sum(p.numel() for p in ImageClassifier(ImageClassifierConfig()).parameters())
    assert 150_000 < n < 250_000


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3), (8, 1)])
def test_shapes(size, channels):
    model = tiny_classifier(image_size=size, channels=channels).eval()
    images = torch.rand(3, channels, size, size) * 2 - 1
    labels = torch.tensor([0, 4, 9])
    out = model(images, labels)
    assert out.logits.shape == (3, 10) and out.loss.dim() == 0
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert model(images).loss is None
    assert model.features(images).shape == (3, 16)
    assert model.predict(images).shape == (3,)
    torch.testing.assert_close(model.preview(images, labels, seed=0), images)
    with pytest.raises(DlforgeError, match="shape"):
        model(torch.zeros(2, channels, size + 4, size + 4))


def test_eval_is_deterministic():
    model = tiny_classifier().eval()
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(model(images).logits, model(images).logits)


def test_fits_two_class_images():
    """Bright blob on the left vs on the right, with noise: 100 % training accuracy within a few dozen steps."""
    g = torch.Generator().manual_seed(0)
    n = 64
    labels = torch.arange(n) % 2
    images = torch.randn(n, 1, 28, 28, generator=g) * 0.3 - 0.5
    for i in range(n):
        col = 4 if labels[i] == 0 else 18
        row = int(torch.randint(4, 18, (1,), generator=g))
        images[i, 0, row:row + 6, col:col + 6] += 1.5
    images = images.clamp(-1, 1)
    model = tiny_classifier(num_classes=2, dropout=0.1)
    optimizer = make_adamw(model, 3e-3, 0.0, (0.9, 0.999))
    torch.manual_seed(0)
    for _ in range(40):
        loss = model(images, labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    assert (model.predict(images) == labels).all()
    assert model(images, labels).loss.item() < 0.2
