"""`data.parallel`: reading line-aligned files and token-budget batches."""

from __future__ import annotations

import gzip

import pytest
import torch

from dlforge.data.parallel import ParallelBatches, collate_pairs, read_parallel
from dlforge.errors import DlforgeError


def test_reads_plain_and_gzip_files_and_drops_blank_pairs(tmp_path):
    (tmp_path / "a.de").write_text("Hallo Welt\n\nEin Hund\n", encoding="utf-8")
    with gzip.open(tmp_path / "a.en.gz", "wt", encoding="utf-8") as f:
        f.write("Hello world\nnothing\nA dog\n")
    sources, targets = read_parallel(tmp_path / "a.de", tmp_path / "a.en.gz")
    assert sources == ["Hallo Welt", "Ein Hund"] and targets == ["Hello world", "A dog"]


def test_misaligned_missing_and_binary_files_are_explained(tmp_path):
    (tmp_path / "a").write_text("one\ntwo\n")
    (tmp_path / "b").write_text("one\n")
    with pytest.raises(DlforgeError, match="2 lines but .* has 1"):
        read_parallel(tmp_path / "a", tmp_path / "b")
    with pytest.raises(DlforgeError, match="does not exist"):
        read_parallel(tmp_path / "a", tmp_path / "missing")
    (tmp_path / "c").write_bytes(b"\xff\xfe bad\n\xff\n")
    with pytest.raises(DlforgeError, match="not UTF-8"):
        read_parallel(tmp_path / "c", tmp_path / "a")


def test_collate_pads_sources_with_pad_and_labels_with_minus_100():
    batch = collate_pairs([[1, 5, 2], [1, 2]], [[7, 2], [8, 9, 2]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 2], [1, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 2, -100], [8, 9, 2]]


def make_batches(n=300, max_tokens=200, seed=0, **kw):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 30, (n, 2), generator=g).tolist()
    sources = [[i] * a for i, (a, _) in enumerate(lengths)]
    targets = [[i] * b for i, (_, b) in enumerate(lengths)]
    return ParallelBatches(sources, targets, sources[:10], targets[:10], pad_id=0, max_tokens=max_tokens, seed=seed,
                           **kw)


def test_batches_respect_the_token_budget_cover_every_pair_once_per_epoch_and_are_reproducible():
    data = make_batches()
    seen = []
    for step in range(data.steps_per_epoch):
        batch = data.train_batch(step)
        padded = batch["input_ids"].numel() + batch["labels"].numel()
        assert padded <= 200 or batch["input_ids"].size(0) == 1
        seen += batch["input_ids"][:, 0].tolist()  # each row's first id is its pair index
    assert sorted(seen) == list(range(300))
    again = make_batches()
    assert all(torch.equal(again.train_batch(s)["labels"], data.train_batch(s)["labels"]) for s in (0, 5, 77))
    next_epoch = [data.train_batch(data.steps_per_epoch + s)["input_ids"][0, 0].item() for s in range(5)]
    first_epoch = [data.train_batch(s)["input_ids"][0, 0].item() for s in range(5)]
    assert next_epoch != first_epoch  # a new order every epoch


def test_processes_split_each_batch_and_grad_accumulation_takes_distinct_batches():
    data = make_batches()
    whole = data.train_batch(3)["input_ids"][:, 0].tolist()
    parts = data.train_batch(3, rank=0, world_size=2)["input_ids"][:, 0].tolist() + \
        data.train_batch(3, rank=1, world_size=2)["input_ids"][:, 0].tolist()
    assert sorted(parts) == sorted(whole)
    accum = make_batches(grad_accum=2)
    firsts = {accum.train_batch(s, m)["input_ids"][0, 0].item() for s in range(3) for m in range(2)}
    assert len(firsts) == 6
