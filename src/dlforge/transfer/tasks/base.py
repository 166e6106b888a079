"""What `dlforge finetune` needs from each task, and the batch source shared by all of them.

A task (text classification, token classification, question answering, ...) is a `FinetuneTask`:
it reads its file format into examples, turns examples into model features (dicts of 1-D tensors,
including the labels the model's `forward` takes), and evaluates a model on examples, writing its
report files. `ExampleBatches` turns a list of features into the batch source the Trainer wants.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from ...errors import DlforgeError

# Padding value per feature name when features of different lengths are stacked.
PAD_VALUES = {"labels": -100, "attention_mask": 0, "token_type_ids": 0}


def collate(features: list[dict[str, torch.Tensor]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack features into a batch, right-padding 1-D sequences to the longest one."""
    batch = {}
    for name in features[0]:
        values = [f[name] for f in features]
        if values[0].dim() == 0:
            batch[name] = torch.stack(values)
            continue
        width = max(v.size(0) for v in values)
        pad = PAD_VALUES.get(name, pad_token_id)
        out = torch.full((len(values), width), pad, dtype=values[0].dtype)
        for i, v in enumerate(values):
            out[i, : v.size(0)] = v
        batch[name] = out
    return batch


class ExampleBatches:
    """Batch source over a fixed list of features (the Trainer's `train_batch`/`eval_batches` protocol).

    The order is a seeded permutation per epoch, so batch `step` is a pure function of
    (seed, step, micro_step): resuming a run replays exactly the batches it would have seen.
    """

    def __init__(self, train: list[dict], eval: list[dict] | None = None, batch_size: int = 32,
                 grad_accum: int = 1, seed: int = 0, pad_token_id: int = 0):
        if not train:
            raise DlforgeError("the training set is empty: check the file and its columns")
        self.train, self.eval = train, eval or []
        self.batch_size, self.grad_accum, self.seed, self.pad_token_id = batch_size, grad_accum, seed, pad_token_id
        self._orders: dict[int, torch.Tensor] = {}

    def steps_per_epoch(self) -> int:
        return max(1, len(self.train) // (self.batch_size * self.grad_accum))

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(len(self.train), generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch))}
        return self._orders[epoch]

    def train_batch(self, step: int, micro_step: int = 0, rank: int = 0, world_size: int = 1) -> dict:
        index = (step * self.grad_accum + micro_step) * self.batch_size
        epoch, start = divmod(index, len(self.train))
        order = self._order(epoch)
        picks = [order[(start + i) % len(order)].item() for i in range(self.batch_size)]
        per_rank = self.batch_size // world_size
        picks = picks[rank * per_rank:(rank + 1) * per_rank]
        return collate([self.train[i] for i in picks], self.pad_token_id)

    def eval_batches(self, rank: int = 0, world_size: int = 1):
        mine = self.eval[rank::world_size]
        for start in range(0, len(mine), self.batch_size):
            yield collate(mine[start:start + self.batch_size], self.pad_token_id)


class FinetuneTask(ABC):
    """One task of `dlforge finetune`. Subclasses set `name` (the CLI's --task) and `model_task`
    (the encoder head: sequence-classification | token-classification | question-answering)."""

    name: str
    model_task: str
    file_kind = "a .csv, .tsv or .jsonl file"  # what --train/--eval should be, for error messages
    # The score that picks the exported checkpoint (higher is better), computed from the evaluation pass by
    # `batch_score`; None: the lowest eval loss picks it.
    selection_metric: str | None = None

    def batch_score(self, output, batch: dict, labels: list[str] | None) -> tuple[float, float]:
        """(summed score, items) of one evaluation batch, for `selection_metric`; the metric is the ratio of
        the sums over the whole pass. `labels`: the model's label names in id order."""
        raise NotImplementedError(f"task {self.name} has no selection metric")

    def check_requirements(self) -> None:
        """Raise a DlforgeError before training if scoring this task needs a package that is missing."""
        return None  # most tasks score with what dlforge always installs

    @abstractmethod
    def read(self, path: str | Path) -> list:
        """Read a training or evaluation file into a list of examples (errors name the file and line)."""

    def label_names(self, examples: list) -> list[str] | None:
        """The label set found in the training examples, in a stable order (None: no labels, e.g. QA)."""
        return None

    @abstractmethod
    def features(self, examples: list, tokenizer, labels: list[str] | None, max_length: int) -> list[dict]:
        """Model inputs per example (1-D tensors: input_ids, attention_mask, ..., and the training targets)."""

    @abstractmethod
    def evaluate(self, model, tokenizer, examples: list, out_dir: Path, batch_size: int = 32,
                 max_length: int = 256) -> dict:
        """Score `model` on `examples`; write report files into out_dir; return the metrics (JSON-able)."""
