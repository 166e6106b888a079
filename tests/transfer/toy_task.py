"""A separable toy classification task shared by the transfer-learning tests."""

from __future__ import annotations

import torch

SEQ = 8


class ToyClassification:
    """Label 0 sequences use tokens 2..25, label 1 sequences tokens 26..49; [CLS] = 1.

    Batches are a function of the step, as the Trainer expects of a batch source.
    """

    def __init__(self, batch_size: int = 16, seed: int = 0, n_eval: int = 2):
        self.batch_size, self.seed, self.n_eval = batch_size, seed, n_eval

    def make(self, seed: int, n: int | None = None) -> dict:
        g = torch.Generator().manual_seed(seed)
        n = n or self.batch_size
        labels = torch.randint(0, 2, (n,), generator=g)
        ids = torch.randint(0, 24, (n, SEQ), generator=g) + 2 + 24 * labels[:, None]
        ids[:, 0] = 1
        return {"input_ids": ids, "labels": labels}

    def train_batch(self, step, micro_step=0, rank=0, world_size=1) -> dict:
        return self.make(self.seed * 1_000_003 + step * 17 + micro_step)

    def eval_batches(self, rank=0, world_size=1):
        return [self.make(-1 - i) for i in range(self.n_eval)]
