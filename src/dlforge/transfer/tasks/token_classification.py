"""Token classification (NER, chunking, tagging) for `dlforge finetune`, from CoNLL column files.

File format (CoNLL-2003, WNUT-17): one token per line, its tag in the last column (columns separated by a
TAB, else by spaces; in-between columns such as POS tags are ignored), a blank line (or one of only spaces and
tabs) between sentences, `-DOCSTART-` lines skipped. A token of only whitespace (" <TAB>O", as tweet corpora
hold) is a token, not a sentence break. Tags are "O" or B-TYPE / I-TYPE (IOB2 or IOB1).

    Empire	B-location
    State	I-location
    Building	I-location
    =	O

Labels: "O", then B- and I- of every type in the training file, types sorted (a type seen only as B- still
gets its I-, so multi-token entities of it can be predicted and evaluated). They become the model's
`config.labels`, so the token-classification pipeline answers with them.

Features: each sentence is encoded as its words joined by spaces ([CLS] ... [SEP], cut to max_length); a
sub-token belongs to the word its first non-space character falls in (a sub-token of spaces only, as byte-level
BPE makes, to the whitespace token it lies in, if any). The word's tag is the target of its first
sub-token; later sub-tokens and special tokens get -100 (no loss), as in Hugging Face's run_ner.

Evaluation: each word gets the label predicted at its first sub-token ("O" for a word the tokenizer drops,
e.g. a whitespace token or a lone zero-width character for BERT's tokenizer, as in Hugging Face's, or one cut
off by max_length); entity-level precision/recall/F1 (micro, and per type) by seqeval's conlleval-compatible
scoring, written to OUT/ner_report.txt.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path

import torch

from ...data.records import read_utf8
from ...errors import DlforgeError
from ...io import atomic_write_text
from .base import FinetuneTask, collate

TAG = re.compile(r"O|[BI]-\S.*")


def read_conll(path: str | Path) -> list[dict]:
    """Sentences {"tokens", "tags", "line"} (line: where the sentence starts) of a CoNLL column file.

    A line of nothing but whitespace (tabs included) ends a sentence. Otherwise, on a line with a TAB, the
    token is the first column and the tag the last; a token that is only whitespace (a space, U+00A0, ... as
    tweet corpora hold) is a token like any other, kept as written. Without a TAB, columns are split on spaces.
    """
    path = Path(path)
    sentences, tokens, tags, first = [], [], [], 0
    # split on newlines only: str.splitlines would also break a line at U+2028, U+0085 or a form feed in a token
    for number, line in enumerate(read_utf8(path).split("\n"), 1):
        token, tag = _token_and_tag(path, number, line)
        if token is None:  # a blank line or a document boundary: ends the sentence
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags, "line": first})
            tokens, tags = [], []
            continue
        first = first if tokens else number
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags, "line": first})
    if not sentences:
        raise DlforgeError(f"{path} holds no sentences: give one 'token<TAB>tag' per line, sentences separated by "
                           "a blank line")
    return sentences


def _token_and_tag(path: Path, number: int, line: str) -> tuple[str | None, str | None]:
    """(token, tag) of one line of a CoNLL file; (None, None) for a blank line or a -DOCSTART- line."""
    kept = line.rstrip()  # trailing spaces or tabs after the tag are layout
    if not kept.strip():
        return None, None
    if "\t" in kept:
        columns = kept.split("\t")
        token = columns[0].strip() or columns[0]  # padding around a word goes; a whitespace token stays
    else:
        columns = kept.split()
        token = columns[0]
    if token == "-DOCSTART-":  # with or without a tag
        return None, None
    if len(columns) < 2:
        raise DlforgeError(f"{path} line {number}: expected 'token<TAB>tag', got {line!r}: give each token its tag "
                           "in the last column, and a blank line between sentences")
    if not token:
        raise DlforgeError(f"{path} line {number}: {line!r} has no token before the tab: write the token, a TAB, "
                           "then its tag (e.g. 'word\\tO'); a line of only whitespace ends the sentence")
    tag = columns[-1].strip()
    if not TAG.fullmatch(tag):
        raise DlforgeError(f"{path} line {number}: tag {tag!r} is not O, B-TYPE or I-TYPE in {line!r}: use IOB "
                           "tags (e.g. B-person, I-person, O)")
    return token, tag


def _seqeval():
    """seqeval's metrics module (conlleval-compatible entity scoring), or a DlforgeError saying how to get it."""
    try:
        import seqeval.metrics
    except ImportError as e:
        raise DlforgeError("entity-level NER scores need seqeval: pip install 'dlforge[eval]'") from e
    return seqeval.metrics


def entity_types(tags) -> list[str]:
    return sorted({t[2:] for t in tags if t != "O"})


class TokenClassificationTask(FinetuneTask):
    name = "token-classification"
    model_task = "token-classification"
    default_max_length = 128
    file_kind = "a CoNLL file (token<TAB>tag per line, a blank line between sentences)"

    # entity-level micro F1, as the report computes it: picks the exported checkpoint (the eval loss rises while
    # F1 still improves, as the tagger grows confident)
    selection_metric = "f1"

    def __init__(self) -> None:  # no options (--option): stated, so that `finetune` can say so
        pass

    def check_requirements(self) -> None:
        _seqeval()

    def batch_score(self, output, batch: dict, labels: list[str] | None) -> tuple[float, float]:
        """(2·correct entities, predicted + gold entities) of a batch: their ratio over the whole evaluation
        is the micro F1 = 2TP / (2TP + FP + FN). Words are scored at their first sub-token (labels != -100)."""
        get_entities = _seqeval().sequence_labeling.get_entities
        targets = batch["labels"].cpu()  # (B, T), -100 off the first sub-tokens
        best = output.logits.argmax(-1).cpu()  # (B, T)
        twice_correct, found = 0, 0
        for gold_ids, predicted_ids in zip(targets, best):
            scored = gold_ids != -100
            gold = set(get_entities([labels[i] for i in gold_ids[scored].tolist()]))
            predicted = set(get_entities([labels[i] for i in predicted_ids[scored].tolist()]))
            twice_correct += 2 * len(gold & predicted)
            found += len(gold) + len(predicted)
        return float(twice_correct), float(found)

    def read(self, path: str | Path) -> list[dict]:
        return read_conll(path)

    def label_names(self, examples: list[dict]) -> list[str]:
        types = entity_types(t for e in examples for t in e["tags"])
        return ["O", *(f"{p}-{kind}" for kind in types for p in "BI")]

    # ---- model inputs
    def encode(self, examples: list[dict], tokenizer, max_length: int) -> tuple[list[dict], list[list]]:
        """Features (input_ids, attention_mask as 1-D long tensors) and, per example, the position of each
        word's first sub-token (None where the word has none)."""
        if not hasattr(tokenizer, "encode_windows"):
            raise DlforgeError("token-classification needs a Hugging Face tokenizer (tokenizer.json or vocab.txt) "
                               "for the character offsets of the sub-tokens")
        texts = [" ".join(e["tokens"]) for e in examples]
        windows = tokenizer.encode_windows(texts, max_length=max_length)
        features, firsts = [], []
        for window, text, e in zip((w[0] for w in windows), texts, examples):  # the first window: truncated
            word_starts, at = [], 0  # the character where each word starts in the text
            for token in e["tokens"]:
                word_starts.append(at)
                at += len(token) + 1
            first = [None] * len(word_starts)
            for index, (seq, (start, end)) in enumerate(zip(window["sequence_ids"], window["offsets"])):
                if seq is None or end <= start:
                    continue
                # a byte-level BPE piece carries the space before its word ("Ġparis" spans " paris"), so a piece
                # is placed by its first visible character; one of spaces only counts for a whitespace token
                visible = next((i for i in range(start, end) if not text[i].isspace()), None)
                word = bisect.bisect_right(word_starts, start if visible is None else visible) - 1
                if visible is None and start >= word_starts[word] + len(e["tokens"][word]):
                    continue  # the space between two words
                if first[word] is None:
                    first[word] = index
            firsts.append(first)
            features.append({"input_ids": torch.tensor(window["input_ids"], dtype=torch.long),
                             "attention_mask": torch.tensor(window["attention_mask"], dtype=torch.long)})
        return features, firsts

    def features(self, examples: list[dict], tokenizer, labels: list[str] | None, max_length: int) -> list[dict]:
        index = {name: i for i, name in enumerate(labels or [])}
        unknown = sorted({t for e in examples for t in e["tags"]} - set(index))
        if unknown:
            raise DlforgeError(f"tag(s) {', '.join(unknown[:5])} are not among the model's labels "
                               f"({', '.join(list(index)[:13])})")
        features, firsts = self.encode(examples, tokenizer, max_length)
        for f, e, first in zip(features, examples, firsts):
            targets = torch.full_like(f["input_ids"], -100)  # (T,): -100 = no loss
            for position, tag in zip(first, e["tags"]):
                if position is not None:
                    targets[position] = index[tag]
            f["labels"] = targets
        return features

    # ---- evaluation
    @torch.no_grad()
    def predict(self, model, tokenizer, examples: list[dict], batch_size: int = 32,
                max_length: int = 128) -> list[list[str]]:
        """The predicted tag of every word of every example (from its first sub-token; "O" if it has none)."""
        names = model.config.labels or [f"LABEL_{i}" for i in range(model.config.num_labels)]
        features, firsts = self.encode(examples, tokenizer, max_length)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        predicted: list[list[str]] = [[] for _ in examples]
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # little padding
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collate([features[i] for i in rows], tokenizer.pad_token_id or 0)
                best = model(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).cpu()  # (B, T)
                for row, i in enumerate(rows):
                    predicted[i] = [names[best[row, p]] if p is not None else "O" for p in firsts[i]]
        finally:
            model.train(was_training)
        return predicted

    def evaluate(self, model, tokenizer, examples: list[dict], out_dir: Path, batch_size: int = 32,
                 max_length: int = 128) -> dict:
        seqeval_metrics = _seqeval()
        accuracy_score, classification_report = seqeval_metrics.accuracy_score, seqeval_metrics.classification_report
        gold = [e["tags"] for e in examples]
        predicted = self.predict(model, tokenizer, examples, batch_size, max_length)
        report = classification_report(gold, predicted, digits=4, zero_division=0)
        scores = classification_report(gold, predicted, output_dict=True, zero_division=0)
        path = Path(out_dir) / "ner_report.txt"
        atomic_write_text(path, report)
        micro = scores["micro avg"]
        per_type = {kind: {"precision": float(s["precision"]), "recall": float(s["recall"]),
                           "f1": float(s["f1-score"]), "support": int(s["support"])}
                    for kind, s in scores.items() if not kind.endswith(" avg")}
        return {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
                "f1": float(micro["f1-score"]), "macro_f1": float(scores["macro avg"]["f1-score"]),
                "accuracy": float(accuracy_score(gold, predicted)), "per_type": per_type,
                "entities": int(micro["support"]), "eval_examples": len(examples), "ner_report_txt": str(path)}
