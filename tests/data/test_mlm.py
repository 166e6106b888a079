"""Masked-LM batches: the 15 % / 80-10-10 rule, special tokens never chosen, determinism per step."""

import pytest
import torch

from dlforge.data.mlm import MaskedLMBatches, mask_tokens
from dlforge.errors import DlforgeError
from dlforge.text import CharTokenizer


def test_mask_tokens_follows_the_80_10_10_rule():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 500))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    masked, labels = mask_tokens(ids, special, mask_token_id=3, vocab_size=1000, generator=g)
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.005
    assert not chosen[:, 0].any()  # special tokens are never chosen
    assert torch.equal(labels[chosen], ids[chosen])  # labels hold the original tokens
    assert torch.equal(masked[~chosen], ids[~chosen])  # unchosen tokens are untouched
    as_mask = (masked == 3) & chosen
    unchanged = (masked == ids) & chosen
    n = chosen.sum().item()
    assert abs(as_mask.sum().item() / n - 0.8) < 0.01
    # 10 % random + the random draws that happen to equal the original token
    assert abs(unchanged.sum().item() / n - 0.1) < 0.01
    assert abs(1 - (as_mask | unchanged).sum().item() / n - 0.1) < 0.01


def _tokenizer():
    return CharTokenizer.train("abcdefgh ", special_tokens={"pad": "<pad>", "mask": "<mask>", "cls": "<cls>"})


def test_masked_lm_batches_are_deterministic_per_step_and_skip_padding():
    tok = _tokenizer()
    texts = ["abc defg hab", "gh", "a b c d e f g h a b c", "hhh ggg"] * 10
    batches = MaskedLMBatches(texts, texts[:4], tok, max_length=16, batch_size=8, seed=1)
    a, b, c = batches.train_batch(3), batches.train_batch(3), batches.train_batch(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], c["input_ids"]) or not torch.equal(a["labels"], c["labels"])
    assert ((a["labels"] != -100) <= a["attention_mask"].bool()).all()  # padding never predicted
    assert a["input_ids"].shape == a["labels"].shape == a["attention_mask"].shape
    assert len(list(batches.eval_batches())) == 1


def test_masked_lm_needs_a_mask_token():
    tok = CharTokenizer.train("abc")
    with pytest.raises(DlforgeError, match="mask token"):
        MaskedLMBatches(["abc"], [], tok, 8, 2)
