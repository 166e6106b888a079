"""What `dlforge finetune` needs from each task, and the batch source shared by all of them.

A task (text classification, token classification, question answering, ...) is a `FinetuneTask`:
it reads its file format into examples, turns examples into model features (dicts of 1-D tensors,
including the labels the model's `forward` takes), and evaluates a model on examples, writing its
report files. `ExampleBatches` turns a list of features into the batch source the Trainer wants.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch

from ...errors import DlforgeError
from ...io import can_plot
from ...metrics.classification import classification_metrics, plot_confusion_matrix
from ...models import load_pretrained

# Padding value per feature name when features of different lengths are stacked.
PAD_VALUES = {"labels": -100, "attention_mask": 0, "token_type_ids": 0}


def collate(features: list[dict[str, torch.Tensor]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack features into a batch, right-padding 1-D sequences to the longest one (scalars and images, which
    all have the same shape, are stacked as they are)."""
    batch = {}
    for name in features[0]:
        values = [f[name] for f in features]
        if values[0].dim() != 1:
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
                 grad_accum: int = 1, seed: int = 0, pad_token_id: int = 0,
                 augment: Callable[[dict, torch.Generator], dict] | None = None):
        if not train:
            raise DlforgeError("the training set is empty: check the file and its columns")
        self.train, self.eval = train, eval or []
        self.augment = augment  # training batches only, with a generator seeded by (seed, step, micro_step, rank)
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
        batch = collate([self.train[i] for i in picks], self.pad_token_id)
        if self.augment is not None:
            seed = ((self.seed * 1_000_003 + step) * 1009 + micro_step) * 64 + rank
            batch = self.augment(batch, torch.Generator().manual_seed(seed))
        return batch

    def eval_batches(self, rank: int = 0, world_size: int = 1):
        mine = self.eval[rank::world_size]
        for start in range(0, len(mine), self.batch_size):
            yield collate(mine[start:start + self.batch_size], self.pad_token_id)


def sort_labels(names: set[str]) -> list[str]:
    """Label names in a stable order: numerically when all are integers (0, 1, 2, ..., 10), else alphabetically."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def label_ids(examples: list[dict], labels: list[str] | None) -> list[int]:
    """The class id of each example's "label" in `labels`; unknown names are refused by name."""
    index = {name: i for i, name in enumerate(labels or [])}
    unknown = sorted({e["label"] for e in examples} - set(index))
    if unknown:
        raise DlforgeError(f"label(s) {', '.join(unknown[:5])} are not among the model's labels "
                           f"({', '.join(list(index)[:10])})")
    return [index[e["label"]] for e in examples]


def accuracy_batch_score(output, batch: dict) -> tuple[float, float]:
    """(correct predictions, items) of one batch of a single-label classifier."""
    labels = batch["labels"]  # (B,)
    return (output.logits.argmax(-1) == labels).sum().item(), labels.numel()


def classification_report(model, true_names: list[str], predicted: list[int], out_dir: Path) -> dict:
    """Accuracy, macro-F1, per-class scores and OUT/confusion_matrix.png of predicted class ids against the
    true label names, in the model's label order."""
    names = model.config.labels or [str(i) for i in range(model.config.num_labels)]
    index = {name: i for i, name in enumerate(names)}
    metrics = classification_metrics([index[name] for name in true_names], predicted, names)
    path = None
    if can_plot("confusion_matrix.png"):  # the report's numbers do not need the picture
        path = plot_confusion_matrix(metrics["confusion_matrix"], names, Path(out_dir) / "confusion_matrix.png",
                                     title=f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    return {**metrics, "eval_examples": len(true_names), "confusion_matrix_png": None if path is None else str(path)}


def check_labels_known(model, names: set[str]) -> None:
    """Refuse evaluation labels the model has no class for."""
    known = model.config.labels or [str(i) for i in range(model.config.num_labels)]
    unknown = sorted(names - set(known))
    if unknown:
        raise DlforgeError(f"evaluation label(s) {', '.join(unknown[:5])} are not among the model's labels "
                           f"({', '.join(known[:10])})")


def check_file(path, role: str, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DlforgeError(f"{role} file {path} {what}: give {kind}")
    return path


class FinetuneTask(ABC):
    """One task of `dlforge finetune`. Subclasses set `name` (the CLI's --task) and `model_task`
    (the head: sequence-classification | token-classification | question-answering | image-classification).

    Text tasks use the defaults below (a BERT-family encoder, one file per split); other tasks override
    `check_source`, `read_split`, `load_model` and, for method features, `vectors`."""

    name: str
    model_task: str
    file_kind = "a .csv, .tsv or .jsonl file"  # what --train/--eval should be, for error messages
    # The score that picks the exported checkpoint (higher is better), computed from the evaluation pass by
    # `batch_score`; None: the lowest eval loss picks it.
    selection_metric: str | None = None

    def batch_score(self, output, batch: dict, labels: list[str] | None) -> tuple[float, float]:
        """(summed score, items) of one evaluation batch, for `selection_metric`; the metric is the ratio of
        the sums over the whole pass. `labels`: the model's label names in id order."""
        # abstract: tasks with a selection metric override it
        raise NotImplementedError(f"task {self.name} has no selection metric")  # abstract

    def check_requirements(self) -> None:
        """Raise a DlforgeError before training if scoring this task needs a package that is missing."""
        return None  # most tasks score with what dlforge always installs

    @abstractmethod
    def read(self, path: str | Path) -> list:
        """Read a training or evaluation file into a list of examples (errors name the file and line)."""

    def check_source(self, path, role: str):
        """The --train / --eval source checked before anything loads (role: "training" | "evaluation")."""
        return check_file(path, role, self.file_kind)

    def read_split(self, path, role: str) -> list:
        """The examples of the --train (role "training") or --eval (role "evaluation") source."""
        return self.read(path)

    def load_model(self, path, labels: list[str] | None, seed: int):
        """(model with this task's head, tokenizer) from a model folder or hub id: a BERT-family encoder."""
        torch.manual_seed(seed)  # a new head starts from the same weights every time
        kwargs = {"num_labels": len(labels), "labels": labels} if labels is not None else {}
        model, tokenizer = load_pretrained(path, expected_kind="bert", task=self.model_task, **kwargs)
        if tokenizer is None:
            raise DlforgeError(f"{path} has no tokenizer files (tokenizer.json or vocab.txt): fine-tuning "
                               "encodes the data with the model's own tokenizer")
        return model, tokenizer

    def augmenter(self, tokenizer) -> Callable[[dict, torch.Generator], dict] | None:
        """What randomly alters each training batch (data augmentation), or None: most tasks train on the data
        as it is."""
        return None

    def vectors(self, model, tokenizer, examples: list, max_length: int, cache_dir: Path,
                dtype: torch.dtype | None):
        """(N, hidden) float32 numpy array: the frozen model's pooled vector of each example, which method
        features trains the head on (the head applied to it must equal the model's own forward)."""
        raise DlforgeError(f"method features trains a classification head on pooled vectors: it does not fit "
                           f"{self.name}; use full, top-k or lora")

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
