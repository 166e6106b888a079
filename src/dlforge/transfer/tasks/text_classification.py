"""Text classification for `dlforge finetune` (sentiment, topics, intents; one label per text or text pair).

Files: .csv / .tsv with a header row, or .jsonl (one JSON object per line). Columns (task options):
`text_column` (default: the first of text, sentence, review), `label_column` (default label) and,
for pairs (e.g. NLI premise + hypothesis), `text_pair_column`. Labels may be integers or strings;
they are kept as strings, ordered numerically when all are integers (0, 1, 2, ..., 10) and
alphabetically otherwise, and become the model's `config.labels`, so the text-classification
pipeline answers with them.

Pooling (task option `pooling`: cls | mean | max | mean_sqrt_len): the vector the classification head reads.
Given, it is what the model's classifier pools with every method, and the exported OUT/model keeps it
(`classifier_pooling` in its config). Not given, method features reads the frozen encoder the way its
authors pooled it: a sentence-transformers folder's modules.json → Pooling config (all-MiniLM-L6-v2: mean),
else the model's own `classifier_pooling` ([CLS] for BERT); the other methods train the encoder on [CLS].

Evaluation: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix
(`dlforge.metrics.classification`), drawn at OUT/confusion_matrix.png.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from ...data.records import read_records
from ...errors import DlforgeError
from ...models import resolve_model_dir
from ...models.bert import POOLINGS
from ...models.converters.bert import sentence_transformers_pooling
from ..features import extract_features
from .base import FinetuneTask, accuracy_batch_score, check_labels_known, classification_report, label_ids, sort_labels

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "review")


class TextClassificationTask(FinetuneTask):
    name = "text-classification"
    model_task = "sequence-classification"
    default_max_length = 128
    selection_metric = "accuracy"  # as HF's metric_for_best_model: eval loss keeps rising after accuracy peaks

    def batch_score(self, output, batch: dict, labels: list[str] | None = None) -> tuple[float, float]:
        return accuracy_batch_score(output, batch)

    def __init__(self, text_column: str | None = None, label_column: str = "label",
                 text_pair_column: str | None = None, pooling: str | None = None):
        if pooling is not None and pooling not in POOLINGS:
            raise DlforgeError(f"--option pooling={pooling} is not a pooling: choose one of {', '.join(POOLINGS)}")
        self.text_column, self.label_column, self.text_pair_column = text_column, label_column, text_pair_column
        self.pooling = pooling
        self.folder_pooling: str | None = None  # what the loaded model's sentence-transformers config says

    def load_model(self, path, labels: list[str] | None, seed: int):
        """The encoder with a classification head that pools as the `pooling` option says (if given)."""
        model, tokenizer = super().load_model(path, labels, seed)
        if self.pooling is not None:
            model.config = replace(model.config, classifier_pooling=self.pooling)
        else:  # method features reads it (`vectors`); the other methods keep the model's own pooling
            self.folder_pooling = sentence_transformers_pooling(resolve_model_dir(path))
        return model, tokenizer

    # ---- reading
    def _column(self, path: Path, fields: list[str], wanted: str | None, option: str, defaults=()) -> str:
        if wanted is None:
            found = next((c for c in defaults if c in fields), None)
            if found is None:
                raise DlforgeError(f"{path} has none of the columns {', '.join(defaults)} (columns: "
                                   f"{', '.join(fields)}): name the text column with --option {option}=NAME")
            return found
        if wanted not in fields:
            raise DlforgeError(f"{path} has no column {wanted!r} (columns: {', '.join(fields)}): choose one with "
                               f"--option {option}=NAME")
        return wanted

    def read(self, path: str | Path) -> list[dict]:
        """Examples {"text", "pair" (None without text_pair_column), "label" (a string)}."""
        path = Path(path)
        records = read_records(path)
        if not records:
            raise DlforgeError(f"{path} holds no examples")
        fields = list(records[0][1])
        text_col = self._column(path, fields, self.text_column, "text_column", TEXT_COLUMNS)
        label_col = self._column(path, fields, self.label_column, "label_column")
        pair_col = (self._column(path, fields, self.text_pair_column, "text_pair_column")
                    if self.text_pair_column else None)
        examples = []
        for number, record in records:
            values = {}
            for col in (text_col, label_col, pair_col):
                if col is None:
                    continue
                value = record.get(col)
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise DlforgeError(f"{path} line {number}: no value in column {col!r}")
                if col != label_col and not isinstance(value, str):
                    raise DlforgeError(f"{path} line {number}: {col!r} holds {type(value).__name__} {value!r}, "
                                       "not a text")
                if col == label_col and (isinstance(value, bool) or not isinstance(value, (str, int))):
                    raise DlforgeError(f"{path} line {number}: the label {value!r} is neither a string nor an "
                                       "integer")
                values[col] = value
            examples.append({"text": values[text_col], "pair": values.get(pair_col),
                             "label": str(values[label_col]).strip()})
        return examples

    def label_names(self, examples: list[dict]) -> list[str]:
        return sort_labels({e["label"] for e in examples})

    def vectors(self, model, tokenizer, examples: list[dict], max_length: int, cache_dir: Path,
                dtype: torch.dtype | None, progress: bool = True):
        """The frozen encoder's pooled vectors (N, hidden) of single texts. The pooling is set as the model's
        `classifier_pooling` too, so the exported classifier pools its inputs as the head was trained."""
        if any(e["pair"] is not None for e in examples):
            raise DlforgeError("method features embeds single texts; for text pairs use full, top-k or lora")
        if self.pooling is not None:
            pooling, source = self.pooling, "--option pooling"
        elif self.folder_pooling is not None:
            pooling, source = self.folder_pooling, "the model's sentence-transformers Pooling config"
        else:
            pooling, source = model.config.classifier_pooling, "the model's config"
        model.config = replace(model.config, classifier_pooling=pooling)
        if progress:
            log.info(f"features: {pooling} pooling (from {source})")
        return extract_features(model, tokenizer, [e["text"] for e in examples], max_length=max_length,
                                pooling=pooling, normalize=False, cache_dir=cache_dir, dtype=dtype,
                                progress=progress)

    # ---- model inputs
    def encode(self, examples: list[dict], tokenizer, max_length: int) -> list[dict]:
        """input_ids / attention_mask (and token_type_ids for pairs) per example, as 1-D long tensors.

        Single texts are encoded as the text-classification pipeline encodes them ([CLS] text [SEP], cut to
        max_length); pairs as [CLS] a [SEP] b [SEP], shortening the longer member first.
        """
        if any(e["pair"] is not None for e in examples):
            windows = tokenizer.encode_windows([e["text"] for e in examples], [e["pair"] for e in examples],
                                               max_length=max_length, truncation="longest_first")
            return [{k: torch.tensor(w[0][k], dtype=torch.long)
                     for k in ("input_ids", "attention_mask", "token_type_ids")} for w in windows]
        enc = tokenizer.encode_batch([e["text"] for e in examples], padding=False, truncation=True,
                                     max_length=max_length, return_tensors=None, add_special_tokens=True)
        return [{"input_ids": torch.tensor(ids, dtype=torch.long),
                 "attention_mask": torch.tensor(mask, dtype=torch.long)}
                for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]

    def features(self, examples: list[dict], tokenizer, labels: list[str] | None, max_length: int) -> list[dict]:
        ids = label_ids(examples, labels)
        features = self.encode(examples, tokenizer, max_length)
        for f, i in zip(features, ids):
            f["labels"] = torch.tensor(i, dtype=torch.long)
        return features

    # ---- evaluation
    @torch.no_grad()
    def predict(self, model, tokenizer, examples: list[dict], batch_size: int = 32,
                max_length: int = 128) -> torch.Tensor:
        """Class probabilities (N, num_labels), in the order of `examples`."""
        from .base import collate

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        features = self.encode(examples, tokenizer, max_length)
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # little padding
        probs = torch.empty(len(features), model.config.num_labels)
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collate([features[i] for i in rows], tokenizer.pad_token_id or 0)
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()  # (B, num_labels)
                probs[rows] = logits.softmax(-1).cpu()
        finally:
            model.train(was_training)
        return probs

    def evaluate(self, model, tokenizer, examples: list[dict], out_dir: Path, batch_size: int = 32,
                 max_length: int = 128) -> dict:
        check_labels_known(model, {e["label"] for e in examples})
        predicted = self.predict(model, tokenizer, examples, batch_size, max_length).argmax(-1).tolist()
        return classification_report(model, [e["label"] for e in examples], predicted, out_dir)
