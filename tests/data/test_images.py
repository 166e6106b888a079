"""Image data: IDX files, image folders, sklearn digits, the batch source and PNG grids."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from dlforge.data.images import (
    ImageBatches,
    ImageSet,
    load_image,
    load_image_set,
    make_grid,
    read_idx,
    save_grid,
    to_signed_unit,
    to_uint8,
    write_image,
)
from dlforge.errors import DlforgeError


@pytest.fixture
def tiny_mnist(tmp_path, idx_writer):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 40), ("t10k", 10)):
        idx_writer(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        idx_writer(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return folder


def test_idx_folder_loads_both_splits(tiny_mnist):
    train, test = load_image_set(tiny_mnist, "train"), load_image_set(tiny_mnist, "test")
    assert train.images.shape == (40, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == list(range(10)) and train.num_classes == 10
    raw = read_idx(tiny_mnist / "train-images-idx3-ubyte.gz")
    assert torch.equal(train.images[:, 0], torch.from_numpy(raw.copy()))
    resized = load_image_set(tiny_mnist, "train", image_size=32, channels=3)
    assert resized.images.shape == (40, 3, 32, 32)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DlforgeError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + b"\x00" * 10)
    with pytest.raises(DlforgeError, match="truncated"):
        read_idx(short)


def test_real_mnist_has_the_published_class_counts(shared_data):
    if not (shared_data / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {shared_data}")
    test = load_image_set(shared_data / "mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write_picture(path, size, color, mode="RGB"):
    Image.new(mode, size, color).save(path)


def test_image_folder_classes_resize_and_gray_detection(tmp_path):
    for name, color in (("cats", (200, 10, 10)), ("dogs", (10, 10, 200))):
        (tmp_path / name).mkdir()
        _write_picture(tmp_path / name / "a.png", (50, 30), color)
        _write_picture(tmp_path / name / "b.jpg", (20, 40), color)
    data = load_image_set(tmp_path, image_size=16)
    assert data.images.shape == (4, 3, 16, 16) and data.classes == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[0, 0].float().mean() > 190 and data.images[2, 2].float().mean() > 190
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(3):
        _write_picture(gray / f"{i}.png", (10, 10), 100 + i, mode="L")
    data = load_image_set(gray, image_size=8)
    assert data.images.shape == (3, 1, 8, 8) and data.labels is None and data.classes is None


def test_image_folder_errors(tmp_path):
    with pytest.raises(DlforgeError, match="holds no images"):
        load_image_set(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DlforgeError, match="cannot read image .*broken.png"):
        load_image_set(tmp_path)
    with pytest.raises(DlforgeError, match="does not exist"):
        load_image_set(tmp_path / "missing")
    with pytest.raises(DlforgeError, match="no test/"):
        load_image_set(tmp_path, "test")


def test_sklearn_digits():
    pytest.importorskip("sklearn")
    train, test = load_image_set("sklearn-digits"), load_image_set("sklearn-digits", "test")
    assert train.images.shape == (1500, 1, 8, 8) and len(test) == 297 and train.images.max() == 255


def test_scaling_round_trips():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    scaled = to_signed_unit(images)
    assert scaled.min() == -1 and scaled.max() == 1
    assert torch.equal(to_uint8(scaled), images)


def _dataset(n=50, labelled=True):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return ImageSet(images, torch.arange(n) % 3 if labelled else None, ["a", "b", "c"] if labelled else None, "t")


def test_batches_cover_each_epoch_and_repeat_by_step():
    batches = ImageBatches(_dataset(50), batch_size=9, seed=3, val_fraction=0.1)
    assert len(batches.train) == 45 and len(batches.validation) == 5
    seen = torch.cat([batches.train_batch(s)["images"][:, 0, 0, 0] for s in range(5)])  # exactly one epoch
    assert len(set(seen.tolist())) == 45
    val_ids = set(to_uint8(torch.cat([b["images"] for b in batches.eval_batches()]))[:, 0, 0, 0].tolist())
    assert not val_ids & set(to_uint8(seen).tolist())
    again = ImageBatches(_dataset(50), batch_size=9, seed=3, val_fraction=0.1)
    assert torch.equal(again.train_batch(7)["images"], batches.train_batch(7)["images"])
    assert torch.equal(again.train_batch(7)["labels"], batches.train_batch(7)["labels"])
    other = ImageBatches(_dataset(50), batch_size=9, seed=4, val_fraction=0.1)
    assert not torch.equal(other.train_batch(0)["images"], batches.train_batch(0)["images"])
    ranks = [batches.train_batch(2, rank=r, world_size=3)["images"] for r in range(3)]
    assert torch.equal(torch.cat(ranks), batches.train_batch(2)["images"])


def test_augmentation_is_seeded_and_keeps_shape():
    data = ImageSet(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), None, None, "t")
    batches = ImageBatches(data, batch_size=8, seed=0, flip=True, crop_padding=2)
    a, b = batches.train_batch(1), batches.train_batch(1)
    assert "labels" not in a and a["images"].shape == (8, 1, 8, 8)
    assert torch.equal(a["images"], b["images"])
    plain = ImageBatches(data, batch_size=8, seed=0)
    assert not torch.equal(plain.train_batch(1)["images"], a["images"])


def test_grid_and_image_files(tmp_path):
    images = torch.rand(10, 3, 5, 6) * 2 - 1
    grid = make_grid(images, nrow=4, padding=1)
    assert grid.shape == (3, 3 * 6 + 1, 4 * 7 + 1)
    assert torch.equal(grid[:, 1:6, 1:7], images[0]) and torch.equal(grid[:, 7:12, 8:14], images[5])
    path = save_grid(images, tmp_path / "grid.png", nrow=4, padding=1, scale=2)
    assert Image.open(path).size == (2 * (4 * 7 + 1), 2 * (3 * 6 + 1))
    write_image(images[0], tmp_path / "one.png")
    back = load_image(tmp_path / "one.png")
    assert back.shape == (3, 5, 6) and (back - images[0]).abs().max() < 1 / 127
    assert load_image(tmp_path / "one.png", size=4, channels=1).shape == (1, 4, 4)
