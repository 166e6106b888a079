"""Extractive question answering (SQuAD) for `dlforge finetune`: the answer is a span of a context paragraph.

Files: SQuAD v1.1 JSON, {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}, ...]}]}]}]} (the official train/dev layout; the version key is not needed).
Task options: `doc_stride` (tokens shared by consecutive windows of a long context; default min(128,
max_length // 2)) and `max_answer_len=30` (the longest answer considered at evaluation, in tokens). The
window length is the recipe's max_length (default 384 for this task).

Training features: one per window of "[CLS] question [SEP] context [SEP]", with `start_positions` /
`end_positions` the first and last tokens of the first gold answer; a window that does not hold the whole
answer points both at [CLS] (index 0), as in Hugging Face's run_qa.py.

Evaluation: each question's best span over all its windows, decoded exactly as the question-answering
pipeline decodes it (`text.answer_spans.answer_questions`), scored with the official SQuAD v1.1
rules (`metrics.squad`): exact match and token F1 (x100, best over the gold answers). OUT/predictions.json
holds {id: predicted answer}, the input of the official evaluate-v1.1.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...data.records import read_utf8
from ...errors import DlforgeError
from ...io import atomic_write_json
from ...metrics.squad import squad_scores
from ...text.answer_spans import answer_questions
from .base import FinetuneTask

LAYOUT = ('SQuAD v1.1 JSON: {"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ..., '
          '"question": ..., "answers": [{"text": ..., "answer_start": ...}]}]}]}]}')


def _field(path: Path, where: str, record, key: str, kind: type):
    """record[key], checked to be a `kind` (a one-line error naming the place in the file otherwise)."""
    if not isinstance(record, dict):
        raise DlforgeError(f"{path}: {where or 'the file'} is a {type(record).__name__}, not an object; "
                           f"expected {LAYOUT}")
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        got = "nothing" if value is None else f"a {type(value).__name__}"
        name = f"{where}.{key}" if where else key
        raise DlforgeError(f"{path}: {name} should be a {kind.__name__}, got {got}; expected {LAYOUT}")
    return value


def read_squad(path: str | Path) -> list[dict]:
    """Examples {"id", "title", "question", "context", "answers": [{"text", "answer_start"}, ...]} of a SQuAD file."""
    path = Path(path)
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        hint = " (JSON lines? question-answering reads one SQuAD JSON document)" if path.suffix == ".jsonl" else ""
        raise DlforgeError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}){hint}; expected {LAYOUT}") from e
    examples, seen = [], set()
    for a, article in enumerate(_field(path, "", data, "data", list)):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_field(path, f"data[{a}]", article, "paragraphs", list)):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(path, where, paragraph, "context", str)
            for q, qa in enumerate(_field(path, where, paragraph, "qas", list)):
                where_q = f"{where}.qas[{q}]"
                qid = _field(path, where_q, qa, "id", str)
                question = _field(path, where_q, qa, "question", str)
                answers = []
                for n, answer in enumerate(_field(path, where_q, qa, "answers", list)):
                    text = _field(path, f"{where_q}.answers[{n}]", answer, "text", str)
                    start = _field(path, f"{where_q}.answers[{n}]", answer, "answer_start", int)
                    if context[start:start + len(text)] != text:
                        raise DlforgeError(f"{path}: question {qid}: answer {text!r} is not at answer_start {start} "
                                           "of its context; fix answer_start (a character index)")
                    answers.append({"text": text, "answer_start": start})
                if not answers:
                    raise DlforgeError(f"{path}: question {qid} has no answers; SQuAD v2.0 unanswerable questions "
                                       "are not supported (use SQuAD v1.1 data, every question answered)")
                if qid in seen:
                    raise DlforgeError(f"{path}: question id {qid} appears twice; ids must be unique (predictions.json "
                                       "is keyed by them)")
                seen.add(qid)
                examples.append({"id": qid, "title": title, "question": question, "context": context,
                                 "answers": answers})
    if not examples:
        raise DlforgeError(f"{path} holds no questions; expected {LAYOUT}")
    return examples


class QuestionAnsweringTask(FinetuneTask):
    name = "question-answering"
    model_task = "question-answering"
    default_max_length = 384
    file_kind = "a SQuAD-format .json file"

    def __init__(self, doc_stride: int | None = None, max_answer_len: int = 30):
        for option, value, least in (("doc_stride", doc_stride, 0), ("max_answer_len", max_answer_len, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise DlforgeError(f"question-answering option {option} must be an integer >= {least}, got {value!r}")
        self.doc_stride, self.max_answer_len = doc_stride, max_answer_len

    def stride(self, max_length: int) -> int:
        return min(128, max_length // 2) if self.doc_stride is None else self.doc_stride

    def read(self, path: str | Path) -> list[dict]:
        return read_squad(path)

    # ---- model inputs
    def features(self, examples: list[dict], tokenizer, labels: list[str] | None, max_length: int) -> list[dict]:
        """One feature per window: input_ids, attention_mask, token_type_ids, start_positions, end_positions."""
        if not hasattr(tokenizer, "encode_windows"):
            raise DlforgeError("question-answering needs a Hugging Face tokenizer (tokenizer.json or vocab.txt)")
        windows = tokenizer.encode_windows([e["question"] for e in examples], [e["context"] for e in examples],
                                           max_length=max_length, stride=self.stride(max_length))
        features = []
        for example, ws in zip(examples, windows):
            answer = example["answers"][0]
            first_char, end_char = answer["answer_start"], answer["answer_start"] + len(answer["text"])
            for w in ws:
                start, end = answer_tokens(w, first_char, end_char)
                features.append({**{k: torch.tensor(w[k], dtype=torch.long)
                                    for k in ("input_ids", "attention_mask", "token_type_ids")},
                                 "start_positions": torch.tensor(start), "end_positions": torch.tensor(end)})
        return features

    # ---- evaluation
    def predict(self, model, tokenizer, examples: list[dict], batch_size: int = 32, max_length: int = 384) -> dict:
        """{id: best answer text} over all windows of each question."""
        was_training = model.training
        model.eval()
        try:
            found = answer_questions(model, tokenizer, [e["question"] for e in examples],
                                     [e["context"] for e in examples], top_k=1, doc_stride=self.stride(max_length),
                                     max_answer_len=self.max_answer_len, max_seq_len=max_length,
                                     batch_size=batch_size)
        finally:
            model.train(was_training)
        return {e["id"]: answers[0]["answer"] if answers else "" for e, answers in zip(examples, found)}

    def evaluate(self, model, tokenizer, examples: list[dict], out_dir: Path, batch_size: int = 32,
                 max_length: int = 384) -> dict:
        predictions = self.predict(model, tokenizer, examples, batch_size, max_length)
        path = Path(out_dir) / "predictions.json"
        atomic_write_json(path, predictions)
        scores = squad_scores(predictions, {e["id"]: [a["text"] for a in e["answers"]] for e in examples})
        return {**scores, "eval_examples": len(examples), "predictions_json": str(path)}


def answer_tokens(window: dict, first_char: int, end_char: int) -> tuple[int, int]:
    """First and last token of the answer characters [first_char, end_char) in a window; (0, 0) ([CLS]) when the
    window's context does not hold all of them."""
    context = [i for i, sid in enumerate(window["sequence_ids"]) if sid == 1]
    offsets = window["offsets"]
    if not context or offsets[context[0]][0] > first_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = max(i for i in context if offsets[i][0] <= first_char)  # the token the answer starts in
    end = min(i for i in context if offsets[i][1] >= end_char)  # the token it ends in
    return start, end
